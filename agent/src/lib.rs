//! The snapgate agent: the IO shell around `snapgate-agent-core`.
//!
//! ```text
//!   scheduler ◄──AgentService.Connect── link ──► executor ◄── watches (PVCs, snapshots, Jobs,
//!                                                   │         mover pods, Warning Events)
//!                                                   │
//!                                                   └──► Cluster (kube::Api): patches, creates,
//!                                                        deletes, Events, pod logs
//! ```
//!
//! The agent keeps nothing that cannot be rebuilt: directives come from the scheduler (resent
//! on every reconnect), and what it knows of the cluster comes from its watches.

pub mod access;
pub mod args;
pub mod cache;
pub mod cluster;
pub mod executor;
pub mod link;
pub mod metrics;
pub mod watch;

use std::{collections::BTreeMap, sync::Arc};

use k8s_openapi::api::{
    batch::v1::Job,
    core::v1::{Event, PersistentVolumeClaim, Pod},
};
use snapgate_agent_core::{
    names,
    plan::PlanConfig,
    resources::{PROXY_VARIABLES, VolumeSnapshot},
};
use snapgate_proto::{clock::Clock, v1};
use tokio::sync::mpsc;

pub use crate::access::{Connector, SchedulerAccess};

use crate::{
    cluster::Cluster,
    executor::{Change, Executor},
    link::Backoff,
    metrics::Metrics,
};

/// What an agent runs with.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    /// The scheduler's URL.
    pub scheduler: String,
    /// This agent's name.
    pub agent_id: String,
    /// The namespaces it serves.
    pub namespaces: Vec<String>,
    /// Images, proxies.
    pub plan: PlanConfig,
    /// Reconnect back-off.
    pub backoff: Backoff,
    /// How soon a failed Kubernetes call (or a missing Secret) is tried again.
    pub retry_after: std::time::Duration,
    /// Where the agent counts what it does.
    pub metrics: Metrics,
    /// Where the agent reads the wall time (production: `SystemClock`).
    pub clock: Arc<dyn Clock>,
}

/// The proxy variables of this process, to pass on to mover Jobs.
pub fn proxy_env() -> BTreeMap<String, String> {
    PROXY_VARIABLES
        .into_iter()
        .flat_map(|(upper, lower)| [upper, lower])
        .filter_map(|k| std::env::var(k).ok().map(|v| (k.to_owned(), v)))
        .collect()
}

/// Starts the watches of PVCs (all), VolumeSnapshots, Jobs and pods (snapgate's) and Warning
/// Events in `namespaces`, sending every change to `changes`.
pub fn spawn_watches(
    client: &kube::Client,
    namespaces: &[String],
    changes: &mpsc::Sender<Change>,
) -> Vec<tokio::task::JoinHandle<()>> {
    let ours = (Some(names::CREATED_BY_SELECTOR), None);
    let mut watches = Vec::new();
    for ns in namespaces {
        watches.push(watch::spawn::<PersistentVolumeClaim, _>(
            client.clone(),
            ns,
            (None, None),
            changes.clone(),
            Change::Pvc,
        ));
        watches.push(watch::spawn::<VolumeSnapshot, _>(
            client.clone(),
            ns,
            ours,
            changes.clone(),
            Change::Snapshot,
        ));
        watches.push(watch::spawn::<Job, _>(
            client.clone(),
            ns,
            ours,
            changes.clone(),
            Change::Job,
        ));
        watches.push(watch::spawn::<Pod, _>(
            client.clone(),
            ns,
            ours,
            changes.clone(),
            Change::Pod,
        ));
        watches.push(watch::spawn_namespace(
            client.clone(),
            ns,
            changes.clone(),
            Change::Namespace,
        ));
        watches.push(watch::spawn::<Event, _>(
            client.clone(),
            ns,
            (None, Some("type=Warning")),
            changes.clone(),
            Change::Event,
        ));
    }
    watches
}

/// Runs the agent until the task is dropped: plaintext (or TLS with the system roots) and no
/// token; see [`run_with`].
pub async fn run(config: AgentConfig, client: kube::Client) -> anyhow::Result<()> {
    run_with(config, SchedulerAccess::default(), client).await
}

/// Runs the agent until the task is dropped, reaching the scheduler with `access`.
pub async fn run_with(
    config: AgentConfig,
    access: SchedulerAccess,
    client: kube::Client,
) -> anyhow::Result<()> {
    let scheduler = access.connector(&config.scheduler)?;
    run_connected(config, scheduler, client).await
}

/// Runs the agent until the task is dropped, reaching the scheduler through `scheduler`
/// (`config.scheduler` is not read): for an embedding with its own [`Connector::dialing`].
pub async fn run_connected(
    config: AgentConfig,
    scheduler: Connector,
    client: kube::Client,
) -> anyhow::Result<()> {
    let (change_tx, change_rx) = mpsc::channel(1024);
    let watches = spawn_watches(&client, &config.namespaces, &change_tx);
    drop(change_tx);
    let (link_tx, link_rx) = mpsc::channel(1024);
    let hello = v1::AgentHello {
        agent_id: config.agent_id.clone(),
        namespaces: config.namespaces.clone(),
        version: env!("CARGO_PKG_VERSION").into(),
        // The executor acts on a leased directive only under a lease it requested.
        leases: true,
    };
    let link = tokio::spawn(link::run(scheduler, hello, config.backoff, link_tx));
    let executor = Executor::new(
        Cluster::new(client),
        config.plan,
        config.metrics,
        config.retry_after,
        config.clock,
    );
    executor.run(link_rx, change_rx).await;
    link.abort();
    for w in watches {
        w.abort();
    }
    Ok(())
}
