//! A world for end-to-end tests: the simulated API server, a real scheduler over gRPC on
//! loopback, and the agent's real code path (`snapgate_agent::run`) between them.
//!
//! Everything runs on the test's tokio runtime and reads the wall time from the world's one
//! [`TokioClock`] (the scheduler, also once restarted, and the agent, also once restarted), so a
//! test on paused tokio time (`#[tokio::test(start_paused = true)]`) moves every clock and timer
//! of the world at once: it lets minutes pass in an instant and sees only what those minutes
//! would have done. On a running clock the world's time is the system's.

#![allow(missing_docs)]

use std::{collections::BTreeMap, net::SocketAddr, sync::Arc, time::Duration};

use k8s_openapi::{
    api::{
        batch::v1::Job,
        core::v1::{Event, PersistentVolumeClaim, Secret},
    },
    apimachinery::pkg::api::resource::Quantity,
};
use kube::{
    Api,
    api::{ObjectMeta, Patch, PatchParams},
};
use snapgate_agent::{
    AgentConfig, SchedulerAccess, link::Backoff, metrics::Metrics as AgentMetrics,
};
use snapgate_agent_core::{plan::PlanConfig, resources::VolumeSnapshot, review::SourceAuthors};
use snapgate_kube_sim::KubeSim;
use snapgate_proto::{
    clock::{Clock, TokioClock},
    v1::{
        self, source_service_client::SourceServiceClient,
        trigger_service_client::TriggerServiceClient,
    },
};
use snapgate_scheduler::{
    Config,
    audit::Audit,
    auth::Authenticator,
    identity::{Authorizer, Policy},
    metrics::Metrics,
    serve,
    store::RedbStore,
};
use snapgate_sdk::client::AuthChannel;
use tokio::{net::TcpListener, sync::oneshot, task::JoinHandle};

use crate::secure;

pub const NS: &str = "app";
/// The user of the agent's ServiceAccount token in the simulator.
pub const AGENT_USER: &str = "system:serviceaccount:app:snapgate-agent";
pub const PVC: &str = "data";
pub const SOURCE: &str = "db";
/// The probe's PVC and source (see [`World::start_probe`]).
pub const PROBE: &str = "probe";
/// In a secured world ([`World::start_secured_after`]): the operator the tests call as, an
/// admin of the scheduler.
pub const ADMIN: (&str, &str) = ("snapgate", "admin");
/// In a secured world: a namespace admin of [`NS`] in the scheduler, with no rights in
/// Kubernetes unless a test grants them.
pub const OPS: (&str, &str) = (NS, "ops");

pub const RESTIC_LOG: [&str; 5] = [
    "using parent snapshot 4f2a",
    "processed 12 files, 3.4 MiB in 0:01",
    "snapshot 9c1d77ab saved",
    "some noise that is filtered out",
    "Restic completed in 2s",
];

pub struct World {
    pub sim: KubeSim,
    pub sources: SourceServiceClient<AuthChannel>,
    pub triggers: TriggerServiceClient<AuthChannel>,
    /// What an application links, connected to the scheduler.
    pub sdk: snapgate_sdk::Client,
    pub agent_metrics: AgentMetrics,
    scheduler: Option<JoinHandle<anyhow::Result<()>>>,
    stop_scheduler: Option<oneshot::Sender<()>>,
    agent: JoinHandle<anyhow::Result<()>>,
    addr: SocketAddr,
    agent_client: kube::Client,
    secured: Option<Secured>,
    /// The agent's plan settings (a restarted agent gets the same).
    plan: PlanConfig,
    /// The wall clock of the scheduler and the agent (restarted ones get the same).
    clock: Arc<dyn Clock>,
    _dir: tempfile::TempDir,
}

/// Authentication in a world: the scheduler checks callers' ServiceAccount tokens against the
/// simulator's key set, as on a cluster (see [`crate::secure`]).
#[derive(Clone, Debug)]
struct Secured {
    /// The agent's token for the scheduler.
    agent_token: std::path::PathBuf,
}

impl Secured {
    fn new(sim: &KubeSim, dir: &std::path::Path) -> Self {
        Self {
            agent_token: secure::write_token(sim, dir, (NS, "snapgate-agent")),
        }
    }

