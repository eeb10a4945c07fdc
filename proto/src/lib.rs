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
pub mod v1 {
    include!(concat!(env!("OUT_DIR"), "/snapgate.v1.rs"));

    /// The encoded `FileDescriptorSet` of `snapgate.v1`, for server reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] =
        include_bytes!(concat!(env!("OUT_DIR"), "/snapgate_descriptor.bin"));
}

pub use prost_types::{Duration, Timestamp};

/// Conversions between protobuf timestamps and chrono times, for every crate of the workspace.
pub mod time {
    use chrono::{DateTime, Utc};

    /// A chrono time as a protobuf timestamp.
    pub fn timestamp(t: DateTime<Utc>) -> prost_types::Timestamp {
        prost_types::Timestamp {
            seconds: t.timestamp(),
            nanos: i32::try_from(t.timestamp_subsec_nanos()).unwrap_or(0),
        }
    }

    /// A protobuf timestamp as a chrono time (out-of-range values clamp to the epoch).
    pub fn to_datetime(t: &prost_types::Timestamp) -> DateTime<Utc> {
        DateTime::from_timestamp(t.seconds, t.nanos.clamp(0, 999_999_999).unsigned_abs())
            .unwrap_or_default()
    }
}
