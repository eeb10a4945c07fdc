//! What snapgate's crates must agree on, with Kubernetes, with VolSync and with each other,
//! written once: the scheduler admits what the agent later writes, and both speak VolSync's
//! copy-trigger annotations to the same PVCs.
//!
//! - Kubernetes names: [`is_dns_label`] (63 characters) and [`is_dns_subdomain`] (253), as
//!   apimachinery's `IsDNS1123Label` and `IsDNS1123Subdomain` define them, with
//!   [`check_dns_label`] and [`check_dns_subdomain`] saying why a name fails
//!   ([`NameError`]), and [`is_label_value`].
//! - [`ACCESS_MODES`]: the access modes a PVC may ask for.
//! - VolSync's copy-trigger annotations ([`USE_COPY_TRIGGER`], [`COPY_TRIGGER`],
//!   [`LATEST_COPY_STATUS`], [`LATEST_COPY_TRIGGER`], [`LATEST_COPY_TRIGGER_WAITING_SINCE`]),
//!   the values of the status ([`CopyStatus`]), and the text of a timed-out wait
//!   ([`TIMEOUT_TEXT`], [`timeout_message`]).
//!
//! - [`text`]: free-form text from the wire, the store or the cluster made safe to keep and
//!   to show (cut on character boundaries, invisible characters found, values quoted).
//!
//! Pure: the standard library only; no IO, no clock.

mod names;
pub mod text;
mod volsync;

pub use names::{
    DNS_LABEL_MAX_LEN, DNS_SUBDOMAIN_MAX_LEN, LABEL_VALUE_MAX_LEN, NameError, check_dns_label,
    check_dns_subdomain, is_dns_label, is_dns_subdomain, is_label_value,
};
pub use volsync::{
    COPY_TRIGGER, CopyStatus, LATEST_COPY_STATUS, LATEST_COPY_TRIGGER,
    LATEST_COPY_TRIGGER_WAITING_SINCE, PRIVILEGED_MOVERS, TIMEOUT_TEXT, USE_COPY_TRIGGER,
    timeout_message,
};

/// The access modes a PersistentVolumeClaim may ask for (`spec.accessModes`), in the order
/// Kubernetes documents them.
pub const ACCESS_MODES: [&str; 4] = [
    "ReadWriteOnce",
    "ReadOnlyMany",
    "ReadWriteMany",
    "ReadWriteOncePod",
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_access_modes_are_kubernetes_four_spelled_as_the_api_server_spells_them() {
        assert_eq!(
            ACCESS_MODES,
            [
                "ReadWriteOnce",
                "ReadOnlyMany",
                "ReadWriteMany",
                "ReadWriteOncePod"
            ]
        );
    }
}
