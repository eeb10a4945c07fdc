//! The process fault matrix: the scheduler, the agent, or both killed with SIGKILL and started
//! again, or the API server failing the agent's next writes, at each phase of a gated run, with
//! the real binaries as separate processes (the scheduler on its redb store, the agent reading
//! a kubeconfig, the `snapgate` CLI, kube-sim serving the Kubernetes REST API).
//!
//! | phase at the fault | what the PVC says |
//! |---|---|
//! | waiting | `WaitingForTrigger`, no trigger written yet |
//! | triggered | a Trigger call just answered (the CLI's, 120 s hold); the PVC marked or not yet |
//! | released | `InProgress`: the trigger taken, the VolumeSnapshot made but not yet cut |
//! | copied | `Completed`: the copy point is past, the mover's Job made (`Transferring`) |
//!
//! The snapshot is held uncut until the test cuts it (kube-sim hosted in the test, the same
//! server its binary runs), so that the released phase is caught every time.
//!
//! After each, the run carries on from where it was, and the invariants hold: the run ends
//! `Successful` and is the only run; exactly one VolumeSnapshot was ever made for it (one
//! object, one uid, across the restarts); the PVC says `Completed` with the value that released
//! it as `latest-copy-trigger` and no waiting mark; nothing the run made is left in the
//! namespace.

mod support;

use std::collections::BTreeSet;

use kube::api::{Patch, PatchParams};
use kube::{
    Api,
    api::{DynamicObject, ListParams},
};
use snapgate_contract::{
    LATEST_COPY_STATUS as STATUS, LATEST_COPY_TRIGGER as LATEST,
    LATEST_COPY_TRIGGER_WAITING_SINCE as SINCE,
};
use snapgate_e2e::recorder::resource;
use snapgate_kube_sim::{FaultKind, FaultRule, SnapshotBehaviour, Verb};
use support::{Cluster, NS};

/// The run's VolumeSnapshot.
const COPY: &str = "volsync-db-src";
/// How long a recorded object may take to show the state a test waits for.
const WAIT: std::time::Duration = std::time::Duration::from_secs(15);

#[derive(Clone, Copy, Debug)]
enum Fault {
    Scheduler,
    Agent,
    /// The API server fails the next create (500), the one after (429, too many requests)
    /// and the next delete (500): whichever of the agent's writes come next at that phase.
    Api,
    /// The agent killed and started again, then the scheduler: each restarts from what it
    /// stored (the scheduler) or what the cluster shows (the agent).
    Both,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    Waiting,
    /// Right after a Trigger call was answered (the CLI's, as an application's SDK makes it);
    /// the agent may have marked the PVC `InProgress` already (it usually has).
    Triggered,
    Released,
    Copied,
}

const PHASES: [Phase; 4] = [
    Phase::Waiting,
    Phase::Triggered,
    Phase::Released,
    Phase::Copied,
];

async fn inject(c: &mut Cluster, fault: Fault) {
    match fault {
        Fault::Scheduler => c.restart_scheduler().await,
        Fault::Agent => c.restart_agent().await,
        Fault::Api => {
            let support::Sim::Hosted(sim) = &c.sim else {
                panic!("API faults need the hosted kube-sim");
            };
            let faults = sim.faults();
            for (code, verb) in [
                (500, Verb::Create),
                (429, Verb::Create),
                (500, Verb::Delete),
            ] {
                faults.fail(FaultRule::new(FaultKind::Status(code)).verb(verb).times(1));
            }
        }
        Fault::Both => {
            c.restart_agent().await;
            c.restart_scheduler().await;
        }
    }
}

fn status(a: &std::collections::BTreeMap<String, String>) -> &str {
    a.get(STATUS).map_or("", String::as_str)
}

/// The names of the objects of `plural` (group `group`, kind `kind`) in the namespace now.
async fn left(c: &Cluster, group: &str, kind: &str, plural: &str) -> Vec<String> {
    let api: Api<DynamicObject> =
        Api::namespaced_with(c.client.clone(), NS, &resource(group, kind, plural));
    api.list(&ListParams::default())
        .await
        .map(|l| {
            l.items
                .into_iter()
                .filter_map(|o| o.metadata.name)
                .collect()
        })
        .unwrap_or_default()
}

