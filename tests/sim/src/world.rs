//! One seed's world: the simulated cluster, the scheduler (restartable on its store), one agent
//! per namespace, the applications, the operator, and the seed's schedule of faults and edits.
//!
//! ```text
//!  schedule (from the seed) ──► faults, crashes, edits at virtual times
//!  apps (SDK guard) ──┐                                    ┌── observer: every copy cut
//!  operator ──────────┼── Net (in-memory) ──► scheduler    │   (the cluster's change feed)
//!  agents ────────────┘                        (redb)      └── poller: every run's state
//!     └── kube::Client (in-process) ──► KubeSim (faults, snapshot and Job behaviours)
//! ```

use std::{collections::BTreeMap, sync::Arc, time::Duration};

use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Secret};
use rand::{Rng, SeedableRng, rngs::StdRng, seq::IndexedRandom};
use snapgate_agent::{AgentConfig, Connector, link::Backoff, metrics::Metrics as AgentMetrics};
use snapgate_agent_core::{names, plan::PlanConfig, review::SourceAuthors};
use snapgate_kube_sim::{
    JobBehaviour, KubeSim, SnapshotBehaviour,
    faults::{FaultKind, FaultRule, Verb},
};
use snapgate_proto::{
    clock::{Clock, TokioClock},
    v1,
};
use snapgate_scheduler::{Config, identity::Authorizer, metrics::Metrics};
use snapgate_sdk::{Client, GuardOptions};
use tokio::task::JoinHandle;

use crate::{
    net::Net,
    record::{Acked, Cut, Hold, Record},
    store::CrashableStore,
};

/// What a seed runs for.
#[derive(Clone, Debug)]
pub struct Options {
    /// Virtual time with faults and edits.
    pub horizon: Duration,
    /// Virtual time after it, faults off, for everything to settle.
    pub settle: Duration,
    /// Print the trace as it happens.
    pub verbose: bool,
    /// At the end, abort the applications' tasks (dropping any guard, quiesced or not) instead
    /// of letting each stop once it holds nothing: a dropped guard must end its hold before it
    /// unquiesces (spawned), or a copy point after that would be counted (seed 8 showed it
    /// before the SDK did so; see docs/reliability.md).
    pub drop_guards: bool,
    /// A deliberate bug in the simulation's own application or bookkeeping, to show that an
    /// invariant catches it (see [`Sabotage`]).
    pub sabotage: Option<Sabotage>,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            horizon: Duration::from_secs(90 * 60),
            settle: Duration::from_secs(40 * 60),
            verbose: false,
            drop_guards: false,
            sabotage: None,
        }
    }
}

/// A bug planted on purpose, so that each invariant is shown to fail when broken.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Sabotage {
    /// Applications record their hold as ended right after quiescing: copy points fall
    /// outside it (`copy_inside_hold`).
    EarlyUnquiesce,
    /// One application never runs its unquiesce: the guard looks unquiesced to the checker
    /// (`guard_unquiesced`).
    ForgetUnquiesce,
    /// The simulation records an acknowledged source the scheduler never saw
    /// (`acknowledged_kept`).
    PhantomAck,
    /// Two applications on one PVC send the same trigger value (`trigger_releases_one_run`
    /// or `copy_inside_hold`).
    SharedValue,
}

/// The fixed wall time every seed starts at (the scheduler's and agents' clock):
/// 2026-01-05T00:00:00Z in Unix seconds.
pub(crate) const EPOCH_SECS: i64 = 1_767_571_200;

/// A source of the scenario.
#[derive(Clone, Debug)]
struct SourcePlan {
    ns: String,
    name: String,
    pvc: String,
    clone: bool,
    wait_timeout: u64,
    skip: bool,
    schedule: &'static str,
}

/// An application of the scenario.
#[derive(Clone, Debug)]
struct AppPlan {
    name: String,
    ns: String,
    pvc: String,
    hold_limit: Duration,
    grace: Duration,
    /// Longest think time between two copies, seconds.
    think: u64,
    /// Longest time its quiesce takes, milliseconds.
    quiesce_ms: u64,
}

/// What the schedule does at one moment.
#[derive(Clone, Debug)]
enum Action {
    SchedulerCrash {
        down_for: Duration,
    },
    AgentCrash {
        ns: String,
        down_for: Duration,
    },
    CutAll,
    KubeFault {
        kind: FaultKind,
        verb: Verb,
        resource: &'static str,
        times: u32,
    },
    SlowSnapshots {
        ready_after: Duration,
    },
    FailingJobs {
        for_: Duration,
    },
    NormalBehaviour,
    SyncNow {
        source: usize,
    },
    Pause {
        source: usize,
        for_: Duration,
    },
    Delete {
        source: usize,
        for_: Duration,
    },
    Edit {
        source: usize,
    },
}