    /// The scheduler's check of tokens, and who may do what: [`ADMIN`] everything, [`OPS`]
    /// the sources of [`NS`], `snapgate-agent` serves its namespace.
    async fn scheduler(
        sim: &KubeSim,
        dir: &std::path::Path,
    ) -> (Authorizer, std::sync::Arc<Authenticator>) {
        let policy = Policy {
            admins: [secure::subject(ADMIN)].into(),
            namespace_admins: [(secure::subject(OPS), [NS.to_owned()].into())].into(),
            agent_service_account: "snapgate-agent".into(),
            agent_namespaces: Default::default(),
        };
        (
            Authorizer::with_policy(policy, Audit::to_log()),
            secure::authenticator(sim, dir).await,
        )
    }
}

async fn spawn_scheduler(
    dir: &std::path::Path,
    listener: TcpListener,
    secured: Option<&KubeSim>,
    clock: Arc<dyn Clock>,
) -> (JoinHandle<anyhow::Result<()>>, oneshot::Sender<()>) {
    let (authorizer, authenticator) = match secured {
        Some(sim) => {
            let (authorizer, authenticator) = Secured::scheduler(sim, dir).await;
            (authorizer, Some(authenticator))
        }
        None => (Authorizer::default(), None),
    };
    let config = Config {
        store: RedbStore::open(dir).unwrap().into(),
        clock,
        metrics: Metrics::new(),
        authorizer,
        authenticator,
        rate: (0, 0),
        lease_policy: Default::default(),
    };
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(serve(config, listener, async {
        let _ = stopped.await;
    }));
    (task, stop)
}

fn spawn_agent(
    addr: SocketAddr,
    client: kube::Client,
    metrics: AgentMetrics,
    secured: Option<&Secured>,
    mut plan: PlanConfig,
    clock: Arc<dyn Clock>,
) -> JoinHandle<anyhow::Result<()>> {
    if secured.is_some() {
        // Sources have authors: the agent acts with their rights only.
        plan.source_authors = SourceAuthors::Review;
    }
    let access = SchedulerAccess {
        token_file: secured.map(|s| s.agent_token.clone()),
        ..SchedulerAccess::default()
    };
    tokio::spawn(snapgate_agent::run_with(
        AgentConfig {
            scheduler: format!("http://{addr}"),
            agent_id: "test-agent".into(),
            namespaces: vec![NS.into()],
            plan,
            backoff: Backoff {
                initial: Duration::from_millis(20),
                max: Duration::from_millis(200),
            },
            retry_after: Duration::from_millis(200),
            metrics,
            clock,
        },
        access,
        client,
    ))
}

/// Grants the ServiceAccount `who`, in [`NS`], what a source's author needs for the agent to
/// act on the source: `create` on Jobs and, when given, `impersonate` on that one
/// ServiceAccount (a Role and a RoleBinding named after `who`).
pub fn grant_author(sim: &KubeSim, who: (&str, &str), impersonate: Option<&str>) {
    use k8s_openapi::api::rbac::v1::{PolicyRule, Role, RoleBinding, RoleRef, Subject};
    let name = format!("author-{}-{}", who.0, who.1);
    let mut rules = vec![PolicyRule {
        api_groups: Some(vec!["batch".into()]),
        resources: Some(vec!["jobs".into()]),
        verbs: vec!["create".into()],
        ..Default::default()
    }];
    if let Some(sa) = impersonate {
        rules.push(PolicyRule {
            api_groups: Some(vec![String::new()]),
            resources: Some(vec!["serviceaccounts".into()]),
            resource_names: Some(vec![sa.into()]),
            verbs: vec!["impersonate".into()],
            ..Default::default()
        });
    }
    let meta = ObjectMeta {
        name: Some(name.clone()),
        namespace: Some(NS.into()),
        ..Default::default()
    };
    sim.create(&Role {
        metadata: meta.clone(),
        rules: Some(rules),
    })
    .unwrap();
    sim.create(&RoleBinding {
        metadata: meta,
        role_ref: RoleRef {
            api_group: "rbac.authorization.k8s.io".into(),
            kind: "Role".into(),
            name,
        },
        subjects: Some(vec![Subject {
            kind: "ServiceAccount".into(),
            name: who.1.into(),
            namespace: Some(who.0.into()),
            ..Default::default()
        }]),
    })
    .unwrap();
}

