//! The scheduler's one config surface: flags, each with an environment variable.

use std::{net::SocketAddr, path::PathBuf};

use clap::{Parser, Subcommand, ValueEnum};
use snapgate_scheduler_core::LeasePolicy;

use crate::{
    auth::{IssuerConfig, JwksSource},
    identity::{Policy, parse_grant},
};

/// Where the scheduler's state lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum StoreKind {
    /// The embedded store in --data-dir: one scheduler.
    Redb,
    /// etcd: replicas elect one leader.
    Etcd,
}

/// What `snapgate-scheduler` does instead of serving: offline work on the store (no
/// scheduler may be running on it).
#[derive(Debug, Clone, Subcommand)]
pub enum Command {
    /// Writes every source, run and the run counter of the store to a file (a backup, or the
    /// first half of a move to another store).
    Export {
        /// The file to write (created; an existing file is refused).
        #[arg(long, short)]
        output: PathBuf,
        /// Leave out records that do not decode (else they stop the export, named).
        #[arg(long)]
        skip_quarantined: bool,
    },
    /// Loads a file written by `export` into the store, which must be empty: all of it, or
    /// nothing.
    Import {
        /// The file `export` wrote.
        #[arg(long, short)]
        input: PathBuf,
    },
}

/// snapgate-scheduler: owns replication sources, their schedules and copy-trigger state.
#[derive(Debug, Clone, Parser)]
#[command(name = "snapgate-scheduler", version, about)]
pub struct Args {
    /// Without a command: serve. With one: work on the store offline and exit.
    #[command(subcommand)]
    pub command: Option<Command>,

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
    #[arg(
        long,
        env = "SNAPGATE_DATA_DIR",
        default_value = "snapgate-data",
        global = true
    )]
    pub data_dir: PathBuf,

    /// Where the state lives: `redb`, the embedded store in --data-dir (one scheduler); or
    /// `etcd`, shared by replicas that elect one leader (docs/high-availability.md).
    #[arg(long, env = "SNAPGATE_STORE", value_enum, default_value_t = StoreKind::Redb, global = true)]
    pub store: StoreKind,

    /// With --store etcd: etcd's client URLs (`http://` or `https://`), comma-separated; tried
    /// in order.
    #[arg(
        long,
        env = "SNAPGATE_ETCD_ENDPOINTS",
        value_delimiter = ',',
        global = true
    )]
    pub etcd_endpoints: Vec<String>,

    /// With --store etcd: the prefix of every key snapgate writes (back it up, move it).
    #[arg(long, env = "SNAPGATE_ETCD_PREFIX", default_value = snapgate_etcd::DEFAULT_PREFIX, global = true)]
    pub etcd_prefix: String,

    /// With --store etcd: the CA of etcd's server certificate (PEM; else the system roots).
    #[arg(long, env = "SNAPGATE_ETCD_CA_FILE", global = true)]
    pub etcd_ca_file: Option<PathBuf>,

    /// With --store etcd: the client certificate for etcd's `--client-cert-auth` (PEM).
    #[arg(
        long,
        env = "SNAPGATE_ETCD_CERT_FILE",
        requires = "etcd_key_file",
        global = true
    )]
    pub etcd_cert_file: Option<PathBuf>,

    /// With --store etcd: the key of --etcd-cert-file (PEM).
    #[arg(
        long,
        env = "SNAPGATE_ETCD_KEY_FILE",
        requires = "etcd_cert_file",
        global = true
    )]
    pub etcd_key_file: Option<PathBuf>,

    /// With --store etcd: the leader's lease. A leader that dies is replaced within about
    /// this; a leader that cannot renew it in time stops leading (and exits, to be
    /// restarted as a follower). Between 2s and 5m.
    #[arg(long, env = "SNAPGATE_ETCD_LEASE_TTL", default_value = "10s", value_parser = parse_duration)]
    pub etcd_lease_ttl: std::time::Duration,

    /// With --store etcd: this replica's name, written as the leader's and shown in
    /// followers' refusals (e.g. the pod's name). Default: $HOSTNAME.
    #[arg(long, env = "SNAPGATE_REPLICA_NAME")]
    pub replica_name: Option<String>,

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

    /// Authentication: the token issuer's key set, a JWKS file or URL (the cluster's
    /// `https://kubernetes.default.svc/openid/v1/jwks`). With it every caller must present a
    /// valid bearer token (a ServiceAccount token made for --auth-audience).
    #[arg(long, env = "SNAPGATE_AUTH_JWKS")]
    pub auth_jwks: Option<String>,

    /// The `iss` of valid tokens (`kubectl get --raw /.well-known/openid-configuration`).
    #[arg(long, env = "SNAPGATE_AUTH_ISSUER")]
    pub auth_issuer: Option<String>,

    /// The audience tokens must be made for.
    #[arg(long, env = "SNAPGATE_AUTH_AUDIENCE", default_value = "snapgate")]
    pub auth_audience: String,

    /// A bearer token file sent when fetching a JWKS URL (the scheduler's own projected token).
    #[arg(long, env = "SNAPGATE_AUTH_JWKS_TOKEN_FILE")]
    pub auth_jwks_token_file: Option<PathBuf>,

    /// A CA bundle for an `https://` JWKS URL (else the system roots).
    #[arg(long, env = "SNAPGATE_AUTH_JWKS_CA_FILE")]
    pub auth_jwks_ca_file: Option<PathBuf>,

    /// A subject (`system:serviceaccount:<ns>:<name>`) that may do everything; repeatable.
    #[arg(long = "admin", env = "SNAPGATE_ADMINS", value_delimiter = ' ')]
    pub admins: Vec<String>,

    /// `SUBJECT=ns1,ns2`: may manage the sources of those namespaces; repeatable.
    #[arg(
        long = "namespace-admin",
        env = "SNAPGATE_NAMESPACE_ADMINS",
        value_delimiter = ' '
    )]
    pub namespace_admins: Vec<String>,

    /// The agents' ServiceAccount name: that ServiceAccount of a namespace may serve it.
    #[arg(
        long,
        env = "SNAPGATE_AGENT_SERVICE_ACCOUNT",
        default_value = "snapgate-agent"
    )]
    pub agent_service_account: String,

    /// `SUBJECT=ns1,ns2`: may serve those namespaces as their agent; repeatable.
    #[arg(
        long = "agent-namespaces",
        env = "SNAPGATE_AGENT_NAMESPACES",
        value_delimiter = ' '
    )]
    pub agent_namespaces: Vec<String>,

    /// Serve without authentication on a non-loopback address (anyone who reaches the port
    /// can do anything). Without it such a start is refused.
    #[arg(long, env = "SNAPGATE_INSECURE_ANONYMOUS")]
    pub insecure_anonymous: bool,

    /// With authentication: requests per second allowed to each identity (and to each address
    /// whose credentials failed); more are refused with RESOURCE_EXHAUSTED. 0: no limit.
    #[arg(long, env = "SNAPGATE_RATE_LIMIT", default_value_t = 50)]
    pub rate_limit: u32,

    /// The burst each identity may make above --rate-limit.
    #[arg(long, env = "SNAPGATE_RATE_BURST", default_value_t = 100)]
    pub rate_burst: u32,

    /// Append the audit trail (one JSON line per mutating call, Trigger and denial) to this
    /// file instead of the log.
    #[arg(long, env = "SNAPGATE_AUDIT_LOG")]
    pub audit_log: Option<PathBuf>,

    /// PEM certificate chain for TLS on --listen (with --tls-key): the port then accepts TLS
    /// only. Re-read when the file changes (cert-manager rotation).
    #[arg(
        long,
        env = "SNAPGATE_TLS_CERT",
        value_name = "FILE",
        requires = "tls_key"
    )]
    pub tls_cert: Option<PathBuf>,

    /// PEM private key of --tls-cert. Re-read when the file changes.
    #[arg(
        long,
        env = "SNAPGATE_TLS_KEY",
        value_name = "FILE",
        requires = "tls_cert"
    )]
    pub tls_key: Option<PathBuf>,

    /// PEM CA that client certificates must chain to (mutual TLS; needs --tls-cert). Without
    /// it no client certificate is asked for.
    #[arg(
        long,
        env = "SNAPGATE_CLIENT_CA",
        value_name = "FILE",
        requires = "tls_cert"
    )]
    pub client_ca: Option<PathBuf>,

    /// Plaintext listen address serving only grpc.health.v1.Health, for kubelet's gRPC probes
    /// (which speak no TLS): deployments with --tls-cert set it. Default: off.
    #[arg(long, env = "SNAPGATE_HEALTH_LISTEN", value_name = "ADDR")]
    pub health_listen: Option<SocketAddr>,
}

