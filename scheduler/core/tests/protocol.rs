//! The copy-trigger protocol at the core level, on a simulated clock.
//!
//! `World` drives a [`Scheduler`] with a model agent that does to an in-memory PVC what the real
//! agent does to a Kubernetes PVC when it gets a directive, so the spec's acceptance scenarios
//! can be replayed exactly: annotations, copies made, Jobs run, timeouts.

use std::collections::BTreeMap;

use chrono::{DateTime, Duration, Utc};
use snapgate_scheduler_core::{
    CoreError, Effect, LeaseAnswer, Mirrored, ReportOutcome, RunId, Scheduler, SourceKey,
    SourceRecord, TIMEOUT_TEXT,
    model::{
        AgentError, AgentTime, Author, CopyCompleted, CopyMethod, CopyState, CopyStatus,
        CopyTarget, CopyTriggerInput, Directive, DirectivePhase, LeaseRequest, MoverFailed,
        MoverFinished, MoverInput, MoverKind, MoverStuck, PvcObserved, RawDuration, RcloneSpec,
        ReleasedBy, Report, ReportObservation as Observation, ResticSpec, Run, RunPhase, RunResult,
        Source, SourceStatus, SpecInput, TriggerInput,
    },
};

use snapgate_contract::{
    COPY_TRIGGER as TRIGGER, LATEST_COPY_STATUS as STATUS, LATEST_COPY_TRIGGER as LATEST,
    LATEST_COPY_TRIGGER_WAITING_SINCE as SINCE, USE_COPY_TRIGGER as USE,
};

/// A model of one namespace's cluster state and of the agent acting on it.
#[derive(Default)]
struct Cluster {
    pvcs: BTreeMap<String, BTreeMap<String, String>>,
    /// Copies that exist now, by name.
    copies: BTreeMap<String, bool>,
    /// Every copy ever created, in order.
    copies_made: Vec<String>,
    jobs_run: usize,
    events: Vec<String>,
    /// Whether new copies become ready by themselves (a snapshot with readyToUse false: no).
    copies_get_ready: bool,
    /// Result of the next mover Jobs: true = success.
    mover_succeeds: bool,
    /// The mover Jobs neither succeed nor fail (their pods do not start): nothing is reported.
    mover_hangs: bool,
    /// Directives the agent holds, by run.
    held: BTreeMap<RunId, Directive>,
    /// Deleted sources the agent removed its objects for: `(source, keep_cache)`.
    retired: Vec<(String, bool)>,
    /// The agent is cut off: directives are held but not acted on.
    offline: bool,
}

struct World {
    core: Scheduler,
    now: DateTime<Utc>,
    cluster: Cluster,
    /// Everything persisted, as a store would hold it.
    stored_sources: BTreeMap<String, SourceRecord>,
    stored_runs: BTreeMap<RunId, Run>,
    copy_statuses: Vec<CopyStatus>,
    /// A follower's copy, changed by every commit's records: it must answer every read as
    /// the leader does (see `assert_mirror_agrees`).
    mirror: Scheduler,
}

fn t0() -> DateTime<Utc> {
    DateTime::parse_from_rfc3339("2026-03-02T10:00:00Z")
        .unwrap()
        .with_timezone(&Utc)
}

fn apps() -> Vec<String> {
    vec!["apps".to_owned()]
}

fn key(name: &str) -> SourceKey {
    SourceKey::new("apps", name)
}

fn spec(pvc: &str, method: CopyMethod, trigger: Option<TriggerInput>) -> SpecInput {
    SpecInput {
        trigger,
        ..SpecInput::new(pvc, MoverInput::restic(method, "restic-secret"))
    }
}

/// The restic options of a spec made by [`spec`].
fn restic_of(s: &mut SpecInput) -> &mut ResticSpec {
    match &mut s.movers[0].kind {
        MoverKind::Restic(r) => r,
        other => panic!("not restic: {other:?}"),
    }
}

fn schedule(expr: &str) -> Option<TriggerInput> {
    Some(TriggerInput {
        schedule: Some(expr.into()),
        manual: None,
    })
}

fn manual(tag: &str) -> Option<TriggerInput> {
    Some(TriggerInput {
        schedule: None,
        manual: Some(tag.into()),
    })
}

impl World {
    fn new() -> Self {
        Self {
            core: Scheduler::new(),
            now: t0(),
            cluster: Cluster {
                copies_get_ready: true,
                mover_succeeds: true,
                ..Default::default()
            },
            stored_sources: BTreeMap::new(),
            stored_runs: BTreeMap::new(),
            copy_statuses: Vec::new(),
            mirror: Scheduler::new(),
        }
    }

    fn pvc(&mut self, name: &str, gated: bool) {
        let mut a = BTreeMap::new();
        if gated {
            a.insert(USE.to_owned(), String::new());
        }
        self.cluster.pvcs.insert(name.to_owned(), a);
    }

    fn ann(&self, pvc: &str) -> BTreeMap<String, String> {
        self.cluster.pvcs[pvc].clone()
    }

    fn apply(&mut self, name: &str, spec: SpecInput) -> Source {
        let version = self
            .core
            .get_source(&key(name))
            .map(|s| s.version)
            .unwrap_or(0);
        let s = self
            .core
            .apply_source(key(name), spec, version, self.now)
            .unwrap();
        self.settle();
        s
    }

    fn source(&self, name: &str) -> Source {
        self.core.get_source(&key(name)).unwrap()
    }

    fn status(&self, name: &str) -> SourceStatus {
        self.source(name).status
    }

    fn runs(&self, name: &str) -> Vec<Run> {
        self.core.list_runs(&key(name), 100).unwrap()
    }

    fn current(&self, name: &str) -> Run {
        let id = self.status(name).current_run;
        let Some(id) = id else {
            panic!("{name} has no run in flight")
        };
        self.runs(name).into_iter().find(|r| r.id == id).unwrap()
    }

    fn phase(&self, name: &str) -> RunPhase {
        self.current(name).phase
    }

    /// Delivers effects and reports until nothing moves.
    fn settle(&mut self) {
        for _ in 0..1000 {
            let effects = self.core.drain_effects();
            if effects.is_empty() {
                // Every index agrees with a scan of what it indexes, after every step.
                if let Err(e) = self.core.check_indexes() {
                    panic!("index out of step with the state: {e}");
                }
                self.assert_mirror_agrees();
                return;
            }
            let mut reports = Vec::new();
            let mut retired = Vec::new();
            // The records of this step, as one commit reaches a follower.
            let mut commit = vec![Mirrored::NextRun(self.core.next_run_counter())];
            for e in effects {
                match e {
                    Effect::PutSource(r) => {
                        commit.push(Mirrored::PutSource(r.clone()));
                        self.stored_sources.insert(r.source.key.to_string(), *r);
                    }
                    Effect::RemoveSource(k) => {
                        commit.push(Mirrored::RemoveSource(k.clone()));
                        self.stored_sources.remove(&k.to_string());
                    }
                    Effect::PutRun(r) => {
                        commit.push(Mirrored::PutRun(r.clone()));
                        self.stored_runs.insert(r.id, *r);
                    }
                    Effect::RemoveRun(id) => {
                        commit.push(Mirrored::RemoveRun(id));
                        self.stored_runs.remove(&id);
                    }
                    Effect::Send { directive, .. } => {
                        self.cluster
                            .held
                            .insert(directive.run_id, (*directive).clone());
                        if !self.cluster.offline {
                            let leased = self.leased(&directive);
                            reports.extend(self.cluster.act(&directive, leased, self.now));
                        }
                    }
                    Effect::Forget { run_id, .. } => {
                        self.cluster.held.remove(&run_id);
                    }
                    Effect::Retire { source, keep_cache } => {
                        if !self.cluster.offline {
                            self.cluster.retired.push((source.to_string(), keep_cache));
                            retired.push(source);
                        }
                    }
                    Effect::CopyStatus(s) => self.copy_statuses.push(*s),
                    Effect::Observe(_) => {}
                }
            }
            let left_out = self.mirror.mirror(commit);
            assert!(left_out.quarantined.is_empty(), "{left_out:?}");
            for key in retired {
                assert!(self.core.handle_retired(&apps(), &key));
            }
            for r in reports {
                let out = self.core.handle_report(&apps(), r, self.now);
                assert!(matches!(
                    out,
                    ReportOutcome::Applied | ReportOutcome::Stale(_)
                ));
            }
        }
        panic!("the world did not settle");
    }

    /// The follower's copy answers every read the scenario can make as the leader does: the
    /// sources, each source's runs, each PVC's copy status, the next run number.
    fn assert_mirror_agrees(&self) {
        let (sources, _) = self.core.list_sources(None, None, usize::MAX);
        let (mirrored, _) = self.mirror.list_sources(None, None, usize::MAX);
        assert_eq!(
            mirrored, sources,
            "the follower's sources differ from the leader's"
        );
        for s in &sources {
            assert_eq!(
                self.mirror.list_runs(&s.key, usize::MAX),
                self.core.list_runs(&s.key, usize::MAX),
                "the follower's runs of {} differ from the leader's",
                s.key
            );
        }
        for pvc in self.cluster.pvcs.keys() {
            assert_eq!(
                self.mirror.copy_status("apps", pvc),
                self.core.copy_status("apps", pvc),
                "the follower's copy status of pvc {pvc} differs from the leader's"
            );
        }
        assert_eq!(
            self.mirror.next_run_counter(),
            self.core.next_run_counter(),
            "the follower's next run number"
        );
    }

    /// What the model agent's lease request for `d` gets now: an instant answer, so a lease
    /// granted is held at this very moment (the real agent anchors it at its request).
    fn leased(&self, d: &Directive) -> bool {
        !d.lease
            || matches!(
                self.core.lease(
                    &apps(),
                    &LeaseRequest {
                        run_id: d.run_id.to_string(),
                        generation: d.generation,
                        request_id: 1,
                    },
                    self.now,
                ),
                LeaseAnswer::Granted(_)
            )
    }

    /// Moves the clock forward, firing every deadline on the way.
    fn advance(&mut self, by: Duration) {
        let end = self.now + by;
        while let Some(t) = self.core.poll_timeout().filter(|t| *t <= end) {
            self.now = t.max(self.now);
            self.core.handle_timeout(self.now);
            self.settle();
        }
        self.now = end;
        self.core.handle_timeout(self.now);
        self.settle();
    }

    /// A user writes copy-trigger on the PVC; the agent's watch reports it.
    fn user_sets_trigger(&mut self, pvc: &str, value: &str) {
        self.cluster
            .pvcs
            .get_mut(pvc)
            .unwrap()
            .insert(TRIGGER.into(), value.into());
        let reports = self.cluster.pvc_changed(pvc);
        for r in reports {
            self.core.handle_report(&apps(), r, self.now);
        }
        self.settle();
    }

    /// A Trigger call for `run` (a run id, or the text a caller sent as one).
    fn rpc_trigger(
        &mut self,
        pvc: &str,
        value: &str,
        run: impl std::fmt::Display,
    ) -> Result<RunId, CoreError> {
        let target = CopyTarget {
            namespace: "apps".into(),
            pvc: pvc.into(),
            source: String::new(),
        };
        let run = run.to_string();
        let out = self.core.trigger(&target, value, &run, None, "", self.now);
        self.settle();
        out.map(|a| a.run_id)
    }

    fn copy_ready(&mut self, name: &str) {
        self.cluster.copies.insert(name.to_owned(), true);
        let leased: Vec<RunId> = self
            .cluster
            .held
            .values()
            .filter(|d| self.leased(d))
            .map(|d| d.run_id)
            .collect();
        let reports = self.cluster.recheck(&leased, self.now);
        for r in reports {
            self.core.handle_report(&apps(), r, self.now);
        }
        self.settle();
    }

    fn restart(&mut self) {
        let core = Scheduler::restore(
            self.stored_sources.values().cloned().collect(),
            self.stored_runs.values().cloned().collect(),
            self.core.next_run_counter(),
        );
        assert!(core.quarantined.is_empty(), "{:?}", core.quarantined);
        assert!(core.warnings.is_empty(), "{:?}", core.warnings);
        self.core = core.scheduler;
        // As the driver does at start: catch up with what came due while it was down.
        self.core.handle_timeout(self.now);
        let _ = self.core.drain_effects();
        // The agent reconnects and is handed every directive in flight.
        self.cluster.offline = false;
        let directives = self.core.directives_for(&["apps".to_owned()]);
        let mut reports = Vec::new();
        for d in directives {
            self.cluster.held.insert(d.run_id, d.clone());
            let leased = self.leased(&d);
            reports.extend(self.cluster.act(&d, leased, self.now));
        }
        for r in reports {
            self.core.handle_report(&apps(), r, self.now);
        }
        self.settle();
    }
}

fn report(d: &Directive, o: Observation) -> Report {
    Report {
        run_id: d.run_id.to_string(),
        generation: d.generation,
        observation: Some(o),
    }
}

impl Cluster {
    fn observe(&self, pvc: &str) -> PvcObserved {
        match self.pvcs.get(pvc) {
            None => PvcObserved {
                exists: false,
                ..Default::default()
            },
            Some(a) => PvcObserved {
                exists: true,
                use_copy_trigger: a.contains_key(USE),
                copy_trigger: a.get(TRIGGER).cloned().unwrap_or_default(),
                latest_copy_trigger: a.get(LATEST).cloned().unwrap_or_default(),
                latest_copy_status: a.get(STATUS).cloned().unwrap_or_default(),
                waiting_since: a.get(SINCE).cloned().unwrap_or_default(),
            },
        }
    }

