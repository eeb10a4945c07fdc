//! Classify, then act: from a directive and what the agent's watches see, the actions that move
//! the run one step on. Pure: the shell passes the observed objects and `now`, applies the
//! actions in order, puts their results in its cache and plans again, until a plan asks for
//! nothing that writes.
//!
//! ```text
//!   GATE      (paused: clear waiting annotations) ─► report the PVC's annotations
//!   WAIT      delete a copy left behind (wait until gone) ─► mark WaitingForTrigger and
//!             record a spent trigger (one patch, once) ─► report the PVC on every change
//!   COPY      mark InProgress ─► (lease: request it, wait) ─► create the copy (lease held)
//!             ─► cut (snapshot) or bound (clone)? ─► (lease held) mark Completed ─► report;
//!             lease run out: make, count and report nothing (a Warning Event), wait
//!   TRANSFER  (snapshot readyToUse? restore PVC from it) (restic cache) ─► mover Job
//!             ─► succeeded / failed ─► report; a failed Job is replaced after a back-off,
//!             each failure reported; a running Job whose pod cannot start (or that cannot
//!             make one) is reported stuck at once, and failed (deleted, reported, replaced
//!             after the back-off) once stuck past `mover_stuck_after`
//!   CLEANUP   (record a consumed trigger, clear waiting annotations: one patch)
//!             ─► delete copy, restored PVC, Job ─► report
//! ```
//!
//! A COPY directive with `lease` set (released by a Trigger call, whose caller holds its
//! quiesce for a while) is acted on only under the run's hold lease ([`Lease`], which the
//! shell keeps on its monotonic clock): the copy is made, and its copy point counted, only
//! while the lease is held at the plan's time; without one the plan asks for it
//! ([`Action::RequestLease`]); past it, nothing more is done for the run.
//!
//! Idempotent by construction: every object has a deterministic name, a plan never creates
//! what the cache already holds, an annotation patch is only planned when it changes
//! something, and an object left behind by an earlier run of the same source is deleted
//! before this run makes its own.

use std::{
    collections::{BTreeMap, BTreeSet},
    time::Duration,
};

use chrono::{DateTime, TimeDelta, Utc};
use k8s_openapi::{
    Metadata, Resource,
    api::{
        batch::v1::Job,
        core::v1::{Event, EventSource, ObjectReference, PersistentVolumeClaim, Pod},
    },
    apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta, Time},
};
use serde_json::Value;
use snapgate_proto::{
    time::timestamp,
    v1::{self, DirectivePhase, report::Observation},
};

use crate::{
    CopyMethod, Mover, MoverSpec, SpecError, annotations, bounds,
    classify::{self, CloneReadiness, CopyReadiness, JobState},
    names,
    resources::{self, MoverImages, MoverJobInput, ResticActions, RunRef, VolumeSnapshot},
    review::{self, AuthorReview, Review, SourceAuthors},
    stuck::{self, Trouble, Verdict},
};

/// The annotation on a mover Job counting which attempt of the run it is (1, 2, …).
pub const ATTEMPT: &str = "snapgate.io/attempt";

/// The agent-wide settings a plan needs.
#[derive(Clone, Debug)]
pub struct PlanConfig {
    /// The mover images.
    pub images: MoverImages,
    /// Proxy variables to pass on to mover Jobs.
    pub proxy: BTreeMap<String, String>,
    /// The wait before replacing a failed mover Job the first time; doubled per attempt.
    pub mover_backoff: Duration,
    /// The longest wait before replacing a failed mover Job.
    pub mover_backoff_max: Duration,
    /// Whether runs' authors are reviewed before the agent acts (see [`crate::review`]).
    pub source_authors: SourceAuthors,
    /// Secrets of the namespace the mover ServiceAccounts the agent makes pull images with.
    pub mover_pull_secrets: Vec<String>,
    /// The SecurityContextConstraints privileged movers (and rsync over ssh) may use, on a
    /// cluster that has them: the agent grants each source's mover ServiceAccount `use` of it.
    pub mover_scc: Option<String>,
    /// How long a mover Job's pod may stay stuck (see [`crate::stuck`]) before the attempt
    /// fails: the Job is deleted, the failure reported, and the next attempt made after the
    /// back-off.
    pub mover_stuck_after: Duration,
}

/// The default of [`PlanConfig::mover_stuck_after`]: 10 minutes.
pub const DEFAULT_MOVER_STUCK_AFTER: Duration = Duration::from_secs(600);

impl Default for PlanConfig {
    fn default() -> Self {
        Self {
            images: MoverImages::default(),
            proxy: BTreeMap::new(),
            mover_backoff: Duration::from_secs(10),
            mover_backoff_max: Duration::from_secs(300),
            source_authors: SourceAuthors::Review,
            mover_pull_secrets: Vec::new(),
            mover_scc: None,
            mover_stuck_after: DEFAULT_MOVER_STUCK_AFTER,
        }
    }
}

/// The names of everything a run of a source reads or makes (all in its namespace).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ObjectNames {
    /// The source PVC.
    pub source_pvc: String,
    /// The copy: the VolumeSnapshot (Snapshot), the clone PVC (Clone), and the PVC restored
    /// from the snapshot (Snapshot) share it; they are different kinds.
    pub copy: String,
    /// The restic cache PVC.
    pub cache_pvc: String,
    /// The mover Job (`None` when the spec names no single mover).
    pub job: Option<String>,
}

/// The names for `directive`'s source.
pub fn object_names(directive: &v1::Directive) -> ObjectNames {
    let source = directive
        .source
        .as_ref()
        .map(|s| s.name.as_str())
        .unwrap_or_default();
    let spec = directive.spec.as_ref();
    ObjectNames {
        source_pvc: spec.map(|s| s.source_pvc.clone()).unwrap_or_default(),
        copy: names::copy_name(source),
        cache_pvc: names::cache_name(source),
        job: spec
            .and_then(|s| MoverSpec::of(s).ok())
            .map(|m| names::job_name(m.mover(), source)),
    }
}

/// The keys each of a source's Secrets must hold before its mover Job is made, as VolSync
/// checks them up front: without one the Job's pod would wait in CreateContainerConfigError
/// (a key its env names) or the mover would fail at once (a file it reads). `(secret, key)`
/// pairs, in the order they are checked. A customCA from a ConfigMap is not checked (the
/// agent may not read ConfigMaps).
pub fn required_secret_keys(spec: &v1::SourceSpec) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = Vec::new();
    let mut need = |secret: &str, keys: &[&str]| {
        if !secret.is_empty() {
            out.extend(keys.iter().map(|k| (secret.to_owned(), (*k).to_owned())));
        }
    };
    let ca = |ca: &Option<v1::CustomCa>| {
        ca.as_ref()
            .filter(|c| !c.secret_name.is_empty() && !c.key.is_empty())
            .map(|c| (c.secret_name.clone(), c.key.clone()))
    };
    match MoverSpec::of(spec) {
        Ok(MoverSpec::Restic(r)) => {
            need(&r.repository, &["RESTIC_REPOSITORY", "RESTIC_PASSWORD"]);
            out.extend(ca(&r.custom_ca));
        }
        Ok(MoverSpec::Rclone(r)) => {
            need(&r.rclone_config, &["rclone.conf"]);
            out.extend(ca(&r.custom_ca));
        }
        Ok(MoverSpec::Rsync(r)) => need(&r.ssh_keys, &["source", "source.pub", "destination.pub"]),
        Ok(MoverSpec::RsyncTls(r)) => need(&r.key_secret, &["psk.txt"]),
        Err(_) => {}
    }
    out
}

/// The Secrets a source's mover needs before its Job can run.
pub fn required_secrets(spec: &v1::SourceSpec) -> Vec<String> {
    let mut out = Vec::new();
    let ca = |ca: &Option<v1::CustomCa>| {
        ca.as_ref()
            .map(|c| c.secret_name.clone())
            .filter(|n| !n.is_empty())
    };
    match MoverSpec::of(spec) {
        Ok(MoverSpec::Restic(r)) => {
            out.push(r.repository.clone());
            out.extend(ca(&r.custom_ca));
        }
        Ok(MoverSpec::Rclone(r)) => {
            out.push(r.rclone_config.clone());
            out.extend(ca(&r.custom_ca));
        }
        Ok(MoverSpec::Rsync(r)) => out.push(r.ssh_keys.clone()),
        Ok(MoverSpec::RsyncTls(r)) => out.push(r.key_secret.clone()),
        Err(_) => {}
    }
    out.retain(|n| !n.is_empty());
    out.dedup();
    out
}

/// The kinds of temporary objects a run makes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TemporaryKind {
    /// A VolumeSnapshot.
    Snapshot,
    /// A clone PVC or a PVC restored from a snapshot.
    Pvc,
    /// A mover Job.
    Job,
}

/// A temporary object of a source (labelled [`names::CLEANUP`] with it), as the watches see it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Temporary {
    /// Its kind.
    pub kind: TemporaryKind,
    /// Its name.
    pub name: String,
    /// It is being deleted (has a deletionTimestamp).
    pub terminating: bool,
}

/// How an object found under one of a run's names stands to the run.
enum Owned<'o, K> {
    /// Nothing of that name.
    Absent,
    /// Something snapgate did not make for this source.
    Foreign(&'o K),
    /// Made for an earlier run of the source.
    Earlier,
    /// Made for this run.
    ThisRun(&'o K),
}

/// Where the run's hold lease stands at the plan's time, as the shell keeps it (on its
/// monotonic clock: the deadline is the time it sent its request plus the lease's remaining
/// time, so it is never later than the scheduler's).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Lease {
    /// The directive carries no lease (`Directive.lease` is false).
    #[default]
    NotNeeded,
    /// No lease is held and none is asked for.
    None,
    /// Asked for; no answer yet.
    Requested,
    /// Held, and its deadline is after this plan's time: what the plan sees was observed
    /// inside the hold.
    Held,
    /// Held but its deadline has passed, or refused: no copy is made or counted.
    Expired,
}

/// What a directive's lease lets a step that makes or counts the copy do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum LeaseGate {
    /// Go on: no lease needed, or one is held.
    Go,
    /// Ask for a lease first.
    Ask,
    /// Wait for the answer.
    Wait,
    /// The lease ran out (or was refused): nothing more.
    Expired,
}

/// What the agent's watches show of the mover Job's pods and Warning Events.
#[derive(Clone, Copy, Debug, Default)]
pub enum MoverPods<'a> {
    /// Not known: no Job, or the pod or Event watch has not listed the namespace yet (then
    /// nothing is said either way).
    #[default]
    Unknown,
    /// Known: what keeps the Job from running ([`stuck::trouble`]), if anything.
    Known(Option<Stuck<'a>>),
}

/// A trouble of the mover Job, with when this agent first saw it (the shell keeps that time
/// per [`Trouble::key`]).
#[derive(Clone, Copy, Debug)]
pub struct Stuck<'a> {
    /// What the cluster shows.
    pub trouble: &'a Trouble,
    /// When this agent process first saw it.
    pub first_seen: DateTime<Utc>,
}

/// What the agent sees of one run's objects, from its watches and reads.
#[derive(Clone, Copy, Debug)]
pub struct Observed<'a> {
    /// The source PVC.
    pub pvc: Option<&'a PersistentVolumeClaim>,
    /// The VolumeSnapshot named for the source.
    pub snapshot: Option<&'a VolumeSnapshot>,
    /// The PVC named for the source's copy (clone or restored).
    pub copy_pvc: Option<&'a PersistentVolumeClaim>,
    /// The restic cache PVC.
    pub cache_pvc: Option<&'a PersistentVolumeClaim>,
    /// The mover Job.
    pub job: Option<&'a Job>,
    /// The keys of each required Secret that was found (absent: not found, or not read yet).
    pub secrets: Option<&'a BTreeMap<String, BTreeSet<String>>>,
    /// The namespace allows privileged movers.
    pub privileged: bool,
    /// The highest failed mover attempt of this run the shell has reported (0: none).
    pub failed_attempts: u32,
    /// Whether the outcome of the observed Job (by uid) has reached the scheduler.
    pub job_reported: bool,
    /// Every temporary object of the source (see [`names::is_temporary_of`]).
    pub temporaries: &'a [Temporary],
    /// The run's hold lease at this plan's time (COPY with `Directive.lease`).
    pub lease: Lease,
    /// Where the review of the run's author stands (see [`crate::review`]).
    pub review: Review<'a>,
    /// The namespace's pods, once read for a mover that mounts the source PVC in place
    /// (`Direct`; see [`crate::pinning`]); `None`: not read yet.
    pub pods: Option<&'a [Pod]>,
    /// The PVCs the source's `moverVolumes` name, as the agent's watch has them (those it
    /// has; see [`crate::pinning`]).
    pub mover_volume_pvcs: &'a [PersistentVolumeClaim],
    /// The namespace's VolSync ReplicationSources, once read for a gated run about to wait
    /// (see [`crate::volsync`]); `None`: not read yet.
    pub volsync: Option<&'a [crate::volsync::ReplicationSourceSeen]>,
    /// Whether the source's mover ServiceAccount (and SCC grant) was applied during this run
    /// (see [`resources::mover_account`]).
    pub mover_account: bool,
    /// The mover Job's pods and Warning Events, as the watches show them.
    pub mover_pods: MoverPods<'a>,
    /// No mover Job is made before this time: the back-off after a stuck attempt whose Job
    /// was deleted (kept by the shell from [`Action::FailStuckJob`]).
    pub next_attempt_at: Option<DateTime<Utc>>,
    /// The time of this plan.
    pub now: DateTime<Utc>,
}

/// How a mover Job ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MoverOutcome {
    /// `status.succeeded > 0`.
    Succeeded,
    /// Failed pods reached the back-off limit; `attempt` counts the Jobs of this run.
    Failed {
        /// Which attempt failed (1 for the first Job of the run).
        attempt: u32,
    },
}

/// One step for the shell to apply.
#[derive(Clone, Debug, PartialEq)]
pub enum Action {
    /// Merge-patch the PVC `name` (annotations only, under the agent's field manager).
    PatchPvc {
        /// The PVC.
        name: String,
        /// The JSON merge patch.
        patch: Value,
    },
    /// Create a VolumeSnapshot.
    CreateSnapshot(Box<VolumeSnapshot>),
    /// Create a PVC (clone, restored, or restic cache).
    CreatePvc(Box<PersistentVolumeClaim>),
    /// Make sure the ServiceAccount the source's mover runs as, and its SCC Role and
    /// RoleBinding, exist as given (created when missing, replaced when snapgate's but
    /// outdated, never taken over from someone else), then plan again.
    ApplyMoverAccount(Box<resources::MoverAccount>),
    /// Create a mover Job.
    CreateJob(Box<Job>),
    /// Merge-patch a mover Job (its parallelism, when the source is paused or resumed).
    PatchJob {
        /// The Job.
        name: String,
        /// The JSON merge patch.
        patch: Value,
    },
    /// Delete a VolumeSnapshot.
    DeleteSnapshot(String),
    /// Delete a PVC.
    DeletePvc(String),
    /// Delete a Job and its pods.
    DeleteJob(String),
    /// Delete a Job whose stuck attempt failed (its failure is reported), and make no mover
    /// Job for the run before `retry_at` (the back-off).
    FailStuckJob {
        /// The Job.
        job: String,
        /// When the next attempt may be made.
        retry_at: DateTime<Utc>,
    },
    /// Read the required Secrets (names) before planning again.
    ReadSecrets(Vec<String>),
    /// List the namespace's pods (to find the node of the pod using the source PVC) before
    /// planning again.
    ListPods,
    /// List the namespace's VolSync ReplicationSources (none when VolSync is not installed)
    /// before planning again.
    ListVolSync,
    /// Record a Kubernetes Event (its name is deterministic: record it once).
    Event(Box<Event>),
    /// Read the log of the Job's newest relevant pod and report the mover's outcome.
    ReportMover {
        /// The Job.
        job: String,
        /// Its uid, so each Job's outcome is reported once.
        uid: String,
        /// How it ended.
        outcome: MoverOutcome,
        /// The mover, for filtering its log.
        mover: Mover,
        /// For an attempt failed because it was stuck: what kept it from running, which
        /// the report's logs begin with.
        stuck: Option<String>,
    },
    /// Send this observation to the scheduler (the shell sends each one once).
    Report(Observation),
    /// Ask the scheduler for the run's hold lease: the shell sends a `LeaseRequest` for the
    /// run and its directive's generation with a fresh request id, noting the time before it
    /// sends it (the lease's deadline is counted from then).
    RequestLease,
    /// Ask the API server whether the run's author may do each of the review's checks in the
    /// run's namespace (a `LocalSubjectAccessReview` each), keep the answer for the run, and
    /// plan again.
    ReviewAuthor(Box<AuthorReview>),
    /// Nothing more until this time, unless something changes (a back-off).
    WakeAt(DateTime<Utc>),
}