/// One cell of the matrix: a gated restic Snapshot run, `fault` at `phase`.
async fn scenario(fault: Fault, phase: Phase) {
    let cell = format!("{fault:?} killed at {phase:?}");
    let mut c = Cluster::start_hosted(|sim| {
        sim.snapshot_behaviour(NS, COPY, SnapshotBehaviour::NeverReady);
    })
    .await;
    let snapshots = c.record_snapshots().await;
    c.gated_db_source_waiting("").await;

    if phase == Phase::Waiting {
        inject(&mut c, fault).await;
    }
    if phase == Phase::Triggered {
        // The Trigger call answers once the release is stored, whatever happens next.
        c.cli_ok(&["trigger", "--pvc", "data", "--hold", "120s", "first"])
            .await;
        inject(&mut c, fault).await;
    } else {
        c.write_copy_trigger("data", "first").await;
    }
    c.wait_annotations("data", "the trigger taken", |a| status(a) == "InProgress")
        .await;
    snapshots
        .wait(COPY, "the copy made, not cut", WAIT, |o| {
            o["status"]["boundVolumeSnapshotContentName"].is_string()
        })
        .await;
    if phase == Phase::Released {
        inject(&mut c, fault).await;
    }
    // The copy is cut and ready, as the CSI driver would say.
    let api: Api<DynamicObject> = Api::namespaced_with(
        c.client.clone(),
        NS,
        &resource(
            "snapshot.storage.k8s.io",
            "VolumeSnapshot",
            "volumesnapshots",
        ),
    );
    api.patch_status(
        COPY,
        &PatchParams::default(),
        &Patch::Merge(serde_json::json!({"status": {
            "creationTime": chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            "readyToUse": true,
        }})),
    )
    .await
    .unwrap();
    c.wait_annotations("data", "the copy point past", |a| status(a) == "Completed")
        .await;
    if phase == Phase::Copied {
        c.wait_run("db", &format!("{cell}: its mover made"), |r| {
            r["phase"] == "Transferring"
        })
        .await;
        inject(&mut c, fault).await;
    }

    let run = c
        .wait_run("db", &format!("{cell}: finished"), |r| {
            r["phase"] == "Finished"
        })
        .await;
    assert_eq!(run["result"], "Successful", "{cell}: {run:#}\n{}", c.logs());
    assert_eq!(run["trigger"], "first", "{cell}: {run:#}");
    let runs = c.runs("db").await;
    assert_eq!(runs.len(), 1, "{cell}: one run, and only one: {runs:#?}");
    let a = c.annotations("data").await;
    assert_eq!(status(&a), "Completed", "{cell}: {a:?}");
    assert_eq!(
        a.get(LATEST).map(String::as_str),
        Some("first"),
        "{cell}: {a:?}"
    );
    assert!(!a.contains_key(SINCE), "{cell}: {a:?}");
    let uids: BTreeSet<String> = snapshots
        .versions(COPY)
        .iter()
        .filter_map(|o| o["metadata"]["uid"].as_str().map(str::to_owned))
        .collect();
    assert_eq!(
        uids.len(),
        1,
        "{cell}: exactly one copy made for the run, across the restarts: {:?}",
        snapshots.names()
    );
    assert_eq!(snapshots.names(), [COPY], "{cell}");
    // The run cleaned up after itself (its end is reported only once cleanup is done).
    assert_eq!(
        left(
            &c,
            "snapshot.storage.k8s.io",
            "VolumeSnapshot",
            "volumesnapshots"
        )
        .await,
        Vec::<String>::new(),
        "{cell}"
    );
    assert_eq!(
        left(&c, "batch", "Job", "jobs").await,
        Vec::<String>::new(),
        "{cell}"
    );
    if let (Fault::Api, support::Sim::Hosted(sim)) = (fault, &c.sim) {
        let failed = sim.requests().count(|r| matches!(r.code, 429 | 500));
        assert!(failed >= 1, "{cell}: no injected fault was ever answered");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_scheduler_killed_at_each_phase_of_a_gated_run_loses_nothing_and_copies_once() {
    for phase in PHASES {
        scenario(Fault::Scheduler, phase).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_killed_at_each_phase_of_a_gated_run_loses_nothing_and_copies_once() {
    for phase in PHASES {
        scenario(Fault::Agent, phase).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_errors_at_each_phase_of_a_gated_run_lose_nothing_and_copy_once() {
    for phase in PHASES {
        scenario(Fault::Api, phase).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_killed_at_each_phase_of_a_gated_run_lose_nothing_and_copy_once() {
    for phase in PHASES {
        scenario(Fault::Both, phase).await;
    }
}
