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
//!
//! The module follows those steps: `gate`, `wait`, `copy`, `transfer` (the restored PVC, the
//! restic cache, the mover Job and its stuck pods) and `cleanup` plan each phase; `observed`
//! says how what the watches show stands to the run (whose an object is, what the lease lets a
//! step do, a Job's attempt and times); `events` builds the Kubernetes Events a plan records.

mod cleanup;
mod copy;
mod events;
mod gate;
mod observed;
#[cfg(test)]
mod test_support;
mod transfer;
mod wait;

use std::{
    collections::{BTreeMap, BTreeSet},
    time::Duration,
};

use chrono::{DateTime, Utc};
use k8s_openapi::{
    Metadata, Resource,
    api::{
        batch::v1::Job,
        core::v1::{Event, PersistentVolumeClaim, Pod},
    },
    apimachinery::pkg::apis::meta::v1::ObjectMeta,
};
use serde_json::Value;
use snapgate_proto::v1::{self, DirectivePhase, report::Observation};

pub use self::{
    observed::job_attempt,
    transfer::{log_tail, mover_report, required_secret_keys, required_secrets, stuck_logs},
};
use crate::{
    CopyMethod, Mover, MoverSpec, SpecError, bounds, names,
    resources::{self, MoverImages, RunRef, VolumeSnapshot},
    review::{self, AuthorReview, Review, SourceAuthors},
    stuck::Trouble,
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

/// What the agent's watches show of the mover Job's pods and Warning Events.
#[derive(Clone, Copy, Debug, Default)]
pub enum MoverPods<'a> {
    /// Not known: no Job, or the pod or Event watch has not listed the namespace yet (then
    /// nothing is said either way).
    #[default]
    Unknown,
    /// Known: what keeps the Job from running
    /// ([`stuck::trouble`](crate::stuck::trouble)), if anything.
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
    /// When the shell first saw the mover Job failed (by its own clock), if it is: the
    /// back-off counts from the Job's failure time or this, whichever is earlier, so that an
    /// API server whose clock runs ahead cannot put the next attempt off for ever.
    pub job_failed_seen: Option<DateTime<Utc>>,
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

    /// The name of the run's copy: the VolumeSnapshot, the clone, the restored PVC.
    fn copy_name(&self) -> String {
        self.names.copy.clone()
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
}

fn error(reason: &str, message: String, retryable: bool) -> Observation {
    Observation::Error(bounds::agent_error(reason, &message, retryable))
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
    use pretty_assertions::assert_eq;

    use super::*;
    use crate::plan::test_support::*;

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
}