/// The seed's scenario, all drawn from its generator before anything runs.
struct Scenario {
    namespaces: Vec<String>,
    pvcs: Vec<(String, String, bool)>,
    sources: Vec<SourcePlan>,
    apps: Vec<AppPlan>,
    schedule: Vec<(Duration, Action)>,
}

fn scenario(rng: &mut StdRng, options: &Options) -> Scenario {
    let namespaces: Vec<String> = (0..rng.random_range(1..=2))
        .map(|i| format!("ns-{i}"))
        .collect();
    let mut pvcs = Vec::new();
    let mut sources = Vec::new();
    let mut apps = Vec::new();
    for ns in &namespaces {
        for p in 0..rng.random_range(1..=2) {
            let pvc = format!("data-{p}");
            let gated = rng.random_bool(0.85);
            pvcs.push((ns.clone(), pvc.clone(), gated));
            for s in 0..rng.random_range(1..=2) {
                sources.push(SourcePlan {
                    ns: ns.clone(),
                    name: format!("src-{p}-{s}"),
                    pvc: pvc.clone(),
                    clone: rng.random_bool(0.3),
                    wait_timeout: rng.random_range(60..=900),
                    skip: rng.random_bool(0.4),
                    schedule: ["*/10 * * * *", "*/15 * * * *", "*/20 * * * *"]
                        .choose(rng)
                        .unwrap_or(&"*/10 * * * *"),
                });
            }
            // Sometimes nobody answers (the runs must time out), sometimes two applications.
            let n_apps = *[0, 1, 1, 1, 2].choose(rng).unwrap_or(&1);
            for a in 0..n_apps {
                apps.push(AppPlan {
                    name: format!("app-{ns}-{p}-{a}"),
                    ns: ns.clone(),
                    pvc: pvc.clone(),
                    hold_limit: Duration::from_secs(rng.random_range(5..=90)),
                    grace: Duration::from_secs(rng.random_range(2..=30)),
                    think: rng.random_range(1..=120),
                    quiesce_ms: *[0, 50, 2_000, 20_000].choose(rng).unwrap_or(&0),
                });
            }
        }
    }
    let mut schedule = Vec::new();
    let minutes = options.horizon.as_secs() / 60;
    let n = rng.random_range(minutes / 8..=minutes / 3 + 1);
    let resources = [
        "persistentvolumeclaims",
        "volumesnapshots",
        "jobs",
        "pods",
        "events",
    ];
    for _ in 0..n {
        let at = Duration::from_millis(rng.random_range(0..options.horizon.as_millis() as u64));
        let source = rng.random_range(0..sources.len());
        let action = match rng.random_range(0..100) {
            0..8 => Action::SchedulerCrash {
                down_for: Duration::from_millis(rng.random_range(0..30_000)),
            },
            8..18 => Action::AgentCrash {
                ns: namespaces.choose(rng).cloned().unwrap_or_default(),
                down_for: Duration::from_millis(rng.random_range(0..20_000)),
            },
            18..28 => Action::CutAll,
            28..55 => {
                let kind = match rng.random_range(0..6) {
                    0 => FaultKind::Status(500),
                    1 => FaultKind::Status(429),
                    2 => FaultKind::Status(409),
                    3 => FaultKind::Timeout,
                    4 => FaultKind::CloseWatch,
                    _ => FaultKind::Delay(Duration::from_millis(rng.random_range(100..5_000))),
                };
                let verb = if kind == FaultKind::CloseWatch {
                    Verb::Watch
                } else {
                    *[
                        Verb::Get,
                        Verb::List,
                        Verb::Create,
                        Verb::Patch,
                        Verb::Delete,
                    ]
                    .choose(rng)
                    .unwrap_or(&Verb::Patch)
                };
                Action::KubeFault {
                    kind,
                    verb,
                    resource: resources
                        .choose(rng)
                        .copied()
                        .unwrap_or("persistentvolumeclaims"),
                    times: rng.random_range(1..=4),
                }
            }
            55..62 => Action::SlowSnapshots {
                ready_after: Duration::from_secs(rng.random_range(1..=120)),
            },
            62..67 => Action::FailingJobs {
                for_: Duration::from_secs(rng.random_range(10..=900)),
            },
            67..72 => Action::NormalBehaviour,
            72..82 => Action::SyncNow { source },
            82..89 => Action::Pause {
                source,
                for_: Duration::from_secs(rng.random_range(5..=600)),
            },
            89..93 => Action::Delete {
                source,
                for_: Duration::from_secs(rng.random_range(5..=600)),
            },
            _ => Action::Edit { source },
        };
        schedule.push((at, action));
    }
    schedule.sort_by_key(|(at, _)| *at);
    Scenario {
        namespaces,
        pvcs,
        sources,
        apps,
        schedule,
    }
}

