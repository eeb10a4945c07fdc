//! The scheduler's state: sources, their runs, and the copy-trigger state machine.
//!
//! Every public method takes `now` and records its consequences as [`Effect`]s, drained by the
//! shell with [`Scheduler::drain_effects`]. Persistence effects come first in the drained list
//! and must be made durable before the others are acted on.

use std::collections::BTreeMap;

use chrono::{DateTime, Duration, Utc};
use crate::{
    RunId, SourceKey,
    model::{
        Author, Condition, CopyMethod, CopyState, CopyStatus, CopyTarget, Directive,
        DirectivePhase, Hold, LeaseRequest, MoverStatus, MoverStuck, PvcObserved, RawDuration,
        ReleasedBy, Report, ReportObservation, Run, RunPhase, RunReason, RunResult, Source,
        SourceRecord, SourceSpec, SourceStatus, SpecInput, TimeoutPolicy, TimelineEntry,
        TriggerSpec,
    },
    schedule::SyncTrigger,
    text::truncate,
    validate::{self, Admitted, InvalidField, Mover},
};

/// Runs kept per source after they finish, for `ListRuns` and SyncNow idempotency.
pub const HISTORY_PER_SOURCE: usize = 20;
/// Timeline entries kept per run.
const TIMELINE_LIMIT: usize = 64;
/// Why the runs of a deleted namespace ended.
const NAMESPACE_DELETED_TEXT: &str =
    "the namespace is being deleted: its sources are deleted with it";

/// How long a continuous source waits after a run that did not succeed.
const CONTINUOUS_RETRY: Duration = Duration::seconds(60);
/// Why a paused source's run asks for no copy trigger.
const PAUSED_TEXT: &str =
    "source paused: no copy is made and no application is asked to quiesce until it is resumed";
/// Why a run waits again after its lease ran out.
const LEASE_EXPIRED_TEXT: &str = "the hold lease ran out before the copy point: no copy was counted; waiting for a new copy trigger";
/// The most values a run may spend without a copy (expired leases, ended holds): past it the
/// run fails rather than forget one, since a forgotten value could release it again.
pub const SPENT_PER_RUN: usize = 64;
/// The text VolSync writes into latestMoverStatus.logs when waiting times out.
pub const TIMEOUT_TEXT: &str = "Timed out waiting for copy-trigger to be modified for pvc";

/// The longest message kept from a report, a condition or a timeline entry; longer ones are
/// cut on a character boundary with a marker.
pub const MAX_MESSAGE_BYTES: usize = 1024;
/// The most bytes of a mover log kept (the end of it): a tail, not the whole log.
pub const MAX_LOG_BYTES: usize = 4096;
/// The largest `ListSources` or `ListRuns` answer, encoded: well inside a gRPC client's
/// default 4 MiB message limit.
pub const MAX_PAGE_BYTES: usize = 3 * 1024 * 1024;

/// The condition reason of a source whose mover pod is stuck (the message says which pod,
/// Kubernetes' reason and message, and when the attempt fails).
const MOVER_STUCK_REASON: &str = "MoverStuck";
/// The most bytes kept of a stuck mover's reason (Kubernetes' reasons are short words).
const MAX_STUCK_REASON_BYTES: usize = 128;
/// The most bytes kept of a pod or Job name an agent reports (a DNS-1123 subdomain).
const MAX_NAME_BYTES: usize = 253;

/// A stuck-mover report within the scheduler's bounds: strings cut, times it cannot carry
/// are dropped by the edge.
fn bounded_stuck(s: MoverStuck) -> MoverStuck {
    MoverStuck {
        reason: truncate(&s.reason, MAX_STUCK_REASON_BYTES),
        message: truncate(&s.message, MAX_MESSAGE_BYTES / 2),
        pod: truncate(&s.pod, MAX_NAME_BYTES),
        job: truncate(&s.job, MAX_NAME_BYTES),
        attempt: s.attempt,
        since: s.since,
        deadline: s.deadline,
    }
}

/// What a run and its source say of a stuck mover: Kubernetes' reason, the pod (or the Job
/// that cannot make one), its message, since when and when the attempt fails.
fn stuck_text(s: &MoverStuck) -> String {
    let time = |t: Option<DateTime<Utc>>| t.map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true));
    let what = if s.pod.is_empty() {
        format!(
            "mover Job {} (attempt {}) cannot create its pod",
            s.job, s.attempt
        )
    } else {
        format!("mover pod {} (Job {}, attempt {})", s.pod, s.job, s.attempt)
    };
    let mut text = format!("{}: {what}", s.reason);
    if !s.message.is_empty() {
        text.push_str(": ");
        text.push_str(&s.message);
    }
    if let Some(since) = time(s.since) {
        text.push_str(&format!("; stuck since {since}"));
    }
    if let Some(deadline) = time(s.deadline) {
        text.push_str(&format!(
            "; the attempt fails at {deadline} unless it recovers"
        ));
    }
    truncate(&text, MAX_MESSAGE_BYTES)
}

/// A stored record that was not loaded, or loaded with a warning: which, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Quarantined {
    /// `source` or `run`.
    pub kind: &'static str,
    /// `namespace/name` of a source, or a run id.
    pub key: String,
    /// What is wrong with it.
    pub reason: String,
}

impl Quarantined {
    /// A source record.
    pub fn source(key: &str, reason: &str) -> Self {
        Self {
            kind: "source",
            key: key.to_owned(),
            reason: reason.to_owned(),
        }
    }
    /// A run record.
    pub fn run(key: &str, reason: &str) -> Self {
        Self {
            kind: "run",
            key: key.to_owned(),
            reason: reason.to_owned(),
        }
    }
}

/// What [`Scheduler::restore`] rebuilt from the store.
pub struct Restored {
    /// The state.
    pub scheduler: Scheduler,
    /// Records left out: kept in the store, not acted on.
    pub quarantined: Vec<Quarantined>,
    /// Sources loaded although they break a rule of this version.
    pub warnings: Vec<Quarantined>,
}

/// The last `max` bytes of a log at most, from a character boundary, marked when cut.
fn log_tail(log: &str, max: usize) -> String {
    if log.len() <= max {
        return log.to_owned();
    }
    let marker = format!("({} earlier bytes cut)\n", log.len().saturating_sub(max));
    let kept = crate::text::tail(log, max.saturating_sub(marker.len()));
    format!("{marker}{kept}")
}

/// How far ahead of the scheduler's clock an agent's clock may be.
const MAX_AGENT_CLOCK_AHEAD: Duration = Duration::minutes(1);

/// A time an agent sent, if no later than `now` plus [`MAX_AGENT_CLOCK_AHEAD`] (the edge has
/// already dropped what is not a valid time).
fn valid_agent_time(t: Option<DateTime<Utc>>, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
    let latest = now.checked_add_signed(MAX_AGENT_CLOCK_AHEAD).unwrap_or(now);
    t.filter(|t| *t <= latest)
}

/// Why a request was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CoreError {
    /// Bad input: a field breaks a rule.
    #[error(transparent)]
    Invalid(#[from] InvalidField),
    /// No such source.
    #[error("source {0} not found")]
    NotFound(SourceKey),
    /// Create-only apply of a source that exists.
    #[error(
        "source {key} already exists at version {version}; pass expectedVersion {version} to update it"
    )]
    AlreadyExists {
        /// The source.
        key: SourceKey,
        /// Its current version.
        version: u64,
    },
    /// Optimistic concurrency: the caller's version is stale.
    #[error(
        "source {key} is at version {actual}, not the expected {expected}; get it again and retry"
    )]
    VersionConflict {
        /// The source.
        key: SourceKey,
        /// What the caller expected.
        expected: u64,
        /// What is stored.
        actual: u64,
    },
    /// The request is valid but the state does not allow it.
    #[error("{0}")]
    FailedPrecondition(String),
    /// The caller may not act on this target.
    #[error("{0}")]
    PermissionDenied(String),
}

/// Something the shell must do after a call into the core.
#[derive(Clone, Debug, PartialEq)]
pub enum Effect {
    /// Persist this source record (replacing the stored one).
    PutSource(Box<SourceRecord>),
    /// Remove a source record.
    RemoveSource(SourceKey),
    /// Persist this run.
    PutRun(Box<Run>),
    /// Remove a run from the store (history trimmed).
    RemoveRun(RunId),
    /// Deliver to the agent serving `namespace` (after persisting).
    Send {
        /// The run's namespace.
        namespace: String,
        /// The directive for the run.
        directive: Box<Directive>,
    },
    /// Tell the agent serving `namespace` to stop acting on a run.
    Forget {
        /// The run's namespace.
        namespace: String,
        /// The run.
        run_id: RunId,
    },
    /// Tell the agent serving the source's namespace to delete what it made for a deleted
    /// source that outlives runs (answered by Retired; resent on every reconnect until then).
    Retire {
        /// The deleted source.
        source: SourceKey,
        /// Its restic cache PVC stays (`restic.keepCache`).
        keep_cache: bool,
    },
    /// The copy status of a PVC changed (for WatchCopy streams).
    CopyStatus(Box<CopyStatus>),
    /// A measurement, for metrics.
    Observe(Observation),
}

/// Facts for metrics, labelled by source and mover.
#[derive(Clone, Debug, PartialEq)]
pub enum Observation {
    /// A run ended.
    RunFinished {
        /// The source.
        source: SourceKey,
        /// Its mover.
        mover: Mover,
        /// How it ended.
        result: RunResult,
        /// From start to end.
        duration: Duration,
        /// Whether it completed later than the second schedule time after the previous one.
        missed: bool,
    },
    /// A copy trigger released a run that waited this long.
    TriggerWait {
        /// The source.
        source: SourceKey,
        /// Its mover.
        mover: Mover,
        /// How long it waited.
        waited: Duration,
    },
    /// A run's wait for a copy trigger timed out.
    TriggerTimeout {
        /// The source.
        source: SourceKey,
        /// Its mover.
        mover: Mover,
    },
    /// A released run's hold lease ran out before its copy point.
    LeaseExpired {
        /// The source.
        source: SourceKey,
        /// Its mover.
        mover: Mover,
    },
    /// A mover Job attempt failed.
    MoverFailure {
        /// The source.
        source: SourceKey,
        /// Its mover.
        mover: Mover,
    },
}

/// What a report from an agent did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ReportOutcome {
    /// It moved the run on, or was recorded.
    Applied,
    /// It was for a run or phase that is no longer current; nothing changed.
    Stale(String),
}

/// What a copy target names: a PVC, and when given by source, that source.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    /// The namespace.
    pub namespace: String,
    /// The PVC.
    pub pvc: String,
    /// Only this source's runs (a target given by source).
    pub source: Option<String>,
}

/// An accepted Trigger call.
#[derive(Clone, Debug, PartialEq)]
pub struct TriggerAccepted {
    /// The run it released.
    pub run_id: RunId,
    /// The copy status after it.
    pub status: CopyStatus,
    /// True when it repeated an earlier accepted call (nothing changed).
    pub repeated: bool,
    /// The end of the hold lease: no copy point after it counts.
    pub lease_deadline: Option<DateTime<Utc>>,
}

/// How long a Trigger's hold lease lasts: what the caller says, within bounds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LeasePolicy {
    /// The hold of a Trigger that names none.
    pub default_hold: Duration,
    /// The longest hold: a longer one is cut to it (an earlier deadline is always safe).
    pub max_hold: Duration,
}

