//! Bounds on what the agent sends to the scheduler and writes to the cluster. Everything read
//! from the cluster (annotations, snapshot errors, API messages) and everything in a directive
//! is hostile until checked: free-form strings are cut to a named size, times are kept inside
//! the range a protobuf `Timestamp` can carry, and values written to annotations must be
//! printable.
//!
//! ```text
//!   PvcObserved strings ............ MAX_VALUE_BYTES   (cut with TRUNCATED)
//!   AgentError reason / message .... MAX_REASON_BYTES / MAX_MESSAGE_BYTES
//!   MoverStuck reason / message /
//!     pod / job .................... MAX_REASON_BYTES / stuck::MAX_STUCK_MESSAGE_BYTES /
//!                                      stuck::MAX_POD_NAME_BYTES / MAX_VALUE_CHARS
//!   Event message .................. MAX_MESSAGE_BYTES
//!   mover logs ..................... classify::MOVER_LOG_MAX_BYTES
//!   times .......................... 0001-01-01T00:00:00Z ..= 9999-12-31T23:59:59.999999999Z
//!   values written to annotations .. MAX_VALUE_CHARS characters, none of them invisible
//! ```

use chrono::{DateTime, Utc};
use snapgate_proto::v1::{self, report::Observation};

pub use snapgate_proto::{
    text::{TRUNCATED, is_invisible, quoted, tail, truncate},
    time::{MAX_PROTO_SECONDS, MIN_PROTO_SECONDS, proto_time},
};

use crate::{classify::MOVER_LOG_MAX_BYTES, stuck};

/// The most bytes of an [`v1::AgentError`] message (and of an Event message).
pub const MAX_MESSAGE_BYTES: usize = 1024;
/// The most bytes of an [`v1::AgentError`] reason (reasons are short words such as
/// `PvcNotFound`).
pub const MAX_REASON_BYTES: usize = 64;
/// The most bytes of a [`v1::PvcObserved`] string (an annotation value as read). A longer
/// value is cut and marked with [`TRUNCATED`], so it stays longer than [`MAX_VALUE_CHARS`]
/// characters and the scheduler refuses it as too long.
pub const MAX_VALUE_BYTES: usize = 1024;
/// The most characters of a directive value the agent writes to an annotation (the
/// scheduler's limit on trigger values).
pub const MAX_VALUE_CHARS: usize = 253;

/// `s` with every invisible character ([`is_invisible`]) written as its escape, e.g.
/// `\u{202e}`: for messages the agent composes from values it does not control (Events,
/// errors), so that none of them can hide or reorder text where it is shown.
pub fn escape_invisible(s: &str) -> String {
    if !s.chars().any(is_invisible) {
        return s.to_owned();
    }
    s.chars()
        .map(|c| {
            if is_invisible(c) {
                c.escape_unicode().to_string()
            } else {
                c.to_string()
            }
        })
        .collect()
}

/// Why a directive value may not be written to an annotation (or an Event): more than
/// [`MAX_VALUE_CHARS`] characters, or an invisible character ([`is_invisible`]). `None` when
/// it may. The reason quotes at most a short prefix of the value.
pub fn unwritable(v: &str) -> Option<String> {
    let count = v.chars().count();
    if count > MAX_VALUE_CHARS {
        return Some(format!(
            "it has {count} characters, more than the {MAX_VALUE_CHARS} allowed (MAX_VALUE_CHARS)"
        ));
    }
    v.char_indices()
        .find(|(_, c)| is_invisible(*c))
        .map(|(at, c)| {
            format!(
                "U+{:04X} at byte {at} is a control, format or separator character",
                u32::from(c)
            )
        })
}

/// Whether `t` is within the range of a protobuf `Timestamp`.
pub fn in_proto_range(t: DateTime<Utc>) -> bool {
    (MIN_PROTO_SECONDS..=MAX_PROTO_SECONDS).contains(&t.timestamp())
}

/// `t`, moved into the range of a protobuf `Timestamp` if it is outside (for the agent's own
/// clock, which is trusted but may be anything in a test).
pub fn clamp_to_proto_range(t: DateTime<Utc>) -> DateTime<Utc> {
    let clamped = t.timestamp().clamp(MIN_PROTO_SECONDS, MAX_PROTO_SECONDS);
    if clamped == t.timestamp() {
        return t;
    }
    DateTime::from_timestamp(clamped, 0).unwrap_or(DateTime::<Utc>::UNIX_EPOCH)
}

/// A time read from the cluster (a `creationTime`, a `creationTimestamp`) as the agent reports
/// it: itself when a protobuf `Timestamp` can carry it, else `now`.
pub fn reported_time(t: DateTime<Utc>, now: DateTime<Utc>) -> DateTime<Utc> {
    if in_proto_range(t) {
        t
    } else {
        clamp_to_proto_range(now)
    }
}

