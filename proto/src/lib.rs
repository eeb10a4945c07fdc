//! The snapgate wire contract: package `snapgate.v1`.
//!
//! ```text
//!   ops (grpcurl, CLI) ──SourceService──┐
//!   applications (SDK) ─TriggerService──┤──> scheduler <──AgentService.Connect── agent (per namespace)
//! ```
//!
//! The messages are always built; the tonic clients and servers only with the `client` and
//! `server` features, so a pure crate can use the messages without pulling in tonic.

#![allow(
    missing_docs,
    unreachable_pub,
    clippy::large_enum_variant,
    clippy::doc_lazy_continuation
)]

/// `snapgate.v1`: sources, runs, copy status and the agent link.
pub mod duration;

pub mod v1 {
    include!(concat!(env!("OUT_DIR"), "/snapgate.v1.rs"));

    /// The encoded `FileDescriptorSet` of `snapgate.v1`, for server reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] =
        include_bytes!(concat!(env!("OUT_DIR"), "/snapgate_descriptor.bin"));
}

pub use prost_types::{Duration, Timestamp};

/// Free-form text from the wire, the store or the cluster, made safe to keep and to show.
pub mod text {
    /// What ends a string that was cut.
    pub const TRUNCATED: &str = "… (truncated)";

    /// `s` when it has at most `max` bytes; otherwise its longest prefix that ends on a char
    /// boundary and leaves room for [`TRUNCATED`], followed by it. The result has at most `max`
    /// bytes (when `max` is shorter than the marker, just the prefix).
    pub fn truncate(s: &str, max: usize) -> String {
        if s.len() <= max {
            return s.to_owned();
        }
        let (room, marker) = match max.checked_sub(TRUNCATED.len()) {
            Some(room) => (room, TRUNCATED),
            None => (max, ""),
        };
        let mut cut = room;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        let mut out = String::with_capacity(cut + marker.len());
        out.push_str(s.get(..cut).unwrap_or_default());
        out.push_str(marker);
        out
    }

    /// `s` when it has at most `max` bytes; otherwise its longest suffix of at most `max` bytes
    /// that starts on a char boundary (log tails keep their end).
    pub fn tail(s: &str, max: usize) -> &str {
        let mut start = s.len().saturating_sub(max);
        while !s.is_char_boundary(start) {
            start += 1;
        }
        s.get(start..).unwrap_or_default()
    }

    /// Unicode's Cc (controls), Cf (format: bidi controls such as U+202E, zero-width characters
    /// such as U+200B, the BOM U+FEFF, tags), Zl and Zp, as of Unicode 16: characters that must
    /// not reach an annotation, an Event or a log line from a directive. Both the scheduler
    /// (at admission) and the agent (before writing) refuse them.
    pub fn is_invisible(c: char) -> bool {
        const FORMAT: &[(u32, u32)] = &[
            (0x00AD, 0x00AD),
            (0x0600, 0x0605),
            (0x061C, 0x061C),
            (0x06DD, 0x06DD),
            (0x070F, 0x070F),
            (0x0890, 0x0891),
            (0x08E2, 0x08E2),
            (0x180E, 0x180E),
            (0x200B, 0x200F),
            (0x2028, 0x202E),
            (0x2060, 0x2064),
            (0x2066, 0x206F),
            (0xFEFF, 0xFEFF),
            (0xFFF9, 0xFFFB),
            (0x110BD, 0x110BD),
            (0x110CD, 0x110CD),
            (0x13430, 0x1343F),
            (0x1BCA0, 0x1BCA3),
            (0x1D173, 0x1D17A),
            (0xE0001, 0xE0001),
            (0xE0020, 0xE007F),
        ];
        let u = u32::from(c);
        c.is_control() || FORMAT.iter().any(|(lo, hi)| (*lo..=*hi).contains(&u))
    }

    /// A short, escaped quotation of a value for an error message (at most 64 characters of it).
    pub fn quoted(v: &str) -> String {
        const QUOTE_CHARS: usize = 64;
        match v.char_indices().nth(QUOTE_CHARS) {
            None => format!("{v:?}"),
            Some((cut, _)) => format!(
                "{:?}… ({} bytes)",
                v.get(..cut).unwrap_or_default(),
                v.len()
            ),
        }
    }
}

/// Conversions between protobuf timestamps and chrono times, for every crate of the workspace.
pub mod time {
    use chrono::{DateTime, Utc};

    /// The earliest time a protobuf `Timestamp` can carry: 0001-01-01T00:00:00Z.
    pub const MIN_PROTO_SECONDS: i64 = -62_135_596_800;
    /// The latest second a protobuf `Timestamp` can carry: 9999-12-31T23:59:59Z.
    pub const MAX_PROTO_SECONDS: i64 = 253_402_300_799;