/// The plan settings of a world's agent; without authentication it trusts the scheduler.
pub fn plan_config() -> PlanConfig {
    PlanConfig {
        mover_backoff: Duration::from_millis(500),
        mover_backoff_max: Duration::from_secs(1),
        // The world's scheduler runs without authentication: its sources have no author.
        source_authors: SourceAuthors::Trust,
        ..PlanConfig::default()
    }
}

impl World {
    /// Everything running, with namespace `app`, the restic Secret, and no PVC yet.
    pub async fn start() -> Self {
        Self::start_with(None).await
    }

    /// As [`World::start`]; the agent talks to the simulator as `token`'s user when given.
    pub async fn start_with(token: Option<&str>) -> Self {
        Self::start_after(token, |_| {}).await
    }

    /// As [`World::start_with`], with `setup` run on the simulator before the agent starts
    /// (RBAC objects, enforcement, faults).
    pub async fn start_after(token: Option<&str>, setup: impl FnOnce(&KubeSim)) -> Self {
        Self::start_inner(token, setup, false, plan_config()).await
    }

    /// As [`World::start`], the agent planning with `plan` (e.g. a short
    /// `mover_stuck_after`) instead of [`plan_config`].
    pub async fn start_planning(plan: PlanConfig) -> Self {
        Self::start_inner(None, |_| {}, false, plan).await
    }

    /// As [`World::start_after`], with authentication on as on a cluster: the scheduler
    /// checks ServiceAccount tokens the simulator signs; the world's clients call as
    /// [`ADMIN`], the agent as `snapgate-agent` of [`NS`]; the agent reviews every source's
    /// author with the simulator (see [`World::sources_as`] for other callers).
    pub async fn start_secured_after(token: Option<&str>, setup: impl FnOnce(&KubeSim)) -> Self {
        Self::start_inner(token, setup, true, plan_config()).await
    }

    async fn start_inner(
        token: Option<&str>,
        setup: impl FnOnce(&KubeSim),
        authenticated: bool,
        plan: PlanConfig,
    ) -> Self {
        let sim = KubeSim::new();
        if let Some(t) = token {
            sim.add_token(t, AGENT_USER);
        }
        sim.ensure_namespace(NS);
        sim.controllers()
            .default_job_behaviour(snapgate_kube_sim::JobBehaviour::succeed(RESTIC_LOG));
        sim.create(&secret(
            "restic-config",
            &["RESTIC_REPOSITORY", "RESTIC_PASSWORD"],
        ))
        .unwrap();
        setup(&sim);
        let dir = tempfile::tempdir().unwrap();
        let secured = authenticated.then(|| Secured::new(&sim, dir.path()));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let clock: Arc<dyn Clock> = Arc::new(TokioClock::starting_now());
        let (scheduler, stop_scheduler) = spawn_scheduler(
            dir.path(),
            listener,
            secured.as_ref().map(|_| &sim),
            clock.clone(),
        )
        .await;
        let mut sdk = snapgate_sdk::Client::builder(format!("http://{addr}"));
        if secured.is_some() {
            sdk = sdk.token_file(secure::write_token(&sim, dir.path(), ADMIN));
        }
        let sdk = sdk.connect().await.unwrap();
        let agent_client = match token {
            Some(t) => sim.client_as(t),
            None => sim.client(),
        };
        let agent_metrics = AgentMetrics::new();
        let agent = spawn_agent(
            addr,
            agent_client.clone(),
            agent_metrics.clone(),
            secured.as_ref(),
            plan.clone(),
            clock.clone(),
        );
        Self {
            sim,
            sources: sdk.sources(),
            triggers: sdk.triggers(),
            sdk,
            agent_metrics,
            scheduler: Some(scheduler),
            stop_scheduler: Some(stop_scheduler),
            agent,
            addr,
            agent_client,
            secured,
            plan,
            clock,
            _dir: dir,
        }
    }

    /// The SourceService as the ServiceAccount `(namespace, name)` (a secured world only).
    pub async fn sources_as(&self, who: (&str, &str)) -> SourceServiceClient<AuthChannel> {
        assert!(self.secured.is_some(), "a world without authentication");
        snapgate_sdk::Client::builder(format!("http://{}", self.addr))
            .token_file(secure::write_token(&self.sim, self._dir.path(), who))
            .connect()
            .await
            .unwrap()
            .sources()
    }