/// A running scheduler incarnation.
struct SchedulerProc {
    task: JoinHandle<anyhow::Result<()>>,
    store: CrashableStore,
}

/// The world of one seed.
pub(crate) struct World {
    pub(crate) kube: KubeSim,
    net: Net,
    dir: tempfile::TempDir,
    clock: Arc<dyn Clock>,
    scheduler: Option<SchedulerProc>,
    agents: BTreeMap<String, JoinHandle<anyhow::Result<()>>>,
    pub(crate) ops: Client,
    pub(crate) record: Record,
    seed: u64,
}

impl World {
    fn start_scheduler(&mut self) {
        let store = match CrashableStore::open(self.dir.path()) {
            Ok(s) => s,
            Err(e) => panic!("seed {}: the store does not reopen: {e}", self.seed),
        };
        let config = Config {
            store: store.clone().into(),
            clock: self.clock.clone(),
            metrics: Metrics::new(),
            authorizer: Authorizer::default(),
            authenticator: None,
            rate: (0, 0),
            lease_policy: Default::default(),
        };
        let incoming = self.net.listen();
        let task = tokio::spawn(snapgate_scheduler::serve_incoming(
            config,
            incoming,
            futures::future::pending(),
        ));
        self.scheduler = Some(SchedulerProc { task, store });
        self.record.event("scheduler up");
    }

    fn crash_scheduler(&mut self) {
        if let Some(proc) = self.scheduler.take() {
            proc.store.kill();
            self.net.down();
            proc.task.abort();
            self.record.event("scheduler crashed");
        }
    }

    fn start_agent(&mut self, ns: &str) {
        let owner = format!("agent-{ns}");
        let mut jitter_rng = StdRng::seed_from_u64(self.seed ^ hash(ns));
        let jitter: snapgate_agent::access::Jitter = Arc::new(std::sync::Mutex::new(move || {
            jitter_rng.random_range(0.75..1.25)
        }));
        let connector = Connector::dialing(self.net.agent_dial(&owner), jitter);
        let config = AgentConfig {
            scheduler: "http://scheduler.sim.invalid".into(),
            agent_id: owner.clone(),
            namespaces: vec![ns.to_owned()],
            // The production back-off for failed mover Jobs (10 s doubling to 5 min).
            plan: PlanConfig {
                source_authors: SourceAuthors::Trust,
                ..PlanConfig::default()
            },
            backoff: Backoff::default(),
            retry_after: Duration::from_millis(500),
            metrics: AgentMetrics::new(),
            clock: self.clock.clone(),
        };
        let task = tokio::spawn(snapgate_agent::run_connected(
            config,
            connector,
            self.kube.client(),
        ));
        self.agents.insert(ns.to_owned(), task);
        self.record.event(format!("agent {ns} up"));
    }

    fn crash_agent(&mut self, ns: &str) {
        if let Some(task) = self.agents.remove(ns) {
            task.abort();
            self.net.cut(&format!("agent-{ns}"));
            self.record.event(format!("agent {ns} crashed"));
        }
    }
}

fn hash(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    })
}

/// A PVC of the scenario, as the e2e world makes its source PVC.
fn pvc(ns: &str, name: &str, gated: bool) -> PersistentVolumeClaim {
    snapgate_e2e::world::pvc(ns, name, gated)
}

fn restic_secret(ns: &str) -> Secret {
    Secret {
        metadata: k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta {
            name: Some("restic-config".into()),
            namespace: Some(ns.into()),
            ..Default::default()
        },
        string_data: Some(
            ["RESTIC_REPOSITORY", "RESTIC_PASSWORD"]
                .iter()
                .map(|k| ((*k).to_owned(), "x".to_owned()))
                .collect(),
        ),
        ..Default::default()
    }
}

