//! The application's side of the copy-trigger handshake: wait for a copy request, trigger,
//! wait for the outcome.
//!
//! ```text
//!  Idle/Pending ──► WaitingForTrigger ──(trigger)──► InProgress ──► Completed   (copy point: unquiesce)
//!                          │                              └────────► Failed | Aborted
//!                          └──(wait timeout, policy Skip)──────────► TimedOut
//! ```
//!
//! The copy status is per PVC: once a run has ended, the PVC may already show the next run. So
//! when the status names another run, the outcome of ours is read from its source's run
//! history (`ListRuns`) instead of being missed.

use std::fmt;

use futures::StreamExt;
use snapgate_proto::v1::{self, CopyState, CopyStatus, CopyTarget, RunResult};

use crate::{client::Client, error::Error, watch::CopyWatch};

/// How a run's copy ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Outcome {
    /// The copy point was reached: the application may unquiesce.
    Completed,
    /// The run failed before its copy point (the agent could not make the copy, ...).
    Failed,
    /// Nobody triggered in time and the source's policy is to skip.
    TimedOut,
    /// The run was aborted (its source was deleted, ...).
    Aborted,
}

impl Outcome {
    /// The outcome a copy state stands for, if it is final.
    pub fn of_state(state: CopyState) -> Option<Self> {
        match state {
            CopyState::Completed => Some(Self::Completed),
            CopyState::Failed => Some(Self::Failed),
            CopyState::TimedOut => Some(Self::TimedOut),
            CopyState::Aborted => Some(Self::Aborted),
            CopyState::Unspecified
            | CopyState::Idle
            | CopyState::Pending
            | CopyState::WaitingForTrigger
            | CopyState::InProgress => None,
        }
    }

    /// The outcome of a run as the run history records it, if it is known yet.
    pub fn of_run(run: &v1::Run) -> Option<Self> {
        if run.copy_time.is_some() {
            return Some(Self::Completed);
        }
        match RunResult::try_from(run.result).unwrap_or(RunResult::Unspecified) {
            RunResult::Successful => Some(Self::Completed),
            RunResult::Failed => Some(Self::Failed),
            RunResult::TimedOut => Some(Self::TimedOut),
            RunResult::Aborted => Some(Self::Aborted),
            RunResult::Unspecified => None,
        }
    }
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Completed => "Completed",
            Self::Failed => "Failed",
            Self::TimedOut => "TimedOut",
            Self::Aborted => "Aborted",
        })
    }
}

/// A run waiting for the application's trigger.
#[derive(Clone, Debug, PartialEq)]
pub struct CopyRequest {
    /// The run to trigger (pass it back to [`Client::trigger`]).
    pub run_id: String,
    /// The source whose run it is.
    pub source: String,
    /// The whole status (waiting since, deadline, latest trigger, ...).
    pub status: CopyStatus,
}

/// How a run's copy ended, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CopyOutcome {
    /// The run.
    pub run_id: String,
    /// Completed, or how it failed.
    pub outcome: Outcome,
    /// The scheduler's reason (empty for a plain Completed).
    pub reason: String,
    /// The trigger value bound to the run ("" if it was never released).
    pub trigger: String,
}

impl CopyOutcome {
    /// `Ok` for Completed, [`Error::CopyFailed`] otherwise.
    pub fn into_result(self) -> Result<Self, Error> {
        match self.outcome {
            Outcome::Completed => Ok(self),
            outcome => Err(Error::CopyFailed {
                run_id: self.run_id,
                outcome,
                reason: self.reason,
            }),
        }
    }
}

fn state(status: &CopyStatus) -> CopyState {
    CopyState::try_from(status.state).unwrap_or(CopyState::Unspecified)
}

/// The next WaitingForTrigger status on a watch.
pub(crate) async fn next_request(watch: &mut CopyWatch) -> Result<CopyRequest, Error> {
    loop {
        let status = next_status(watch).await?;
        if state(&status) == CopyState::WaitingForTrigger && !status.run_id.is_empty() {
            return Ok(CopyRequest {
                run_id: status.run_id.clone(),
                source: status.source.clone(),
                status,
            });
        }
    }
}

async fn next_status(watch: &mut CopyWatch) -> Result<CopyStatus, Error> {
    match watch.next().await {
        Some(result) => result,
        None => Err(Error::Unavailable {
            message: "the copy watch ended".into(),
        }),
    }
}

