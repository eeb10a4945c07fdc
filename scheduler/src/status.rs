//! Every error the scheduler answers with, mapped to a gRPC status in one place.

use snapgate_proto::text::truncate;
use snapgate_scheduler_core::CoreError;
use tonic::{Code, Status};

use crate::driver::DriverError;

impl From<DriverError> for Status {
    fn from(e: DriverError) -> Self {
        match e {
            DriverError::Core(core) => core_status(core),
            DriverError::Store(store) => Status::unavailable(format!(
                "the scheduler could not persist the change, nothing was applied; retry: {store}"
            )),
            DriverError::Stopped => Status::unavailable("the scheduler is shutting down"),
            DriverError::Exhausted(why) => Status::resource_exhausted(why),
            DriverError::NotLeader(leader) => crate::replica::not_leader(leader.as_deref()),
        }
    }
}

fn core_status(e: CoreError) -> Status {
    let code = match &e {
        CoreError::Invalid(_) => Code::InvalidArgument,
        CoreError::NotFound(_) => Code::NotFound,
        CoreError::AlreadyExists { .. } => Code::AlreadyExists,
        CoreError::VersionConflict { .. } => Code::Aborted,
        CoreError::FailedPrecondition(_) => Code::FailedPrecondition,
        CoreError::PermissionDenied(_) => Code::PermissionDenied,
    };
    Status::new(code, truncate(&e.to_string(), MAX_STATUS_BYTES))
}

/// The longest status message: errors quote at most a prefix of a value, and this bounds the
/// rest, so an answer never exceeds a client's metadata limit.
const MAX_STATUS_BYTES: usize = 2048;

/// A request field that breaks a rule, before it reaches the core.
pub(crate) fn invalid(field: &str, rule: &str) -> Status {
    Status::invalid_argument(truncate(&format!("{field}: {rule}"), MAX_STATUS_BYTES))
}
