//! `quiesce-exec`: the guarded copy for applications that cannot link the SDK. A sidecar loop
//! that, for every copy request, runs the quiesce command, triggers, waits for the copy point
//! and always runs the unquiesce command.
//!
//! ```text
//!  loop: quiesced_copy(sh -c QUIESCE, sh -c UNQUIESCE)
//!          ├─ Completed, released by our own trigger ──► "copy completed", next request
//!          ├─ released by another value (another app, the annotation) ─► "copy not made inside
//!          │    this hold" (never "copy completed"), back off, next request
//!          ├─ not cut before the hold lease (what was left of --hold-limit) ran out ─► "the
//!          │    hold lease ran out before the copy point" (never "copy completed"), next request
//!          ├─ copy failed / quiesce failed / hold limit / unavailable ─► log, back off, next request
//!          └─ unquiesce failed after retries, refused (invalid target, not allowed),
//!             shell not startable ─────────────────────► exit non-zero
//!  a --source that does not exist (yet) is retried: the sidecar may start before the source
//!  is applied; the log says NotFound each time
//!  SIGTERM / Ctrl-C while quiesced ─► unquiesce, then exit 0
//! ```
//!
//! The commands see `SNAPGATE_NAMESPACE`, `SNAPGATE_PVC`, `SNAPGATE_SOURCE` and
//! `SNAPGATE_RUN_ID` in their environment.

use std::{process::Stdio, sync::Arc, time::Duration};

use anyhow::Context as _;
use snapgate_sdk::{
    Client, CopyRequest, CopyTarget, Error, GuardOptions, duration, prefixed_trigger_value,
};
use tokio::{process::Command, sync::Mutex};
use tonic::Code;
use tracing::{error, info, warn};

use crate::args::QuiesceExecArgs;

/// Why a shell command did not do its job.
#[derive(Debug, thiserror::Error)]
enum CommandError {
    /// `sh` could not be started at all: nothing will change by retrying.
    #[error("cannot start `sh -c {command}`: {source}")]
    Spawn {
        command: String,
        #[source]
        source: std::io::Error,
    },
    /// The command ran and failed.
    #[error("`{command}` exited with {status}")]
    Failed {
        command: String,
        status: std::process::ExitStatus,
    },
    /// The command ran longer than allowed and was killed.
    #[error("`{command}` did not finish within {limit:?}; killed")]
    TimedOut { command: String, limit: Duration },
}

/// What the commands are told about the copy.
#[derive(Clone, Debug, Default)]
struct CopyEnv {
    namespace: String,
    pvc: String,
    source: String,
    run_id: String,
}

async fn run_shell(command: &str, env: &CopyEnv, limit: Duration) -> Result<(), CommandError> {
    let mut child = Command::new("sh")
        .arg("-c")
        .arg(command)
        .env("SNAPGATE_NAMESPACE", &env.namespace)
        .env("SNAPGATE_PVC", &env.pvc)
        .env("SNAPGATE_SOURCE", &env.source)
        .env("SNAPGATE_RUN_ID", &env.run_id)
        .stdin(Stdio::null())
        // Its own process group, so that a timeout stops the whole command (pipelines, and
        // what it started), not only `sh`.
        .process_group(0)
        .kill_on_drop(true)
        .spawn()
        .map_err(|source| CommandError::Spawn {
            command: command.to_owned(),
            source,
        })?;
    let status = match tokio::time::timeout(limit, child.wait()).await {
        Ok(status) => status.map_err(|source| CommandError::Spawn {
            command: command.to_owned(),
            source,
        })?,
        Err(_) => {
            if let Some(pid) = child.id() {
                // The group's id is the shell's pid (process_group(0) above).
                let _ = Command::new("kill")
                    .args(["-KILL", "--", &format!("-{pid}")])
                    .status()
                    .await;
            }
            let _ = child.kill().await;
            return Err(CommandError::TimedOut {
                command: command.to_owned(),
                limit,
            });
        }
    };
    if status.success() {
        Ok(())
    } else {
        Err(CommandError::Failed {
            command: command.to_owned(),
            status,
        })
    }
}

/// The unquiesce command, run at most once per quiesce whoever asks first (the guard, or the
/// shutdown path), retried a few times because an application left quiesced is the worst case.
#[derive(Clone)]
struct Unquiescer {
    command: String,
    limit: Duration,
    /// `Some(env)` while the application is (or may be) quiesced.
    pending: Arc<Mutex<Option<CopyEnv>>>,
}

impl Unquiescer {
    /// Runs the unquiesce command if the application may be quiesced. The guard runs this in
    /// a task of its own, so SIGTERM arriving meanwhile does not cut it short: the shutdown
    /// path waits for the lock and then finds nothing left to do.
    async fn run(&self) -> Result<(), CommandError> {
        let mut pending = self.pending.lock().await;
        let Some(env) = pending.clone() else {
            return Ok(());
        };
        let mut attempt = 1;
        loop {
            match run_shell(&self.command, &env, self.limit).await {
                Ok(()) => {
                    info!(run_id = env.run_id, "unquiesced");
                    *pending = None;
                    return Ok(());
                }
                Err(e) if attempt < 3 && !matches!(e, CommandError::Spawn { .. }) => {
                    warn!(run_id = env.run_id, attempt, error = %e, "unquiesce failed; retrying");
                    tokio::time::sleep(Duration::from_secs(attempt)).await;
                    attempt += 1;
                }
                Err(e) => {
                    *pending = None;
                    return Err(e);
                }
            }
        }
    }
}

