//! The SDK's one error type: each variant names a cause the caller can act on.
//!
//! | variant | what to do |
//! |---|---|
//! | [`Error::Unavailable`] | the scheduler cannot be reached; retry later |
//! | [`Error::Refused`] | the scheduler said no; the gRPC code says why, retrying the same request will not help |
//! | [`Error::CopyFailed`] | the run ended without a copy (Failed, TimedOut, Aborted); wait for the next request |
//! | [`Error::ReleasedByAnother`] | someone else's trigger value released the run: the copy is not inside this application's hold; wait for the next request |
//! | [`Error::LeaseExpired`] | this application's hold ran out (or was ended) before the copy point: no copy was counted, the run waits for a new trigger |
//! | [`Error::HoldLimitExceeded`] | the application stayed quiesced too long and was released |
//! | [`Error::QuiesceFailed`] / [`Error::UnquiesceFailed`] | the application's own step failed |

use std::time::Duration;

use tonic::{Code, Status};

use crate::{guard::GuardedCopy, handshake::Outcome};

/// A boxed error from the application's own quiesce or unquiesce step.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Everything that can go wrong talking to the scheduler or guarding a copy.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The endpoint URL or the TLS settings cannot be used.
    #[error("invalid endpoint {endpoint:?}: {message}")]
    InvalidEndpoint {
        /// The endpoint as given.
        endpoint: String,
        /// What is wrong with it.
        message: String,
    },
    /// The bearer token cannot be sent as a gRPC metadata value.
    #[error("the bearer token is not a valid header value (printable ASCII only)")]
    InvalidToken,
    /// The bearer token file cannot be read, is empty or holds an invalid token.
    #[error("token file {path}: {message}")]
    TokenFile {
        /// The file.
        path: std::path::PathBuf,
        /// What is wrong with it (never the token itself).
        message: String,
    },
    /// The scheduler cannot be reached (connection refused or lost, shutting down).
    #[error("the scheduler is unavailable: {message}")]
    Unavailable {
        /// What the transport or the scheduler said.
        message: String,
    },
    /// The scheduler refused the request; the code says why (`INVALID_ARGUMENT`,
    /// `FAILED_PRECONDITION`, `NOT_FOUND`, `PERMISSION_DENIED`, ...).
    #[error("the scheduler refused the request: {code:?}: {message}")]
    Refused {
        /// The gRPC status code.
        code: Code,
        /// The scheduler's message, naming the field or the rule.
        message: String,
    },
    /// The run ended without reaching its copy point.
    #[error("copy of {run_id} ended {outcome}: {reason}")]
    CopyFailed {
        /// The run.
        run_id: String,
        /// Failed, TimedOut or Aborted.
        outcome: Outcome,
        /// Why, as the scheduler recorded it.
        reason: String,
    },
    /// The run was released by a trigger value other than this application's: another
    /// application's Trigger, or the PVC's `copy-trigger` annotation written by someone else.
    /// Whatever the timing, the copy is not known to lie inside this application's hold, so it
    /// is not reported as a consistent copy. The application was unquiesced (without waiting
    /// for that copy); wait for the next request.
    #[error(
        "run {run_id} was released by {} with copy-trigger {value:?}, not by this application's trigger: the copy was not made inside this application's hold",
        if released_by.is_empty() { "another party" } else { released_by.as_str() }
    )]
    ReleasedByAnother {
        /// The run.
        run_id: String,
        /// The trigger value that released it.
        value: String,
        /// How it was released, as the scheduler recorded it: `rpc` (another Trigger call) or
        /// `annotation` (the PVC's `copy-trigger`).
        released_by: String,
    },
    /// This application released the run, but its hold lease ran out (or it ended its hold)
    /// before the copy point: the scheduler counted no copy, the value is spent, and the run
    /// waits for a new trigger. The application was unquiesced.
    #[error(
        "the hold lease of {run_id} (copy-trigger {value:?}) ran out before the copy point: no copy was counted; the run waits for a new trigger"
    )]
    LeaseExpired {
        /// The run.
        run_id: String,
        /// This application's trigger value, now spent.
        value: String,
    },
    /// The application was quiesced for longer than the caller allowed; it was unquiesced.
    #[error(
        "hold limit of {limit:?} expired for {run_id} ({}); the application was unquiesced",
        if *triggered { "after the trigger: the copy may not be consistent" } else { "before the trigger" }
    )]
    HoldLimitExceeded {
        /// The limit that expired.
        limit: Duration,
        /// The run that was being copied.
        run_id: String,
        /// Whether the trigger had been accepted. Its hold lease ended before this limit, so no
        /// copy point after the unquiesce is counted as consistent.
        triggered: bool,
    },
    /// The application's quiesce step failed. The unquiesce step was still run; the run keeps
    /// waiting for a trigger.
    #[error("quiesce failed for {run_id}: {source}")]
    QuiesceFailed {
        /// The run that was waiting.
        run_id: String,
        /// The application's error.
        #[source]
        source: BoxError,
    },
    /// The application's unquiesce step failed: the application may still be quiesced.
    #[error("unquiesce failed for {run_id}: {source}")]
    UnquiesceFailed {
        /// The run that was being copied.
        run_id: String,
        /// What happened to the copy before unquiescing.
        copy: Box<Result<GuardedCopy, Error>>,
        /// The application's error.
        #[source]
        source: BoxError,
    },
    /// The run was no longer known to the scheduler before its outcome was seen (for example
    /// its source was deleted and its history with it).
    #[error("run {run_id} is gone; its outcome is unknown")]
    RunLost {
        /// The run.
        run_id: String,
    },
}

impl Error {
    /// The gRPC code behind this error, if it came from the scheduler or the transport.
    pub fn code(&self) -> Option<Code> {
        match self {
            Error::Refused { code, .. } => Some(*code),
            Error::Unavailable { .. } => Some(Code::Unavailable),
            _ => None,
        }
    }

    /// Whether the same call may succeed later without anyone changing anything.
    pub fn is_transient(&self) -> bool {
        matches!(self, Error::Unavailable { .. })
    }

    /// The copy's outcome for [`Error::CopyFailed`].
    pub fn outcome(&self) -> Option<Outcome> {
        match self {
            Error::CopyFailed { outcome, .. } => Some(*outcome),
            _ => None,
        }
    }
}

/// Codes that mean "the scheduler or the connection to it is not there right now".
pub(crate) fn is_transient_code(code: Code) -> bool {
    matches!(code, Code::Unavailable | Code::Unknown | Code::Cancelled)
}

impl From<Status> for Error {
    fn from(status: Status) -> Self {
        if is_transient_code(status.code()) {
            // Unknown and Cancelled are what a stream cut mid-way answers; say which it was.
            let message = match (status.code(), status.message()) {
                (code, "") => format!("{code:?}"),
                (Code::Unavailable, m) => m.to_owned(),
                (code, m) => format!("{code:?}: {m}"),
            };
            Error::Unavailable { message }
        } else {
            Error::Refused {
                code: status.code(),
                message: status.message().to_owned(),
            }
        }
    }
}
