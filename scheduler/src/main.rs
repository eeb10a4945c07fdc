//! `snapgate-scheduler`: see `snapgate_scheduler` for the design.

use std::sync::Arc;

use anyhow::Context as _;
use clap::Parser as _;
use snapgate_etcd::Elector;
use snapgate_proto::clock::SystemClock;
use snapgate_scheduler::{
    Config, Listening, Storage,
    args::{Args, Command, StoreKind, init_tracing},
    audit::Audit,
    auth::Authenticator,
    bind,
    identity::Authorizer,
    metrics::Metrics,
    replica::{Elected, Replica},
    serve_metrics, serve_with,
    store::{
        RedbStore, Store, dump,
        etcd::{EtcdFeed, EtcdStore},
    },
};
use tokio::sync::watch;
use tracing::{info, warn};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    init_tracing(args.log_format, &args.log)?;
    if let Some(command) = &args.command {
        return offline(&args, command).await;
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
    let storage = match args.store {
        StoreKind::Redb => {
            let store = RedbStore::open(&args.data_dir).with_context(|| {
                format!(
                    "opening the store in {} (--data-dir)",
                    args.data_dir.display()
                )
            })?;
            info!(data_dir = %args.data_dir.display(), "store opened");
            Storage::from(store)
        }
        StoreKind::Etcd => Storage::Replica(replica(&args).await?),
    };
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
        store: storage,
        clock: Arc::new(SystemClock),
        metrics,
        authorizer,
        authenticator,
        rate: (args.rate_limit, args.rate_burst),
        lease_policy,
    };
    let listening = Listening {
        tls,
        health,
        driver_thread: true,
    };
    serve_with(config, grpc, listening, stopped(stop_rx)).await?;
    metrics_task.await??;
    info!("stopped");
    Ok(())
}

/// This replica's part in the election on etcd: connected and observing the leader; its
/// campaign, and the fenced store it gives, run once the server is up.
async fn replica(args: &Args) -> anyhow::Result<Replica> {
    let opts = args.etcd_options()?;
    let name = args.replica_name();
    let elector = Elector::connect(&opts, name.clone(), args.etcd_lease_ttl)
        .await
        .with_context(|| {
            format!(
                "connecting to etcd at {} (--etcd-endpoints)",
                opts.endpoints.join(",")
            )
        })?;
    info!(
        endpoints = opts.endpoints.join(","),
        prefix = opts.prefix,
        name,
        "etcd store: replicas elect one leader"
    );
    let leader = elector.leader();
    // Until elected, it serves reads from a copy of the leader's commits.
    let feed = EtcdFeed::new(&opts).context("connecting the follower's feed to etcd")?;
    let elected = async move {
        let leadership = elector.campaign().await?;
        let fence = leadership.fence.clone();
        info!(revision = fence.revision, "won the election");
        // The store's calls block (a thread of its own serves them): not on this runtime's.
        let store = tokio::task::spawn_blocking(move || EtcdStore::open(&opts, Some(fence)))
            .await
            .context("opening the etcd store")??;
        let lost = leadership.lost();
        let resign = Box::pin(async move {
            // The elector lives as long as the tenure.
            let _elector = elector;
            if let Err(e) = leadership.resign().await {
                warn!(error = %e, "resigning failed: a follower takes over when the lease ends");
            }
        });
        Ok(Elected {
            store: Box::new(store),
            lost,
            resign,
        })
    };
    Ok(Replica {
        name,
        elected: Box::pin(elected),
        leader,
        feed: Some(Box::new(feed)),
    })
}

/// Export or import, on the store the flags name; prints what moved.
async fn offline(args: &Args, command: &Command) -> anyhow::Result<()> {
    let mut store: Box<dyn Store> = match args.store {
        StoreKind::Redb => Box::new(RedbStore::open(&args.data_dir).with_context(|| {
            format!(
                "opening the store in {} (--data-dir; is a scheduler running on it?)",
                args.data_dir.display()
            )
        })?),
        StoreKind::Etcd => {
            let opts = args.etcd_options()?;
            let client = snapgate_etcd::Client::new(&opts)?;
            let (leader, _) = client
                .get(opts.leader_key().as_bytes())
                .await
                .context("reading the election key (--etcd-endpoints)")?;
            if let Some(leader) = leader {
                anyhow::bail!(
                    "a scheduler leads on this prefix ({}): export and import work on a stopped \
                     store (scale the replicas to 0 first); for a backup of a running one, take \
                     an etcd snapshot (docs/high-availability.md)",
                    String::from_utf8_lossy(&leader.value)
                );
            }
            let store = tokio::task::spawn_blocking(move || EtcdStore::open(&opts, None))
                .await
                .context("opening the etcd store")??;
            Box::new(store)
        }
    };
    // The store's calls block.
    let command = command.clone();
    tokio::task::spawn_blocking(move || run_offline(store.as_mut(), &command))
        .await
        .context("the offline task")?
}

fn run_offline(store: &mut dyn Store, command: &Command) -> anyhow::Result<()> {
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
            let summary = dump::export(store, &mut file, *skip_quarantined)?;
            file.sync_all()
                .with_context(|| format!("syncing {}", output.display()))?;
            summary
        }
        Command::Import { input } => {
            let mut file = std::fs::File::open(input)
                .with_context(|| format!("opening {} (--input)", input.display()))?;
            dump::import(store, &mut file)?
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
