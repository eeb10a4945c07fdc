//! COPY: the InProgress mark, then the copy (a VolumeSnapshot or a clone PVC) made under the
//! run's hold lease when the directive has one, then its copy point counted (Completed, then
//! reported) once it is cut or bound.

use chrono::{DateTime, Utc};
use k8s_openapi::{
    api::core::v1::PersistentVolumeClaim, apimachinery::pkg::apis::meta::v1::ObjectMeta,
};
use snapgate_proto::{
    time::timestamp,
    v1::{self, report::Observation},
};

use super::{
    Action, Ctx, error,
    observed::{LeaseGate, Owned, created, from_jiff},
};
use crate::{
    CopyMethod, SpecError, annotations, bounds,
    classify::{self, CloneReadiness, CopyReadiness},
    names, resources,
};

impl Ctx<'_> {
    pub(super) fn copy(&self) -> Result<Vec<Action>, SpecError> {
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

    /// Records on a new copy the release it is made for.
    fn mark_release(&self, meta: &mut ObjectMeta) {
        if self.directive.gated {
            meta.annotations
                .get_or_insert_with(Default::default)
                .insert(names::RELEASE.to_owned(), self.directive.trigger.clone());
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
}

#[cfg(test)]
mod tests {
    use k8s_openapi::{apimachinery::pkg::apis::meta::v1::Time, jiff::Timestamp};
    use pretty_assertions::assert_eq;
    use snapgate_proto::v1::DirectivePhase;

    use super::*;
    use crate::{
        plan::{Lease, PlanConfig, events::to_jiff, plan, test_support::*},
        resources::{VolumeSnapshot, VolumeSnapshotStatus},
    };

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
}
