//! The core against hostile input: every value from the wire, an agent or the store is checked,
//! no arithmetic on it can panic, and everything it keeps is bounded.
//!
//! Table tests for the cases found by hand, then property tests over admission, the schedule
//! preview, the run machine's time handling and restoring from the store.

use chrono::{DateTime, Duration, Utc};
use proptest::prelude::*;
use snapgate_scheduler_core::{
    CoreError, Effect, MAX_LOG_BYTES, MAX_MESSAGE_BYTES, MAX_STARTS_PER_STEP, Mirrored, RunId,
    Scheduler, SourceKey, SourceRecord,
    model::{
        AgentError, AgentTime, CopyCompleted, CopyMethod, CopyTarget, CopyTriggerInput, CustomCa,
        JsonObject, LeaseRequest, MoverFailed, MoverFinished, MoverInput, MoverKind, MoverStuck,
        PvcObserved, RawDuration, ReleasedBy, Report, ReportObservation as Observation, ResticSpec,
        RetainPolicy, Run, RunPhase, RunReason, RunResult, Source, SpecInput, TriggerInput,
        TriggerSpec,
    },
    validate,
};

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

fn restic_spec() -> SpecInput {
    SpecInput {
        trigger: Some(TriggerInput {
            schedule: Some("*/5 * * * *".into()),
            manual: None,
        }),
        ..SpecInput::new(
            "data",
            MoverInput::restic(CopyMethod::Snapshot, "restic-config"),
        )
    }
}

/// The restic options of a spec made by [`restic_spec`].
fn restic_of(s: &mut SpecInput) -> &mut ResticSpec {
    match &mut s.movers[0].kind {
        MoverKind::Restic(r) => r,
        other => panic!("not restic: {other:?}"),
    }
}

fn seconds(s: i64, nanos: i32) -> Option<RawDuration> {
    Some(RawDuration { seconds: s, nanos })
}

/// A free-form object of about `bytes` bytes.
fn big_object(bytes: usize) -> JsonObject {
    [("x".to_owned(), serde_json::Value::String("y".repeat(bytes)))]
        .into_iter()
        .collect()
}

/// The bytes of text a run keeps, with a few bytes per entry: what a store's record of it
/// grows with. Every field is named, so that a new one must be counted here.
fn kept_bytes(run: &Run) -> usize {
    let Run {
        id: _,
        source,
        pvc,
        reason: _,
        phase: _,
        result: _,
        trigger,
        start_time: _,
        waiting_since: _,
        wait_deadline: _,
        copy_time: _,
        end_time: _,
        gated: _,
        timeout_reported: _,
        message,
        timeline,
        mover_status,
        mover_failures: _,
        request_id,
        released_by: _,
        generation: _,
        latest_trigger,
        restic_prune: _,
        spec,
        lease_deadline: _,
        spent_triggers,
        holds,
        author,
        mover_stuck,
    } = run;
    let entry = 16;
    [
        source.namespace.len() + source.name.len(),
        pvc.len(),
        trigger.len(),
        message.len(),
        timeline
            .iter()
            .map(|t| entry + t.event.len() + t.message.len())
            .sum(),
        mover_status
            .as_ref()
            .map_or(0, |m| m.result.len() + m.logs.len()),
        request_id.len(),
        latest_trigger.len(),
        spec.as_ref().map_or(0, |s| format!("{s:?}").len()),
        spent_triggers.iter().map(|v| entry + v.len()).sum(),
        holds
            .iter()
            .map(|h| entry + h.holder.len() + h.value.len())
            .sum(),
        author.as_ref().map_or(0, |a| {
            a.user.len() + a.groups.iter().map(|g| entry + g.len()).sum::<usize>()
        }),
        mover_stuck.as_ref().map_or(0, |s| {
            s.reason.len() + s.message.len() + s.pod.len() + s.job.len()
        }),
        // Numbers, times and flags.
        30 * 8,
    ]
    .into_iter()
    .sum()
}

/// A spec as the gRPC edge hands it to the core, with its size set. The edge measures the
/// request's encoding; the length of the spec's debug text (every string in full, a few bytes
/// per field, about as long) stands in for it here.
fn as_sent(mut s: SpecInput) -> SpecInput {
    s.encoded_len = format!("{s:?}").len();
    s
}

fn invalid(r: Result<Source, CoreError>) -> validate::InvalidField {
    match r {
        Err(CoreError::Invalid(f)) => f,
        other => panic!("expected InvalidArgument, got {other:?}"),
    }
}

/// Collects the records a store would hold, as the shell does.
#[derive(Default)]
struct Stored {
    sources: std::collections::BTreeMap<String, SourceRecord>,
    runs: std::collections::BTreeMap<RunId, Run>,
}