fn spec(plan: &SourcePlan, paused: bool) -> v1::SourceSpec {
    let method = if plan.clone {
        v1::CopyMethod::Clone
    } else {
        v1::CopyMethod::Snapshot
    };
    v1::SourceSpec {
        source_pvc: plan.pvc.clone(),
        trigger: Some(v1::ReplicationSourceTrigger {
            schedule: Some(plan.schedule.into()),
            manual: None,
        }),
        paused,
        restic: Some(v1::ReplicationSourceResticSpec {
            copy_method: method as i32,
            repository: "restic-config".into(),
            ..Default::default()
        }),
        copy_trigger: Some(v1::CopyTriggerOptions {
            wait_timeout: Some(prost_types::Duration {
                seconds: i64::try_from(plan.wait_timeout).unwrap_or(60),
                nanos: 0,
            }),
            on_timeout: if plan.skip {
                v1::TimeoutPolicy::Skip
            } else {
                v1::TimeoutPolicy::KeepWaiting
            } as i32,
            holders: Vec::new(),
            allowed_service_accounts: Vec::new(),
        }),
        ..Default::default()
    }
}

/// How long an operator call may take before it is counted as failed.
const CALL: Duration = Duration::from_secs(10);

impl World {
    fn key(plan: &SourcePlan) -> String {
        format!("{}/{}", plan.ns, plan.name)
    }

    /// The answer to the operator's call `what` on `plan`'s source, within [`CALL`]: its
    /// message when answered, else `None` with the refusal or the time-out in the trace.
    async fn answered<T>(
        &self,
        what: &str,
        plan: &SourcePlan,
        call: impl Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    ) -> Option<T> {
        match tokio::time::timeout(CALL, call).await {
            Ok(Ok(answer)) => Some(answer.into_inner()),
            Ok(Err(status)) => {
                self.record
                    .event(format!("{what} {}: {:?}", Self::key(plan), status.code()));
                None
            }
            Err(_) => {
                self.record
                    .event(format!("{what} {}: timed out", Self::key(plan)));
                None
            }
        }
    }

    /// Notes that the scheduler acknowledged `what` on `plan`'s source: it stands at
    /// `version` (or is deleted) from now on.
    fn acked(&self, what: &str, plan: &SourcePlan, version: u64, deleted: bool) {
        self.record
            .lock()
            .acked
            .insert(Self::key(plan), Acked { version, deleted });
        self.record.event(format!("{what} {} ok", Self::key(plan)));
    }

    /// Applies `plan` (create when `create`, else over the current version); records the
    /// acknowledgement.
    async fn apply(&self, plan: &SourcePlan, create: bool, paused: bool) {
        let mut sources = self.ops.sources();
        let expected_version = if create {
            0
        } else {
            match tokio::time::timeout(
                CALL,
                sources.get_source(v1::GetSourceRequest {
                    namespace: plan.ns.clone(),
                    name: plan.name.clone(),
                }),
            )
            .await
            {
                Ok(Ok(s)) => s.into_inner().version,
                _ => {
                    return self
                        .record
                        .event(format!("edit {}: not read", Self::key(plan)));
                }
            }
        };
        let request = v1::ApplySourceRequest {
            namespace: plan.ns.clone(),
            name: plan.name.clone(),
            spec: Some(spec(plan, paused)),
            expected_version,
        };
        if let Some(s) = self
            .answered("apply", plan, sources.apply_source(request))
            .await
        {
            self.acked("apply", plan, s.version, false);
        }
    }

