//! A whole deployment on loopback: the hosted simulated API server, the scheduler and one agent
//! as processes, and the SDK (figures 1, 5 and 7).

use std::{path::Path, process::Command, time::Duration};

use anyhow::{Context as _, bail};
use snapgate_proto::v1;

use crate::{
    procs::{self, Bins, Proc, SecSetup, Security},
    sim::{AGENT_TOKEN, HostedSim},
};

/// The namespace of every source of a cluster.
pub(crate) const NS: &str = "app";

/// The hosted API server, the scheduler, one agent and an SDK client.
pub(crate) struct Cluster {
    /// The simulated API server.
    pub(crate) sim: HostedSim,
    /// The scheduler.
    pub(crate) scheduler: Proc,
    /// The agent.
    pub(crate) agent: Proc,
    /// The SDK, as the admin (authentication) or anonymous.
    pub(crate) sdk: snapgate_sdk::Client,
    /// A kube client of the simulator (the administrator).
    pub(crate) kube: kube::Client,
    /// TLS and authentication.
    pub(crate) sec: SecSetup,
    /// The scheduler's URL.
    pub(crate) url: String,
}

impl Cluster {
    /// Starts everything in `dir`, namespace [`NS`] holding the restic Secret; `setup` runs on
    /// the simulator before the agent starts (PVCs to watch).
    pub(crate) async fn start(
        bins: &Bins,
        dir: &Path,
        security: Security,
        setup: impl FnOnce(&HostedSim) -> anyhow::Result<()>,
    ) -> anyhow::Result<Self> {
        let sim = HostedSim::start().await?;
        sim.namespace_with_secret(NS)?;
        // The mover pods and copies are quick: the figures time snapgate, not the movers.
        sim.sim
            .controllers()
            .snapshot_ready_delay(Duration::from_millis(20))
            .default_job_behaviour(snapgate_kube_sim::JobBehaviour::sequence(vec![
                snapgate_kube_sim::PodOutcome::succeed(["snapshot saved", "Restic completed"])
                    .after(Duration::from_millis(10)),
            ]));
        setup(&sim)?;
        let sec = SecSetup::new(&dir.join("sec"), security, &sim.sim)?;
        let port = procs::free_port();
        let url = sec.url(port);
        let mut scheduler = procs::spawn_scheduler(
            bins,
            &dir.join("data"),
            port,
            &sec,
            &dir.join("scheduler.log"),
        )?;
        let (sdk, _) = procs::wait_serving(
            &mut scheduler,
            &sec,
            &url,
            (NS, "probe"),
            Duration::from_secs(60),
        )
        .await?;
        let agent = spawn_agent(bins, dir, &sim, &sec, &url, NS, "agent")?;
        let kube = sim.client().await?;
        Ok(Self {
            sim,
            scheduler,
            agent,
            sdk,
            kube,
            sec,
            url,
        })
    }

    /// Fails if the scheduler or the agent has exited.
    pub(crate) fn check_alive(&mut self) -> anyhow::Result<()> {
        self.scheduler.check_alive()?;
        self.agent.check_alive()
    }
}

/// Starts an agent of namespace `ns` against the scheduler at `url`, its kubeconfig and log
/// named after `name` in `dir`.
pub(crate) fn spawn_agent(
    bins: &Bins,
    dir: &Path,
    sim: &HostedSim,
    sec: &SecSetup,
    url: &str,
    ns: &str,
    name: &str,
) -> anyhow::Result<Proc> {
    let kubeconfig = dir.join(format!("{name}.kubeconfig"));
    std::fs::write(&kubeconfig, sim.kubeconfig(AGENT_TOKEN))?;
    let mut cmd = Command::new(&bins.agent);
    cmd.env("KUBECONFIG", &kubeconfig)
        .args(["--scheduler", url])
        .args(["--namespace", ns])
        .args(["--agent-id", name])
        .args([
            "--metrics-listen",
            &format!("127.0.0.1:{}", procs::free_port()),
        ]);
    if sec.security.tls {
        cmd.arg("--ca-file").arg(&sec.ca);
    }
    match sec.token(&sim.sim, (ns, "snapgate-agent")) {
        // Sources have authors: the agent reviews them (allowed: RBAC is off in the simulator,
        // as in the e2e tests).
        Some(token) => {
            cmd.arg("--token-file").arg(token);
        }
        None => {
            cmd.arg("--source-authors=trust");
        }
    }
    Proc::spawn("snapgate-agent", &mut cmd, &dir.join(format!("{name}.log")))
}

/// Applies a restic Snapshot source `name` of PVC `pvc` in [`NS`] with a manual trigger and
/// `skipInitialRun` (no run until SyncNow); a wait for a trigger lasts `wait_timeout`.
pub(crate) async fn apply(
    sdk: &snapgate_sdk::Client,
    name: &str,
    pvc: &str,
    wait_timeout: Duration,
) -> anyhow::Result<()> {
    sdk.sources()
        .apply_source(v1::ApplySourceRequest {
            namespace: NS.into(),
            name: name.into(),
            spec: Some(v1::SourceSpec {
                source_pvc: pvc.into(),
                trigger: Some(v1::ReplicationSourceTrigger {
                    schedule: None,
                    manual: Some("bench".into()),
                }),
                restic: Some(v1::ReplicationSourceResticSpec {
                    copy_method: v1::CopyMethod::Snapshot as i32,
                    repository: "restic-config".into(),
                    ..Default::default()
                }),
                copy_trigger: Some(v1::CopyTriggerOptions {
                    wait_timeout: Some(prost_types::Duration {
                        seconds: i64::try_from(wait_timeout.as_secs()).unwrap_or(i64::MAX),
                        nanos: 0,
                    }),
                    ..Default::default()
                }),
                skip_initial_run: true,
                ..Default::default()
            }),
            expected_version: 0,
        })
        .await
        .with_context(|| format!("applying source {name}"))?;
    Ok(())
}

/// Starts a run of `source` in [`NS`] now (request id `id`); its run id.
pub(crate) async fn sync_now(
    sdk: &snapgate_sdk::Client,
    source: &str,
    id: &str,
) -> anyhow::Result<String> {
    let r = sdk
        .sources()
        .sync_now(v1::SyncNowRequest {
            namespace: NS.into(),
            name: source.into(),
            request_id: id.into(),
        })
        .await
        .with_context(|| format!("SyncNow {source}"))?
        .into_inner();
    if !r.started {
        bail!(
            "SyncNow {source} ({id}) started no run: one was in flight ({})",
            r.run_id
        );
    }
    Ok(r.run_id)
}

/// Waits until `run_id` of `source` has finished, within `within`; fails (a harness error)
/// if it did not succeed or did not finish.
pub(crate) async fn wait_finished(
    sdk: &snapgate_sdk::Client,
    source: &str,
    run_id: &str,
    within: Duration,
) -> anyhow::Result<()> {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let runs = sdk
            .sources()
            .list_runs(v1::ListRunsRequest {
                namespace: NS.into(),
                name: source.into(),
                limit: 1,
            })
            .await
            .with_context(|| format!("ListRuns {source}"))?
            .into_inner()
            .runs;
        if let Some(run) = runs.iter().find(|r| r.id == run_id)
            && run.phase() == v1::RunPhase::Finished
        {
            if run.result() != v1::RunResult::Successful {
                bail!(
                    "run {run_id} of {source} ended {:?}: {}",
                    run.result(),
                    run.message
                );
            }
            return Ok(());
        }
        if tokio::time::Instant::now() > deadline {
            bail!("run {run_id} of {source} did not finish within {within:?}: {runs:?}");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