/// `t` as a protobuf `Timestamp` that is valid: `now` (clamped) stands in for a time out of
/// range or with invalid nanos.
pub fn valid_timestamp(t: &prost_types::Timestamp, now: DateTime<Utc>) -> prost_types::Timestamp {
    match proto_time(t) {
        Some(_) => *t,
        None => snapgate_proto::time::timestamp(clamp_to_proto_range(now)),
    }
}

/// `observation` within every bound of this module, whatever built it: the last check before
/// a report leaves the agent.
pub fn bound(observation: Observation, now: DateTime<Utc>) -> Observation {
    let value = |s: String| cut(s, MAX_VALUE_BYTES);
    let logs = |s: String| cut(s, MOVER_LOG_MAX_BYTES);
    match observation {
        Observation::Pvc(p) => Observation::Pvc(v1::PvcObserved {
            exists: p.exists,
            use_copy_trigger: p.use_copy_trigger,
            copy_trigger: value(p.copy_trigger),
            latest_copy_trigger: value(p.latest_copy_trigger),
            latest_copy_status: value(p.latest_copy_status),
            waiting_since: value(p.waiting_since),
        }),
        Observation::CopyCompleted(c) => Observation::CopyCompleted(v1::CopyCompleted {
            copy_name: value(c.copy_name),
            time: c.time.map(|t| valid_timestamp(&t, now)),
        }),
        Observation::MoverFinished(m) => Observation::MoverFinished(v1::MoverFinished {
            succeeded: m.succeeded,
            logs: logs(m.logs),
        }),
        Observation::MoverFailed(m) => Observation::MoverFailed(v1::MoverFailed {
            attempt: m.attempt,
            logs: logs(m.logs),
        }),
        Observation::CleanedUp(c) => Observation::CleanedUp(c),
        Observation::MoverStuck(m) => {
            let text = |s: &str, max| truncate(&escape_invisible(s), max);
            Observation::MoverStuck(v1::MoverStuck {
                reason: text(&m.reason, MAX_REASON_BYTES),
                message: text(&m.message, stuck::MAX_STUCK_MESSAGE_BYTES),
                pod: text(&m.pod, stuck::MAX_POD_NAME_BYTES),
                job: text(&m.job, MAX_VALUE_CHARS),
                attempt: m.attempt,
                since: m.since.map(|t| valid_timestamp(&t, now)),
                deadline: m.deadline.map(|t| valid_timestamp(&t, now)),
            })
        }
        Observation::Error(e) => {
            Observation::Error(agent_error(&e.reason, &e.message, e.retryable))
        }
    }
}

/// `s` itself when it has at most `max` bytes (no copy), else [`truncate`]d.
pub fn cut(s: String, max: usize) -> String {
    if s.len() <= max { s } else { truncate(&s, max) }
}