    async fn act(
        &mut self,
        scenario: &Scenario,
        action: &Action,
        later: &mut Vec<(Duration, Later)>,
    ) {
        let now = self.record.now();
        match action {
            Action::SchedulerCrash { down_for } => {
                self.crash_scheduler();
                later.push((now + *down_for, Later::SchedulerUp));
            }
            Action::AgentCrash { ns, down_for } => {
                self.crash_agent(ns);
                later.push((now + *down_for, Later::AgentUp(ns.clone())));
            }
            Action::CutAll => {
                self.net.cut_all();
                self.record.event("every connection cut");
            }
            Action::KubeFault {
                kind,
                verb,
                resource,
                times,
            } => {
                self.kube.faults().fail(
                    FaultRule::new(kind.clone())
                        .verb(*verb)
                        .resource(resource)
                        .times(*times),
                );
                self.record.event(format!(
                    "kube fault {kind:?} on {} {resource} x{times}",
                    verb.as_str()
                ));
            }
            Action::SlowSnapshots { ready_after } => {
                self.kube
                    .controllers()
                    .default_snapshot_behaviour(SnapshotBehaviour::ReadyAfter(*ready_after));
                self.record
                    .event(format!("snapshots ready after {ready_after:?}"));
            }
            Action::FailingJobs { for_ } => {
                self.kube
                    .controllers()
                    .default_job_behaviour(JobBehaviour::fail(["restic: repository locked"]));
                self.record.event(format!("mover Jobs fail for {for_:?}"));
                later.push((now + *for_, Later::Normal));
            }
            Action::NormalBehaviour => {
                self.normal_behaviour();
            }
            Action::SyncNow { source } => {
                let plan = &scenario.sources[*source];
                let request_id = format!("sync-{}", now.as_millis());
                let mut sources = self.ops.sources();
                let call = sources.sync_now(v1::SyncNowRequest {
                    namespace: plan.ns.clone(),
                    name: plan.name.clone(),
                    request_id: request_id.clone(),
                });
                if let Some(r) = self.answered("sync-now", plan, call).await {
                    if r.started {
                        self.record.lock().acked_syncs.push((
                            Self::key(plan),
                            request_id,
                            r.run_id.clone(),
                        ));
                    }
                    self.record.event(format!(
                        "sync-now {} ok: {} started {}",
                        Self::key(plan),
                        r.run_id,
                        r.started
                    ));
                }
            }
            Action::Pause { source, for_ } => {
                let plan = &scenario.sources[*source];
                let mut sources = self.ops.sources();
                let call = sources.pause_source(v1::PauseSourceRequest {
                    namespace: plan.ns.clone(),
                    name: plan.name.clone(),
                    note: "sim".into(),
                });
                if let Some(s) = self.answered("pause", plan, call).await {
                    self.acked("pause", plan, s.version, false);
                    later.push((now + *for_, Later::Resume(*source)));
                }
            }
            Action::Delete { source, for_ } => {
                let plan = &scenario.sources[*source];
                let mut sources = self.ops.sources();
                let call = sources.delete_source(v1::DeleteSourceRequest {
                    namespace: plan.ns.clone(),
                    name: plan.name.clone(),
                    expected_version: 0,
                });
                if self.answered("delete", plan, call).await.is_some() {
                    self.acked("delete", plan, 0, true);
                    later.push((now + *for_, Later::Recreate(*source)));
                }
            }
            Action::Edit { source } => {
                let mut plan = scenario.sources[*source].clone();
                plan.wait_timeout = plan.wait_timeout / 2 + 30;
                self.apply(&plan, false, false).await;
            }
        }
    }

    fn normal_behaviour(&self) {
        self.kube
            .controllers()
            .default_snapshot_behaviour(SnapshotBehaviour::ReadyAfter(Duration::from_secs(2)));
        self.kube
            .controllers()
            .default_job_behaviour(JobBehaviour::succeed([
                "snapshot saved",
                "Restic completed in 2s",
            ]));
        self.record.event("cluster behaves normally");
    }

    async fn later(&mut self, scenario: &Scenario, what: Later) {
        match what {
            Later::Normal => self.normal_behaviour(),
            Later::SchedulerUp => {
                if self.scheduler.is_none() {
                    self.start_scheduler();
                }
            }
            Later::AgentUp(ns) => {
                if !self.agents.contains_key(&ns) {
                    self.start_agent(&ns);
                }
            }
            Later::Resume(source) => {
                let plan = &scenario.sources[source];
                let mut sources = self.ops.sources();
                let call = sources.resume_source(v1::ResumeSourceRequest {
                    namespace: plan.ns.clone(),
                    name: plan.name.clone(),
                    note: "sim".into(),
                });
                if let Some(s) = self.answered("resume", plan, call).await {
                    self.acked("resume", plan, s.version, false);
                }
            }
            Later::Recreate(source) => {
                let plan = scenario.sources[source].clone();
                self.apply(&plan, true, false).await;
            }
        }
    }

    /// Reads every run of every source the scheduler acknowledged and still has, into the
    /// record. Quiet when the scheduler is down.
    pub(crate) async fn poll_runs(&self) {
        let keys: Vec<String> = self
            .record
            .lock()
            .acked
            .iter()
            .filter(|(_, a)| !a.deleted)
            .map(|(k, _)| k.clone())
            .collect();
        let now = self.record.now();
        self.record.lock().last_poll = now;
        for key in keys {
            let (ns, name) = key.split_once('/').unwrap_or_default();
            let mut sources = self.ops.sources();
            let call = sources.list_runs(v1::ListRunsRequest {
                namespace: ns.into(),
                name: name.into(),
                limit: 100,
            });
            if let Ok(Ok(runs)) = tokio::time::timeout(CALL, call).await {
                let mut observed = self.record.lock();
                for run in runs.into_inner().runs {
                    observed.run_seen.insert(run.id.clone(), now);
                    observed.runs.insert(run.id.clone(), run);
                }
            }
        }
    }
}

/// Something the schedule set for later: the end of a crash, a pause or a deletion.
#[derive(Clone, Debug)]
enum Later {
    Normal,
    SchedulerUp,
    AgentUp(String),
    Resume(usize),
    Recreate(usize),
}

