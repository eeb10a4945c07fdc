//! The command line: one global connection and output surface, one subcommand per operation.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

/// snapgate: manage replication sources and take part in copy triggers.
#[derive(Debug, Parser)]
#[command(name = "snapgate", version)]
pub(crate) struct Cli {
    /// The scheduler's gRPC endpoint (http:// or https://).
    #[arg(
        long,
        global = true,
        env = "SNAPGATE_SERVER",
        default_value = "http://127.0.0.1:50051"
    )]
    pub(crate) server: String,

    /// Bearer token sent as `authorization: Bearer <token>` on every call.
    #[arg(long, global = true, env = "SNAPGATE_TOKEN", hide_env_values = true)]
    pub(crate) token: Option<String>,

    /// File holding the bearer token, re-read whenever it changes (e.g. a projected
    /// ServiceAccount token). Not with --token.
    #[arg(
        long,
        global = true,
        env = "SNAPGATE_TOKEN_FILE",
        value_name = "FILE",
        conflicts_with = "token"
    )]
    pub(crate) token_file: Option<PathBuf>,

    /// PEM file of a CA to trust for an https:// server (in addition to the system roots).
    #[arg(long, global = true, env = "SNAPGATE_CA_FILE")]
    pub(crate) ca_file: Option<PathBuf>,

    /// PEM client certificate (chain, leaf first) presented to an https:// server that asks for
    /// one (mutual TLS: the scheduler's --client-ca). With --client-key.
    #[arg(
        long,
        global = true,
        env = "SNAPGATE_CLIENT_CERT",
        value_name = "FILE",
        requires = "client_key"
    )]
    pub(crate) client_cert: Option<PathBuf>,

    /// PEM private key of --client-cert.
    #[arg(
        long,
        global = true,
        env = "SNAPGATE_CLIENT_KEY",
        value_name = "FILE",
        requires = "client_cert"
    )]
    pub(crate) client_key: Option<PathBuf>,

    /// The name to verify the server's certificate against, if not the host of --server.
    #[arg(long, global = true, env = "SNAPGATE_TLS_DOMAIN")]
    pub(crate) tls_domain: Option<String>,

    /// The namespace to act in (also the default for documents without metadata.namespace).
    #[arg(
        short = 'n',
        long,
        global = true,
        env = "SNAPGATE_NAMESPACE",
        default_value = "default"
    )]
    pub(crate) namespace: String,

    /// Output format.
    #[arg(
        short = 'o',
        long,
        global = true,
        env = "SNAPGATE_OUTPUT",
        value_enum,
        default_value_t = Output::Table
    )]
    pub(crate) output: Output,

    /// Log filter for messages on stderr (tracing EnvFilter syntax).
    #[arg(
        long,
        global = true,
        env = "SNAPGATE_LOG",
        default_value = "warn,snapgate=info,snapgate_sdk=info"
    )]
    pub(crate) log: String,

    /// What to do.
    #[command(subcommand)]
    pub(crate) command: Command,
}

