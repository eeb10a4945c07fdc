//! The SDK against the whole system: the guard quiesces while the PVC says WaitingForTrigger,
//! and unquiesces after Completed, or on every failure the real agent and cluster produce;
//! the annotation path and the Trigger path on one PVC in successive runs stay consistent.

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use k8s_openapi::api::core::v1::PersistentVolumeClaim;
use snapgate_e2e::*;
use snapgate_kube_sim::{PvcBehaviour, SnapshotBehaviour};
use snapgate_proto::v1::{self, CopyMethod};
use snapgate_sdk::{Error, GuardOptions, Outcome};
use tonic::Code;

const COPY: &str = "volsync-db-src";

/// What the application saw: the PVC's status when it quiesced and when it unquiesced.
#[derive(Default, Debug)]
struct Seen {
    at_quiesce: Option<String>,
    at_unquiesce: Option<(Option<String>, Option<String>)>,
}

async fn guarded(
    w: &World,
    options: GuardOptions,
) -> (Result<snapgate_sdk::GuardedCopy, Error>, Seen) {
    let seen = Arc::new(Mutex::new(Seen::default()));
    let (sim_q, sim_u) = (w.sim.clone(), w.sim.clone());
    let (q, u) = (seen.clone(), seen.clone());
    let status_of = |sim: &snapgate_kube_sim::KubeSim| {
        let a = pvc_annotations(sim);
        (a.get(STATUS).cloned(), a.get(LATEST).cloned())
    };
    let result = w
        .sdk
        .quiesced_copy(
            target(),
            move |_request| async move {
                let (status, _) = status_of(&sim_q);
                q.lock().unwrap().at_quiesce = status;
                Ok::<_, Error>(())
            },
            move || async move {
                let seen = status_of(&sim_u);
                u.lock().unwrap().at_unquiesce = Some(seen);
                Ok::<_, Error>(())
            },
            options,
        )
        .await;
    let seen = std::mem::take(&mut *seen.lock().unwrap());
    (result, seen)
}

#[tokio::test]
async fn the_guard_quiesces_while_waiting_and_unquiesces_once_the_copy_is_completed() {
    let mut w = World::start().await;
    w.create_pvc(true);
    w.apply(
        SOURCE,
        restic_spec(CopyMethod::Snapshot, Duration::from_secs(600)),
    )
    .await;
    let options = GuardOptions::default().trigger_value(|r| format!("app-{}", r.run_id));
    let (result, seen) = guarded(&w, options).await;
    let copy = result.unwrap();
    assert_eq!(seen.at_quiesce.as_deref(), Some("WaitingForTrigger"));
    assert_eq!(
        seen.at_unquiesce,
        Some((Some("Completed".into()), Some(copy.trigger.clone()))),
        "unquiesced only after Completed with the guard's value"
    );
    assert_eq!(copy.trigger, format!("app-{}", copy.run_id));
    w.wait_successful_runs(SOURCE, 1).await;
}

/// The snapshot is never cut: the guard's hold lease (what is left of its 5 s hold limit)
/// runs out first. No copy is counted, the guard unquiesces with LeaseExpired before its limit,
/// and the run waits again with the guard's value spent and its uncut snapshot deleted.
#[tokio::test]
async fn the_guard_unquiesces_when_the_copy_is_never_cut_within_its_hold_and_no_copy_is_counted() {
    let mut w = World::start().await;
    w.sim
        .snapshot_behaviour(NS, COPY, SnapshotBehaviour::NeverReady);
    w.create_pvc(true);
    w.apply(
        SOURCE,
        restic_spec(CopyMethod::Snapshot, Duration::from_secs(600)),
    )
    .await;
    let (result, seen) = guarded(
        &w,
        // The scheduler's word that the lease ran out must reach the guard within the transit
        // allowance (a tenth of the limit): 500 ms, so that a loaded machine does not turn the
        // race this test is about the other way. (The world runs on the wall clock.)
        GuardOptions::default().hold_limit(Duration::from_secs(5)),
    )
    .await;
    let value = match result {
        Err(Error::LeaseExpired { value, .. }) => value,
        other => panic!("expected LeaseExpired, got {other:?}"),
    };
    assert_eq!(
        seen.at_unquiesce.map(|s| s.0),
        Some(Some("WaitingForTrigger".into())),
        "unquiesced once the run was sent back to waiting"
    );
    let annotations = eventually("the spent value on the PVC", || {
        let a = pvc_annotations(&w.sim);
        (a.get(LATEST) == Some(&value)
            && a.get(STATUS).map(String::as_str) == Some("WaitingForTrigger"))
        .then_some(a)
    })
    .await;
    assert!(annotations.contains_key(SINCE), "{annotations:?}");
    eventually("the uncut snapshot deleted", || {
        w.snapshots().is_empty().then_some(())
    })
    .await;
}

#[tokio::test]
async fn the_guard_unquiesces_when_the_run_fails_because_the_clone_lost_its_volume() {
    let mut w = World::start().await;
    w.sim.pvc_behaviour(NS, COPY, PvcBehaviour::NeverBind);
    w.create_pvc(true);
    w.apply(
        SOURCE,
        restic_spec(CopyMethod::Clone, Duration::from_secs(600)),
    )
    .await;
    let guard = guarded(&w, GuardOptions::default());
    let lose = async {
        eventually("the clone", || {
            w.pvc_names().contains(&COPY.to_owned()).then_some(())
        })
        .await;
        w.patch_status::<PersistentVolumeClaim>(COPY, serde_json::json!({"phase": "Lost"}))
            .await;
    };
    let ((result, seen), ()) = tokio::join!(guard, lose);
    match result {
        Err(Error::CopyFailed {
            outcome, reason, ..
        }) => {
            assert_eq!(outcome, Outcome::Failed);
            assert!(reason.contains("CloneLost"), "{reason}");
        }
        other => panic!("expected CopyFailed, got {other:?}"),
    }
    assert!(seen.at_unquiesce.is_some(), "unquiesced after the failure");
}