/// How callers are authenticated and authorised, from the flags.
#[derive(Debug)]
pub struct Security {
    /// The token issuer (`None`: authentication off).
    pub issuer: Option<IssuerConfig>,
    /// Who may do what.
    pub policy: Policy,
}

impl Args {
    /// The security setup, checked: `--auth-jwks` and `--auth-issuer` together, grants well
    /// formed, and no unauthenticated service on a non-loopback address unless
    /// `--insecure-anonymous` says so.
    pub fn security(&self) -> anyhow::Result<Security> {
        let issuer = match (&self.auth_jwks, &self.auth_issuer) {
            (Some(jwks), Some(issuer)) => Some(IssuerConfig {
                cluster: String::new(),
                issuer: issuer.clone(),
                audience: self.auth_audience.clone(),
                jwks: JwksSource::parse(
                    jwks,
                    self.auth_jwks_token_file.clone(),
                    self.auth_jwks_ca_file.clone(),
                ),
            }),
            (None, None) => None,
            (Some(_), None) => anyhow::bail!("--auth-jwks needs --auth-issuer"),
            (None, Some(_)) => anyhow::bail!("--auth-issuer needs --auth-jwks"),
        };
        if let Some(jwks) = &self.auth_jwks
            && jwks.starts_with("http://")
            && self.auth_jwks_token_file.is_some()
        {
            anyhow::bail!(
                "--auth-jwks-token-file would send the scheduler's token in clear text to {jwks}: use https://"
            );
        }
        if issuer.is_none() && !self.listen.ip().is_loopback() && !self.insecure_anonymous {
            anyhow::bail!(
                "refusing to serve {} without authentication: anyone who reaches it could read every namespace's sources and forge backups. Configure --auth-jwks and --auth-issuer (see docs/security.md), listen on a loopback address, or pass --insecure-anonymous",
                self.listen
            );
        }
        if issuer.is_none()
            && (!self.admins.is_empty()
                || !self.namespace_admins.is_empty()
                || !self.agent_namespaces.is_empty())
        {
            anyhow::bail!(
                "--admin, --namespace-admin and --agent-namespaces need authentication (--auth-jwks, --auth-issuer)"
            );
        }
        let mut policy = Policy {
            admins: self.admins.iter().cloned().collect(),
            agent_service_account: self.agent_service_account.clone(),
            ..Policy::default()
        };
        for (flag, grants, into) in [
            (
                "namespace-admin",
                &self.namespace_admins,
                &mut policy.namespace_admins,
            ),
            (
                "agent-namespaces",
                &self.agent_namespaces,
                &mut policy.agent_namespaces,
            ),
        ] {
            for g in grants {
                let (subject, namespaces) = parse_grant(flag, g).map_err(anyhow::Error::msg)?;
                into.entry(subject).or_default().extend(namespaces);
            }
        }
        Ok(Security { issuer, policy })
    }

