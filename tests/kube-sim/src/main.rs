//! `snapgate-kube-sim`: run the simulated Kubernetes API server for the local
//! demo and kubectl.

use std::path::PathBuf;

use clap::Parser;

/// Command-line options.
#[derive(Debug, Parser)]
#[command(about = "Simulated Kubernetes API server (plain HTTP)")]
struct Args {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:6443")]
    listen: String,
    /// Where to write a kubeconfig pointing at the server.
    #[arg(long)]
    kubeconfig: Option<PathBuf>,
    /// Bearer token written into the kubeconfig (mapped to the admin user).
    #[arg(long, default_value = snapgate_kube_sim::ADMIN_TOKEN)]
    token: String,
    /// Issuer (`iss`) of the ServiceAccount tokens the server signs and accepts;
    /// `url` means the served URL (e.g. `http://127.0.0.1:6443`).
    #[arg(long, default_value = snapgate_kube_sim::DEFAULT_ISSUER)]
    issuer: String,
    /// How every Job's pods behave: `succeed` (after 100 ms), `fail` (the Job fails past its
    /// backoffLimit), `hang` (run for ever), `FailedCreate` (the Job makes no pod: a Warning
    /// FailedCreate Event on it), or a reason its pods are stuck for, for ever, while the Job
    /// stays active: a container waiting reason (`ImagePullBackOff`, `ErrImagePull`,
    /// `InvalidImageName`, `CreateContainerConfigError`, `CreateContainerError`,
    /// `CrashLoopBackOff`), `FailedMount`, `FailedAttachVolume` or `Unschedulable`, each with
    /// the status and Events a kubelet (or the scheduler) shows.
    #[arg(long, default_value = "succeed", value_parser = snapgate_kube_sim::JobBehaviour::parse)]
    mover_pods: snapgate_kube_sim::JobBehaviour,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .init();
    let args = Args::parse();
    let sim = snapgate_kube_sim::KubeSim::new();
    sim.controllers()
        .default_job_behaviour(args.mover_pods.clone());
    sim.add_token(&args.token, snapgate_kube_sim::ADMIN_USER);
    let addr = sim.serve(&args.listen).await?;
    if args.issuer == "url" {
        sim.set_issuer(&format!("http://{addr}"));
    } else {
        sim.set_issuer(&args.issuer);
    }
    if let Some(path) = &args.kubeconfig {
        sim.write_kubeconfig(path, &args.token)?;
        eprintln!("kubeconfig written to {}", path.display());
    }
    eprintln!("kube-sim listening on http://{addr}");
    eprintln!(
        "ServiceAccount tokens: issuer {}, JWKS at http://{addr}/openid/v1/jwks",
        sim.issuer()
    );
    tokio::signal::ctrl_c().await?;
    Ok(())
}