    fn pvc_of(d: &Directive) -> String {
        d.spec.source_pvc.clone()
    }

    fn copy_name(d: &Directive) -> String {
        format!("{}-{}", d.source.name, d.run_id)
    }

    /// What the agent does for a directive (`leased`: it holds the run's lease now, or the
    /// directive needs none); returns its reports.
    fn act(&mut self, d: &Directive, leased: bool, now: DateTime<Utc>) -> Vec<Report> {
        let pvc = Self::pvc_of(d);
        match d.phase {
            DirectivePhase::Gate => {
                // Paused while waiting: nobody is asked to quiesce any more.
                if d.clear_waiting
                    && let Some(a) = self.pvcs.get_mut(&pvc)
                {
                    if a.get(STATUS).map(String::as_str) == Some("WaitingForTrigger") {
                        a.remove(STATUS);
                    }
                    a.remove(SINCE);
                }
                vec![report(d, Observation::Pvc(self.observe(&pvc)))]
            }
            DirectivePhase::Wait => {
                // A waiting run has no copy: one made under an expired lease goes first.
                self.copies.remove(&Self::copy_name(d));
                let a = self.pvcs.get_mut(&pvc).unwrap();
                if !d.consumed_trigger.is_empty() {
                    a.insert(LATEST.into(), d.consumed_trigger.clone());
                }
                if a.get(STATUS).map(String::as_str) != Some("WaitingForTrigger") {
                    a.insert(STATUS.into(), "WaitingForTrigger".into());
                    self.events.push("SrcPVCWaitingForCopyTrigger".into());
                }
                if !a.contains_key(SINCE) {
                    let since = d.waiting_since.unwrap();
                    a.insert(SINCE.into(), since.format("%Y-%m-%dT%H:%M:%SZ").to_string());
                }
                let timeout_event = format!("SrcPVCTimeoutWaitingForCopyTrigger/{}", d.run_id);
                if d.timeout_reported && !self.events.contains(&timeout_event) {
                    self.events.push(timeout_event);
                }
                vec![report(d, Observation::Pvc(self.observe(&pvc)))]
            }
            DirectivePhase::Copy => {
                let a = self.pvcs.get_mut(&pvc).unwrap();
                if d.gated {
                    if d.write_copy_trigger {
                        a.insert(TRIGGER.into(), d.trigger.clone());
                    }
                    if a.get(STATUS).map(String::as_str) != Some("InProgress")
                        && a.get(STATUS).map(String::as_str) != Some("Completed")
                    {
                        a.insert(STATUS.into(), "InProgress".into());
                        self.events.push("SrcPVCCopyTriggerReceived".into());
                    }
                    a.remove(SINCE);
                } else if d.clear_waiting {
                    a.remove(STATUS);
                    a.remove(SINCE);
                }
                if !leased {
                    // No copy is made and no copy point counted without the lease.
                    return vec![];
                }
                let name = Self::copy_name(d);
                if !self.copies.contains_key(&name) {
                    self.copies.insert(name.clone(), self.copies_get_ready);
                    self.copies_made.push(name);
                }
                self.recheck_one(d, now)
            }
            DirectivePhase::Transfer => {
                self.jobs_run += 1;
                if self.mover_hangs {
                    vec![]
                } else if self.mover_succeeds {
                    vec![report(
                        d,
                        Observation::MoverFinished(MoverFinished {
                            succeeded: true,
                            logs: "processed 10 files".into(),
                        }),
                    )]
                } else {
                    vec![report(
                        d,
                        Observation::MoverFailed(MoverFailed {
                            attempt: d.mover_failures + 1,
                            logs: "Fatal: repository locked".into(),
                        }),
                    )]
                }
            }
            DirectivePhase::Cleanup => {
                // A value that released the run but was never cut is spent.
                if !d.consumed_trigger.is_empty()
                    && let Some(a) = self.pvcs.get_mut(&pvc)
                {
                    a.insert(LATEST.into(), d.consumed_trigger.clone());
                    if a.get(STATUS).map(String::as_str) == Some("InProgress") {
                        a.remove(STATUS);
                    }
                }
                self.copies.remove(&Self::copy_name(d));
                if d.clear_waiting {
                    let a = self.pvcs.get_mut(&pvc).unwrap();
                    if a.get(STATUS).map(String::as_str) == Some("WaitingForTrigger") {
                        a.remove(STATUS);
                    }
                    a.remove(SINCE);
                }
                vec![report(d, Observation::CleanedUp)]
            }
        }
    }

    /// In the Copy phase: if the copy is ready, mark Completed and report.
    fn recheck_one(&mut self, d: &Directive, now: DateTime<Utc>) -> Vec<Report> {
        let name = Self::copy_name(d);
        if self.copies.get(&name) != Some(&true) {
            return vec![];
        }
        if d.gated {
            let a = self.pvcs.get_mut(&Self::pvc_of(d)).unwrap();
            if a.get(STATUS).map(String::as_str) != Some("Completed") {
                a.insert(STATUS.into(), "Completed".into());
                a.insert(LATEST.into(), d.trigger.clone());
                self.events
                    .push("SrcPVCCopyUsingCopyTriggerCompleted".into());
            }
        }
        vec![report(
            d,
            Observation::CopyCompleted(CopyCompleted {
                copy_name: name,
                time: AgentTime::At(now),
            }),
        )]
    }

    fn recheck(&mut self, leased: &[RunId], now: DateTime<Utc>) -> Vec<Report> {
        let copying: Vec<Directive> = self
            .held
            .values()
            .filter(|d| d.phase == DirectivePhase::Copy && leased.contains(&d.run_id))
            .cloned()
            .collect();
        copying
            .iter()
            .flat_map(|d| self.recheck_one(d, now))
            .collect()
    }

    /// The agent's PVC watch: re-report to every run gating or waiting on it.
    fn pvc_changed(&self, pvc: &str) -> Vec<Report> {
        self.held
            .values()
            .filter(|d| Self::pvc_of(d) == pvc)
            .filter(|d| matches!(d.phase, DirectivePhase::Gate | DirectivePhase::Wait))
            .map(|d| report(d, Observation::Pvc(self.observe(pvc))))
            .collect()
    }
}

// ------------------------------------------------------------------ acceptance scenarios

/// Release with the annotation (as a VolSync user) or with the Trigger RPC (as the SDK).
#[derive(Clone, Copy, Debug)]
enum Path {
    Annotation,
    Rpc,
}

fn release(w: &mut World, path: Path, pvc: &str, value: &str) {
    match path {
        Path::Annotation => w.user_sets_trigger(pvc, value),
        Path::Rpc => {
            let waiting = w.current("db").id;
            w.rpc_trigger(pvc, value, waiting).unwrap();
        }
    }
}

fn scenarios_1_to_6(method: CopyMethod, path: Path) {
    let mut w = World::new();
    w.pvc("data", true);
    w.apply("db", spec("data", method, schedule("0 * * * *")));

    // 1. WaitingForTrigger with waiting-since; no copy; no latest-copy-trigger.
    assert_eq!(w.phase("db"), RunPhase::WaitingForTrigger);
    let a = w.ann("data");
    assert_eq!(a[STATUS], "WaitingForTrigger");
    assert_eq!(a[SINCE], "2026-03-02T10:00:00Z");
    assert!(!a.contains_key(LATEST));
    assert!(w.cluster.copies_made.is_empty());
    assert_eq!(w.cluster.events, ["SrcPVCWaitingForCopyTrigger"]);

    // 2. Fifteen minutes later: no copy, latestMoverStatus Failed with the timeout text, still waiting.
    w.advance(Duration::minutes(15));
    assert!(w.cluster.copies_made.is_empty());
    assert_eq!(w.phase("db"), RunPhase::WaitingForTrigger);
    let mover = w.status("db").latest_mover_status.unwrap();
    assert_eq!(mover.result, "Failed");
    assert_eq!(mover.logs, format!("{TIMEOUT_TEXT} data"));
    assert_eq!(
        mover.logs,
        "Timed out waiting for copy-trigger to be modified for pvc data"
    );
    assert!(
        w.cluster
            .events
            .iter()
            .any(|e| e.starts_with("SrcPVCTimeoutWaitingForCopyTrigger"))
    );
    assert_eq!(
        w.ann("data")[SINCE],
        "2026-03-02T10:00:00Z",
        "waiting-since is kept"
    );

    // 3. Trigger "first": InProgress, waiting-since gone, exactly one copy.
    w.cluster.copies_get_ready = false;
    release(&mut w, path, "data", "first");
    assert_eq!(w.phase("db"), RunPhase::Copying);
    let a = w.ann("data");
    assert_eq!(a[STATUS], "InProgress");
    assert_eq!(a[TRIGGER], "first");
    assert!(!a.contains_key(SINCE));
    assert_eq!(w.cluster.copies_made.len(), 1);
    assert_eq!(w.current("db").trigger, "first");

    // 4. Copy ready: Completed, latest-copy-trigger=first, mover runs, run Successful.
    let copy = w.cluster.copies_made[0].clone();
    w.copy_ready(&copy);
    let a = w.ann("data");
    assert_eq!(a[STATUS], "Completed");
    assert_eq!(a[LATEST], "first");
    assert_eq!(w.cluster.jobs_run, 1);
    let run = &w.runs("db")[0];
    assert_eq!(run.result, Some(RunResult::Successful));
    assert!(
        w.cluster.copies.is_empty(),
        "the temporary copy is cleaned up"
    );
    let st = w.status("db");
    assert_eq!(st.latest_mover_status.unwrap().result, "Successful");
    assert_eq!(st.last_sync_time.unwrap(), w.now);
    assert_eq!(st.next_sync_time.unwrap(), t0() + Duration::hours(1));
    let events: Vec<&str> = run.timeline.iter().map(|t| t.event.as_str()).collect();
    assert_eq!(
        events,
        [
            "Queued",
            "Gating",
            "WaitingForTrigger",
            "TimeoutReported",
            "InProgress",
            "Completed",
            "MoverFinished",
            "Finished"
        ]
    );

    // 5. Next run: WaitingForTrigger again, latest-copy-trigger still first, no new copy.
    w.cluster.copies_get_ready = true;
    w.advance(Duration::minutes(45));
    assert_eq!(w.phase("db"), RunPhase::WaitingForTrigger);
    let a = w.ann("data");
    assert_eq!(a[STATUS], "WaitingForTrigger");
    assert_eq!(a[LATEST], "first");
    assert_eq!(a[SINCE], "2026-03-02T11:00:00Z");
    assert_eq!(w.cluster.copies_made.len(), 1);

    // 6. Trigger "second": a second copy, Completed with latest-copy-trigger=second.
    release(&mut w, path, "data", "second");
    assert_eq!(w.cluster.copies_made.len(), 2);
    let a = w.ann("data");
    assert_eq!(a[STATUS], "Completed");
    assert_eq!(a[LATEST], "second");
    assert_eq!(w.runs("db").len(), 2);
    assert!(
        w.runs("db")
            .iter()
            .all(|r| r.result == Some(RunResult::Successful))
    );
}

#[test]
fn scenarios_1_to_6_clone_through_the_annotation() {
    scenarios_1_to_6(CopyMethod::Clone, Path::Annotation);
}

#[test]
fn scenarios_1_to_6_clone_through_the_trigger_rpc() {
    scenarios_1_to_6(CopyMethod::Clone, Path::Rpc);
}

#[test]
fn scenarios_1_to_6_snapshot_through_the_annotation() {
    scenarios_1_to_6(CopyMethod::Snapshot, Path::Annotation);
}

#[test]
fn scenarios_1_to_6_snapshot_through_the_trigger_rpc() {
    scenarios_1_to_6(CopyMethod::Snapshot, Path::Rpc);
}

#[test]
fn scenario_7_an_ungated_pvc_is_copied_without_any_copy_trigger_annotation() {
    for method in [CopyMethod::Clone, CopyMethod::Snapshot] {
        let mut w = World::new();
        w.pvc("data", false);
        w.apply("db", spec("data", method, schedule("@daily")));
        assert_eq!(w.cluster.copies_made.len(), 1);
        assert_eq!(w.cluster.jobs_run, 1);
        assert!(w.ann("data").is_empty(), "{method:?}: {:?}", w.ann("data"));
        let run = &w.runs("db")[0];
        assert!(!run.gated);
        assert_eq!(run.result, Some(RunResult::Successful));
    }
}

#[test]
fn scenario_8_a_copy_that_is_not_ready_holds_the_run_in_copying() {
    let mut w = World::new();
    w.cluster.copies_get_ready = false;
    w.pvc("data", true);
    w.apply("db", spec("data", CopyMethod::Snapshot, schedule("@daily")));
    w.user_sets_trigger("data", "t1");
    w.advance(Duration::hours(2));
    assert_eq!(w.phase("db"), RunPhase::Copying);
    assert_eq!(w.ann("data")[STATUS], "InProgress");
    assert_eq!(w.cluster.jobs_run, 0, "no mover before the copy point");
    let copy = w.cluster.copies_made[0].clone();
    w.copy_ready(&copy);
    assert_eq!(w.ann("data")[STATUS], "Completed");
}