    /// Stops the scheduler (as SIGTERM does) and starts it again on the same address and
    /// store; the agent reconnects by itself.
    pub async fn restart_scheduler(&mut self) {
        if let Some(stop) = self.stop_scheduler.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.scheduler.take() {
            task.await.unwrap().unwrap();
        }
        let listener = TcpListener::bind(self.addr).await.unwrap();
        let (task, stop) = spawn_scheduler(
            self._dir.path(),
            listener,
            self.secured.as_ref().map(|_| &self.sim),
            self.clock.clone(),
        )
        .await;
        self.scheduler = Some(task);
        self.stop_scheduler = Some(stop);
    }

    /// Kills the agent task (its link drops, its watches end).
    pub async fn stop_agent(&mut self) {
        self.agent.abort();
        let _ = (&mut self.agent).await;
    }

    /// Starts a new agent: it keeps nothing, so it rebuilds its view from its watches and the
    /// scheduler's directives.
    pub fn start_agent(&mut self) {
        self.start_agent_with(|_| {});
    }

    /// As [`World::start_agent`], with the agent's settings changed by `tweak`.
    pub fn start_agent_with(&mut self, tweak: impl FnOnce(&mut PlanConfig)) {
        let mut plan = self.plan.clone();
        tweak(&mut plan);
        self.agent_metrics = AgentMetrics::new();
        self.agent = spawn_agent(
            self.addr,
            self.agent_client.clone(),
            self.agent_metrics.clone(),
            self.secured.as_ref(),
            plan,
            self.clock.clone(),
        );
    }

    /// Creates the source PVC, gated or not.
    pub fn create_pvc(&self, gated: bool) {
        self.sim.create(&source_pvc(gated)).unwrap();
    }

    pub async fn apply(&mut self, name: &str, spec: v1::SourceSpec) -> v1::Source {
        self.sources
            .apply_source(v1::ApplySourceRequest {
                namespace: NS.into(),
                name: name.into(),
                spec: Some(spec),
                expected_version: 0,
            })
            .await
            .unwrap()
            .into_inner()
    }

    pub async fn source(&mut self, name: &str) -> v1::Source {
        self.sources
            .get_source(v1::GetSourceRequest {
                namespace: NS.into(),
                name: name.into(),
            })
            .await
            .unwrap()
            .into_inner()
    }

    pub async fn runs(&self, name: &str) -> Vec<v1::Run> {
        self.sources
            .clone()
            .list_runs(v1::ListRunsRequest {
                namespace: NS.into(),
                name: name.into(),
                limit: 50,
            })
            .await
            .unwrap()
            .into_inner()
            .runs
    }

    pub async fn sync_now(&mut self, name: &str, request_id: &str) -> String {
        self.sources
            .sync_now(v1::SyncNowRequest {
                namespace: NS.into(),
                name: name.into(),
                request_id: request_id.into(),
            })
            .await
            .unwrap()
            .into_inner()
            .run_id
    }

    pub async fn copy_status(&mut self) -> v1::CopyStatus {
        self.triggers
            .get_copy_status(v1::GetCopyStatusRequest {
                target: Some(target()),
            })
            .await
            .unwrap()
            .into_inner()
    }

    pub async fn pause(&mut self, name: &str) {
        self.sources
            .pause_source(v1::PauseSourceRequest {
                namespace: NS.into(),
                name: name.into(),
                note: "maintenance".into(),
            })
            .await
            .unwrap();
    }

    pub async fn resume(&mut self, name: &str) {
        self.sources
            .resume_source(v1::ResumeSourceRequest {
                namespace: NS.into(),
                name: name.into(),
                note: String::new(),
            })
            .await
            .unwrap();
    }

    pub async fn delete_source(&mut self, name: &str) {
        self.sources
            .delete_source(v1::DeleteSourceRequest {
                namespace: NS.into(),
                name: name.into(),
                expected_version: 0,
            })
            .await
            .unwrap();
    }