impl Stored {
    fn take(&mut self, core: &mut Scheduler) -> Vec<Effect> {
        let mut rest = Vec::new();
        for e in core.drain_effects() {
            match e {
                Effect::PutSource(r) => {
                    self.sources.insert(r.source.key.to_string(), *r);
                }
                Effect::RemoveSource(k) => {
                    self.sources.remove(&k.to_string());
                }
                Effect::PutRun(r) => {
                    self.runs.insert(r.id, *r);
                }
                Effect::RemoveRun(id) => {
                    self.runs.remove(&id);
                }
                other => rest.push(other),
            }
        }
        rest
    }

    fn restore(&self, next_run: u64) -> Scheduler {
        let r = Scheduler::restore(
            self.sources.values().cloned().collect(),
            self.runs.values().cloned().collect(),
            next_run,
        );
        assert!(r.quarantined.is_empty(), "{:?}", r.quarantined);
        r.scheduler
    }
}

/// A herd of sources due at one instant is started [`MAX_STARTS_PER_STEP`] at a time: the
/// first step starts that many, `poll_timeout` says the rest are due already, and stepping on
/// starts every one exactly once.
#[test]
fn a_herd_of_due_sources_is_started_a_step_at_a_time_each_exactly_once() {
    let n = MAX_STARTS_PER_STEP * 2 + 7;
    let mut core = Scheduler::new();
    let mut stored = Stored::default();
    for i in 0..n {
        let mut s = restic_spec();
        s.source_pvc = format!("pvc-{i}");
        s.skip_initial_run = true;
        core.apply_source(key(&format!("s{i:04}")), s, 0, t0())
            .unwrap();
    }
    stored.take(&mut core);
    let due = t0() + Duration::hours(1);
    for r in stored.sources.values_mut() {
        r.source.status.next_sync_time = Some(due);
    }
    let mut core = stored.restore(1);
    let running = |core: &Scheduler| {
        let (sources, _) = core.list_sources(None, None, n + 1);
        sources
            .iter()
            .filter_map(|s| s.status.current_run)
            .collect::<std::collections::BTreeSet<RunId>>()
    };
    core.handle_timeout(due);
    assert_eq!(running(&core).len(), MAX_STARTS_PER_STEP);
    assert_eq!(core.poll_timeout(), Some(due), "the rest are due already");
    let mut steps = 1;
    while let Some(t) = core.poll_timeout().filter(|t| *t <= due) {
        core.handle_timeout(t);
        steps += 1;
        assert!(steps <= 3, "more steps than the herd needs");
        assert_eq!(core.check_indexes(), Ok(()));
    }
    assert_eq!(steps, 3);
    let ids = running(&core);
    assert_eq!(ids.len(), n, "every source has a run, each its own");
    assert_eq!(
        ids.iter().map(|id| id.0).collect::<Vec<_>>(),
        (1..=n as u64).collect::<Vec<_>>(),
        "and no run was started twice"
    );
    assert!(core.poll_timeout().is_none_or(|t| t > due));
}

fn report(run: RunId, generation: u64, o: Observation) -> Report {
    Report {
        run_id: run.to_string(),
        generation,
        observation: Some(o),
    }
}

fn current(core: &Scheduler, name: &str) -> Run {
    core.list_runs(&key(name), 1).unwrap().remove(0)
}

/// A source whose first run (ungated) is copying.
fn copying() -> (Scheduler, Run) {
    let mut core = Scheduler::new();
    core.apply_source(key("db"), restic_spec(), 0, t0())
        .unwrap();
    let run = current(&core, "db");
    let pvc = Observation::Pvc(PvcObserved {
        exists: true,
        ..Default::default()
    });
    core.handle_report(&apps(), report(run.id, run.generation, pvc), t0());
    assert_eq!(current(&core, "db").phase, RunPhase::Copying);
    (core, run)
}

/// Drives the current run of `name` (ungated) through a successful copy and mover.
fn succeed(core: &mut Scheduler, name: &str, now: DateTime<Utc>) {
    let run = current(core, name);
    let steps = [
        Observation::Pvc(PvcObserved {
            exists: true,
            ..Default::default()
        }),
        Observation::CopyCompleted(CopyCompleted {
            copy_name: "snap".into(),
            time: AgentTime::At(now),
        }),
        Observation::MoverFinished(MoverFinished {
            succeeded: true,
            logs: "ok".into(),
        }),
        Observation::CleanedUp,
    ];
    for o in steps {
        let generation = current(core, name).generation;
        core.handle_report(&apps(), report(run.id, generation, o), now);
    }
    let done = core
        .list_runs(&key(name), 100)
        .unwrap()
        .into_iter()
        .find(|r| r.id == run.id)
        .unwrap();
    assert_eq!(done.result, Some(RunResult::Successful), "{done:?}");
}