#[test]
fn scenario_9_a_source_without_trigger_syncs_continuously() {
    let mut w = World::new();
    w.cluster.copies_get_ready = false;
    w.pvc("data", false);
    w.apply("db", spec("data", CopyMethod::Clone, None));
    let mut last_sync = Vec::new();
    for i in 1..=3 {
        // Each copy takes 30 seconds to become ready; the next run starts as soon as the
        // previous one is cleaned up.
        w.advance(Duration::seconds(30));
        let copy = w.cluster.copies_made[i - 1].clone();
        w.copy_ready(&copy);
        last_sync.push(w.status("db").last_sync_time.unwrap());
        assert_eq!(w.runs("db").len(), i + 1, "run {} started at once", i + 1);
    }
    assert_eq!(last_sync, [30, 60, 90].map(|s| t0() + Duration::seconds(s)));
}

#[test]
fn scenario_9_continuous_runs_follow_each_other_as_cleanup_completes() {
    let mut w = World::new();
    w.pvc("data", true);
    w.apply("db", spec("data", CopyMethod::Clone, None));
    assert_eq!(w.phase("db"), RunPhase::WaitingForTrigger);
    w.advance(Duration::minutes(1));
    w.user_sets_trigger("data", "a");
    let after_first = w.status("db").last_sync_time.unwrap();
    assert_eq!(after_first, t0() + Duration::minutes(1));
    // The next run started at once and waits again.
    assert_eq!(w.phase("db"), RunPhase::WaitingForTrigger);
    w.advance(Duration::minutes(2));
    w.user_sets_trigger("data", "b");
    let after_second = w.status("db").last_sync_time.unwrap();
    assert!(after_second > after_first, "lastSyncTime advances");
}

#[test]
fn scenario_9_a_continuous_source_that_skips_its_initial_run_starts_with_its_first_sync_now() {
    let mut w = World::new();
    w.cluster.copies_get_ready = false;
    w.pvc("data", false);
    let mut s = spec("data", CopyMethod::Clone, None);
    s.skip_initial_run = true;
    w.apply("db", s.clone());
    w.advance(Duration::days(2));
    assert!(w.runs("db").is_empty(), "no run before the first SyncNow");
    let cond = &w.status("db").conditions[0];
    assert_eq!(
        (cond.status.as_str(), cond.reason.as_str()),
        ("False", "WaitingForSyncNow")
    );
    assert!(cond.message.contains("skipInitialRun"), "{cond:?}");
    // Pausing and resuming does not start it either; an edit keeps waiting.
    w.core
        .set_paused(&key("db"), true, "".into(), w.now)
        .unwrap();
    w.core
        .set_paused(&key("db"), false, "".into(), w.now)
        .unwrap();
    w.apply("db", s);
    w.settle();
    assert!(w.runs("db").is_empty(), "still waiting for SyncNow");

    let (first, started) = w.core.sync_now(&key("db"), "go", w.now).unwrap();
    assert!(started);
    w.settle();
    assert_eq!(w.runs("db").len(), 1);
    // From then on it is continuous: the copy of the first run completes and the next starts.
    let copy = w.cluster.copies_made[0].clone();
    w.copy_ready(&copy);
    let runs = w.runs("db");
    assert_eq!(runs.len(), 2, "the next run followed the first");
    assert!(runs.iter().any(|r| r.id == first), "{runs:?}");
}

#[test]
fn scenario_10_a_manual_tag_runs_exactly_once_until_it_changes() {
    let mut w = World::new();
    w.pvc("data", false);
    w.apply("db", spec("data", CopyMethod::Snapshot, manual("once")));
    assert_eq!(w.runs("db").len(), 1);
    assert_eq!(w.status("db").last_manual_sync, "once");
    w.advance(Duration::days(3));
    assert_eq!(
        w.runs("db").len(),
        1,
        "no further run while the tag is unchanged"
    );
    w.apply("db", spec("data", CopyMethod::Snapshot, manual("twice")));
    assert_eq!(w.runs("db").len(), 2);
    assert_eq!(w.status("db").last_manual_sync, "twice");
    let cond = &w.status("db").conditions[0];
    assert_eq!(
        (cond.status.as_str(), cond.reason.as_str()),
        ("False", "WaitingForManual")
    );
}

#[test]
fn a_run_carries_the_author_of_the_spec_it_started_with_to_the_agent() {
    let author = |user: &str| Author {
        user: user.into(),
        groups: vec!["system:authenticated".into()],
    };
    let mut w = World::new();
    w.pvc("data", true);
    w.core
        .apply_source_by(
            key("db"),
            spec("data", CopyMethod::Snapshot, manual("once")),
            0,
            Some(author("alice")),
            w.now,
        )
        .unwrap();
    w.settle();
    assert_eq!(w.phase("db"), RunPhase::WaitingForTrigger);
    let first = w.current("db").id;
    let sent = |w: &World, id: &RunId| w.cluster.held[id].author.clone();
    assert_eq!(sent(&w, &first), Some(author("alice")));
    assert_eq!(w.source("db").author, Some(author("alice")));

    // Bob edits the source while the run waits: the source is his, the run stays Alice's
    // (it carries the spec she applied), and so does every directive of it.
    let version = w.source("db").version;
    w.core
        .apply_source_by(
            key("db"),
            spec("data", CopyMethod::Snapshot, manual("twice")),
            version,
            Some(author("bob")),
            w.now,
        )
        .unwrap();
    w.settle();
    assert_eq!(w.source("db").author, Some(author("bob")));
    assert_eq!(w.current("db").author, Some(author("alice")));
    // Stored as such: a restarted scheduler sends the same.
    assert_eq!(
        w.stored_sources["apps/db"].source.author,
        Some(author("bob"))
    );
    assert_eq!(w.stored_runs[&first].author, Some(author("alice")));
    release(&mut w, Path::Annotation, "data", "v1");
    let done = w.runs("db").into_iter().find(|r| r.id == first).unwrap();
    assert_eq!(done.result, Some(RunResult::Successful));
    assert_eq!(done.author, Some(author("alice")));

    // The next run is Bob's; a pause by someone else changes no author.
    let second = w.current("db").id;
    assert_ne!(second, first);
    assert_eq!(sent(&w, &second), Some(author("bob")));
    w.core
        .set_paused(&key("db"), true, "maintenance".into(), w.now)
        .unwrap();
    w.settle();
    assert_eq!(w.source("db").author, Some(author("bob")));
    assert_eq!(sent(&w, &second), Some(author("bob")));

    // Without authentication there is no author.
    w.apply("web", spec("data", CopyMethod::Snapshot, manual("once")));
    assert_eq!(w.source("web").author, None);
}

// ------------------------------------------------------------------ transitions and refusals

#[test]
fn a_trigger_set_in_advance_releases_the_run_at_once() {
    let mut w = World::new();
    w.pvc("data", true);
    w.cluster
        .pvcs
        .get_mut("data")
        .unwrap()
        .insert(TRIGGER.into(), "early".into());
    w.apply("db", spec("data", CopyMethod::Clone, schedule("@daily")));
    let run = &w.runs("db")[0];
    assert_eq!(run.trigger, "early");
    assert_eq!(run.released_by, Some(ReleasedBy::Ahead));
    assert_eq!(w.ann("data")[LATEST], "early");
    assert!(
        !w.cluster
            .events
            .contains(&"SrcPVCWaitingForCopyTrigger".to_owned())
    );
}

#[test]
fn a_trigger_equal_to_latest_copy_trigger_does_not_release() {
    let mut w = World::new();
    w.pvc("data", true);
    w.apply("db", spec("data", CopyMethod::Clone, schedule("0 * * * *")));
    w.user_sets_trigger("data", "v1");
    w.advance(Duration::hours(1));
    assert_eq!(w.phase("db"), RunPhase::WaitingForTrigger);
    // The annotation still says v1 = latest: writing it again releases nothing.
    w.user_sets_trigger("data", "v1");
    assert_eq!(w.phase("db"), RunPhase::WaitingForTrigger);
    let err = w.rpc_trigger("data", "v1", "").unwrap_err();
    assert!(
        matches!(&err, CoreError::Invalid(f) if f.field == "value"),
        "{err:?}"
    );
}

/// The simulation's seed 1244: a Trigger's value, written to the PVC's copy-trigger by the
/// agent, was still there (latest-copy-trigger not updated after it: a failed patch, a
/// crash) when the next run of the PVC waited; the agent reported it and it released that
/// run too, a copy cut far outside the hold of the application that sent it. A value bound
/// to an earlier run of the PVC releases no other, whichever way it arrives.
#[test]
fn a_copy_trigger_left_from_an_earlier_runs_trigger_does_not_release_the_next_run() {
    let mut w = World::new();
    w.pvc("data", true);
    w.apply("db", spec("data", CopyMethod::Clone, schedule("0 * * * *")));
    w.advance(Duration::hours(1));
    assert_eq!(w.phase("db"), RunPhase::WaitingForTrigger);
    let first = w.current("db").id;
    w.rpc_trigger("data", "app-12", first).unwrap();
    w.advance(Duration::minutes(5));
    assert_eq!(
        w.ann("data").get(TRIGGER).map(String::as_str),
        Some("app-12")
    );
    assert_eq!(
        w.runs("db")
            .iter()
            .find(|r| r.id == first)
            .map(|r| r.trigger.clone()),
        Some("app-12".to_owned())
    );
    // latest-copy-trigger lost its update: the annotations say app-12 is new.
    w.cluster
        .pvcs
        .get_mut("data")
        .unwrap()
        .insert(LATEST.into(), "app-11".into());
    w.advance(Duration::hours(1));
    let next = w.current("db");
    assert_ne!(next.id, first, "a new run");
    assert_eq!(
        w.phase("db"),
        RunPhase::WaitingForTrigger,
        "{:?}",
        next.timeline
    );
    assert!(next.trigger.is_empty(), "released by {:?}", next.trigger);
    // A new value still releases it.
    w.user_sets_trigger("data", "app-13");
    let released = w.runs("db").into_iter().find(|r| r.id == next.id).unwrap();
    assert_eq!(released.trigger, "app-13");
}

#[test]
fn the_trigger_rpc_refuses_a_run_id_that_is_not_the_waiting_run() {
    let mut w = World::new();
    w.pvc("data", true);
    w.apply("db", spec("data", CopyMethod::Clone, schedule("@daily")));
    let err = w.rpc_trigger("data", "x", "run-999").unwrap_err();
    assert!(
        matches!(err, CoreError::FailedPrecondition(ref m) if m.contains("run-999")),
        "{err:?}"
    );
    assert_eq!(w.phase("db"), RunPhase::WaitingForTrigger);
}

#[test]
fn the_trigger_rpc_refuses_bad_values_with_the_field_named() {
    let mut w = World::new();
    w.pvc("data", true);
    w.apply("db", spec("data", CopyMethod::Clone, schedule("@daily")));
    for bad in [String::new(), "x".repeat(254), "a\u{7}b".into()] {
        let err = w.rpc_trigger("data", &bad, "").unwrap_err();
        assert!(
            matches!(&err, CoreError::Invalid(f) if f.field == "value"),
            "{bad:?}: {err:?}"
        );
    }
    let err = w.rpc_trigger("data", "ok", "not-a-run").unwrap_err();
    assert!(
        matches!(&err, CoreError::Invalid(f) if f.field == "runId"),
        "{err:?}"
    );
}

#[test]
fn the_trigger_rpc_with_nothing_waiting_is_a_failed_precondition() {
    let mut w = World::new();
    w.pvc("data", false);
    w.apply("db", spec("data", CopyMethod::Clone, schedule("@daily")));
    let err = w.rpc_trigger("data", "x", "").unwrap_err();
    assert!(matches!(err, CoreError::FailedPrecondition(_)), "{err:?}");
}

#[test]
fn a_repeated_trigger_is_idempotent_and_makes_no_second_copy() {
    let mut w = World::new();
    w.cluster.copies_get_ready = false;
    w.pvc("data", true);
    w.apply("db", spec("data", CopyMethod::Snapshot, schedule("@daily")));
    let run = w.current("db").id;
    let a = w.rpc_trigger("data", "go", run).unwrap();
    let b = w.rpc_trigger("data", "go", run).unwrap();
    let c = w.rpc_trigger("data", "go", "").unwrap();
    assert_eq!((a, b), (c, c));
    assert_eq!(w.cluster.copies_made.len(), 1);
    // A different value now is refused: nothing is waiting.
    assert!(matches!(
        w.rpc_trigger("data", "other", "").unwrap_err(),
        CoreError::FailedPrecondition(_)
    ));
}

#[test]
fn repeating_an_old_trigger_value_for_a_newer_run_is_refused_not_taken_as_a_repeat() {
    let mut w = World::new();
    w.pvc("data", true);
    w.apply("db", spec("data", CopyMethod::Clone, schedule("0 * * * *")));
    let first = w.rpc_trigger("data", "x", "").unwrap();
    w.advance(Duration::hours(1));
    assert_eq!(w.phase("db"), RunPhase::WaitingForTrigger);
    assert_ne!(w.current("db").id, first);
    // "x" released run-1 and is latest-copy-trigger: for run-2 it is not a new value.
    let err = w.rpc_trigger("data", "x", "").unwrap_err();
    assert!(
        matches!(&err, CoreError::Invalid(f) if f.field == "value"),
        "{err:?}"
    );
    assert_eq!(w.phase("db"), RunPhase::WaitingForTrigger);
}

