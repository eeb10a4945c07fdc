//! The process fault matrix: at each phase of a gated run, a fault of the processes (the
//! scheduler, the agent or both killed with SIGKILL and started again), of the network (a link
//! to the scheduler cut) or of the API server (errors, a hang, watches ended), with the real
//! binaries as separate processes (the scheduler on its redb store, the agent reading a
//! kubeconfig, the `snapgate` CLI, kube-sim serving the Kubernetes REST API).
//!
//! | phase at the fault | what the PVC and the run say |
//! |---|---|
//! | waiting | `WaitingForTrigger`, no trigger written yet (with an application: it is quiescing) |
//! | triggered | a Trigger call just answered (the CLI's, 120 s hold); the PVC marked or not yet |
//! | released | `InProgress`: the trigger taken, the VolumeSnapshot made but not yet cut |
//! | copied | `Completed`: the copy point is past, the mover's Job running (`Transferring`) |
//! | cleanup | the mover done, the run `CleaningUp`: the VolumeSnapshot deleted but held by a finalizer the test removes after the fault |
//!
//! | fault | what happens | phases |
//! |---|---|---|
//! | scheduler | SIGKILL, started again on its store | all |
//! | agent | SIGKILL, a new agent started | all |
//! | both | both SIGKILLed, both gone before either starts again (at once, not one after the other) | all |
//! | link | the agent's connection to the scheduler cut (a TCP proxy between them ends it and refuses every attempt) across the test's next step (the trigger written, the copy cut, the transfer ended, the finalizer removed; at triggered, none: the release must reach the agent), restored once the agent has tried twice; the agent reconnects, the scheduler resends | all |
//! | app link | an application holding the SDK's guard (`quiesced_copy`, its own value, 120 s hold limit) has its connection to the scheduler cut while it is quiesced: before its Trigger (restored once it has tried twice: the Trigger must pass), or with its run released and the copy not cut (restored only once the run is over); it must still get its outcome (`Ok`, the copy point inside its hold) and unquiesce | waiting, released |
//! | API errors | the next create answered 500, the one after 429, the next delete 500 | all but cleanup |
//! | API conflict | the next patch and the next update answered 409 Conflict | waiting, triggered, released |
//! | API timeout | the next create, patch and delete each hang 2 s, then 504 Timeout | all but cleanup |
//! | watches closed | every watch open ends (its stream closes), and the agent's next 2 watches are closed at once | all |
//! | watches expired | every watch open ends with a watch `ERROR` event `410 Gone`, reason `Expired`: the agent must list again | all |
//! | leader | the scheduler as two replicas on a real etcd behind a Service (`support::Replicas`): the leader SIGKILLed, started again as a follower; returns once a new tenure began (either replica's) and answers the CLI | all |
//! | leader partitioned | the same, the leader's link to etcd a black hole (nothing passes, nothing is closed) until it gave up its tenure by its own deadlines (it exits and is started again) and a new tenure began; then healed | all |
//! | etcd | the same, etcd SIGKILLed and started again on its data | all |
//! | app leader | the same as leader, while an application holds the SDK's guard (as for app link, its connection through the Service): it must reconnect to the next leader and still get its outcome inside its hold | waiting, released |
//!
//! The API server's faults are the agent's only (it has a token of its own): the test's
//! writes never meet them. Ending the open watches ends the test's recorder's watch too; it
//! watches again (from where it was, or listing again), and the one-copy invariant also
//! counts the copies the API server made.
//!
//! An API fault is only injected where the agent still makes such a request after the
//! phase: it writes no annotation once the copy point is past, and in cleanup it has deleted
//! everything already (it waits for the finalizer). Each cell asserts its fault was felt: one
//! of its API rules at least used up, the cut link or the ended watches open at the time, a
//! cut link tried again.
//!
//! The snapshot is held uncut until the test cuts it, and the mover's pod runs until the test
//! lets it end (kube-sim hosted in the test, the same server its binary runs), so that the
//! released and copied phases are caught every time.
//!
//! After each, the run carries on from where it was, and the invariants of
//! [`support::invariants`] hold: the run ends `Successful` and is the only run; exactly one
//! VolumeSnapshot was ever made for it (one object, one uid, one create answered, across the
//! restarts); the trigger value released exactly that run; the PVC says `Completed` with that
//! value as `latest-copy-trigger` and no waiting mark; the copy point lies inside the
//! application's hold where there is one (the CLI's 120 s, the guard's quiesce to unquiesce);
//! nothing the run made is left in the namespace.
//!
//! Past the matrix, one case: an application whose link is lost after its Trigger, for longer
//! than the guard's disconnect grace, while the copy is not cut. The guard cannot end its hold
//! (EndHold cannot reach the scheduler), so it stays quiesced until its hold limit, where the
//! run's lease has ended: a copy cut after it unquiesced is not counted
//! (`an_application_that_gives_up_on_a_lost_link_has_no_copy_counted_after_it_unquiesced`).
//!
//! The phases of one fault run concurrently (each cell has its own processes, ports and
//! directory), at most 6 cells of the whole matrix at a time; cargo runs the faults' tests as
//! many at a time as the machine has cores.