#[test]
fn durations_beyond_chronos_range_are_refused_naming_the_field_not_a_panic() {
    let mut core = Scheduler::new();
    let mut s = restic_spec();
    s.jitter = seconds(i64::MAX, 0);
    let e = invalid(core.apply_source(key("db"), s, 0, t0()));
    assert_eq!(e.field, "spec.jitter");
    assert!(e.rule.contains("between 0s and 86400s"), "{}", e.rule);

    let mut s = restic_spec();
    s.copy_trigger = Some(CopyTriggerInput {
        wait_timeout: seconds(i64::MIN, -999_999_999),
        on_timeout: 0,
        holders: Vec::new(),
        allowed_service_accounts: Vec::new(),
    });
    let e = invalid(core.apply_source(key("db"), s, 0, t0()));
    assert_eq!(e.field, "spec.copyTrigger.waitTimeout");
    assert!(
        core.drain_effects().is_empty(),
        "nothing of a refused apply"
    );
}

#[test]
fn preview_near_the_ends_of_the_calendar_answers_with_no_times() {
    let mut core = Scheduler::new();
    let mut s = restic_spec();
    s.jitter = seconds(3600, 0);
    core.apply_source(key("db"), s, 0, t0()).unwrap();
    for after in [DateTime::<Utc>::MIN_UTC, DateTime::<Utc>::MAX_UTC] {
        let (times, _) = core.preview(&key("db"), after, 100).unwrap();
        assert!(times.windows(2).all(|w| w[0] < w[1]));
        assert!(times.iter().all(|t| *t > after), "{times:?}");
    }
}

#[test]
fn a_prune_interval_past_the_end_of_the_calendar_never_comes_due_and_survives_a_restart() {
    let mut core = Scheduler::new();
    let mut stored = Stored::default();
    let mut s = restic_spec();
    s.trigger = None; // continuous: the next run starts right after the first
    restic_of(&mut s).prune_interval_days = Some(99_999_999);
    core.apply_source(key("db"), s.clone(), 0, t0()).unwrap();
    stored.take(&mut core);
    succeed(&mut core, "db", t0());
    stored.take(&mut core);
    let second = current(&core, "db");
    assert_ne!(second.phase, RunPhase::Finished, "a second run started");
    assert!(!second.restic_prune, "99999999 days from now is never");

    // The whole int32 range of VolSync is admitted, and restarting from the store is fine.
    restic_of(&mut s).prune_interval_days = Some(i32::MAX);
    let version = core.get_source(&key("db")).unwrap().version;
    core.apply_source(key("db"), s, version, t0()).unwrap();
    stored.take(&mut core);
    let mut restarted = stored.restore(core.next_run_counter());
    restarted.handle_timeout(t0() + Duration::days(3650));
    succeed(&mut restarted, "db", t0() + Duration::days(3650));
    assert!(!current(&restarted, "db").restic_prune);
}

#[test]
fn a_megabyte_agent_error_reported_eighty_times_keeps_the_run_small() {
    let mut core = Scheduler::new();
    core.apply_source(key("db"), restic_spec(), 0, t0())
        .unwrap();
    let run = current(&core, "db");
    let huge = "x".repeat(1 << 20);
    for i in 0..80 {
        let o = Observation::Error(AgentError {
            reason: format!("R{i}{huge}"),
            message: format!("{i}{huge}"),
            retryable: true,
        });
        core.handle_report(&apps(), report(run.id, run.generation, o), t0());
    }
    let run = current(&core, "db");
    let size = kept_bytes(&run);
    assert!(size < 100 * 1024, "run is {size} bytes");
    assert!(run.message.len() <= MAX_MESSAGE_BYTES);
    assert!(run.message.ends_with("(truncated)"), "marked as cut");
    assert!(
        run.timeline
            .iter()
            .all(|e| e.message.len() <= MAX_MESSAGE_BYTES)
    );
    let source = core.get_source(&key("db")).unwrap();
    let size = format!("{source:?}").len();
    assert!(size < 16 * 1024, "source is {size} bytes");
}

#[test]
fn mover_logs_of_megabytes_are_kept_as_a_tail_of_kilobytes() {
    let mut core = Scheduler::new();
    core.apply_source(key("db"), restic_spec(), 0, t0())
        .unwrap();
    let run = current(&core, "db");
    for o in [
        Observation::Pvc(PvcObserved {
            exists: true,
            ..Default::default()
        }),
        Observation::CopyCompleted(CopyCompleted::default()),
    ] {
        let g = current(&core, "db").generation;
        core.handle_report(&apps(), report(run.id, g, o), t0());
    }
    let logs = format!("{}the end", "é".repeat(2 << 20));
    let g = current(&core, "db").generation;
    core.handle_report(
        &apps(),
        report(
            run.id,
            g,
            Observation::MoverFailed(MoverFailed {
                attempt: u32::MAX,
                logs: logs.clone(),
            }),
        ),
        t0(),
    );
    let status = core
        .get_source(&key("db"))
        .unwrap()
        .status
        .latest_mover_status
        .unwrap();
    assert!(status.logs.len() <= MAX_LOG_BYTES, "{}", status.logs.len());
    assert!(status.logs.ends_with("the end"), "the tail is kept");
    assert!(status.logs.starts_with('('), "the cut is marked");
}