    /// The newest run of `source`, once there is one and `ready` holds for it.
    pub async fn run_when(
        &mut self,
        source: &str,
        what: &str,
        ready: impl Fn(&v1::Run) -> bool,
    ) -> v1::Run {
        poll_until(
            &format!("the newest run of {source}: {what}"),
            Duration::from_secs(20),
            || async {
                let runs = self.runs(source).await;
                match runs.first().filter(|r| ready(r)) {
                    Some(run) => Ok(run.clone()),
                    None => Err(format!("{runs:#?}")),
                }
            },
        )
        .await
    }

    /// Starts the probe: the gated PVC [`PROBE`] and a source of that name on it, its run
    /// waiting for a trigger. See [`World::round_trip`].
    pub async fn start_probe(&mut self) {
        let mut pvc = source_pvc(true);
        pvc.metadata.name = Some(PROBE.into());
        self.sim.create(&pvc).unwrap();
        let mut spec = restic_spec(v1::CopyMethod::Clone, Duration::from_secs(600));
        spec.source_pvc = PROBE.into();
        self.apply(PROBE, spec).await;
        eventually("the probe waits for a trigger", || {
            (annotations_of(&self.sim, PROBE)
                .get(STATUS)
                .map(String::as_str)
                == Some("WaitingForTrigger"))
            .then_some(())
        })
        .await;
    }

    /// Releases the probe (once per [`World::start_probe`]) and waits until the agent has
    /// marked it InProgress: a round trip through the agent's PVC watch, its reports, the
    /// scheduler and its directives, each in order. When it returns, the agent has handled
    /// every PVC change made before the call and every directive the scheduler sent before it
    /// took the probe's report: what it did not do by then, it did not do for those.
    pub async fn round_trip(&self) {
        annotate(&self.sim, PROBE, serde_json::json!({ TRIGGER: "probe" })).await;
        eventually("the probe's round trip through the agent", || {
            (annotations_of(&self.sim, PROBE)
                .get(STATUS)
                .map(String::as_str)
                != Some("WaitingForTrigger"))
            .then_some(())
        })
        .await;
    }

    /// Waits until the source PVC's `latest-copy-status` is `want`.
    pub async fn wait_copy_status(&self, want: &str) {
        eventually(&format!("latest-copy-status {want}"), || {
            (self.copy_annotations().get(STATUS).map(String::as_str) == Some(want)).then_some(())
        })
        .await;
    }

    /// Waits until `n` runs of `source` ended Successful; the source as it is then.
    pub async fn wait_successful_runs(&mut self, source: &str, n: usize) -> v1::Source {
        poll_until(
            &format!("{n} successful run(s) of {source}"),
            Duration::from_secs(20),
            || async {
                let runs = self.runs(source).await;
                let ok = runs
                    .iter()
                    .filter(|r| r.result() == v1::RunResult::Successful)
                    .count();
                if ok >= n {
                    Ok(())
                } else {
                    Err(format!("{runs:#?}"))
                }
            },
        )
        .await;
        self.source(source).await
    }

    /// The source PVC's annotations, as the API server has them.
    pub fn annotations(&self) -> BTreeMap<String, String> {
        pvc_annotations(&self.sim)
    }

    /// The snapgate-owned and user copy-trigger annotations only.
    pub fn copy_annotations(&self) -> BTreeMap<String, String> {
        self.annotations()
            .into_iter()
            .filter(|(k, _)| k.starts_with("volsync.backube/") && k != USE)
            .collect()
    }

    pub fn snapshots(&self) -> Vec<VolumeSnapshot> {
        self.sim.list::<VolumeSnapshot>(Some(NS)).unwrap()
    }

    pub fn pvc_names(&self) -> Vec<String> {
        let mut names: Vec<String> = self
            .sim
            .list::<PersistentVolumeClaim>(Some(NS))
            .unwrap()
            .into_iter()
            .filter_map(|p| p.metadata.name)
            .collect();
        names.sort();
        names
    }

    pub fn jobs(&self) -> Vec<Job> {
        self.sim.list::<Job>(Some(NS)).unwrap()
    }

    pub fn event_reasons(&self) -> Vec<String> {
        self.sim
            .list::<Event>(Some(NS))
            .unwrap()
            .into_iter()
            .filter_map(|e| e.reason)
            .collect()
    }

