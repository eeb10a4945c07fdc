//! Who is asked to quiesce, which value releases a run, and when the application is let go:
//! a value that released a run which never reached its copy point is spent, a paused source
//! asks nobody to quiesce, and the copy point of a snapshot is its cut, not its upload.

use std::time::Duration;

use snapgate_agent_core::resources::VolumeSnapshot;
use snapgate_e2e::*;
use snapgate_kube_sim::SnapshotBehaviour;
use snapgate_proto::v1::{CopyMethod, CopyState, RunPhase};
use snapgate_sdk::Error;

const COPY: &str = "volsync-db-src";

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Path {
    Annotation,
    Rpc,
}

/// A source of `PVC` whose snapshot the simulated CSI driver treats as `snapshot`, its run
/// waiting for a trigger.
async fn waiting_run(snapshot: SnapshotBehaviour) -> World {
    let mut w = World::start().await;
    w.sim.snapshot_behaviour(NS, COPY, snapshot);
    w.create_pvc(true);
    w.apply(
        SOURCE,
        restic_spec(CopyMethod::Snapshot, Duration::from_secs(600)),
    )
    .await;
    w.wait_copy_status("WaitingForTrigger").await;
    w
}

async fn release(w: &mut World, path: Path, value: &str) {
    match path {
        Path::Annotation => w.annotate_trigger(value).await,
        Path::Rpc => {
            w.sdk.trigger(&target(), None, value).await.unwrap();
        }
    }
}

fn phase_is(phase: RunPhase) -> impl Fn(&snapgate_proto::v1::Run) -> bool {
    move |r| r.phase() == phase
}

async fn a_deleted_sources_value_is_consumed(path: Path) {
    let mut w = waiting_run(SnapshotBehaviour::NeverReady).await;
    release(&mut w, path, "first").await;
    w.wait_copy_status("InProgress").await;
    eventually("the snapshot, never cut", || {
        (w.snapshots().len() == 1).then_some(())
    })
    .await;
    let a = w.copy_annotations();
    assert_eq!(a.get(TRIGGER).map(String::as_str), Some("first"), "{a:?}");
    assert!(!a.contains_key(LATEST), "{a:?}");

    w.delete_source(SOURCE).await;
    w.apply(
        "db2",
        restic_spec(CopyMethod::Snapshot, Duration::from_secs(600)),
    )
    .await;
    let run = w
        .run_when("db2", "it has read the PVC", |r| {
            !matches!(r.phase(), RunPhase::Queued | RunPhase::Gating)
        })
        .await;
    assert_eq!(
        (run.phase(), run.trigger.as_str()),
        (RunPhase::WaitingForTrigger, ""),
        "the old value releases nothing: {run:#?}"
    );
    w.wait_copy_status("WaitingForTrigger").await;
    let a = w.copy_annotations();
    assert_eq!(a.get(LATEST).map(String::as_str), Some("first"), "{a:?}");
    assert_eq!(a.get(TRIGGER).map(String::as_str), Some("first"), "{a:?}");
    eventually("the deleted source's snapshot is gone", || {
        w.snapshots()
            .iter()
            .all(|s| s.metadata.name.as_deref() != Some(COPY))
            .then_some(())
    })
    .await;

    // A new value releases the new source as usual.
    release(&mut w, path, "second").await;
    w.wait_successful_runs("db2", 1).await;
    assert_eq!(w.copy_annotations()[LATEST], "second");
}

#[tokio::test]
async fn a_source_deleted_while_its_run_is_in_progress_leaves_its_annotation_value_consumed() {
    a_deleted_sources_value_is_consumed(Path::Annotation).await;
}

#[tokio::test]
async fn a_source_deleted_while_its_run_is_in_progress_leaves_its_trigger_rpc_value_consumed() {
    a_deleted_sources_value_is_consumed(Path::Rpc).await;
}

/// Waits until snapgate's waiting annotations are gone from the source PVC.
async fn not_waiting(w: &World) {
    eventually("no WaitingForTrigger on the PVC", || {
        let a = w.copy_annotations();
        (!a.contains_key(STATUS) && !a.contains_key(SINCE)).then_some(())
    })
    .await;
}