impl Default for LeasePolicy {
    /// 10 minutes by default, at most 1 hour.
    fn default() -> Self {
        Self {
            default_hold: Duration::minutes(10),
            max_hold: Duration::hours(1),
        }
    }
}

/// The scheduler's answer to an agent's lease request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LeaseAnswer {
    /// The lease lasts this long from now.
    Granted(Duration),
    /// No lease, and why.
    Refused(String),
}

struct SourceEntry {
    record: SourceRecord,
    admitted: Admitted,
}

impl SourceEntry {
    fn source(&self) -> &Source {
        &self.record.source
    }
    fn source_mut(&mut self) -> &mut Source {
        &mut self.record.source
    }
    fn status_mut(&mut self) -> &mut SourceStatus {
        &mut self.record.source.status
    }
    fn status(&self) -> &SourceStatus {
        &self.record.source.status
    }
    fn spec(&self) -> &SourceSpec {
        &self.record.source.spec
    }
}

/// The scheduler's whole state. See the crate docs for the picture.
#[derive(Default)]
pub struct Scheduler {
    sources: BTreeMap<SourceKey, SourceEntry>,
    /// Runs not yet finished.
    active: BTreeMap<RunId, Run>,
    /// Finished runs, at most [`HISTORY_PER_SOURCE`] per source.
    history: BTreeMap<RunId, Run>,
    next_run: u64,
    effects: Vec<Effect>,
    lease_policy: LeasePolicy,
}

fn run_key(run: &Run) -> SourceKey {
    run.source.clone()
}

/// The phases in which a run owns its PVC's copy-trigger annotations: its copy phase, and its
/// cleanup while that still has annotations to set right (a run that ended before its copy
/// point clears its waiting annotations and records a spent value): the next run on the PVC
/// must not read them first.
fn holds_pvc(run: &Run) -> bool {
    match run.phase {
        RunPhase::Gating | RunPhase::WaitingForTrigger | RunPhase::Copying => true,
        RunPhase::CleaningUp => run.gated && run.copy_time.is_none(),
        _ => false,
    }
}

/// Records `value` as spent by `run`. Never forgets one: a run that reaches [`SPENT_PER_RUN`]
/// is failed by [`Scheduler::fail_if_spent_out`].
fn spend(run: &mut Run, value: String) {
    if value.is_empty() || run.spent_triggers.contains(&value) {
        return;
    }
    run.spent_triggers.push(value);
}

/// The holders of `holders` that have no hold on `run`.
fn pending_holders(run: &Run, holders: &[String]) -> Vec<String> {
    holders
        .iter()
        .filter(|h| !run.holds.iter().any(|x| x.holder == **h))
        .cloned()
        .collect()
}

/// A released run whose hold lease has run out, by the scheduler's clock, before its copy point.
fn lease_over(run: &Run, now: DateTime<Utc>) -> bool {
    run.phase == RunPhase::Copying
        && run.copy_time.is_none()
        && run.lease_deadline.is_some_and(|d| d <= now)
}

fn note(run: &mut Run, now: DateTime<Utc>, event: &str, message: impl Into<String>) {
    if run.timeline.len() >= TIMELINE_LIMIT {
        run.timeline.remove(1);
    }
    run.timeline.push(TimelineEntry {
        time: now,
        event: event.to_owned(),
        message: truncate(&message.into(), MAX_MESSAGE_BYTES),
    });
}

/// The copy status a run shows to applications.
fn copy_state(run: &Run) -> CopyState {
    if run.copy_time.is_some() {
        return CopyState::Completed;
    }
    match (run.phase, run.result) {
        (RunPhase::Queued | RunPhase::Gating, _) => CopyState::Pending,
        (RunPhase::WaitingForTrigger, _) => CopyState::WaitingForTrigger,
        (RunPhase::Copying, _) | (RunPhase::Transferring, None) => CopyState::InProgress,
        (_, Some(RunResult::Successful)) => CopyState::Completed,
        (_, Some(RunResult::TimedOut)) => CopyState::TimedOut,
        (_, Some(RunResult::Aborted)) => CopyState::Aborted,
        (_, Some(RunResult::Failed)) => CopyState::Failed,
        (_, None) => CopyState::InProgress,
    }
}

impl Scheduler {
    /// An empty scheduler (a new store).
    pub fn new() -> Self {
        Self {
            next_run: 1,
            ..Self::default()
        }
    }

    /// The hold lease bounds for Triggers from now on.
    pub fn set_lease_policy(&mut self, policy: LeasePolicy) {
        self.lease_policy = policy;
    }

    /// Rebuilds the state from what the store holds. Runs in flight resume where they were.
    ///
    /// Never fails and never panics on what it reads: a record it cannot run is left out and
    /// reported as [`Restored::quarantined`] (the shell keeps it in the store); a source whose
    /// spec breaks a rule tightened since it was stored loads as stored, with the rule in its
    /// status message and in [`Restored::warnings`].
    pub fn restore(records: Vec<SourceRecord>, runs: Vec<Run>, next_run: u64) -> Restored {
        let mut s = Self::new();
        s.next_run = next_run.max(1);
        let mut quarantined = Vec::new();
        let mut warnings = Vec::new();
        for mut record in records {
            let key = record.source.key.clone();
            match validate::admit_stored(&key, &record.source.spec) {
                Ok((admitted, broken)) => {
                    if let Some(rule) = broken {
                        record.source.status.message = truncate(
                            &format!(
                                "the stored spec breaks a rule of this version ({rule}); it runs as stored until a corrected spec is applied"
                            ),
                            MAX_MESSAGE_BYTES,
                        );
                        warnings.push(Quarantined::source(&key.to_string(), &rule.to_string()));
                    }
                    s.sources.insert(key, SourceEntry { record, admitted });
                }
                Err(rule) => quarantined.push(Quarantined::source(
                    &key.to_string(),
                    &format!("cannot be run: {rule}"),
                )),
            }
        }
        for run in runs {
            let id = run.id;
            // Even a run left out keeps its number: no new run may overwrite its record.
            s.next_run = s.next_run.max(id.0.saturating_add(1));
            if run.phase == RunPhase::Finished {
                s.history.insert(id, run);
            } else if !s.sources.contains_key(&run.source) {
                quarantined.push(Quarantined::run(
                    &id.to_string(),
                    &format!("in flight, but its source {} is not loaded", run.source),
                ));
            } else {
                s.active.insert(id, run);
            }
        }
        Restored {
            scheduler: s,
            quarantined,
            warnings,
        }
    }

    /// Takes the effects recorded since the last call: persistence first, then the rest.
    pub fn drain_effects(&mut self) -> Vec<Effect> {
        let mut effects = std::mem::take(&mut self.effects);
        effects.sort_by_key(|e| match e {
            Effect::PutSource(_)
            | Effect::RemoveSource(_)
            | Effect::PutRun(_)
            | Effect::RemoveRun(_) => 0,
            _ => 1,
        });
        effects
    }

    /// The next run number, to persist with the records.
    pub fn next_run_counter(&self) -> u64 {
        self.next_run
    }

    // ---------------------------------------------------------------- sources

    /// Creates a source (`expected_version == 0`) or replaces its spec, with no author (as a
    /// scheduler without authentication does).
    pub fn apply_source(
        &mut self,
        key: SourceKey,
        spec: SpecInput,
        expected_version: u64,
        now: DateTime<Utc>,
    ) -> Result<Source, CoreError> {
        self.apply_source_by(key, spec, expected_version, None, now)
    }

    /// Creates a source (`expected_version == 0`) or replaces its spec; `author` (the caller,
    /// as authentication identified it) becomes the source's author, whose rights in
    /// Kubernetes the agent reviews before it acts on the source's runs.
    pub fn apply_source_by(
        &mut self,
        key: SourceKey,
        spec: SpecInput,
        expected_version: u64,
        author: Option<Author>,
        now: DateTime<Utc>,
    ) -> Result<Source, CoreError> {
        let (spec, admitted) = validate::admit(&key, spec)?;
        let mut pause_changed = false;
        // A deleted source whose agent has not answered its Retire (perhaps none serves the
        // namespace any more) gives way to a new one of the same name, which takes over what
        // the old one left (its cache, its mover ServiceAccount).
        if self
            .sources
            .get(&key)
            .is_some_and(|e| e.record.deleting && e.status().current_run.is_none())
        {
            self.remove_source(&key);
        }
        match self.sources.get_mut(&key) {
            Some(entry) if entry.record.deleting => {
                return Err(CoreError::FailedPrecondition(format!(
                    "source {key} is being deleted; apply it again once its last run has cleaned up"
                )));
            }
            Some(entry) => {
                let version = entry.source().version;
                if expected_version == 0 {
                    return Err(CoreError::AlreadyExists { key, version });
                }
                if expected_version != version {
                    return Err(CoreError::VersionConflict {
                        key,
                        expected: expected_version,
                        actual: version,
                    });
                }
                let schedule_changed = entry.spec().trigger != spec.trigger
                    || entry.spec().time_zone != spec.time_zone
                    || entry.spec().jitter != spec.jitter;
                pause_changed = entry.spec().paused != spec.paused;
                let src = entry.source_mut();
                src.spec = spec;
                src.author = author;
                src.version += 1;
                entry.admitted = admitted;
                if schedule_changed && entry.status().current_run.is_none() {
                    let next = match &entry.admitted.trigger {
                        SyncTrigger::Schedule(s) => {
                            let from = entry.status().last_sync_time.unwrap_or(now);
                            if entry.status().last_sync_start_time.is_none()
                                && entry.status().next_sync_time.is_some()
                            {
                                entry.status().next_sync_time
                            } else {
                                s.next_after(from)
                            }
                        }
                        SyncTrigger::Manual(_) | SyncTrigger::Continuous => None,
                    };
                    entry.status_mut().next_sync_time = next;
                }
            }
            None => {
                if expected_version != 0 {
                    return Err(CoreError::NotFound(key));
                }
                let next_sync_time = match (&admitted.trigger, spec.skip_initial_run) {
                    (SyncTrigger::Schedule(_) | SyncTrigger::Continuous, false) => Some(now),
                    (SyncTrigger::Schedule(s), true) => s.next_after(now),
                    (SyncTrigger::Continuous, true) => None,
                    (SyncTrigger::Manual(_), _) => None,
                };
                let mut status = SourceStatus {
                    next_sync_time,
                    ..Default::default()
                };
                if let (SyncTrigger::Manual(tag), true) = (&admitted.trigger, spec.skip_initial_run)
                {
                    status.last_manual_sync = tag.clone();
                }
                let source = Source {
                    key: key.clone(),
                    spec,
                    status,
                    version: 1,
                    create_time: now,
                    author,
                };
                self.sources.insert(
                    key.clone(),
                    SourceEntry {
                        record: SourceRecord {
                            source,
                            deleting: false,
                        },
                        admitted,
                    },
                );
            }
        }
        self.refresh_idle_condition(&key, now);
        self.put_source(&key);
        if pause_changed {
            // Paused or resumed by an apply: the same as PauseSource / ResumeSource.
            let paused = self.entry(&key).is_ok_and(|e| e.spec().paused);
            self.on_pause_changed(&key, paused, now);
        } else if let Some(id) = self.current_run(&key) {
            self.send_directive(id);
        }
        self.start_due_runs(now);
        self.get_source(&key)
    }