/// The actions for `directive` given what is observed, in the order they must be applied.
/// An error means the spec itself cannot be acted on (the run must fail).
pub fn plan(
    directive: &v1::Directive,
    seen: &Observed<'_>,
    config: &PlanConfig,
) -> Result<Vec<Action>, SpecError> {
    let source = directive.source.clone().unwrap_or_default();
    let spec = directive.spec.as_ref().ok_or(SpecError::NoMover)?;
    let mover = MoverSpec::of(spec)?;
    let method = mover.copy_method()?;
    let run = RunRef {
        namespace: &source.namespace,
        source: &source.name,
        run_id: &directive.run_id,
    };
    let names = object_names(directive);
    let ctx = Ctx {
        directive,
        seen,
        config,
        run,
        mover,
        method,
        names: &names,
        spec,
    };
    let phase = DirectivePhase::try_from(directive.phase).unwrap_or(DirectivePhase::Unspecified);
    // Nothing is done for a run whose author Kubernetes would not let do it; cleanup only
    // removes what the agent made, and is never held up.
    if config.source_authors == SourceAuthors::Review
        && !matches!(phase, DirectivePhase::Unspecified | DirectivePhase::Cleanup)
        && let Some(step) = ctx.review()
    {
        return Ok(step);
    }
    Ok(match phase {
        DirectivePhase::Unspecified => Vec::new(),
        DirectivePhase::Gate => ctx.gate(),
        DirectivePhase::Wait => ctx.wait(),
        DirectivePhase::Copy => ctx.copy()?,
        DirectivePhase::Transfer => ctx.transfer()?,
        DirectivePhase::Cleanup => ctx.cleanup(),
    })
}

struct Ctx<'a> {
    directive: &'a v1::Directive,
    seen: &'a Observed<'a>,
    config: &'a PlanConfig,
    run: RunRef<'a>,
    mover: MoverSpec<'a>,
    method: CopyMethod,
    names: &'a ObjectNames,
    spec: &'a v1::SourceSpec,
}