    /// How to reach etcd (`--store etcd`), checked: at least one `http://` or `https://`
    /// endpoint, a prefix that starts with `/`, a lease between 2 s and 5 min.
    pub fn etcd_options(&self) -> anyhow::Result<snapgate_etcd::EtcdOptions> {
        if self.etcd_endpoints.is_empty() {
            anyhow::bail!("--store etcd needs --etcd-endpoints (etcd's client URLs)");
        }
        for e in &self.etcd_endpoints {
            if !(e.starts_with("http://") || e.starts_with("https://")) {
                anyhow::bail!("--etcd-endpoints: {e:?} is not an http:// or https:// URL");
            }
        }
        let prefix = self.etcd_prefix.trim_end_matches('/');
        if !prefix.starts_with('/') || prefix.len() > 128 || prefix.contains(char::is_whitespace) {
            anyhow::bail!(
                "--etcd-prefix: {:?} must start with `/`, hold no whitespace and be at most 128 \
                 bytes (`/` alone is not allowed: snapgate keeps its keys apart)",
                self.etcd_prefix
            );
        }
        let ttl = self.etcd_lease_ttl;
        if ttl < std::time::Duration::from_secs(2) || ttl > std::time::Duration::from_secs(300) {
            anyhow::bail!("--etcd-lease-ttl: {ttl:?} is not between 2s and 5m");
        }
        let tls = (self.etcd_ca_file.is_some() || self.etcd_cert_file.is_some()).then(|| {
            snapgate_etcd::EtcdTls {
                ca: self.etcd_ca_file.clone(),
                cert: self.etcd_cert_file.clone(),
                key: self.etcd_key_file.clone(),
            }
        });
        Ok(snapgate_etcd::EtcdOptions {
            endpoints: self.etcd_endpoints.clone(),
            prefix: prefix.to_owned(),
            tls,
            dial_timeout: std::time::Duration::from_secs(5),
            request_timeout: std::time::Duration::from_secs(10),
        })
    }