/// Waits on a watch for the outcome of `run_id`.
///
/// `released_with`: the value this caller released the run with. The run shown waiting again
/// with that value spent means the hold lease ran out: [`Error::LeaseExpired`].
pub(crate) async fn next_outcome(
    client: &Client,
    watch: &mut CopyWatch,
    target: &CopyTarget,
    run_id: &str,
    source: Option<&str>,
    released_with: Option<&str>,
) -> Result<CopyOutcome, Error> {
    let mut source = source.filter(|s| !s.is_empty()).map(str::to_owned);
    loop {
        let status = next_status(watch).await?;
        if status.run_id == run_id {
            if source.is_none() && !status.source.is_empty() {
                source = Some(status.source.clone());
            }
            // Waiting again after our release, or a status from before it: the run's record
            // says which.
            if let Some(value) = released_with
                && state(&status) == CopyState::WaitingForTrigger
            {
                let backoff = watch.backoff().clone();
                let run = backoff
                    .retry(|| find_run(client, target, source.as_deref(), run_id))
                    .await?;
                if run.is_some_and(|r| r.spent_triggers.iter().any(|v| v == value)) {
                    return Err(Error::LeaseExpired {
                        run_id: run_id.to_owned(),
                        value: value.to_owned(),
                    });
                }
                continue;
            }
            if let Some(outcome) = Outcome::of_state(state(&status)) {
                return Ok(CopyOutcome {
                    run_id: run_id.to_owned(),
                    outcome,
                    reason: status.reason,
                    trigger: status.trigger,
                });
            }
            continue;
        }
        // The PVC shows another run (or none): ours may have ended while we were not looking.
        // Ask its history now (retrying while the scheduler is unreachable): the PVC's next
        // change may be a long time away.
        let backoff = watch.backoff().clone();
        let found = backoff
            .retry(|| find_run(client, target, source.as_deref(), run_id))
            .await;
        match found {
            Ok(Some(run)) => {
                if let Some(outcome) = Outcome::of_run(&run) {
                    return Ok(CopyOutcome {
                        run_id: run_id.to_owned(),
                        outcome,
                        reason: run.message,
                        trigger: run.trigger,
                    });
                }
            }
            Ok(None) => {
                return Err(Error::RunLost {
                    run_id: run_id.to_owned(),
                });
            }
            Err(e) => return Err(e),
        }
    }
}

/// Looks a run up in its source's history. `Ok(None)`: no source of the target knows it.
pub(crate) async fn find_run(
    client: &Client,
    target: &CopyTarget,
    source: Option<&str>,
    run_id: &str,
) -> Result<Option<v1::Run>, Error> {
    let candidates = match source {
        Some(s) => vec![s.to_owned()],
        None if !target.source.is_empty() => vec![target.source.clone()],
        None => sources_of_pvc(client, &target.namespace, &target.pvc).await?,
    };
    for name in candidates {
        let request = v1::ListRunsRequest {
            namespace: target.namespace.clone(),
            name,
            limit: 100,
        };
        match client.sources().list_runs(request).await {
            Ok(r) => {
                if let Some(run) = r.into_inner().runs.into_iter().find(|r| r.id == run_id) {
                    return Ok(Some(run));
                }
            }
            Err(status) if status.code() == tonic::Code::NotFound => {}
            Err(status) => return Err(status.into()),
        }
    }
    Ok(None)
}

/// The sources of `namespace`, those whose `sourcePVC` is `pvc` first.
async fn sources_of_pvc(client: &Client, namespace: &str, pvc: &str) -> Result<Vec<String>, Error> {
    let mut names: Vec<(bool, String)> = client
        .list_sources(namespace)
        .await?
        .into_iter()
        .map(|s| {
            let on_pvc = s.spec.as_ref().is_some_and(|spec| spec.source_pvc == pvc);
            (!on_pvc, s.name)
        })
        .collect();
    // The sources on the PVC first; then the others, since a source edited to another PVC
    // keeps its runs in flight on the old one.
    names.sort();
    Ok(names.into_iter().map(|(_, name)| name).collect())
}

impl Client {
    /// Waits until a run on `target` is WaitingForTrigger, and returns it. Reconnects forever;
    /// wrap it in `tokio::time::timeout` to bound the wait.
    pub async fn wait_for_copy_request(&self, target: &CopyTarget) -> Result<CopyRequest, Error> {
        let mut watch = self.watch_copy(target.clone());
        next_request(&mut watch).await
    }

    /// Waits until the copy of `run_id` on `target` reaches its copy point (Completed) or ends
    /// without it (Failed, TimedOut, Aborted, each with the scheduler's reason). Both come back
    /// as `Ok`; use [`CopyOutcome::into_result`] to turn a failure into an error.
    pub async fn wait_for_outcome(
        &self,
        target: &CopyTarget,
        run_id: &str,
    ) -> Result<CopyOutcome, Error> {
        let mut watch = self.watch_copy(target.clone());
        next_outcome(self, &mut watch, target, run_id, None, None).await
    }
}