impl Ctx<'_> {
    /// Until the author is reviewed and allowed, the review or the run's failure.
    fn review(&self) -> Option<Vec<Action>> {
        let (reason, why) = match self.seen.review {
            Review::Allowed => return None,
            Review::Pending => match review::request(
                self.directive.author.as_ref(),
                self.mover.volume_options().mover_service_account,
                self.run.namespace,
                self.run.source,
            ) {
                Ok(r) => return Some(vec![Action::ReviewAuthor(Box::new(r))]),
                Err(why) => ("NoAuthor", why),
            },
            Review::Denied(why) => ("AuthorForbidden", why.to_owned()),
        };
        let mut out = Vec::new();
        if let Some(pvc) = self.seen.pvc {
            out.push(self.event(pvc, reason, None, "Warning", why.clone()));
        }
        out.push(Action::Report(error(reason, why, false)));
        Some(out)
    }

    fn gate(&self) -> Vec<Action> {
        let observed = annotations::observe(self.seen.pvc);
        // The source was paused while its run waited: no application may be asked to quiesce,
        // so snapgate's waiting annotations go first; the cleared PVC is reported next.
        if self.directive.clear_waiting
            && self.seen.pvc.is_some()
            && let Some(patch) = annotations::clear_waiting(&observed)
        {
            return vec![self.patch_source(patch)];
        }
        vec![Action::Report(Observation::Pvc(observed))]
    }

    fn wait(&self) -> Vec<Action> {
        // A waiting run has no copy of its own: one under the copy's name was made for this run
        // before its lease ran out, or left by an earlier run. It goes first, and the run waits
        // until it is gone (a copy cut after the hold must never be taken for this run's).
        if let Some(step) = self.leftover_copy() {
            return step.into_iter().collect();
        }
        let observed = annotations::observe(self.seen.pvc);
        let Some(pvc) = self.seen.pvc else {
            return vec![Action::Report(Observation::Pvc(observed))];
        };
        let mut out = Vec::new();
        // Only a gated PVC is marked; a PVC whose gate was removed is reported, and the
        // scheduler releases the run.
        if observed.use_copy_trigger {
            // Never ask the application to quiesce while VolSync answers the same trigger.
            let Some(volsync) = self.seen.volsync else {
                return vec![Action::ListVolSync];
            };
            let others = crate::volsync::conflicts(volsync, &self.names.source_pvc);
            if !others.is_empty() {
                return vec![Action::Report(error(
                    "VolSyncConflict",
                    format!(
                        "VolSync ReplicationSource {} also replicates PVC {}: both would answer \
                         its copy-trigger, so the application is not asked to quiesce until it is \
                         paused (spec.paused: true) or deleted (docs/migrating-from-volsync.md)",
                        others.join(", "),
                        self.names.source_pvc
                    ),
                    true,
                ))];
            }
            // A time a protobuf Timestamp cannot carry (seconds out of range, bad nanos) is not
            // the scheduler's: the wait begins now.
            let since = self
                .directive
                .waiting_since
                .as_ref()
                .and_then(bounds::proto_time)
                .unwrap_or(self.seen.now);
            // A run sent back to wait (its lease ran out) records its spent value in the patch
            // that marks it waiting, before the PVC is reported: the value never releases again.
            if let Some(patch) =
                annotations::mark_waiting_spent(&observed, since, &self.directive.consumed_trigger)
            {
                out.push(self.patch_source(patch));
                out.push(self.event(
                    pvc,
                    "SrcPVCWaitingForCopyTrigger",
                    None,
                    "Normal",
                    format!(
                        "waiting for a new copy-trigger value on PVC {} (run {})",
                        self.names.source_pvc, self.run.run_id
                    ),
                ));
                return out;
            }
            if self.directive.timeout_reported {
                out.push(self.event(
                    pvc,
                    "SrcPVCTimeoutWaitingForCopyTrigger",
                    None,
                    "Warning",
                    format!(
                        "Timed out waiting for copy-trigger to be modified for pvc {}",
                        self.names.source_pvc
                    ),
                ));
            }
        }
        out.push(Action::Report(Observation::Pvc(observed)));
        out
    }

    fn copy(&self) -> Result<Vec<Action>, SpecError> {
        let observed = annotations::observe(self.seen.pvc);
        let Some(pvc) = self.seen.pvc else {
            return Ok(vec![self.pvc_missing()]);
        };
        // The trigger is written to the PVC's annotations and quoted in Events: the scheduler
        // refuses unprintable values at admission, and the agent does not write one either.
        if self.directive.gated
            && let Some(why) = bounds::unwritable(&self.directive.trigger)
        {
            return Ok(vec![Action::Report(error(
                "InvalidTrigger",
                format!(
                    "the trigger value {} of run {} is not written to PVC {}: {why}",
                    bounds::quoted(&self.directive.trigger),
                    bounds::quoted(self.run.run_id),
                    self.names.source_pvc
                ),
                false,
            ))]);
        }
        if !self.directive.gated
            && self.directive.clear_waiting
            && let Some(patch) = annotations::clear_waiting(&observed)
        {
            return Ok(vec![self.patch_source(patch)]);
        }
        // Past its hold lease a run makes nothing and counts nothing: the scheduler sends it
        // back to wait.
        if self.lease_gate() == LeaseGate::Expired {
            return Ok(self.lease_expired(&observed, pvc));
        }
        // Where the copy stands: once ready, its copy-point time.
        let ready: Option<DateTime<Utc>> = match self.method {
            CopyMethod::Direct => {
                if let Some(step) = self.under_lease() {
                    return Ok(step.into_iter().collect());
                }
                // The scheduler never asks a Direct source for a copy; answer anyway.
                return Ok(vec![Action::Report(Observation::CopyCompleted(
                    v1::CopyCompleted {
                        copy_name: String::new(),
                        time: Some(timestamp(bounds::clamp_to_proto_range(self.seen.now))),
                    },
                ))]);
            }
            CopyMethod::Clone => match self.owned(self.seen.copy_pvc) {
                Owned::Foreign(c) => return Ok(vec![self.foreign(c)]),
                // Left behind by an earlier run: it is not this run's copy point.
                Owned::Earlier => {
                    return Ok(self.before_copy(
                        &observed,
                        pvc,
                        Action::DeletePvc(self.copy_name()),
                    ));
                }
                // Made for an earlier release of this run: not this release's copy point.
                Owned::ThisRun(c) if !self.of_this_release(&c.metadata) => {
                    return Ok(self.before_copy(
                        &observed,
                        pvc,
                        Action::DeletePvc(self.copy_name()),
                    ));
                }
                Owned::Absent => {
                    let mut clone = resources::clone_pvc(&self.run, self.mover, pvc)?;
                    self.mark_release(&mut clone.metadata);
                    return Ok(self.before_leased_copy(
                        &observed,
                        pvc,
                        Action::CreatePvc(Box::new(clone)),
                    ));
                }
                Owned::ThisRun(c) => match classify::clone_readiness(c) {
                    CloneReadiness::Bound => Some(created(&c.metadata)),
                    CloneReadiness::Pending => None,
                    CloneReadiness::Lost => {
                        return Ok(vec![Action::Report(error(
                            "CloneLost",
                            format!("the clone PVC {} lost its volume", self.copy_name()),
                            false,
                        ))]);
                    }
                },
            },
            CopyMethod::Snapshot => match self.owned(self.seen.snapshot) {
                Owned::Foreign(s) => return Ok(vec![self.foreign(s)]),
                Owned::Earlier => {
                    return Ok(self.before_copy(
                        &observed,
                        pvc,
                        Action::DeleteSnapshot(self.copy_name()),
                    ));
                }
                Owned::ThisRun(s) if !self.of_this_release(&s.metadata) => {
                    return Ok(self.before_copy(
                        &observed,
                        pvc,
                        Action::DeleteSnapshot(self.copy_name()),
                    ));
                }
                Owned::Absent => {
                    let mut snap =
                        resources::volume_snapshot(&self.run, self.mover, &self.names.source_pvc);
                    self.mark_release(&mut snap.metadata);
                    return Ok(self.before_leased_copy(
                        &observed,
                        pvc,
                        Action::CreateSnapshot(Box::new(snap)),
                    ));
                }
                // The copy point is the cut (creationTime), not the end of the upload
                // (readyToUse): the application is not held through the upload.
                Owned::ThisRun(s) => match classify::copy_readiness(s) {
                    CopyReadiness::Cut | CopyReadiness::Ready => Some(
                        s.status
                            .as_ref()
                            .and_then(|st| st.creation_time.as_ref())
                            .map_or_else(|| created(&s.metadata), |t| from_jiff(t.0)),
                    ),
                    CopyReadiness::Pending => None,
                    CopyReadiness::Failed(message) => {
                        let mut out = self.in_progress(&observed, pvc);
                        out.push(Action::Report(error(
                            "SnapshotFailed",
                            format!("VolumeSnapshot {}: {message}", self.copy_name()),
                            true,
                        )));
                        return Ok(out);
                    }
                },
            },
        };
        let Some(time) = ready else {
            return Ok(self.in_progress(&observed, pvc));
        };
        // The copy point is counted (marked Completed, reported) only under a lease held now:
        // it was observed before the lease's deadline. An agent that restarted finds this
        // run's copy and counts it only under a lease it holds itself.
        if let Some(step) = self.under_lease() {
            return Ok(step.into_iter().collect());
        }
        if self.directive.gated
            && let Some(patch) = annotations::mark_completed(&observed, &self.directive.trigger)
        {
            return Ok(vec![
                self.patch_source(patch),
                self.event(
                    pvc,
                    "SrcPVCCopyUsingCopyTriggerCompleted",
                    None,
                    "Normal",
                    format!(
                        "copy {} of PVC {} completed with copy-trigger {:?}",
                        self.copy_name(),
                        self.names.source_pvc,
                        self.directive.trigger
                    ),
                ),
            ]);
        }
        // The copy point comes from the cluster (a creationTime, a creationTimestamp): one a
        // protobuf Timestamp cannot carry is reported as now.
        Ok(vec![Action::Report(Observation::CopyCompleted(
            v1::CopyCompleted {
                copy_name: self.copy_name(),
                time: Some(timestamp(bounds::reported_time(time, self.seen.now))),
            },
        ))])
    }

    /// Whether this run's copy was made for the release the directive names (the value that
    /// released it). An ungated run has no release to tell apart.
    fn of_this_release(&self, meta: &ObjectMeta) -> bool {
        !self.directive.gated
            || meta
                .annotations
                .as_ref()
                .and_then(|a| a.get(names::RELEASE))
                .is_some_and(|v| *v == self.directive.trigger)
    }

    /// Records on a new copy the release it is made for.
    fn mark_release(&self, meta: &mut ObjectMeta) {
        if self.directive.gated {
            meta.annotations
                .get_or_insert_with(Default::default)
                .insert(names::RELEASE.to_owned(), self.directive.trigger.clone());
        }
    }

    /// The name of the run's copy: the VolumeSnapshot, the clone, the restored PVC.
    fn copy_name(&self) -> String {
        self.names.copy.clone()
    }

    /// How an object found under one of this run's names stands to the run.
    fn owned<'o, K: Metadata<Ty = ObjectMeta>>(&self, object: Option<&'o K>) -> Owned<'o, K> {
        match object {
            None => Owned::Absent,
            Some(o) if !names::made_for_source(o.metadata().labels.as_ref(), self.run.source) => {
                Owned::Foreign(o)
            }
            Some(o) if names::made_by_run(o.metadata().labels.as_ref(), self.run.run_id) => {
                Owned::ThisRun(o)
            }
            Some(_) => Owned::Earlier,
        }
    }

    /// The InProgress mark (gated PVCs), which must be on the PVC before the copy is made.
    fn in_progress(&self, observed: &v1::PvcObserved, pvc: &PersistentVolumeClaim) -> Vec<Action> {
        let mut out = Vec::new();
        if self.directive.gated
            && let Some(patch) = annotations::mark_in_progress(
                observed,
                &self.directive.trigger,
                // Only in the patch that starts the copy: a value the user writes afterwards
                // (to release the next run ahead of time) is theirs.
                self.directive.write_copy_trigger
                    && observed.latest_copy_status != annotations::CopyStatus::InProgress.as_str(),
            )
        {
            out.push(self.patch_source(patch));
            out.push(self.event(
                pvc,
                "SrcPVCCopyTriggerReceived",
                None,
                "Normal",
                format!(
                    "copy-trigger {:?} received on PVC {}: copying",
                    self.directive.trigger, self.names.source_pvc
                ),
            ));
        }
        out
    }

    /// Where the directive's lease lets a step that makes or counts the copy go.
    fn lease_gate(&self) -> LeaseGate {
        if !self.directive.lease {
            return LeaseGate::Go;
        }
        match self.seen.lease {
            Lease::Held => LeaseGate::Go,
            Lease::Requested => LeaseGate::Wait,
            Lease::Expired => LeaseGate::Expired,
            // A directive with a lease is never acted on without one, whatever the shell says.
            Lease::None | Lease::NotNeeded => LeaseGate::Ask,
        }
    }

    /// `None` when a step that makes or counts the copy may go on; else what to do instead:
    /// ask for the lease (`Some(Some(RequestLease))`), or wait (`Some(None)`).
    fn under_lease(&self) -> Option<Option<Action>> {
        match self.lease_gate() {
            LeaseGate::Go => None,
            LeaseGate::Ask => Some(Some(Action::RequestLease)),
            LeaseGate::Wait | LeaseGate::Expired => Some(None),
        }
    }

    /// The InProgress mark first (harmless before the lease), then `create` when the lease
    /// allows it, else the request for the lease (or nothing while it is asked for).
    fn before_leased_copy(
        &self,
        observed: &v1::PvcObserved,
        pvc: &PersistentVolumeClaim,
        create: Action,
    ) -> Vec<Action> {
        let mut out = self.in_progress(observed, pvc);
        match self.under_lease() {
            None => out.push(create),
            Some(step) => out.extend(step),
        }
        out
    }

    /// The run's lease ran out (or was refused) before its copy point was counted: nothing is
    /// made, counted or reported, and a Warning Event (once per directive generation) says
    /// so. A PVC already marked Completed with this run's value was counted under the lease:
    /// nothing is said then.
    fn lease_expired(
        &self,
        observed: &v1::PvcObserved,
        pvc: &PersistentVolumeClaim,
    ) -> Vec<Action> {
        let counted = self.directive.gated
            && observed.latest_copy_status == annotations::CopyStatus::Completed.as_str()
            && observed.latest_copy_trigger == self.directive.trigger;
        if counted {
            return Vec::new();
        }
        vec![self.event(
            pvc,
            "CopyLeaseExpired",
            Some(self.directive.generation),
            "Warning",
            format!(
                "the hold lease of run {} ran out before its copy point: the copy is not \
                 counted, and the run waits for a new copy-trigger",
                self.run.run_id
            ),
        )]
    }

    /// A waiting run's step for a copy left under the copy's name (made for this run or an
    /// earlier one of the source): delete it (`Some(Some(_))`), or wait while it terminates
    /// (`Some(None)`). `None` when there is none (or only an object snapgate did not make,
    /// which it never touches).
    fn leftover_copy(&self) -> Option<Option<Action>> {
        let (meta, delete) = match self.method {
            CopyMethod::Snapshot => match self.owned(self.seen.snapshot) {
                Owned::Absent | Owned::Foreign(_) => return None,
                Owned::ThisRun(_) | Owned::Earlier => (
                    self.seen.snapshot.map(|s| &s.metadata)?,
                    Action::DeleteSnapshot(self.copy_name()),
                ),
            },
            CopyMethod::Clone => match self.owned(self.seen.copy_pvc) {
                Owned::Absent | Owned::Foreign(_) => return None,
                Owned::ThisRun(_) | Owned::Earlier => (
                    self.seen.copy_pvc.map(|c| &c.metadata)?,
                    Action::DeletePvc(self.copy_name()),
                ),
            },
            CopyMethod::Direct => return None,
        };
        Some(meta.deletion_timestamp.is_none().then_some(delete))
    }

    /// The InProgress mark first, then `step` (making or clearing the way for the copy).
    fn before_copy(
        &self,
        observed: &v1::PvcObserved,
        pvc: &PersistentVolumeClaim,
        step: Action,
    ) -> Vec<Action> {
        let mut out = self.in_progress(observed, pvc);
        out.push(step);
        out
    }

    fn transfer(&self) -> Result<Vec<Action>, SpecError> {
        let Some(job_name) = self.names.job.clone() else {
            return Err(SpecError::NoMover);
        };
        // `unlock` is written to the cache PVC's annotations after a successful Job.
        if let MoverSpec::Restic(r) = self.mover
            && let Some(why) = r.unlock.as_deref().and_then(bounds::unwritable)
        {
            return Err(SpecError::invalid("restic.unlock", why));
        }
        let mut out = Vec::new();
        let observed = annotations::observe(self.seen.pvc);
        if self.method == CopyMethod::Direct
            && observed.use_copy_trigger
            && let Some(pvc) = self.seen.pvc
        {
            out.push(
                self.event(
                    pvc,
                    "CopyTriggerNotSupported",
                    None,
                    "Warning",
                    "use-copy-trigger needs copyMethod Snapshot or Clone: syncing without gating"
                        .into(),
                ),
            );
        }
        // An existing Job decides first: its outcome is what this phase is for.
        if let Some(job) = self.seen.job {
            if !names::made_by_run(job.metadata.labels.as_ref(), self.run.run_id) {
                out.push(Action::DeleteJob(job_name));
                return Ok(out);
            }
            if job.metadata.deletion_timestamp.is_some() {
                return Ok(out);
            }
            let attempt = job_attempt(job);
            let uid = job.metadata.uid.clone().unwrap_or_default();
            match classify::job_state(job) {
                JobState::Running { .. } => {
                    if job.spec.as_ref().and_then(|s| s.parallelism) != Some(self.parallelism()) {
                        out.push(Action::PatchJob {
                            name: job_name,
                            patch: serde_json::json!({
                                "spec": { "parallelism": self.parallelism() }
                            }),
                        });
                    } else if !self.spec.paused {
                        // A paused Job runs no pod: nothing of it can be stuck.
                        out.extend(self.stuck(&job_name, attempt, uid));
                    }
                }
                JobState::Succeeded => {
                    if let MoverSpec::Restic(r) = self.mover
                        && let Some(cache) = self.seen.cache_pvc
                        && let Some(patch) = annotations::mark_unlocked(
                            r.unlock.as_deref(),
                            annotations::restic_last_unlocked(Some(cache)),
                        )
                    {
                        out.push(Action::PatchPvc {
                            name: self.names.cache_pvc.clone(),
                            patch,
                        });
                        return Ok(out);
                    }
                    out.push(Action::ReportMover {
                        job: job_name,
                        uid,
                        outcome: MoverOutcome::Succeeded,
                        mover: self.mover.mover(),
                        stuck: None,
                    });
                }
                JobState::Failed { .. } => {
                    if let Some(pvc) = self.seen.pvc {
                        out.push(self.event(
                            pvc,
                            "TransferFailed",
                            Some(attempt.into()),
                            "Warning",
                            format!(
                                "mover Job {job_name} failed (attempt {attempt}); it is replaced \
                                 after a back-off"
                            ),
                        ));
                    }
                    // A failure time from the future (a hostile or skewed clock) counts from now;
                    // a back-off past the end of time is never over.
                    let failed = failed_at(job)
                        .unwrap_or_else(|| created(&job.metadata))
                        .min(self.seen.now);
                    let retry_at = TimeDelta::from_std(self.backoff(attempt))
                        .ok()
                        .and_then(|b| failed.checked_add_signed(b))
                        .unwrap_or(DateTime::<Utc>::MAX_UTC);
                    if !self.seen.job_reported {
                        // The failure (and its log) reaches the scheduler before the Job that
                        // holds the log is replaced.
                        out.push(Action::ReportMover {
                            job: job_name.clone(),
                            uid,
                            outcome: MoverOutcome::Failed { attempt },
                            mover: self.mover.mover(),
                            stuck: None,
                        });
                        out.push(Action::WakeAt(retry_at.max(self.seen.now)));
                        return Ok(out);
                    }
                    if self.seen.now >= retry_at {
                        out.push(Action::DeleteJob(job_name));
                    } else {
                        out.push(Action::WakeAt(retry_at));
                    }
                }
            }
            return Ok(out);
        }

        // The Job of a stuck attempt was deleted: the next one waits for the back-off.
        if let Some(at) = self.seen.next_attempt_at
            && self.seen.now < at
        {
            out.push(Action::WakeAt(at));
            return Ok(out);
        }
        // No Job yet: the data volume, the cache and the secrets come first.
        let Some(source_pvc) = self.seen.pvc else {
            if self.method == CopyMethod::Direct || self.method == CopyMethod::Snapshot {
                out.push(self.pvc_missing());
                return Ok(out);
            }
            // Clone: the clone is all the mover needs.
            return self.transfer_with(out, None, job_name);
        };
        self.transfer_with(out, Some(source_pvc), job_name)
    }

    fn transfer_with(
        &self,
        mut out: Vec<Action>,
        source_pvc: Option<&PersistentVolumeClaim>,
        job_name: String,
    ) -> Result<Vec<Action>, SpecError> {
        let data: &PersistentVolumeClaim = match self.method {
            CopyMethod::Direct => {
                let Some(source_pvc) = source_pvc else {
                    out.push(self.pvc_missing());
                    return Ok(out);
                };
                source_pvc
            }
            CopyMethod::Clone => match self.owned(self.seen.copy_pvc) {
                Owned::ThisRun(c) => c,
                Owned::Foreign(c) => {
                    out.push(self.foreign(c));
                    return Ok(out);
                }
                Owned::Absent | Owned::Earlier => {
                    out.push(self.copy_gone("the clone PVC"));
                    return Ok(out);
                }
            },
            CopyMethod::Snapshot => match self.owned(self.seen.copy_pvc) {
                Owned::ThisRun(c) => c,
                Owned::Foreign(c) => {
                    out.push(self.foreign(c));
                    return Ok(out);
                }
                Owned::Earlier => {
                    out.push(Action::DeletePvc(self.copy_name()));
                    return Ok(out);
                }
                Owned::Absent => {
                    let Owned::ThisRun(snap) = self.owned(self.seen.snapshot) else {
                        out.push(self.copy_gone("the VolumeSnapshot"));
                        return Ok(out);
                    };
                    // The copy point was the cut; a PVC is restored from the snapshot (and the
                    // mover reads it) only once its upload is done: readyToUse.
                    match classify::copy_readiness(snap) {
                        CopyReadiness::Ready => {}
                        CopyReadiness::Cut | CopyReadiness::Pending => return Ok(out),
                        CopyReadiness::Failed(message) => {
                            out.push(Action::Report(error(
                                "SnapshotFailed",
                                format!("VolumeSnapshot {}: {message}", self.copy_name()),
                                true,
                            )));
                            return Ok(out);
                        }
                    }
                    let Some(source_pvc) = source_pvc else {
                        out.push(self.pvc_missing());
                        return Ok(out);
                    };
                    let restored =
                        resources::pvc_from_snapshot(&self.run, self.mover, source_pvc, snap)?;
                    out.push(Action::CreatePvc(Box::new(restored)));
                    return Ok(out);
                }
            },
        };
        if let MoverSpec::Restic(r) = self.mover
            && self.seen.cache_pvc.is_none()
        {
            let cache = resources::restic_cache_pvc(self.run.namespace, self.run.source, r, data)?;
            out.push(Action::CreatePvc(Box::new(cache)));
            return Ok(out);
        }
        let required = required_secrets(self.spec);
        let Some(secrets) = self.seen.secrets else {
            out.push(Action::ReadSecrets(required));
            return Ok(out);
        };
        if let Some(missing) = required.iter().find(|n| !secrets.contains_key(*n)) {
            out.push(Action::Report(error(
                "SecretNotFound",
                format!(
                    "Secret {}/{missing} (named by the source's {} settings) not found",
                    self.run.namespace,
                    self.mover.mover().as_str()
                ),
                true,
            )));
            return Ok(out);
        }
        // Every key the mover needs: a missing one is said at once, naming the Secret and the
        // key, and the run waits (the Secrets are read again) until it is there.
        if let Some((secret, key)) = required_secret_keys(self.spec)
            .into_iter()
            .find(|(secret, key)| secrets.get(secret).is_none_or(|keys| !keys.contains(key)))
        {
            out.push(Action::Report(error(
                "SecretKeyMissing",
                format!(
                    "Secret {}/{secret} has no key {key:?}, which the {} mover needs",
                    self.run.namespace,
                    self.mover.mover().as_str()
                ),
                true,
            )));
            return Ok(out);
        }
        // A mover that mounts the source PVC in place runs where the application's pod has it
        // attached (Multi-Attach otherwise): the pods are read first.
        // So do the PVCs of its moverVolumes, when the source's own volume pins nothing.
        let claims = crate::pinning::mover_volume_claims(self.mover.volume_options().mover_volumes);
        let pin = match (
            self.method == CopyMethod::Direct || !claims.is_empty(),
            self.seen.pods,
        ) {
            (true, None) => {
                out.push(Action::ListPods);
                return Ok(out);
            }
            (true, Some(pods)) => (self.method == CopyMethod::Direct)
                .then(|| crate::pinning::pin(data, pods))
                .flatten()
                .or_else(|| {
                    crate::pinning::pin_mover_volumes(&claims, self.seen.mover_volume_pvcs, pods)
                }),
            (false, _) => None,
        };
        // The mover runs as the source's own ServiceAccount unless the source names one; it is
        // applied once per run (its pull secrets and SCC grant follow the agent's settings).
        let own_account = self
            .mover
            .volume_options()
            .mover_service_account
            .is_none()
            .then(|| names::mover_account_name(self.run.source));
        if own_account.is_some() && !self.seen.mover_account {
            // rsync over ssh runs as root with sshd's capabilities, privileged movers as root:
            // only those need the SCC.
            let privileged = self.mover.mover() == Mover::Rsync || self.seen.privileged;
            out.push(Action::ApplyMoverAccount(Box::new(
                resources::mover_account(
                    self.run.namespace,
                    self.run.source,
                    &self.config.mover_pull_secrets,
                    self.config.mover_scc.as_deref().filter(|_| privileged),
                ),
            )));
            return Ok(out);
        }
        let main_secret = required.first().and_then(|n| secrets.get(n));
        let empty = BTreeSet::new();
        let restic = match self.mover {
            MoverSpec::Restic(r) => ResticActions {
                unlock: annotations::restic_unlock_due(
                    r.unlock.as_deref(),
                    annotations::restic_last_unlocked(self.seen.cache_pvc),
                ),
                prune: self.directive.restic_prune,
            },
            _ => ResticActions::default(),
        };
        let mut job = resources::mover_job(&MoverJobInput {
            run: self.run,
            spec: self.mover,
            paused: self.spec.paused,
            data_pvc: data,
            privileged_movers: self.seen.privileged,
            images: &self.config.images,
            proxy: &self.config.proxy,
            secret_keys: main_secret.unwrap_or(&empty),
            restic,
            mover_account: own_account.as_deref(),
        })?;
        if let Some(pin) = &pin {
            crate::pinning::apply(&mut job, pin);
        }
        let Some(attempt) = self.seen.failed_attempts.checked_add(1) else {
            out.push(Action::Report(error(
                "TooManyAttempts",
                format!(
                    "the run's mover failed {} times: no further attempt can be counted",
                    self.seen.failed_attempts
                ),
                false,
            )));
            return Ok(out);
        };
        job.metadata
            .annotations
            .get_or_insert_with(BTreeMap::new)
            .insert(ATTEMPT.to_owned(), attempt.to_string());
        debug_assert_eq!(job.metadata.name.as_deref(), Some(job_name.as_str()));
        out.push(Action::CreateJob(Box::new(job)));
        if let Some(pvc) = source_pvc.or(self.seen.copy_pvc) {
            out.push(self.event(
                pvc,
                "TransferStarted",
                Some(attempt.into()),
                "Normal",
                format!(
                    "mover Job {job_name} started (attempt {attempt})",
                    job_name = self.names.job.as_deref().unwrap_or_default()
                ),
            ));
        }
        Ok(out)
    }

    /// A running Job's pods, as the watches show them: what keeps it from running is reported
    /// at once (and that nothing does, so that an earlier report no longer stands); once it
    /// has lasted `mover_stuck_after`, the attempt fails: reported with what kept it, then
    /// its Job deleted, the next attempt after the usual back-off.
    fn stuck(&self, job: &str, attempt: u32, uid: String) -> Vec<Action> {
        let MoverPods::Known(seen) = self.seen.mover_pods else {
            return Vec::new();
        };
        let Some(Stuck {
            trouble,
            first_seen,
        }) = seen
        else {
            return vec![Action::Report(Observation::MoverStuck(v1::MoverStuck {
                job: job.to_owned(),
                attempt,
                ..Default::default()
            }))];
        };
        let after = self.config.mover_stuck_after;
        let report = |since: DateTime<Utc>, deadline: Option<DateTime<Utc>>| {
            Action::Report(Observation::MoverStuck(v1::MoverStuck {
                reason: trouble.reason.as_str().to_owned(),
                message: trouble.message.clone(),
                pod: trouble.pod.clone().unwrap_or_default(),
                job: job.to_owned(),
                attempt,
                since: Some(timestamp(bounds::clamp_to_proto_range(since))),
                deadline: deadline.map(|d| timestamp(bounds::clamp_to_proto_range(d))),
            }))
        };
        match stuck::verdict(trouble.since, first_seen, after, self.seen.now) {
            Verdict::Waiting { since, deadline } => {
                let mut out = vec![report(since, deadline)];
                out.extend(deadline.map(Action::WakeAt));
                out
            }
            Verdict::Over { since, deadline } => {
                let why = format!(
                    "{}; stuck since {}, longer than {}: the attempt failed",
                    trouble.describe(job),
                    since.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
                    snapgate_proto::duration::format(after),
                );
                if !self.seen.job_reported {
                    // What kept it, then the failure (with it), before the Job goes.
                    return vec![
                        report(since, Some(deadline)),
                        Action::ReportMover {
                            job: job.to_owned(),
                            uid,
                            outcome: MoverOutcome::Failed { attempt },
                            mover: self.mover.mover(),
                            stuck: Some(why),
                        },
                        Action::WakeAt(self.seen.now),
                    ];
                }
                let mut out = Vec::new();
                if let Some(pvc) = self.seen.pvc {
                    out.push(self.event(
                        pvc,
                        "TransferFailed",
                        Some(attempt.into()),
                        "Warning",
                        format!(
                            "mover Job {job} failed (attempt {attempt}): {why}; it is replaced \
                             after a back-off"
                        ),
                    ));
                }
                // A back-off past the end of time is never over.
                let retry_at = TimeDelta::from_std(self.backoff(attempt))
                    .ok()
                    .and_then(|b| self.seen.now.checked_add_signed(b))
                    .unwrap_or(DateTime::<Utc>::MAX_UTC);
                out.push(Action::FailStuckJob {
                    job: job.to_owned(),
                    retry_at,
                });
                out
            }
        }
    }

    fn parallelism(&self) -> i32 {
        if self.spec.paused { 0 } else { 1 }
    }

    fn backoff(&self, attempt: u32) -> Duration {
        let factor = 1u32 << attempt.saturating_sub(1).min(16);
        self.config
            .mover_backoff
            .saturating_mul(factor)
            .min(self.config.mover_backoff_max)
    }

    fn cleanup(&self) -> Vec<Action> {
        let mut out = Vec::new();
        let observed = annotations::observe(self.seen.pvc);
        // Before anything else, in one patch: a value that released the run but never reached
        // its copy point is recorded as consumed (it can never release a later run on the
        // PVC), and the waiting annotations of a run that ended without a copy are removed.
        if self.seen.pvc.is_some()
            && let Some(patch) = annotations::end_run(
                &observed,
                &self.directive.consumed_trigger,
                self.directive.clear_waiting,
            )
        {
            out.push(self.patch_source(patch));
        }
        // Everything of this source's runs, found by its cleanup label: this run's objects and
        // any an earlier run (or an earlier mover of the source) left behind. Caches are not
        // temporary and carry no cleanup label.
        let pending = !self.seen.temporaries.is_empty();
        for t in self.seen.temporaries.iter().filter(|t| !t.terminating) {
            out.push(match t.kind {
                TemporaryKind::Snapshot => Action::DeleteSnapshot(t.name.clone()),
                TemporaryKind::Pvc => Action::DeletePvc(t.name.clone()),
                TemporaryKind::Job => Action::DeleteJob(t.name.clone()),
            });
        }
        if !pending && out.is_empty() {
            out.push(Action::Report(Observation::CleanedUp(v1::CleanedUp {})));
        }
        out
    }

    /// An object of one of this run's names that snapgate did not make for this source (PVCs
    /// are watched without a label filter, so a user's PVC of the same name is seen too): it
    /// is never used or deleted.
    fn foreign<K: Resource + Metadata<Ty = ObjectMeta>>(&self, object: &K) -> Action {
        Action::Report(error(
            "NameTaken",
            format!(
                "{} {}/{} exists but snapgate did not make it for source {}; snapgate will \
                 not use or delete it: rename or remove it",
                K::KIND,
                self.run.namespace,
                object.metadata().name.as_deref().unwrap_or_default(),
                self.run.source
            ),
            true,
        ))
    }

    /// The copy this run made is gone before its mover ran: the run fails.
    fn copy_gone(&self, what: &str) -> Action {
        Action::Report(error(
            "CopyNotFound",
            format!("{what} {} of this run is gone", self.copy_name()),
            false,
        ))
    }

    fn pvc_missing(&self) -> Action {
        Action::Report(error(
            "PvcNotFound",
            format!(
                "source PVC {}/{} not found",
                self.run.namespace, self.names.source_pvc
            ),
            true,
        ))
    }

    fn patch_source(&self, patch: Value) -> Action {
        Action::PatchPvc {
            name: self.names.source_pvc.clone(),
            patch,
        }
    }

    /// A Kubernetes Event about `pvc`, named deterministically per run, reason and (for mover
    /// Jobs) attempt or (for a lease) directive generation, so that a replanned step never
    /// records it twice.
    fn event(
        &self,
        pvc: &PersistentVolumeClaim,
        reason: &str,
        attempt: Option<u64>,
        type_: &str,
        message: String,
    ) -> Action {
        let key = format!(
            "{}.{}.{}{}",
            pvc.metadata.name.as_deref().unwrap_or_default(),
            self.run.run_id,
            reason.to_ascii_lowercase(),
            attempt.map(|a| format!("-{a}")).unwrap_or_default()
        );
        let now = bounds::clamp_to_proto_range(self.seen.now);
        Action::Event(Box::new(Event {
            metadata: ObjectMeta {
                name: Some(event_name(&key)),
                namespace: Some(self.run.namespace.to_owned()),
                labels: Some(names::source_labels(self.run.source)),
                ..Default::default()
            },
            involved_object: ObjectReference {
                api_version: Some("v1".into()),
                kind: Some("PersistentVolumeClaim".into()),
                name: pvc.metadata.name.clone(),
                namespace: Some(self.run.namespace.to_owned()),
                uid: pvc.metadata.uid.clone(),
                resource_version: pvc.metadata.resource_version.clone(),
                ..Default::default()
            },
            reason: Some(reason.to_owned()),
            message: Some(bounds::truncate(
                &bounds::escape_invisible(&message),
                bounds::MAX_MESSAGE_BYTES,
            )),
            type_: Some(type_.to_owned()),
            count: Some(1),
            first_timestamp: Some(Time(to_jiff(now))),
            last_timestamp: Some(Time(to_jiff(now))),
            event_time: Some(MicroTime(to_jiff(now))),
            reporting_component: Some("snapgate-agent".into()),
            reporting_instance: Some("snapgate-agent".into()),
            action: Some(reason.to_owned()),
            source: Some(EventSource {
                component: Some("snapgate-agent".into()),
                host: None,
            }),
            ..Default::default()
        }))
    }
}