/// What the loop does after one guarded copy.
enum Next {
    /// Go on with the next request after this pause.
    Continue(Duration),
    /// Stop with this error.
    Stop(anyhow::Error),
}

fn classify(e: Error) -> Next {
    match e {
        Error::UnquiesceFailed { .. } => Next::Stop(
            anyhow::Error::new(e).context("the application may still be quiesced; giving up"),
        ),
        Error::QuiesceFailed { ref source, .. }
            if matches!(
                source.downcast_ref::<CommandError>(),
                Some(CommandError::Spawn { .. })
            ) =>
        {
            Next::Stop(e.into())
        }
        Error::Refused {
            code: Code::InvalidArgument | Code::PermissionDenied | Code::Unauthenticated,
            ..
        } => Next::Stop(e.into()),
        Error::InvalidEndpoint { .. } | Error::InvalidToken => Next::Stop(e.into()),
        Error::CopyFailed { .. } => {
            warn!(error = %e, "copy did not complete; waiting for the next request");
            Next::Continue(Duration::from_millis(200))
        }
        // A copy, maybe, but not one this sidecar held the application quiesced for: as good
        // as no copy from here.
        Error::ReleasedByAnother {
            ref run_id,
            ref value,
            ref released_by,
        } => {
            warn!(
                run_id,
                value,
                released_by,
                "copy not made inside this hold: another trigger value released the run; not counted, waiting for the next request"
            );
            Next::Continue(Duration::from_millis(200))
        }
        // No copy point inside this hold: nothing was counted, and the run waits for a new
        // trigger (this sidecar's next request).
        Error::LeaseExpired {
            ref run_id,
            ref value,
        } => {
            warn!(
                run_id,
                value,
                "the hold lease ran out before the copy point: no copy counted; waiting for the next request"
            );
            Next::Continue(Duration::from_millis(200))
        }
        other => {
            warn!(error = %other, "guarded copy failed; retrying");
            Next::Continue(Duration::from_secs(1))
        }
    }
}

/// Runs the loop until a signal (exit 0), an unrecoverable error, or after one copy with
/// `--once`.
pub(crate) async fn run(
    client: &Client,
    target: CopyTarget,
    args: &QuiesceExecArgs,
) -> anyhow::Result<()> {
    let hold_limit = duration::parse(&args.hold_limit)
        .map_err(anyhow::Error::msg)
        .context("--hold-limit")?;
    let grace = duration::parse(&args.disconnect_grace)
        .map_err(anyhow::Error::msg)
        .context("--disconnect-grace")?;
    let prefix = args.trigger_prefix.clone();
    let mut options = GuardOptions::default()
        .hold_limit(hold_limit)
        .disconnect_grace(grace)
        .trigger_value(move |r: &CopyRequest| prefixed_trigger_value(&prefix, r));
    options.holder = args.holder.clone();
    let unquiescer = Unquiescer {
        command: args.unquiesce.clone(),
        limit: hold_limit.max(Duration::from_secs(30)),
        pending: Arc::new(Mutex::new(None)),
    };
    let mut backoff = Duration::ZERO;
    loop {
        let step = guarded_copy(client, &target, args, &options, &unquiescer);
        let result = tokio::select! {
            result = step => result,
            _ = shutdown() => {
                info!("signal received; stopping");
                unquiescer.run().await.context("unquiescing before exit")?;
                return Ok(());
            }
        };
        match result {
            Ok(copy) => {
                info!(run_id = copy.run_id, trigger = copy.trigger, held = ?copy.held, "copy completed");
                backoff = Duration::ZERO;
                if args.once {
                    return Ok(());
                }
            }
            Err(e) => {
                if args.once {
                    return Err(e.into());
                }
                match classify(e) {
                    Next::Stop(e) => {
                        error!(error = format!("{e:#}"), "unrecoverable; exiting");
                        return Err(e);
                    }
                    Next::Continue(pause) => {
                        backoff = (backoff * 2).clamp(pause, Duration::from_secs(30));
                        tokio::select! {
                            _ = tokio::time::sleep(backoff) => {}
                            _ = shutdown() => return Ok(()),
                        }
                    }
                }
            }
        }
    }
}

async fn guarded_copy(
    client: &Client,
    target: &CopyTarget,
    args: &QuiesceExecArgs,
    options: &GuardOptions,
    unquiescer: &Unquiescer,
) -> Result<snapgate_sdk::GuardedCopy, Error> {
    let quiesce_command = args.quiesce.clone();
    let limit = options.hold_limit;
    let pending = unquiescer.pending.clone();
    let target_pvc = target.pvc.clone();
    let on_unquiesce = unquiescer.clone();
    client
        .quiesced_copy(
            target.clone(),
            move |request: CopyRequest| async move {
                let env = CopyEnv {
                    namespace: request.status.namespace.clone(),
                    pvc: if request.status.pvc.is_empty() {
                        target_pvc
                    } else {
                        request.status.pvc.clone()
                    },
                    source: request.source.clone(),
                    run_id: request.run_id.clone(),
                };
                info!(
                    run_id = env.run_id,
                    "copy requested; running the quiesce command"
                );
                *pending.lock().await = Some(env.clone());
                run_shell(&quiesce_command, &env, limit).await
            },
            move || async move { on_unquiesce.run().await },
            options.clone(),
        )
        .await
}

/// Resolves on SIGTERM or Ctrl-C.
async fn shutdown() {
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => {
                    let _ = tokio::signal::ctrl_c().await;
                    return;
                }
            };
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