mod support;

use std::{
    convert::Infallible,
    sync::{Arc, Mutex},
    time::Duration,
};

use chrono::{DateTime, Utc};
use kube::{
    Api,
    api::{DynamicObject, Patch, PatchParams},
};
use snapgate_contract::LATEST_COPY_STATUS as STATUS;
use snapgate_e2e::recorder::resource;
use snapgate_kube_sim::{FaultKind, FaultRule, JobBehaviour, SnapshotBehaviour, Verb, WatchEnd};
use snapgate_sdk::{GuardOptions, GuardedCopy};
use support::{
    AGENT_USER, Cluster, NS, Proxy,
    invariants::{Expected, Hold, assert_run_invariants},
};
use tokio::{sync::oneshot, task::JoinHandle};

/// The run's VolumeSnapshot.
const COPY: &str = "volsync-db-src";
/// The run's mover Job.
const MOVER: &str = "volsync-src-db";
/// The value that releases the run.
const TRIGGER: &str = "first";
/// How long a recorded object may take to show the state a test waits for.
const WAIT: Duration = Duration::from_secs(15);
/// The finalizer that holds the copy's deletion in the cleanup phase.
const HOLD_CLEANUP: &str = "test.snapgate.io/hold-cleanup";
/// How many connection attempts a cut link must have refused before the test restores it.
const REFUSED: usize = 2;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Fault {
    Scheduler,
    Agent,
    Both,
    Link,
    AppLink,
    ApiErrors,
    ApiConflict,
    ApiTimeout,
    WatchesClosed,
    WatchesExpired,
    /// The scheduler as replicas on etcd: the leader SIGKILLed (a follower takes over).
    Leader,
    /// The scheduler as replicas on etcd: the leader partitioned from etcd (a black hole).
    LeaderPartitioned,
    /// The scheduler as replicas on etcd: etcd SIGKILLed and started again.
    Etcd,
    /// The scheduler as replicas on etcd: the leader SIGKILLed while an application holds
    /// the SDK's guard (through the Service, as in the cluster).
    AppLeader,
}