    /// How many sources (not being deleted) each namespace has.
    pub fn sources_per_namespace(&self) -> BTreeMap<String, usize> {
        let mut out = BTreeMap::new();
        for (k, e) in &self.sources {
            if !e.record.deleting {
                *out.entry(k.namespace.clone()).or_default() += 1;
            }
        }
        out
    }

    /// How many sources (not being deleted) `namespace` has: a range of the key order, not a
    /// scan of every source.
    pub fn source_count(&self, namespace: &str) -> usize {
        let from = SourceKey::new(namespace, "");
        self.sources
            .range(from..)
            .take_while(|(k, _)| k.namespace == namespace)
            .filter(|(_, e)| !e.record.deleting)
            .count()
    }

    /// The source with its status.
    pub fn get_source(&self, key: &SourceKey) -> Result<Source, CoreError> {
        match self.sources.get(key) {
            Some(e) if !e.record.deleting => Ok(e.source().clone()),
            _ => Err(CoreError::NotFound(key.clone())),
        }
    }

    /// Sources in key order, optionally in one namespace, starting after `after`: at most
    /// `limit`, and the key the next page starts after when there may be more. (The edge
    /// bounds a page's encoded size, [`MAX_PAGE_BYTES`], ending it early where it must.)
    pub fn list_sources(
        &self,
        namespace: Option<&str>,
        after: Option<&SourceKey>,
        limit: usize,
    ) -> (Vec<Source>, Option<SourceKey>) {
        let start = match after {
            Some(k) => std::ops::Bound::Excluded(k.clone()),
            None => std::ops::Bound::Unbounded,
        };
        let mut out = Vec::new();
        let mut last = None;
        for (k, e) in self.sources.range((start, std::ops::Bound::Unbounded)) {
            if e.record.deleting || namespace.is_some_and(|ns| ns != k.namespace) {
                continue;
            }
            if out.len() == limit {
                return (out, last);
            }
            out.push(e.source().clone());
            last = Some(k.clone());
        }
        (out, None)
    }

    /// Deletes a source. A run in flight is aborted and cleaned up first.
    pub fn delete_source(
        &mut self,
        key: &SourceKey,
        expected_version: u64,
        now: DateTime<Utc>,
    ) -> Result<(), CoreError> {
        let entry = self.entry(key)?;
        let version = entry.source().version;
        if expected_version != 0 && expected_version != version {
            return Err(CoreError::VersionConflict {
                key: key.clone(),
                expected: expected_version,
                actual: version,
            });
        }
        if let Some(e) = self.sources.get_mut(key) {
            e.record.deleting = true;
        }
        self.put_source(key);
        match self.current_run(key) {
            // Retired once the run has cleaned up.
            Some(id) => self.abort_run(id, "source deleted", now),
            None => self.retire(key),
        }
        Ok(())
    }

    /// Asks the agent to remove what it made for `key`, a deleted source with no run in
    /// flight.
    fn retire(&mut self, key: &SourceKey) {
        if let Some(e) = self.sources.get(key)
            && e.record.deleting
            && e.status().current_run.is_none()
        {
            self.effects.push(Effect::Retire {
                source: key.clone(),
                keep_cache: keep_cache(e.spec()),
            });
        }
    }

    /// The deleted sources in `namespaces` whose agent has not yet answered their Retire, for
    /// a (re)connect: `(source, keep_cache)`.
    pub fn retirements_for(&self, namespaces: &[String]) -> Vec<(SourceKey, bool)> {
        self.sources
            .iter()
            .filter(|(k, e)| {
                e.record.deleting
                    && e.status().current_run.is_none()
                    && namespaces.contains(&k.namespace)
            })
            .map(|(k, e)| (k.clone(), keep_cache(e.spec())))
            .collect()
    }

    /// An agent serving `namespaces` removed what it made for the deleted source `key`: the
    /// source is gone for good. `false` (nothing done) for a source not awaiting it, or in a
    /// namespace the agent does not serve.
    pub fn handle_retired(&mut self, namespaces: &[String], key: &SourceKey) -> bool {
        let awaiting = namespaces.contains(&key.namespace)
            && self
                .sources
                .get(key)
                .is_some_and(|e| e.record.deleting && e.status().current_run.is_none());
        if awaiting {
            self.remove_source(key);
        }
        awaiting
    }

    /// The namespace `namespace`, one of those the reporting agent serves (`namespaces`), is
    /// being deleted: as Kubernetes deletes a deleted namespace's ReplicationSources, its
    /// sources are deleted. Their runs end at once, aborted (there is nothing to clean up: the
    /// namespace's objects go with it), and the sources are removed. How many were.
    pub fn namespace_deleted(
        &mut self,
        namespaces: &[String],
        namespace: &str,
        now: DateTime<Utc>,
    ) -> usize {
        if !namespaces.iter().any(|n| n == namespace) {
            return 0;
        }
        let from = SourceKey::new(namespace, "");
        let keys: Vec<SourceKey> = self
            .sources
            .range(from..)
            .take_while(|(k, _)| k.namespace == namespace)
            .map(|(k, _)| k.clone())
            .collect();
        // All marked first, so that no run of one starts as another's ends.
        for key in &keys {
            if let Some(e) = self.sources.get_mut(key) {
                e.record.deleting = true;
            }
        }
        for key in &keys {
            if let Some(id) = self.current_run(key) {
                if let Some(run) = self.active.get_mut(&id) {
                    run.result = Some(RunResult::Aborted);
                    run.message = NAMESPACE_DELETED_TEXT.to_owned();
                    note(run, now, "Aborted", NAMESPACE_DELETED_TEXT);
                }
                self.finish_run(id, now);
            }
            self.remove_source(key);
        }
        // A Retire the run's end asked for has nothing left to do.
        self.effects.retain(
            |e| !matches!(e, Effect::Retire { source, .. } if source.namespace == namespace),
        );
        keys.len()
    }

    fn remove_source(&mut self, key: &SourceKey) {
        self.sources.remove(key);
        self.effects.push(Effect::RemoveSource(key.clone()));
        let old: Vec<RunId> = self
            .history
            .iter()
            .filter(|(_, r)| &run_key(r) == key)
            .map(|(id, _)| *id)
            .collect();
        for id in old {
            self.history.remove(&id);
            self.effects.push(Effect::RemoveRun(id));
        }
    }

    /// Pauses or resumes a source, with a note for the status.
    pub fn set_paused(
        &mut self,
        key: &SourceKey,
        paused: bool,
        pause_note: String,
        now: DateTime<Utc>,
    ) -> Result<Source, CoreError> {
        validate::printable("note", &pause_note, false)?;
        let entry = self.entry_mut(key)?;
        let src = entry.source_mut();
        let spec = &mut src.spec;
        let changed = spec.paused != paused;
        if changed {
            spec.paused = paused;
            src.version += 1;
        }
        entry.status_mut().pause_note = pause_note;
        self.put_source(key);
        if changed {
            self.on_pause_changed(key, paused, now);
        }
        self.refresh_idle_condition(key, now);
        self.start_due_runs(now);
        self.get_source(key)
    }

    /// What pausing or resuming does to the run in flight.
    fn on_pause_changed(&mut self, key: &SourceKey, paused: bool, now: DateTime<Utc>) {
        if let Some(id) = self.current_run(key) {
            match (paused, self.active.get(&id).map(|r| r.phase)) {
                // No application is asked to quiesce while paused: back to reading the PVC,
                // with snapgate's waiting annotations removed; the wait starts anew on resume.
                (true, Some(RunPhase::WaitingForTrigger)) => {
                    if let Some(run) = self.active.get_mut(&id) {
                        run.message = PAUSED_TEXT.to_owned();
                        note(run, now, "Paused", PAUSED_TEXT);
                        // Nobody holds for a paused source: the holders' values are spent.
                        for h in std::mem::take(&mut run.holds) {
                            spend(run, h.value);
                        }
                    }
                    self.set_phase(id, RunPhase::Gating, now);
                    self.fail_if_spent_out(id, now);
                }
                // Read the PVC again: a trigger written meanwhile releases it then.
                (false, Some(RunPhase::Gating)) => {
                    if let Some(run) = self.active.get_mut(&id) {
                        run.message.clear();
                        note(run, now, "Resumed", "reading the source PVC again");
                    }
                    self.bump(id);
                    self.notify_copy(id);
                }
                // The agent scales the mover Job to zero (or back) from the directive's spec.
                _ => self.send_directive(id),
            }
        }
    }

    /// Starts a run now. The same `request_id` again answers the same run.
    pub fn sync_now(
        &mut self,
        key: &SourceKey,
        request_id: &str,
        now: DateTime<Utc>,
    ) -> Result<(RunId, bool), CoreError> {
        if request_id.is_empty() {
            return Err(InvalidField::new(
                "requestId",
                "required, so that a retried request starts no second run",
            )
            .into());
        }
        validate::printable("requestId", request_id, true)?;
        self.entry(key)?;
        if let Some(run) = self
            .active
            .values()
            .chain(self.history.values())
            .find(|r| run_key(r) == *key && r.request_id == request_id)
        {
            return Ok((run.id, false));
        }
        if let Some(id) = self.current_run(key) {
            return Ok((id, false));
        }
        if self.entry(key)?.spec().paused {
            return Err(CoreError::FailedPrecondition(format!(
                "source {key} is paused; resume it first"
            )));
        }
        let id = self.start_run(key, RunReason::SyncNow, request_id, now);
        Ok((id, true))
    }

    /// Recent runs of a source, newest first.
    pub fn list_runs(&self, key: &SourceKey, limit: usize) -> Result<Vec<Run>, CoreError> {
        self.entry(key)?;
        let mut runs: Vec<Run> = self
            .active
            .values()
            .chain(self.history.values())
            .filter(|r| run_key(r) == *key)
            .cloned()
            .collect();
        runs.sort_by_key(|r| std::cmp::Reverse(r.id));
        runs.truncate(limit);
        Ok(runs)
    }

    /// The next `count` schedule times after `after`, with the source's time zone.
    pub fn preview(
        &self,
        key: &SourceKey,
        after: DateTime<Utc>,
        count: usize,
    ) -> Result<(Vec<DateTime<Utc>>, chrono_tz::Tz), CoreError> {
        match &self.entry(key)?.admitted.trigger {
            SyncTrigger::Schedule(s) => Ok((s.preview(after, count), s.time_zone())),
            other => Err(CoreError::FailedPrecondition(format!(
                "source {key} has no schedule (it syncs {other})"
            ))),
        }
    }

    // ---------------------------------------------------------------- triggers

