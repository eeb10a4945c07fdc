//! The spec's acceptance scenarios 1-8 (copy-trigger.md section 8), for each of the four
//! movers, for Clone and Snapshot, through the annotation path and the Trigger RPC path: a real scheduler over gRPC, the
//! agent's real code, and the simulated API server, with the PVC annotations read back from
//! the API server exactly.
//!
//! The scenarios run on paused time: a wait timeout passes in an instant, and what must not
//! happen is shown by letting time pass (see [`let_pass`]) before the cluster is looked at.

use std::time::Duration;

use k8s_openapi::api::core::v1::PersistentVolumeClaim;
use snapgate_agent_core::resources::VolumeSnapshot;
use snapgate_e2e::{eventually_async, *};
use snapgate_kube_sim::{JobBehaviour, PvcBehaviour, SnapshotBehaviour, Verb};
use snapgate_proto::v1::{CopyMethod, CopyState};

const COPY: &str = "volsync-db-src";

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Path {
    Annotation,
    Rpc,
}

async fn trigger(w: &mut World, path: Path, value: &str) {
    match path {
        Path::Annotation => w.annotate_trigger(value).await,
        Path::Rpc => {
            // What an application does through the SDK: wait for the request, trigger it.
            let request = w.sdk.wait_for_copy_request(&target()).await.unwrap();
            assert_eq!(request.status.state(), CopyState::WaitingForTrigger);
            let answer = w
                .sdk
                .trigger(&target(), Some(&request.run_id), value)
                .await
                .unwrap();
            assert_eq!(answer.run_id, request.run_id);
        }
    }
}

fn waiting(w: &World) -> Option<std::collections::BTreeMap<String, String>> {
    let a = w.copy_annotations();
    (a.get(STATUS).map(String::as_str) == Some("WaitingForTrigger") && a.contains_key(SINCE))
        .then_some(a)
}

fn copies(w: &World, method: CopyMethod) -> usize {
    match method {
        CopyMethod::Snapshot => w.snapshots().len(),
        _ => w.pvc_names().iter().filter(|n| *n == COPY).count(),
    }
}

/// Makes the held-back copy ready the way the cluster's controllers would.
async fn make_copy_ready(w: &World, method: CopyMethod, readiness_unset: bool) {
    match method {
        CopyMethod::Snapshot => {
            // The sim's controller bound it with readyToUse=false (scenario 8's "not ready").
            eventually("the snapshot is bound but not ready", || {
                w.snapshots().first().and_then(|s| {
                    s.status
                        .as_ref()
                        .filter(|st| {
                            st.bound_volume_snapshot_content_name.is_some()
                                && st.ready_to_use == Some(false)
                        })
                        .map(|_| ())
                })
            })
            .await;
            // readyToUse=false is not the copy point: not after 65 s either (past the agent's
            // resync; within the Trigger's default hold lease of 10 minutes).
            let_pass(Duration::from_secs(65)).await;
            assert_eq!(
                w.copy_annotations().get(STATUS).map(String::as_str),
                Some("InProgress"),
                "readyToUse=false must not complete the copy"
            );
            let ready = if readiness_unset {
                serde_json::json!({ "readyToUse": null })
            } else {
                serde_json::json!({ "readyToUse": true, "restoreSize": "1Gi" })
            };
            w.patch_status::<VolumeSnapshot>(COPY, ready).await;
        }
        _ => {
            // Not after 65 s either (past the agent's resync; within the Trigger's default
            // hold lease of 10 minutes).
            let_pass(Duration::from_secs(65)).await;
            assert_eq!(
                w.copy_annotations().get(STATUS).map(String::as_str),
                Some("InProgress"),
                "an unbound clone must not complete the copy"
            );
            w.patch_status::<PersistentVolumeClaim>(COPY, serde_json::json!({ "phase": "Bound" }))
                .await;
        }
    }
}