/// Watches the simulated cluster's change feed and records every copy cut: a VolumeSnapshot
/// of snapgate's getting `status.creationTime`, a clone PVC of snapgate's getting `Bound`.
fn spawn_observer(kube: &KubeSim, record: Record) -> JoinHandle<()> {
    let mut changes = kube.store().subscribe();
    tokio::spawn(async move {
        while let Some(change) = changes.recv().await {
            let obj = &change.object;
            let labels = &obj["metadata"]["labels"];
            let Some(run) = labels[names::RUN].as_str() else {
                continue;
            };
            let cut = match change.resource.plural {
                "volumesnapshots" => !obj["status"]["creationTime"].is_null(),
                "persistentvolumeclaims" => {
                    obj["spec"]["dataSource"]["kind"].as_str() == Some("PersistentVolumeClaim")
                        && obj["status"]["phase"].as_str() == Some("Bound")
                }
                _ => false,
            };
            if !cut {
                continue;
            }
            let uid = obj["metadata"]["uid"]
                .as_str()
                .unwrap_or_default()
                .to_owned();
            let value = obj["metadata"]["annotations"][names::RELEASE]
                .as_str()
                .unwrap_or_default()
                .to_owned();
            let at = record.now();
            let mut observed = record.lock();
            if !observed.cut_uids.insert(uid) {
                continue;
            }
            let cuts = observed.cuts.entry(run.to_owned()).or_default();
            let object = format!("{}#{}", change.resource.plural, cuts.len() + 1);
            cuts.push(Cut {
                object: object.clone(),
                value: value.clone(),
                at,
            });
            drop(observed);
            record.event(format!("cut {run} {object} for {value:?}"));
        }
    })
}

/// One application: waits for each copy request on its PVC and takes part with the SDK's
/// guard, recording its holds.
fn spawn_app(
    plan: AppPlan,
    client: Client,
    record: Record,
    seed: u64,
    sabotage: Option<Sabotage>,
    stop: Arc<std::sync::atomic::AtomicBool>,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut rng = StdRng::seed_from_u64(seed ^ hash(&plan.name));
        let target = snapgate_sdk::pvc(&plan.ns, &plan.pvc);
        let counter = Arc::new(std::sync::Mutex::new((0u64, String::new())));
        let forget = sabotage == Some(Sabotage::ForgetUnquiesce) && plan.name.ends_with("-0");
        loop {
            let think = Duration::from_millis(rng.random_range(0..=plan.think * 1000));
            // The application's own pace, on virtual time (the runtime is paused).
            tokio::time::sleep(think).await;
            if stop.load(std::sync::atomic::Ordering::Relaxed) {
                return;
            }
            let quiesce_for = Duration::from_millis(rng.random_range(0..=plan.quiesce_ms));
            let (values, name) = (counter.clone(), plan.name.clone());
            let shared = sabotage == Some(Sabotage::SharedValue);
            let options = GuardOptions::default()
                .hold_limit(plan.hold_limit)
                .disconnect_grace(plan.grace)
                .trigger_value(move |request| {
                    let mut v = values
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner);
                    v.0 += 1;
                    v.1 = if shared {
                        format!("shared-{}", request.run_id)
                    } else {
                        format!("{name}-{}", v.0)
                    };
                    v.1.clone()
                });
            let (q_rec, q_vals, q_plan) = (record.clone(), counter.clone(), plan.clone());
            let quiescing = Arc::new(std::sync::atomic::AtomicBool::new(false));
            let q_flag = quiescing.clone();
            let (u_rec, u_vals) = (record.clone(), counter.clone());
            let early = sabotage == Some(Sabotage::EarlyUnquiesce);
            let guard = client.quiesced_copy(
                target.clone(),
                move |request| async move {
                    q_flag.store(true, std::sync::atomic::Ordering::Relaxed);
                    // Quiescing takes this long, on virtual time.
                    tokio::time::sleep(quiesce_for).await;
                    q_flag.store(false, std::sync::atomic::Ordering::Relaxed);
                    let value = q_vals
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner)
                        .1
                        .clone();
                    let now = q_rec.now();
                    q_rec.lock().holds.insert(
                        value.clone(),
                        Hold {
                            app: q_plan.name.clone(),
                            pvc: format!("{}/{}", q_plan.ns, q_plan.pvc),
                            quiesced: Some(now),
                            released: early.then_some(now),
                            bound: q_plan.hold_limit + q_plan.grace + Duration::from_secs(2),
                        },
                    );
                    q_rec.event(format!(
                        "{} quiesced for {} ({value})",
                        q_plan.name, request.run_id
                    ));
                    Ok::<_, snapgate_sdk::Error>(())
                },
                move || async move {
                    let value = u_vals
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner)
                        .1
                        .clone();
                    if !forget {
                        let now = u_rec.now();
                        if let Some(h) = u_rec.lock().holds.get_mut(&value) {
                            h.released.get_or_insert(now);
                        }
                    }
                    u_rec.event(format!("unquiesce ({value})"));
                    Ok::<_, snapgate_sdk::Error>(())
                },
                options,
            );
            // Told to stop, the application drops its guard only while it holds nothing (not
            // quiescing, not quiesced), so that its hold ends as the scenario drew it
            // (`Options::drop_guards` drops it at any moment instead).
            let mut guard = std::pin::pin!(guard);
            let result = loop {
                let stopping = stop.load(std::sync::atomic::Ordering::Relaxed);
                tokio::select! {
                    r = &mut guard => break r,
                    () = tokio::time::sleep(Duration::from_millis(500)), if stopping => {
                        let current = counter.lock().unwrap_or_else(std::sync::PoisonError::into_inner).1.clone();
                        let holding = record.lock().holds.get(&current).is_some_and(|h| h.released.is_none());
                        let quiescing = quiescing.load(std::sync::atomic::Ordering::Relaxed);
                        if !holding && !quiescing {
                            return;
                        }
                    }
                }
            };
            match result {
                Ok(copy) => {
                    record.lock().guard_copies.insert(copy.trigger.clone());
                    record.event(format!(
                        "{} copied {} with {}",
                        plan.name, copy.run_id, copy.trigger
                    ));
                }
                Err(e) => {
                    record.event(format!("{}: {}", plan.name, kind_of(&e)));
                    // A refused or failed call before any request: wait a little before the next.
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        }
    })
}