    /// Writes `copy-trigger` the way a user or application does: a merge patch as its own
    /// field manager.
    pub async fn annotate_trigger(&self, value: &str) {
        annotate_pvc(&self.sim, serde_json::json!({ TRIGGER: value })).await;
    }

    /// Sets a status on an object through the status subresource, as a controller does.
    pub async fn patch_status<K>(&self, name: &str, status: serde_json::Value)
    where
        K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>
            + Clone
            + serde::de::DeserializeOwned
            + std::fmt::Debug,
    {
        let api: Api<K> = Api::namespaced(self.sim.client(), NS);
        api.patch_status(
            name,
            &PatchParams::default(),
            &Patch::Merge(serde_json::json!({ "status": status })),
        )
        .await
        .unwrap();
    }
}

/// The source PVC's annotations, as the API server has them.
pub fn pvc_annotations(sim: &KubeSim) -> BTreeMap<String, String> {
    annotations_of(sim, PVC)
}

/// The annotations of PVC `NS/name`, as the API server has them.
pub fn annotations_of(sim: &KubeSim, name: &str) -> BTreeMap<String, String> {
    sim.get::<PersistentVolumeClaim>(Some(NS), name)
        .unwrap()
        .metadata
        .annotations
        .unwrap_or_default()
}

/// Merge-patches the source PVC's annotations (`null` removes one) as a user does, through the
/// API server, under its own field manager.
pub async fn annotate_pvc(sim: &KubeSim, annotations: serde_json::Value) {
    annotate(sim, PVC, annotations).await;
}

/// As [`annotate_pvc`], for PVC `NS/name`.
pub async fn annotate(sim: &KubeSim, name: &str, annotations: serde_json::Value) {
    let api: Api<PersistentVolumeClaim> = Api::namespaced(sim.client(), NS);
    api.patch(
        name,
        &PatchParams::apply("kubectl-annotate"),
        &Patch::Merge(serde_json::json!({ "metadata": { "annotations": annotations } })),
    )
    .await
    .unwrap();
}

pub use snapgate_contract::{
    COPY_TRIGGER as TRIGGER, LATEST_COPY_STATUS as STATUS, LATEST_COPY_TRIGGER as LATEST,
    LATEST_COPY_TRIGGER_WAITING_SINCE as SINCE, USE_COPY_TRIGGER as USE,
};

/// The source PVC `NS/PVC`, 1Gi ReadWriteOnce, gated (`use-copy-trigger`) or not.
pub fn source_pvc(gated: bool) -> PersistentVolumeClaim {
    pvc(NS, PVC, gated)
}

/// PVC `ns/name`, 1Gi ReadWriteOnce of the `standard` class, gated (`use-copy-trigger`) or
/// not.
pub fn pvc(ns: &str, name: &str, gated: bool) -> PersistentVolumeClaim {
    let mut annotations = BTreeMap::new();
    if gated {
        annotations.insert("volsync.backube/use-copy-trigger".to_owned(), String::new());
    }
    PersistentVolumeClaim {
        metadata: ObjectMeta {
            name: Some(name.into()),
            namespace: Some(ns.into()),
            annotations: Some(annotations),
            ..Default::default()
        },
        spec: Some(k8s_openapi::api::core::v1::PersistentVolumeClaimSpec {
            access_modes: Some(vec!["ReadWriteOnce".into()]),
            storage_class_name: Some("standard".into()),
            resources: Some(k8s_openapi::api::core::v1::VolumeResourceRequirements {
                requests: Some(BTreeMap::from([(
                    "storage".to_owned(),
                    Quantity("1Gi".into()),
                )])),
                ..Default::default()
            }),
            ..Default::default()
        }),
        status: None,
    }
}

pub fn target() -> v1::CopyTarget {
    v1::CopyTarget {
        namespace: NS.into(),
        pvc: PVC.into(),
        source: String::new(),
    }
}

pub fn secret(name: &str, keys: &[&str]) -> Secret {
    Secret {
        metadata: ObjectMeta {
            name: Some(name.into()),
            namespace: Some(NS.into()),
            ..Default::default()
        },
        string_data: Some(
            keys.iter()
                .map(|k| ((*k).to_owned(), "x".to_owned()))
                .collect(),
        ),
        ..Default::default()
    }
}