#[test]
fn the_skip_policy_ends_the_run_as_timed_out_and_clears_the_waiting_annotations() {
    let mut w = World::new();
    w.pvc("data", true);
    let mut s = spec("data", CopyMethod::Clone, schedule("0 * * * *"));
    s.copy_trigger = Some(CopyTriggerInput {
        wait_timeout: Some(RawDuration {
            seconds: 300,
            nanos: 0,
        }),
        on_timeout: 1, // Skip
        holders: Vec::new(),
        allowed_service_accounts: Vec::new(),
    });
    w.apply("db", s);
    w.advance(Duration::minutes(5));
    let run = &w.runs("db")[0];
    assert_eq!(run.result, Some(RunResult::TimedOut));
    assert_eq!(run.phase, RunPhase::Finished);
    assert!(!w.ann("data").contains_key(STATUS));
    assert!(!w.ann("data").contains_key(SINCE));
    assert!(
        w.copy_statuses
            .iter()
            .any(|c| c.state == CopyState::TimedOut)
    );
    assert_eq!(
        w.status("db").next_sync_time.unwrap(),
        t0() + Duration::hours(1)
    );
    assert!(
        w.status("db").last_sync_time.is_none(),
        "a skipped run is not a sync"
    );
    // The next run follows the schedule.
    w.advance(Duration::minutes(55));
    assert_eq!(w.phase("db"), RunPhase::WaitingForTrigger);
}

#[test]
fn removing_use_copy_trigger_while_waiting_releases_and_clears_stale_annotations() {
    let mut w = World::new();
    w.pvc("data", true);
    w.apply("db", spec("data", CopyMethod::Clone, schedule("@daily")));
    w.cluster.pvcs.get_mut("data").unwrap().remove(USE);
    let reports = w.cluster.pvc_changed("data");
    for r in reports {
        w.core.handle_report(&apps(), r, w.now);
    }
    w.settle();
    assert!(w.ann("data").is_empty(), "{:?}", w.ann("data"));
    assert_eq!(w.runs("db")[0].result, Some(RunResult::Successful));
}

#[test]
fn an_unparseable_waiting_since_means_waiting_starts_now() {
    let mut w = World::new();
    w.pvc("data", true);
    let a = w.cluster.pvcs.get_mut("data").unwrap();
    a.insert(STATUS.into(), "WaitingForTrigger".into());
    a.insert(SINCE.into(), "yesterday-ish".into());
    w.apply("db", spec("data", CopyMethod::Clone, schedule("@daily")));
    let run = w.current("db");
    assert_eq!(run.waiting_since.unwrap(), w.now);
    assert!(!run.timeout_reported);
}

#[test]
fn a_valid_earlier_waiting_since_is_kept_and_counts_toward_the_timeout() {
    let mut w = World::new();
    w.pvc("data", true);
    let a = w.cluster.pvcs.get_mut("data").unwrap();
    a.insert(STATUS.into(), "WaitingForTrigger".into());
    a.insert(SINCE.into(), "2026-03-02T09:55:00Z".into());
    w.apply("db", spec("data", CopyMethod::Clone, schedule("@daily")));
    w.advance(Duration::minutes(5));
    assert!(w.current("db").timeout_reported);
}

#[test]
fn two_sources_on_one_pvc_never_overlap_their_copy_phases() {
    let mut w = World::new();
    w.pvc("data", true);
    w.apply("a", spec("data", CopyMethod::Clone, schedule("@daily")));
    let mut b = spec("data", CopyMethod::Snapshot, schedule("@daily"));
    b.movers = vec![MoverInput::new(
        CopyMethod::Snapshot,
        MoverKind::Rclone(RcloneSpec {
            rclone_config: "rc".into(),
            rclone_config_section: "s3".into(),
            rclone_dest_path: "b/p".into(),
            ..Default::default()
        }),
    )];
    w.apply("b", b);
    assert_eq!(w.phase("a"), RunPhase::WaitingForTrigger);
    assert_eq!(w.phase("b"), RunPhase::Queued);
    let status = w.core.copy_status("apps", "data");
    assert_eq!(status.source, "a");
    w.user_sets_trigger("data", "one");
    // a copied and finished; b now holds the PVC and waits for its own trigger.
    assert_eq!(w.runs("a")[0].result, Some(RunResult::Successful));
    assert_eq!(w.phase("b"), RunPhase::WaitingForTrigger);
    assert_eq!(w.ann("data")[LATEST], "one");
    w.user_sets_trigger("data", "two");
    assert_eq!(w.runs("b")[0].trigger, "two");
    assert_eq!(w.ann("data")[LATEST], "two");
}

#[test]
fn a_target_named_by_source_sees_and_releases_only_that_sources_run_on_a_shared_pvc() {
    let mut w = World::new();
    w.cluster.copies_get_ready = false;
    w.pvc("data", true);
    w.apply("a", spec("data", CopyMethod::Clone, schedule("@daily")));
    let mut b = spec("data", CopyMethod::Clone, schedule("@daily"));
    restic_of(&mut b).repository = "other".into();
    w.apply("b", b);
    assert_eq!(w.phase("a"), RunPhase::WaitingForTrigger);
    assert_eq!(w.phase("b"), RunPhase::Queued);
    let by_source = |name: &str| CopyTarget {
        namespace: "apps".into(),
        pvc: String::new(),
        source: name.into(),
    };
    let target_b = w.core.resolve_target(&by_source("b")).unwrap();
    let status_b = w.core.target_status(&target_b);
    assert_eq!(status_b.source, "b");
    assert_eq!(status_b.state, CopyState::Pending, "b's own run, not a's");
    let refused = w.core.trigger(&by_source("b"), "one", "", None, "", w.now);
    assert!(
        matches!(refused, Err(CoreError::FailedPrecondition(_))),
        "naming source b never releases a's run: {refused:?}"
    );
    assert_eq!(w.phase("a"), RunPhase::WaitingForTrigger);
    // Released by naming a; the answer repeated for a's run id even though b's run is newer.
    let a_run = w.current("a").id;
    let first = w
        .core
        .trigger(&by_source("a"), "one", &a_run.to_string(), None, "", w.now)
        .unwrap();
    assert!(!first.repeated);
    w.settle();
    let again = w
        .core
        .trigger(&by_source("a"), "one", &a_run.to_string(), None, "", w.now)
        .unwrap();
    assert!(
        again.repeated,
        "a repeated Trigger for the named run is idempotent"
    );
    assert_eq!(again.run_id, a_run);
}

#[test]
fn direct_copy_runs_without_gating_and_says_why_in_the_status() {
    let mut w = World::new();
    w.pvc("data", true);
    w.apply("db", spec("data", CopyMethod::Direct, schedule("@daily")));
    assert_eq!(w.runs("db")[0].result, Some(RunResult::Successful));
    assert!(w.cluster.copies_made.is_empty());
    assert!(!w.ann("data").contains_key(STATUS));
    assert!(w.status("db").message.contains("Snapshot or Clone"));
}

#[test]
fn schedule_times_passed_during_a_run_are_coalesced_and_counted_as_missed() {
    let mut w = World::new();
    w.pvc("data", true);
    w.apply(
        "db",
        spec("data", CopyMethod::Clone, schedule("*/10 * * * *")),
    );
    w.user_sets_trigger("data", "1");
    assert_eq!(
        w.status("db").next_sync_time.unwrap(),
        t0() + Duration::minutes(10)
    );
    w.advance(Duration::minutes(10));
    assert_eq!(w.phase("db"), RunPhase::WaitingForTrigger);
    // Nobody triggers for 35 minutes: 10:20, 10:30, 10:40 pass while the run waits.
    w.advance(Duration::minutes(35));
    w.user_sets_trigger("data", "2");
    let st = w.status("db");
    assert_eq!(st.missed_intervals, 1);
    assert_eq!(st.next_sync_time.unwrap(), t0() + Duration::minutes(50));
    assert_eq!(w.runs("db").len(), 2, "passed times were not replayed");
}

#[test]
fn a_new_source_can_skip_its_first_immediate_run() {
    let mut w = World::new();
    w.pvc("data", false);
    let mut s = spec("data", CopyMethod::Clone, schedule("0 12 * * *"));
    s.skip_initial_run = true;
    w.apply("db", s);
    assert!(w.runs("db").is_empty());
    assert_eq!(
        w.status("db").next_sync_time.unwrap(),
        t0() + Duration::hours(2)
    );
}

/// An hourly source `db` (no initial run) on pvc `data`, just paused with the note
/// "maintenance" (not yet settled).
fn paused_hourly_db() -> World {
    let mut w = World::new();
    w.pvc("data", false);
    let mut s = spec("data", CopyMethod::Clone, schedule("0 * * * *"));
    s.skip_initial_run = true;
    w.apply("db", s);
    w.core
        .set_paused(&key("db"), true, "maintenance".into(), w.now)
        .unwrap();
    w
}

/// The record a pause commits is the one readers see: its Synchronizing condition says
/// "paused" after a restart too (it was once committed before the condition was set).
#[test]
fn a_paused_sources_condition_is_committed_with_the_pause() {
    let mut w = paused_hourly_db();
    w.settle();
    let before = w.status("db").conditions;
    assert!(before.iter().any(|c| c.message == "paused"), "{before:?}");
    w.restart();
    assert_eq!(w.status("db").conditions, before);
}

#[test]
fn paused_sources_start_no_run_until_resumed_and_then_catch_up_once() {
    let mut w = paused_hourly_db();
    w.advance(Duration::hours(3));
    assert!(w.runs("db").is_empty());
    assert_eq!(w.status("db").pause_note, "maintenance");
    w.core
        .set_paused(&key("db"), false, "done".into(), w.now)
        .unwrap();
    w.settle();
    assert_eq!(w.runs("db").len(), 1);
}

#[test]
fn a_paused_source_asks_nobody_to_quiesce_and_takes_no_trigger_until_resumed() {
    let mut w = World::new();
    w.pvc("data", true);
    w.apply("db", spec("data", CopyMethod::Snapshot, manual("first")));
    assert_eq!(w.phase("db"), RunPhase::WaitingForTrigger);
    assert_eq!(w.ann("data")[STATUS], "WaitingForTrigger");

    w.core
        .set_paused(&key("db"), true, "disk swap".into(), w.now)
        .unwrap();
    w.settle();
    assert_eq!(w.phase("db"), RunPhase::Gating);
    assert!(!w.ann("data").contains_key(STATUS), "{:?}", w.ann("data"));
    assert!(!w.ann("data").contains_key(SINCE));
    let status = w.core.copy_status("apps", "data");
    assert_eq!(status.state, CopyState::Pending);
    assert!(status.reason.contains("paused"), "{}", status.reason);
    let run = w.current("db").id;
    match w.rpc_trigger("data", "v1", run) {
        Err(CoreError::FailedPrecondition(m)) => assert!(m.contains("paused"), "{m}"),
        other => panic!("a paused run takes no trigger: {other:?}"),
    }
    // An annotation written while paused waits for the resume; no copy is made meanwhile,
    // however long the pause.
    w.user_sets_trigger("data", "v1");
    w.advance(Duration::hours(2));
    assert_eq!(w.phase("db"), RunPhase::Gating);
    assert!(w.cluster.copies_made.is_empty());

    w.core
        .set_paused(&key("db"), false, String::new(), w.now)
        .unwrap();
    w.settle();
    assert!(w.cluster.copies_made.len() == 1, "released at resume");
    assert_eq!(w.ann("data")[LATEST], "v1");
    assert_eq!(w.runs("db")[0].released_by, Some(ReleasedBy::Ahead));
}

#[test]
fn pausing_by_applying_a_paused_spec_takes_back_a_waiting_run_too() {
    let mut w = World::new();
    w.pvc("data", true);
    let s = spec("data", CopyMethod::Snapshot, manual("first"));
    w.apply("db", s.clone());
    assert_eq!(w.phase("db"), RunPhase::WaitingForTrigger);
    w.apply(
        "db",
        SpecInput {
            paused: true,
            ..s.clone()
        },
    );
    assert_eq!(w.phase("db"), RunPhase::Gating);
    assert!(!w.ann("data").contains_key(STATUS));
    w.apply("db", s);
    assert_eq!(w.phase("db"), RunPhase::WaitingForTrigger);
    assert_eq!(w.ann("data")[STATUS], "WaitingForTrigger");
}

