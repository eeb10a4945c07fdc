//! The scheduler's one config surface: flags, each with an environment variable.

use std::{net::SocketAddr, path::PathBuf};

use clap::{Parser, ValueEnum};
use snapgate_scheduler_core::LeasePolicy;

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

    /// The hold lease of a Trigger that names no hold (e.g. `10m`, `90s`): its run's copy
    /// point must be reached within it.
    #[arg(long, env = "SNAPGATE_DEFAULT_HOLD", default_value = "10m", value_parser = parse_duration)]
    pub default_hold: std::time::Duration,

    /// The longest hold lease: a Trigger asking for more gets this.
    #[arg(long, env = "SNAPGATE_MAX_HOLD", default_value = "1h", value_parser = parse_duration)]
    pub max_hold: std::time::Duration,
}

impl Args {
    /// The hold lease bounds, checked: both positive, the default within the maximum.
    pub fn lease_policy(&self) -> anyhow::Result<LeasePolicy> {
        let convert = |flag: &str, d: std::time::Duration| {
            chrono::Duration::from_std(d)
                .ok()
                .filter(|d| *d > chrono::Duration::zero())
                .ok_or_else(|| anyhow::anyhow!("--{flag}: must be positive and at most 100 years"))
        };
        let policy = LeasePolicy {
            default_hold: convert("default-hold", self.default_hold)?,
            max_hold: convert("max-hold", self.max_hold)?,
        };
        if policy.default_hold > policy.max_hold {
            anyhow::bail!(
                "--default-hold ({:?}) is longer than --max-hold ({:?})",
                self.default_hold,
                self.max_hold
            );
        }
        Ok(policy)
    }
}

/// `90s`, `10m`, `1h`, `1h30m`: a number and a unit (s, m, h), repeated.
fn parse_duration(s: &str) -> Result<std::time::Duration, String> {
    let mut total: u64 = 0;
    let mut digits = String::new();
    for c in s.chars() {
        if c.is_ascii_digit() {
            digits.push(c);
            continue;
        }
        let unit: u64 = match c {
            's' => 1,
            'm' => 60,
            'h' => 3600,
            _ => {
                return Err(format!(
                    "{s:?}: unknown unit {c:?} (use s, m or h, e.g. 10m)"
                ));
            }
        };
        let n: u64 = digits
            .parse()
            .map_err(|_| format!("{s:?}: a number must come before each unit (e.g. 10m)"))?;
        digits.clear();
        total = n
            .checked_mul(unit)
            .and_then(|v| total.checked_add(v))
            .ok_or_else(|| format!("{s:?}: too long"))?;
    }
    if !digits.is_empty() || s.is_empty() {
        return Err(format!(
            "{s:?}: each number needs a unit (s, m or h, e.g. 10m)"
        ));
    }
    Ok(std::time::Duration::from_secs(total))
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
