//! VolSync's copy-trigger annotations on a source PVC (docs/copy-trigger.md, "Annotations on
//! the source PVC"), the values of its status, and the text of a wait for a trigger that timed
//! out ("Waiting too long"): snapgate reads and writes them as VolSync does, so that users and
//! tools that know VolSync's find them.

/// Enables gating for the PVC when present, with any value (also `""`). Owned by the user.
pub const USE_COPY_TRIGGER: &str = "volsync.backube/use-copy-trigger";
/// The user's trigger value. Written by snapgate only for a Trigger RPC.
pub const COPY_TRIGGER: &str = "volsync.backube/copy-trigger";
/// The state of the current or last gated copy ([`CopyStatus`]). Owned by snapgate.
pub const LATEST_COPY_STATUS: &str = "volsync.backube/latest-copy-status";
/// The trigger value that released the last completed copy. Owned by snapgate.
pub const LATEST_COPY_TRIGGER: &str = "volsync.backube/latest-copy-trigger";
/// When the current wait began (RFC 3339 UTC, seconds). Owned by snapgate.
pub const LATEST_COPY_TRIGGER_WAITING_SINCE: &str =
    "volsync.backube/latest-copy-trigger-waiting-since";
/// On a Namespace: `"true"` (any case) allows privileged movers there. Set by cluster admins.
pub const PRIVILEGED_MOVERS: &str = "volsync.backube/privileged-movers";

/// The text VolSync writes when a wait for a new copy-trigger value times out (into
/// `latestMoverStatus.logs`, and the Warning Event about the PVC), followed by the PVC's name:
/// see [`timeout_message`].
pub const TIMEOUT_TEXT: &str = "Timed out waiting for copy-trigger to be modified for pvc";

/// [`TIMEOUT_TEXT`] for the PVC `pvc`.
pub fn timeout_message(pvc: &str) -> String {
    format!("{TIMEOUT_TEXT} {pvc}")
}

/// The values of [`LATEST_COPY_STATUS`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CopyStatus {
    /// Waiting for `copy-trigger` to change.
    WaitingForTrigger,
    /// Released: the copy is being made.
    InProgress,
    /// The copy point was reached.
    Completed,
}

impl CopyStatus {
    /// Every status, in the order a copy goes through them.
    pub const ALL: [Self; 3] = [Self::WaitingForTrigger, Self::InProgress, Self::Completed];

    /// The annotation value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::WaitingForTrigger => "WaitingForTrigger",
            Self::InProgress => "InProgress",
            Self::Completed => "Completed",
        }
    }

    /// The status an annotation value names, if any.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "WaitingForTrigger" => Some(Self::WaitingForTrigger),
            "InProgress" => Some(Self::InProgress),
            "Completed" => Some(Self::Completed),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use pretty_assertions::assert_eq;

    use super::*;

    #[test]
    fn the_annotation_keys_are_volsyncs_to_the_letter() {
        assert_eq!(
            [
                USE_COPY_TRIGGER,
                COPY_TRIGGER,
                LATEST_COPY_STATUS,
                LATEST_COPY_TRIGGER,
                LATEST_COPY_TRIGGER_WAITING_SINCE,
                PRIVILEGED_MOVERS,
            ],
            [
                "volsync.backube/use-copy-trigger",
                "volsync.backube/copy-trigger",
                "volsync.backube/latest-copy-status",
                "volsync.backube/latest-copy-trigger",
                "volsync.backube/latest-copy-trigger-waiting-since",
                "volsync.backube/privileged-movers",
            ]
        );
    }

    #[test]
    fn each_copy_status_reads_back_as_itself_and_nothing_else_reads_as_one() {
        assert_eq!(
            CopyStatus::ALL.map(CopyStatus::as_str),
            ["WaitingForTrigger", "InProgress", "Completed"]
        );
        for status in CopyStatus::ALL {
            assert_eq!(CopyStatus::parse(status.as_str()), Some(status));
        }
        for other in ["", "completed", "Completed ", "Failed", "TimedOut"] {
            assert_eq!(CopyStatus::parse(other), None, "{other:?}");
        }
    }

    #[test]
    fn a_timed_out_wait_is_said_in_volsyncs_words_with_the_pvc_last() {
        assert_eq!(
            timeout_message("data"),
            "Timed out waiting for copy-trigger to be modified for pvc data"
        );
        assert!(timeout_message("db").starts_with(TIMEOUT_TEXT));
    }
}