#[test]
fn an_edit_while_a_run_waits_applies_from_the_next_run() {
    let mut w = World::new();
    w.pvc("data", true);
    w.pvc("data2", true);
    w.apply("db", spec("data", CopyMethod::Snapshot, manual("first")));
    assert_eq!(w.phase("db"), RunPhase::WaitingForTrigger);
    let mut edited = spec("data2", CopyMethod::Clone, manual("second"));
    restic_of(&mut edited).repository = "elsewhere".into();
    w.apply("db", edited);
    // The waiting run keeps its PVC, copy method and destination.
    let run = w.current("db");
    assert_eq!(run.pvc, "data");
    let held = &w.cluster.held[&run.id];
    let spec_held = &held.spec;
    assert_eq!(spec_held.source_pvc, "data");
    let restic = spec_held.restic().unwrap();
    assert_eq!(restic.repository, "restic-secret");
    assert_eq!(spec_held.mover.volume.copy_method, CopyMethod::Snapshot);
    // Found and released by naming the source, on the PVC it waits on.
    let target = CopyTarget {
        namespace: "apps".into(),
        pvc: String::new(),
        source: "db".into(),
    };
    assert_eq!(w.core.resolve_target(&target).unwrap().pvc, "data");
    let status = w
        .core
        .target_status(&w.core.resolve_target(&target).unwrap());
    assert_eq!(status.state, CopyState::WaitingForTrigger);
    w.core
        .trigger(&target, "v1", &run.id.to_string(), None, "", w.now)
        .unwrap();
    w.settle();
    let done = w.runs("db").into_iter().find(|r| r.id == run.id).unwrap();
    assert_eq!(done.result, Some(RunResult::Successful));
    assert_eq!(done.pvc, "data");
    // The next run follows the edit.
    let next = w.current("db");
    assert_eq!(next.pvc, "data2");
    let spec_next = w.cluster.held[&next.id].spec.clone();
    assert_eq!(spec_next.restic().unwrap().repository, "elsewhere");
}

#[test]
fn a_queued_run_keeps_the_copy_method_it_started_with_when_the_source_is_edited() {
    let mut w = World::new();
    w.pvc("data", true);
    w.apply("a", spec("data", CopyMethod::Clone, manual("first")));
    w.apply("b", spec("data", CopyMethod::Snapshot, manual("first")));
    assert_eq!(w.phase("b"), RunPhase::Queued, "behind a's copy phase");
    // b is edited to Direct while its run is queued: the run stays a gated Snapshot run.
    w.apply("b", spec("data", CopyMethod::Direct, manual("first")));
    let a_run = w.current("a").id;
    w.rpc_trigger("data", "v1", a_run).unwrap();
    assert_eq!(w.phase("b"), RunPhase::WaitingForTrigger);
    let b_run = w.current("b");
    assert!(b_run.gated);
    let held = w.cluster.held[&b_run.id].spec.clone();
    assert_eq!(held.mover.volume.copy_method, CopyMethod::Snapshot);
}

#[test]
fn a_deleted_source_is_gone_for_good_once_its_agent_removed_what_it_made() {
    let mut w = World::new();
    w.pvc("data", false);
    let mut s = spec("data", CopyMethod::Clone, manual("once"));
    restic_of(&mut s).keep_cache = true;
    w.apply("db", s);
    w.settle();
    assert!(w.status("db").current_run.is_none(), "the run is over");
    // Nobody serves the namespace: the source is gone for its users, kept for the agent.
    w.cluster.offline = true;
    w.core.delete_source(&key("db"), 0, w.now).unwrap();
    w.settle();
    assert!(matches!(
        w.core.get_source(&key("db")),
        Err(CoreError::NotFound(_))
    ));
    assert!(
        w.stored_sources.contains_key("apps/db"),
        "kept until retired"
    );
    assert!(w.cluster.retired.is_empty());
    // The agent reconnects and is asked again, with the source's keepCache.
    assert_eq!(
        w.core.retirements_for(&apps()),
        [(key("db"), true)],
        "resent on every reconnect"
    );
    assert!(w.core.retirements_for(&["other".to_owned()]).is_empty());
    // An agent of another namespace cannot retire it.
    assert!(!w.core.handle_retired(&["other".to_owned()], &key("db")));
    assert!(w.core.handle_retired(&apps(), &key("db")));
    w.settle();
    assert!(!w.stored_sources.contains_key("apps/db"));
    assert!(w.core.retirements_for(&apps()).is_empty());
    assert!(!w.core.handle_retired(&apps(), &key("db")), "once");
}

#[test]
fn a_source_deleted_mid_run_is_retired_after_its_run_cleaned_up() {
    let mut w = World::new();
    w.cluster.copies_get_ready = false;
    w.pvc("data", false);
    w.apply("db", spec("data", CopyMethod::Snapshot, manual("once")));
    assert_eq!(w.phase("db"), RunPhase::Copying);
    w.core.delete_source(&key("db"), 0, w.now).unwrap();
    w.settle();
    // The run cleaned up first (the model agent acts at once), then the source was retired.
    assert!(w.cluster.copies.is_empty(), "{:?}", w.cluster.copies);
    assert_eq!(w.cluster.retired, [("apps/db".to_owned(), false)]);
    assert!(!w.stored_sources.contains_key("apps/db"));
    assert!(w.stored_runs.is_empty(), "its runs went with it");
}

#[test]
fn a_source_applied_again_while_its_retire_is_unanswered_replaces_the_deleted_one() {
    let mut w = World::new();
    w.pvc("data", false);
    w.apply("db", spec("data", CopyMethod::Clone, manual("once")));
    w.cluster.offline = true;
    w.core.delete_source(&key("db"), 0, w.now).unwrap();
    w.settle();
    let again = w.apply("db", spec("data", CopyMethod::Clone, manual("twice")));
    assert_eq!(again.version, 1, "a new source");
    assert!(w.core.retirements_for(&apps()).is_empty());
    assert!(
        !w.core.handle_retired(&apps(), &key("db")),
        "a late answer for the old one removes nothing"
    );
    assert!(w.core.get_source(&key("db")).is_ok());
}

#[test]
fn the_sources_of_a_deleted_namespace_end_their_runs_and_are_deleted_with_it() {
    let mut w = World::new();
    w.cluster.copies_get_ready = false;
    w.pvc("data", true);
    w.pvc("logs", false);
    w.apply("db", spec("data", CopyMethod::Snapshot, manual("once")));
    w.apply("web", spec("logs", CopyMethod::Clone, schedule("@daily")));
    assert_eq!(w.phase("db"), RunPhase::WaitingForTrigger);
    // The agent goes with its namespace: nobody acts any more.
    w.cluster.offline = true;
    assert_eq!(
        w.core
            .namespace_deleted(&["other".to_owned()], "apps", w.now),
        0,
        "only an agent serving the namespace says so"
    );
    assert_eq!(w.core.namespace_deleted(&apps(), "apps", w.now), 2);
    w.settle();
    for name in ["db", "web"] {
        assert!(matches!(
            w.core.get_source(&key(name)),
            Err(CoreError::NotFound(_))
        ));
        assert!(!w.stored_sources.contains_key(&format!("apps/{name}")));
    }
    assert!(w.core.directives_for(&apps()).is_empty(), "no run is left");
    assert!(
        w.core.retirements_for(&apps()).is_empty(),
        "nothing to retire"
    );
    assert!(w.core.poll_timeout().is_none(), "nothing waits");
}

#[test]
fn a_value_that_released_a_run_never_cut_can_release_no_later_run() {
    let mut w = World::new();
    w.cluster.copies_get_ready = false;
    w.pvc("data", true);
    w.apply("db", spec("data", CopyMethod::Snapshot, manual("first")));
    let run = w.current("db").id;
    w.rpc_trigger("data", "v1", run).unwrap();
    assert_eq!(w.phase("db"), RunPhase::Copying);
    assert_eq!(w.ann("data")[STATUS], "InProgress");
    // Deleted before its copy point: the cleanup hands the value back as consumed.
    w.core.delete_source(&key("db"), 0, w.now).unwrap();
    w.settle();
    assert!(w.core.get_source(&key("db")).is_err());
    assert_eq!(w.ann("data")[LATEST], "v1");
    assert!(!w.ann("data").contains_key(STATUS), "no stale InProgress");
    assert_eq!(w.ann("data")[TRIGGER], "v1");
    // A new source on the PVC waits for a new value instead of being released "ahead".
    w.apply("next", spec("data", CopyMethod::Snapshot, manual("first")));
    assert_eq!(w.phase("next"), RunPhase::WaitingForTrigger);
    assert_eq!(w.cluster.copies_made.len(), 1);
}

#[test]
fn the_next_run_on_a_pvc_waits_until_a_run_that_ended_before_its_copy_point_has_set_the_annotations_right()
 {
    let mut w = World::new();
    w.cluster.copies_get_ready = false;
    w.pvc("data", true);
    w.apply("db", spec("data", CopyMethod::Snapshot, manual("first")));
    let run = w.current("db").id;
    w.rpc_trigger("data", "v1", run).unwrap();
    // Deleted while copying; its cleanup (recording v1 as spent) has not been acted on yet.
    w.core.delete_source(&key("db"), 0, w.now).unwrap();
    w.core
        .apply_source(
            key("next"),
            spec("data", CopyMethod::Snapshot, manual("first")),
            0,
            w.now,
        )
        .unwrap();
    assert_eq!(
        w.current("next").phase,
        RunPhase::Queued,
        "the PVC is still held by the cleanup"
    );
    let cleanup = w.core.directives_for(&apps());
    let old = cleanup.iter().find(|d| d.run_id == run).unwrap();
    assert_eq!(old.phase, DirectivePhase::Cleanup);
    assert_eq!(old.consumed_trigger, "v1");
    assert!(
        old.clear_waiting,
        "released before InProgress: the waiting marks go too"
    );
    w.settle();
    assert_eq!(w.phase("next"), RunPhase::WaitingForTrigger);
    assert_eq!(w.cluster.copies_made.len(), 1);
}

#[test]
fn sync_now_with_the_same_request_id_starts_no_second_run() {
    let mut w = World::new();
    w.pvc("data", true);
    let mut s = spec("data", CopyMethod::Clone, schedule("@daily"));
    s.skip_initial_run = true;
    w.apply("db", s);
    let (a, started_a) = w.core.sync_now(&key("db"), "req-1", w.now).unwrap();
    let (b, started_b) = w.core.sync_now(&key("db"), "req-1", w.now).unwrap();
    w.settle();
    assert_eq!((a, started_a), (b, !started_b));
    assert_eq!(w.runs("db").len(), 1);
    w.user_sets_trigger("data", "x");
    // After the run finished, the same id still answers the same run.
    let (c, started_c) = w.core.sync_now(&key("db"), "req-1", w.now).unwrap();
    assert_eq!((c, started_c), (a, false));
    assert!(matches!(
        w.core.sync_now(&key("db"), "", w.now),
        Err(CoreError::Invalid(_))
    ));
}

#[test]
fn apply_uses_optimistic_concurrency() {
    let mut w = World::new();
    w.pvc("data", false);
    let s = w.apply("db", spec("data", CopyMethod::Clone, schedule("@daily")));
    assert_eq!(s.version, 1);
    let again = w
        .core
        .apply_source(key("db"), spec("data", CopyMethod::Clone, None), 0, w.now);
    assert!(matches!(
        again,
        Err(CoreError::AlreadyExists { version: 1, .. })
    ));
    let stale = w
        .core
        .apply_source(key("db"), spec("data", CopyMethod::Clone, None), 7, w.now);
    assert!(matches!(
        stale,
        Err(CoreError::VersionConflict {
            expected: 7,
            actual: 1,
            ..
        })
    ));
    let missing = w
        .core
        .apply_source(key("nope"), spec("data", CopyMethod::Clone, None), 3, w.now);
    assert!(matches!(missing, Err(CoreError::NotFound(_))));
    let ok = w
        .core
        .apply_source(
            key("db"),
            spec("data", CopyMethod::Snapshot, schedule("@daily")),
            1,
            w.now,
        )
        .unwrap();
    assert_eq!(ok.version, 2);
}

#[test]
fn a_refused_apply_changes_and_stores_nothing() {
    let mut w = World::new();
    let err = w
        .core
        .apply_source(
            key("db"),
            spec("data", CopyMethod::Clone, schedule("not a cron")),
            0,
            w.now,
        )
        .unwrap_err();
    assert!(matches!(&err, CoreError::Invalid(f) if f.field == "spec.trigger.schedule"));
    assert!(w.core.drain_effects().is_empty());
    assert!(matches!(
        w.core.get_source(&key("db")),
        Err(CoreError::NotFound(_))
    ));
}

#[test]
fn deleting_a_source_aborts_its_run_and_cleans_up_before_it_is_gone() {
    let mut w = World::new();
    w.pvc("data", true);
    w.apply("db", spec("data", CopyMethod::Clone, schedule("@daily")));
    w.core.delete_source(&key("db"), 0, w.now).unwrap();
    w.settle();
    assert!(matches!(
        w.core.get_source(&key("db")),
        Err(CoreError::NotFound(_))
    ));
    assert!(w.stored_sources.is_empty());
    assert!(w.stored_runs.is_empty());
    assert!(
        !w.ann("data").contains_key(STATUS),
        "waiting annotations cleared: {:?}",
        w.ann("data")
    );
    assert!(
        w.copy_statuses
            .iter()
            .any(|c| c.state == CopyState::Aborted)
    );
}

#[test]
fn a_restart_while_waiting_keeps_waiting_with_the_original_waiting_since() {
    let mut w = World::new();
    w.pvc("data", true);
    w.apply("db", spec("data", CopyMethod::Clone, schedule("@daily")));
    let before = w.current("db");
    w.advance(Duration::minutes(3));
    w.restart();
    let after = w.current("db");
    assert_eq!(after.id, before.id);
    assert_eq!(after.waiting_since, before.waiting_since);
    assert_eq!(after.phase, RunPhase::WaitingForTrigger);
    // The timeout still fires at the original deadline.
    w.advance(Duration::minutes(7));
    assert!(w.current("db").timeout_reported);
    w.user_sets_trigger("data", "after-restart");
    assert_eq!(w.runs("db")[0].result, Some(RunResult::Successful));
    // Run ids keep counting after a restart.
    w.advance(Duration::days(1));
    assert_eq!(w.current("db").id, RunId(2));
}