#[test]
fn an_agents_out_of_range_copy_time_is_replaced_by_the_time_of_the_report() {
    for bad in [
        // Far in the future of the scheduler: not a copy point that happened.
        AgentTime::At(t0() + Duration::days(1)),
        AgentTime::At(t0() + Duration::seconds(5 + 61)),
        // Something the edge could not read as a time at all.
        AgentTime::Invalid,
    ] {
        let (mut core, run) = copying();
        let g = current(&core, "db").generation;
        let later = t0() + Duration::seconds(5);
        core.handle_report(
            &apps(),
            report(
                run.id,
                g,
                Observation::CopyCompleted(CopyCompleted {
                    copy_name: "snap".into(),
                    time: bad,
                }),
            ),
            later,
        );
        let run = current(&core, "db");
        assert_eq!(run.copy_time, Some(later), "{bad:?}");
        assert!(run.timeline.iter().any(|e| e.event == "AgentTimeRefused"));
    }
}

#[test]
fn an_overlong_or_unprintable_copy_trigger_annotation_never_releases_a_run() {
    for bad in [
        "x".repeat(254),
        "v\u{202E}1".to_owned(),
        format!("{}... (truncated)", "y".repeat(1000)),
    ] {
        let mut core = Scheduler::new();
        core.apply_source(key("db"), restic_spec(), 0, t0())
            .unwrap();
        let run = current(&core, "db");
        let pvc = Observation::Pvc(PvcObserved {
            exists: true,
            use_copy_trigger: true,
            copy_trigger: bad.clone(),
            ..Default::default()
        });
        core.handle_report(&apps(), report(run.id, run.generation, pvc), t0());
        let run = current(&core, "db");
        assert_eq!(run.phase, RunPhase::Gating, "not released by {bad:?}");
        assert!(run.trigger.is_empty());
        assert!(
            run.message.contains("copy-trigger annotation"),
            "{}",
            run.message
        );
        assert!(
            run.message.len() < 512,
            "the value is quoted by a prefix only"
        );
    }
}

#[test]
fn an_agents_clock_a_little_ahead_is_trusted() {
    let (mut core, run) = copying();
    let g = current(&core, "db").generation;
    let ahead = t0() + Duration::seconds(30);
    let o = Observation::CopyCompleted(CopyCompleted {
        copy_name: "snap".into(),
        time: AgentTime::At(ahead),
    });
    core.handle_report(&apps(), report(run.id, g, o), t0());
    assert_eq!(current(&core, "db").copy_time, Some(ahead));
}

#[test]
fn names_are_checked_as_kubernetes_checks_them() {
    let mut core = Scheduler::new();
    // A DNS-1123 subdomain: up to 253 characters, parts longer than 63 allowed.
    for name in [
        "a".repeat(64),
        format!("{}.{}", "b".repeat(120), "c".repeat(132)),
    ] {
        assert_eq!(name.len().min(253), name.len());
        core.apply_source(key(&name), restic_spec(), 0, t0())
            .unwrap_or_else(|e| panic!("{} chars: {e}", name.len()));
    }
    for bad in ["a".repeat(254), "a..b".into(), "-a".into(), "a.-b".into()] {
        let e = invalid(core.apply_source(key(&bad), restic_spec(), 0, t0()));
        assert_eq!(e.field, "name", "{bad}");
    }
    // A megabyte name is quoted by a prefix only.
    let e = invalid(core.apply_source(key(&"n".repeat(1 << 20)), restic_spec(), 0, t0()));
    assert!(e.to_string().len() < 300, "{} bytes", e.to_string().len());
    assert!(e.rule.contains("1048576"), "{}", e.rule);
}

#[test]
fn invisible_characters_never_reach_an_annotation_or_a_log_line() {
    let mut core = Scheduler::new();
    for bad in [
        "tag\u{202E}",
        "\u{200B}tag",
        "a\u{FEFF}",
        "a\u{2028}b",
        "a\nb",
    ] {
        let mut s = restic_spec();
        s.trigger = Some(TriggerInput {
            schedule: None,
            manual: Some(bad.into()),
        });
        let e = invalid(core.apply_source(key("db"), s, 0, t0()));
        assert_eq!(e.field, "spec.trigger.manual", "{bad:?}");
        assert!(e.rule.contains("U+"), "{}", e.rule);
    }
    core.apply_source(key("db"), restic_spec(), 0, t0())
        .unwrap();
    let e = core.sync_now(&key("db"), "req\u{202E}1", t0()).unwrap_err();
    assert!(matches!(e, CoreError::Invalid(f) if f.field == "requestId"));
    let e = core
        .set_paused(&key("db"), true, "disk\u{200B}".into(), t0())
        .unwrap_err();
    assert!(matches!(e, CoreError::Invalid(f) if f.field == "note"));
    let target = CopyTarget {
        namespace: "apps".into(),
        pvc: "data".into(),
        source: String::new(),
    };
    let e = core
        .trigger(&target, "v\u{202E}", "", None, "", t0())
        .unwrap_err();
    assert!(matches!(e, CoreError::Invalid(f) if f.field == "value"));
}