#[tokio::test]
async fn the_guard_unquiesces_when_the_source_is_deleted_while_it_is_quiesced() {
    let mut w = World::start().await;
    w.sim
        .snapshot_behaviour(NS, COPY, SnapshotBehaviour::NeverReady);
    w.create_pvc(true);
    w.apply(
        SOURCE,
        restic_spec(CopyMethod::Snapshot, Duration::from_secs(600)),
    )
    .await;
    let mut sources = w.sources.clone();
    let guard = guarded(&w, GuardOptions::default());
    let delete = async {
        eventually("InProgress", || {
            (w.copy_annotations().get(STATUS).map(String::as_str) == Some("InProgress"))
                .then_some(())
        })
        .await;
        sources
            .delete_source(v1::DeleteSourceRequest {
                namespace: NS.into(),
                name: SOURCE.into(),
                expected_version: 0,
            })
            .await
            .unwrap();
    };
    let ((result, seen), ()) = tokio::join!(guard, delete);
    match result {
        Err(Error::CopyFailed { outcome, .. }) => assert_eq!(outcome, Outcome::Aborted),
        other => panic!("expected an aborted copy, got {other:?}"),
    }
    assert!(seen.at_unquiesce.is_some());
    eventually("the deleted source's snapshot is cleaned up", || {
        w.snapshots().is_empty().then_some(())
    })
    .await;
}

#[tokio::test]
async fn the_annotation_and_trigger_paths_on_one_pvc_in_successive_runs_stay_consistent() {
    let mut w = World::start().await;
    w.create_pvc(true);
    w.apply(
        SOURCE,
        restic_spec(CopyMethod::Clone, Duration::from_secs(600)),
    )
    .await;

    // Run 1: the user annotates.
    w.wait_copy_status("WaitingForTrigger").await;
    w.annotate_trigger("a1").await;
    w.wait_successful_runs(SOURCE, 1).await;
    assert_eq!(w.copy_annotations()[LATEST], "a1");

    // Run 2: the application triggers through the SDK; the annotations tell the same story.
    w.sync_now(SOURCE, "run-2").await;
    let request = w.sdk.wait_for_copy_request(&target()).await.unwrap();
    assert_eq!(request.status.latest_trigger, "a1");
    let refused = w
        .sdk
        .trigger(&target(), Some(&request.run_id), "a1")
        .await
        .unwrap_err();
    assert_eq!(
        refused.code(),
        Some(Code::InvalidArgument),
        "the value of latest-copy-trigger cannot release a new copy"
    );
    w.sdk
        .trigger(&target(), Some(&request.run_id), "s2")
        .await
        .unwrap();
    w.wait_successful_runs(SOURCE, 2).await;
    let a = w.copy_annotations();
    assert_eq!(a[TRIGGER], "s2", "the Trigger RPC wrote copy-trigger");
    assert_eq!(a[LATEST], "s2");
    assert_eq!(a[STATUS], "Completed");

    // Run 3: the user annotates again; the SDK's value is history.
    w.sync_now(SOURCE, "run-3").await;
    w.wait_copy_status("WaitingForTrigger").await;
    let stale = w.sdk.trigger(&target(), None, "s2").await.unwrap_err();
    assert_eq!(stale.code(), Some(Code::InvalidArgument));
    w.annotate_trigger("a3").await;
    w.wait_successful_runs(SOURCE, 3).await;
    assert_eq!(w.copy_annotations()[LATEST], "a3");

    let runs = w.runs(SOURCE).await;
    let mut by_trigger: Vec<(String, String)> = runs
        .iter()
        .map(|r| (r.trigger.clone(), r.released_by.clone()))
        .collect();
    by_trigger.sort();
    assert_eq!(
        by_trigger,
        [
            ("a1".to_owned(), "annotation".to_owned()),
            ("a3".to_owned(), "annotation".to_owned()),
            ("s2".to_owned(), "rpc".to_owned()),
        ]
    );
}

#[tokio::test]
async fn a_run_released_by_hand_during_the_quiesce_is_not_reported_as_the_applications_copy() {
    let mut w = World::start().await;
    w.create_pvc(true);
    w.apply(
        SOURCE,
        restic_spec(CopyMethod::Snapshot, Duration::from_secs(600)),
    )
    .await;
    let unquiesced = Arc::new(Mutex::new(0));
    let counter = unquiesced.clone();
    let result = w
        .sdk
        .quiesced_copy(
            target(),
            |_request| async {
                // While the application quiesces, a user annotates the PVC by hand: that copy
                // is not inside this application's hold, whatever the timing.
                annotate_pvc(&w.sim, serde_json::json!({ TRIGGER: "by-hand" })).await;
                eventually("the hand-written value releases the run", || {
                    (pvc_annotations(&w.sim).get(STATUS).map(String::as_str)
                        != Some("WaitingForTrigger"))
                    .then_some(())
                })
                .await;
                Ok::<_, Error>(())
            },
            move || async move {
                *counter.lock().unwrap() += 1;
                Ok::<_, Error>(())
            },
            GuardOptions::default(),
        )
        .await;
    match result {
        Err(Error::ReleasedByAnother {
            value, released_by, ..
        }) => {
            assert_eq!(value, "by-hand", "the value that released the run");
            assert_eq!(released_by, "annotation");
        }
        other => panic!("not this application's copy: {other:?}"),
    }
    assert_eq!(*unquiesced.lock().unwrap(), 1, "unquiesced once, always");
}