#[test]
fn stale_reports_change_nothing() {
    let mut w = World::new();
    w.pvc("data", true);
    w.apply("db", spec("data", CopyMethod::Clone, schedule("@daily")));
    let id = w.current("db").id;
    let r = Report {
        run_id: id.to_string(),
        generation: 1,
        observation: Some(Observation::CleanedUp),
    };
    assert!(matches!(
        w.core.handle_report(&apps(), r.clone(), w.now),
        ReportOutcome::Stale(_)
    ));
    assert!(matches!(
        w.core.handle_report(&["other".to_owned()], r, w.now),
        ReportOutcome::Stale(_)
    ));
    assert!(w.core.drain_effects().is_empty());
    assert_eq!(w.phase("db"), RunPhase::WaitingForTrigger);
}

#[test]
fn a_failed_mover_attempt_is_reported_and_the_run_keeps_transferring() {
    let mut w = World::new();
    w.cluster.mover_succeeds = false;
    w.pvc("data", false);
    w.apply("db", spec("data", CopyMethod::Clone, schedule("@daily")));
    assert_eq!(w.phase("db"), RunPhase::Transferring);
    let st = w.status("db");
    assert_eq!(
        st.latest_mover_status.unwrap().logs,
        "Fatal: repository locked"
    );
    assert_eq!(w.current("db").mover_failures, 1);
}

#[test]
fn a_failed_attempt_reported_again_after_a_reconnect_is_counted_once() {
    let mut w = World::new();
    w.cluster.mover_succeeds = false;
    w.pvc("data", false);
    w.apply("db", spec("data", CopyMethod::Clone, schedule("@daily")));
    let run = w.current("db");
    assert_eq!(run.mover_failures, 1);
    let again = |attempt| Report {
        run_id: run.id.to_string(),
        generation: 0,
        observation: Some(Observation::MoverFailed(MoverFailed {
            attempt,
            logs: "Fatal: repository locked".into(),
        })),
    };
    w.core.handle_report(&apps(), again(1), w.now);
    assert_eq!(
        w.current("db").mover_failures,
        1,
        "attempt 1 is already counted"
    );
    let directive = &w.core.directives_for(&apps())[0];
    assert_eq!(
        directive.mover_failures, 1,
        "the agent's next Job is attempt 2"
    );
    w.core.handle_report(&apps(), again(2), w.now);
    assert_eq!(w.current("db").mover_failures, 2);
}

/// What the agent reports of the mover Job `volsync-src-db`'s pod in `attempt`.
fn stuck(attempt: u32, reason: &str, pod: &str, message: &str) -> Observation {
    let at = |m| Some(t0() + Duration::minutes(m));
    Observation::MoverStuck(MoverStuck {
        reason: reason.into(),
        message: message.into(),
        pod: pod.into(),
        job: "volsync-src-db".into(),
        attempt,
        since: if reason.is_empty() { None } else { at(0) },
        deadline: if reason.is_empty() { None } else { at(10) },
    })
}

fn synchronizing(w: &World) -> (String, String) {
    let c = w
        .status("db")
        .conditions
        .into_iter()
        .find(|c| c.type_ == "Synchronizing")
        .unwrap();
    (c.reason, c.message)
}

fn entries(w: &World, event: &str) -> Vec<String> {
    w.current("db")
        .timeline
        .into_iter()
        .filter(|t| t.event == event)
        .map(|t| t.message)
        .collect()
}

#[test]
fn a_stuck_mover_pod_is_shown_on_the_run_and_its_source_at_once_and_cleared_once_it_runs() {
    let mut w = World::new();
    w.cluster.mover_hangs = true;
    w.pvc("data", false);
    w.apply("db", spec("data", CopyMethod::Clone, schedule("@daily")));
    assert_eq!(w.phase("db"), RunPhase::Transferring);
    let d = w.core.directives_for(&apps())[0].clone();
    let send = |w: &mut World, o: Observation| {
        let out = w.core.handle_report(&apps(), report(&d, o), w.now);
        w.settle();
        out
    };
    let pull = "Back-off pulling image \"quay.io/backube/volsync:0.14.0\"";
    let text = "ImagePullBackOff: mover pod volsync-src-db-x7k2p (Job volsync-src-db, attempt 1): \
                Back-off pulling image \"quay.io/backube/volsync:0.14.0\"; stuck since \
                2026-03-02T10:00:00Z; the attempt fails at 2026-03-02T10:10:00Z unless it recovers";
    send(
        &mut w,
        stuck(1, "ImagePullBackOff", "volsync-src-db-x7k2p", pull),
    );
    assert_eq!(w.current("db").message, text);
    assert_eq!(synchronizing(&w), ("MoverStuck".into(), text.into()));
    assert_eq!(entries(&w, "MoverStuck"), [text]);
    assert_eq!(
        w.current("db").mover_stuck.unwrap().pod,
        "volsync-src-db-x7k2p"
    );
    // The same report again: nothing is written.
    send(
        &mut w,
        stuck(1, "ImagePullBackOff", "volsync-src-db-x7k2p", pull),
    );
    assert!(w.core.drain_effects().is_empty());
    // The kubelet alternates ErrImagePull and ImagePullBackOff: the message follows, the
    // timeline records the pod once.
    send(
        &mut w,
        stuck(1, "ErrImagePull", "volsync-src-db-x7k2p", "not found"),
    );
    assert!(
        w.current("db")
            .message
            .starts_with("ErrImagePull: mover pod volsync-src-db-x7k2p")
    );
    assert_eq!(entries(&w, "MoverStuck").len(), 1);
    // Not stuck, about an earlier attempt: changes nothing.
    send(&mut w, stuck(0, "", "", ""));
    assert!(w.current("db").mover_stuck.is_some());
    // The image pull succeeds: the run and the source say nothing of it any more.
    send(&mut w, stuck(1, "", "", ""));
    let run = w.current("db");
    assert_eq!((run.message.as_str(), run.mover_stuck), ("", None));
    assert_eq!(synchronizing(&w), ("SyncInProgress".into(), String::new()));
    assert_eq!(
        entries(&w, "MoverRunning"),
        ["mover attempt 1 is no longer stuck (ErrImagePull of volsync-src-db-x7k2p is over)"]
    );
    // Stuck again; past its deadline the agent fails the attempt: the failure says why, and
    // the message stays until the next attempt is reported.
    send(
        &mut w,
        stuck(1, "ImagePullBackOff", "volsync-src-db-x7k2p", pull),
    );
    let failed = Observation::MoverFailed(MoverFailed {
        attempt: 1,
        logs: "ImagePullBackOff: pod volsync-src-db-x7k2p: ...: the attempt failed".into(),
    });
    send(&mut w, failed);
    assert_eq!(
        entries(&w, "MoverFailed"),
        ["mover attempt 1 failed (stuck: ImagePullBackOff); retrying"]
    );
    assert_eq!(w.current("db").message, text);
    assert_eq!(w.current("db").mover_failures, 1);
    // The next attempt cannot even make its pod.
    send(
        &mut w,
        stuck(
            2,
            "FailedCreate",
            "",
            "pods \"volsync-src-db-\" is forbidden: serviceaccount \"mover\" not found",
        ),
    );
    assert!(
        w.current("db").message.starts_with(
            "FailedCreate: mover Job volsync-src-db (attempt 2) cannot create its pod: pods"
        ),
        "{}",
        w.current("db").message
    );
    // The mover ends (here: a later attempt succeeds): the stuck state goes with it.
    send(
        &mut w,
        Observation::MoverFinished(MoverFinished {
            succeeded: true,
            logs: String::new(),
        }),
    );
    let run = w.runs("db").into_iter().next().unwrap();
    assert_eq!((run.message.as_str(), run.mover_stuck), ("", None));
}

#[test]
fn a_stuck_report_outside_the_transfer_or_of_any_size_is_bounded_or_stale() {
    let mut w = World::new();
    w.cluster.mover_hangs = true;
    w.pvc("data", true);
    w.apply("db", spec("data", CopyMethod::Clone, schedule("@daily")));
    assert_eq!(w.phase("db"), RunPhase::WaitingForTrigger);
    let d = w.core.directives_for(&apps())[0].clone();
    let out = w.core.handle_report(
        &apps(),
        report(&d, stuck(1, "ImagePullBackOff", "p", "m")),
        w.now,
    );
    assert!(matches!(out, ReportOutcome::Stale(_)), "{out:?}");
    w.pvc("other", false);
    let mut spec = spec("other", CopyMethod::Clone, schedule("@daily"));
    spec.source_pvc = "other".into();
    w.apply("big", spec);
    let run = w.current("big");
    let d = w
        .core
        .directives_for(&apps())
        .into_iter()
        .find(|d| d.run_id == run.id)
        .unwrap();
    // (A stuck time no timestamp can carry is the edge's to drop: it never reaches the core.)
    let huge = stuck(
        1,
        &"R".repeat(10_000),
        &"p".repeat(10_000),
        &"m".repeat(100_000),
    );
    w.core.handle_report(&apps(), report(&d, huge), w.now);
    w.settle();
    let run = w.current("big");
    assert!(run.message.len() <= 1024, "{}", run.message.len());
    let s = run.mover_stuck.unwrap();
    assert!(s.reason.len() <= 128 && s.pod.len() <= 253 && s.message.len() <= 512);
}

#[test]
fn a_non_retryable_agent_error_fails_the_run_and_cleans_up() {
    let mut w = World::new();
    w.cluster.copies_get_ready = false;
    w.pvc("data", false);
    w.apply("db", spec("data", CopyMethod::Snapshot, schedule("@daily")));
    let id = w.current("db").id;
    let generation = w.core.directives_for(&apps())[0].generation;
    let stale = Report {
        run_id: id.to_string(),
        generation: generation - 1,
        observation: Some(Observation::Error(AgentError {
            reason: "CloneLost".into(),
            message: "about an earlier directive".into(),
            retryable: false,
        })),
    };
    assert!(
        matches!(
            w.core.handle_report(&apps(), stale, w.now),
            ReportOutcome::Stale(_)
        ),
        "an error about an earlier directive does not fail the run"
    );
    let r = Report {
        run_id: id.to_string(),
        generation,
        observation: Some(Observation::Error(AgentError {
            reason: "VolumeSnapshotClassNotFound".into(),
            message: "no class fast".into(),
            retryable: false,
        })),
    };
    assert_eq!(
        w.core.handle_report(&apps(), r, w.now),
        ReportOutcome::Applied
    );
    w.settle();
    let run = &w.runs("db")[0];
    assert_eq!(run.result, Some(RunResult::Failed));
    assert!(run.message.contains("VolumeSnapshotClassNotFound"));
    assert!(w.cluster.copies.is_empty());
}

#[test]
fn a_missing_pvc_is_reported_on_the_source_and_the_run_waits_for_it() {
    let mut w = World::new();
    w.apply("db", spec("ghost", CopyMethod::Clone, schedule("@daily")));
    assert_eq!(w.phase("db"), RunPhase::Gating);
    let cond = &w.status("db").conditions[0];
    assert_eq!(cond.reason, "Error");
    assert!(cond.message.contains("ghost"), "{cond:?}");
    w.pvc("ghost", false);
    let reports = w.cluster.pvc_changed("ghost");
    for r in reports {
        w.core.handle_report(&apps(), r, w.now);
    }
    w.settle();
    assert_eq!(w.runs("db")[0].result, Some(RunResult::Successful));
}

#[test]
fn list_sources_pages_in_key_order() {
    let mut w = World::new();
    for n in ["c", "a", "b"] {
        w.core
            .apply_source(
                key(n),
                {
                    let mut s = spec("p", CopyMethod::Clone, manual("x"));
                    s.skip_initial_run = true;
                    s
                },
                0,
                w.now,
            )
            .unwrap();
    }
    let (page, next) = w.core.list_sources(Some("apps"), None, 2);
    assert_eq!(
        page.iter().map(|s| s.key.name.as_str()).collect::<Vec<_>>(),
        ["a", "b"]
    );
    let (page2, end) = w.core.list_sources(Some("apps"), next.as_ref(), 2);
    assert_eq!(
        page2
            .iter()
            .map(|s| s.key.name.as_str())
            .collect::<Vec<_>>(),
        ["c"]
    );
    assert!(end.is_none());
    assert!(w.core.list_sources(Some("other"), None, 10).0.is_empty());
}

// ------------------------------------------------------------------ hold leases

fn by_pvc(pvc: &str) -> CopyTarget {
    CopyTarget {
        namespace: "apps".into(),
        pvc: pvc.into(),
        source: String::new(),
    }
}

fn hold(seconds: i64) -> RawDuration {
    RawDuration { seconds, nanos: 0 }
}

fn timeline(run: &Run) -> Vec<String> {
    run.timeline.iter().map(|t| t.event.clone()).collect()
}