/// How results are printed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub(crate) enum Output {
    /// Human-readable columns.
    Table,
    /// JSON (one document; `watch` prints one object per line).
    Json,
    /// YAML (`watch` prints one document per change).
    Yaml,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// Create or update sources from VolSync ReplicationSource YAML (several documents per file).
    Apply {
        /// The file to read (`-` for stdin); repeatable.
        #[arg(short = 'f', long = "filename", required = true)]
        files: Vec<PathBuf>,
    },
    /// Show one source.
    Get {
        /// The source's name.
        name: String,
    },
    /// List sources.
    List {
        /// List in every namespace instead of --namespace.
        #[arg(short = 'A', long)]
        all_namespaces: bool,
    },
    /// Delete a source (a run in flight is aborted and cleaned up).
    Delete {
        /// The source's name.
        name: String,
    },
    /// Start a run now.
    SyncNow {
        /// The source's name.
        name: String,
        /// Idempotency key: repeating it starts no second run (default: a new one).
        #[arg(long)]
        request_id: Option<String>,
    },
    /// Pause a source: no new run starts.
    Pause {
        /// The source's name.
        name: String,
        /// Why (kept in the status).
        #[arg(long, default_value = "")]
        note: String,
    },
    /// Resume a paused source.
    Resume {
        /// The source's name.
        name: String,
        /// Why (kept in the status).
        #[arg(long, default_value = "")]
        note: String,
    },
    /// Recent runs of a source, newest first (`-o json|yaml` adds each copy-trigger timeline).
    Runs {
        /// The source's name.
        name: String,
        /// How many runs (at most 100).
        #[arg(long, default_value_t = 20)]
        limit: u32,
    },
    /// Stored records the scheduler left out when it started (they do not decode, or this
    /// version cannot run them); they stay in its store untouched.
    Quarantined,
    /// The next times a source's schedule fires.
    Preview {
        /// The source's name.
        name: String,
        /// How many times (at most 100).
        #[arg(long, default_value_t = 5)]
        count: u32,
    },
    /// Release the run waiting on a PVC (or source) with a trigger value.
    Trigger {
        #[command(flatten)]
        target: TargetArgs,
        /// The copy-trigger value (must differ from latest-copy-trigger).
        value: String,
        /// Release only this run (refused if another run is waiting).
        #[arg(long)]
        run_id: Option<String>,
        /// How long the application stays quiesced from now (e.g. 90s, 5m): the copy point
        /// must be reached within it, or the run waits for a new value. Default: the
        /// scheduler's default hold.
        #[arg(long)]
        hold: Option<String>,
        /// Who holds, when the source lists holders (`spec.copyTrigger.holders`).
        #[arg(long)]
        holder: Option<String>,
    },
    /// Follow the copy status of a PVC (or source); reconnects until interrupted.
    Watch {
        #[command(flatten)]
        target: TargetArgs,
    },
    /// For a sidecar: around every copy of a PVC run a quiesce command, trigger, wait for the
    /// copy point and always run the unquiesce command.
    QuiesceExec(QuiesceExecArgs),
}

/// A PVC or a source to follow or trigger.
#[derive(Debug, Args)]
#[group(required = true, multiple = false)]
pub(crate) struct TargetArgs {
    /// The source PVC.
    #[arg(long)]
    pub(crate) pvc: Option<String>,
    /// A source (and so its PVC).
    #[arg(long)]
    pub(crate) source: Option<String>,
}

/// `quiesce-exec` options.
#[derive(Debug, Args)]
pub(crate) struct QuiesceExecArgs {
    #[command(flatten)]
    pub(crate) target: TargetArgs,
    /// Shell command (`sh -c`) that quiesces the application; non-zero exit = not quiesced.
    #[arg(long, env = "SNAPGATE_QUIESCE")]
    pub(crate) quiesce: String,
    /// Shell command (`sh -c`) that resumes the application; always run after quiesce.
    #[arg(long, env = "SNAPGATE_UNQUIESCE")]
    pub(crate) unquiesce: String,
    /// Longest time the application stays quiesced (e.g. 90s, 5m).
    #[arg(long, env = "SNAPGATE_HOLD_LIMIT", default_value = "5m")]
    pub(crate) hold_limit: String,
    /// How long a lost connection is retried while quiesced before giving up. Before a
    /// Trigger was sent the application is unquiesced then; after one, only once the scheduler
    /// confirms the hold ended (EndHold), else at the hold limit, when every lease it asked
    /// for has ended.
    #[arg(long, env = "SNAPGATE_DISCONNECT_GRACE", default_value = "30s")]
    pub(crate) disconnect_grace: String,
    /// Prefix of the trigger values (`<prefix>-<run id>-<unix millis>-<random hex>`).
    #[arg(long, env = "SNAPGATE_TRIGGER_PREFIX", default_value = "quiesce-exec")]
    pub(crate) trigger_prefix: String,
    /// This application's name among the source's `spec.copyTrigger.holders` (when it lists
    /// several applications that must all hold the PVC quiesced).
    #[arg(long, env = "SNAPGATE_HOLDER")]
    pub(crate) holder: Option<String>,
    /// Handle one copy request, then exit (0 if its copy completed).
    #[arg(long)]
    pub(crate) once: bool,
}