async fn replay(mover: MoverKind, method: CopyMethod, path: Path) {
    let mut w = World::start().await;
    if let Some(secret) = mover.secret() {
        w.sim.create(&secret).unwrap();
    }
    w.sim
        .job_behaviour(NS, mover.job(), JobBehaviour::succeed(mover.log()));
    match method {
        CopyMethod::Snapshot => w
            .sim
            .snapshot_behaviour(NS, COPY, SnapshotBehaviour::NeverReady),
        _ => w.sim.pvc_behaviour(NS, COPY, PvcBehaviour::NeverBind),
    }
    w.create_pvc(true);
    w.apply(SOURCE, mover.spec(method, Duration::from_secs(2)))
        .await;

    // 1. WaitingForTrigger + waiting-since, no copy, no latest-copy-trigger.
    let a = eventually("scenario 1: WaitingForTrigger", || waiting(&w)).await;
    assert!(!a.contains_key(LATEST), "{a:?}");
    assert!(!a.contains_key(TRIGGER), "{a:?}");
    let since = &a[SINCE];
    assert!(
        since.ends_with('Z') && since.len() == "2026-01-02T03:04:05Z".len(),
        "waiting-since is RFC 3339 UTC in seconds: {since}"
    );
    assert_eq!(copies(&w, method), 0, "no copy before the trigger");
    eventually("the waiting Event", || {
        w.event_reasons()
            .contains(&"SrcPVCWaitingForCopyTrigger".to_owned())
            .then_some(())
    })
    .await;

    // 2. The timeout passes: Failed with VolSync's text, still waiting, no copy.
    let source = eventually_async!("scenario 2: the timeout is reported", {
        let s = w.source(SOURCE).await;
        s.status
            .as_ref()
            .and_then(|st| st.latest_mover_status.as_ref())
            .is_some_and(|m| {
                m.result == "Failed" && m.logs == snapgate_contract::timeout_message("data")
            })
            .then_some(s)
    });
    assert!(source.status.unwrap().last_sync_time.is_none());
    eventually("the timeout Warning Event", || {
        w.event_reasons()
            .contains(&"SrcPVCTimeoutWaitingForCopyTrigger".to_owned())
            .then_some(())
    })
    .await;
    let a = waiting(&w).expect("still WaitingForTrigger after the timeout");
    assert_eq!(a[SINCE], *since, "waiting-since is not rewritten");
    assert_eq!(copies(&w, method), 0);

    // 3. Trigger `first`: InProgress, waiting-since gone, exactly one copy.
    trigger(&mut w, path, "first").await;
    let a = eventually("scenario 3: InProgress", || {
        let a = w.copy_annotations();
        (a.get(STATUS).map(String::as_str) == Some("InProgress")).then_some(a)
    })
    .await;
    assert!(!a.contains_key(SINCE), "{a:?}");
    assert!(!a.contains_key(LATEST), "{a:?}");
    if path == Path::Rpc {
        assert_eq!(
            a[TRIGGER], "first",
            "the Trigger RPC writes copy-trigger: {a:?}"
        );
    }
    eventually("exactly one copy", || {
        (copies(&w, method) == 1).then_some(())
    })
    .await;

    // 8 (and 4). Not ready is not the copy point; ready (readyToUse unset counts) is.
    make_copy_ready(&w, method, true).await;
    let a = eventually("scenario 4: Completed", || {
        let a = w.copy_annotations();
        (a.get(STATUS).map(String::as_str) == Some("Completed")).then_some(a)
    })
    .await;
    assert_eq!(a[LATEST], "first");
    assert!(!a.contains_key(SINCE));
    let source = w.wait_successful_runs(SOURCE, 1).await;
    let status = source.status.unwrap();
    let mover_status = status.latest_mover_status.unwrap();
    assert_eq!(mover_status.result, "Successful");
    assert_eq!(
        mover_status.logs,
        mover.tail(),
        "the log tail keeps the mover's summary lines only"
    );
    assert!(status.last_sync_time.is_some());
    eventually("the temporary objects are cleaned up", || {
        (w.snapshots().is_empty()
            && w.jobs().is_empty()
            && w.pvc_names()
                == [Some(PVC), mover.cache()]
                    .into_iter()
                    .flatten()
                    .map(str::to_owned)
                    .collect::<Vec<_>>())
        .then_some(())
    })
    .await;
    let reasons = w.event_reasons();
    for r in [
        "SrcPVCCopyTriggerReceived",
        "SrcPVCCopyUsingCopyTriggerCompleted",
        "TransferStarted",
    ] {
        assert!(reasons.contains(&r.to_owned()), "{r} in {reasons:?}");
    }

    // 5. The next run waits again; latest-copy-trigger is still `first`; no new copy.
    w.sync_now(SOURCE, "second-run").await;
    let a = eventually("scenario 5: WaitingForTrigger again", || waiting(&w)).await;
    assert_eq!(a[LATEST], "first");
    assert_eq!(copies(&w, method), 0);

    // 6. Trigger `second`: a second copy, then Completed with latest-copy-trigger=second.
    trigger(&mut w, path, "second").await;
    eventually("the second copy", || {
        (copies(&w, method) == 1).then_some(())
    })
    .await;
    make_copy_ready(&w, method, false).await;
    let a = eventually("scenario 6: Completed with second", || {
        let a = w.copy_annotations();
        (a.get(STATUS).map(String::as_str) == Some("Completed")
            && a.get(LATEST).map(String::as_str) == Some("second"))
        .then_some(a)
    })
    .await;
    assert!(!a.contains_key(SINCE));
    w.wait_successful_runs(SOURCE, 2).await;
    let runs = w.runs(SOURCE).await;
    let triggers: Vec<&str> = runs.iter().map(|r| r.trigger.as_str()).collect();
    assert!(
        triggers.contains(&"first") && triggers.contains(&"second"),
        "each run records the value that released it: {triggers:?}"
    );
}

