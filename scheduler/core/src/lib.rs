//! The pure heart of the snapgate scheduler.
//!
//! Everything the scheduler decides lives here, with no IO, no clock and no async: the shell
//! (`snapgate-scheduler`) feeds it requests, agent reports and the current time, persists the
//! records it returns, and only then delivers the rest of its effects.
//!
//! ```text
//!              apply / sync-now / trigger / report / timeout (now)
//!                                   │
//!                                   ▼
//!   ┌────────────────────────── Scheduler ───────────────────────────┐
//!   │ sources ── schedule ──► due? ──► Run: Queued ─► Gating ─┬─► WaitingForTrigger
//!   │                                                         │        │ trigger
//!   │                             (one copy phase per PVC)    └────────┴─► Copying
//!   │                                          Copying ─► Transferring ─► CleaningUp ─► Finished
//!   └───────────────┬─────────────────────────────────────────────────┘
//!                   ▼
//!   effects: PutSource / PutRun (persist first) · Send(Directive) · CopyStatus · Observation
//!   poll_timeout(): the next deadline (a schedule time or a copy-trigger wait timeout)
//! ```

mod machine;
pub mod model;
pub mod presence;
pub mod schedule;
pub use snapgate_contract::text;
pub mod validate;

use std::fmt;

pub use machine::{
    CoreError, Effect, HISTORY_PER_SOURCE, LeaseAnswer, LeasePolicy, MAX_LOG_BYTES,
    MAX_MESSAGE_BYTES, MAX_STARTS_PER_STEP, Mirror, Mirrored, Observation, Quarantined,
    ReportOutcome, Restored, SPENT_PER_RUN, Scheduler, TIMEOUT_TEXT, Target, TriggerAccepted,
};
pub use model::SourceRecord;

/// A source's identity: namespace and name.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SourceKey {
    /// The Kubernetes namespace of the source and its PVC.
    pub namespace: String,
    /// The source's name, unique in its namespace.
    pub name: String,
}

impl SourceKey {
    /// A key from its parts.
    pub fn new(namespace: &str, name: &str) -> Self {
        Self {
            namespace: namespace.to_owned(),
            name: name.to_owned(),
        }
    }
}

impl fmt::Display for SourceKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// A run's identity, unique for the life of a scheduler's store: `run-<n>`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RunId(pub u64);

impl fmt::Display for RunId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "run-{}", self.0)
    }
}

impl std::str::FromStr for RunId {
    type Err = ();
    /// `run-<n>` exactly as [`RunId`] displays it: decimal digits, no sign, no leading zero
    /// (`run-007` would name run-7 under another key).
    fn from_str(s: &str) -> Result<Self, ()> {
        let n = s.strip_prefix("run-").ok_or(())?;
        let canonical = !n.is_empty()
            && n.bytes().all(|b| b.is_ascii_digit())
            && (n == "0" || !n.starts_with('0'));
        if !canonical {
            return Err(());
        }
        n.parse().map(RunId).map_err(|_| ())
    }
}

#[cfg(test)]
mod tests {
    use super::RunId;

    #[test]
    fn a_run_id_parses_only_as_it_is_displayed() {
        for good in [0, 7, 42, u64::MAX] {
            assert_eq!(RunId(good).to_string().parse(), Ok(RunId(good)));
        }
        for bad in [
            "",
            "run-",
            "run-007",
            "run-+7",
            "run--7",
            "run-7 ",
            "run-1e3",
            "7",
            "Run-7",
            "run-18446744073709551616",
        ] {
            assert_eq!(bad.parse::<RunId>(), Err(()), "{bad:?}");
        }
    }
}
