//! Builders of the Kubernetes objects the agent creates, as k8s-openapi values: the copy
//! (VolumeSnapshot or clone PVC), the PVC restored from a snapshot, the restic cache, and the
//! mover Jobs. Pure: every input is an argument; bad spec input is a
//! [`SpecError`](crate::spec::SpecError) naming the
//! field.

mod account;
mod job;
mod snapshot;
mod volume;

pub use account::{MoverAccount, mover_account};
pub use job::{
    BLOCK_DEVICE, CACHE_MOUNT, CUSTOM_CA_MOUNT, DATA_MOUNT, DEFAULT_FORGET_OPTIONS,
    DEFAULT_MOVER_IMAGE, DEFAULT_RSYNC_PORT, DEFAULT_RSYNC_TLS_PORT, KEYS_MOUNT, MoverImages,
    MoverJobInput, PROXY_VARIABLES, RCLONE_CONFIG_MOUNT, RESTIC_OPTIONAL_KEYS, ResticActions,
    forget_options, mover_job,
};
pub use snapshot::{
    VolumeSnapshot, VolumeSnapshotError, VolumeSnapshotSource, VolumeSnapshotSpec,
    VolumeSnapshotStatus,
};
pub use volume::{
    DEFAULT_CACHE_CAPACITY, clone_pvc, pvc_from_snapshot, restic_cache_pvc, volume_snapshot,
};

/// The run an object is made for: its namespace, source and run id (the source of identity
/// labels, since a source cannot own Kubernetes objects).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RunRef<'a> {
    /// The namespace of the source, its PVC and everything made for it.
    pub namespace: &'a str,
    /// The source's name.
    pub source: &'a str,
    /// The run id, e.g. `run-7`.
    pub run_id: &'a str,
}