#[test]
fn a_schedule_that_can_never_fire_is_refused() {
    let mut core = Scheduler::new();
    let mut s = restic_spec();
    s.trigger = Some(TriggerInput {
        schedule: Some("0 0 31 2 *".into()),
        manual: None,
    });
    let e = invalid(core.apply_source(key("db"), s, 0, t0()));
    assert_eq!(e.field, "spec.trigger.schedule");
    assert!(e.rule.contains("never fires"), "{}", e.rule);
}

#[test]
fn retain_last_is_a_string_holding_a_non_negative_integer_as_in_volsync() {
    let mut core = Scheduler::new();
    let with_last = |v: &str| {
        let mut s = restic_spec();
        restic_of(&mut s).retain = Some(RetainPolicy {
            last: Some(v.into()),
            ..Default::default()
        });
        s
    };
    core.apply_source(key("db"), with_last("10"), 0, t0())
        .unwrap();
    for bad in ["-1", "ten", "", "99999999999", "1.5"] {
        let e = invalid(core.apply_source(key("other"), with_last(bad), 0, t0()));
        assert_eq!(e.field, "spec.restic.retain.last", "{bad:?}");
    }
}

#[test]
fn free_form_objects_and_the_whole_spec_are_bounded_with_the_bound_in_the_error() {
    let mut core = Scheduler::new();
    let mut s = restic_spec();
    s.movers[0].volume.mover_affinity = Some(big_object(20_000));
    let e = invalid(core.apply_source(key("db"), s, 0, t0()));
    assert_eq!(e.field, "spec.restic.moverAffinity");
    assert!(e.rule.contains("16384"), "{}", e.rule);

    let mut s = restic_spec();
    let v = &mut s.movers[0].volume;
    v.mover_affinity = Some(big_object(15_000));
    v.mover_resources = Some(big_object(15_000));
    v.mover_security_context = Some(big_object(15_000));
    for i in 0..16 {
        s.movers[0]
            .volume
            .mover_pod_labels
            .insert(format!("k{i}"), "v".repeat(60));
    }
    restic_of(&mut s).unlock = Some("u".into());
    // Three objects of 15 KB each fit; the spec as a whole is bounded too.
    core.apply_source(key("db"), as_sent(s.clone()), 0, t0())
        .unwrap();
    restic_of(&mut s).custom_ca = Some(CustomCa {
        secret_name: "ca".into(),
        key: "x".repeat(30_000),
        ..Default::default()
    });
    let e = invalid(core.apply_source(key("db2"), as_sent(s), 0, t0()));
    assert_eq!(e.field, "spec");
    assert!(e.rule.contains("65536"), "{}", e.rule);
}

#[test]
fn restoring_quarantines_records_it_cannot_run_and_loads_the_rest() {
    let mut core = Scheduler::new();
    let mut stored = Stored::default();
    core.apply_source(key("good"), restic_spec(), 0, t0())
        .unwrap();
    stored.take(&mut core);
    let good_run = current(&core, "good");

    // A source whose spec a later version would refuse (a cron that never fires) still loads.
    let mut old = stored.sources["apps/good"].clone();
    old.source.key = key("old");
    old.source.spec.trigger = TriggerSpec::Schedule("0 0 31 2 *".into());
    // A source the scheduler cannot run at all: its schedule does not parse.
    let mut broken = stored.sources["apps/good"].clone();
    broken.source.key = key("broken");
    broken.source.spec.trigger = TriggerSpec::Schedule("not a cron".into());
    let mut runs: Vec<Run> = stored.runs.values().cloned().collect();
    let mut orphan = Run::new(
        RunId(900),
        key("broken"),
        "data".into(),
        RunReason::Schedule,
        t0(),
    );
    orphan.phase = RunPhase::Copying;
    runs.push(orphan);
    let records = vec![stored.sources["apps/good"].clone(), old, broken];
    let r = Scheduler::restore(records, runs, 2);
    let mut quarantined: Vec<(&str, String)> = r
        .quarantined
        .iter()
        .map(|q| (q.kind, q.key.clone()))
        .collect();
    quarantined.sort();
    assert_eq!(
        quarantined,
        vec![
            ("run", "run-900".to_owned()),
            ("source", "apps/broken".to_owned()),
        ]
    );
    assert_eq!(r.warnings.len(), 1);
    assert_eq!(r.warnings[0].key, "apps/old");
    let core = r.scheduler;
    assert!(core.get_source(&key("good")).is_ok());
    assert_eq!(current(&core, "good").id, good_run.id);
    let old = core.get_source(&key("old")).unwrap();
    assert!(
        old.status.message.contains("never fires"),
        "the broken rule is shown on the source"
    );
    assert_eq!(
        core.next_run_counter(),
        901,
        "a quarantined run's number is never reused"
    );
}