macro_rules! scenarios {
    ($($name:ident: $mover:ident, $method:ident, $path:ident;)*) => {$(
        #[tokio::test(start_paused = true)]
        async fn $name() {
            replay(MoverKind::$mover, CopyMethod::$method, Path::$path).await;
        }
    )*};
}

scenarios! {
    restic_clone_scenarios_1_to_6_and_8_through_annotations: Restic, Clone, Annotation;
    restic_clone_scenarios_1_to_6_and_8_through_the_trigger_rpc: Restic, Clone, Rpc;
    restic_snapshot_scenarios_1_to_6_and_8_through_annotations: Restic, Snapshot, Annotation;
    restic_snapshot_scenarios_1_to_6_and_8_through_the_trigger_rpc: Restic, Snapshot, Rpc;
    rclone_clone_scenarios_1_to_6_and_8_through_annotations: Rclone, Clone, Annotation;
    rclone_clone_scenarios_1_to_6_and_8_through_the_trigger_rpc: Rclone, Clone, Rpc;
    rclone_snapshot_scenarios_1_to_6_and_8_through_annotations: Rclone, Snapshot, Annotation;
    rclone_snapshot_scenarios_1_to_6_and_8_through_the_trigger_rpc: Rclone, Snapshot, Rpc;
    rsync_clone_scenarios_1_to_6_and_8_through_annotations: Rsync, Clone, Annotation;
    rsync_clone_scenarios_1_to_6_and_8_through_the_trigger_rpc: Rsync, Clone, Rpc;
    rsync_snapshot_scenarios_1_to_6_and_8_through_annotations: Rsync, Snapshot, Annotation;
    rsync_snapshot_scenarios_1_to_6_and_8_through_the_trigger_rpc: Rsync, Snapshot, Rpc;
    rsync_tls_clone_scenarios_1_to_6_and_8_through_annotations: RsyncTls, Clone, Annotation;
    rsync_tls_clone_scenarios_1_to_6_and_8_through_the_trigger_rpc: RsyncTls, Clone, Rpc;
    rsync_tls_snapshot_scenarios_1_to_6_and_8_through_annotations: RsyncTls, Snapshot, Annotation;
    rsync_tls_snapshot_scenarios_1_to_6_and_8_through_the_trigger_rpc: RsyncTls, Snapshot, Rpc;
}

async fn ungated(method: CopyMethod) {
    let mut w = World::start().await;
    w.create_pvc(false);
    w.apply(SOURCE, restic_spec(method, Duration::from_secs(60)))
        .await;
    w.wait_successful_runs(SOURCE, 1).await;
    assert!(
        w.copy_annotations().is_empty(),
        "no copy-trigger annotation on an ungated PVC: {:?}",
        w.copy_annotations()
    );
    let patches = w.sim.requests().count(|r| {
        r.verb == Some(Verb::Patch)
            && r.resource == "persistentvolumeclaims"
            && r.name.as_deref() == Some(PVC)
    });
    assert_eq!(patches, 0, "the agent never patched the ungated PVC");
    let made = match method {
        CopyMethod::Snapshot => w.sim.requests().count_verb(Verb::Create, "volumesnapshots"),
        _ => {
            w.sim
                .requests()
                .count(|r| r.verb == Some(Verb::Create) && r.resource == "persistentvolumeclaims")
                - 1
        } // the restic cache
    };
    assert_eq!(made, 1, "exactly one copy was made");
}

#[tokio::test]
async fn scenario_7_an_ungated_clone_is_copied_and_moved_without_copy_trigger_annotations() {
    ungated(CopyMethod::Clone).await;
}

#[tokio::test]
async fn scenario_7_an_ungated_snapshot_is_copied_and_moved_without_copy_trigger_annotations() {
    ungated(CopyMethod::Snapshot).await;
}