/// The error's variant, without details that may carry random or wall-clock text.
fn kind_of(e: &snapgate_sdk::Error) -> String {
    let text = format!("{e:?}");
    text.split(|c: char| !c.is_alphanumeric())
        .next()
        .unwrap_or("Error")
        .to_owned()
}

/// Runs one seed; the record holds what it saw (the invariants are checked by the caller
/// through [`crate::invariants`]).
pub(crate) async fn run(
    seed: u64,
    options: &Options,
) -> (Record, Vec<crate::invariants::Violation>) {
    let mut rng = StdRng::seed_from_u64(seed);
    let scenario = scenario(&mut rng, options);
    let record = Record::new(options.verbose);
    let kube = KubeSim::new();
    let net = Net::default();
    let clock: Arc<dyn Clock> = Arc::new(TokioClock::starting_at(
        chrono::DateTime::from_timestamp(EPOCH_SECS, 0).unwrap_or_default(),
    ));
    // The simulated API server stamps objects with the same virtual wall clock.
    let stamps = clock.clone();
    snapgate_kube_sim::set_thread_clock(Some(Arc::new(move || stamps.now())));
    let ops = match Client::builder("http://scheduler.sim.invalid")
        .with_channel(net.channel("operator"))
    {
        Ok(c) => c,
        Err(e) => panic!("the operator's client: {e}"),
    };
    let dir = match tempfile::tempdir() {
        Ok(d) => d,
        Err(e) => panic!("a temporary directory for the store: {e}"),
    };
    let mut world = World {
        kube,
        net,
        dir,
        clock,
        scheduler: None,
        agents: BTreeMap::new(),
        ops,
        record: record.clone(),
        seed,
    };
    record.event(format!(
        "seed {seed}: {} namespaces, {} PVCs, {} sources, {} apps, {} scheduled actions",
        scenario.namespaces.len(),
        scenario.pvcs.len(),
        scenario.sources.len(),
        scenario.apps.len(),
        scenario.schedule.len()
    ));
    for (ns, pvc_name, gated) in &scenario.pvcs {
        world.kube.ensure_namespace(ns);
        let _ = world.kube.create(&restic_secret(ns));
        if let Err(e) = world.kube.create(&pvc(ns, pvc_name, *gated)) {
            panic!("creating PVC {ns}/{pvc_name}: {e:?}");
        }
    }
    world.normal_behaviour();
    let observer = spawn_observer(&world.kube, record.clone());
    world.start_scheduler();
    for ns in scenario.namespaces.clone() {
        world.start_agent(&ns);
    }
    for plan in &scenario.sources {
        world.apply(plan, true, false).await;
    }
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let apps: Vec<JoinHandle<()>> = scenario
        .apps
        .iter()
        .map(|plan| {
            let client = Client::builder("http://scheduler.sim.invalid")
                .with_channel(world.net.channel(&plan.name));
            match client {
                Ok(c) => spawn_app(
                    plan.clone(),
                    c,
                    record.clone(),
                    seed,
                    options.sabotage,
                    stop.clone(),
                ),
                Err(e) => panic!("an application's client: {e}"),
            }
        })
        .collect();
    if options.sabotage == Some(Sabotage::PhantomAck) {
        record.lock().acked.insert(
            "ns-0/never-applied".into(),
            Acked {
                version: 1,
                deleted: false,
            },
        );
    }

    // The schedule, with periodic checks.
    let mut later: Vec<(Duration, Later)> = Vec::new();
    let mut violations = Vec::new();
    let mut next_poll = Duration::from_secs(60);
    let mut steps = scenario.schedule.iter().peekable();
    loop {
        let now = record.now();
        if now >= options.horizon {
            break;
        }
        later.sort_by_key(|(at, _)| *at);
        let next_step = steps.peek().map(|(at, _)| *at).unwrap_or(options.horizon);
        let next_later = later.first().map(|(at, _)| *at).unwrap_or(options.horizon);
        let next = next_step
            .min(next_later)
            .min(next_poll)
            .min(options.horizon);
        if next > now {
            // Virtual time passes to the schedule's next step (the world acts meanwhile).
            tokio::time::sleep(next - now).await;
            continue;
        }
        if next_later <= now && !later.is_empty() {
            let (_, what) = later.remove(0);
            world.later(&scenario, what).await;
        } else if next_step <= now {
            if let Some((_, action)) = steps.next() {
                let mut more = Vec::new();
                world.act(&scenario, action, &mut more).await;
                later.extend(more);
            }
        } else {
            next_poll = now + Duration::from_secs(60);
            world.poll_runs().await;
            let found = crate::invariants::during(&world).await;
            crate::invariants::add_new(&record, &mut violations, found);
        }
    }

    // Faults off: everything comes back, the cluster behaves, and the world settles.
    record.event("faults off; settling");
    world.kube.faults().clear();
    world.normal_behaviour();
    if world.scheduler.is_none() {
        world.start_scheduler();
    }
    for ns in scenario.namespaces.clone() {
        if !world.agents.contains_key(&ns) {
            world.start_agent(&ns);
        }
    }
    later.sort_by_key(|(at, _)| *at);
    for (_, what) in std::mem::take(&mut later) {
        if !matches!(what, Later::SchedulerUp | Later::AgentUp(_) | Later::Normal) {
            world.later(&scenario, what).await;
        }
    }
    let end = record.now() + options.settle;
    while record.now() < end {
        // A virtual minute passes between two checks of the invariants.
        tokio::time::sleep(Duration::from_secs(60)).await;
        world.poll_runs().await;
        let found = crate::invariants::during(&world).await;
        crate::invariants::add_new(&record, &mut violations, found);
    }
    // The applications stop taking part; every hold they have must end.
    if options.drop_guards {
        for app in &apps {
            app.abort();
        }
    } else {
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
    }
    let longest = scenario
        .apps
        .iter()
        .map(|a| a.hold_limit + a.grace)
        .max()
        .unwrap_or_default();
    // Past the longest hold any application may still have (virtual time): every hold must
    // have ended by then, which the final check asserts.
    tokio::time::sleep(longest + Duration::from_secs(5)).await;
    world.poll_runs().await;
    let found = crate::invariants::at_end(&world, &pvc_plans(&scenario)).await;
    crate::invariants::add_new(&record, &mut violations, found);
    observer.abort();
    record.event(format!("end: {} violations", violations.len()));
    (record, violations)
}

/// Per PVC (`namespace/pvc`): whether an application answers on it, and its sources' timeouts.
pub(crate) struct PvcPlan {
    pub(crate) answered: bool,
    /// Its sources' wait timeouts, and whether each skips on timeout.
    pub(crate) skip_after: Vec<(String, u64, bool)>,
}

fn pvc_plans(scenario: &Scenario) -> BTreeMap<String, PvcPlan> {
    scenario
        .pvcs
        .iter()
        .map(|(ns, pvc, _)| {
            let key = format!("{ns}/{pvc}");
            let answered = scenario.apps.iter().any(|a| a.ns == *ns && a.pvc == *pvc);
            let skip_after = scenario
                .sources
                .iter()
                .filter(|s| s.ns == *ns && s.pvc == *pvc)
                .map(|s| (s.name.clone(), s.wait_timeout, s.skip))
                .collect();
            (
                key,
                PvcPlan {
                    answered,
                    skip_after,
                },
            )
        })
        .collect()
}