/// A follower's copy takes hostile records by the rules a restore does: a source it cannot run
/// is left out (and the copy it replaced with it, and that source's runs in flight), a source
/// that breaks a newer rule loads with the rule shown, a run put in the commit that puts its
/// source loads whatever their order, and a removed source takes its runs in flight along.
#[test]
fn a_followers_copy_leaves_out_what_a_restore_would_and_keeps_the_rest() {
    let mut core = Scheduler::new();
    let mut stored = Stored::default();
    core.apply_source(key("good"), restic_spec(), 0, t0())
        .unwrap();
    stored.take(&mut core);
    let good = stored.sources["apps/good"].clone();
    let good_run = current(&core, "good");
    let mut mirror = Scheduler::new();

    // The run before its source, in one commit.
    let out = mirror.mirror(vec![
        Mirrored::PutRun(Box::new(good_run.clone())),
        Mirrored::PutSource(Box::new(good.clone())),
        Mirrored::NextRun(core.next_run_counter()),
    ]);
    assert_eq!(out.quarantined, vec![]);
    assert_eq!(current(&mirror, "good").id, good_run.id);
    assert_eq!(mirror.next_run_counter(), core.next_run_counter());

    // The same source rewritten with a schedule that does not parse: left out, run and all.
    let mut broken = good.clone();
    broken.source.spec.trigger = TriggerSpec::Schedule("not a cron".into());
    let out = mirror.mirror(vec![Mirrored::PutSource(Box::new(broken))]);
    let left_out: Vec<(&str, String)> = out
        .quarantined
        .iter()
        .map(|q| (q.kind, q.key.clone()))
        .collect();
    assert_eq!(
        left_out,
        vec![
            ("source", "apps/good".to_owned()),
            ("run", good_run.id.to_string())
        ]
    );
    assert!(mirror.get_source(&key("good")).is_err());
    assert_eq!(mirror.copy_status("apps", "data").run_id, None);

    // Fixed again, with its run: both back.
    let out = mirror.mirror(vec![
        Mirrored::PutSource(Box::new(good.clone())),
        Mirrored::PutRun(Box::new(good_run.clone())),
    ]);
    assert_eq!(out.quarantined, vec![]);
    assert!(out.cleared.contains(&("source", "apps/good".to_owned())));
    assert_eq!(current(&mirror, "good").id, good_run.id);

    // A spec a later version refuses loads, the rule shown, as a restore shows it.
    let mut old = good.clone();
    old.source.key = key("old");
    old.source.spec.trigger = TriggerSpec::Schedule("0 0 31 2 *".into());
    let out = mirror.mirror(vec![Mirrored::PutSource(Box::new(old))]);
    assert_eq!(out.warnings.len(), 1);
    assert!(
        mirror
            .get_source(&key("old"))
            .unwrap()
            .status
            .message
            .contains("never fires")
    );

    // A run in flight whose source is nowhere: left out.
    let mut orphan = Run::new(
        RunId(900),
        key("nowhere"),
        "x".into(),
        RunReason::Schedule,
        t0(),
    );
    orphan.phase = RunPhase::Copying;
    let out = mirror.mirror(vec![Mirrored::PutRun(Box::new(orphan))]);
    assert_eq!(out.quarantined.len(), 1);
    assert_eq!(mirror.next_run_counter(), 901, "its number is never reused");

    // The source removed: its run in flight goes with it.
    let out = mirror.mirror(vec![Mirrored::RemoveSource(key("good"))]);
    assert_eq!(out.quarantined.len(), 1, "{out:?}");
    assert!(mirror.list_runs(&key("good"), 10).is_err());
    assert_eq!(mirror.copy_status("apps", "data").run_id, None);
    assert_eq!(mirror.check_indexes(), Ok(()));
}

// ------------------------------------------------------------------------ property tests

/// The same cases on every run, so CI is deterministic; `PROPTEST_RNG_SEED=<n>` explores others.
fn seed() -> proptest::test_runner::RngSeed {
    let env = std::env::var("PROPTEST_RNG_SEED").ok();
    proptest::test_runner::RngSeed::Fixed(env.and_then(|s| s.parse().ok()).unwrap_or(0x5eed))
}

fn any_duration() -> impl Strategy<Value = Option<RawDuration>> {
    prop_oneof![
        Just(None),
        (any::<i64>(), any::<i32>()).prop_map(|(s, n)| seconds(s, n)),
        (-100_000i64..1_000_000, -1_000_000_000i32..1_000_000_000).prop_map(|(s, n)| seconds(s, n)),
    ]
}

fn any_text() -> impl Strategy<Value = String> {
    prop_oneof![
        "[a-z0-9.-]{0,70}",
        any::<String>(),
        "[a-z0-9*/, @-]{0,30}",
        Just("0 0 29 2 *".to_owned()),
    ]
}