#[tokio::test]
async fn a_continuous_source_that_skips_its_initial_run_waits_for_sync_now_then_runs_continuously()
{
    let mut w = World::start().await;
    w.create_pvc(true);
    let mut spec = restic_spec(CopyMethod::Clone, Duration::from_secs(60));
    spec.trigger = None;
    spec.skip_initial_run = true;
    // The apply answers after the scheduler decided whether a run starts now: none does.
    let source = w.apply(SOURCE, spec).await;
    let status = source.status.unwrap();
    assert!(status.current_run_id.is_empty(), "{status:?}");
    let cond = status
        .conditions
        .iter()
        .find(|c| c.r#type == "Synchronizing")
        .unwrap();
    assert_eq!(cond.reason, "WaitingForSyncNow", "{cond:?}");
    assert!(cond.message.contains("skipInitialRun"), "{cond:?}");
    assert!(w.runs(SOURCE).await.is_empty());

    // SyncNow starts the first run; from then on each run follows the previous one.
    let first = w.sync_now(SOURCE, "start").await;
    w.wait_copy_status("WaitingForTrigger").await;
    w.annotate_trigger("a").await;
    w.wait_successful_runs(SOURCE, 1).await;
    let runs = eventually_async!("the next run starts by itself", {
        let runs = w.runs(SOURCE).await;
        (runs.len() >= 2).then_some(runs)
    });
    assert!(runs.iter().any(|r| r.id == first), "{runs:?}");
    w.wait_copy_status("WaitingForTrigger").await;
}

#[tokio::test]
async fn under_the_skip_policy_a_timed_out_run_ends_and_its_waiting_annotations_are_cleared() {
    let mut w = World::start().await;
    w.create_pvc(true);
    let mut spec = restic_spec(CopyMethod::Snapshot, Duration::from_secs(1));
    spec.copy_trigger.as_mut().unwrap().on_timeout = snapgate_proto::v1::TimeoutPolicy::Skip as i32;
    w.apply(SOURCE, spec).await;
    w.wait_copy_status("WaitingForTrigger").await;
    let runs = eventually_async!("the run times out", {
        let runs = w.runs(SOURCE).await;
        runs.iter()
            .any(|r| r.result() == snapgate_proto::v1::RunResult::TimedOut)
            .then_some(runs)
    });
    assert_eq!(runs.len(), 1);
    eventually("the waiting annotations are cleared", || {
        w.copy_annotations().is_empty().then_some(())
    })
    .await;
    assert_eq!(copies(&w, CopyMethod::Snapshot), 0, "no copy was made");
    assert_eq!(
        w.annotations().get(USE).map(String::as_str),
        Some(""),
        "the user's use-copy-trigger is left alone"
    );
}

#[tokio::test]
async fn removing_use_copy_trigger_while_waiting_releases_the_run_and_removes_the_stale_annotations()
 {
    let mut w = World::start().await;
    w.create_pvc(true);
    w.apply(
        SOURCE,
        restic_spec(CopyMethod::Clone, Duration::from_secs(600)),
    )
    .await;
    w.wait_copy_status("WaitingForTrigger").await;
    annotate_pvc(&w.sim, serde_json::json!({ USE: null })).await;
    w.wait_successful_runs(SOURCE, 1).await;
    assert!(
        w.copy_annotations().is_empty() && !w.annotations().contains_key(USE),
        "no copy-trigger annotation left: {:?}",
        w.annotations()
    );
}

#[tokio::test(start_paused = true)]
async fn editing_a_sources_pvc_mid_run_leaves_the_run_on_the_pvc_it_started_on() {
    let mut w = World::start().await;
    w.create_pvc(true);
    let mut other = source_pvc(true);
    other.metadata.name = Some("other".into());
    w.sim.create(&other).unwrap();
    let source = w
        .apply(
            SOURCE,
            restic_spec(CopyMethod::Snapshot, Duration::from_secs(600)),
        )
        .await;
    w.wait_copy_status("WaitingForTrigger").await;
    let mut edited = restic_spec(CopyMethod::Snapshot, Duration::from_secs(600));
    edited.source_pvc = "other".into();
    w.sources
        .apply_source(snapgate_proto::v1::ApplySourceRequest {
            namespace: NS.into(),
            name: SOURCE.into(),
            spec: Some(edited),
            expected_version: source.version,
        })
        .await
        .unwrap();
    // Two minutes pass (the agent's resync among them) with the run on the old PVC.
    let_pass(Duration::from_secs(120)).await;
    let other_annotations = w
        .sim
        .get::<k8s_openapi::api::core::v1::PersistentVolumeClaim>(Some(NS), "other")
        .unwrap()
        .metadata
        .annotations
        .unwrap_or_default();
    assert!(
        !other_annotations.contains_key(STATUS),
        "the new PVC is not touched by the run in flight: {other_annotations:?}"
    );
    w.annotate_trigger("first").await;
    w.wait_successful_runs(SOURCE, 1).await;
    assert_eq!(w.copy_annotations()[LATEST], "first");
}
