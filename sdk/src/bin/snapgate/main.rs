//! `snapgate`: the operator's CLI for the snapgate scheduler, and `quiesce-exec`, the
//! copy-trigger sidecar for applications that cannot link the SDK.
//!
//! ```text
//!  args (clap, SNAPGATE_* env) ─► Client (token, TLS) ─► one command ─► table | JSON | YAML on stdout
//!                                                                    └─► errors on stderr, exit 1
//! ```

mod args;
mod commands;
mod quiesce_exec;
mod table;

use std::process::ExitCode;

use anyhow::Context as _;
use clap::Parser as _;
use snapgate_sdk::Client;
use tracing_subscriber::EnvFilter;

use crate::args::{Cli, Command};

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(EnvFilter::try_new(&cli.log).unwrap_or_else(|_| EnvFilter::new("warn")))
        .init();
    match run(cli).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn client(cli: &Cli, lazy: bool) -> anyhow::Result<Client> {
    let mut builder = Client::builder(cli.server.clone());
    if let Some(token) = &cli.token {
        builder = builder.token(token.clone());
    }
    if let Some(path) = &cli.token_file {
        builder = builder.token_file(path.clone());
    }
    if let Some(path) = &cli.ca_file {
        let pem = read_flag_file("ca-file", path)?;
        snapgate_sdk::tls::check_ca(&pem)
            .map_err(|e| anyhow::anyhow!("--ca-file {}: {}", path.display(), e.message))?;
        builder = builder.ca_certificate_pem(pem);
    }
    match (&cli.client_cert, &cli.client_key) {
        (Some(cert_path), Some(key_path)) => {
            let cert = read_flag_file("client-cert", cert_path)?;
            let key = read_flag_file("client-key", key_path)?;
            snapgate_sdk::tls::check_client_identity(&cert, &key).map_err(|e| {
                let (flag, path) = match e.input {
                    snapgate_sdk::tls::PemInput::ClientCert => ("client-cert", cert_path),
                    _ => ("client-key", key_path),
                };
                anyhow::anyhow!("--{flag} {}: {}", path.display(), e.message)
            })?;
            builder = builder.client_identity(cert, key);
        }
        (None, None) => {}
        // clap's `requires` refuses these first; kept for the message.
        _ => anyhow::bail!("--client-cert and --client-key go together"),
    }
    if let Some(domain) = &cli.tls_domain {
        builder = builder.tls_domain(domain.clone());
    }
    let client = if lazy {
        builder.connect_lazy()?
    } else {
        builder.connect().await?
    };
    Ok(client)
}

/// The contents of the file a flag names; the error names both.
fn read_flag_file(flag: &str, path: &std::path::Path) -> anyhow::Result<Vec<u8>> {
    std::fs::read(path).with_context(|| format!("--{flag} {}: cannot read", path.display()))
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    // The sidecar and watch outlive a scheduler restart, so they may also start before it.
    let lazy = matches!(cli.command, Command::QuiesceExec(_) | Command::Watch { .. });
    // A file with a mistake is refused before the scheduler is even asked.
    let documents = match &cli.command {
        Command::Apply { files } => commands::read_documents(&cli.namespace, files)?,
        _ => Vec::new(),
    };
    let client = client(&cli, lazy).await?;
    let ns = cli.namespace.as_str();
    let out = cli.output;
    match &cli.command {
        Command::Apply { .. } => commands::apply(&client, &documents, out).await,
        Command::Get { name } => commands::get(&client, ns, name, out).await,
        Command::List { all_namespaces } => commands::list(&client, ns, *all_namespaces, out).await,
        Command::Delete { name } => commands::delete(&client, ns, name, out).await,
        Command::SyncNow { name, request_id } => {
            commands::sync_now(&client, ns, name, request_id.clone(), out).await
        }
        Command::Pause { name, note } => {
            commands::pause_or_resume(&client, ns, name, note.clone(), true, out).await
        }
        Command::Resume { name, note } => {
            commands::pause_or_resume(&client, ns, name, note.clone(), false, out).await
        }
        Command::Runs { name, limit } => commands::runs(&client, ns, name, *limit, out).await,
        Command::Preview { name, count } => commands::preview(&client, ns, name, *count, out).await,
        Command::Quarantined => commands::quarantined(&client, out).await,
        Command::Trigger {
            target,
            value,
            run_id,
            hold,
            holder,
        } => {
            let target = commands::target(ns, target);
            let hold = hold
                .as_deref()
                .map(snapgate_sdk::duration::parse)
                .transpose()
                .map_err(|e| anyhow::anyhow!("--hold: {e}"))?;
            let how = commands::TriggerHow {
                hold,
                holder: holder.as_deref(),
            };
            commands::trigger(&client, &target, value, run_id.as_deref(), how, out).await
        }
        Command::Watch { target } => {
            commands::watch(&client, commands::target(ns, target), out).await
        }
        Command::QuiesceExec(args) => {
            quiesce_exec::run(&client, commands::target(ns, &args.target), args).await
        }
    }
}
