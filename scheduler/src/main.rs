//! `snapgate-scheduler`: see `snapgate_scheduler` for the design.

use std::sync::Arc;

use anyhow::Context as _;
use clap::Parser as _;
use snapgate_proto::clock::SystemClock;
use snapgate_scheduler::{
    Config, Listening,
    args::{Args, Command, init_tracing},
    audit::Audit,
    auth::Authenticator,
    bind,
    identity::Authorizer,
    metrics::Metrics,
    serve_metrics, serve_with,
    store::{RedbStore, dump},
};
use tokio::sync::watch;
use tracing::{info, warn};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    init_tracing(args.log_format, &args.log)?;
    if let Some(command) = &args.command {
        return offline(&args, command);
    }
    let security = args.security()?;
    let lease_policy = args.lease_policy()?;
    let audit = match &args.audit_log {
        Some(path) => Audit::to_file(path)
            .with_context(|| format!("opening the audit log {} (--audit-log)", path.display()))?,
        None => Audit::to_log(),
    };
    let (authenticator, authorizer) = match security.issuer {
        Some(issuer) => {
            info!(
                issuer = issuer.issuer,
                audience = issuer.audience,
                "authentication on"
            );
            (
                Some(Authenticator::load(vec![issuer]).await),
                Authorizer::with_policy(security.policy, audit),
            )
        }
        None => {
            warn!("authentication off: every caller may do everything");
            (None, Authorizer::open(audit))
        }
    };
    let store = RedbStore::open(&args.data_dir).with_context(|| {
        format!(
            "opening the store in {} (--data-dir)",
            args.data_dir.display()
        )
    })?;
    info!(data_dir = %args.data_dir.display(), "store opened");
    let tls = args.server_tls()?;
    let grpc = bind(args.listen, "listen").await?;
    let health = match args.health_listen {
        Some(addr) => Some(bind(addr, "health-listen").await?),
        None => None,
    };
    let metrics_listener = bind(args.metrics_listen, "metrics-listen").await?;
    let metrics = Metrics::new();

    let (stop_tx, stop_rx) = watch::channel(false);
    tokio::spawn(async move {
        wait_for_signal().await;
        let _ = stop_tx.send(true);
    });
    let stopped = |mut rx: watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };
    let metrics_task = tokio::spawn(serve_metrics(
        metrics.clone(),
        metrics_listener,
        stopped(stop_rx.clone()),
    ));
    let config = Config {
        store: store.into(),
        clock: Arc::new(SystemClock),
        metrics,
        authorizer,
        authenticator,
        rate: (args.rate_limit, args.rate_burst),
        lease_policy,
    };
    serve_with(config, grpc, Listening { tls, health }, stopped(stop_rx)).await?;
    metrics_task.await??;
    info!("stopped");
    Ok(())
}

/// Export or import, on the store the flags name; prints what moved.
fn offline(args: &Args, command: &Command) -> anyhow::Result<()> {
    let mut store = RedbStore::open(&args.data_dir).with_context(|| {
        format!(
            "opening the store in {} (--data-dir; is a scheduler running on it?)",
            args.data_dir.display()
        )
    })?;
    let summary = match command {
        Command::Export {
            output,
            skip_quarantined,
        } => {
            let mut file = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(output)
                .with_context(|| format!("creating {} (--output)", output.display()))?;
            let summary = dump::export(&store, &mut file, *skip_quarantined)?;
            file.sync_all()
                .with_context(|| format!("syncing {}", output.display()))?;
            summary
        }
        Command::Import { input } => {
            let mut file = std::fs::File::open(input)
                .with_context(|| format!("opening {} (--input)", input.display()))?;
            dump::import(&mut store, &mut file)?
        }
    };
    println!(
        "{}: {} source(s), {} run(s), next run number {}{}",
        match command {
            Command::Export { .. } => "exported",
            Command::Import { .. } => "imported",
        },
        summary.sources,
        summary.runs,
        summary.next_run,
        if summary.skipped > 0 {
            format!(
                ", {} record(s) that do not decode left out",
                summary.skipped
            )
        } else {
            String::new()
        }
    );
    Ok(())
}

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let mut term = signal(SignalKind::terminate()).expect("installing the SIGTERM handler");
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = tokio::signal::ctrl_c().await;
}
