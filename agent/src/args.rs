//! The agent's one config surface: flags, each with an environment variable.

use std::{net::SocketAddr, path::PathBuf};

use clap::{Parser, ValueEnum};

/// snapgate-agent: does the Kubernetes work of its namespaces for the snapgate scheduler.
#[derive(Debug, Clone, Parser)]
#[command(name = "snapgate-agent", version, about)]
pub struct Args {
    /// The scheduler's gRPC URL (http:// or https://).
    #[arg(
        long,
        env = "SNAPGATE_SCHEDULER",
        default_value = "http://127.0.0.1:50051"
    )]
    pub scheduler: String,

    /// PEM file of the CA to verify an https:// scheduler against (default: the system roots);
    /// re-read when it changes, at the next (re)connect.
    #[arg(long, env = "SNAPGATE_CA_FILE", value_name = "FILE")]
    pub ca_file: Option<PathBuf>,

    /// File holding a bearer token sent on every call to the scheduler, re-read whenever it
    /// changes (a projected ServiceAccount token).
    #[arg(long, env = "SNAPGATE_TOKEN_FILE", value_name = "FILE")]
    pub token_file: Option<PathBuf>,

    /// PEM client certificate (chain, leaf first) presented to an https:// scheduler that asks
    /// for one (its --client-ca). With --client-key; both re-read when they change, at the next
    /// (re)connect.
    #[arg(
        long,
        env = "SNAPGATE_CLIENT_CERT",
        value_name = "FILE",
        requires = "client_key"
    )]
    pub client_cert: Option<PathBuf>,

    /// PEM private key of --client-cert.
    #[arg(
        long,
        env = "SNAPGATE_CLIENT_KEY",
        value_name = "FILE",
        requires = "client_cert"
    )]
    pub client_key: Option<PathBuf>,

    /// Namespaces this agent serves (repeat the flag, or comma-separate).
    #[arg(
        long = "namespace",
        env = "SNAPGATE_NAMESPACES",
        value_delimiter = ',',
        required = true
    )]
    pub namespaces: Vec<String>,

    /// This agent's name, as the scheduler logs it (default: the host name).
    #[arg(long, env = "SNAPGATE_AGENT_ID")]
    pub agent_id: Option<String>,

    /// Mover image for restic.
    #[arg(long, env = "SNAPGATE_RESTIC_IMAGE", default_value = DEFAULT_MOVER_IMAGE)]
    pub restic_image: String,

    /// Mover image for rclone.
    #[arg(long, env = "SNAPGATE_RCLONE_IMAGE", default_value = DEFAULT_MOVER_IMAGE)]
    pub rclone_image: String,

    /// Mover image for rsync (ssh).
    #[arg(long, env = "SNAPGATE_RSYNC_IMAGE", default_value = DEFAULT_MOVER_IMAGE)]
    pub rsync_image: String,

    /// Mover image for rsync-tls.
    #[arg(long, env = "SNAPGATE_RSYNC_TLS_IMAGE", default_value = DEFAULT_MOVER_IMAGE)]
    pub rsync_tls_image: String,

    /// Whose rights the agent acts with: `review` asks the API server (a
    /// LocalSubjectAccessReview) whether each run's author, as the scheduler authenticated
    /// them, may create Jobs in the namespace and impersonate the spec's moverServiceAccount,
    /// and fails the run if not (or if it has no author); `trust` acts on the scheduler's word,
    /// for a scheduler without authentication whose every caller is trusted.
    #[arg(
        long,
        env = "SNAPGATE_SOURCE_AUTHORS",
        value_enum,
        default_value_t = SourceAuthorsArg::Review
    )]
    pub source_authors: SourceAuthorsArg,

    /// Secrets of the namespace (comma-separated names) that the mover ServiceAccounts the
    /// agent makes (`volsync-src-<source>`, for sources naming no moverServiceAccount) pull
    /// images with.
    #[arg(
        long,
        env = "SNAPGATE_MOVER_IMAGE_PULL_SECRETS",
        value_delimiter = ',',
        value_parser = dns_subdomain
    )]
    pub mover_image_pull_secrets: Vec<String>,

    /// On OpenShift: the SecurityContextConstraints that privileged movers and rsync over ssh
    /// need (deploy/agent-openshift ships `snapgate-privileged-mover`). The agent grants each
    /// such source's mover ServiceAccount `use` of it with a Role and RoleBinding of the same
    /// name. Unset: no grant (clusters without SCCs).
    #[arg(long, env = "SNAPGATE_MOVER_SCC", value_parser = dns_subdomain)]
    pub mover_scc: Option<String>,
    /// How long a mover Job's pod may stay stuck (a container waiting in ImagePullBackOff,
    /// CreateContainerConfigError, ...; unschedulable; a volume that cannot be mounted; or the
    /// Job unable to create its pod) before the attempt fails: the Job is deleted, the failure
    /// reported, and the next attempt made after the usual back-off (e.g. `10m`, `90s`). The
    /// reason is shown on the run at once, whatever this is.
    #[arg(
        long,
        env = "SNAPGATE_MOVER_STUCK_AFTER",
        default_value = "10m",
        value_parser = parse_positive_duration
    )]
    pub mover_stuck_after: std::time::Duration,

    /// Prometheus metrics listen address.
    #[arg(
        long,
        env = "SNAPGATE_METRICS_LISTEN",
        default_value = "127.0.0.1:9091"
    )]
    pub metrics_listen: SocketAddr,

    /// Log format.
    #[arg(long, env = "SNAPGATE_LOG_FORMAT", value_enum, default_value_t = LogFormat::Plain)]
    pub log_format: LogFormat,

    /// Log filter, in tracing's EnvFilter syntax.
    #[arg(long, env = "SNAPGATE_LOG", default_value = "info")]
    pub log: String,
}

