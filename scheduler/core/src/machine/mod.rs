//! The scheduler's state: sources, their runs, and the copy-trigger state machine.
//!
//! Every public method takes `now` and records its consequences as [`Effect`]s, drained by the
//! shell with [`Scheduler::drain_effects`]. Persistence effects come first in the drained list
//! and must be made durable before the others are acted on.

mod agents;
mod index;
mod mirror;
mod runs;
mod sources;
mod time;
mod triggers;

use std::collections::{BTreeMap, BTreeSet};

use crate::{
    RunId, SourceKey,
    model::{
        AgentTime, Author, Condition, CopyMethod, CopyState, CopyStatus, CopyTarget, Directive,
        DirectivePhase, Hold, LeaseRequest, MoverStatus, MoverStuck, PvcObserved, RawDuration,
        ReleasedBy, Report, ReportObservation, Run, RunPhase, RunReason, RunResult, Source,
        SourceRecord, SourceSpec, SourceStatus, SpecInput, TimelineEntry, TimeoutPolicy,
        TriggerSpec,
    },
    schedule::{CronCache, SyncTrigger},
    text::truncate,
    validate::{self, Admitted, InvalidField, Mover},
};
use chrono::{DateTime, Duration, Utc};

/// The most runs one step starts. A herd of sources due at once (a fleet on one schedule, a
/// restart after downtime) is started this many at a time, each batch committed and its
/// directives sent before the next, with requests served in between; the rest stay due.
pub const MAX_STARTS_PER_STEP: usize = 512;
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
pub use mirror::{Mirror, Mirrored};
/// The text VolSync writes into latestMoverStatus.logs when waiting times out.
pub use snapgate_contract::TIMEOUT_TEXT;

/// The longest message kept from a report, a condition or a timeline entry; longer ones are
/// cut on a character boundary with a marker.
pub const MAX_MESSAGE_BYTES: usize = 1024;
/// The most bytes of a mover log kept (the end of it): a tail, not the whole log.
pub const MAX_LOG_BYTES: usize = 4096;

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
    let time =
        |t: Option<DateTime<Utc>>| t.map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true));
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
    /// What the source table indexes it under.
    indexed: index::Indexed,
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
    sources: index::SourceTable,
    /// Runs not yet finished.
    active: index::RunTable,
    /// Finished runs, at most [`HISTORY_PER_SOURCE`] per source.
    history: index::RunTable,
    next_run: u64,
    effects: Vec<Effect>,
    lease_policy: LeasePolicy,
    /// The parsed cron patterns the sources' schedules share.
    crons: CronCache,
    /// The latest time due runs were started at (see [`MAX_STARTS_PER_STEP`]).
    starts_checked: Option<DateTime<Utc>>,
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
        for record in records {
            match s.load_source(record) {
                Ok(warning) => warnings.extend(warning),
                Err(q) => quarantined.push(q),
            }
        }
        for run in runs {
            if let Err(q) = s.load_run(run) {
                quarantined.push(q);
            }
        }
        Restored {
            scheduler: s,
            quarantined,
            warnings,
        }
    }

    /// Loads one stored source record in place of any under its key: `Ok` with a warning when
    /// it breaks a rule tightened since it was stored (it loads as stored, the rule in its
    /// status message), `Err` when it cannot be run (it is left out).
    fn load_source(
        &mut self,
        mut record: SourceRecord,
    ) -> Result<Option<Quarantined>, Quarantined> {
        let key = record.source.key.clone();
        let (mut admitted, broken) =
            validate::admit_stored(&key, &record.source.spec).map_err(|rule| {
                Quarantined::source(&key.to_string(), &format!("cannot be run: {rule}"))
            })?;
        self.share_schedule(&mut admitted);
        let warning = broken.map(|rule| {
            record.source.status.message = truncate(
                &format!(
                    "the stored spec breaks a rule of this version ({rule}); it runs as stored until a corrected spec is applied"
                ),
                MAX_MESSAGE_BYTES,
            );
            Quarantined::source(&key.to_string(), &rule.to_string())
        });
        self.sources.insert(
            key,
            SourceEntry {
                record,
                admitted,
                indexed: Default::default(),
            },
        );
        Ok(warning)
    }

    /// Loads one stored run in place of any with its id: finished into the history, in flight
    /// into the active runs when its source is loaded, else left out (`Err`). Even a run left
    /// out keeps its number: no new run may overwrite its record.
    fn load_run(&mut self, run: Run) -> Result<(), Quarantined> {
        let id = run.id;
        self.next_run = self.next_run.max(id.0.saturating_add(1));
        self.active.remove(&id);
        self.history.remove(&id);
        if run.phase == RunPhase::Finished {
            self.history.insert(run);
        } else if !self.sources.contains_key(&run.source) {
            return Err(Quarantined::run(
                &id.to_string(),
                &format!("in flight, but its source {} is not loaded", run.source),
            ));
        } else {
            self.active.insert(run);
        }
        Ok(())
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

    /// Makes an admitted schedule share the parse of its pattern with the other sources'.
    fn share_schedule(&mut self, admitted: &mut Admitted) {
        if let SyncTrigger::Schedule(s) = &mut admitted.trigger {
            self.crons.share(s);
        }
    }

    /// The next run number, to persist with the records.
    pub fn next_run_counter(&self) -> u64 {
        self.next_run
    }

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
        let Some(run) = self.active.get(&id) else {
            return;
        };
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

    /// What the scheduler parsed from a source's spec, deleting or not (a run in flight always
    /// has its source loaded; `None` makes a caller do nothing rather than panic).
    fn admitted(&self, key: &SourceKey) -> Option<&Admitted> {
        self.sources.get(key).map(|e| &e.admitted)
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

/// When an idle source is due to start a run: `None` while it is deleting, paused, running, or
/// waits for something other than time (a new manual tag, a SyncNow).
fn due_time(e: &SourceEntry) -> Option<index::Due> {
    let status = e.status();
    if e.record.deleting || e.spec().paused || status.current_run.is_some() {
        return None;
    }
    let first = status.last_sync_start_time.is_none();
    match &e.admitted.trigger {
        SyncTrigger::Schedule(_) => status.next_sync_time.map(index::Due::At),
        SyncTrigger::Manual(tag) => (*tag != status.last_manual_sync).then_some(index::Due::Now),
        // skipInitialRun on a continuous source: no run until the first SyncNow; from then on
        // each run follows the previous one.
        SyncTrigger::Continuous if first && e.spec().skip_initial_run => None,
        SyncTrigger::Continuous => Some(
            status
                .next_sync_time
                .map_or(index::Due::Now, index::Due::At),
        ),
    }
}

/// Whether an idle source must start a run now, and why.
fn due(e: &SourceEntry, now: DateTime<Utc>) -> Option<RunReason> {
    match due_time(e)? {
        index::Due::At(at) if at > now => return None,
        _ => {}
    }
    let first = e.status().last_sync_start_time.is_none();
    Some(match (&e.admitted.trigger, first) {
        (SyncTrigger::Manual(_), _) => RunReason::Manual,
        (_, true) => RunReason::Initial,
        (SyncTrigger::Schedule(_), false) => RunReason::Schedule,
        (SyncTrigger::Continuous, false) => RunReason::Continuous,
    })
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
