//! The scheduler's one config surface: flags, each with an environment variable.

use std::{net::SocketAddr, path::PathBuf};

use clap::{Parser, ValueEnum};

/// snapgate-scheduler: owns replication sources, their schedules and copy-trigger state.
#[derive(Debug, Clone, Parser)]
#[command(name = "snapgate-scheduler", version, about)]
pub struct Args {
    /// gRPC listen address (snapgate.v1, health, reflection).
    #[arg(long, env = "SNAPGATE_LISTEN", default_value = "127.0.0.1:50051")]
    pub listen: SocketAddr,

    /// Prometheus metrics listen address (text format on /metrics).
    #[arg(
        long,
        env = "SNAPGATE_METRICS_LISTEN",
        default_value = "127.0.0.1:9090"
    )]
    pub metrics_listen: SocketAddr,

    /// Directory of the embedded store (created if missing).
    #[arg(long, env = "SNAPGATE_DATA_DIR", default_value = "snapgate-data")]
    pub data_dir: PathBuf,

    /// Log format.
    #[arg(long, env = "SNAPGATE_LOG_FORMAT", value_enum, default_value_t = LogFormat::Plain)]
    pub log_format: LogFormat,

    /// Log filter, in tracing's EnvFilter syntax (e.g. `info,snapgate_scheduler=debug`).
    #[arg(long, env = "SNAPGATE_LOG", default_value = "info")]
    pub log: String,
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Plain,
    /// One JSON object per line.
    Json,
}

/// Installs the global tracing subscriber.
pub fn init_tracing(format: LogFormat, filter: &str) -> anyhow::Result<()> {
    let filter = tracing_subscriber::EnvFilter::try_new(filter)?;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Plain => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    }
    .map_err(|e| anyhow::anyhow!("installing the log subscriber: {e}"))
}
