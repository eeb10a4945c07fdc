//! `snapgate-bench`: snapgate's benchmark harness.
//!
//! It starts the real `snapgate-scheduler` and `snapgate-agent` release binaries as processes on
//! loopback (temporary data directories, killed at the end whatever happens), hosts the
//! simulated API server (`snapgate-kube-sim`, served over loopback HTTP exactly as its binary
//! serves it, behind a thin journal that timestamps every request), drives them with the SDK
//! and measures nine figures, each against a reference measured in the same run:
//!
//! | # | figure | reference |
//! |---|---|---|
//! | 1 | quiesce window (Trigger → copy created; copy ready → Completed seen) | a bare tonic unary round trip + a bare simulated-API GET |
//! | 2 | thundering herd (every due run's directive sent; peak RSS) | a bare tonic server streaming as many messages |
//! | 3 | throughput (durable Triggers/s, GetCopyStatus/s at 64 clients) | a bare tonic unary echo server |
//! | 4 | flat cost (GetSource, GetCopyStatus, ApplySource, SyncNow at 100 … 100,000 sources) | the same call at 100 sources |
//! | 5 | API cost of a run (requests by verb; a 10-minute wait) | VolSync's writes for the same run |
//! | 6 | restart (process start to serving) | the same with an empty store |
//! | 7 | memory at rest (scheduler, agent) | the same processes with nothing to hold |
//! | 8 | soak (every-minute schedules with faults: times missed, RSS) | RSS at the second half's start |
//! | 9 | high availability on etcd (write rate; kill -9 the leader → the new leader's first directive) | the same writes on redb; the lease TTL |
//!
//! A figure that misses its goal is reported, not failed: the process exits non-zero only on a
//! harness error (a process died, a run failed). See BENCHMARKS.md for the numbers.

mod echo;
mod figures;
mod procs;
mod report;
mod seed;
mod sim;
mod stats;
mod stub;
mod world;

use std::{path::PathBuf, time::Instant};

use anyhow::Context as _;
use clap::{Parser, Subcommand, ValueEnum};

use crate::report::Report;

/// The benchmark harness: see the crate documentation and BENCHMARKS.md.
#[derive(Debug, Parser)]
#[command(name = "snapgate-bench", about = "snapgate's benchmark harness")]
struct Args {
    /// Every figure at a small size (about two minutes in all): what CI runs so the harness
    /// cannot rot. The numbers it prints are not the figures' (see BENCHMARKS.md).
    #[arg(long)]
    smoke: bool,
    /// Run only this figure (repeatable): a number 1-9 or its name.
    #[arg(long, value_enum)]
    only: Vec<Figure>,
    /// The number of sources of the largest size (figures 2, 4, 6 and 7; default 100,000, or
    /// 2,000 with --smoke).
    #[arg(long)]
    sources: Option<usize>,
    /// Figure 1: the number of gated runs measured (default 1,000, or 40 with --smoke).
    #[arg(long)]
    runs: Option<usize>,
    /// Figure 5: how long the waiting run waits, in seconds (default 600, or 10 with --smoke).
    #[arg(long)]
    wait_secs: Option<u64>,
    /// Figure 8: how long the soak runs after its warm-up, in seconds (default 600, or 70
    /// with --smoke).
    #[arg(long)]
    soak_secs: Option<u64>,
    /// The directory holding the release `snapgate-scheduler` and `snapgate-agent` binaries
    /// (default: the directory of this binary; build them with `cargo build --release --locked
    /// -p snapgate-scheduler -p snapgate-agent -p snapgate-bench --bins`).
    #[arg(long)]
    bin_dir: Option<PathBuf>,
    /// Where the temporary directories go (stores, logs); default the system's.
    #[arg(long)]
    tmp_dir: Option<PathBuf>,
    /// Keep the temporary directories (stores, process logs) instead of removing them.
    #[arg(long)]
    keep_dirs: bool,
    /// Also write every row as JSON to this file.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Internal: serve the bare tonic echo server (the references), as a child process.
    #[command(subcommand)]
    internal: Option<Internal>,
}

#[derive(Debug, Subcommand)]
enum Internal {
    /// Serves the bare echo server on `--listen` and prints `listening <addr>` on stdout.
    #[command(hide = true)]
    ServeEcho {
        /// Where to listen.
        #[arg(long, default_value = "127.0.0.1:0")]
        listen: String,
        /// PEM certificate (TLS, as the scheduler's `--tls-cert`).
        #[arg(long)]
        tls_cert: Option<PathBuf>,
        /// PEM key (as the scheduler's `--tls-key`).
        #[arg(long)]
        tls_key: Option<PathBuf>,
    },
}

/// The nine figures.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, ValueEnum)]
pub(crate) enum Figure {
    /// 1: the quiesce window.
    #[value(name = "quiesce", alias = "1")]
    Quiesce,
    /// 2: the thundering herd.
    #[value(name = "herd", alias = "2")]
    Herd,
    /// 3: throughput.
    #[value(name = "throughput", alias = "3")]
    Throughput,
    /// 4: flat cost.
    #[value(name = "flat", alias = "4")]
    Flat,
    /// 5: the API cost of a run.
    #[value(name = "api", alias = "5")]
    Api,
    /// 6: restart.
    #[value(name = "restart", alias = "6")]
    Restart,
    /// 7: memory at rest.
    #[value(name = "memory", alias = "7")]
    Memory,
    /// 8: the soak.
    #[value(name = "soak", alias = "8")]
    Soak,
    /// 9: high availability (the scheduler on etcd).
    #[value(name = "ha", alias = "9")]
    Ha,
}

impl Figure {
    const ALL: [Figure; 9] = [
        Figure::Quiesce,
        Figure::Herd,
        Figure::Throughput,
        Figure::Flat,
        Figure::Api,
        Figure::Restart,
        Figure::Memory,
        Figure::Soak,
        Figure::Ha,
    ];
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the tokio runtime")?;
    if let Some(Internal::ServeEcho {
        listen,
        tls_cert,
        tls_key,
    }) = &args.internal
    {
        return runtime.block_on(echo::serve(listen, tls_cert.as_deref(), tls_key.as_deref()));
    }
    let code = runtime.block_on(run(args))?;
    // Background tasks (the hosted API servers) end with the runtime.
    runtime.shutdown_timeout(std::time::Duration::from_secs(1));
    std::process::exit(code);
}

async fn run(args: Args) -> anyhow::Result<i32> {
    let started = Instant::now();
    let bins = procs::Bins::locate(args.bin_dir.clone())?;
    let mut config = figures::Config::new(
        args.smoke,
        args.sources,
        args.runs,
        args.wait_secs,
        args.soak_secs,
        bins,
        args.tmp_dir.clone(),
    )?;
    config.keep_dirs = args.keep_dirs;
    let selected: Vec<Figure> = if args.only.is_empty() {
        Figure::ALL.to_vec()
    } else {
        let mut f = args.only.clone();
        f.sort();
        f.dedup();
        f
    };
    println!("{}", config.describe());
    let mut report = Report::default();
    let result = figures::run_all(&config, &selected, &mut report).await;
    report.print();
    println!(
        "wall time: {:.1} s ({} mode)",
        started.elapsed().as_secs_f64(),
        if args.smoke { "smoke" } else { "full" }
    );
    if let Some(path) = &args.json {
        std::fs::write(path, report.json(started.elapsed(), args.smoke).to_string())
            .with_context(|| format!("writing {}", path.display()))?;
    }
    match result {
        Ok(()) => Ok(0),
        Err(e) => {
            eprintln!("harness error: {e:#}");
            Ok(1)
        }
    }
}
