//! `snapgate-agent`: see `snapgate_agent` for the design.

use std::sync::Arc;

use anyhow::Context as _;
use clap::Parser as _;
use snapgate_agent::{
    AgentConfig, SchedulerAccess,
    args::{Args, LogFormat},
    link::Backoff,
    metrics::Metrics,
    proxy_env, run_with,
};
use snapgate_agent_core::{plan::PlanConfig, resources::MoverImages};
use snapgate_proto::clock::SystemClock;
use tracing::info;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let filter = tracing_subscriber::EnvFilter::try_new(&args.log)?;
    let fmt = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    match args.log_format {
        LogFormat::Plain => fmt.init(),
        LogFormat::Json => fmt.json().init(),
    }
    let client = kube::Client::try_default()
        .await
        .context("no Kubernetes configuration (in-cluster or kubeconfig)")?;
    let agent_id = args
        .agent_id
        .clone()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "snapgate-agent".into());
    let metrics = tokio::net::TcpListener::bind(args.metrics_listen)
        .await
        .with_context(|| {
            format!(
                "cannot listen on {} (--metrics-listen)",
                args.metrics_listen
            )
        })?;
    let registry = Metrics::new();
    let served = registry.clone();
    tokio::spawn(async move {
        let app = axum::Router::new()
            .route("/healthz", axum::routing::get(|| async { "ok" }))
            .route(
                "/metrics",
                axum::routing::get(move || {
                    let m = served.clone();
                    async move {
                        (
                            [(
                                http::header::CONTENT_TYPE,
                                "application/openmetrics-text; version=1.0.0; charset=utf-8",
                            )],
                            m.encode(),
                        )
                    }
                }),
            );
        let _ = axum::serve(metrics, app).await;
    });
    info!(
        scheduler = %args.scheduler,
        namespaces = ?args.namespaces,
        source_authors = ?args.source_authors,
        mover_stuck_after = %snapgate_proto::duration::format(args.mover_stuck_after),
        "starting"
    );
    let access = SchedulerAccess {
        ca_file: args.ca_file,
        token_file: args.token_file,
        client_cert: args.client_cert,
        client_key: args.client_key,
    };
    let config = AgentConfig {
        scheduler: args.scheduler,
        agent_id,
        namespaces: args.namespaces,
        plan: PlanConfig {
            images: MoverImages {
                restic: args.restic_image,
                rclone: args.rclone_image,
                rsync: args.rsync_image,
                rsync_tls: args.rsync_tls_image,
            },
            proxy: proxy_env(),
            source_authors: args.source_authors.into(),
            mover_pull_secrets: args.mover_image_pull_secrets,
            mover_scc: args.mover_scc,
            mover_stuck_after: args.mover_stuck_after,
            ..PlanConfig::default()
        },
        backoff: Backoff::default(),
        retry_after: snapgate_agent::executor::RETRY_AFTER,
        metrics: registry,
        clock: Arc::new(SystemClock),
    };
    tokio::select! {
        r = run_with(config, access, client) => r,
        _ = tokio::signal::ctrl_c() => Ok(()),
    }
}