/// The four movers, each with what its source needs and what its Job logs in the simulator.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MoverKind {
    Restic,
    Rclone,
    Rsync,
    RsyncTls,
}

impl MoverKind {
    pub const ALL: [MoverKind; 4] = [Self::Restic, Self::Rclone, Self::Rsync, Self::RsyncTls];

    /// The mover Job's name for source `SOURCE`.
    pub fn job(self) -> &'static str {
        match self {
            Self::Restic => "volsync-src-db",
            Self::Rclone => "volsync-rclone-src-db",
            Self::Rsync => "volsync-rsync-src-db",
            Self::RsyncTls => "volsync-rsync-tls-src-db",
        }
    }

    /// A source of `PVC` with this mover and copy method, manual trigger `m1`, and this wait
    /// timeout (keep waiting).
    pub fn spec(self, method: v1::CopyMethod, wait_timeout: Duration) -> v1::SourceSpec {
        let mut spec = match self {
            Self::Restic => return restic_spec(method, wait_timeout),
            Self::Rclone => rclone_spec(method),
            Self::Rsync => v1::SourceSpec {
                rsync: Some(v1::ReplicationSourceRsyncSpec {
                    copy_method: method as i32,
                    ssh_keys: "rsync-keys".into(),
                    address: "backup.example.com".into(),
                    ..Default::default()
                }),
                ..rclone_spec(method)
            },
            Self::RsyncTls => v1::SourceSpec {
                rsync_tls: Some(v1::ReplicationSourceRsyncTlsSpec {
                    copy_method: method as i32,
                    key_secret: "tls-key".into(),
                    address: "10.0.0.9".into(),
                    ..Default::default()
                }),
                ..rclone_spec(method)
            },
        };
        if self != Self::Rclone {
            spec.rclone = None;
        }
        spec.copy_trigger = restic_spec(method, wait_timeout).copy_trigger;
        spec
    }

    /// The Secret the mover needs (restic's exists in every World).
    pub fn secret(self) -> Option<Secret> {
        match self {
            Self::Restic => None,
            Self::Rclone => Some(secret("rclone-secret", &["rclone.conf"])),
            Self::Rsync => Some(secret(
                "rsync-keys",
                &["source", "source.pub", "destination.pub"],
            )),
            Self::RsyncTls => Some(secret("tls-key", &["psk.txt"])),
        }
    }

    /// What the mover's pod logs in the simulator: its summary lines and some noise.
    pub fn log(self) -> Vec<&'static str> {
        match self {
            Self::Restic => RESTIC_LOG.to_vec(),
            Self::Rclone => vec![
                "Transferred:   1.2 MiB / 1.2 MiB, 100%",
                "some noise that is filtered out",
                "Elapsed time:  1.0s",
                "Rclone completed in 1s",
            ],
            Self::Rsync | Self::RsyncTls => vec![
                "some noise that is filtered out",
                "sent 1,234 bytes  received 56 bytes  2,580.00 bytes/sec",
                "total size is 10,000  speedup is 7.75",
                "rsync completed in 2s",
            ],
        }
    }

    /// The log tail `latestMoverStatus.logs` must hold: the summary lines only.
    pub fn tail(self) -> String {
        self.log()
            .into_iter()
            .filter(|l| !l.contains("noise"))
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// Whether the mover keeps a cache PVC (restic).
    pub fn cache(self) -> Option<&'static str> {
        (self == Self::Restic).then_some("volsync-src-db-cache")
    }
}