impl Fault {
    /// Whether the cell runs the scheduler as replicas on etcd.
    fn replicated(self) -> bool {
        matches!(
            self,
            Fault::Leader | Fault::LeaderPartitioned | Fault::Etcd | Fault::AppLeader
        )
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    Waiting,
    /// Right after a Trigger call was answered (the CLI's, as an application's SDK makes it);
    /// the agent may have marked the PVC `InProgress` already (it usually has).
    Triggered,
    Released,
    Copied,
    Cleanup,
}

use Phase::{Cleanup, Copied, Released, Triggered, Waiting};

const ALL: &[Phase] = &[Waiting, Triggered, Released, Copied, Cleanup];

/// The matrix: each fault and the phases it is injected at (the module's table).
const MATRIX: &[(Fault, &[Phase])] = &[
    (Fault::Scheduler, ALL),
    (Fault::Agent, ALL),
    (Fault::Both, ALL),
    (Fault::Link, ALL),
    (Fault::AppLink, &[Waiting, Released]),
    (Fault::ApiErrors, &[Waiting, Triggered, Released, Copied]),
    (Fault::ApiConflict, &[Waiting, Triggered, Released]),
    (Fault::ApiTimeout, &[Waiting, Triggered, Released, Copied]),
    (Fault::WatchesClosed, ALL),
    (Fault::WatchesExpired, ALL),
    (Fault::Leader, ALL),
    (Fault::LeaderPartitioned, ALL),
    (Fault::Etcd, ALL),
    (Fault::AppLeader, &[Waiting, Released]),
];

/// The API server's rules for an API fault: for the agent's requests only (the test's own
/// writes and its recorder's watches are not the system under test).
fn api_rules(fault: Fault) -> Vec<FaultRule> {
    let once =
        |kind: FaultKind, verb: Verb| FaultRule::new(kind).verb(verb).user(AGENT_USER).times(1);
    match fault {
        Fault::ApiErrors => vec![
            once(FaultKind::Status(500), Verb::Create),
            once(FaultKind::Status(429), Verb::Create),
            once(FaultKind::Status(500), Verb::Delete),
        ],
        Fault::ApiConflict => vec![
            once(FaultKind::Status(409), Verb::Patch),
            once(FaultKind::Status(409), Verb::Update),
        ],
        Fault::ApiTimeout => vec![
            once(FaultKind::Timeout, Verb::Create),
            once(FaultKind::Timeout, Verb::Patch),
            once(FaultKind::Timeout, Verb::Delete),
        ],
        Fault::WatchesClosed => vec![
            FaultRule::new(FaultKind::CloseWatch)
                .verb(Verb::Watch)
                .user(AGENT_USER)
                .times(2),
        ],
        _ => Vec::new(),
    }
}

fn sim(c: &Cluster) -> &snapgate_kube_sim::KubeSim {
    let support::Sim::Hosted(sim) = &c.sim else {
        panic!("the fault matrix needs the hosted kube-sim");
    };
    sim
}

/// An application holding the SDK's guard on the PVC `data` (value [`TRIGGER`], by default a
/// 120 s hold limit and 30 s disconnect grace), its connection to the scheduler through a proxy of its own. Its quiesce waits for
/// [`App::finish_quiescing`].
struct App {
    link: Proxy,
    quiescing: Option<oneshot::Receiver<()>>,
    go: Option<oneshot::Sender<()>>,
    hold: Arc<Mutex<HoldSeen>>,
    guard: JoinHandle<Result<GuardedCopy, snapgate_sdk::Error>>,
}

/// When the application's quiesce returned, when its unquiesce began.
#[derive(Debug, Default, Clone)]
struct HoldSeen {
    quiesced: Option<DateTime<Utc>>,
    unquiesced: Option<DateTime<Utc>>,
}

impl App {
    async fn start(c: &Cluster) -> Self {
        Self::start_with(c, Duration::from_secs(120), Duration::from_secs(30)).await
    }