#[test]
fn a_release_by_trigger_carries_its_hold_as_a_lease_and_one_by_annotation_does_not() {
    let mut w = World::new();
    w.cluster.copies_get_ready = false;
    w.pvc("data", true);
    w.apply("db", spec("data", CopyMethod::Snapshot, manual("first")));
    let run = w.current("db").id;
    let accepted = w
        .core
        .trigger(
            &by_pvc("data"),
            "v1",
            &run.to_string(),
            Some(hold(20)),
            "",
            w.now,
        )
        .unwrap();
    w.settle();
    assert_eq!(accepted.lease_deadline, Some(w.now + Duration::seconds(20)));
    let d = &w.cluster.held[&run];
    assert_eq!(d.phase, DirectivePhase::Copy);
    assert!(d.lease, "the agent must copy under the lease");
    assert_eq!(
        w.core.copy_status("apps", "data").lease_deadline,
        Some(w.now + Duration::seconds(20))
    );

    let mut w = World::new();
    w.pvc("data", true);
    w.cluster.copies_get_ready = false;
    w.apply("db", spec("data", CopyMethod::Snapshot, manual("first")));
    w.user_sets_trigger("data", "v1");
    let run = w.current("db");
    assert_eq!(run.released_by, Some(ReleasedBy::Annotation));
    assert!(
        !w.cluster.held[&run.id].lease,
        "an annotation holds until Completed"
    );
    assert!(run.lease_deadline.is_none());
}

#[test]
fn a_hold_is_checked_defaulted_and_cut_to_the_maximum() {
    let mut w = World::new();
    w.cluster.copies_get_ready = false;
    w.pvc("data", true);
    w.apply("db", spec("data", CopyMethod::Snapshot, manual("first")));
    let run = w.current("db").id;
    for bad in [
        hold(0),
        hold(-5),
        RawDuration {
            seconds: 1,
            nanos: -1,
        },
    ] {
        let e = w
            .core
            .trigger(
                &by_pvc("data"),
                "v1",
                &run.to_string(),
                Some(bad),
                "",
                w.now,
            )
            .unwrap_err();
        let CoreError::Invalid(f) = e else {
            panic!("{e:?}")
        };
        assert_eq!(f.field, "hold", "{bad:?}");
    }
    assert_eq!(
        w.phase("db"),
        RunPhase::WaitingForTrigger,
        "nothing applied"
    );
    let accepted = w
        .core
        .trigger(
            &by_pvc("data"),
            "v1",
            &run.to_string(),
            Some(hold(7200)),
            "",
            w.now,
        )
        .unwrap();
    assert_eq!(
        accepted.lease_deadline,
        Some(w.now + Duration::hours(1)),
        "cut to the maximum hold"
    );

    let mut w = World::new();
    w.pvc("data", true);
    w.apply("db", spec("data", CopyMethod::Snapshot, manual("first")));
    let run = w.current("db").id;
    let accepted = w
        .core
        .trigger(&by_pvc("data"), "v1", &run.to_string(), None, "", w.now)
        .unwrap();
    assert_eq!(
        accepted.lease_deadline,
        Some(w.now + Duration::minutes(10)),
        "the default hold"
    );
}

#[test]
fn a_lease_that_runs_out_before_the_copy_point_sends_the_run_back_to_waiting_with_its_value_spent()
{
    let mut w = World::new();
    w.cluster.copies_get_ready = false;
    w.pvc("data", true);
    w.apply("db", spec("data", CopyMethod::Snapshot, manual("first")));
    let run = w.current("db").id;
    w.core
        .trigger(
            &by_pvc("data"),
            "v1",
            &run.to_string(),
            Some(hold(20)),
            "",
            w.now,
        )
        .unwrap();
    w.settle();
    assert_eq!(w.cluster.copies_made.len(), 1, "copying under the lease");
    w.advance(Duration::seconds(20));

    // Back to waiting: the unready copy is gone, v1 is recorded as spent on the PVC.
    let r = w.current("db");
    assert_eq!(r.id, run);
    assert_eq!(w.phase("db"), RunPhase::WaitingForTrigger);
    assert!(
        timeline(&r).contains(&"LeaseExpired".to_owned()),
        "{:?}",
        timeline(&r)
    );
    assert_eq!(r.spent_triggers, ["v1"]);
    assert!(w.cluster.copies.is_empty(), "{:?}", w.cluster.copies);
    let a = w.ann("data");
    assert_eq!(a[STATUS], "WaitingForTrigger");
    assert_eq!(a[LATEST], "v1");
    assert_eq!(a[SINCE], "2026-03-02T10:00:20Z");
    assert_eq!(
        w.core.copy_status("apps", "data").state,
        CopyState::WaitingForTrigger,
        "the application sees no Completed"
    );

    // A late readiness of the deleted copy counts nothing; v1 releases nothing again.
    w.copy_ready(&format!("db-{run}"));
    assert_eq!(w.phase("db"), RunPhase::WaitingForTrigger);
    let e = w.rpc_trigger("data", "v1", run).unwrap_err();
    assert!(
        matches!(e, CoreError::Invalid(ref f) if f.field == "value"),
        "{e:?}"
    );
    w.user_sets_trigger("data", "v1");
    assert_eq!(w.phase("db"), RunPhase::WaitingForTrigger);

    // A new value with a new hold releases it, and this copy is counted.
    w.cluster.copies_get_ready = true;
    w.core
        .trigger(
            &by_pvc("data"),
            "v2",
            &run.to_string(),
            Some(hold(20)),
            "",
            w.now,
        )
        .unwrap();
    w.settle();
    let r = w.runs("db").into_iter().find(|r| r.id == run).unwrap();
    assert_eq!(r.result, Some(RunResult::Successful));
    assert_eq!(r.trigger, "v2");
    assert_eq!(w.ann("data")[LATEST], "v2");
}

#[test]
fn a_copy_reported_after_the_lease_ran_out_is_not_counted_whenever_the_agent_saw_it() {
    let mut w = World::new();
    w.cluster.copies_get_ready = false;
    w.pvc("data", true);
    w.apply("db", spec("data", CopyMethod::Snapshot, manual("first")));
    let run = w.current("db").id;
    w.core
        .trigger(
            &by_pvc("data"),
            "v1",
            &run.to_string(),
            Some(hold(20)),
            "",
            w.now,
        )
        .unwrap();
    w.settle();
    let d = w.cluster.held[&run].clone();
    // The report arrives after the deadline, before the scheduler's timer fired.
    w.now += Duration::seconds(21);
    let out = w.core.handle_report(
        &apps(),
        Report {
            run_id: run.to_string(),
            generation: d.generation,
            observation: Some(Observation::CopyCompleted(CopyCompleted {
                copy_name: format!("db-{run}"),
                time: AgentTime::At(w.now - Duration::seconds(5)),
            })),
        },
        w.now,
    );
    assert_eq!(
        out,
        ReportOutcome::Applied,
        "the run went back to waiting: the shell must persist that"
    );
    w.settle();
    let r = w.current("db");
    assert_eq!(w.phase("db"), RunPhase::WaitingForTrigger);
    assert!(r.copy_time.is_none());
}

#[test]
fn a_lease_is_granted_for_what_is_left_of_it_and_only_for_the_current_copy_directive() {
    let mut w = World::new();
    w.cluster.copies_get_ready = false;
    w.pvc("data", true);
    w.apply("db", spec("data", CopyMethod::Snapshot, manual("first")));
    let run = w.current("db").id;
    let ask = |w: &World, generation: u64, namespaces: &[String]| {
        w.core.lease(
            namespaces,
            &LeaseRequest {
                run_id: run.to_string(),
                generation,
                request_id: 7,
            },
            w.now,
        )
    };
    let waiting = w.cluster.held[&run].generation;
    assert!(
        matches!(ask(&w, waiting, &apps()), LeaseAnswer::Refused(_)),
        "not released"
    );
    w.core
        .trigger(
            &by_pvc("data"),
            "v1",
            &run.to_string(),
            Some(hold(20)),
            "",
            w.now,
        )
        .unwrap();
    w.settle();
    let g = w.cluster.held[&run].generation;
    w.now += Duration::seconds(5);
    assert_eq!(
        ask(&w, g, &apps()),
        LeaseAnswer::Granted(Duration::seconds(15))
    );
    assert!(
        matches!(ask(&w, g - 1, &apps()), LeaseAnswer::Refused(_)),
        "an older generation"
    );
    assert!(
        matches!(ask(&w, g, &["other".to_owned()]), LeaseAnswer::Refused(_)),
        "another agent's namespace"
    );
    w.now += Duration::seconds(15);
    let LeaseAnswer::Refused(why) = ask(&w, g, &apps()) else {
        panic!("granted at the deadline")
    };
    assert!(why.contains("ran out"), "{why}");
}

#[test]
fn ending_a_hold_before_the_copy_point_sends_the_run_back_to_waiting_and_after_it_changes_nothing()
{
    let mut w = World::new();
    w.cluster.copies_get_ready = false;
    w.pvc("data", true);
    w.apply("db", spec("data", CopyMethod::Snapshot, manual("first")));
    let run = w.current("db").id;
    w.core
        .trigger(
            &by_pvc("data"),
            "v1",
            &run.to_string(),
            Some(hold(20)),
            "",
            w.now,
        )
        .unwrap();
    w.settle();
    let e = w
        .core
        .end_hold(&by_pvc("data"), &run.to_string(), "other", w.now)
        .unwrap_err();
    assert!(matches!(e, CoreError::FailedPrecondition(_)), "{e:?}");
    assert_eq!(
        w.phase("db"),
        RunPhase::Copying,
        "someone else's hold is not ended"
    );
    let status = w
        .core
        .end_hold(&by_pvc("data"), &run.to_string(), "v1", w.now)
        .unwrap();
    w.settle();
    assert_eq!(status.state, CopyState::WaitingForTrigger);
    assert_eq!(w.phase("db"), RunPhase::WaitingForTrigger);
    assert_eq!(w.ann("data")[LATEST], "v1");
    assert!(w.cluster.copies.is_empty());
    // Repeated (the caller retries): nothing more happens.
    let again = w
        .core
        .end_hold(&by_pvc("data"), &run.to_string(), "v1", w.now)
        .unwrap();
    assert_eq!(again.state, CopyState::WaitingForTrigger);

    // After the copy point, ending the hold changes nothing.
    w.cluster.copies_get_ready = true;
    w.core
        .trigger(
            &by_pvc("data"),
            "v2",
            &run.to_string(),
            Some(hold(20)),
            "",
            w.now,
        )
        .unwrap();
    w.settle();
    let status = w
        .core
        .end_hold(&by_pvc("data"), &run.to_string(), "v2", w.now)
        .unwrap();
    w.settle();
    assert_ne!(status.state, CopyState::WaitingForTrigger);
    let r = w.runs("db").into_iter().find(|r| r.id == run).unwrap();
    assert_eq!(r.result, Some(RunResult::Successful));
}

/// Scenario 1 of the lease work, at the core: the agent is away while the scheduler restarts,
/// and comes back after the application's hold is over.
#[test]
fn a_release_that_outlives_the_hold_is_never_copied_across_a_restart() {
    let mut w = World::new();
    w.pvc("data", true);
    w.apply("db", spec("data", CopyMethod::Snapshot, manual("first")));
    let run = w.current("db").id;
    w.cluster.offline = true;
    w.core
        .trigger(
            &by_pvc("data"),
            "v1",
            &run.to_string(),
            Some(hold(20)),
            "",
            w.now,
        )
        .unwrap();
    w.settle();
    assert!(w.cluster.copies_made.is_empty(), "the agent is away");
    // The scheduler is down and comes back 23 s later; so does the agent.
    w.now += Duration::seconds(23);
    w.restart();
    assert!(w.cluster.copies_made.is_empty(), "no copy after the hold");
    assert_eq!(w.phase("db"), RunPhase::WaitingForTrigger);
    assert_eq!(w.ann("data")[LATEST], "v1");
    assert_eq!(w.ann("data")[STATUS], "WaitingForTrigger");
}

#[test]
fn a_directive_that_needs_a_lease_is_not_acted_on_by_the_model_agent_without_one() {
    // The model agent's own rule, so the tests above cannot pass by accident: a lease-gated
    // copy directive past its deadline makes no copy.
    let mut w = World::new();
    w.pvc("data", true);
    w.apply("db", spec("data", CopyMethod::Snapshot, manual("first")));
    let run = w.current("db").id;
    w.core
        .trigger(
            &by_pvc("data"),
            "v1",
            &run.to_string(),
            Some(hold(20)),
            "",
            w.now,
        )
        .unwrap();
    let d = w
        .core
        .directives_for(&apps())
        .into_iter()
        .find(|d| d.run_id == run)
        .unwrap();
    w.now += Duration::seconds(30);
    assert!(!w.leased(&d));
    assert!(w.cluster.act(&d, false, w.now).is_empty());
    assert!(w.cluster.copies_made.is_empty());
}

// ------------------------------------------------------------------ several holders

fn with_holders(pvc: &str, holders: &[&str]) -> SpecInput {
    SpecInput {
        copy_trigger: Some(CopyTriggerInput {
            holders: holders.iter().map(|h| (*h).to_owned()).collect(),
            ..Default::default()
        }),
        ..spec(pvc, CopyMethod::Snapshot, manual("first"))
    }
}

fn as_holder(
    w: &mut World,
    holder: &str,
    value: &str,
    seconds: i64,
) -> Result<snapgate_scheduler_core::TriggerAccepted, CoreError> {
    let run = w.current("db").id;
    let out = w.core.trigger(
        &by_pvc("data"),
        value,
        &run.to_string(),
        Some(hold(seconds)),
        holder,
        w.now,
    );
    w.settle();
    out
}

