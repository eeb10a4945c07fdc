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

/// A flag's duration: `90s`, `10m`, `1h30m` (Go's syntax, as the CLI reads it).
fn parse_duration(s: &str) -> Result<std::time::Duration, String> {
    snapgate_proto::duration::parse(s)
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

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(args: &[&str]) -> anyhow::Result<LeasePolicy> {
        let mut all = vec!["snapgate-scheduler"];
        all.extend_from_slice(args);
        Args::try_parse_from(all)?.lease_policy()
    }

    #[test]
    fn hold_flags_default_to_ten_minutes_and_one_hour_and_are_checked() {
        let p = policy(&[]).unwrap();
        assert_eq!(p.default_hold, chrono::Duration::minutes(10));
        assert_eq!(p.max_hold, chrono::Duration::hours(1));
        let p = policy(&["--default-hold", "90s", "--max-hold", "1h30m"]).unwrap();
        assert_eq!(p.default_hold, chrono::Duration::seconds(90));
        assert_eq!(p.max_hold, chrono::Duration::minutes(90));
        for (args, says) in [
            (&["--default-hold", "2h"][..], "longer than --max-hold"),
            (&["--max-hold", "0"][..], "--max-hold: must be positive"),
            (
                &["--default-hold", "0"][..],
                "--default-hold: must be positive",
            ),
            (&["--default-hold", "ten"][..], "expected a number"),
        ] {
            let e = policy(args).unwrap_err().to_string();
            assert!(e.contains(says), "{args:?}: {e}");
        }
    }
}
