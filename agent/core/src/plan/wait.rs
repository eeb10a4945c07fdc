//! WAIT: a copy left behind is deleted first; a gated PVC is marked WaitingForTrigger (with a
//! spent trigger recorded in the same patch) unless VolSync answers the same trigger; the PVC is
//! reported on every change.

use snapgate_proto::v1::report::Observation;

use super::{Action, Ctx, error, observed::Owned};
use crate::{CopyMethod, annotations, bounds};

impl Ctx<'_> {
    pub(super) fn wait(&self) -> Vec<Action> {
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
                    snapgate_contract::timeout_message(&self.names.source_pvc),
                ));
            }
        }
        out.push(Action::Report(Observation::Pvc(observed)));
        out
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
}

#[cfg(test)]
mod tests {
    use k8s_openapi::{
        api::core::v1::PersistentVolumeClaim, apimachinery::pkg::apis::meta::v1::Time,
        jiff::Timestamp,
    };
    use pretty_assertions::assert_eq;
    use snapgate_proto::v1::{self, DirectivePhase};

    use super::*;
    use crate::{
        names,
        plan::{Observed, PlanConfig, plan, test_support::*},
        resources::VolumeSnapshot,
    };

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
    fn a_timed_out_wait_is_said_on_the_pvc_in_volsyncs_words_and_the_pvc_still_reported() {
        let mut d = directive(DirectivePhase::Wait, v1::CopyMethod::Snapshot);
        d.timeout_reported = true;
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
        assert_eq!(
            kinds(&a),
            [
                "Event SrcPVCTimeoutWaitingForCopyTrigger",
                "Report PvcObserved"
            ]
        );
        let Action::Event(e) = &a[0] else {
            unreachable!()
        };
        assert_eq!(
            (e.type_.as_deref(), e.message.as_deref()),
            (
                Some("Warning"),
                Some("Timed out waiting for copy-trigger to be modified for pvc data")
            )
        );
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
}
