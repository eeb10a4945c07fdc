//! VolSync beside snapgate (docs/migrating-from-volsync.md): while a VolSync ReplicationSource
//! that is not paused replicates the same gated PVC, snapgate never asks the application to
//! quiesce (both controllers would answer one copy-trigger value); paused, it goes on.

use std::time::Duration;

use kube::api::{
    Api, ApiResource, DynamicObject, GroupVersionKind, Patch, PatchParams, PostParams,
};
use snapgate_e2e::*;
use snapgate_proto::v1::CopyMethod;

fn replication_sources(w: &World) -> Api<DynamicObject> {
    let resource = ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("volsync.backube", "v1alpha1", "ReplicationSource"),
        "replicationsources",
    );
    Api::namespaced_with(w.sim.client(), NS, &resource)
}

#[tokio::test]
async fn a_gated_run_waits_while_volsync_replicates_the_same_pvc_and_goes_on_once_it_is_paused() {
    let mut w = World::start().await;
    w.create_pvc(true);
    let api = replication_sources(&w);
    let rs: DynamicObject = serde_json::from_value(serde_json::json!({
        "apiVersion": "volsync.backube/v1alpha1",
        "kind": "ReplicationSource",
        "metadata": {"name": "db-backup", "namespace": NS},
        "spec": {"sourcePVC": PVC, "trigger": {"manual": "once"}, "restic": {"repository": "x"}},
    }))
    .unwrap();
    api.create(&PostParams::default(), &rs).await.unwrap();

    w.apply(
        SOURCE,
        restic_spec(CopyMethod::Snapshot, Duration::from_secs(600)),
    )
    .await;
    let run = w
        .run_when(SOURCE, "says VolSync answers the same trigger", |r| {
            r.message.starts_with("VolSyncConflict: ")
        })
        .await;
    assert!(run.message.contains("db-backup"), "{}", run.message);
    let source = w.source(SOURCE).await;
    let cond = &source.status.unwrap().conditions[0];
    assert!(cond.message.contains("VolSyncConflict"), "{cond:?}");
    assert!(
        !w.copy_annotations().contains_key(STATUS),
        "the PVC is not marked WaitingForTrigger: {:?}",
        w.copy_annotations()
    );

    // Paused (the first migration step), VolSync no longer answers: snapgate asks.
    api.patch(
        "db-backup",
        &PatchParams::default(),
        &Patch::Merge(serde_json::json!({"spec": {"paused": true}})),
    )
    .await
    .unwrap();
    w.wait_copy_status("WaitingForTrigger").await;
    w.annotate_trigger("first").await;
    w.wait_successful_runs(SOURCE, 1).await;
}