/// `key` when it is a valid object name (a DNS-1123 subdomain), else a deterministic label.
fn event_name(key: &str) -> String {
    let valid = key.len() <= 253 && key.split('.').all(names::is_dns_label) && !key.is_empty();
    if valid {
        key.to_owned()
    } else {
        names::dns_label(key)
    }
}

/// Which attempt a mover Job is (its [`ATTEMPT`] annotation; 1 when absent).
pub fn job_attempt(job: &Job) -> u32 {
    job.metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(ATTEMPT))
        .and_then(|v| v.parse().ok())
        .unwrap_or(1)
}

/// When an object was created (the epoch if the API server did not say).
fn created(meta: &ObjectMeta) -> DateTime<Utc> {
    meta.creation_timestamp
        .as_ref()
        .map_or(DateTime::<Utc>::UNIX_EPOCH, |t| from_jiff(t.0))
}

/// When a Job failed: its `Failed` condition's transition time.
fn failed_at(job: &Job) -> Option<DateTime<Utc>> {
    job.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == "Failed" && c.status == "True")
        .and_then(|c| c.last_transition_time.as_ref())
        .map(|t| from_jiff(t.0))
}

fn to_jiff(t: DateTime<Utc>) -> k8s_openapi::jiff::Timestamp {
    k8s_openapi::jiff::Timestamp::new(
        t.timestamp(),
        i32::try_from(t.timestamp_subsec_nanos()).unwrap_or(0),
    )
    .unwrap_or(k8s_openapi::jiff::Timestamp::UNIX_EPOCH)
}

fn from_jiff(t: k8s_openapi::jiff::Timestamp) -> DateTime<Utc> {
    DateTime::from_timestamp(t.as_second(), t.subsec_nanosecond().max(0).unsigned_abs())
        .unwrap_or_default()
}

fn error(reason: &str, message: String, retryable: bool) -> Observation {
    Observation::Error(bounds::agent_error(reason, &message, retryable))
}

/// The report for a mover's outcome, with the log tail the shell read (or why there is none),
/// cut to [`classify::MOVER_LOG_MAX_BYTES`].
pub fn mover_report(outcome: MoverOutcome, logs: String) -> Observation {
    let logs = bounds::cut(logs, classify::MOVER_LOG_MAX_BYTES);
    match outcome {
        MoverOutcome::Succeeded => Observation::MoverFinished(v1::MoverFinished {
            succeeded: true,
            logs,
        }),
        MoverOutcome::Failed { attempt } => {
            Observation::MoverFailed(v1::MoverFailed { attempt, logs })
        }
    }
}

/// The logs of an attempt failed because it was stuck: what kept it, then the tail of the
/// log that could be read (a pod that never started has none), within
/// [`classify::MOVER_LOG_MAX_BYTES`] with `why` first.
pub fn stuck_logs(why: &str, log: &str) -> String {
    let why = bounds::truncate(why, classify::MOVER_LOG_MAX_BYTES);
    let room = classify::MOVER_LOG_MAX_BYTES.saturating_sub(why.len().saturating_add(1));
    let log = bounds::tail(log.trim_end(), room);
    if log.is_empty() {
        why
    } else {
        format!("{why}\n{log}")
    }
}

/// The filtered tail a mover's pod log is read into, as movers.md says for the outcome.
pub fn log_tail(mover: Mover, outcome: MoverOutcome) -> classify::LogTail {
    classify::LogTail::new(mover, matches!(outcome, MoverOutcome::Failed { .. }))
}

