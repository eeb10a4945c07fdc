//! What the plan tests share: a directive, a PVC, what is seen, and the actions in short.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use k8s_openapi::{
    api::core::v1::{PersistentVolumeClaim, PersistentVolumeClaimStatus},
    apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time},
    jiff::Timestamp,
};
use serde_json::Value;
use snapgate_proto::{
    time::timestamp,
    v1::{self, DirectivePhase, report::Observation},
};

use super::{Action, Lease, MoverPods, Observed, observation_name};
use crate::{
    annotations, names,
    resources::{VolumeSnapshot, VolumeSnapshotStatus},
    review::Review,
};

pub(super) fn now() -> DateTime<Utc> {
    DateTime::parse_from_rfc3339("2026-03-04T05:06:07Z")
        .unwrap()
        .with_timezone(&Utc)
}

pub(super) fn directive(phase: DirectivePhase, method: v1::CopyMethod) -> v1::Directive {
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

pub(super) fn pvc(
    name: &str,
    annotations: &[(&str, &str)],
    run: Option<&str>,
) -> PersistentVolumeClaim {
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

pub(super) fn seen<'a>(pvc: Option<&'a PersistentVolumeClaim>) -> Observed<'a> {
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
        job_failed_seen: None,
        now: now(),
    }
}

pub(super) fn kinds(actions: &[Action]) -> Vec<String> {
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

pub(super) const USE: (&str, &str) = (annotations::USE_COPY_TRIGGER, "");

pub(super) fn patch_of(a: &Action) -> &Value {
    match a {
        Action::PatchPvc { patch, .. } => patch,
        other => panic!("not a PVC patch: {other:?}"),
    }
}

pub(super) fn only_error(actions: &[Action]) -> &v1::AgentError {
    match actions {
        [Action::Report(Observation::Error(e))] => e,
        other => panic!("not one error: {:?}", kinds(other)),
    }
}

/// The release annotation of a copy made for the test directive's release ("first").
pub(super) fn this_release() -> BTreeMap<String, String> {
    BTreeMap::from([(names::RELEASE.to_owned(), "first".to_owned())])
}

pub(super) fn ready_snapshot(creation: Timestamp) -> VolumeSnapshot {
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

pub(super) fn leased(phase: DirectivePhase, method: v1::CopyMethod) -> v1::Directive {
    let mut d = directive(phase, method);
    d.lease = true;
    d.generation = 3;
    d
}