    /// Resolves a copy target: a PVC (every run on it), or a source (its runs only, on its PVC).
    pub fn resolve_target(&self, target: &CopyTarget) -> Result<Target, CoreError> {
        validate::dns_label("target.namespace", &target.namespace)?;
        match (target.pvc.is_empty(), target.source.is_empty()) {
            (false, true) => {
                validate::dns_subdomain("target.pvc", &target.pvc)?;
                Ok(Target {
                    namespace: target.namespace.clone(),
                    pvc: target.pvc.clone(),
                    source: None,
                })
            }
            (true, false) => {
                let key = SourceKey::new(&target.namespace, &target.source);
                let live = self.entry(&key)?.spec().source_pvc.clone();
                // A run stays on the PVC it started on, even if the source was edited since.
                let pvc = self
                    .current_run(&key)
                    .and_then(|id| self.active.get(&id))
                    .map_or(live, |r| r.pvc.clone());
                Ok(Target {
                    namespace: target.namespace.clone(),
                    pvc,
                    source: Some(target.source.clone()),
                })
            }
            _ => Err(InvalidField::new("target", "set exactly one of pvc and source").into()),
        }
    }

    /// The copy status of a target: see [`Scheduler::copy_status`]; a source target sees only
    /// that source's runs.
    pub fn target_status(&self, target: &Target) -> CopyStatus {
        self.copy_status_of(&target.namespace, &target.pvc, target.source.as_deref())
    }

    /// The copy status of a PVC: the run holding it, else its newest run, else idle.
    pub fn copy_status(&self, namespace: &str, pvc: &str) -> CopyStatus {
        self.copy_status_of(namespace, pvc, None)
    }

    fn copy_status_of(&self, namespace: &str, pvc: &str, source: Option<&str>) -> CopyStatus {
        let on_pvc = |r: &&Run| {
            r.pvc == pvc
                && r.source.namespace == namespace
                && source.is_none_or(|name| r.source.name == name)
        };
        let run = self
            .active
            .values()
            .filter(on_pvc)
            .find(|r| holds_pvc(r))
            .or_else(|| self.active.values().rfind(on_pvc))
            .or_else(|| self.history.values().rfind(on_pvc));
        let latest_trigger = self
            .active
            .values()
            .chain(self.history.values())
            .filter(on_pvc)
            .max_by_key(|r| r.id)
            .map(|r| r.latest_trigger.clone())
            .unwrap_or_default();
        let mut status = CopyStatus {
            latest_trigger,
            ..CopyStatus::idle(namespace, pvc)
        };
        if let Some(run) = run {
            status.source = run.source.name.clone();
            status.run_id = Some(run.id);
            status.state = copy_state(run);
            status.reason = run.message.clone();
            status.waiting_since = run.waiting_since;
            status.wait_deadline = run.wait_deadline;
            status.trigger = run.trigger.clone();
            status.gated = run.gated;
            status.time = run.timeline.last().map(|t| t.time);
            if run.phase == RunPhase::Copying && run.copy_time.is_none() {
                status.lease_deadline = run.lease_deadline;
            }
            if run.phase == RunPhase::WaitingForTrigger {
                status.holders_pending = pending_holders(run, &self.holders_of(run));
            }
        }
        status
    }

    /// Whether the ServiceAccount `service_account` may act as an application on `target`:
    /// every source of the target (by name, or naming its PVC, or with a run on it) that lists
    /// `copyTrigger.allowedServiceAccounts` lists it.
    pub fn application_allowed(&self, target: &Target, service_account: &str) -> bool {
        let runs_on_pvc: Vec<SourceKey> = self
            .active
            .values()
            .filter(|r| r.pvc == target.pvc)
            .map(run_key)
            .filter(|k| k.namespace == target.namespace)
            .collect();
        self.sources
            .iter()
            .filter(|(k, _)| k.namespace == target.namespace)
            .filter(|(k, e)| match &target.source {
                Some(name) => k.name == *name,
                None => e.spec().source_pvc == target.pvc || runs_on_pvc.contains(k),
            })
            .all(|(_, e)| {
                let allowed = e
                    .spec()
                    .copy_trigger
                    .as_ref()
                    .map(|c| c.allowed_service_accounts.as_slice())
                    .unwrap_or_default();
                allowed.is_empty() || allowed.iter().any(|a| a == service_account)
            })
    }

    /// Releases the run waiting on a PVC with `value` (the SDK's Trigger).
    /// The caller holds its quiesce for `hold` from now (`None`: the default hold); the run's
    /// copy point must be reached before that, or the run waits for a new trigger.
    ///
    /// `holder` names the caller when the source lists holders (`spec.copyTrigger.holders`):
    /// the run is released once every holder has triggered, and its lease ends with the
    /// earliest hold. A source without holders ignores it.
    pub fn trigger(
        &mut self,
        target: &CopyTarget,
        value: &str,
        expected_run: &str,
        hold: Option<RawDuration>,
        holder: &str,
        now: DateTime<Utc>,
    ) -> Result<TriggerAccepted, CoreError> {
        let resolved = self.resolve_target(target)?;
        let (namespace, pvc) = (resolved.namespace.clone(), resolved.pvc.clone());
        validate::printable("value", value, true)?;
        if !holder.is_empty() {
            validate::dns_label("holder", holder)?;
        }
        // A hold that has ended counts towards no release, even before the timer saw it.
        self.expire_holds(now);
        let hold = match hold {
            None => self.lease_policy.default_hold,
            Some(d) => validate::positive_hold(d, self.lease_policy.max_hold)?,
        };
        let expected: Option<RunId> = if expected_run.is_empty() {
            None
        } else {
            Some(expected_run.parse().map_err(|()| {
                InvalidField::new(
                    "runId",
                    format!(
                        "{} is not a run id such as run-42",
                        validate::quoted(expected_run)
                    ),
                )
            })?)
        };
        let on_pvc = |r: &Run| {
            r.pvc == pvc
                && r.source.namespace == namespace
                && resolved
                    .source
                    .as_deref()
                    .is_none_or(|name| r.source.name == name)
        };
        // An accepted call repeated: same answer, nothing new. With a run id, that run is the
        // one to compare (a newer run queued on the PVC meanwhile does not matter); without,
        // only the newest run on the PVC can be the one it released.
        let candidate = match expected {
            Some(e) => self
                .active
                .get(&e)
                .or_else(|| self.history.get(&e))
                .filter(|r| on_pvc(r)),
            None => self
                .active
                .values()
                .chain(self.history.values())
                .filter(|r| on_pvc(r))
                .max_by_key(|r| r.id),
        };
        let ours = |r: &Run| {
            (r.released_by == Some(ReleasedBy::Rpc) && r.trigger == value)
                || r.holds
                    .iter()
                    .any(|h| h.value == value && h.holder == holder)
        };
        if let Some(run) = candidate
            && ours(run)
            && expected.is_none_or(|e| e == run.id)
        {
            let id = run.id;
            // Released: the run's lease; still waiting for other holders: this holder's hold.
            let lease_deadline = run.lease_deadline.or_else(|| {
                run.holds
                    .iter()
                    .find(|h| h.value == value)
                    .and_then(|h| h.deadline)
            });
            return Ok(TriggerAccepted {
                run_id: id,
                status: self.target_status(&resolved),
                repeated: true,
                lease_deadline,
            });
        }
        let paused = self.active.values().find(|r| {
            on_pvc(r)
                && r.phase == RunPhase::Gating
                && self
                    .sources
                    .get(&run_key(r))
                    .is_some_and(|e| e.spec().paused)
        });
        if let Some(run) = paused {
            return Err(CoreError::FailedPrecondition(format!(
                "source {} is paused: its run {} on pvc {namespace}/{pvc} takes no copy trigger until the source is resumed",
                run_key(run),
                run.id
            )));
        }
        let waiting = self
            .active
            .values()
            .find(|r| on_pvc(r) && r.phase == RunPhase::WaitingForTrigger)
            .map(|r| r.id);
        let Some(id) = waiting else {
            let status = self.target_status(&resolved);
            let state = status.state;
            if !holder.is_empty()
                && state == CopyState::InProgress
                && let Some(run) = status.run_id
            {
                return Err(CoreError::FailedPrecondition(format!(
                    "run {run} on pvc {namespace}/{pvc} was released before holder {holder} triggered: its copy is not inside this hold"
                )));
            }
            return Err(CoreError::FailedPrecondition(format!(
                "no run is waiting for a copy trigger on pvc {namespace}/{pvc} (copy state {})",
                state.as_str_name()
            )));
        };
        if let Some(e) = expected
            && e != id
        {
            return Err(CoreError::FailedPrecondition(format!(
                "run {e} is not the run waiting on pvc {namespace}/{pvc} ({id} is); refusing to release another copy"
            )));
        }
        let run = &self.active[&id];
        if value == run.latest_trigger {
            return Err(InvalidField::new(
                "value",
                format!("{value:?} equals latest-copy-trigger; a new copy needs a new value"),
            )
            .into());
        }
        if run.spent_triggers.iter().any(|v| v == value) {
            return Err(InvalidField::new(
                "value",
                format!(
                    "{value:?} already released {id} and its hold lease ran out before the copy point; a new copy needs a new value"
                ),
            )
            .into());
        }
        // A value bound to an earlier run of the PVC releases no other.
        if let Some(earlier) = self
            .active
            .values()
            .chain(self.history.values())
            .filter(|r| on_pvc(r) && r.id != id)
            .find(|r| {
                r.trigger == value
                    || r.spent_triggers.iter().any(|v| v == value)
                    || r.holds.iter().any(|h| h.value == value)
            })
        {
            return Err(InvalidField::new(
                "value",
                format!(
                    "{value:?} was already used for {}; a new copy needs a new value",
                    earlier.id
                ),
            )
            .into());
        }
        // Past the end of the calendar: the longest hold there is (the clamp keeps it sane).
        let deadline = now
            .checked_add_signed(hold)
            .unwrap_or(DateTime::<Utc>::MAX_UTC);
        let holders = self.run_holders(id);
        if !holders.is_empty() {
            return self.hold(id, &holders, holder, value, deadline, &resolved, now);
        }
        self.release(id, value.to_owned(), ReleasedBy::Rpc, Some(deadline), now);
        Ok(TriggerAccepted {
            run_id: id,
            status: self.target_status(&resolved),
            repeated: false,
            lease_deadline: Some(deadline),
        })
    }

    /// The holders a run must be released by: those of the spec it started with (a run stored
    /// by 0.1 has none of its own and follows the live spec).
    fn run_holders(&self, id: RunId) -> Vec<String> {
        self.holders_of(&self.active[&id])
    }

    fn holders_of(&self, run: &Run) -> Vec<String> {
        match run.spec.as_ref() {
            Some(spec) => spec
                .copy_trigger
                .as_ref()
                .map(|c| c.holders.clone())
                .unwrap_or_default(),
            None => self
                .sources
                .get(&run_key(run))
                .map(|e| e.admitted.holders.clone())
                .unwrap_or_default(),
        }
    }