    /// This replica's name: --replica-name, else $HOSTNAME, else `snapgate-scheduler`.
    pub fn replica_name(&self) -> String {
        self.replica_name
            .clone()
            .or_else(|| std::env::var("HOSTNAME").ok())
            .filter(|n| !n.trim().is_empty())
            .unwrap_or_else(|| "snapgate-scheduler".to_owned())
    }

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

    /// The TLS settings of the gRPC port, loaded and checked; `None` without --tls-cert.
    pub fn server_tls(&self) -> anyhow::Result<Option<crate::tls::ServerTls>> {
        match (&self.tls_cert, &self.tls_key) {
            (Some(cert), Some(key)) => {
                crate::tls::ServerTls::load(cert, key, self.client_ca.as_deref()).map(Some)
            }
            (None, None) => Ok(None),
            _ => anyhow::bail!("--tls-cert and --tls-key go together"),
        }
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
    // The audit trail is never filtered out by the log level.
    let filter = tracing_subscriber::EnvFilter::try_new(filter)?
        .add_directive("snapgate::audit=info".parse()?);
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
    fn tls_flags_go_together() {
        let parse = |args: &[&str]| {
            let mut all = vec!["snapgate-scheduler"];
            all.extend_from_slice(args);
            Args::try_parse_from(all)
        };
        for args in [
            &["--tls-cert", "c.pem"][..],
            &["--tls-key", "k.pem"][..],
            &["--client-ca", "ca.pem"][..],
        ] {
            let e = parse(args).unwrap_err().to_string();
            assert!(e.contains("required"), "{args:?}: {e}");
        }
        let a = parse(&["--tls-cert", "c.pem", "--tls-key", "k.pem"]).unwrap();
        let e = format!("{:#}", a.server_tls().unwrap_err());
        assert!(e.contains("--tls-cert c.pem: cannot read"), "{e}");
        assert!(parse(&[]).unwrap().server_tls().unwrap().is_none());
        assert!(parse(&[]).unwrap().health_listen.is_none());
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

    fn security(args: &[&str]) -> anyhow::Result<Security> {
        let mut all = vec!["snapgate-scheduler"];
        all.extend_from_slice(args);
        Args::try_parse_from(all)?.security()
    }

    #[test]
    fn serving_beyond_loopback_without_authentication_is_refused_unless_said_insecure() {
        assert!(security(&[]).unwrap().issuer.is_none(), "loopback: fine");
        let e = security(&["--listen", "0.0.0.0:50051"])
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("without authentication") && e.contains("--insecure-anonymous"),
            "{e}"
        );
        assert!(security(&["--listen", "0.0.0.0:50051", "--insecure-anonymous"]).is_ok());
        let secure = security(&[
            "--listen",
            "0.0.0.0:50051",
            "--auth-jwks",
            "https://kubernetes.default.svc/openid/v1/jwks",
            "--auth-issuer",
            "https://kubernetes.default.svc.cluster.local",
            "--admin",
            "system:serviceaccount:snapgate:admin",
            "--namespace-admin",
            "system:serviceaccount:ops:team=apps,web",
        ])
        .unwrap();
        let issuer = secure.issuer.unwrap();
        assert_eq!(issuer.audience, "snapgate");
        assert!(matches!(issuer.jwks, JwksSource::Url { .. }));
        assert_eq!(secure.policy.namespace_admins.len(), 1);
        for (args, says) in [
            (
                &["--auth-jwks", "/jwks.json"][..],
                "--auth-jwks needs --auth-issuer",
            ),
            (
                &["--auth-issuer", "x"][..],
                "--auth-issuer needs --auth-jwks",
            ),
            (&["--admin", "x"][..], "need authentication"),
            (
                &[
                    "--auth-jwks",
                    "http://api.example/openid/v1/jwks",
                    "--auth-issuer",
                    "x",
                    "--auth-jwks-token-file",
                    "/token",
                ][..],
                "in clear text",
            ),
        ] {
            let e = security(args).unwrap_err().to_string();
            assert!(e.contains(says), "{args:?}: {e}");
        }
    }
}