/// An rclone source of `PVC` with this copy method and manual trigger `m1` (one run), its
/// config in the Secret `rclone-secret`.
pub fn rclone_spec(method: v1::CopyMethod) -> v1::SourceSpec {
    v1::SourceSpec {
        source_pvc: PVC.into(),
        trigger: Some(v1::ReplicationSourceTrigger {
            schedule: None,
            manual: Some("m1".into()),
        }),
        rclone: Some(v1::ReplicationSourceRcloneSpec {
            copy_method: method as i32,
            rclone_config: "rclone-secret".into(),
            rclone_config_section: "s3".into(),
            rclone_dest_path: "bucket/db".into(),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// A restic source of `PVC` with this copy method, manual trigger `m1` (one run), and a
/// short wait timeout.
pub fn restic_spec(method: v1::CopyMethod, wait_timeout: Duration) -> v1::SourceSpec {
    v1::SourceSpec {
        source_pvc: PVC.into(),
        trigger: Some(v1::ReplicationSourceTrigger {
            schedule: None,
            manual: Some("m1".into()),
        }),
        restic: Some(v1::ReplicationSourceResticSpec {
            copy_method: method as i32,
            repository: "restic-config".into(),
            ..Default::default()
        }),
        copy_trigger: Some(v1::CopyTriggerOptions {
            wait_timeout: Some(prost_types::Duration {
                seconds: i64::try_from(wait_timeout.as_secs()).unwrap(),
                nanos: 0,
            }),
            on_timeout: v1::TimeoutPolicy::KeepWaiting as i32,
            holders: Vec::new(),
            allowed_service_accounts: Vec::new(),
        }),
        ..Default::default()
    }
}

/// How far tokio's clock moves between two polls of a bounded wait.
const POLL: Duration = Duration::from_millis(20);
/// The most a paused clock moves at once in [`let_pass`].
const PASS_STEP: Duration = Duration::from_millis(100);

/// Moves tokio's clock `step` forward after a moment of real time in which a paused clock is
/// held: the pause between two polls of a bounded wait, and the step of [`let_pass`].
///
/// Why the moment of real time: a world's scheduler is reached over loopback TCP, which the
/// kernel paces in real time (a small segment can wait for the peer's delayed ACK, 40 ms).
/// Tokio moves a paused clock whenever the runtime is idle, also while such a segment is on its
/// way; unheld, the clock would run ahead of the world's IO and fire seconds of timers (link
/// keep-alives, wait timeouts) while a directive is still in the kernel. Tokio does not move a
/// paused clock while a blocking task runs: with one millisecond of it per step, a paused clock
/// runs at most `step` per millisecond of real time, and IO that arrives meanwhile is handled
/// at the time it was sent. Not a wait for anything: a wait polls its condition after it, and
/// [`let_pass`] is what shows what did not happen.
pub async fn pace(step: Duration) {
    // One millisecond of real time with a paused clock held (see above); not synchronisation.
    let _ = tokio::task::spawn_blocking(|| std::thread::sleep(Duration::from_millis(1))).await;
    tokio::time::sleep(step).await;
}

/// Lets `time` pass on the test's paused tokio clock (`#[tokio::test(start_paused = true)]`),
/// to show what did not happen in it. Tokio moves a paused clock only once every task of the
/// runtime is idle, and then only to the next timer (here at most `PASS_STEP` at once, see
/// [`pace`]): when this returns, the world has done all it would have done in `time` (timers,
/// retries, resyncs, the simulator's controllers) and no more. On a running clock it panics
/// (after `time`).
pub async fn let_pass(time: Duration) {
    let real = std::time::Instant::now();
    let mut left = time;
    while !left.is_zero() {
        let step = left.min(PASS_STEP);
        pace(step).await;
        left -= step;
    }
    assert!(
        real.elapsed() < time,
        "let_pass is for paused time (#[tokio::test(start_paused = true)])"
    );
}

/// Polls `check` until it returns `Some`, or panics naming `what` after 20 s.
pub async fn eventually<T>(what: &str, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(v) = check() {
            return v;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for: {what}"
        );
        pace(POLL).await;
    }
}

/// Polls the async `check` until it yields `Ok`, or panics after `within` naming `what` and the
/// last `Err` (what was seen instead). The one bounded wait of the process and World tests.
pub async fn poll_until<T, F: std::future::Future<Output = Result<T, String>>>(
    what: &str,
    within: Duration,
    mut check: impl FnMut() -> F,
) -> T {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        match check().await {
            Ok(v) => return v,
            Err(seen) => assert!(
                tokio::time::Instant::now() < deadline,
                "timed out after {within:?} waiting for: {what}; last seen: {seen}"
            ),
        }
        pace(POLL).await;
    }
}

/// As [`eventually`], for checks that call the scheduler.
#[macro_export]
macro_rules! eventually_async {
    ($what:expr, $body:expr) => {{
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(20);
        loop {
            if let Some(v) = $body {
                break v;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "timed out waiting for: {}",
                $what
            );
            $crate::pace(std::time::Duration::from_millis(20)).await;
        }
    }};
}