    /// The time a protobuf `Timestamp` stands for, when it is one a protobuf `Timestamp` may
    /// carry (seconds within 0001-01-01..=9999-12-31, nanos within `0..1e9`); `None` otherwise.
    pub fn proto_time(t: &prost_types::Timestamp) -> Option<DateTime<Utc>> {
        if !(MIN_PROTO_SECONDS..=MAX_PROTO_SECONDS).contains(&t.seconds) {
            return None;
        }
        let nanos = u32::try_from(t.nanos).ok().filter(|n| *n < 1_000_000_000)?;
        DateTime::from_timestamp(t.seconds, nanos)
    }

    /// A chrono time as a protobuf timestamp.
    pub fn timestamp(t: DateTime<Utc>) -> prost_types::Timestamp {
        prost_types::Timestamp {
            seconds: t.timestamp(),
            // chrono represents a leap second as nanos of 1e9 and more; protobuf does not.
            nanos: i32::try_from(t.timestamp_subsec_nanos().min(999_999_999)).unwrap_or(0),
        }
    }

    /// A protobuf timestamp as a chrono time (out-of-range values clamp to the epoch).
    pub fn to_datetime(t: &prost_types::Timestamp) -> DateTime<Utc> {
        DateTime::from_timestamp(t.seconds, t.nanos.clamp(0, 999_999_999).unsigned_abs())
            .unwrap_or_default()
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn a_leap_second_becomes_a_valid_timestamp() {
            let leap = DateTime::parse_from_rfc3339("2016-12-31T23:59:60.5Z")
                .unwrap()
                .with_timezone(&Utc);
            let t = timestamp(leap);
            assert_eq!(t.nanos, 999_999_999);
            assert!(proto_time(&t).is_some());
        }
    }
}

/// `google.protobuf.Struct` and JSON, both ways (the free-form Kubernetes objects of a spec:
/// moverSecurityContext, moverResources, moverAffinity, volume sources).
pub mod json {
    use prost_types::{ListValue, Struct, Value, value::Kind};
    use serde_json::{Map, Number};

    /// 2^53: up to there every integer is exact in a double.
    const EXACT_INTEGERS: f64 = 9_007_199_254_740_992.0;

    /// A JSON object as a `Struct`.
    pub fn json_to_struct(map: &Map<String, serde_json::Value>) -> Struct {
        Struct {
            fields: map.iter().map(|(k, v)| (k.clone(), to_value(v))).collect(),
        }
    }

    fn to_value(v: &serde_json::Value) -> Value {
        let kind = match v {
            serde_json::Value::Null => Kind::NullValue(0),
            serde_json::Value::Bool(b) => Kind::BoolValue(*b),
            serde_json::Value::Number(n) => Kind::NumberValue(n.as_f64().unwrap_or_default()),
            serde_json::Value::String(s) => Kind::StringValue(s.clone()),
            serde_json::Value::Array(items) => Kind::ListValue(ListValue {
                values: items.iter().map(to_value).collect(),
            }),
            serde_json::Value::Object(m) => Kind::StructValue(json_to_struct(m)),
        };
        Value { kind: Some(kind) }
    }

    /// A `Struct` as the JSON object it carries. Protobuf numbers are doubles, but Kubernetes
    /// integer fields (`runAsUser`, `weight`, `defaultMode`) only read JSON integers, so
    /// integral values come back as integers.
    pub fn struct_to_json(s: &Struct) -> serde_json::Value {
        serde_json::Value::Object(
            s.fields
                .iter()
                .map(|(k, v)| (k.clone(), from_value(v)))
                .collect(),
        )
    }

    fn from_value(v: &Value) -> serde_json::Value {
        match &v.kind {
            None | Some(Kind::NullValue(_)) => serde_json::Value::Null,
            Some(Kind::BoolValue(b)) => serde_json::Value::Bool(*b),
            Some(Kind::StringValue(s)) => serde_json::Value::String(s.clone()),
            Some(Kind::NumberValue(n)) if n.fract() == 0.0 && n.abs() <= EXACT_INTEGERS => {
                serde_json::Value::from(*n as i64)
            }
            Some(Kind::NumberValue(n)) => {
                Number::from_f64(*n).map_or(serde_json::Value::Null, serde_json::Value::Number)
            }
            Some(Kind::StructValue(s)) => struct_to_json(s),
            Some(Kind::ListValue(l)) => {
                serde_json::Value::Array(l.values.iter().map(from_value).collect())
            }
        }
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn integral_numbers_become_integers_and_the_rest_stay_doubles() {
            let json = serde_json::json!({
                "runAsUser": 1000, "neg": -3, "half": 1.5, "huge": 1e300,
                "nested": {"list": [1, "a", null, true]},
            });
            let serde_json::Value::Object(map) = &json else {
                unreachable!()
            };
            assert_eq!(struct_to_json(&json_to_struct(map)), json);
        }
    }
}