#[tokio::test]
async fn a_paused_source_asks_nobody_to_quiesce() {
    let mut w = World::start().await;
    w.start_probe().await;
    w.create_pvc(true);
    w.apply(
        SOURCE,
        restic_spec(CopyMethod::Snapshot, Duration::from_secs(600)),
    )
    .await;
    w.wait_copy_status("WaitingForTrigger").await;

    // Paused and resumed with no trigger: the wait is withdrawn, then asked for again.
    w.pause(SOURCE).await;
    not_waiting(&w).await;
    w.resume(SOURCE).await;
    w.wait_copy_status("WaitingForTrigger").await;

    w.pause(SOURCE).await;
    not_waiting(&w).await;
    let status = w.copy_status().await;
    assert_eq!(status.state(), CopyState::Pending, "{status:?}");
    assert!(status.reason.contains("paused"), "{status:?}");
    match w.sdk.trigger(&target(), None, "first").await {
        Err(Error::Refused { code, message }) => {
            assert_eq!(code, tonic::Code::FailedPrecondition, "{message}");
            assert!(message.contains("paused"), "{message}");
        }
        other => panic!("a paused source takes no trigger: {other:?}"),
    }
    // The application (or a user) writes a value anyway: it waits for the resume.
    w.annotate_trigger("first").await;
    w.round_trip().await;
    let run = w.runs(SOURCE).await.remove(0);
    assert_eq!(
        (run.phase(), run.trigger.as_str()),
        (RunPhase::Gating, ""),
        "not released while paused: {run:#?}"
    );
    let a = w.copy_annotations();
    assert_eq!(
        a.keys().map(String::as_str).collect::<Vec<_>>(),
        [TRIGGER],
        "nothing marked: {a:?}"
    );
    assert!(w.snapshots().is_empty(), "no copy while paused");

    w.resume(SOURCE).await;
    let run = w
        .run_when(SOURCE, "released on resume", |r| r.trigger == "first")
        .await;
    assert_ne!(run.phase(), RunPhase::WaitingForTrigger, "{run:#?}");
    w.wait_successful_runs(SOURCE, 1).await;
    let a = w.copy_annotations();
    assert_eq!(a.get(STATUS).map(String::as_str), Some("Completed"));
    assert_eq!(a.get(LATEST).map(String::as_str), Some("first"));
}

fn cut_not_ready(w: &World) {
    let snap = w.sim.get::<VolumeSnapshot>(Some(NS), COPY).unwrap();
    let status = snap.status.unwrap_or_default();
    assert!(status.creation_time.is_some(), "cut: {status:?}");
    assert_eq!(status.ready_to_use, Some(false), "still uploading");
}

#[tokio::test]
async fn a_snapshot_cut_long_before_it_is_ready_completes_at_the_cut() {
    let mut w = waiting_run(SnapshotBehaviour::CutNeverReady).await;
    w.start_probe().await;
    w.annotate_trigger("first").await;
    w.wait_copy_status("Completed").await;
    cut_not_ready(&w);
    assert_eq!(w.copy_annotations()[LATEST], "first");
    let status = eventually_async!("the copy status says Completed", {
        let s = w.sdk.copy_status(&target()).await.unwrap();
        (s.state() == CopyState::Completed).then_some(s)
    });
    assert_eq!(status.trigger, "first");
    w.run_when(SOURCE, "transferring", phase_is(RunPhase::Transferring))
        .await;
    // Every directive up to the TRANSFER was handled: nothing is restored or moved from a
    // snapshot still uploading.
    w.round_trip().await;
    cut_not_ready(&w);
    assert!(!w.pvc_names().contains(&COPY.to_owned()), "no restored PVC");
    assert!(
        w.jobs()
            .iter()
            .all(|j| j.metadata.name.as_deref() != Some(MoverKind::Restic.job())),
        "no mover Job"
    );

    w.patch_status::<VolumeSnapshot>(
        COPY,
        serde_json::json!({ "readyToUse": true, "restoreSize": "1Gi" }),
    )
    .await;
    eventually("the mover Job, once the snapshot is ready", || {
        w.jobs()
            .iter()
            .any(|j| j.metadata.name.as_deref() == Some(MoverKind::Restic.job()))
            .then_some(())
    })
    .await;
    w.wait_successful_runs(SOURCE, 1).await;
}
