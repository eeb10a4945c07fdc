//! The scheduler and the agent restarted in the middle of a run: directives are resent,
//! observations re-reported, and nothing already done is done again.
//!
//! What a restart must not do again is checked on paused time (see [`let_pass`]): after the
//! restart, two minutes pass (the link's back-off, the agent's retries and its resync) before
//! the cluster is looked at.

use std::time::Duration;

use snapgate_agent_core::resources::VolumeSnapshot;
use snapgate_e2e::*;
use snapgate_kube_sim::{SnapshotBehaviour, Verb};
use snapgate_proto::v1::CopyMethod;

const COPY: &str = "volsync-db-src";

fn created_snapshots(w: &World) -> usize {
    w.sim
        .requests()
        .count(|r| r.verb == Some(Verb::Create) && r.resource == "volumesnapshots" && r.code < 300)
}

fn source_patches(w: &World) -> usize {
    w.sim.requests().count(|r| {
        r.verb == Some(Verb::Patch)
            && r.resource == "persistentvolumeclaims"
            && r.name.as_deref() == Some(PVC)
            && r.user == AGENT_USER
    })
}

async fn finish(w: &mut World) {
    eventually("the snapshot is bound, not ready", || {
        w.snapshots().first().and_then(|s| {
            s.status
                .as_ref()
                .and_then(|st| st.bound_volume_snapshot_content_name.clone())
        })
    })
    .await;
    w.patch_status::<VolumeSnapshot>(COPY, serde_json::json!({ "readyToUse": true }))
        .await;
    w.wait_successful_runs(SOURCE, 1).await;
    let a = w.copy_annotations();
    assert_eq!(a.get(STATUS).map(String::as_str), Some("Completed"));
    assert_eq!(a.get(LATEST).map(String::as_str), Some("first"));
}

async fn gated_run_in_progress() -> World {
    let mut w = World::start_with(Some("agent-token")).await;
    w.sim
        .snapshot_behaviour(NS, COPY, SnapshotBehaviour::NeverReady);
    w.create_pvc(true);
    w.apply(
        SOURCE,
        restic_spec(CopyMethod::Snapshot, Duration::from_secs(600)),
    )
    .await;
    w.wait_copy_status("WaitingForTrigger").await;
    w
}

#[tokio::test(start_paused = true)]
async fn a_scheduler_restart_mid_copy_resumes_the_run_without_a_second_copy() {
    let mut w = gated_run_in_progress().await;
    w.annotate_trigger("first").await;
    w.wait_copy_status("InProgress").await;
    eventually("the snapshot", || (w.snapshots().len() == 1).then_some(())).await;
    let patches = source_patches(&w);

    w.restart_scheduler().await;
    eventually("the agent reconnects", || {
        w.agent_metrics
            .encode()
            .contains("snapgate_agent_connected 1")
            .then_some(())
    })
    .await;
    let_pass(Duration::from_secs(120)).await;
    assert_eq!(
        source_patches(&w),
        patches,
        "a resent directive already done is answered, not redone"
    );
    finish(&mut w).await;
    assert_eq!(created_snapshots(&w), 1, "one copy across the restart");
}

#[tokio::test]
async fn an_agent_restart_while_waiting_rewrites_nothing_and_a_trigger_set_while_it_was_down_is_honoured()
 {
    let mut w = gated_run_in_progress().await;
    let since = w.copy_annotations()[SINCE].clone();
    let patches = source_patches(&w);
    assert_eq!(patches, 1, "WaitingForTrigger was written once");
    w.stop_agent().await;
    // The application quiesces and triggers while no agent runs.
    w.annotate_trigger("first").await;
    w.start_agent();
    w.wait_copy_status("InProgress").await;
    assert_eq!(
        source_patches(&w),
        patches + 1,
        "only the InProgress patch; the wait was not marked again"
    );
    let runs = w.runs(SOURCE).await;
    assert_eq!(runs[0].trigger, "first");
    assert_ne!(since, "", "waiting-since was set before the restart");
    finish(&mut w).await;
    assert_eq!(created_snapshots(&w), 1);
}

#[tokio::test(start_paused = true)]
async fn an_agent_restart_mid_copy_rebuilds_from_the_cluster_and_makes_no_second_copy() {
    let mut w = gated_run_in_progress().await;
    w.annotate_trigger("first").await;
    w.wait_copy_status("InProgress").await;
    eventually("the snapshot", || (w.snapshots().len() == 1).then_some(())).await;
    w.stop_agent().await;
    w.start_agent();
    eventually("the new agent connects", || {
        w.agent_metrics
            .encode()
            .contains("snapgate_agent_connected 1")
            .then_some(())
    })
    .await;
    let_pass(Duration::from_secs(120)).await;
    assert_eq!(created_snapshots(&w), 1, "the new agent found the copy");
    finish(&mut w).await;
    assert_eq!(created_snapshots(&w), 1);
}