    /// With this hold limit and disconnect grace.
    async fn start_with(c: &Cluster, hold_limit: Duration, grace: Duration) -> Self {
        let link = Proxy::start(c.grpc()).await;
        let client = snapgate_sdk::Client::connect(link.url()).await.unwrap();
        let (quiescing_tx, quiescing) = oneshot::channel();
        let (go, go_rx) = oneshot::channel::<()>();
        let hold = Arc::new(Mutex::new(HoldSeen::default()));
        let (quiesced, unquiesced) = (hold.clone(), hold.clone());
        let guard = tokio::spawn(async move {
            client
                .quiesced_copy(
                    snapgate_sdk::pvc(NS, "data"),
                    move |_request| async move {
                        let _ = quiescing_tx.send(());
                        let _ = go_rx.await;
                        quiesced.lock().unwrap().quiesced = Some(Utc::now());
                        Ok::<_, Infallible>(())
                    },
                    move || async move {
                        unquiesced.lock().unwrap().unquiesced = Some(Utc::now());
                        Ok::<_, Infallible>(())
                    },
                    GuardOptions::default()
                        .hold_limit(hold_limit)
                        .disconnect_grace(grace)
                        .trigger_value(|_| TRIGGER.to_owned()),
                )
                .await
        });
        Self {
            link,
            quiescing: Some(quiescing),
            go: Some(go),
            hold,
            guard,
        }
    }

    /// Waits until the guard has been asked for a copy and is quiescing.
    async fn quiescing(&mut self, case: &str) {
        let asked = self.quiescing.take().expect("once");
        tokio::time::timeout(WAIT, asked)
            .await
            .unwrap_or_else(|_| panic!("{case}: the application was never asked to quiesce"))
            .unwrap();
    }

    /// Lets quiesce return: the guard triggers.
    fn finish_quiescing(&mut self) {
        let _ = self.go.take().expect("once").send(());
    }