fn any_time() -> impl Strategy<Value = DateTime<Utc>> {
    prop_oneof![
        (DateTime::<Utc>::MIN_UTC.timestamp()..=DateTime::<Utc>::MAX_UTC.timestamp())
            .prop_map(|s| DateTime::from_timestamp(s, 0).unwrap()),
        (0i64..4_000_000_000).prop_map(|s| DateTime::from_timestamp(s, 0).unwrap()),
        Just(DateTime::<Utc>::MIN_UTC),
        Just(DateTime::<Utc>::MAX_UTC),
    ]
}

/// An agent's timestamp as the gRPC edge hands it to the core: none where the wire value is no
/// time (negative nanoseconds), else any instant chrono holds (the seconds wrapped into its
/// range, the nanoseconds into a second).
fn agent_time(secs: i64, nanos: i32) -> Option<DateTime<Utc>> {
    let nanos = u32::try_from(nanos).ok()? % 1_000_000_000;
    let min = DateTime::<Utc>::MIN_UTC.timestamp();
    let span = DateTime::<Utc>::MAX_UTC.timestamp() - min + 1;
    DateTime::from_timestamp(min + secs.rem_euclid(span), nanos)
}

fn any_spec() -> impl Strategy<Value = SpecInput> {
    (
        any_text(),
        proptest::option::of(any_text()),
        proptest::option::of(any_text()),
        any_duration(),
        any_duration(),
        proptest::option::of(any::<i32>()),
        any_text(),
        0i32..6,
        proptest::option::of(any_text()),
        any::<bool>(),
    )
        .prop_map(
            |(pvc, schedule, manual, jitter, wait, prune, tz, method, last, skip)| SpecInput {
                source_pvc: pvc,
                trigger: Some(TriggerInput { schedule, manual }),
                time_zone: if tz.len() % 3 == 0 {
                    "Europe/Paris".into()
                } else {
                    tz
                },
                jitter,
                copy_trigger: Some(CopyTriggerInput {
                    wait_timeout: wait,
                    on_timeout: method % 3,
                    holders: Vec::new(),
                    allowed_service_accounts: Vec::new(),
                }),
                skip_initial_run: skip,
                movers: vec![MoverInput {
                    copy_method: method,
                    ..MoverInput::new(
                        CopyMethod::Direct,
                        MoverKind::Restic(ResticSpec {
                            repository: "restic-config".into(),
                            prune_interval_days: prune,
                            retain: Some(RetainPolicy {
                                last,
                                ..Default::default()
                            }),
                            ..Default::default()
                        }),
                    )
                }],
                ..Default::default()
            },
        )
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 256,
        failure_persistence: None,
        rng_seed: seed(),
        ..ProptestConfig::default()
    })]

    /// Admission of any spec at any time either refuses with a field or admits; an admitted
    /// source previews, comes due and restarts without a panic.
    #[test]
    fn any_spec_at_any_time_is_admitted_or_refused_never_a_panic(
        name in any_text(),
        spec in any_spec(),
        now in any_time(),
        after in any_time(),
    ) {
        let mut core = Scheduler::new();
        match core.apply_source(SourceKey::new("apps", &name), spec, 0, now) {
            Err(CoreError::Invalid(f)) => {
                prop_assert!(!f.field.is_empty());
                prop_assert!(f.to_string().len() < 1024, "{}", f);
            }
            Err(other) => prop_assert!(false, "unexpected {other:?}"),
            Ok(_) => {
                let k = SourceKey::new("apps", &name);
                if let Ok((times, _)) = core.preview(&k, after, 5) {
                    prop_assert!(times.iter().all(|t| *t > after));
                    prop_assert!(times.windows(2).all(|w| w[0] < w[1]));
                }
                core.handle_timeout(after);
                prop_assert_eq!(core.check_indexes(), Ok(()));
                let mut stored = Stored::default();
                stored.take(&mut core);
                let mut again = stored.restore(core.next_run_counter());
                again.handle_timeout(now);
            }
        }
    }

    /// Reports, Triggers with any hold, lease requests and EndHold calls with any timestamps,
    /// strings and counts, at any time, leave every stored timestamp valid and every kept text
    /// bounded.
    #[test]
    fn any_report_at_any_time_keeps_the_run_valid_and_bounded(
        steps in proptest::collection::vec(
            (0u8..11, any::<String>(), any::<i64>(), any::<i32>(), any::<u32>(), any::<bool>()),
            1..12,
        ),
        start in any_time(),
        later in proptest::collection::vec(0i64..10_000_000_000, 12),
    ) {
        let mut core = Scheduler::new();
        let mut s = restic_spec();
        s.trigger = None;
        if core.apply_source(key("db"), s, 0, start).is_err() {
            return Ok(());
        }
        let mut now = start;
        for ((kind, text, secs, nanos, count, flag), dt) in steps.into_iter().zip(later) {
            now = now.checked_add_signed(Duration::seconds(dt)).unwrap_or(now);
            let Some(run) = core.list_runs(&key("db"), 1).unwrap().into_iter().next() else {
                break;
            };
            let time = agent_time(secs, nanos);
            let o = match kind {
                0 => Observation::Pvc(PvcObserved {
                    exists: flag,
                    use_copy_trigger: count % 2 == 0,
                    copy_trigger: text.clone(),
                    latest_copy_trigger: String::new(),
                    latest_copy_status: "WaitingForTrigger".into(),
                    waiting_since: text,
                }),
                1 => Observation::CopyCompleted(CopyCompleted {
                    copy_name: text,
                    time: time.map_or(AgentTime::Invalid, AgentTime::At),
                }),
                2 => Observation::MoverFinished(MoverFinished { succeeded: flag, logs: text }),
                3 => Observation::MoverFailed(MoverFailed { attempt: count, logs: text }),
                4 => Observation::CleanedUp,
                5 => Observation::Error(AgentError {
                    reason: text.clone(),
                    message: text,
                    retryable: flag,
                }),
                6 => {
                    let target = CopyTarget {
                        namespace: "apps".into(),
                        pvc: "data".into(),
                        source: String::new(),
                    };
                    let hold = seconds(secs, nanos);
                    let holder = if flag { text.as_str() } else { "" };
                    let _ = core.trigger(&target, &text, &run.id.to_string(), hold, holder, now);
                    continue;
                }
                7 => {
                    let request = LeaseRequest {
                        run_id: run.id.to_string(),
                        generation: if flag { run.generation } else { u64::from(count) },
                        request_id: u64::from(count),
                    };
                    if let snapgate_scheduler_core::LeaseAnswer::Granted(left) =
                        core.lease(&apps(), &request, now)
                    {
                        prop_assert!(left > Duration::zero());
                    }
                    continue;
                }
                9 => Observation::MoverStuck(MoverStuck {
                    reason: if flag { text.clone() } else { String::new() },
                    message: text.repeat(3),
                    pod: text.clone(),
                    job: text,
                    attempt: count,
                    since: time,
                    deadline: time,
                }),
                8 => {
                    let target = CopyTarget {
                        namespace: "apps".into(),
                        pvc: "data".into(),
                        source: String::new(),
                    };
                    let _ = core.end_hold(&target, &run.id.to_string(), &text, now);
                    continue;
                }
                _ => {
                    core.handle_timeout(now);
                    continue;
                }
            };
            core.handle_report(&apps(), report(run.id, run.generation, o), now);
            core.handle_timeout(now);
            prop_assert_eq!(core.check_indexes(), Ok(()));
        }
        for run in core.list_runs(&key("db"), 100).unwrap() {
            for t in [
                run.copy_time,
                run.waiting_since,
                run.wait_deadline,
                Some(run.start_time),
                run.lease_deadline,
            ]
            .into_iter()
            .chain(run.holds.iter().map(|h| h.deadline))
            .chain(run.mover_stuck.iter().flat_map(|s| [s.since, s.deadline]))
            .flatten()
            {
                // No leap-second instant, which a protobuf Timestamp cannot carry.
                prop_assert!(t.timestamp_subsec_nanos() < 1_000_000_000, "{}", t);
            }
            prop_assert!(run.message.len() <= MAX_MESSAGE_BYTES);
            prop_assert!(run.mover_status.as_ref().is_none_or(|m| m.logs.len() <= MAX_LOG_BYTES));
            prop_assert!(kept_bytes(&run) < 128 * 1024, "{} bytes", kept_bytes(&run));
        }
    }

    /// A store holding any timestamps restores, and time moves on, without a panic.
    #[test]
    fn any_stored_times_restore_and_run_on(
        next_sync in any_time(),
        last_pruned in any_time(),
        waiting in any_time(),
        now in any_time(),
        next_run in any::<u64>(),
        generation in any::<u64>(),
    ) {
        let mut core = Scheduler::new();
        let mut stored = Stored::default();
        let mut s = restic_spec();
        restic_of(&mut s).prune_interval_days = Some(i32::MAX);
        core.apply_source(key("db"), s, 0, t0()).unwrap();
        stored.take(&mut core);
        for r in stored.sources.values_mut() {
            let st = &mut r.source.status;
            st.next_sync_time = Some(next_sync);
            st.last_pruned = Some(last_pruned);
            st.current_run = None;
        }
        for r in stored.runs.values_mut() {
            r.phase = RunPhase::WaitingForTrigger;
            r.waiting_since = Some(waiting);
            r.wait_deadline = Some(waiting);
            r.generation = generation;
            if generation % 2 == 0 {
                // Released by a Trigger, with a lease of any time.
                r.phase = RunPhase::Copying;
                r.released_by = Some(ReleasedBy::Rpc);
                r.trigger = "v".into();
                r.lease_deadline = Some(waiting);
            }
        }
        let r = Scheduler::restore(
            stored.sources.values().cloned().collect(),
            stored.runs.values().cloned().collect(),
            next_run,
        );
        let mut core = r.scheduler;
        core.handle_timeout(now);
        prop_assert_eq!(core.check_indexes(), Ok(()));
        core.handle_timeout(DateTime::<Utc>::MAX_UTC);
        let _ = core.sync_now(&key("db"), "again", now);
    }
}