/// An [`v1::AgentError`] with invisible characters escaped ([`escape_invisible`]) and its
/// reason and message cut to [`MAX_REASON_BYTES`] and [`MAX_MESSAGE_BYTES`].
pub fn agent_error(reason: &str, message: &str, retryable: bool) -> v1::AgentError {
    v1::AgentError {
        reason: truncate(&escape_invisible(reason), MAX_REASON_BYTES),
        message: truncate(&escape_invisible(message), MAX_MESSAGE_BYTES),
        retryable,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pretty_assertions::assert_eq;

    #[test]
    fn truncation_keeps_a_prefix_on_a_char_boundary_and_marks_it() {
        assert_eq!(truncate("short", 10), "short");
        assert_eq!(
            truncate(&"a".repeat(40), 20),
            format!("{}{TRUNCATED}", "a".repeat(5))
        );
        // 4-byte chars: the cut moves back to the char boundary.
        let cut = truncate(&"😀".repeat(10), 22);
        assert_eq!(cut, format!("😀{TRUNCATED}"));
        assert!(cut.len() <= 22);
        assert_eq!(truncate("éééé", 3), "é", "no room for the marker");
        assert_eq!(truncate("abc", 0), "");
    }

    #[test]
    fn a_tail_keeps_the_end_on_a_char_boundary() {
        assert_eq!(tail("short", 10), "short");
        assert_eq!(tail("éééé", 3), "é");
        assert_eq!(tail("abc", 0), "");
    }

    #[test]
    fn bidi_overrides_zero_width_characters_the_bom_and_controls_are_invisible() {
        for c in [
            '\u{202E}', '\u{200B}', '\u{FEFF}', '\u{0}', '\n', '\u{7F}', '\u{2028}',
        ] {
            assert!(is_invisible(c), "U+{:04X}", u32::from(c));
        }
        for c in ['a', 'é', '😀', ' ', '-'] {
            assert!(!is_invisible(c), "{c}");
        }
        assert_eq!(escape_invisible("a\u{202E}b"), "a\\u{202e}b");
        assert_eq!(escape_invisible("plain"), "plain");
    }

    #[test]
    fn a_value_is_writable_up_to_253_printable_characters() {
        assert_eq!(unwritable(""), None);
        assert_eq!(unwritable(&"é".repeat(253)), None);
        assert!(unwritable(&"é".repeat(254)).is_some_and(|w| w.contains("254 characters")));
        assert!(unwritable("a\u{202E}b").is_some_and(|w| w.contains("U+202E at byte 1")));
        assert!(unwritable("\u{FEFF}").is_some());
        assert!(unwritable("line\nbreak").is_some());
    }

    #[test]
    fn only_timestamps_within_years_1_to_9999_with_valid_nanos_are_times() {
        let ts = |seconds, nanos| prost_types::Timestamp { seconds, nanos };
        assert!(proto_time(&ts(0, 0)).is_some());
        assert!(proto_time(&ts(MIN_PROTO_SECONDS, 0)).is_some());
        assert!(proto_time(&ts(MAX_PROTO_SECONDS, 999_999_999)).is_some());
        for bad in [
            ts(MIN_PROTO_SECONDS - 1, 0),
            ts(MAX_PROTO_SECONDS + 1, 0),
            ts(i64::MAX, 0),
            ts(i64::MIN, 0),
            ts(0, -1),
            ts(0, 1_000_000_000),
            ts(0, i32::MIN),
        ] {
            assert_eq!(proto_time(&bad), None, "{bad:?}");
        }
        let now = DateTime::from_timestamp(1_800_000_000, 0).unwrap();
        assert_eq!(
            valid_timestamp(&ts(i64::MAX, -1), now),
            ts(1_800_000_000, 0)
        );
        assert_eq!(valid_timestamp(&ts(5, 6), now), ts(5, 6));
    }

    #[test]
    fn the_agents_clock_is_clamped_into_the_protobuf_range() {
        let max = clamp_to_proto_range(DateTime::<Utc>::MAX_UTC);
        assert_eq!(max.timestamp(), MAX_PROTO_SECONDS);
        let min = clamp_to_proto_range(DateTime::<Utc>::MIN_UTC);
        assert_eq!(min.timestamp(), MIN_PROTO_SECONDS);
        let now = DateTime::from_timestamp(1_800_000_000, 5).unwrap();
        assert_eq!(clamp_to_proto_range(now), now);
        assert_eq!(reported_time(DateTime::<Utc>::MIN_UTC, now), now);
        assert_eq!(reported_time(now, DateTime::<Utc>::MAX_UTC), now);
    }

    #[test]
    fn a_bounded_report_cuts_errors_values_and_logs_and_fixes_its_time() {
        let now = DateTime::from_timestamp(1_800_000_000, 0).unwrap();
        let Observation::Error(e) = bound(
            Observation::Error(v1::AgentError {
                reason: "R".repeat(100),
                message: "m\u{202E}".repeat(100_000),
                retryable: true,
            }),
            now,
        ) else {
            unreachable!()
        };
        assert!(e.reason.len() <= MAX_REASON_BYTES && e.reason.ends_with(TRUNCATED));
        assert!(e.message.len() <= MAX_MESSAGE_BYTES && e.message.ends_with(TRUNCATED));
        assert!(e.message.starts_with("m\\u{202e}m"), "{}", e.message);
        let Observation::MoverFailed(m) = bound(
            Observation::MoverFailed(v1::MoverFailed {
                attempt: 1,
                logs: "x".repeat(5000),
            }),
            now,
        ) else {
            unreachable!()
        };
        assert!(m.logs.len() <= MOVER_LOG_MAX_BYTES);
        let Observation::CopyCompleted(c) = bound(
            Observation::CopyCompleted(v1::CopyCompleted {
                copy_name: "c".into(),
                time: Some(prost_types::Timestamp {
                    seconds: MAX_PROTO_SECONDS + 1,
                    nanos: 0,
                }),
            }),
            now,
        ) else {
            unreachable!()
        };
        assert_eq!(c.time, Some(snapgate_proto::time::timestamp(now)));
        let Observation::MoverStuck(m) = bound(
            Observation::MoverStuck(v1::MoverStuck {
                reason: "R".repeat(100),
                message: "m\u{202E}".repeat(100_000),
                pod: "p".repeat(1000),
                job: "j".repeat(1000),
                attempt: 3,
                since: Some(prost_types::Timestamp {
                    seconds: i64::MIN,
                    nanos: 0,
                }),
                deadline: None,
            }),
            now,
        ) else {
            unreachable!()
        };
        assert!(m.reason.len() <= MAX_REASON_BYTES);
        assert!(m.message.len() <= stuck::MAX_STUCK_MESSAGE_BYTES);
        assert!(m.message.starts_with("m\\u{202e}m"), "{}", m.message);
        assert!(m.pod.len() <= stuck::MAX_POD_NAME_BYTES && m.job.len() <= MAX_VALUE_CHARS);
        assert_eq!(m.since, Some(snapgate_proto::time::timestamp(now)));
        assert_eq!((m.attempt, m.deadline), (3, None));
    }
}