/// A flag's duration: `90s`, `10m`, `1h30m` (Go's syntax, as the scheduler's and the CLI's
/// duration flags read it), more than zero.
fn parse_positive_duration(s: &str) -> Result<std::time::Duration, String> {
    let d = snapgate_proto::duration::parse(s)?;
    if d.is_zero() {
        return Err(format!("{s:?}: must be positive"));
    }
    Ok(d)
}

/// VolSync's published mover image, pinned (never `latest`).
pub use snapgate_agent_core::resources::DEFAULT_MOVER_IMAGE;

/// A Kubernetes object name (a DNS-1123 subdomain: at most 253 characters, dot-separated
/// labels), as Secrets and SecurityContextConstraints are named.
fn dns_subdomain(s: &str) -> Result<String, String> {
    if snapgate_contract::is_dns_subdomain(s) {
        Ok(s.to_owned())
    } else {
        Err(format!(
            "{s:?} is not a Kubernetes object name (a DNS-1123 subdomain: lower-case \
             alphanumerics, '-' and '.', at most 253 characters)"
        ))
    }
}

/// `--source-authors`: see [`snapgate_agent_core::review`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum SourceAuthorsArg {
    /// Review every run's author with the API server.
    Review,
    /// Act on the scheduler's word.
    Trust,
}

impl From<SourceAuthorsArg> for snapgate_agent_core::review::SourceAuthors {
    fn from(a: SourceAuthorsArg) -> Self {
        match a {
            SourceAuthorsArg::Review => Self::Review,
            SourceAuthorsArg::Trust => Self::Trust,
        }
    }
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Plain,
    /// One JSON object per line.
    Json,
}

#[cfg(test)]
mod tests {
    use clap::Parser as _;

    use super::*;

    #[test]
    fn mover_pull_secrets_and_scc_are_object_names() {
        let a = Args::try_parse_from([
            "snapgate-agent",
            "--namespace=apps",
            "--mover-image-pull-secrets=regcred,mirror.pull",
            "--mover-scc=snapgate-privileged-mover",
        ])
        .unwrap();
        assert_eq!(a.mover_image_pull_secrets, ["regcred", "mirror.pull"]);
        assert_eq!(a.mover_scc.as_deref(), Some("snapgate-privileged-mover"));
        let e = Args::try_parse_from([
            "snapgate-agent",
            "--namespace=apps",
            "--mover-image-pull-secrets=Reg_Cred",
        ])
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("--mover-image-pull-secrets") && e.contains("DNS-1123"),
            "{e}"
        );
    }

    #[test]
    fn an_object_name_is_any_name_kubernetes_takes_for_a_secret_and_nothing_else() {
        let long_label = format!("{}.pull", "r".repeat(100));
        let longest = "s".repeat(253);
        for ok in ["regcred", "mirror.pull", &long_label, &longest] {
            assert_eq!(dns_subdomain(ok).as_deref(), Ok(ok), "{ok:?}");
        }
        for bad in [
            "",
            "Reg",
            "reg_cred",
            "-reg",
            "reg.",
            "a..b",
            &"s".repeat(254),
        ] {
            assert_eq!(
                dns_subdomain(bad),
                Err(format!(
                    "{bad:?} is not a Kubernetes object name (a DNS-1123 subdomain: lower-case \
                     alphanumerics, '-' and '.', at most 253 characters)"
                )),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn client_cert_and_client_key_go_together() {
        let parse = |args: &[&str]| {
            let mut all = vec!["snapgate-agent", "--namespace", "apps"];
            all.extend_from_slice(args);
            Args::try_parse_from(all)
        };
        for (args, names) in [
            (&["--client-cert", "c.pem"][..], "--client-key <FILE>"),
            (&["--client-key", "k.pem"][..], "--client-cert <FILE>"),
        ] {
            let e = parse(args).unwrap_err().to_string();
            assert!(e.contains("required") && e.contains(names), "{args:?}: {e}");
        }
        let a = parse(&["--client-cert", "c.pem", "--client-key", "k.pem"]).unwrap();
        assert_eq!(a.client_cert, Some(PathBuf::from("c.pem")));
        assert_eq!(a.client_key, Some(PathBuf::from("k.pem")));
    }

    #[test]
    fn mover_stuck_after_defaults_to_ten_minutes_and_must_be_a_positive_duration() {
        let parse = |args: &[&str]| {
            let mut all = vec!["snapgate-agent", "--namespace", "apps"];
            all.extend_from_slice(args);
            Args::try_parse_from(all)
        };
        let d = |a: Args| a.mover_stuck_after;
        assert_eq!(d(parse(&[]).unwrap()), std::time::Duration::from_secs(600));
        assert_eq!(
            d(parse(&["--mover-stuck-after", "1h30m"]).unwrap()),
            std::time::Duration::from_secs(5400)
        );
        assert_eq!(
            d(parse(&["--mover-stuck-after=5s"]).unwrap()),
            std::time::Duration::from_secs(5)
        );
        for (bad, why) in [("0s", "must be positive"), ("ten", "expected a number")] {
            let e = parse(&["--mover-stuck-after", bad])
                .unwrap_err()
                .to_string();
            assert!(e.contains(why), "{bad}: {e}");
        }
    }
}