    /// One holder's Trigger of a waiting run: recorded; the run is released with the earliest
    /// hold as its lease once every holder has a hold that has not ended.
    #[expect(
        clippy::too_many_arguments,
        reason = "one call site, each argument distinct"
    )]
    fn hold(
        &mut self,
        id: RunId,
        holders: &[String],
        holder: &str,
        value: &str,
        deadline: DateTime<Utc>,
        resolved: &Target,
        now: DateTime<Utc>,
    ) -> Result<TriggerAccepted, CoreError> {
        let key = run_key(&self.active[&id]);
        let list = holders.join(", ");
        if holder.is_empty() {
            return Err(InvalidField::new(
                "holder",
                format!("required: source {key} lists holders ({list}); name the one calling"),
            )
            .into());
        }
        if !holders.iter().any(|h| h == holder) {
            return Err(InvalidField::new(
                "holder",
                format!("{holder:?} is not one of the holders of source {key} ({list})"),
            )
            .into());
        }
        let run = self.active.get_mut(&id).expect("waiting");
        if let Some(other) = run
            .holds
            .iter()
            .find(|h| h.value == value && h.holder != holder)
        {
            return Err(InvalidField::new(
                "value",
                format!(
                    "{value:?} is holder {}'s value for {id}; each holder needs its own",
                    other.holder
                ),
            )
            .into());
        }
        // A holder triggering again replaces its hold; its earlier value is spent.
        if let Some(at) = run.holds.iter().position(|h| h.holder == holder) {
            let old = run.holds.remove(at);
            spend(run, old.value);
            if self.fail_if_spent_out(id, now) {
                return Err(CoreError::FailedPrecondition(format!(
                    "{id} spent {SPENT_PER_RUN} trigger values without a copy and failed"
                )));
            }
        }
        let run = self.active.get_mut(&id).expect("waiting");
        run.holds.push(Hold {
            holder: holder.to_owned(),
            value: value.to_owned(),
            deadline: Some(deadline),
        });
        note(
            run,
            now,
            "HolderTriggered",
            format!(
                "holder {holder} triggered with {value:?}, held until {}",
                deadline.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
            ),
        );
        let pending = pending_holders(run, holders);
        if pending.is_empty() {
            let lease = run
                .holds
                .iter()
                .filter_map(|h| h.deadline)
                .min()
                .unwrap_or(deadline);
            self.release(id, value.to_owned(), ReleasedBy::Rpc, Some(lease), now);
            return Ok(TriggerAccepted {
                run_id: id,
                status: self.target_status(resolved),
                repeated: false,
                lease_deadline: Some(lease),
            });
        }
        run.message = format!("waiting for holders: {}", pending.join(", "));
        self.put_run(id);
        self.notify_copy(id);
        Ok(TriggerAccepted {
            run_id: id,
            status: self.target_status(resolved),
            repeated: false,
            lease_deadline: Some(deadline),
        })
    }

    /// Holds of waiting runs that ended before every holder triggered: their values are spent.
    fn expire_holds(&mut self, now: DateTime<Utc>) {
        let due: Vec<RunId> = self
            .active
            .iter()
            .filter(|(_, r)| r.phase == RunPhase::WaitingForTrigger)
            .filter(|(_, r)| {
                r.holds
                    .iter()
                    .any(|h| h.deadline.is_some_and(|d| d <= now))
            })
            .map(|(id, _)| *id)
            .collect();
        for id in due {
            let holders = self.run_holders(id);
            let run = self.active.get_mut(&id).expect("found");
            let (ended, kept): (Vec<Hold>, Vec<Hold>) = std::mem::take(&mut run.holds)
                .into_iter()
                .partition(|h| h.deadline.is_some_and(|d| d <= now));
            run.holds = kept;
            for h in ended {
                note(
                    run,
                    now,
                    "HoldExpired",
                    format!(
                        "holder {}'s hold ended before every holder triggered; its value {:?} is spent",
                        h.holder, h.value
                    ),
                );
                spend(run, h.value);
            }
            run.message = format!(
                "waiting for holders: {}",
                pending_holders(run, &holders).join(", ")
            );
            self.put_run(id);
            self.notify_copy(id);
            self.fail_if_spent_out(id, now);
        }
    }

    /// A run that has spent [`SPENT_PER_RUN`] values without a copy fails (and cleans up)
    /// rather than forget one. True when it did.
    fn fail_if_spent_out(&mut self, id: RunId, now: DateTime<Utc>) -> bool {
        let Some(run) = self.active.get_mut(&id) else {
            return false;
        };
        if run.spent_triggers.len() < SPENT_PER_RUN || run.phase == RunPhase::CleaningUp {
            return false;
        }
        let msg = format!(
            "{} trigger values spent without a copy (expired leases, ended holds): the run fails rather than forget one",
            run.spent_triggers.len()
        );
        run.result = Some(RunResult::Failed);
        run.message = msg.clone();
        note(run, now, "Failed", msg);
        self.set_phase(id, RunPhase::CleaningUp, now);
        true
    }

    /// The caller of an accepted Trigger stops holding before its lease ran out: the run it
    /// released goes back to waiting unless its copy point was reached already.
    pub fn end_hold(
        &mut self,
        target: &CopyTarget,
        run: &str,
        value: &str,
        now: DateTime<Utc>,
    ) -> Result<CopyStatus, CoreError> {
        let resolved = self.resolve_target(target)?;
        let id: RunId = run.parse().map_err(|()| {
            InvalidField::new(
                "runId",
                format!("{} is not a run id such as run-42", validate::quoted(run)),
            )
        })?;
        validate::printable("value", value, true)?;
        self.expire_holds(now);
        let found = self
            .active
            .get(&id)
            .or_else(|| self.history.get(&id))
            .filter(|r| {
                r.pvc == resolved.pvc
                    && r.source.namespace == resolved.namespace
                    && resolved
                        .source
                        .as_deref()
                        .is_none_or(|n| r.source.name == n)
            });
        let Some(r) = found else {
            return Err(CoreError::FailedPrecondition(format!(
                "{id} is not a run on pvc {}/{}",
                resolved.namespace, resolved.pvc
            )));
        };
        let mine = r.released_by == Some(ReleasedBy::Rpc) && r.trigger == value
            || r.spent_triggers.iter().any(|v| v == value)
            || r.holds.iter().any(|h| h.value == value);
        if !mine {
            return Err(CoreError::FailedPrecondition(format!(
                "{id} was not released by the value {value:?}: its hold is not the caller's to end"
            )));
        }
        if self.active.contains_key(&id)
            && r.phase != RunPhase::Copying
            && let Some(at) = r.holds.iter().position(|h| h.value == value)
        {
            // A holder gives up before the others triggered: its hold ends, its value is spent.
            let holders = self.run_holders(id);
            let run = self.active.get_mut(&id).expect("checked");
            let h = run.holds.remove(at);
            note(
                run,
                now,
                "HoldEnded",
                format!("holder {} stopped holding before the release", h.holder),
            );
            spend(run, h.value);
            run.message = format!(
                "waiting for holders: {}",
                pending_holders(run, &holders).join(", ")
            );
            self.put_run(id);
            self.notify_copy(id);
            self.fail_if_spent_out(id, now);
        } else if self.active.contains_key(&id)
            && r.phase == RunPhase::Copying
            && r.copy_time.is_none()
            && r.lease_deadline.is_some()
            // Only a hold of this release: an old spent value ends nobody's current hold.
            && (r.trigger == value || r.holds.iter().any(|h| h.value == value))
        {
            let run = self.active.get_mut(&id).expect("checked");
            note(
                run,
                now,
                "HoldEnded",
                "the application stopped holding before the copy point",
            );
            self.on_lease_expired(id, now);
        }
        Ok(self.target_status(&resolved))
    }

    /// Answers an agent's lease request for a run in one of its `namespaces`.
    pub fn lease(
        &self,
        namespaces: &[String],
        request: &LeaseRequest,
        now: DateTime<Utc>,
    ) -> LeaseAnswer {
        let refuse = |why: String| LeaseAnswer::Refused(why);
        let Ok(id) = request.run_id.parse::<RunId>() else {
            return refuse(format!(
                "unknown run id {}",
                validate::quoted(&request.run_id)
            ));
        };
        let Some(run) = self
            .active
            .get(&id)
            .filter(|r| namespaces.contains(&r.source.namespace))
        else {
            return refuse(format!("{id} is not in flight in the agent's namespaces"));
        };
        if request.generation != run.generation || run.phase != RunPhase::Copying {
            return refuse(format!(
                "{id}: generation {} is not current ({} is, {})",
                request.generation,
                run.generation,
                run.phase.as_str_name()
            ));
        }
        let Some(deadline) = run.lease_deadline else {
            return refuse(format!("{id} was not released with a hold lease"));
        };
        match deadline.signed_duration_since(now) {
            left if left > Duration::zero() => LeaseAnswer::Granted(left),
            _ => refuse(format!("{id}: the hold lease ran out")),
        }
    }

    // ---------------------------------------------------------------- agents

    /// The directives an agent serving `namespaces` must hold, for a (re)connect.
    pub fn directives_for(&self, namespaces: &[String]) -> Vec<Directive> {
        self.active
            .values()
            .filter(|r| namespaces.contains(&r.source.namespace))
            .filter_map(|r| self.directive(r))
            .collect()
    }

    /// Applies an agent's report about a run in one of the agent's `namespaces`.
    pub fn handle_report(
        &mut self,
        namespaces: &[String],
        report: Report,
        now: DateTime<Utc>,
    ) -> ReportOutcome {
        let Ok(id) = report.run_id.parse::<RunId>() else {
            return ReportOutcome::Stale(format!(
                "unknown run id {}",
                validate::quoted(&report.run_id)
            ));
        };
        let Some(run) = self.active.get(&id) else {
            return ReportOutcome::Stale(format!("{id} is not in flight"));
        };
        if !namespaces.contains(&run.source.namespace) {
            return ReportOutcome::Stale(format!("{id} is not in the agent's namespaces"));
        }
        if lease_over(run, now) {
            // The deadline passed by the scheduler's clock: no report can count a copy point
            // now, whenever the agent saw it. The run goes back to waiting (that change is
            // what this report applied), and the report itself is dropped.
            self.on_lease_expired(id, now);
            return ReportOutcome::Applied;
        }
        let Some(run) = self.active.get(&id) else {
            return ReportOutcome::Stale(format!("{id} is not in flight"));
        };
        let current = run.phase;
        let Some(observation) = report.observation else {
            return ReportOutcome::Stale("empty report".into());
        };
        if matches!(observation, ReportObservation::Error(_)) && report.generation < run.generation
        {
            // An error about a directive that has since changed (the agent re-reports against
            // the current one): it must not fail a run that has moved on.
            return ReportOutcome::Stale(format!(
                "{id}: error report for generation {} < {}",
                report.generation, run.generation
            ));
        }
        match (current, observation) {
            (RunPhase::Gating | RunPhase::WaitingForTrigger, ReportObservation::Pvc(pvc)) => {
                self.on_pvc_observed(id, pvc, now)
            }
            // Only for the current release: a copy point seen under an earlier one (whose lease
            // ran out, the run since released again) is not this release's.
            (RunPhase::Copying, ReportObservation::CopyCompleted(_))
                if report.generation != self.active[&id].generation =>
            {
                return ReportOutcome::Stale(format!(
                    "{id}: copy completed for generation {} < {}",
                    report.generation, self.active[&id].generation
                ));
            }
            (RunPhase::Copying, ReportObservation::CopyCompleted(c)) => {
                self.on_copy_completed(id, c, now)
            }
            (RunPhase::Transferring, ReportObservation::MoverFailed(f)) => {
                self.on_mover_failed(id, f, now)
            }
            (RunPhase::Transferring, ReportObservation::MoverFinished(f)) => {
                self.on_mover_finished(id, f, now)
            }
            (RunPhase::Transferring, ReportObservation::MoverStuck(s)) => {
                self.on_mover_stuck(id, s, now)
            }
            (RunPhase::CleaningUp, ReportObservation::CleanedUp) => self.finish_run(id, now),
            (_, ReportObservation::Error(e)) => self.on_agent_error(id, e, now),
            (p, o) => {
                return ReportOutcome::Stale(format!(
                    "{id} is {}, report {} does not apply",
                    p.as_str_name(),
                    observation_name(&o)
                ));
            }
        }
        ReportOutcome::Applied
    }

    fn on_pvc_observed(&mut self, id: RunId, pvc: PvcObserved, now: DateTime<Utc>) {
        let key = run_key(&self.active[&id]);
        // The copy method the run started with, as its directive carries it to the agent.
        let copy_method = self.active[&id].spec.as_ref().map_or(
            self.sources[&key].admitted.copy_method,
            |s| s.mover.volume.copy_method.folded(),
        );
        let run = self.active.get_mut(&id).expect("checked");
        let was_waiting = run.phase == RunPhase::WaitingForTrigger;
        if !pvc.exists {
            let msg = format!("source PVC {} not found; waiting for it", run.pvc);
            self.keep_waiting_with_error(id, &key, msg, now);
            return;
        }
        // A value written to the PVC by anyone: the same rule as a Trigger's value, so that
        // nothing unprintable or overlong releases a run or is written back.
        if let Some(broken) = [
            ("copy-trigger", &pvc.copy_trigger),
            ("latest-copy-trigger", &pvc.latest_copy_trigger),
        ]
        .into_iter()
        .find_map(|(which, v)| validate::printable(which, v, false).err())
        {
            let msg = format!(
                "the {} annotation of PVC {}: {}; the run waits for a valid value",
                broken.field, run.pvc, broken.rule
            );
            self.keep_waiting_with_error(id, &key, msg, now);
            return;
        }
        let latest_changed = run.latest_trigger != pvc.latest_copy_trigger;
        run.latest_trigger = pvc.latest_copy_trigger.clone();
        if self.sources.get(&key).is_some_and(|e| e.spec().paused) {
            // Pause means no new copy: the run holds here (in Gating, so nobody is asked to
            // quiesce) and reads the PVC again when the source is resumed.
            let changed =
                latest_changed || run.gated != pvc.use_copy_trigger || run.message != PAUSED_TEXT;
            run.gated = pvc.use_copy_trigger;
            if run.message != PAUSED_TEXT {
                run.message = PAUSED_TEXT.to_owned();
                note(run, now, "Paused", PAUSED_TEXT);
            }
            if changed {
                self.put_run(id);
            }
            return;
        }
        run.message.clear();
        if copy_method == CopyMethod::Direct {
            if pvc.use_copy_trigger {
                self.entry_mut(&key).expect("exists").status_mut().message =
                    "use-copy-trigger needs copyMethod Snapshot or Clone; syncing without gating"
                        .into();
            }
            let run = self.active.get_mut(&id).expect("checked");
            run.gated = false;
            note(
                run,
                now,
                "Transferring",
                "copyMethod Direct: the mover reads the source PVC",
            );
            self.set_phase(id, RunPhase::Transferring, now);
            return;
        }
        if !pvc.use_copy_trigger {
            let run = self.active.get_mut(&id).expect("checked");
            run.gated = false;
            let msg = if was_waiting {
                "use-copy-trigger removed while waiting: released without gating"
            } else {
                "the PVC is not gated: copying now"
            };
            note(run, now, "InProgress", msg);
            self.set_phase(id, RunPhase::Copying, now);
            return;
        }
        let run = self.active.get_mut(&id).expect("checked");
        run.gated = true;
        // A value spent by this run's expired lease is not fresh, even before the agent has
        // recorded it as latest-copy-trigger.
        let fresh = !pvc.copy_trigger.is_empty()
            && pvc.copy_trigger != pvc.latest_copy_trigger
            && !run.spent_triggers.contains(&pvc.copy_trigger);
        let holders = self.run_holders(id);
        let run = self.active.get_mut(&id).expect("checked");
        if fresh && !holders.is_empty() {
            // Only the listed holders' Triggers release this run.
            let msg = format!(
                "copy-trigger {:?} on the PVC is ignored: the source lists holders ({}), whose Triggers release its runs",
                pvc.copy_trigger,
                holders.join(", ")
            );
            if run.message != msg {
                run.message = msg.clone();
                note(run, now, "AnnotationIgnored", msg);
            }
        }
        let fresh = fresh && holders.is_empty();
        if fresh {
            let by = if was_waiting {
                ReleasedBy::Annotation
            } else {
                ReleasedBy::Ahead
            };
            self.release(id, pvc.copy_trigger, by, None, now);
        } else if !was_waiting {
            // Resume an earlier wait on this PVC if its timestamp is valid; else it starts now.
            let since = (pvc.latest_copy_status == "WaitingForTrigger")
                .then(|| DateTime::parse_from_rfc3339(&pvc.waiting_since).ok())
                .flatten()
                .map(|t| t.with_timezone(&Utc))
                .filter(|t| *t <= now)
                .unwrap_or(now);
            let timeout = self.sources[&key].admitted.wait_timeout;
            let run = self.active.get_mut(&id).expect("checked");
            run.waiting_since = Some(since);
            // No deadline past the end of the calendar: the run keeps waiting.
            run.wait_deadline = since.checked_add_signed(timeout);
            note(
                run,
                now,
                "WaitingForTrigger",
                "waiting for a new copy-trigger value",
            );
            self.set_phase(id, RunPhase::WaitingForTrigger, now);
        } else {
            // Still waiting; keep what we know of latest-copy-trigger.
            self.put_run(id);
        }
    }

    /// A run that cannot go on until the cluster changes: the error on the run and the source,
    /// recorded once however often it is reported.
    fn keep_waiting_with_error(
        &mut self,
        id: RunId,
        key: &SourceKey,
        msg: String,
        now: DateTime<Utc>,
    ) {
        let Some(run) = self.active.get_mut(&id) else {
            return;
        };
        if run.message == msg {
            return;
        }
        run.message = msg.clone();
        note(run, now, "Error", msg.clone());
        self.put_run(id);
        self.set_condition(key, "True", "Error", &msg, now);
        self.put_source(key);
    }

    /// Releases a waiting run with `value`; with a `lease` deadline (a Trigger's hold), the
    /// directive asks the agent to copy only under that lease.
    fn release(
        &mut self,
        id: RunId,
        value: String,
        by: ReleasedBy,
        lease: Option<DateTime<Utc>>,
        now: DateTime<Utc>,
    ) {
        let key = run_key(&self.active[&id]);
        let mover = self.sources[&key].admitted.mover;
        let run = self.active.get_mut(&id).expect("in flight");
        if let Some(since) = run.waiting_since {
            self.effects.push(Effect::Observe(Observation::TriggerWait {
                source: key.clone(),
                mover,
                waited: now - since,
            }));
        }
        run.trigger = value;
        run.released_by = Some(by);
        run.lease_deadline = lease;
        run.message.clear();
        let msg = match lease {
            None => format!(
                "released by {} with copy-trigger {:?}",
                by.as_str(),
                run.trigger
            ),
            Some(deadline) => format!(
                "released by {} with copy-trigger {:?}, held until {}: no copy point after that counts",
                by.as_str(),
                run.trigger,
                deadline.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
            ),
        };
        note(run, now, "InProgress", msg);
        self.set_phase(id, RunPhase::Copying, now);
    }

    fn on_copy_completed(&mut self, id: RunId, c: crate::model::CopyCompleted, now: DateTime<Utc>) {
        let run = self.active.get_mut(&id).expect("checked");
        let time = valid_agent_time(c.time, now);
        if c.time.is_some() && time.is_none() {
            note(
                run,
                now,
                "AgentTimeRefused",
                "the agent's copy time is not a valid time before now (clock skew up to 1 minute allowed); using the time of the report",
            );
        }
        run.copy_time = Some(time.unwrap_or(now));
        if run.gated {
            run.latest_trigger = run.trigger.clone();
        }
        let msg = if c.copy_name.is_empty() {
            "copy point reached".to_owned()
        } else {
            format!("copy point reached: {}", validate::quoted(&c.copy_name))
        };
        note(run, now, "Completed", msg);
        self.set_phase(id, RunPhase::Transferring, now);
    }

    fn on_mover_failed(&mut self, id: RunId, f: crate::model::MoverFailed, now: DateTime<Utc>) {
        let key = run_key(&self.active[&id]);
        let mover = self.sources[&key].admitted.mover;
        let run = self.active.get_mut(&id).expect("checked");
        if f.attempt != 0 && f.attempt <= run.mover_failures {
            // Re-reported after a reconnect: this attempt is already counted.
            return;
        }
        run.mover_failures = run.mover_failures.saturating_add(1);
        let status = MoverStatus {
            result: "Failed".into(),
            logs: log_tail(&f.logs, MAX_LOG_BYTES),
        };
        run.mover_status = Some(status.clone());
        // The attempt the agent failed because it was stuck says so.
        let stuck = run
            .mover_stuck
            .as_ref()
            .filter(|s| s.attempt == f.attempt)
            .map(|s| format!(" (stuck: {})", s.reason))
            .unwrap_or_default();
        note(
            run,
            now,
            "MoverFailed",
            format!("mover attempt {} failed{stuck}; retrying", f.attempt),
        );
        self.put_run(id);
        self.effects
            .push(Effect::Observe(Observation::MoverFailure {
                source: key.clone(),
                mover,
            }));
        self.entry_mut(&key)
            .expect("exists")
            .status_mut()
            .latest_mover_status = Some(status);
        self.put_source(&key);
    }

    fn on_mover_finished(&mut self, id: RunId, f: crate::model::MoverFinished, now: DateTime<Utc>) {
        let key = run_key(&self.active[&id]);
        let run = self.active.get_mut(&id).expect("checked");
        let (result, text) = if f.succeeded {
            (RunResult::Successful, "Successful")
        } else {
            (RunResult::Failed, "Failed")
        };
        run.result = Some(result);
        let status = MoverStatus {
            result: text.into(),
            logs: log_tail(&f.logs, MAX_LOG_BYTES),
        };
        run.mover_status = Some(status.clone());
        note(run, now, "MoverFinished", text);
        self.entry_mut(&key)
            .expect("exists")
            .status_mut()
            .latest_mover_status = Some(status);
        self.put_source(&key);
        self.set_phase(id, RunPhase::CleaningUp, now);
    }

    /// The agent says the mover's pod is stuck (or, with no reason, that it no longer is):
    /// shown on the run and the source's condition at once, recorded once per pod; cleared
    /// when the attempt (or a later one) runs. Only the agent fails the attempt.
    fn on_mover_stuck(&mut self, id: RunId, s: MoverStuck, now: DateTime<Utc>) {
        let key = run_key(&self.active[&id]);
        let s = bounded_stuck(s);
        let run = self.active.get_mut(&id).expect("checked");
        if s.reason.is_empty() {
            // Nothing stuck: an earlier report of this attempt or an earlier one is over.
            let Some(was) = run.mover_stuck.take_if(|was| was.attempt <= s.attempt) else {
                return;
            };
            if run.message == stuck_text(&was) {
                run.message.clear();
            }
            note(
                run,
                now,
                "MoverRunning",
                format!(
                    "mover attempt {} is no longer stuck ({} of {} is over)",
                    s.attempt,
                    was.reason,
                    if was.pod.is_empty() {
                        &was.job
                    } else {
                        &was.pod
                    }
                ),
            );
            self.put_run(id);
            let stuck_shown = self.sources.get(&key).is_some_and(|e| {
                e.status()
                    .conditions
                    .iter()
                    .any(|c| c.type_ == "Synchronizing" && c.reason == MOVER_STUCK_REASON)
            });
            if stuck_shown {
                self.set_condition(&key, "True", "SyncInProgress", "", now);
                self.put_source(&key);
            }
            return;
        }
        if run.mover_stuck.as_ref() == Some(&s) {
            return;
        }
        // The timeline records each stuck pod (or Job) once; a pod whose reason alternates
        // (ErrImagePull and ImagePullBackOff) only updates the message.
        let new = run
            .mover_stuck
            .as_ref()
            .is_none_or(|was| (was.attempt, &was.pod) != (s.attempt, &s.pod));
        let msg = stuck_text(&s);
        run.message = msg.clone();
        if new {
            note(run, now, MOVER_STUCK_REASON, msg.clone());
        }
        run.mover_stuck = Some(s);
        self.put_run(id);
        self.set_condition(&key, "True", MOVER_STUCK_REASON, &msg, now);
        self.put_source(&key);
    }

    fn on_agent_error(&mut self, id: RunId, e: crate::model::AgentError, now: DateTime<Utc>) {
        let key = run_key(&self.active[&id]);
        let msg = truncate(
            &format!("{}: {}", truncate(&e.reason, 128), e.message),
            MAX_MESSAGE_BYTES,
        );
        let run = self.active.get_mut(&id).expect("checked");
        if run.message == msg && e.retryable {
            return;
        }
        run.message = msg.clone();
        note(run, now, "Error", msg.clone());
        self.set_condition(&key, "True", "Error", &msg, now);
        self.put_source(&key);
        if e.retryable || self.active[&id].phase == RunPhase::CleaningUp {
            self.put_run(id);
            return;
        }
        let run = self.active.get_mut(&id).expect("checked");
        run.result = Some(RunResult::Failed);
        self.set_phase(id, RunPhase::CleaningUp, now);
    }

    // ---------------------------------------------------------------- time

    /// The earliest time at which [`Scheduler::handle_timeout`] has something to do.
    pub fn poll_timeout(&self) -> Option<DateTime<Utc>> {
        let waits = self
            .active
            .values()
            .filter(|r| r.phase == RunPhase::WaitingForTrigger && !r.timeout_reported)
            .filter_map(|r| r.wait_deadline);
        let leases = self
            .active
            .values()
            .filter(|r| r.phase == RunPhase::Copying && r.copy_time.is_none())
            .filter_map(|r| r.lease_deadline);
        let holds = self
            .active
            .values()
            .filter(|r| r.phase == RunPhase::WaitingForTrigger)
            .flat_map(|r| r.holds.iter())
            .filter_map(|h| h.deadline);
        let starts = self
            .sources
            .values()
            .filter(|e| {
                !e.record.deleting && !e.spec().paused && e.status().current_run.is_none()
            })
            .filter_map(|e| e.status().next_sync_time);
        waits.chain(leases).chain(holds).chain(starts).min()
    }

    /// Acts on every deadline that has passed: wait timeouts, then due runs.
    pub fn handle_timeout(&mut self, now: DateTime<Utc>) {
        let expired: Vec<RunId> = self
            .active
            .iter()
            .filter(|(_, r)| {
                r.phase == RunPhase::WaitingForTrigger
                    && !r.timeout_reported
                    && r.wait_deadline.is_some_and(|d| d <= now)
            })
            .map(|(id, _)| *id)
            .collect();
        for id in expired {
            self.on_wait_timeout(id, now);
        }
        self.expire_holds(now);
        let leases: Vec<RunId> = self
            .active
            .iter()
            .filter(|(_, r)| lease_over(r, now))
            .map(|(id, _)| *id)
            .collect();
        for id in leases {
            self.on_lease_expired(id, now);
        }
        self.start_due_runs(now);
    }

    /// A released run's hold lease ran out before its copy point: the value is spent and the
    /// run waits for a new trigger. The agent deletes any copy it made and records the value
    /// as latest-copy-trigger before the PVC says WaitingForTrigger again.
    fn on_lease_expired(&mut self, id: RunId, now: DateTime<Utc>) {
        let key = run_key(&self.active[&id]);
        let (mover, timeout) = {
            let a = &self.sources[&key].admitted;
            (a.mover, a.wait_timeout)
        };
        let run = self.active.get_mut(&id).expect("in flight");
        let spent = std::mem::take(&mut run.trigger);
        // Every holder's value took part in the release: all are spent, the releasing one
        // last (it is the one written as latest-copy-trigger).
        for h in std::mem::take(&mut run.holds) {
            if h.value != spent {
                spend(run, h.value);
            }
        }
        spend(run, spent.clone());
        run.latest_trigger = spent.clone();
        run.released_by = None;
        run.lease_deadline = None;
        run.timeout_reported = false;
        run.waiting_since = Some(now);
        run.wait_deadline = now.checked_add_signed(timeout);
        run.message = LEASE_EXPIRED_TEXT.to_owned();
        note(
            run,
            now,
            "LeaseExpired",
            format!("copy-trigger {spent:?}: {LEASE_EXPIRED_TEXT}"),
        );
        self.effects
            .push(Effect::Observe(Observation::LeaseExpired {
                source: key,
                mover,
            }));
        self.set_phase(id, RunPhase::WaitingForTrigger, now);
        self.fail_if_spent_out(id, now);
    }

    fn on_wait_timeout(&mut self, id: RunId, now: DateTime<Utc>) {
        let key = run_key(&self.active[&id]);
        let (mover, policy) = {
            let a = &self.sources[&key].admitted;
            (a.mover, a.on_timeout)
        };
        let run = self.active.get_mut(&id).expect("checked");
        let logs = format!("{TIMEOUT_TEXT} {}", run.pvc);
        run.timeout_reported = true;
        run.message = logs.clone();
        self.effects
            .push(Effect::Observe(Observation::TriggerTimeout {
                source: key.clone(),
                mover,
            }));
        let status = MoverStatus {
            result: "Failed".into(),
            logs: logs.clone(),
        };
        run.mover_status = Some(status.clone());
        self.entry_mut(&key)
            .expect("exists")
            .status_mut()
            .latest_mover_status = Some(status);
        self.put_source(&key);
        let run = self.active.get_mut(&id).expect("checked");
        match policy {
            TimeoutPolicy::KeepWaiting => {
                note(
                    run,
                    now,
                    "TimeoutReported",
                    format!("{logs}; still waiting"),
                );
                self.bump(id);
                self.notify_copy(id);
            }
            TimeoutPolicy::Skip => {
                run.result = Some(RunResult::TimedOut);
                note(run, now, "TimedOut", format!("{logs}; run skipped"));
                self.set_phase(id, RunPhase::CleaningUp, now);
            }
        }
    }

    // ---------------------------------------------------------------- runs

    fn start_due_runs(&mut self, now: DateTime<Utc>) {
        let due: Vec<(SourceKey, RunReason)> = self
            .sources
            .iter()
            .filter_map(|(k, e)| due(e, now).map(|r| (k.clone(), r)))
            .collect();
        for (key, reason) in due {
            self.start_run(&key, reason, "", now);
        }
    }

    fn start_run(
        &mut self,
        key: &SourceKey,
        reason: RunReason,
        request_id: &str,
        now: DateTime<Utc>,
    ) -> RunId {
        let id = RunId(self.next_run);
        self.next_run = self.next_run.saturating_add(1);
        let entry = self.sources.get_mut(key).expect("caller checked");
        let spec = entry.spec().clone();
        let author = entry.source().author.clone();
        let pvc = spec.source_pvc.clone();
        let prune = match entry.admitted.prune_interval {
            // Saturating: an interval past the end of the calendar never comes due.
            Some(every) => entry.status().last_pruned.is_some_and(|t| {
                t.checked_add_signed(every).is_some_and(|due| due <= now)
            }),
            None => false,
        };
        let status = entry.status_mut();
        status.current_run = Some(id);
        status.last_sync_start_time = Some(now);
        status.message.clear();
        let mut run = Run {
            request_id: request_id.to_owned(),
            restic_prune: prune,
            spec: Some(spec),
            author,
            ..Run::new(id, key.clone(), pvc, reason, now)
        };
        note(&mut run, now, "Queued", reason.as_str_name());
        self.active.insert(id, run);
        self.set_condition(key, "True", "SyncInProgress", "", now);
        self.put_source(key);
        self.put_run(id);
        self.advance_pvc(key.namespace.clone(), self.active[&id].pvc.clone(), now);
        id
    }

    /// Lets the oldest queued run on a PVC start its copy phase if no run holds the PVC.
    fn advance_pvc(&mut self, namespace: String, pvc: String, now: DateTime<Utc>) {
        let on_pvc = |r: &Run| r.pvc == pvc && r.source.namespace == namespace;
        if self.active.values().any(|r| on_pvc(r) && holds_pvc(r)) {
            return;
        }
        let next = self
            .active
            .values()
            .find(|r| on_pvc(r) && r.phase == RunPhase::Queued)
            .map(|r| r.id);
        if let Some(id) = next {
            let run = self.active.get_mut(&id).expect("found");
            note(run, now, "Gating", "reading the source PVC");
            self.set_phase(id, RunPhase::Gating, now);
        }
    }

    /// Moves a run to a phase: persist, tell the agent, tell watchers, free the PVC if done.
    fn set_phase(&mut self, id: RunId, to: RunPhase, now: DateTime<Utc>) {
        let run = self.active.get_mut(&id).expect("in flight");
        let held = holds_pvc(run);
        run.phase = to;
        let (namespace, pvc) = (run.source.namespace.clone(), run.pvc.clone());
        let freed = held && !holds_pvc(run);
        let key = run_key(run);
        // A stuck mover is over once the mover is (or the run moved on otherwise).
        if to != RunPhase::Transferring
            && let Some(was) = run.mover_stuck.take()
            && run.message == stuck_text(&was)
        {
            run.message.clear();
        }
        if to == RunPhase::CleaningUp {
            self.set_condition(&key, "True", "CleaningUp", "", now);
            self.put_source(&key);
        }
        self.bump(id);
        self.notify_copy(id);
        if freed {
            self.advance_pvc(namespace, pvc, now);
        }
    }

    /// A new directive generation for a run: persist it and send it.
    fn bump(&mut self, id: RunId) {
        let run = self.active.get_mut(&id).expect("in flight");
        run.generation = run.generation.saturating_add(1);
        self.put_run(id);
        self.send_directive(id);
    }

    fn abort_run(&mut self, id: RunId, why: &str, now: DateTime<Utc>) {
        let run = self.active.get_mut(&id).expect("in flight");
        run.result = Some(RunResult::Aborted);
        run.message = why.to_owned();
        note(run, now, "Aborted", why);
        if run.phase == RunPhase::Queued {
            // Nothing was done in the cluster yet.
            self.finish_run(id, now);
        } else if run.phase != RunPhase::CleaningUp {
            self.set_phase(id, RunPhase::CleaningUp, now);
        }
    }

    fn finish_run(&mut self, id: RunId, now: DateTime<Utc>) {
        let mut run = self.active.remove(&id).expect("in flight");
        let key = run_key(&run);
        let namespace = key.namespace.clone();
        let freed = holds_pvc(&run);
        run.phase = RunPhase::Finished;
        let result = *run.result.get_or_insert(RunResult::Failed);
        run.end_time = Some(now);
        note(&mut run, now, "Finished", result.as_str_name());
        let started = run.start_time;
        let prune = run.restic_prune;
        let pvc = run.pvc.clone();
        // The manual tag this run was started for (an edit meanwhile asks for another run).
        let run_tag = match run.spec.as_ref().map(|s| &s.trigger) {
            Some(TriggerSpec::Manual(tag)) => Some(tag.clone()),
            _ => None,
        };
        self.effects.push(Effect::PutRun(Box::new(run.clone())));
        self.history.insert(id, run);
        self.effects.push(Effect::Forget {
            namespace: namespace.clone(),
            run_id: id,
        });
        self.notify_copy(id);

        if self.sources.get(&key).is_some_and(|e| e.record.deleting) {
            if let Some(e) = self.sources.get_mut(&key) {
                e.status_mut().current_run = None;
            }
            self.put_source(&key);
            self.retire(&key);
        } else {
            let entry = self.sources.get_mut(&key).expect("runs have sources");
            let previous = entry.status().last_sync_time;
            let mut missed = false;
            let trigger = entry.admitted.trigger.clone();
            let mover = entry.admitted.mover;
            let has_prune = entry.admitted.prune_interval.is_some();
            let status = entry.status_mut();
            status.current_run = None;
            if result == RunResult::Successful {
                status.last_sync_time = Some(now);
                status.last_sync_duration = Some(now - started);
                if let (SyncTrigger::Schedule(s), Some(prev)) = (&trigger, previous) {
                    let second = s.next_after(prev).and_then(|t| s.next_after(t));
                    if second.is_some_and(|t| now > t) {
                        missed = true;
                        status.missed_intervals += 1;
                    }
                }
                if has_prune && (prune || status.last_pruned.is_none()) {
                    status.last_pruned = Some(now);
                }
            }
            status.next_sync_time = match &trigger {
                SyncTrigger::Schedule(s) => s.next_after(now),
                SyncTrigger::Manual(tag) => {
                    status.last_manual_sync = run_tag.unwrap_or_else(|| tag.clone());
                    None
                }
                SyncTrigger::Continuous if result == RunResult::Successful => None,
                SyncTrigger::Continuous => now.checked_add_signed(CONTINUOUS_RETRY),
            };
            self.effects.push(Effect::Observe(Observation::RunFinished {
                source: key.clone(),
                mover,
                result,
                duration: now - started,
                missed,
            }));
            self.refresh_idle_condition(&key, now);
            self.put_source(&key);
        }
        self.trim_history(&key);
        if freed {
            self.advance_pvc(namespace, pvc, now);
        }
        self.start_due_runs(now);
    }

    fn trim_history(&mut self, key: &SourceKey) {
        let ids: Vec<RunId> = self
            .history
            .iter()
            .filter(|(_, r)| run_key(r) == *key)
            .map(|(id, _)| *id)
            .collect();
        for id in ids
            .iter()
            .take(ids.len().saturating_sub(HISTORY_PER_SOURCE))
        {
            self.history.remove(id);
            self.effects.push(Effect::RemoveRun(*id));
        }
    }

    // ---------------------------------------------------------------- helpers

    fn directive(&self, run: &Run) -> Option<Directive> {
        let phase = match run.phase {
            RunPhase::Gating => DirectivePhase::Gate,
            RunPhase::WaitingForTrigger => DirectivePhase::Wait,
            RunPhase::Copying => DirectivePhase::Copy,
            RunPhase::Transferring => DirectivePhase::Transfer,
            RunPhase::CleaningUp => DirectivePhase::Cleanup,
            RunPhase::Queued | RunPhase::Finished => return None,
        };
        let entry = self.sources.get(&run_key(run))?;
        let waited = run.waiting_since.is_some();
        let paused = entry.spec().paused;
        // The spec the run started with (PVC, mover, destination): an edit applies from the
        // next run. Only `paused` is live, so that pausing scales a running mover Job to zero.
        // A run stored by 0.1 has no snapshot and follows the live spec on its own PVC.
        let (spec, author) = match &run.spec {
            Some(spec) => (spec.clone(), run.author.clone()),
            None => (
                SourceSpec {
                    source_pvc: run.pvc.clone(),
                    ..entry.spec().clone()
                },
                entry.source().author.clone(),
            ),
        };
        Some(Directive {
            run_id: run.id,
            source: run.source.clone(),
            spec: SourceSpec { paused, ..spec },
            phase,
            generation: run.generation,
            waiting_since: run.waiting_since,
            timeout_reported: run.timeout_reported,
            trigger: run.trigger.clone(),
            write_copy_trigger: run.released_by == Some(ReleasedBy::Rpc),
            gated: run.gated,
            clear_waiting: match phase {
                // Paused: no application may be asked to quiesce.
                DirectivePhase::Gate => paused && waited,
                // Gating was removed while waiting: drop the stale snapgate annotations.
                DirectivePhase::Copy => waited && !run.gated,
                // Also when released but ended before the agent marked it InProgress.
                DirectivePhase::Cleanup => waited && run.copy_time.is_none(),
                _ => false,
            },
            // Released but never cut: the value is spent, and the PVC must say so.
            consumed_trigger: match phase {
                DirectivePhase::Cleanup if run.copy_time.is_none() && run.gated => {
                    if run.trigger.is_empty() {
                        run.spent_triggers.last().cloned().unwrap_or_default()
                    } else {
                        run.trigger.clone()
                    }
                }
                DirectivePhase::Wait => run.spent_triggers.last().cloned().unwrap_or_default(),
                _ => String::new(),
            },
            restic_prune: run.restic_prune,
            mover_failures: run.mover_failures,
            lease: phase == DirectivePhase::Copy && run.lease_deadline.is_some(),
            author,
        })
    }

    fn send_directive(&mut self, id: RunId) {
        let run = &self.active[&id];
        if let Some(directive) = self.directive(run) {
            self.effects.push(Effect::Send {
                namespace: run.source.namespace.clone(),
                directive: Box::new(directive),
            });
        }
    }

    fn notify_copy(&mut self, id: RunId) {
        let Some(run) = self.active.get(&id).or_else(|| self.history.get(&id)) else {
            return;
        };
        let status = self.copy_status(&run.source.namespace, &run.pvc);
        self.effects.push(Effect::CopyStatus(Box::new(status)));
    }

    fn current_run(&self, key: &SourceKey) -> Option<RunId> {
        self.sources
            .get(key)
            .and_then(|e| e.status().current_run)
            .filter(|id| self.active.contains_key(id))
    }

    fn entry(&self, key: &SourceKey) -> Result<&SourceEntry, CoreError> {
        match self.sources.get(key) {
            Some(e) if !e.record.deleting => Ok(e),
            _ => Err(CoreError::NotFound(key.clone())),
        }
    }

    fn entry_mut(&mut self, key: &SourceKey) -> Result<&mut SourceEntry, CoreError> {
        match self.sources.get_mut(key) {
            Some(e) if !e.record.deleting => Ok(e),
            _ => Err(CoreError::NotFound(key.clone())),
        }
    }

    fn put_source(&mut self, key: &SourceKey) {
        if let Some(e) = self.sources.get(key) {
            self.effects
                .push(Effect::PutSource(Box::new(e.record.clone())));
        }
    }

    fn put_run(&mut self, id: RunId) {
        if let Some(r) = self.active.get(&id) {
            self.effects.push(Effect::PutRun(Box::new(r.clone())));
        }
    }

    /// The Synchronizing condition of a source with no run in flight.
    fn refresh_idle_condition(&mut self, key: &SourceKey, now: DateTime<Utc>) {
        let Some(e) = self.sources.get(key) else {
            return;
        };
        if e.status().current_run.is_some() {
            return;
        }
        let first = e.status().last_sync_start_time.is_none();
        let reason = match (&e.admitted.trigger, e.spec().paused) {
            (_, true) => ("WaitingForSchedule", "paused"),
            (SyncTrigger::Manual(_), false) => ("WaitingForManual", ""),
            (SyncTrigger::Continuous, false) if first && e.spec().skip_initial_run => (
                "WaitingForSyncNow",
                "skipInitialRun: a continuous source starts with its first SyncNow",
            ),
            _ => ("WaitingForSchedule", ""),
        };
        self.set_condition(key, "False", reason.0, reason.1, now);
    }

    fn set_condition(
        &mut self,
        key: &SourceKey,
        status: &str,
        reason: &str,
        message: &str,
        now: DateTime<Utc>,
    ) {
        let Some(e) = self.sources.get_mut(key) else {
            return;
        };
        let st = e.status_mut();
        let existing = st
            .conditions
            .iter_mut()
            .find(|c| c.type_ == "Synchronizing");
        match existing {
            Some(c) if c.status == status && c.reason == reason && c.message == message => {}
            Some(c) => {
                c.status = status.into();
                c.reason = reason.into();
                c.message = message.into();
                c.last_transition_time = Some(now);
            }
            None => st.conditions.push(Condition {
                type_: "Synchronizing".into(),
                status: status.into(),
                reason: reason.into(),
                message: message.into(),
                last_transition_time: Some(now),
            }),
        }
    }
}