    /// Waits for the guard's result; returns the hold it kept.
    async fn outcome(self, case: &str) -> Hold {
        let copy = tokio::time::timeout(WAIT, self.guard)
            .await
            .unwrap_or_else(|_| panic!("{case}: the guard never resolved"))
            .unwrap();
        let copy = copy.unwrap_or_else(|e| panic!("{case}: the guard failed: {e}"));
        assert_eq!(copy.trigger, TRIGGER, "{case}: {copy:?}");
        let seen = self.hold.lock().unwrap();
        let (from, to) = (seen.quiesced, seen.unquiesced);
        let (Some(from), Some(to)) = (from, to) else {
            panic!("{case}: quiesced at {from:?}, unquiesced at {to:?}");
        };
        Hold { from, to }
    }
}

/// Injects `fault` into the cluster (or the application's link).
async fn inject(c: &mut Cluster, app: Option<&App>, fault: Fault, case: &str) {
    match fault {
        Fault::Scheduler => c.restart_scheduler().await,
        Fault::Agent => c.restart_agent().await,
        Fault::Both => c.restart_both().await,
        Fault::Link => {
            let ended = c.link.cut();
            assert!(ended >= 1, "{case}: the agent's link was not open");
        }
        Fault::AppLink => {
            let link = &app.expect("an application").link;
            let ended = link.cut();
            assert!(ended >= 1, "{case}: the application's link was not open");
        }
        Fault::WatchesExpired | Fault::WatchesClosed => {
            let how = if fault == Fault::WatchesExpired {
                WatchEnd::Expire
            } else {
                WatchEnd::Close
            };
            for rule in api_rules(fault) {
                sim(c).faults().fail(rule);
            }
            let ended = sim(c).faults().end_watches(how);
            // The agent's watches, and the test's own recorder.
            assert!(ended >= 2, "{case}: only {ended} watches were open");
        }
        Fault::Leader | Fault::AppLeader => c.restart_scheduler().await,
        Fault::LeaderPartitioned => {
            let replicas = c.replicas.as_ref().expect("replicas");
            replicas.partition_leader().await;
            c.wait_answering(case).await;
        }
        Fault::Etcd => {
            c.replicas.as_mut().expect("replicas").restart_etcd().await;
            c.wait_answering(case).await;
        }
        Fault::ApiErrors | Fault::ApiConflict | Fault::ApiTimeout => {
            sim(c).faults().set_timeout_duration(Duration::from_secs(2));
            for rule in api_rules(fault) {
                sim(c).faults().fail(rule);
            }
        }
    }
}

/// Ends an outage of `link` (`who`'s link to the scheduler), if there is one, once `who` has
/// tried to reconnect [`REFUSED`] times. For the agent's, called after the test's next step
/// at the phase (the trigger written, the copy cut, the transfer ended, the finalizer
/// removed), so that the agent is offline when it happens.
async fn end_outage(link: &Proxy, who: &str, case: &str) {
    if !link.refusing() {
        return;
    }
    support::eventually(
        &format!("{case}: {who} tried to reconnect {REFUSED} times"),
        15,
        || async { (link.refused() >= REFUSED).then_some(()) },
    )
    .await;
    link.restore();
}

/// Asserts that the fault was felt: each API fault answered at least once, a cut link's
/// refusals all used.
async fn assert_felt(c: &Cluster, app: Option<&App>, fault: Fault, case: &str) {
    let injected = api_rules(fault).len();
    if injected > 0 {
        let left = sim(c).faults().rules().len();
        assert!(
            left < injected,
            "{case}: no injected fault was ever answered: {:?}",
            sim(c).faults().rules()
        );
    }
    match app {
        Some(app) if fault == Fault::AppLink => assert!(
            app.link.refused() >= REFUSED,
            "{case}: the application never tried to reconnect"
        ),
        // Its connection to the killed leader ended: it made another (to the next leader).
        Some(app) if fault == Fault::AppLeader => assert!(
            app.link.passed() >= 2,
            "{case}: the application never reconnected ({} connection)",
            app.link.passed()
        ),
        _ => {}
    }
}

fn status(a: &std::collections::BTreeMap<String, String>) -> &str {
    a.get(STATUS).map_or("", String::as_str)
}

/// One cell of the matrix: a gated restic Snapshot run, `fault` at `phase`.
async fn scenario(fault: Fault, phase: Phase) {
    let case = format!("{fault:?} at {phase:?}");
    let script = |sim: &snapgate_kube_sim::KubeSim| {
        sim.snapshot_behaviour(NS, COPY, SnapshotBehaviour::NeverReady);
        sim.job_behaviour(NS, MOVER, JobBehaviour::hang());
    };
    let mut c = if fault.replicated() {
        Cluster::start_hosted_ha(script).await
    } else {
        Cluster::start_hosted(script).await
    };
    let snapshots = c.record_snapshots().await;
    let snapshot_api: Api<DynamicObject> = Api::namespaced_with(
        c.client.clone(),
        NS,
        &resource(
            "snapshot.storage.k8s.io",
            "VolumeSnapshot",
            "volumesnapshots",
        ),
    );
    c.gated_db_source_waiting("").await;
    let mut app = match fault {
        Fault::AppLink | Fault::AppLeader => {
            let mut app = App::start(&c).await;
            app.quiescing(&case).await;
            Some(app)
        }
        _ => None,
    };

    if phase == Waiting {
        inject(&mut c, app.as_ref(), fault, &case).await;
    }
    let mut hold = None;
    match (&mut app, phase) {
        (Some(app), _) => app.finish_quiescing(),
        (None, Triggered) => {
            // The Trigger call answers once the release is stored, whatever happens next.
            let from = Utc::now();
            c.cli_ok(&["trigger", "--pvc", "data", "--hold", "120s", TRIGGER])
                .await;
            hold = Some(Hold {
                from,
                to: from + Duration::from_secs(120),
            });
            inject(&mut c, None, fault, &case).await;
        }
        (None, _) => c.write_copy_trigger("data", TRIGGER).await,
    }
    // At triggered the outage spans no step: the release must reach the agent first.
    end_outage(&c.link, "the agent", &case).await;
    if let Some(app) = &app {
        // The guard's Trigger must reach the scheduler.
        end_outage(&app.link, "the application", &case).await;
    }
    c.wait_annotations("data", &format!("{case}: the trigger taken"), |a| {
        status(a) == "InProgress"
    })
    .await;
    snapshots
        .wait(
            COPY,
            &format!("{case}: the copy made, not cut"),
            WAIT,
            |o| o["status"]["boundVolumeSnapshotContentName"].is_string(),
        )
        .await;
    if phase == Cleanup {
        // A finalizer of someone else's (as a backup tool's would be) holds its deletion.
        snapshot_api
            .patch(
                COPY,
                &PatchParams::default(),
                &Patch::Merge(serde_json::json!({"metadata": {"finalizers": [HOLD_CLEANUP]}})),
            )
            .await
            .unwrap();
    }
    if phase == Released {
        inject(&mut c, app.as_ref(), fault, &case).await;
    }
    // The copy is cut and ready, as the CSI driver would say.
    snapshot_api
        .patch_status(
            COPY,
            &PatchParams::default(),
            &Patch::Merge(serde_json::json!({"status": {
                "creationTime": Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
                "readyToUse": true,
            }})),
        )
        .await
        .unwrap();
    end_outage(&c.link, "the agent", &case).await;
    c.wait_annotations("data", &format!("{case}: the copy point past"), |a| {
        status(a) == "Completed"
    })
    .await;
    if phase == Copied {
        c.wait_run("db", &format!("{case}: its mover made"), |r| {
            r["phase"] == "Transferring"
        })
        .await;
        inject(&mut c, None, fault, &case).await;
    }
    // The transfer ends.
    sim(&c).job_behaviour(NS, MOVER, JobBehaviour::succeed(["done"]));
    end_outage(&c.link, "the agent", &case).await;
    if phase == Cleanup {
        c.wait_run("db", &format!("{case}: cleaning up"), |r| {
            r["phase"] == "CleaningUp"
        })
        .await;
        snapshots
            .wait(
                COPY,
                &format!("{case}: the copy being deleted"),
                WAIT,
                |o| o["metadata"]["deletionTimestamp"].is_string(),
            )
            .await;
        inject(&mut c, None, fault, &case).await;
        snapshot_api
            .patch(
                COPY,
                &PatchParams::default(),
                &Patch::Merge(serde_json::json!({"metadata": {"finalizers": null}})),
            )
            .await
            .unwrap();
        end_outage(&c.link, "the agent", &case).await;
    }

    if let Some(app) = app.take() {
        // Cut at released, the application is offline until the run is over: it learns the
        // outcome after the fact.
        c.wait_run("db", &format!("{case}: the run finished"), |r| {
            r["phase"] == "Finished"
        })
        .await;
        end_outage(&app.link, "the application", &case).await;
        assert_felt(&c, Some(&app), fault, &case).await;
        hold = Some(app.outcome(&case).await);
    }
    assert_run_invariants(
        &c,
        &snapshots,
        &Expected {
            case: &case,
            source: "db",
            pvc: "data",
            copy: COPY,
            trigger: TRIGGER,
            hold,
        },
    )
    .await;
    assert_felt(&c, None, fault, &case).await;
}

/// How many cells run at once in this process, whichever tests they belong to: each starts a
/// scheduler and an agent (debug builds) and runs the CLI, on a machine that may have two
/// cores.
static RUNNING: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(CONCURRENT_CELLS);
const CONCURRENT_CELLS: usize = 6;

/// Every phase of `fault` in the matrix, concurrently (at most [`CONCURRENT_CELLS`] cells of
/// the whole matrix at a time).
async fn cells(fault: Fault) {
    let (_, phases) = MATRIX
        .iter()
        .find(|(f, _)| *f == fault)
        .expect("in the matrix");
    futures::future::join_all(phases.iter().map(|phase| async move {
        let _running = RUNNING.acquire().await.expect("never closed");
        scenario(fault, *phase).await;
    }))
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_scheduler_killed_at_each_phase_of_a_gated_run_loses_nothing_and_copies_once() {
    cells(Fault::Scheduler).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_killed_at_each_phase_of_a_gated_run_loses_nothing_and_copies_once() {
    cells(Fault::Agent).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_killed_at_once_at_each_phase_of_a_gated_run_lose_nothing_and_copy_once() {
    cells(Fault::Both).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agents_link_cut_at_each_phase_of_a_gated_run_loses_nothing_and_copies_once() {
    cells(Fault::Link).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_application_whose_link_is_cut_while_quiesced_still_gets_its_copy_inside_its_hold() {
    cells(Fault::AppLink).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_errors_at_each_phase_of_a_gated_run_lose_nothing_and_copy_once() {
    cells(Fault::ApiErrors).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_conflicts_at_each_phase_of_a_gated_run_lose_nothing_and_copy_once() {
    cells(Fault::ApiConflict).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_timeouts_at_each_phase_of_a_gated_run_lose_nothing_and_copy_once() {
    cells(Fault::ApiTimeout).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agents_watches_closed_at_each_phase_of_a_gated_run_lose_nothing_and_copy_once() {
    cells(Fault::WatchesClosed).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agents_watches_expired_at_each_phase_of_a_gated_run_lose_nothing_and_copy_once() {
    cells(Fault::WatchesExpired).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_leader_killed_at_each_phase_of_a_gated_run_loses_nothing_and_copies_once() {
    cells(Fault::Leader).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_leader_cut_off_from_etcd_at_each_phase_of_a_gated_run_loses_nothing_and_copies_once() {
    cells(Fault::LeaderPartitioned).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_killed_at_each_phase_of_a_gated_run_loses_nothing_and_copies_once() {
    cells(Fault::Etcd).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_application_quiesced_while_the_leader_is_killed_gets_its_copy_inside_its_hold() {
    cells(Fault::AppLeader).await;
}

/// The SDK's guard gives up on a link lost after its Trigger once its disconnect grace has
/// passed; EndHold cannot reach the scheduler either, so it stays quiesced until its hold
/// limit, the end of the run's lease (what was left of that limit), and only then unquiesces:
/// a copy cut after that is not counted (the run's value is spent; it waits again).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_application_that_gives_up_on_a_lost_link_has_no_copy_counted_after_it_unquiesced() {
    let case = "AppLink past its disconnect grace at Released";
    let c = Cluster::start_hosted(|sim| {
        sim.snapshot_behaviour(NS, COPY, SnapshotBehaviour::NeverReady);
    })
    .await;
    let snapshots = c.record_snapshots().await;
    c.gated_db_source_waiting("").await;
    let mut app = App::start_with(&c, Duration::from_secs(10), Duration::from_secs(2)).await;
    app.quiescing(case).await;
    app.finish_quiescing();
    c.wait_annotations("data", &format!("{case}: the trigger taken"), |a| {
        status(a) == "InProgress"
    })
    .await;
    snapshots
        .wait(
            COPY,
            &format!("{case}: the copy made, not cut"),
            WAIT,
            |o| o["status"]["boundVolumeSnapshotContentName"].is_string(),
        )
        .await;
    app.link.cut();
    let gave_up = tokio::time::timeout(WAIT, &mut app.guard)
        .await
        .unwrap_or_else(|_| panic!("{case}: the guard never resolved"))
        .unwrap();
    assert!(
        gave_up.is_err(),
        "{case}: the guard should fail clearly: {gave_up:?}"
    );
    let seen = app.hold.lock().unwrap().clone();
    let unquiesced = seen
        .unquiesced
        .unwrap_or_else(|| panic!("{case}: it never unquiesced"));
    let quiesced = seen
        .quiesced
        .unwrap_or_else(|| panic!("{case}: it never quiesced"));
    // Quiesce returned at once (the test let it): the hold limit counts from just before.
    assert!(
        unquiesced - quiesced >= chrono::TimeDelta::seconds(9),
        "{case}: unquiesced at {unquiesced}, before its 10 s hold limit (quiesced at \
         {quiesced}), with the run's lease possibly running"
    );
    // Timestamps on the copy are whole seconds: the cut is made in the second after the
    // unquiesce, so that it is later by its own record too.
    let next_second = 1_000_000_000 - u64::from(Utc::now().timestamp_subsec_nanos());
    tokio::time::sleep(Duration::from_nanos(next_second)).await;
    let cut = Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let cut_answer = Api::<DynamicObject>::namespaced_with(
        c.client.clone(),
        NS,
        &resource(
            "snapshot.storage.k8s.io",
            "VolumeSnapshot",
            "volumesnapshots",
        ),
    )
    .patch_status(
        COPY,
        &PatchParams::default(),
        &Patch::Merge(serde_json::json!({"status": {"creationTime": cut, "readyToUse": true}})),
    )
    .await;
    match cut_answer {
        Ok(_) => {}
        // The guard held until its hold limit, where the lease ended: the agent may have
        // deleted the copy already, which is as it should be (nothing is left to cut).
        Err(kube::Error::Api(e)) if e.code == 404 => {}
        Err(e) => panic!("{case}: cutting the copy: {e}"),
    }
    // The lease ends within the hold limit: the run is counted, or goes back to waiting.
    let run = c
        .wait_run_where(
            &format!("{case}: the cut counted or the lease over"),
            "db",
            |runs| {
                runs.first()
                    .filter(|r| r["copyTime"].is_string() || r["spentTriggers"].is_array())
                    .cloned()
            },
        )
        .await;
    assert!(
        run["copyTime"].is_null(),
        "{case}: invariant `the copy point inside the hold` broken: a copy cut at {cut} was \
         counted for the value of an application that unquiesced at {unquiesced}: {run:#}"
    );
}

/// Followers serve reads: what the leader committed is read on the other replica directly
/// (its copy follows the leader's commits through etcd's watch), a write there is refused
/// naming the leader, and right after the leader is SIGKILLed the follower still answers
/// reads, before and while it takes over.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_serves_reads_refuses_writes_naming_the_leader_and_reads_on_through_a_failover()
{
    let c = Cluster::start_hosted_ha(|_| {}).await;
    c.gated_db_source_waiting("").await;
    let replicas = c.replicas.as_ref().expect("replicas");
    let leader = replicas.wait_leader("a leader").await;
    let follower = replicas.other_than(&leader.name);
    let runs = support::eventually("the follower's copy has the waiting run", 30, || async {
        let out = c.cli_on(&follower, &["-o", "json", "runs", "db"]).await;
        (out.code == 0 && out.stdout.contains("\"WaitingForTrigger\"")).then_some(out)
    })
    .await;
    let on_leader = c.cli_ok(&["-o", "json", "runs", "db"]).await;
    assert_eq!(
        runs.stdout, on_leader.stdout,
        "the follower answers as the leader"
    );
    let get = c.cli_on(&follower, &["get", "db"]).await;
    assert_eq!(get.code, 0, "{get:?}");

    let refused = c.cli_on(&follower, &["sync-now", "db"]).await;
    assert_ne!(refused.code, 0, "{refused:?}");
    assert!(
        refused
            .stderr
            .contains(&format!("the leader is {}", leader.name)),
        "{refused:?}"
    );

    let old = replicas.kill_leader_now().await;
    assert_eq!(old, leader);
    let read = c.cli_on(&follower, &["get", "db"]).await;
    assert_eq!(read.code, 0, "a read right after the leader died: {read:?}");
    let new = support::eventually("a new tenure", 60, || async {
        replicas
            .leader()
            .await
            .filter(|t| t.revision != old.revision)
    })
    .await;
    let read = c.cli_on(&follower, &["get", "db"]).await;
    assert_eq!(read.code, 0, "a read after {new:?} began: {read:?}");
}
