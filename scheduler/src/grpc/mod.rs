//! The gRPC edge: validate and convert, ask the driver, convert back.

mod agents;
mod sources;
mod triggers;

pub use agents::Agents;
pub use sources::Sources;
pub use triggers::Triggers;

use snapgate_scheduler_core::{SourceKey, validate};
use tonic::Status;

use crate::status::invalid;

/// A source key from request fields, checked as Kubernetes names.
fn source_key(namespace: &str, name: &str) -> Result<SourceKey, Status> {
    validate::dns_label("namespace", namespace).map_err(|e| invalid(&e.field, &e.rule))?;
    validate::dns_subdomain("name", name).map_err(|e| invalid(&e.field, &e.rule))?;
    Ok(SourceKey::new(namespace, name))
}

/// A count from a request: 0 means the default; above the maximum is refused.
fn bounded(field: &str, v: u32, default: u32, max: u32) -> Result<usize, Status> {
    match v {
        0 => Ok(default as usize),
        v if v <= max => Ok(v as usize),
        _ => Err(invalid(field, &format!("at most {max}"))),
    }
}
