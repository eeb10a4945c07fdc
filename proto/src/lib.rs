//! The snapgate wire contract: package `snapgate.v1`.
//!
//! ```text
//!   ops (grpcurl, CLI) ──SourceService──┐
//!   applications (SDK) ─TriggerService──┤──> scheduler <──AgentService.Connect── agent (per namespace)
//! ```
//!
//! The messages are always built; the tonic clients and servers only with the `client` and
//! `server` features, so a pure crate can use the messages without pulling in tonic. The
//! processes' injectable wall clock ([`clock`]) comes with the `clock` feature (tokio's time).

#![allow(
    missing_docs,
    unreachable_pub,
    clippy::large_enum_variant,
    clippy::doc_lazy_continuation
)]

/// `snapgate.v1`: sources, runs, copy status and the agent link.
pub mod duration;

#[cfg(feature = "clock")]
pub mod clock;

pub mod v1 {
    include!(concat!(env!("OUT_DIR"), "/snapgate.v1.rs"));

    /// The encoded `FileDescriptorSet` of `snapgate.v1`, for server reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] =
        include_bytes!(concat!(env!("OUT_DIR"), "/snapgate_descriptor.bin"));
}

pub use prost_types::{Duration, Timestamp};

/// Free-form text made safe to keep and to show (kept in `snapgate-contract`, shared by
/// every crate).
pub use snapgate_contract::text;

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