/// A short name of an observation, for logs.
pub fn observation_name(o: &Observation) -> &'static str {
    match o {
        Observation::Pvc(_) => "PvcObserved",
        Observation::CopyCompleted(_) => "CopyCompleted",
        Observation::MoverFinished(_) => "MoverFinished",
        Observation::MoverFailed(_) => "MoverFailed",
        Observation::CleanedUp(_) => "CleanedUp",
        Observation::Error(_) => "AgentError",
        Observation::MoverStuck(m) if m.reason.is_empty() => "MoverNotStuck",
        Observation::MoverStuck(_) => "MoverStuck",
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::{
        api::{
            batch::v1::{JobCondition, JobStatus},
            core::v1::PersistentVolumeClaimStatus,
        },
        jiff::Timestamp,
    };
    use pretty_assertions::assert_eq;

    use super::*;
    use crate::resources::VolumeSnapshotStatus;

    fn now() -> DateTime<Utc> {
        DateTime::parse_from_rfc3339("2026-03-04T05:06:07Z")
            .unwrap()
            .with_timezone(&Utc)
    }

    fn directive(phase: DirectivePhase, method: v1::CopyMethod) -> v1::Directive {
        v1::Directive {
            run_id: "run-7".into(),
            source: Some(v1::SourceRef {
                namespace: "app".into(),
                name: "db".into(),
            }),
            spec: Some(v1::SourceSpec {
                source_pvc: "data".into(),
                restic: Some(v1::ReplicationSourceResticSpec {
                    copy_method: method as i32,
                    repository: "repo".into(),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            phase: phase as i32,
            generation: 1,
            waiting_since: Some(timestamp(now())),
            trigger: "first".into(),
            gated: true,
            ..Default::default()
        }
    }

    fn pvc(name: &str, annotations: &[(&str, &str)], run: Option<&str>) -> PersistentVolumeClaim {
        PersistentVolumeClaim {
            metadata: ObjectMeta {
                name: Some(name.into()),
                namespace: Some("app".into()),
                annotations: Some(
                    annotations
                        .iter()
                        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                        .collect(),
                ),
                labels: run.map(|r| names::temporary_labels("db", r)),
                creation_timestamp: Some(Time(Timestamp::UNIX_EPOCH)),
                ..Default::default()
            },
            spec: Some(Default::default()),
            status: Some(PersistentVolumeClaimStatus {
                phase: Some("Bound".into()),
                capacity: Some(
                    [(
                        "storage".to_owned(),
                        k8s_openapi::apimachinery::pkg::api::resource::Quantity("1Gi".into()),
                    )]
                    .into(),
                ),
                ..Default::default()
            }),
        }
    }

    fn seen<'a>(pvc: Option<&'a PersistentVolumeClaim>) -> Observed<'a> {
        Observed {
            pvc,
            snapshot: None,
            copy_pvc: None,
            cache_pvc: None,
            job: None,
            secrets: None,
            privileged: false,
            failed_attempts: 0,
            job_reported: false,
            temporaries: &[],
            lease: Lease::NotNeeded,
            review: Review::Allowed,
            pods: Some(&[]),
            volsync: Some(&[]),
            mover_volume_pvcs: &[],
            mover_account: true,
            mover_pods: MoverPods::Unknown,
            next_attempt_at: None,
            now: now(),
        }
    }

    fn kinds(actions: &[Action]) -> Vec<String> {
        actions
            .iter()
            .map(|a| match a {
                Action::PatchPvc { name, .. } => format!("PatchPvc {name}"),
                Action::PatchJob { name, .. } => format!("PatchJob {name}"),
                Action::CreateSnapshot(s) => {
                    format!("CreateSnapshot {}", s.metadata.name.clone().unwrap())
                }
                Action::CreatePvc(p) => format!("CreatePvc {}", p.metadata.name.clone().unwrap()),
                Action::CreateJob(j) => format!("CreateJob {}", j.metadata.name.clone().unwrap()),
                Action::DeleteSnapshot(n) => format!("DeleteSnapshot {n}"),
                Action::DeletePvc(n) => format!("DeletePvc {n}"),
                Action::DeleteJob(n) => format!("DeleteJob {n}"),
                Action::FailStuckJob { job, retry_at } => format!("FailStuckJob {job} {retry_at}"),
                Action::ReadSecrets(n) => format!("ReadSecrets {}", n.join(",")),
                Action::Event(e) => format!("Event {}", e.reason.clone().unwrap()),
                Action::ReportMover { outcome, .. } => format!("ReportMover {outcome:?}"),
                Action::Report(o) => format!("Report {}", observation_name(o)),
                Action::WakeAt(t) => format!("WakeAt {t}"),
                Action::RequestLease => "RequestLease".to_owned(),
                Action::ReviewAuthor(r) => format!("ReviewAuthor {}", r.user),
                Action::ListPods => "ListPods".to_owned(),
                Action::ListVolSync => "ListVolSync".to_owned(),
                Action::ApplyMoverAccount(a) => format!(
                    "ApplyMoverAccount {}{}",
                    a.service_account.metadata.name.clone().unwrap(),
                    if a.scc.is_some() { " +scc" } else { "" }
                ),
            })
            .collect()
    }

    #[test]
    fn no_phase_but_cleanup_acts_before_the_author_is_reviewed_and_allowed() {
        let author = v1::Author {
            user: "system:serviceaccount:app:ops".into(),
            groups: vec!["system:serviceaccounts".into()],
        };
        let source = pvc("data", &[USE], None);
        let denied = "the source's author may not create jobs.batch";
        let acting = [
            DirectivePhase::Gate,
            DirectivePhase::Wait,
            DirectivePhase::Copy,
            DirectivePhase::Transfer,
        ];
        for phase in acting.into_iter().chain([DirectivePhase::Cleanup]) {
            let mut d = directive(phase, v1::CopyMethod::Snapshot);
            d.author = Some(author.clone());
            let mut s = seen(Some(&source));
            let acts = phase != DirectivePhase::Cleanup;
            let trusting = PlanConfig {
                source_authors: SourceAuthors::Trust,
                ..PlanConfig::default()
            };
            let cases: [(Review<'_>, &PlanConfig, &[&str]); 5] = [
                (
                    Review::Pending,
                    &PlanConfig::default(),
                    &["ReviewAuthor system:serviceaccount:app:ops"],
                ),
                (
                    Review::Denied(denied),
                    &PlanConfig::default(),
                    &["Event AuthorForbidden", "Report AgentError"],
                ),
                (Review::Allowed, &PlanConfig::default(), &[]),
                // An agent that trusts the scheduler asks nothing and refuses nothing.
                (Review::Pending, &trusting, &[]),
                (Review::Denied(denied), &trusting, &[]),
            ];
            for (review, config, first) in cases {
                s.review = review;
                let a = kinds(&plan(&d, &s, config).unwrap());
                if acts && !first.is_empty() {
                    assert_eq!(a, first, "{phase:?} {review:?}");
                } else {
                    // The phase's own steps: never a review, never the run's failure.
                    assert!(
                        !a.iter()
                            .any(|k| k.starts_with("ReviewAuthor") || k.contains("Author")),
                        "{phase:?} {review:?}: {a:?}"
                    );
                }
            }
            // A denial is reported as the run's failure, with the agent's text.
            s.review = Review::Denied(denied);
            if acts {
                let a = plan(&d, &s, &PlanConfig::default()).unwrap();
                let Some(Action::Report(Observation::Error(e))) = a.last() else {
                    panic!("{a:?}");
                };
                assert_eq!(
                    (e.reason.as_str(), e.message.as_str(), e.retryable),
                    ("AuthorForbidden", denied, false)
                );
            }
            // No author: the run fails rather than act for no one.
            d.author = None;
            s.review = Review::Pending;
            let a = plan(&d, &s, &PlanConfig::default()).unwrap();
            if acts {
                assert_eq!(
                    kinds(&a),
                    ["Event NoAuthor", "Report AgentError"],
                    "{phase:?}"
                );
            } else {
                assert!(!kinds(&a).iter().any(|k| k.contains("Author")), "{a:?}");
            }
        }
    }

    #[test]
    fn a_named_mover_service_account_is_part_of_the_review() {
        let mut d = directive(DirectivePhase::Transfer, v1::CopyMethod::Snapshot);
        d.author = Some(v1::Author {
            user: "alice".into(),
            groups: vec![],
        });
        if let Some(r) = d.spec.as_mut().and_then(|s| s.restic.as_mut()) {
            r.mover_service_account = Some("backup-mover".into());
        }
        let mut s = seen(None);
        s.review = Review::Pending;
        let a = plan(&d, &s, &PlanConfig::default()).unwrap();
        let [Action::ReviewAuthor(r)] = a.as_slice() else {
            panic!("{a:?}");
        };
        assert_eq!(r.checks, review::checks(Some("backup-mover")));
        // Without the PVC there is nothing to attach an Event to; the failure is reported.
        s.review = Review::Denied("no");
        assert_eq!(
            kinds(&plan(&d, &s, &PlanConfig::default()).unwrap()),
            ["Report AgentError"]
        );
    }

    const USE: (&str, &str) = (annotations::USE_COPY_TRIGGER, "");

    #[test]
    fn a_gated_run_asks_nobody_to_quiesce_while_volsync_answers_the_same_trigger() {
        use crate::volsync::ReplicationSourceSeen;
        let d = directive(DirectivePhase::Wait, v1::CopyMethod::Snapshot);
        let fresh = pvc("data", &[USE], None);
        let mut s = seen(Some(&fresh));
        s.volsync = None;
        assert_eq!(
            kinds(&plan(&d, &s, &PlanConfig::default()).unwrap()),
            ["ListVolSync"]
        );
        let rs = vec![ReplicationSourceSeen {
            name: "db-backup".into(),
            source_pvc: "data".into(),
            paused: false,
        }];
        s.volsync = Some(&rs);
        let a = plan(&d, &s, &PlanConfig::default()).unwrap();
        let [Action::Report(Observation::Error(e))] = a.as_slice() else {
            panic!("{:?}", kinds(&a))
        };
        assert_eq!(e.reason, "VolSyncConflict");
        assert!(e.retryable && e.message.contains("db-backup"), "{e:?}");
        // Paused, it no longer answers: the PVC is marked.
        let paused = [ReplicationSourceSeen {
            paused: true,
            ..rs[0].clone()
        }];
        let s2 = Observed {
            volsync: Some(&paused),
            ..s
        };
        assert_eq!(
            kinds(&plan(&d, &s2, &PlanConfig::default()).unwrap()),
            ["PatchPvc data", "Event SrcPVCWaitingForCopyTrigger"]
        );
    }

    #[test]
    fn waiting_marks_the_pvc_once_then_only_reports_it() {
        let d = directive(DirectivePhase::Wait, v1::CopyMethod::Snapshot);
        let fresh = pvc("data", &[USE], None);
        let a = plan(&d, &seen(Some(&fresh)), &PlanConfig::default()).unwrap();
        assert_eq!(
            kinds(&a),
            ["PatchPvc data", "Event SrcPVCWaitingForCopyTrigger"]
        );
        let Action::PatchPvc { patch, .. } = &a[0] else {
            unreachable!()
        };
        assert_eq!(
            patch,
            &serde_json::json!({"metadata": {"annotations": {
                annotations::LATEST_COPY_STATUS: "WaitingForTrigger",
                annotations::LATEST_COPY_TRIGGER_WAITING_SINCE: "2026-03-04T05:06:07Z",
            }}})
        );
        let marked = pvc(
            "data",
            &[
                USE,
                (annotations::LATEST_COPY_STATUS, "WaitingForTrigger"),
                (
                    annotations::LATEST_COPY_TRIGGER_WAITING_SINCE,
                    "2026-03-04T05:06:07Z",
                ),
            ],
            None,
        );
        let a = plan(&d, &seen(Some(&marked)), &PlanConfig::default()).unwrap();
        assert_eq!(kinds(&a), ["Report PvcObserved"]);
    }

    #[test]
    fn a_gated_copy_is_marked_in_progress_before_the_copy_is_made() {
        let d = directive(DirectivePhase::Copy, v1::CopyMethod::Snapshot);
        let waiting = pvc(
            "data",
            &[USE, (annotations::LATEST_COPY_STATUS, "WaitingForTrigger")],
            None,
        );
        let a = plan(&d, &seen(Some(&waiting)), &PlanConfig::default()).unwrap();
        assert_eq!(
            kinds(&a),
            [
                "PatchPvc data",
                "Event SrcPVCCopyTriggerReceived",
                "CreateSnapshot volsync-db-src"
            ]
        );
    }

    #[test]
    fn a_copy_left_by_an_earlier_run_is_deleted_not_taken_for_this_runs_copy() {
        let d = directive(DirectivePhase::Copy, v1::CopyMethod::Clone);
        let source = pvc(
            "data",
            &[USE, (annotations::LATEST_COPY_STATUS, "InProgress")],
            None,
        );
        let stale = pvc("volsync-db-src", &[], Some("run-6"));
        let mut s = seen(Some(&source));
        s.copy_pvc = Some(&stale);
        let a = plan(&d, &s, &PlanConfig::default()).unwrap();
        assert_eq!(kinds(&a), ["DeletePvc volsync-db-src"]);
    }

    #[test]
    fn a_ready_copy_is_marked_completed_with_the_bound_trigger_then_reported() {
        let d = directive(DirectivePhase::Copy, v1::CopyMethod::Snapshot);
        let source = pvc(
            "data",
            &[USE, (annotations::LATEST_COPY_STATUS, "InProgress")],
            None,
        );
        let snap = VolumeSnapshot {
            metadata: ObjectMeta {
                name: Some("volsync-db-src".into()),
                labels: Some(names::temporary_labels("db", "run-7")),
                annotations: Some(this_release()),
                ..Default::default()
            },
            spec: Default::default(),
            status: Some(VolumeSnapshotStatus {
                bound_volume_snapshot_content_name: Some("content".into()),
                ready_to_use: None,
                creation_time: Some(Time(to_jiff(now()))),
                ..Default::default()
            }),
        };
        let mut s = seen(Some(&source));
        s.snapshot = Some(&snap);
        let a = plan(&d, &s, &PlanConfig::default()).unwrap();
        assert_eq!(
            kinds(&a),
            ["PatchPvc data", "Event SrcPVCCopyUsingCopyTriggerCompleted"]
        );
        let Action::PatchPvc { patch, .. } = &a[0] else {
            unreachable!()
        };
        assert_eq!(
            patch["metadata"]["annotations"][annotations::LATEST_COPY_TRIGGER],
            "first"
        );
        let completed = pvc(
            "data",
            &[
                USE,
                (annotations::LATEST_COPY_STATUS, "Completed"),
                (annotations::LATEST_COPY_TRIGGER, "first"),
            ],
            None,
        );
        s.pvc = Some(&completed);
        let a = plan(&d, &s, &PlanConfig::default()).unwrap();
        assert_eq!(
            a,
            [Action::Report(Observation::CopyCompleted(
                v1::CopyCompleted {
                    copy_name: "volsync-db-src".into(),
                    time: Some(timestamp(now())),
                }
            ))]
        );
    }

    fn failed_job(at: DateTime<Utc>) -> Job {
        Job {
            metadata: ObjectMeta {
                name: Some("volsync-src-db".into()),
                uid: Some("u1".into()),
                labels: Some(names::temporary_labels("db", "run-7")),
                annotations: Some([(ATTEMPT.to_owned(), "2".to_owned())].into()),
                ..Default::default()
            },
            spec: Some(Default::default()),
            status: Some(JobStatus {
                failed: Some(9),
                conditions: Some(vec![JobCondition {
                    type_: "Failed".into(),
                    status: "True".into(),
                    last_transition_time: Some(Time(to_jiff(at))),
                    ..Default::default()
                }]),
                ..Default::default()
            }),
        }
    }

    #[test]
    fn a_failed_job_is_reported_and_replaced_only_after_its_doubled_back_off() {
        let d = directive(DirectivePhase::Transfer, v1::CopyMethod::Direct);
        let source = pvc("data", &[], None);
        let config = PlanConfig::default(); // 10 s, doubled per attempt: 20 s for attempt 2
        let job = failed_job(now() - chrono::Duration::seconds(25));
        let mut s = seen(Some(&source));
        s.job = Some(&job);
        // Not reported yet: report it first, even though the back-off is over.
        let a = plan(&d, &s, &config).unwrap();
        assert_eq!(
            kinds(&a),
            [
                "Event TransferFailed",
                "ReportMover Failed { attempt: 2 }",
                "WakeAt 2026-03-04 05:06:07 UTC"
            ]
        );
        // Reported, within the back-off: wait for its end.
        s.job_reported = true;
        let job = failed_job(now() - chrono::Duration::seconds(5));
        s.job = Some(&job);
        let a = plan(&d, &s, &config).unwrap();
        assert_eq!(
            kinds(&a),
            ["Event TransferFailed", "WakeAt 2026-03-04 05:06:22 UTC"]
        );
        // Reported, back-off over: replace it.
        let job = failed_job(now() - chrono::Duration::seconds(20));
        s.job = Some(&job);
        let a = plan(&d, &s, &config).unwrap();
        assert_eq!(a.last(), Some(&Action::DeleteJob("volsync-src-db".into())));
    }

    fn running_job(parallelism: i32) -> Job {
        let mut job = failed_job(now());
        job.spec = Some(k8s_openapi::api::batch::v1::JobSpec {
            parallelism: Some(parallelism),
            ..Default::default()
        });
        job.status = Some(JobStatus {
            active: Some(1),
            ..Default::default()
        });
        job
    }

    fn image_pull(since: Option<DateTime<Utc>>) -> Trouble {
        Trouble {
            reason: stuck::StuckReason::ImagePullBackOff,
            message: "Back-off pulling image \"quay.io/backube/volsync:0.14.0\"".into(),
            pod: Some("volsync-src-db-x7k2p".into()),
            key: "pod/uid-x7k2p".into(),
            since,
        }
    }

    #[test]
    fn a_stuck_pod_is_reported_at_once_and_its_attempt_fails_once_stuck_past_the_limit() {
        let d = directive(DirectivePhase::Transfer, v1::CopyMethod::Direct);
        let source = pvc("data", &[], None);
        let config = PlanConfig::default(); // stuck after 10 min; back-off 20 s for attempt 2
        let job = running_job(1);
        let mut s = seen(Some(&source));
        s.job = Some(&job);
        let secs = chrono::Duration::seconds;
        // Pods or Events not listed yet: nothing is said either way.
        assert_eq!(kinds(&plan(&d, &s, &config).unwrap()), Vec::<String>::new());
        // Nothing stuck: said so (an earlier report of the attempt no longer stands).
        s.mover_pods = MoverPods::Known(None);
        assert_eq!(
            plan(&d, &s, &config).unwrap(),
            [Action::Report(Observation::MoverStuck(v1::MoverStuck {
                job: "volsync-src-db".into(),
                attempt: 2,
                ..Default::default()
            }))]
        );
        // Stuck for a minute by the cluster's record (seen by this agent for 30 s): reported
        // with its deadline, and the run wakes then.
        let pulling = image_pull(Some(now() - secs(60)));
        s.mover_pods = MoverPods::Known(Some(Stuck {
            trouble: &pulling,
            first_seen: now() - secs(30),
        }));
        assert_eq!(
            plan(&d, &s, &config).unwrap(),
            [
                Action::Report(Observation::MoverStuck(v1::MoverStuck {
                    reason: "ImagePullBackOff".into(),
                    message: "Back-off pulling image \"quay.io/backube/volsync:0.14.0\"".into(),
                    pod: "volsync-src-db-x7k2p".into(),
                    job: "volsync-src-db".into(),
                    attempt: 2,
                    since: Some(timestamp(now() - secs(60))),
                    deadline: Some(timestamp(now() + secs(540))),
                })),
                Action::WakeAt(now() + secs(540)),
            ]
        );
        // Ten minutes: the failure is reported with what kept the attempt, then...
        let over = image_pull(Some(now() - secs(600)));
        s.mover_pods = MoverPods::Known(Some(Stuck {
            trouble: &over,
            first_seen: now() - secs(1),
        }));
        let a = plan(&d, &s, &config).unwrap();
        assert_eq!(
            kinds(&a),
            [
                "Report MoverStuck",
                "ReportMover Failed { attempt: 2 }",
                "WakeAt 2026-03-04 05:06:07 UTC"
            ]
        );
        let Action::ReportMover {
            stuck: Some(why), ..
        } = &a[1]
        else {
            panic!("{a:?}")
        };
        assert_eq!(
            why,
            "ImagePullBackOff: pod volsync-src-db-x7k2p: Back-off pulling image \
             \"quay.io/backube/volsync:0.14.0\"; stuck since 2026-03-04T04:56:07Z, longer than \
             10m0s: the attempt failed"
        );
        // ...once reported, the Job goes, and no new one before the back-off (20 s).
        s.job_reported = true;
        let a = plan(&d, &s, &config).unwrap();
        assert_eq!(
            kinds(&a),
            [
                "Event TransferFailed",
                "FailStuckJob volsync-src-db 2026-03-04 05:06:27 UTC"
            ]
        );
        // A paused source's Job runs no pod: scaled to zero, and then nothing is stuck.
        let mut paused = d.clone();
        paused.spec.as_mut().unwrap().paused = true;
        assert_eq!(
            kinds(&plan(&paused, &s, &config).unwrap()),
            ["PatchJob volsync-src-db"]
        );
        let zero = running_job(0);
        s.job = Some(&zero);
        assert_eq!(
            kinds(&plan(&paused, &s, &config).unwrap()),
            Vec::<String>::new()
        );
    }

    #[test]
    fn after_a_stuck_attempt_no_job_is_made_before_its_back_off_is_over() {
        let d = directive(DirectivePhase::Transfer, v1::CopyMethod::Direct);
        let source = pvc("data", &[], None);
        let mut s = seen(Some(&source));
        s.failed_attempts = 2;
        s.next_attempt_at = Some(now() + chrono::Duration::seconds(20));
        assert_eq!(
            kinds(&plan(&d, &s, &PlanConfig::default()).unwrap()),
            ["WakeAt 2026-03-04 05:06:27 UTC"]
        );
        s.next_attempt_at = Some(now());
        assert_eq!(
            kinds(&plan(&d, &s, &PlanConfig::default()).unwrap()),
            ["CreatePvc volsync-src-db-cache"],
            "the next attempt is prepared as any other"
        );
    }

    #[test]
    fn a_stuck_attempts_logs_begin_with_why_and_keep_the_end_of_the_log_within_the_bound() {
        assert_eq!(stuck_logs("why", ""), "why");
        assert_eq!(stuck_logs("why", "a\nb\n"), "why\na\nb");
        let long = stuck_logs(&"w".repeat(300), &"l".repeat(5000));
        assert_eq!(long.len(), classify::MOVER_LOG_MAX_BYTES);
        assert!(long.starts_with(&"w".repeat(300)) && long.ends_with('l'));
        let why = stuck_logs(&"é".repeat(5000), "log");
        assert!(why.len() <= classify::MOVER_LOG_MAX_BYTES && why.ends_with(bounds::TRUNCATED));
    }

    #[test]
    fn cleanup_deletes_what_the_source_made_and_reports_only_when_nothing_is_left() {
        let mut d = directive(DirectivePhase::Cleanup, v1::CopyMethod::Snapshot);
        d.clear_waiting = true;
        let source = pvc(
            "data",
            &[
                USE,
                (annotations::LATEST_COPY_STATUS, "WaitingForTrigger"),
                (annotations::LATEST_COPY_TRIGGER_WAITING_SINCE, "x"),
            ],
            None,
        );
        let temporaries = [
            Temporary {
                kind: TemporaryKind::Pvc,
                name: "volsync-db-src".into(),
                terminating: false,
            },
            Temporary {
                kind: TemporaryKind::Job,
                name: "volsync-rclone-src-db".into(),
                terminating: false,
            },
            Temporary {
                kind: TemporaryKind::Snapshot,
                name: "volsync-db-src".into(),
                terminating: true,
            },
        ];
        let mut s = seen(Some(&source));
        s.temporaries = &temporaries;
        let a = plan(&d, &s, &PlanConfig::default()).unwrap();
        assert_eq!(
            kinds(&a),
            [
                "PatchPvc data",
                "DeletePvc volsync-db-src",
                "DeleteJob volsync-rclone-src-db"
            ],
            "an earlier mover's Job too; a terminating snapshot is waited for"
        );
        s.temporaries = &temporaries[2..];
        let clean = pvc("data", &[USE], None);
        s.pvc = Some(&clean);
        assert!(plan(&d, &s, &PlanConfig::default()).unwrap().is_empty());
        s.temporaries = &[];
        let a = plan(&d, &s, &PlanConfig::default()).unwrap();
        assert_eq!(kinds(&a), ["Report CleanedUp"]);
    }

    fn patch_of(a: &Action) -> &Value {
        match a {
            Action::PatchPvc { patch, .. } => patch,
            other => panic!("not a PVC patch: {other:?}"),
        }
    }

    #[test]
    fn a_paused_sources_gate_removes_the_waiting_annotations_before_it_reports_the_pvc() {
        let waiting = pvc(
            "data",
            &[
                USE,
                (annotations::COPY_TRIGGER, "old"),
                (annotations::LATEST_COPY_TRIGGER, "old"),
                (annotations::LATEST_COPY_STATUS, "WaitingForTrigger"),
                (
                    annotations::LATEST_COPY_TRIGGER_WAITING_SINCE,
                    "2026-03-04T05:00:00Z",
                ),
            ],
            None,
        );
        let cleared = pvc(
            "data",
            &[
                USE,
                (annotations::COPY_TRIGGER, "old"),
                (annotations::LATEST_COPY_TRIGGER, "old"),
            ],
            None,
        );
        let completed = pvc(
            "data",
            &[USE, (annotations::LATEST_COPY_STATUS, "Completed")],
            None,
        );
        let cases: [(bool, Option<&PersistentVolumeClaim>, &[&str]); 6] = [
            // Paused while waiting: the annotations go first, in one patch.
            (true, Some(&waiting), &["PatchPvc data"]),
            // Then the cleared PVC is reported, as on any GATE.
            (true, Some(&cleared), &["Report PvcObserved"]),
            // Nothing snapgate-owned to clear: a Completed copy is left alone.
            (true, Some(&completed), &["Report PvcObserved"]),
            (true, None, &["Report PvcObserved"]),
            // Resumed (or never paused): the PVC is reported as it is.
            (false, Some(&waiting), &["Report PvcObserved"]),
            (false, Some(&cleared), &["Report PvcObserved"]),
        ];
        for (clear, source, want) in cases {
            let mut d = directive(DirectivePhase::Gate, v1::CopyMethod::Snapshot);
            d.clear_waiting = clear;
            let a = plan(&d, &seen(source), &PlanConfig::default()).unwrap();
            assert_eq!(kinds(&a), want, "clear_waiting {clear}, {source:?}");
        }
        let mut d = directive(DirectivePhase::Gate, v1::CopyMethod::Snapshot);
        d.clear_waiting = true;
        let a = plan(&d, &seen(Some(&waiting)), &PlanConfig::default()).unwrap();
        assert_eq!(
            patch_of(&a[0]),
            &serde_json::json!({"metadata": {"annotations": {
                annotations::LATEST_COPY_STATUS: null,
                annotations::LATEST_COPY_TRIGGER_WAITING_SINCE: null,
            }}})
        );
        let a = plan(&d, &seen(Some(&cleared)), &PlanConfig::default()).unwrap();
        assert_eq!(
            a,
            [Action::Report(Observation::Pvc(v1::PvcObserved {
                exists: true,
                use_copy_trigger: true,
                copy_trigger: "old".into(),
                latest_copy_trigger: "old".into(),
                ..Default::default()
            }))]
        );
    }

    #[test]
    fn cleanup_records_a_consumed_trigger_in_one_patch_before_anything_else() {
        let mut d = directive(DirectivePhase::Cleanup, v1::CopyMethod::Snapshot);
        d.consumed_trigger = "first".into();
        let stale = pvc(
            "data",
            &[
                USE,
                (annotations::COPY_TRIGGER, "first"),
                (annotations::LATEST_COPY_STATUS, "InProgress"),
            ],
            None,
        );
        let consumed = pvc(
            "data",
            &[
                USE,
                (annotations::COPY_TRIGGER, "first"),
                (annotations::LATEST_COPY_TRIGGER, "first"),
            ],
            None,
        );
        // A later run's InProgress, released by its own value while this cleanup lasts.
        let later = pvc(
            "data",
            &[
                USE,
                (annotations::COPY_TRIGGER, "second"),
                (annotations::LATEST_COPY_TRIGGER, "first"),
                (annotations::LATEST_COPY_STATUS, "InProgress"),
            ],
            None,
        );
        let snapshot = [Temporary {
            kind: TemporaryKind::Snapshot,
            name: "volsync-db-src".into(),
            terminating: false,
        }];
        let cases: [(Option<&PersistentVolumeClaim>, &[Temporary], &[&str]); 6] = [
            (
                Some(&stale),
                &snapshot,
                &["PatchPvc data", "DeleteSnapshot volsync-db-src"],
            ),
            (Some(&stale), &[], &["PatchPvc data"]),
            (
                Some(&consumed),
                &snapshot,
                &["DeleteSnapshot volsync-db-src"],
            ),
            (Some(&consumed), &[], &["Report CleanedUp"]),
            (Some(&later), &[], &["Report CleanedUp"]),
            // The PVC is gone: nothing to record.
            (None, &snapshot, &["DeleteSnapshot volsync-db-src"]),
        ];
        for (source, temporaries, want) in cases {
            let mut s = seen(source);
            s.temporaries = temporaries;
            let a = plan(&d, &s, &PlanConfig::default()).unwrap();
            assert_eq!(kinds(&a), want, "{source:?} {temporaries:?}");
        }
        let mut s = seen(Some(&stale));
        s.temporaries = &snapshot;
        let a = plan(&d, &s, &PlanConfig::default()).unwrap();
        assert_eq!(
            patch_of(&a[0]),
            &serde_json::json!({"metadata": {"annotations": {
                annotations::LATEST_COPY_TRIGGER: "first",
                annotations::LATEST_COPY_STATUS: null,
            }}}),
            "the value is spent and the stale InProgress is gone, in one patch"
        );
    }

    fn snapshot_status(
        creation: Option<DateTime<Utc>>,
        ready: Option<bool>,
        error: Option<&str>,
    ) -> VolumeSnapshot {
        VolumeSnapshot {
            metadata: ObjectMeta {
                name: Some("volsync-db-src".into()),
                labels: Some(names::temporary_labels("db", "run-7")),
                annotations: Some(this_release()),
                creation_timestamp: Some(Time(Timestamp::UNIX_EPOCH)),
                ..Default::default()
            },
            spec: Default::default(),
            status: Some(VolumeSnapshotStatus {
                bound_volume_snapshot_content_name: Some("content".into()),
                creation_time: creation.map(|t| Time(to_jiff(t))),
                ready_to_use: ready,
                error: error.map(|m| crate::resources::VolumeSnapshotError {
                    message: Some(m.into()),
                    time: None,
                }),
                ..Default::default()
            }),
        }
    }

    #[test]
    fn a_snapshot_is_the_copy_point_at_its_cut_and_is_restored_only_once_ready() {
        let cut_at = now() - chrono::Duration::seconds(90);
        let in_progress = pvc(
            "data",
            &[
                USE,
                (annotations::COPY_TRIGGER, "first"),
                (annotations::LATEST_COPY_STATUS, "InProgress"),
            ],
            None,
        );
        let completed = pvc(
            "data",
            &[
                USE,
                (annotations::COPY_TRIGGER, "first"),
                (annotations::LATEST_COPY_TRIGGER, "first"),
                (annotations::LATEST_COPY_STATUS, "Completed"),
            ],
            None,
        );
        let not_cut = snapshot_status(None, Some(false), None);
        let cut = snapshot_status(Some(cut_at), Some(false), None);
        let ready = snapshot_status(Some(cut_at), Some(true), None);
        let upload_failed = snapshot_status(Some(cut_at), Some(false), Some("upload failed"));
        let copy = directive(DirectivePhase::Copy, v1::CopyMethod::Snapshot);
        let transfer = directive(DirectivePhase::Transfer, v1::CopyMethod::Snapshot);
        let cases: [(
            &v1::Directive,
            &PersistentVolumeClaim,
            &VolumeSnapshot,
            &[&str],
        ); 9] = [
            // COPY: not cut yet, the application is still held.
            (&copy, &in_progress, &not_cut, &[]),
            // Cut, upload still running: Completed now, then reported.
            (
                &copy,
                &in_progress,
                &cut,
                &["PatchPvc data", "Event SrcPVCCopyUsingCopyTriggerCompleted"],
            ),
            (&copy, &completed, &cut, &["Report CopyCompleted"]),
            (&copy, &completed, &ready, &["Report CopyCompleted"]),
            (&copy, &in_progress, &upload_failed, &["Report AgentError"]),
            // TRANSFER: nothing is restored from a snapshot still uploading.
            (&transfer, &completed, &cut, &[]),
            (&transfer, &completed, &not_cut, &[]),
            (&transfer, &completed, &ready, &["CreatePvc volsync-db-src"]),
            (
                &transfer,
                &completed,
                &upload_failed,
                &["Report AgentError"],
            ),
        ];
        for (d, source, snap, want) in cases {
            let mut s = seen(Some(source));
            s.snapshot = Some(snap);
            let a = plan(d, &s, &PlanConfig::default()).unwrap();
            assert_eq!(
                kinds(&a),
                want,
                "{:?} {:?}",
                DirectivePhase::try_from(d.phase),
                snap.status
            );
        }
        let mut s = seen(Some(&in_progress));
        s.snapshot = Some(&cut);
        let a = plan(&copy, &s, &PlanConfig::default()).unwrap();
        assert_eq!(
            patch_of(&a[0]),
            &serde_json::json!({"metadata": {"annotations": {
                annotations::LATEST_COPY_STATUS: "Completed",
                annotations::LATEST_COPY_TRIGGER: "first",
            }}})
        );
        s.pvc = Some(&completed);
        let a = plan(&copy, &s, &PlanConfig::default()).unwrap();
        assert_eq!(
            a,
            [Action::Report(Observation::CopyCompleted(
                v1::CopyCompleted {
                    copy_name: "volsync-db-src".into(),
                    time: Some(timestamp(cut_at)),
                }
            ))],
            "the copy point is the cut's time"
        );
        s.snapshot = Some(&upload_failed);
        s.pvc = Some(&completed);
        let a = plan(&transfer, &s, &PlanConfig::default()).unwrap();
        let e = only_error(&a);
        assert_eq!(
            (e.reason.as_str(), e.retryable, e.message.as_str()),
            (
                "SnapshotFailed",
                true,
                "VolumeSnapshot volsync-db-src: upload failed"
            )
        );
    }

    #[test]
    fn a_pvc_of_the_copys_name_that_snapgate_did_not_make_is_never_used_or_deleted() {
        let d = directive(DirectivePhase::Copy, v1::CopyMethod::Clone);
        let source = pvc(
            "data",
            &[USE, (annotations::LATEST_COPY_STATUS, "InProgress")],
            None,
        );
        let users = pvc("volsync-db-src", &[], None);
        let mut s = seen(Some(&source));
        s.copy_pvc = Some(&users);
        let a = plan(&d, &s, &PlanConfig::default()).unwrap();
        assert_eq!(kinds(&a), ["Report AgentError"]);
        let Action::Report(Observation::Error(e)) = &a[0] else {
            unreachable!()
        };
        assert_eq!(e.reason, "NameTaken");
    }

    #[test]
    fn copy_trigger_is_written_with_the_first_in_progress_only() {
        let mut d = directive(DirectivePhase::Copy, v1::CopyMethod::Snapshot);
        d.write_copy_trigger = true;
        let waiting = pvc(
            "data",
            &[USE, (annotations::LATEST_COPY_STATUS, "WaitingForTrigger")],
            None,
        );
        let a = plan(&d, &seen(Some(&waiting)), &PlanConfig::default()).unwrap();
        let Action::PatchPvc { patch, .. } = &a[0] else {
            unreachable!()
        };
        assert_eq!(
            patch["metadata"]["annotations"][annotations::COPY_TRIGGER],
            "first"
        );
        // The user writes the next value ahead of time while the copy is being made.
        let ahead = pvc(
            "data",
            &[
                USE,
                (annotations::LATEST_COPY_STATUS, "InProgress"),
                (annotations::COPY_TRIGGER, "third"),
            ],
            None,
        );
        let snap = VolumeSnapshot {
            metadata: ObjectMeta {
                name: Some("volsync-db-src".into()),
                labels: Some(names::temporary_labels("db", "run-7")),
                annotations: Some(this_release()),
                ..Default::default()
            },
            spec: Default::default(),
            status: None,
        };
        let mut s = seen(Some(&ahead));
        s.snapshot = Some(&snap);
        assert!(
            plan(&d, &s, &PlanConfig::default()).unwrap().is_empty(),
            "the user's value is left alone"
        );
    }

    #[test]
    fn a_missing_secret_is_reported_and_no_job_is_made() {
        let d = directive(DirectivePhase::Transfer, v1::CopyMethod::Direct);
        let source = pvc("data", &[], None);
        let cache = pvc("volsync-src-db-cache", &[], None);
        let secrets = BTreeMap::new();
        let mut s = seen(Some(&source));
        s.cache_pvc = Some(&cache);
        assert_eq!(
            kinds(&plan(&d, &s, &PlanConfig::default()).unwrap()),
            ["ReadSecrets repo"]
        );
        s.secrets = Some(&secrets);
        let a = plan(&d, &s, &PlanConfig::default()).unwrap();
        assert_eq!(kinds(&a), ["Report AgentError"]);
    }

    #[test]
    fn the_sources_own_mover_account_is_applied_once_per_run_before_its_job() {
        let d = directive(DirectivePhase::Transfer, v1::CopyMethod::Direct);
        let source = pvc("data", &[], None);
        let cache = pvc("volsync-src-db-cache", &[], None);
        let secrets = restic_secrets();
        let mut s = seen(Some(&source));
        s.cache_pvc = Some(&cache);
        s.secrets = Some(&secrets);
        s.mover_account = false;
        let openshift = PlanConfig {
            mover_pull_secrets: vec!["regcred".into()],
            mover_scc: Some("snapgate-privileged-mover".into()),
            ..PlanConfig::default()
        };
        // restic, unprivileged: the account, no SCC grant.
        let a = plan(&d, &s, &openshift).unwrap();
        assert_eq!(kinds(&a), ["ApplyMoverAccount volsync-src-db"]);
        let Action::ApplyMoverAccount(account) = &a[0] else {
            unreachable!()
        };
        assert_eq!(
            account.service_account.image_pull_secrets.as_ref().unwrap()[0].name,
            "regcred"
        );
        // In a namespace that allows privileged movers, the grant of the SCC comes with it.
        s.privileged = true;
        assert_eq!(
            kinds(&plan(&d, &s, &openshift).unwrap()),
            ["ApplyMoverAccount volsync-src-db +scc"]
        );
        // Without an SCC configured there is none to grant.
        assert_eq!(
            kinds(&plan(&d, &s, &PlanConfig::default()).unwrap()),
            ["ApplyMoverAccount volsync-src-db"]
        );
        // Once applied, the Job runs as it, without a token.
        s.mover_account = true;
        let a = plan(&d, &s, &openshift).unwrap();
        let Some(Action::CreateJob(job)) = a.first() else {
            panic!("{:?}", kinds(&a))
        };
        let pod = job.spec.as_ref().unwrap().template.spec.as_ref().unwrap();
        assert_eq!(pod.service_account_name.as_deref(), Some("volsync-src-db"));
        assert_eq!(pod.automount_service_account_token, Some(false));
        // A source that names its own account gets none made.
        let mut named = d.clone();
        if let Some(r) = named.spec.as_mut().and_then(|s| s.restic.as_mut()) {
            r.mover_service_account = Some("backup-mover".into());
        }
        s.mover_account = false;
        let a = plan(&named, &s, &openshift).unwrap();
        let Some(Action::CreateJob(job)) = a.first() else {
            panic!("{:?}", kinds(&a))
        };
        let pod = job.spec.as_ref().unwrap().template.spec.as_ref().unwrap();
        assert_eq!(pod.service_account_name.as_deref(), Some("backup-mover"));
    }

    #[test]
    fn rsync_over_ssh_always_gets_the_scc_grant() {
        let mut d = directive(DirectivePhase::Transfer, v1::CopyMethod::Direct);
        if let Some(spec) = d.spec.as_mut() {
            spec.restic = None;
            spec.rsync = Some(v1::ReplicationSourceRsyncSpec {
                copy_method: v1::CopyMethod::Direct as i32,
                ssh_keys: "keys".into(),
                address: "backup.example.com".into(),
                ..Default::default()
            });
        }
        let source = pvc("data", &[], None);
        let secrets = BTreeMap::from([(
            "keys".to_owned(),
            BTreeSet::from([
                "source".into(),
                "source.pub".into(),
                "destination.pub".into(),
            ]),
        )]);
        let mut s = seen(Some(&source));
        s.secrets = Some(&secrets);
        s.mover_account = false;
        let openshift = PlanConfig {
            mover_scc: Some("snapgate-privileged-mover".into()),
            ..PlanConfig::default()
        };
        assert_eq!(
            kinds(&plan(&d, &s, &openshift).unwrap()),
            ["ApplyMoverAccount volsync-src-db +scc"]
        );
    }

    #[test]
    fn a_direct_mover_reads_the_pods_first_and_runs_where_the_application_has_the_volume() {
        use k8s_openapi::api::core::v1::{
            PersistentVolumeClaimVolumeSource, PodSpec, PodStatus, Volume,
        };
        let d = directive(DirectivePhase::Transfer, v1::CopyMethod::Direct);
        let source = pvc("data", &[], None);
        let cache = pvc("volsync-src-db-cache", &[], None);
        let secrets = restic_secrets();
        let app = Pod {
            metadata: ObjectMeta {
                name: Some("db-0".into()),
                namespace: Some("app".into()),
                ..Default::default()
            },
            spec: Some(PodSpec {
                node_name: Some("node-a".into()),
                volumes: Some(vec![Volume {
                    name: "data".into(),
                    persistent_volume_claim: Some(PersistentVolumeClaimVolumeSource {
                        claim_name: "data".into(),
                        read_only: None,
                    }),
                    ..Default::default()
                }]),
                ..Default::default()
            }),
            status: Some(PodStatus {
                phase: Some("Running".into()),
                ..Default::default()
            }),
        };
        let mut s = seen(Some(&source));
        s.cache_pvc = Some(&cache);
        s.secrets = Some(&secrets);
        s.pods = None;
        assert_eq!(
            kinds(&plan(&d, &s, &PlanConfig::default()).unwrap()),
            ["ListPods"]
        );
        let pods = [app];
        s.pods = Some(&pods);
        let a = plan(&d, &s, &PlanConfig::default()).unwrap();
        let Some(Action::CreateJob(job)) = a.first() else {
            panic!("{:?}", kinds(&a))
        };
        let affinity = serde_json::to_value(
            &job.spec
                .as_ref()
                .unwrap()
                .template
                .spec
                .as_ref()
                .unwrap()
                .affinity,
        )
        .unwrap();
        assert_eq!(
            affinity["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"]
                [0]["matchFields"][0],
            serde_json::json!({"key": "metadata.name", "operator": "In", "values": ["node-a"]})
        );
        // A copy (Snapshot, Clone) can be mounted anywhere: no pods read, no pin.
        let snap = directive(DirectivePhase::Transfer, v1::CopyMethod::Clone);
        let mut s = seen(Some(&source));
        s.pods = None;
        assert!(
            !kinds(&plan(&snap, &s, &PlanConfig::default()).unwrap())
                .contains(&"ListPods".to_owned())
        );
    }

    /// The restic repository Secret `repo` with the keys the mover needs.
    fn restic_secrets() -> BTreeMap<String, BTreeSet<String>> {
        BTreeMap::from([(
            "repo".to_owned(),
            BTreeSet::from(["RESTIC_REPOSITORY".to_owned(), "RESTIC_PASSWORD".to_owned()]),
        )])
    }

    #[test]
    fn every_key_a_mover_needs_is_checked_before_its_job_and_a_missing_one_is_named() {
        let ca = |secret: &str| {
            Some(v1::CustomCa {
                secret_name: secret.into(),
                key: "ca.crt".into(),
                ..Default::default()
            })
        };
        let keys = |s: &[&str]| s.iter().map(|k| (*k).to_owned()).collect::<BTreeSet<_>>();
        let mut restic = directive(DirectivePhase::Transfer, v1::CopyMethod::Direct);
        if let Some(r) = restic.spec.as_mut().and_then(|s| s.restic.as_mut()) {
            r.custom_ca = ca("tls");
        }
        let mut rclone = restic.clone();
        rclone.spec = Some(v1::SourceSpec {
            source_pvc: "data".into(),
            rclone: Some(v1::ReplicationSourceRcloneSpec {
                copy_method: v1::CopyMethod::Direct as i32,
                rclone_config: "rc".into(),
                rclone_config_section: "s3".into(),
                rclone_dest_path: "b/p".into(),
                custom_ca: ca("rc"),
                ..Default::default()
            }),
            ..Default::default()
        });
        let mut rsync = restic.clone();
        rsync.spec = Some(v1::SourceSpec {
            source_pvc: "data".into(),
            rsync: Some(v1::ReplicationSourceRsyncSpec {
                copy_method: v1::CopyMethod::Direct as i32,
                ssh_keys: "ssh".into(),
                address: "dest.example".into(),
                ..Default::default()
            }),
            ..Default::default()
        });
        let mut rsync_tls = restic.clone();
        rsync_tls.spec = Some(v1::SourceSpec {
            source_pvc: "data".into(),
            rsync_tls: Some(v1::ReplicationSourceRsyncTlsSpec {
                copy_method: v1::CopyMethod::Direct as i32,
                key_secret: "psk".into(),
                address: "dest.example".into(),
                ..Default::default()
            }),
            ..Default::default()
        });
        let cases: [(&v1::Directive, BTreeMap<String, BTreeSet<String>>); 4] = [
            (
                &restic,
                BTreeMap::from([
                    (
                        "repo".into(),
                        keys(&["RESTIC_REPOSITORY", "RESTIC_PASSWORD"]),
                    ),
                    ("tls".into(), keys(&["ca.crt"])),
                ]),
            ),
            (
                &rclone,
                BTreeMap::from([("rc".into(), keys(&["rclone.conf", "ca.crt"]))]),
            ),
            (
                &rsync,
                BTreeMap::from([(
                    "ssh".into(),
                    keys(&["source", "source.pub", "destination.pub"]),
                )]),
            ),
            (
                &rsync_tls,
                BTreeMap::from([("psk".into(), keys(&["psk.txt"]))]),
            ),
        ];
        let source = pvc("data", &[], None);
        let cache = pvc("volsync-src-db-cache", &[], None);
        for (d, complete) in cases {
            let mut s = seen(Some(&source));
            s.cache_pvc = Some(&cache);
            s.secrets = Some(&complete);
            let a = plan(d, &s, &PlanConfig::default()).unwrap();
            assert!(
                matches!(a.first(), Some(Action::CreateJob(_))),
                "{:?}",
                kinds(&a)
            );
            // Each key missing in turn: no Job, the Secret and the key named, the run waits.
            for (secret, key) in complete
                .iter()
                .flat_map(|(s, ks)| ks.iter().map(move |k| (s.clone(), k.clone())))
            {
                let mut less = complete.clone();
                less.get_mut(&secret).unwrap().remove(&key);
                let mut s = s;
                s.secrets = Some(&less);
                let a = plan(d, &s, &PlanConfig::default()).unwrap();
                let e = only_error(&a);
                assert_eq!((e.reason.as_str(), e.retryable), ("SecretKeyMissing", true));
                assert!(
                    e.message
                        .contains(&format!("Secret app/{secret} has no key {key:?}")),
                    "{}",
                    e.message
                );
            }
        }
    }

    fn only_error(actions: &[Action]) -> &v1::AgentError {
        match actions {
            [Action::Report(Observation::Error(e))] => e,
            other => panic!("not one error: {:?}", kinds(other)),
        }
    }

    #[test]
    fn a_mover_failure_count_of_u32_max_is_refused_not_overflowed() {
        let d = directive(DirectivePhase::Transfer, v1::CopyMethod::Direct);
        let source = pvc("data", &[], None);
        let cache = pvc("volsync-src-db-cache", &[], None);
        let secrets = restic_secrets();
        let mut s = seen(Some(&source));
        s.cache_pvc = Some(&cache);
        s.secrets = Some(&secrets);
        s.failed_attempts = u32::MAX;
        let a = plan(&d, &s, &PlanConfig::default()).unwrap();
        let e = only_error(&a);
        assert_eq!((e.reason.as_str(), e.retryable), ("TooManyAttempts", false));
        s.failed_attempts = u32::MAX - 1;
        let a = plan(&d, &s, &PlanConfig::default()).unwrap();
        let Some(Action::CreateJob(job)) = a.first() else {
            panic!("{:?}", kinds(&a))
        };
        assert_eq!(job_attempt(job), u32::MAX);
    }

    #[test]
    fn a_back_off_past_the_end_of_time_waits_for_ever_instead_of_panicking() {
        let d = directive(DirectivePhase::Transfer, v1::CopyMethod::Direct);
        let source = pvc("data", &[], None);
        let config = PlanConfig {
            mover_backoff: Duration::from_secs(1 << 50),
            mover_backoff_max: Duration::from_secs(1 << 52),
            ..PlanConfig::default()
        };
        let job = failed_job(now());
        let mut s = seen(Some(&source));
        s.job = Some(&job);
        s.job_reported = true;
        let a = plan(&d, &s, &config).unwrap();
        assert_eq!(a.last(), Some(&Action::WakeAt(DateTime::<Utc>::MAX_UTC)));
    }

    #[test]
    fn a_job_failure_time_in_the_future_counts_its_back_off_from_now() {
        let d = directive(DirectivePhase::Transfer, v1::CopyMethod::Direct);
        let source = pvc("data", &[], None);
        let job = failed_job(from_jiff(Timestamp::MAX));
        let mut s = seen(Some(&source));
        s.job = Some(&job);
        s.job_reported = true;
        let a = plan(&d, &s, &PlanConfig::default()).unwrap();
        assert_eq!(
            a.last(),
            Some(&Action::WakeAt(now() + chrono::Duration::seconds(20))),
            "attempt 2: 20 s from now, not from the year 9999"
        );
    }

    /// The release annotation of a copy made for the test directive's release ("first").
    fn this_release() -> BTreeMap<String, String> {
        BTreeMap::from([(names::RELEASE.to_owned(), "first".to_owned())])
    }

    fn ready_snapshot(creation: Timestamp) -> VolumeSnapshot {
        VolumeSnapshot {
            metadata: ObjectMeta {
                name: Some("volsync-db-src".into()),
                labels: Some(names::temporary_labels("db", "run-7")),
                annotations: Some(this_release()),
                ..Default::default()
            },
            spec: Default::default(),
            status: Some(VolumeSnapshotStatus {
                bound_volume_snapshot_content_name: Some("content".into()),
                creation_time: Some(Time(creation)),
                ..Default::default()
            }),
        }
    }

    #[test]
    fn a_snapshot_creation_time_a_protobuf_timestamp_cannot_carry_is_reported_as_now() {
        let d = directive(DirectivePhase::Copy, v1::CopyMethod::Snapshot);
        let completed = pvc(
            "data",
            &[
                USE,
                (annotations::LATEST_COPY_STATUS, "Completed"),
                (annotations::LATEST_COPY_TRIGGER, "first"),
            ],
            None,
        );
        for (creation, want) in [
            (Timestamp::MIN, now()),
            (Timestamp::new(-62_135_596_801, 0).unwrap(), now()),
            (Timestamp::MAX, from_jiff(Timestamp::MAX)),
            (Timestamp::UNIX_EPOCH, DateTime::<Utc>::UNIX_EPOCH),
        ] {
            let snap = ready_snapshot(creation);
            let mut s = seen(Some(&completed));
            s.snapshot = Some(&snap);
            let a = plan(&d, &s, &PlanConfig::default()).unwrap();
            assert_eq!(
                a,
                [Action::Report(Observation::CopyCompleted(
                    v1::CopyCompleted {
                        copy_name: "volsync-db-src".into(),
                        time: Some(timestamp(want)),
                    }
                ))],
                "{creation}"
            );
        }
    }

    #[test]
    fn now_at_chronos_extremes_still_gives_valid_timestamps_and_waiting_since() {
        let d = directive(DirectivePhase::Copy, v1::CopyMethod::Direct);
        let source = pvc("data", &[], None);
        for (t, seconds) in [
            (DateTime::<Utc>::MAX_UTC, bounds::MAX_PROTO_SECONDS),
            (DateTime::<Utc>::MIN_UTC, bounds::MIN_PROTO_SECONDS),
        ] {
            let mut s = seen(Some(&source));
            s.now = t;
            let a = plan(&d, &s, &PlanConfig::default()).unwrap();
            let [Action::Report(Observation::CopyCompleted(c))] = a.as_slice() else {
                panic!("{:?}", kinds(&a))
            };
            assert_eq!(c.time.map(|t| t.seconds), Some(seconds));
        }
    }

    #[test]
    fn a_directive_waiting_since_a_protobuf_timestamp_cannot_carry_is_written_as_now() {
        let fresh = pvc("data", &[USE], None);
        for (seconds, nanos) in [
            (i64::MAX, 0),
            (i64::MIN, 0),
            (bounds::MAX_PROTO_SECONDS + 1, 0),
            (0, -1),
            (0, 1_000_000_000),
        ] {
            let mut d = directive(DirectivePhase::Wait, v1::CopyMethod::Snapshot);
            d.waiting_since = Some(prost_types::Timestamp { seconds, nanos });
            let a = plan(&d, &seen(Some(&fresh)), &PlanConfig::default()).unwrap();
            let Some(Action::PatchPvc { patch, .. }) = a.first() else {
                panic!("{:?}", kinds(&a))
            };
            assert_eq!(
                patch["metadata"]["annotations"][annotations::LATEST_COPY_TRIGGER_WAITING_SINCE],
                "2026-03-04T05:06:07Z",
                "{seconds} {nanos}"
            );
        }
    }

    #[test]
    fn a_trigger_with_invisible_characters_or_over_253_characters_is_refused_not_written() {
        let waiting = pvc(
            "data",
            &[USE, (annotations::LATEST_COPY_STATUS, "WaitingForTrigger")],
            None,
        );
        for trigger in [
            "evil\u{202E}gnp.exe".to_owned(),
            "zero\u{200B}width".to_owned(),
            "\u{FEFF}bom".to_owned(),
            "line\nbreak".to_owned(),
            "x".repeat(254),
        ] {
            let mut d = directive(DirectivePhase::Copy, v1::CopyMethod::Snapshot);
            d.write_copy_trigger = true;
            d.trigger = trigger.clone();
            let a = plan(&d, &seen(Some(&waiting)), &PlanConfig::default()).unwrap();
            let e = only_error(&a);
            assert_eq!((e.reason.as_str(), e.retryable), ("InvalidTrigger", false));
            assert!(
                !e.message.chars().any(bounds::is_invisible),
                "{}",
                e.message
            );
            assert!(e.message.len() < 300, "quotes a prefix only: {}", e.message);
        }
        let mut d = directive(DirectivePhase::Copy, v1::CopyMethod::Snapshot);
        d.trigger = "é".repeat(253);
        let a = plan(&d, &seen(Some(&waiting)), &PlanConfig::default()).unwrap();
        assert!(
            matches!(a.first(), Some(Action::PatchPvc { .. })),
            "253 are fine"
        );
    }

    #[test]
    fn a_restic_unlock_value_that_cannot_be_written_to_the_cache_pvc_is_refused() {
        let mut d = directive(DirectivePhase::Transfer, v1::CopyMethod::Direct);
        if let Some(r) = d.spec.as_mut().and_then(|s| s.restic.as_mut()) {
            r.unlock = Some("u\u{202E}1".into());
        }
        let source = pvc("data", &[], None);
        let err = plan(&d, &seen(Some(&source)), &PlanConfig::default()).unwrap_err();
        assert!(
            err.to_string()
                .starts_with("restic.unlock is invalid: U+202E at byte 1"),
            "{err}"
        );
    }

    #[test]
    fn a_snapshot_error_of_a_megabyte_is_reported_cut_to_a_kibibyte() {
        let d = directive(DirectivePhase::Copy, v1::CopyMethod::Snapshot);
        let source = pvc(
            "data",
            &[USE, (annotations::LATEST_COPY_STATUS, "InProgress")],
            None,
        );
        let mut snap = ready_snapshot(Timestamp::UNIX_EPOCH);
        if let Some(st) = snap.status.as_mut() {
            st.ready_to_use = Some(false);
            st.error = Some(crate::resources::VolumeSnapshotError {
                message: Some("no\u{202E}".repeat(1 << 18)),
                time: None,
            });
        }
        let mut s = seen(Some(&source));
        s.snapshot = Some(&snap);
        let a = plan(&d, &s, &PlanConfig::default()).unwrap();
        let e = only_error(&a);
        assert_eq!(e.reason, "SnapshotFailed");
        assert!(e.message.len() <= bounds::MAX_MESSAGE_BYTES);
        assert!(e.message.ends_with(bounds::TRUNCATED));
        assert!(
            e.message
                .starts_with("VolumeSnapshot volsync-db-src: no\\u{202e}no")
        );
    }

    #[test]
    fn event_messages_escape_invisible_characters_and_stay_under_a_kibibyte() {
        let mut d = directive(DirectivePhase::Wait, v1::CopyMethod::Snapshot);
        d.run_id = format!("run-\u{202E}{}", "7".repeat(5000));
        let fresh = pvc("data", &[USE], None);
        let a = plan(&d, &seen(Some(&fresh)), &PlanConfig::default()).unwrap();
        let Some(Action::Event(e)) = a.get(1) else {
            panic!("{:?}", kinds(&a))
        };
        let message = e.message.as_deref().unwrap_or_default();
        assert!(
            message.len() <= bounds::MAX_MESSAGE_BYTES,
            "{}",
            message.len()
        );
        assert!(message.contains("run-\\u{202e}777"), "{message}");
        assert!(is_dns_subdomain(
            e.metadata.name.as_deref().unwrap_or_default()
        ));
    }

    fn is_dns_subdomain(s: &str) -> bool {
        !s.is_empty() && s.len() <= 253 && s.split('.').all(names::is_dns_label)
    }

    fn leased(phase: DirectivePhase, method: v1::CopyMethod) -> v1::Directive {
        let mut d = directive(phase, method);
        d.lease = true;
        d.generation = 3;
        d
    }

    const LEASES: [Lease; 5] = [
        Lease::NotNeeded,
        Lease::None,
        Lease::Requested,
        Lease::Held,
        Lease::Expired,
    ];

    #[test]
    fn a_leased_copy_is_made_only_under_a_held_lease_and_a_lease_is_asked_for_once() {
        let in_progress = pvc(
            "data",
            &[USE, (annotations::LATEST_COPY_STATUS, "InProgress")],
            None,
        );
        let waiting = pvc(
            "data",
            &[USE, (annotations::LATEST_COPY_STATUS, "WaitingForTrigger")],
            None,
        );
        let released = ["PatchPvc data", "Event SrcPVCCopyTriggerReceived"];
        let cases: [(v1::CopyMethod, &PersistentVolumeClaim, Lease, &[&str]); 12] = [
            (
                v1::CopyMethod::Snapshot,
                &in_progress,
                Lease::None,
                &["RequestLease"],
            ),
            // A directive with a lease is never acted on as if none were needed.
            (
                v1::CopyMethod::Snapshot,
                &in_progress,
                Lease::NotNeeded,
                &["RequestLease"],
            ),
            (
                v1::CopyMethod::Snapshot,
                &in_progress,
                Lease::Requested,
                &[],
            ),
            (
                v1::CopyMethod::Snapshot,
                &in_progress,
                Lease::Held,
                &["CreateSnapshot volsync-db-src"],
            ),
            (
                v1::CopyMethod::Snapshot,
                &in_progress,
                Lease::Expired,
                &["Event CopyLeaseExpired"],
            ),
            (
                v1::CopyMethod::Clone,
                &in_progress,
                Lease::None,
                &["RequestLease"],
            ),
            (v1::CopyMethod::Clone, &in_progress, Lease::Requested, &[]),
            (
                v1::CopyMethod::Clone,
                &in_progress,
                Lease::Held,
                &["CreatePvc volsync-db-src"],
            ),
            (
                v1::CopyMethod::Clone,
                &in_progress,
                Lease::Expired,
                &["Event CopyLeaseExpired"],
            ),
            // The InProgress mark does not wait for the lease; the copy does.
            (
                v1::CopyMethod::Snapshot,
                &waiting,
                Lease::None,
                &[released[0], released[1], "RequestLease"],
            ),
            (
                v1::CopyMethod::Snapshot,
                &waiting,
                Lease::Requested,
                &released,
            ),
            // Past the lease, not even the InProgress mark.
            (
                v1::CopyMethod::Snapshot,
                &waiting,
                Lease::Expired,
                &["Event CopyLeaseExpired"],
            ),
        ];
        for (method, source, lease, want) in cases {
            let d = leased(DirectivePhase::Copy, method);
            let mut s = seen(Some(source));
            s.lease = lease;
            let a = plan(&d, &s, &PlanConfig::default()).unwrap();
            assert_eq!(kinds(&a), want, "{method:?} {lease:?}");
        }
        let d = leased(DirectivePhase::Copy, v1::CopyMethod::Snapshot);
        let mut s = seen(Some(&in_progress));
        s.lease = Lease::Expired;
        let a = plan(&d, &s, &PlanConfig::default()).unwrap();
        let [Action::Event(e)] = a.as_slice() else {
            panic!("{:?}", kinds(&a))
        };
        assert_eq!(e.type_.as_deref(), Some("Warning"));
        assert_eq!(
            e.metadata.name.as_deref(),
            Some("data.run-7.copyleaseexpired-3"),
            "once per directive generation"
        );
        assert!(
            e.message
                .as_deref()
                .is_some_and(|m| m.starts_with("the hold lease of run run-7 ran out")),
            "{:?}",
            e.message
        );
    }

    #[test]
    fn a_copy_point_is_counted_only_under_a_lease_held_at_the_plans_time() {
        let in_progress = pvc(
            "data",
            &[USE, (annotations::LATEST_COPY_STATUS, "InProgress")],
            None,
        );
        let completed = pvc(
            "data",
            &[
                USE,
                (annotations::LATEST_COPY_STATUS, "Completed"),
                (annotations::LATEST_COPY_TRIGGER, "first"),
            ],
            None,
        );
        let cut = ready_snapshot(Timestamp::UNIX_EPOCH);
        let bound = pvc(
            "volsync-db-src",
            &[(names::RELEASE, "first")],
            Some("run-7"),
        );
        let marked = ["PatchPvc data", "Event SrcPVCCopyUsingCopyTriggerCompleted"];
        let cases: [(v1::CopyMethod, &PersistentVolumeClaim, Lease, &[&str]); 12] = [
            (v1::CopyMethod::Snapshot, &in_progress, Lease::Held, &marked),
            // An agent finding the cut copy without a lease (it restarted) asks for one first.
            (
                v1::CopyMethod::Snapshot,
                &in_progress,
                Lease::None,
                &["RequestLease"],
            ),
            (
                v1::CopyMethod::Snapshot,
                &in_progress,
                Lease::Requested,
                &[],
            ),
            (
                v1::CopyMethod::Snapshot,
                &in_progress,
                Lease::Expired,
                &["Event CopyLeaseExpired"],
            ),
            (
                v1::CopyMethod::Snapshot,
                &completed,
                Lease::Held,
                &["Report CopyCompleted"],
            ),
            (
                v1::CopyMethod::Snapshot,
                &completed,
                Lease::None,
                &["RequestLease"],
            ),
            (v1::CopyMethod::Snapshot, &completed, Lease::Requested, &[]),
            // Marked Completed under a lease but not reported before it ran out: not reported
            // now, and nothing is said (the copy point was inside the hold).
            (v1::CopyMethod::Snapshot, &completed, Lease::Expired, &[]),
            (v1::CopyMethod::Clone, &in_progress, Lease::Held, &marked),
            (
                v1::CopyMethod::Clone,
                &in_progress,
                Lease::None,
                &["RequestLease"],
            ),
            (
                v1::CopyMethod::Clone,
                &in_progress,
                Lease::Expired,
                &["Event CopyLeaseExpired"],
            ),
            (
                v1::CopyMethod::Clone,
                &completed,
                Lease::Held,
                &["Report CopyCompleted"],
            ),
        ];
        for (method, source, lease, want) in cases {
            let d = leased(DirectivePhase::Copy, method);
            let mut s = seen(Some(source));
            s.snapshot = Some(&cut);
            s.copy_pvc = Some(&bound);
            s.lease = lease;
            let a = plan(&d, &s, &PlanConfig::default()).unwrap();
            assert_eq!(
                kinds(&a),
                want,
                "{method:?} {lease:?} {:?}",
                source.metadata
            );
        }
    }

    #[test]
    fn without_a_lease_in_the_directive_the_lease_state_changes_nothing() {
        let in_progress = pvc(
            "data",
            &[USE, (annotations::LATEST_COPY_STATUS, "InProgress")],
            None,
        );
        let completed = pvc(
            "data",
            &[
                USE,
                (annotations::LATEST_COPY_STATUS, "Completed"),
                (annotations::LATEST_COPY_TRIGGER, "first"),
            ],
            None,
        );
        let cut = ready_snapshot(Timestamp::UNIX_EPOCH);
        let cases: [(&PersistentVolumeClaim, Option<&VolumeSnapshot>, &[&str]); 3] = [
            (&in_progress, None, &["CreateSnapshot volsync-db-src"]),
            (
                &in_progress,
                Some(&cut),
                &["PatchPvc data", "Event SrcPVCCopyUsingCopyTriggerCompleted"],
            ),
            (&completed, Some(&cut), &["Report CopyCompleted"]),
        ];
        let d = directive(DirectivePhase::Copy, v1::CopyMethod::Snapshot);
        assert!(!d.lease);
        for (source, snapshot, want) in cases {
            for lease in LEASES {
                let mut s = seen(Some(source));
                s.snapshot = snapshot;
                s.lease = lease;
                let a = plan(&d, &s, &PlanConfig::default()).unwrap();
                assert_eq!(kinds(&a), want, "{lease:?}");
            }
        }
    }

    #[test]
    fn waiting_deletes_a_leftover_copy_of_the_run_first_and_waits_until_it_is_gone() {
        let in_progress = pvc(
            "data",
            &[
                USE,
                (annotations::LATEST_COPY_STATUS, "InProgress"),
                (annotations::COPY_TRIGGER, "first"),
                (annotations::LATEST_COPY_TRIGGER, "old"),
            ],
            None,
        );
        let this_run = ready_snapshot(Timestamp::UNIX_EPOCH);
        let mut earlier = ready_snapshot(Timestamp::UNIX_EPOCH);
        earlier.metadata.labels = Some(names::temporary_labels("db", "run-6"));
        let mut terminating = ready_snapshot(Timestamp::UNIX_EPOCH);
        terminating.metadata.deletion_timestamp = Some(Time(Timestamp::UNIX_EPOCH));
        let clone = pvc("volsync-db-src", &[], Some("run-7"));
        let mut clone_terminating = clone.clone();
        clone_terminating.metadata.deletion_timestamp = Some(Time(Timestamp::UNIX_EPOCH));
        let users = pvc("volsync-db-src", &[], None);
        let mark = ["PatchPvc data", "Event SrcPVCWaitingForCopyTrigger"];
        type Case<'a> = (
            v1::CopyMethod,
            Option<&'a VolumeSnapshot>,
            Option<&'a PersistentVolumeClaim>,
            &'a [&'a str],
        );
        let cases: [Case<'_>; 7] = [
            (
                v1::CopyMethod::Snapshot,
                Some(&this_run),
                None,
                &["DeleteSnapshot volsync-db-src"],
            ),
            (
                v1::CopyMethod::Snapshot,
                Some(&earlier),
                None,
                &["DeleteSnapshot volsync-db-src"],
            ),
            (v1::CopyMethod::Snapshot, Some(&terminating), None, &[]),
            (v1::CopyMethod::Snapshot, None, None, &mark),
            (
                v1::CopyMethod::Clone,
                None,
                Some(&clone),
                &["DeletePvc volsync-db-src"],
            ),
            (v1::CopyMethod::Clone, None, Some(&clone_terminating), &[]),
            // A PVC of that name snapgate did not make is never touched.
            (v1::CopyMethod::Clone, None, Some(&users), &mark),
        ];
        for (method, snapshot, copy_pvc, want) in cases {
            let mut d = directive(DirectivePhase::Wait, method);
            d.consumed_trigger = "first".into();
            let mut s = seen(Some(&in_progress));
            s.snapshot = snapshot;
            s.copy_pvc = copy_pvc;
            let a = plan(&d, &s, &PlanConfig::default()).unwrap();
            assert_eq!(kinds(&a), want, "{method:?} {snapshot:?} {copy_pvc:?}");
        }
    }

    #[test]
    fn a_run_sent_back_to_wait_records_its_spent_value_with_the_waiting_mark_then_reports() {
        let mut d = directive(DirectivePhase::Wait, v1::CopyMethod::Snapshot);
        d.consumed_trigger = "first".into();
        let in_progress = pvc(
            "data",
            &[
                USE,
                (annotations::LATEST_COPY_STATUS, "InProgress"),
                (annotations::COPY_TRIGGER, "first"),
                (annotations::LATEST_COPY_TRIGGER, "old"),
            ],
            None,
        );
        let a = plan(&d, &seen(Some(&in_progress)), &PlanConfig::default()).unwrap();
        assert_eq!(
            kinds(&a),
            ["PatchPvc data", "Event SrcPVCWaitingForCopyTrigger"],
            "no report before the patch landed"
        );
        assert_eq!(
            patch_of(&a[0]),
            &serde_json::json!({"metadata": {"annotations": {
                annotations::LATEST_COPY_TRIGGER: "first",
                annotations::LATEST_COPY_STATUS: "WaitingForTrigger",
                annotations::LATEST_COPY_TRIGGER_WAITING_SINCE: "2026-03-04T05:06:07Z",
            }}})
        );
        let marked = pvc(
            "data",
            &[
                USE,
                (annotations::LATEST_COPY_STATUS, "WaitingForTrigger"),
                (annotations::COPY_TRIGGER, "first"),
                (annotations::LATEST_COPY_TRIGGER, "first"),
                (
                    annotations::LATEST_COPY_TRIGGER_WAITING_SINCE,
                    "2026-03-04T05:06:07Z",
                ),
            ],
            None,
        );
        let a = plan(&d, &seen(Some(&marked)), &PlanConfig::default()).unwrap();
        let [Action::Report(Observation::Pvc(p))] = a.as_slice() else {
            panic!("{:?}", kinds(&a))
        };
        assert_eq!(
            (p.copy_trigger.as_str(), p.latest_copy_trigger.as_str()),
            ("first", "first"),
            "the spent value no longer reads as a new one"
        );
    }

    #[test]
    fn a_log_unavailable_message_of_any_length_is_reported_cut() {
        let long = format!("(log unavailable: {})", "e".repeat(10_000));
        let Observation::MoverFailed(m) = mover_report(MoverOutcome::Failed { attempt: 1 }, long)
        else {
            unreachable!()
        };
        assert!(m.logs.len() <= classify::MOVER_LOG_MAX_BYTES);
        assert!(m.logs.starts_with("(log unavailable: eee"));
    }

    /// A copy of this run made for an earlier release (its lease ran out; the WAIT that would
    /// have deleted it never reached this agent) is not the new release's copy point: it is
    /// deleted, never marked Completed, whatever lease is held now. A new copy carries the
    /// value of the release it is made for.
    #[test]
    fn a_copy_made_for_an_earlier_release_is_deleted_not_counted_under_a_later_lease() {
        let source = pvc(
            "data",
            &[
                USE,
                (annotations::LATEST_COPY_STATUS, "InProgress"),
                (annotations::COPY_TRIGGER, "v2"),
            ],
            None,
        );
        let mut old_cut = ready_snapshot(Timestamp::UNIX_EPOCH);
        old_cut.metadata.annotations = Some(BTreeMap::from([(
            names::RELEASE.to_owned(),
            "first".to_owned(),
        )]));
        let old_clone = pvc(
            "volsync-db-src",
            &[(names::RELEASE, "first")],
            Some("run-7"),
        );
        for method in [v1::CopyMethod::Snapshot, v1::CopyMethod::Clone] {
            let mut d = leased(DirectivePhase::Copy, method);
            d.trigger = "v2".into();
            let mut s = seen(Some(&source));
            s.snapshot = Some(&old_cut);
            s.copy_pvc = Some(&old_clone);
            s.lease = Lease::Held;
            let a = plan(&d, &s, &PlanConfig::default()).unwrap();
            let want = match method {
                v1::CopyMethod::Snapshot => "DeleteSnapshot volsync-db-src",
                _ => "DeletePvc volsync-db-src",
            };
            assert_eq!(kinds(&a), [want], "{method:?}");

            // Once it is gone, the new copy is made for v2 (under the lease).
            let mut s = seen(Some(&source));
            s.lease = Lease::Held;
            let a = plan(&d, &s, &PlanConfig::default()).unwrap();
            let made = a.iter().find_map(|a| match a {
                Action::CreateSnapshot(v) => v.metadata.annotations.clone(),
                Action::CreatePvc(p) => p.metadata.annotations.clone(),
                _ => None,
            });
            assert_eq!(
                made.and_then(|m| m.get(names::RELEASE).cloned()).as_deref(),
                Some("v2"),
                "{method:?}: {:?}",
                kinds(&a)
            );
        }
    }
}
