//! How what the watches show stands to the run: whose an object found under one of the run's
//! names is, what the run's hold lease lets a step that makes or counts the copy do, and a
//! mover Job's attempt and times.

use chrono::{DateTime, Utc};
use k8s_openapi::{Metadata, api::batch::v1::Job, apimachinery::pkg::apis::meta::v1::ObjectMeta};

use super::{ATTEMPT, Action, Ctx, Lease};
use crate::names;

/// How an object found under one of a run's names stands to the run.
pub(super) enum Owned<'o, K> {
    /// Nothing of that name.
    Absent,
    /// Something snapgate did not make for this source.
    Foreign(&'o K),
    /// Made for an earlier run of the source.
    Earlier,
    /// Made for this run.
    ThisRun(&'o K),
}

/// What a directive's lease lets a step that makes or counts the copy do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum LeaseGate {
    /// Go on: no lease needed, or one is held.
    Go,
    /// Ask for a lease first.
    Ask,
    /// Wait for the answer.
    Wait,
    /// The lease ran out (or was refused): nothing more.
    Expired,
}

impl Ctx<'_> {
    /// How an object found under one of this run's names stands to the run.
    pub(super) fn owned<'o, K: Metadata<Ty = ObjectMeta>>(
        &self,
        object: Option<&'o K>,
    ) -> Owned<'o, K> {
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

    /// Whether this run's copy was made for the release the directive names (the value that
    /// released it). An ungated run has no release to tell apart.
    pub(super) fn of_this_release(&self, meta: &ObjectMeta) -> bool {
        !self.directive.gated
            || meta
                .annotations
                .as_ref()
                .and_then(|a| a.get(names::RELEASE))
                .is_some_and(|v| *v == self.directive.trigger)
    }

    /// Where the directive's lease lets a step that makes or counts the copy go.
    pub(super) fn lease_gate(&self) -> LeaseGate {
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
    pub(super) fn under_lease(&self) -> Option<Option<Action>> {
        match self.lease_gate() {
            LeaseGate::Go => None,
            LeaseGate::Ask => Some(Some(Action::RequestLease)),
            LeaseGate::Wait | LeaseGate::Expired => Some(None),
        }
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
pub(super) fn created(meta: &ObjectMeta) -> DateTime<Utc> {
    meta.creation_timestamp
        .as_ref()
        .map_or(DateTime::<Utc>::UNIX_EPOCH, |t| from_jiff(t.0))
}

/// When a Job failed: its `Failed` condition's transition time.
pub(super) fn failed_at(job: &Job) -> Option<DateTime<Utc>> {
    job.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == "Failed" && c.status == "True")
        .and_then(|c| c.last_transition_time.as_ref())
        .map(|t| from_jiff(t.0))
}

pub(super) fn from_jiff(t: k8s_openapi::jiff::Timestamp) -> DateTime<Utc> {
    DateTime::from_timestamp(t.as_second(), t.subsec_nanosecond().max(0).unsigned_abs())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use k8s_openapi::{api::core::v1::PersistentVolumeClaim, jiff::Timestamp};
    use pretty_assertions::assert_eq;
    use snapgate_proto::v1::{self, DirectivePhase, report::Observation};

    use super::*;
    use crate::{
        annotations,
        plan::{PlanConfig, plan, test_support::*},
        resources::VolumeSnapshot,
    };

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

    const LEASES: [Lease; 5] = [
        Lease::NotNeeded,
        Lease::None,
        Lease::Requested,
        Lease::Held,
        Lease::Expired,
    ];

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
}