#[test]
fn a_run_of_a_source_with_holders_is_released_once_every_holder_triggered_under_the_earliest_hold()
{
    let mut w = World::new();
    w.cluster.copies_get_ready = false;
    w.pvc("data", true);
    w.apply("db", with_holders("data", &["app", "search"]));
    let t0 = w.now;
    let first = as_holder(&mut w, "app", "a1", 20).unwrap();
    assert_eq!(first.lease_deadline, Some(t0 + Duration::seconds(20)));
    assert_eq!(
        w.phase("db"),
        RunPhase::WaitingForTrigger,
        "search has not held yet"
    );
    assert_eq!(first.status.holders_pending, ["search"]);
    assert!(w.cluster.copies_made.is_empty());
    // The annotation releases nothing for a source with holders.
    w.user_sets_trigger("data", "by-hand");
    assert_eq!(w.phase("db"), RunPhase::WaitingForTrigger);
    assert!(
        w.current("db").message.contains("ignored"),
        "{}",
        w.current("db").message
    );

    w.now += Duration::seconds(10);
    let second = as_holder(&mut w, "search", "s1", 60).unwrap();
    assert_eq!(w.phase("db"), RunPhase::Copying);
    let r = w.current("db");
    assert_eq!(r.trigger, "s1");
    assert_eq!(r.holds.len(), 2);
    assert_eq!(
        second.lease_deadline,
        Some(t0 + Duration::seconds(20)),
        "the earliest hold ends the lease"
    );
    assert_eq!(w.cluster.copies_made.len(), 1);
    // Repeated by a holder whose answer was lost: the same answer.
    let again = as_holder(&mut w, "app", "a1", 20).unwrap();
    assert!(again.repeated);
    // A holder triggering anew after the release is told the copy is not inside its hold.
    let late = as_holder(&mut w, "app", "a2", 20).unwrap_err();
    let CoreError::FailedPrecondition(why) = late else {
        panic!("{late:?}")
    };
    assert!(why.contains("released before holder app"), "{why}");
    // The lease runs out with app's hold: both values are spent, the run waits again.
    w.advance(Duration::seconds(10));
    assert_eq!(w.phase("db"), RunPhase::WaitingForTrigger);
    let r = w.current("db");
    assert_eq!(r.spent_triggers, ["a1", "s1"]);
    assert!(r.holds.is_empty());
    assert!(w.cluster.copies.is_empty());
    for (holder, value) in [("app", "a1"), ("search", "s1")] {
        let e = as_holder(&mut w, holder, value, 20).unwrap_err();
        assert!(
            matches!(e, CoreError::Invalid(ref f) if f.field == "value"),
            "{e:?}"
        );
    }
    // Both hold again, copies are ready: the run completes.
    w.cluster.copies_get_ready = true;
    as_holder(&mut w, "app", "a3", 20).unwrap();
    as_holder(&mut w, "search", "s3", 20).unwrap();
    let done = w.runs("db").into_iter().next().unwrap();
    assert_eq!(done.result, Some(RunResult::Successful));
    assert_eq!(done.trigger, "s3");
}

#[test]
fn a_holders_trigger_names_a_listed_holder_and_its_own_value() {
    let mut w = World::new();
    w.pvc("data", true);
    w.apply("db", with_holders("data", &["app", "search"]));
    for (holder, value, field, rule) in [
        ("", "v", "holder", "required"),
        ("other", "v", "holder", "not one of the holders"),
        ("Not_A_Label", "v", "holder", "DNS-1123"),
    ] {
        let e = as_holder(&mut w, holder, value, 20).unwrap_err();
        let CoreError::Invalid(f) = e else {
            panic!("{e:?}")
        };
        assert_eq!(f.field, field, "{holder:?}");
        assert!(f.rule.contains(rule), "{holder:?}: {}", f.rule);
    }
    as_holder(&mut w, "app", "v", 20).unwrap();
    let e = as_holder(&mut w, "search", "v", 20).unwrap_err();
    assert!(
        matches!(e, CoreError::Invalid(ref f) if f.field == "value" && f.rule.contains("holder app")),
        "{e:?}"
    );
    assert_eq!(w.phase("db"), RunPhase::WaitingForTrigger);
    assert!(w.current("db").holds.iter().all(|h| h.holder == "app"));
}

#[test]
fn a_hold_that_ends_before_every_holder_triggered_is_spent_and_must_be_renewed() {
    let mut w = World::new();
    w.pvc("data", true);
    w.apply("db", with_holders("data", &["app", "search"]));
    as_holder(&mut w, "app", "a1", 20).unwrap();
    w.advance(Duration::seconds(25));
    let r = w.current("db");
    assert!(r.holds.is_empty(), "{:?}", r.holds);
    assert_eq!(r.spent_triggers, ["a1"]);
    assert!(timeline(&r).contains(&"HoldExpired".to_owned()));
    assert_eq!(
        w.core.copy_status("apps", "data").holders_pending,
        ["app", "search"]
    );
    as_holder(&mut w, "search", "s1", 60).unwrap();
    assert_eq!(
        w.phase("db"),
        RunPhase::WaitingForTrigger,
        "app's hold is over"
    );
    // A holder that gives up (EndHold) before the others also leaves nothing behind.
    let run = w.current("db").id;
    w.core
        .end_hold(&by_pvc("data"), &run.to_string(), "s1", w.now)
        .unwrap();
    w.settle();
    assert!(w.current("db").holds.is_empty());
    as_holder(&mut w, "app", "a2", 60).unwrap();
    as_holder(&mut w, "search", "s2", 60).unwrap();
    let done = w.runs("db").into_iter().next().unwrap();
    assert_eq!(done.result, Some(RunResult::Successful));
    assert_eq!(done.spent_triggers, ["a1", "s1"]);
}

#[test]
fn a_value_used_for_one_run_of_a_pvc_is_refused_for_the_next() {
    let mut w = World::new();
    w.pvc("data", true);
    w.apply("db", spec("data", CopyMethod::Snapshot, manual("first")));
    let first = w.current("db").id;
    w.rpc_trigger("data", "v1", first).unwrap();
    assert_eq!(
        w.runs("db")[0].result,
        Some(RunResult::Successful),
        "the first run is done"
    );
    w.apply("db", spec("data", CopyMethod::Snapshot, manual("second")));
    let second = w.current("db").id;
    assert_ne!(first, second);
    // The PVC's latest-copy-trigger says v1 too; with another value in between the run
    // history still remembers it.
    w.cluster
        .pvcs
        .get_mut("data")
        .unwrap()
        .insert(LATEST.into(), "something-else".into());
    w.user_sets_trigger("data", "something-else");
    let e = w.rpc_trigger("data", "v1", second).unwrap_err();
    let CoreError::Invalid(f) = e else {
        panic!("{e:?}")
    };
    assert_eq!(f.field, "value");
    assert!(f.rule.contains(&first.to_string()), "{}", f.rule);
}

// ------------------------------------------------------------------ review: lease edge cases

/// A copy point seen under a release whose lease ran out, reported only after the run was
/// released again, is not the new release's copy point.
#[test]
fn a_copy_completed_from_an_expired_release_does_not_count_for_the_next_release() {
    let mut w = World::new();
    w.cluster.copies_get_ready = false;
    w.pvc("data", true);
    w.apply("db", spec("data", CopyMethod::Snapshot, manual("first")));
    let run = w.current("db").id;
    w.core
        .trigger(
            &by_pvc("data"),
            "v1",
            &run.to_string(),
            Some(hold(10)),
            "",
            w.now,
        )
        .unwrap();
    w.settle();
    let gen_v1 = w.cluster.held[&run].generation;
    let cut = w.now + Duration::seconds(9);
    w.advance(Duration::seconds(10));
    assert_eq!(w.phase("db"), RunPhase::WaitingForTrigger);
    w.advance(Duration::seconds(1));
    w.core
        .trigger(
            &by_pvc("data"),
            "v2",
            &run.to_string(),
            Some(hold(10)),
            "",
            w.now,
        )
        .unwrap();
    w.settle();
    let late = w.core.handle_report(
        &apps(),
        Report {
            run_id: run.to_string(),
            generation: gen_v1,
            observation: Some(Observation::CopyCompleted(CopyCompleted {
                copy_name: format!("db-{run}"),
                time: AgentTime::At(cut),
            })),
        },
        w.now,
    );
    assert!(matches!(late, ReportOutcome::Stale(_)), "{late:?}");
    let r = w.current("db");
    assert_eq!(w.phase("db"), RunPhase::Copying);
    assert!(r.copy_time.is_none(), "{:?}", r.copy_time);
}

#[test]
fn a_holders_end_hold_while_the_source_is_paused_spends_its_hold() {
    let mut w = World::new();
    w.pvc("data", true);
    w.apply("db", with_holders("data", &["a", "b"]));
    as_holder(&mut w, "a", "va", 600).unwrap();
    w.core
        .set_paused(&key("db"), true, String::new(), w.now)
        .unwrap();
    w.settle();
    assert_eq!(w.phase("db"), RunPhase::Gating);
    let r = w.current("db");
    assert!(
        r.holds.is_empty(),
        "pausing spends the holds: {:?}",
        r.holds
    );
    assert_eq!(r.spent_triggers, ["va"]);
    // EndHold meanwhile answers without reviving anything.
    w.core
        .end_hold(&by_pvc("data"), &r.id.to_string(), "va", w.now)
        .unwrap();
    w.core
        .set_paused(&key("db"), false, String::new(), w.now)
        .unwrap();
    w.settle();
    assert_eq!(w.phase("db"), RunPhase::WaitingForTrigger);
    as_holder(&mut w, "b", "vb", 600).unwrap();
    assert_eq!(
        w.phase("db"),
        RunPhase::WaitingForTrigger,
        "a's hold from before the pause releases nothing"
    );
    assert_eq!(w.core.copy_status("apps", "data").holders_pending, ["a"]);
}

#[test]
fn end_hold_with_an_old_spent_value_leaves_another_release_alone() {
    let mut w = World::new();
    w.cluster.copies_get_ready = false;
    w.pvc("data", true);
    w.apply("db", spec("data", CopyMethod::Snapshot, manual("first")));
    let run = w.current("db").id;
    w.core
        .trigger(
            &by_pvc("data"),
            "v1",
            &run.to_string(),
            Some(hold(10)),
            "",
            w.now,
        )
        .unwrap();
    w.advance(Duration::seconds(10));
    w.core
        .trigger(
            &by_pvc("data"),
            "v2",
            &run.to_string(),
            Some(hold(600)),
            "",
            w.now,
        )
        .unwrap();
    w.settle();
    w.core
        .end_hold(&by_pvc("data"), &run.to_string(), "v1", w.now)
        .unwrap();
    w.settle();
    assert_eq!(w.phase("db"), RunPhase::Copying);
    assert_eq!(w.current("db").spent_triggers, ["v1"]);
}

#[test]
fn a_spent_value_never_releases_its_run_again_and_a_run_that_spends_too_many_fails() {
    let mut w = World::new();
    w.cluster.copies_get_ready = false;
    w.pvc("data", true);
    w.apply("db", spec("data", CopyMethod::Snapshot, manual("first")));
    let run = w.current("db").id;
    for i in 0..20 {
        w.core
            .trigger(
                &by_pvc("data"),
                &format!("v{i}"),
                &run.to_string(),
                Some(hold(1)),
                "",
                w.now,
            )
            .unwrap();
        w.advance(Duration::seconds(1));
    }
    let e = w
        .core
        .trigger(
            &by_pvc("data"),
            "v0",
            &run.to_string(),
            Some(hold(60)),
            "",
            w.now,
        )
        .unwrap_err();
    assert!(
        matches!(e, CoreError::Invalid(ref f) if f.field == "value"),
        "{e:?}"
    );
    for i in 20..snapgate_scheduler_core::SPENT_PER_RUN {
        w.core
            .trigger(
                &by_pvc("data"),
                &format!("v{i}"),
                &run.to_string(),
                Some(hold(1)),
                "",
                w.now,
            )
            .unwrap();
        w.advance(Duration::seconds(1));
    }
    let r = w.runs("db").into_iter().find(|r| r.id == run).unwrap();
    assert_eq!(r.result, Some(RunResult::Failed), "{}", r.message);
    assert!(r.message.contains("spent without a copy"), "{}", r.message);
    assert_eq!(
        r.spent_triggers.len(),
        snapgate_scheduler_core::SPENT_PER_RUN
    );
}

#[test]
fn a_hold_that_has_ended_counts_towards_no_release_even_before_the_timer() {
    let mut w = World::new();
    w.pvc("data", true);
    w.apply("db", with_holders("data", &["a", "b"]));
    as_holder(&mut w, "a", "va", 5).unwrap();
    // No timer has fired; b triggers after a's hold ended.
    w.now += Duration::seconds(6);
    let accepted = as_holder(&mut w, "b", "vb", 600).unwrap();
    assert_eq!(w.phase("db"), RunPhase::WaitingForTrigger);
    assert_eq!(accepted.status.holders_pending, ["a"]);
    assert_eq!(
        accepted.lease_deadline,
        Some(w.now + Duration::seconds(600))
    );
    let again = as_holder(&mut w, "b", "vb", 600).unwrap();
    assert!(again.repeated);
    assert_eq!(
        again.lease_deadline,
        Some(w.now + Duration::seconds(600)),
        "a repeat answers with the holder's own hold"
    );
}