/// Whether the source's restic cache PVC outlives the source (`restic.keepCache`).
fn keep_cache(spec: &SourceSpec) -> bool {
    spec.restic().is_some_and(|r| r.keep_cache)
}

/// Whether an idle source must start a run now, and why.
fn due(e: &SourceEntry, now: DateTime<Utc>) -> Option<RunReason> {
    let status = e.status();
    if e.record.deleting || e.spec().paused || status.current_run.is_some() {
        return None;
    }
    let first = status.last_sync_start_time.is_none();
    let next_due = status.next_sync_time.is_some_and(|t| t <= now);
    match &e.admitted.trigger {
        SyncTrigger::Schedule(_) if next_due => Some(if first {
            RunReason::Initial
        } else {
            RunReason::Schedule
        }),
        SyncTrigger::Schedule(_) => None,
        SyncTrigger::Manual(tag) => (*tag != status.last_manual_sync).then_some(RunReason::Manual),
        // skipInitialRun on a continuous source: no run until the first SyncNow; from then on
        // each run follows the previous one.
        SyncTrigger::Continuous if first && e.spec().skip_initial_run => None,
        SyncTrigger::Continuous if status.next_sync_time.is_none() || next_due => Some(if first {
            RunReason::Initial
        } else {
            RunReason::Continuous
        }),
        SyncTrigger::Continuous => None,
    }
}

fn observation_name(o: &ReportObservation) -> &'static str {
    match o {
        ReportObservation::Pvc(_) => "PvcObserved",
        ReportObservation::CopyCompleted(_) => "CopyCompleted",
        ReportObservation::MoverFinished(_) => "MoverFinished",
        ReportObservation::MoverFailed(_) => "MoverFailed",
        ReportObservation::CleanedUp => "CleanedUp",
        ReportObservation::Error(_) => "AgentError",
        ReportObservation::MoverStuck(_) => "MoverStuck",
    }
}
