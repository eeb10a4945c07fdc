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
