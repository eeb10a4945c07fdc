//! The wire edge: conversions between the protobuf messages of `snapgate.v1` and the core's
//! domain types (`snapgate_scheduler_core::model`).
//!
//! ```text
//!   request ──spec_input / copy_target / report──► domain input ──admission, core──► domain
//!   domain ──source_to_wire / run_to_wire / directive_to_wire / copy_status_to_wire──► message
//!   store record ──stored_source / stored_run (structural decode)──► domain
//! ```
//!
//! Two directions, two contracts:
//!
//! - **Requests** (wire to domain input) carry what the caller sent, unchecked: admission and
//!   the core apply the rules and name the broken one. The only refusal here is about the
//!   encoding itself: a free-form object nested deeper than [`common::MAX_JSON_DEPTH`], or
//!   holding a number JSON cannot carry (NaN, infinity).
//! - **Stored records** (wire to domain, `stored_*`) are decoded structurally: whatever the
//!   domain types make impossible (no mover, an unknown enum number, a duration beyond chrono's
//!   range) is an error naming the field; the free-form rules of admission are not applied, so
//!   a rule tightened later never makes a stored record unreadable.
//!
//! Domain to wire is total and lossless for everything the domain holds (but for what the wire
//! itself cannot carry: a leap second, a time after year 9999, a JSON integer beyond ±2^53).
//! Wire to domain loses only what the domain cannot say: an invalid timestamp in an optional
//! field becomes unset, an empty `trigger` and an unset one are both continuous, an unset
//! status is an empty one, and a `google.protobuf.Value` with no kind is `null`.
//!
//! One module per gRPC service, and [`common`] for what they share (times, durations,
//! `google.protobuf.Struct`, authors and the spec).

pub mod agents;
pub mod common;
pub mod sources;
pub mod triggers;

#[cfg(test)]
pub(crate) mod testing;
