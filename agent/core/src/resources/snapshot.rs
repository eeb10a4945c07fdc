//! `snapshot.storage.k8s.io/v1` VolumeSnapshot: the CSI external-snapshotter type, which
//! k8s-openapi does not ship. Implements [`k8s_openapi::Resource`] and
//! [`k8s_openapi::Metadata`], so `kube::Api<VolumeSnapshot>` works in the agent shell.

use k8s_openapi::apimachinery::pkg::{
    api::resource::Quantity,
    apis::meta::v1::{ObjectMeta, Time},
};
use serde::{Deserialize, Serialize};

/// A VolumeSnapshot (namespaced).
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct VolumeSnapshot {
    /// Standard object metadata.
    #[serde(default)]
    pub metadata: ObjectMeta,
    /// What to snapshot, and with which class.
    #[serde(default)]
    pub spec: VolumeSnapshotSpec,
    /// Set by the snapshot controller.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<VolumeSnapshotStatus>,
}

/// `spec` of a VolumeSnapshot.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct VolumeSnapshotSpec {
    /// The PVC (or pre-provisioned content) to snapshot.
    #[serde(default)]
    pub source: VolumeSnapshotSource,
    /// The VolumeSnapshotClass; unset means the cluster default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub volume_snapshot_class_name: Option<String>,
}

/// `spec.source` of a VolumeSnapshot: exactly one of the two.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct VolumeSnapshotSource {
    /// A PVC in the snapshot's namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub persistent_volume_claim_name: Option<String>,
    /// A pre-provisioned VolumeSnapshotContent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub volume_snapshot_content_name: Option<String>,
}

/// `status` of a VolumeSnapshot.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct VolumeSnapshotStatus {
    /// The VolumeSnapshotContent this snapshot is bound to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bound_volume_snapshot_content_name: Option<String>,
    /// When the storage system cut the snapshot.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub creation_time: Option<Time>,
    /// Whether the snapshot can be restored from; unset counts as ready once bound.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ready_to_use: Option<bool>,
    /// The minimum size of a volume restored from it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restore_size: Option<Quantity>,
    /// The last error the snapshot controller met.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<VolumeSnapshotError>,
}

/// `status.error` of a VolumeSnapshot.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct VolumeSnapshotError {
    /// What went wrong.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// When.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time: Option<Time>,
}

impl k8s_openapi::Resource for VolumeSnapshot {
    const API_VERSION: &'static str = "snapshot.storage.k8s.io/v1";
    const GROUP: &'static str = "snapshot.storage.k8s.io";
    const KIND: &'static str = "VolumeSnapshot";
    const VERSION: &'static str = "v1";
    const URL_PATH_SEGMENT: &'static str = "volumesnapshots";
    type Scope = k8s_openapi::NamespaceResourceScope;
}

impl k8s_openapi::ListableResource for VolumeSnapshot {
    const LIST_KIND: &'static str = "VolumeSnapshotList";
}

impl k8s_openapi::Metadata for VolumeSnapshot {
    type Ty = ObjectMeta;

    fn metadata(&self) -> &ObjectMeta {
        &self.metadata
    }

    fn metadata_mut(&mut self) -> &mut ObjectMeta {
        &mut self.metadata
    }
}

/// Serialises with `apiVersion` and `kind`, as the API server requires on create.
impl Serialize for VolumeSnapshot {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        #[derive(Serialize)]
        #[serde(rename_all = "camelCase")]
        struct Wire<'a> {
            api_version: &'static str,
            kind: &'static str,
            metadata: &'a ObjectMeta,
            spec: &'a VolumeSnapshotSpec,
            #[serde(skip_serializing_if = "Option::is_none")]
            status: Option<&'a VolumeSnapshotStatus>,
        }
        Wire {
            api_version: <Self as k8s_openapi::Resource>::API_VERSION,
            kind: <Self as k8s_openapi::Resource>::KIND,
            metadata: &self.metadata,
            spec: &self.spec,
            status: self.status.as_ref(),
        }
        .serialize(serializer)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pretty_assertions::assert_eq;
    use serde_json::json;

    #[test]
    fn a_snapshot_round_trips_through_the_json_the_api_server_speaks() {
        let wire = json!({
            "apiVersion": "snapshot.storage.k8s.io/v1",
            "kind": "VolumeSnapshot",
            "metadata": {"name": "volsync-db-src", "namespace": "apps"},
            "spec": {
                "source": {"persistentVolumeClaimName": "data"},
                "volumeSnapshotClassName": "csi-snap",
            },
            "status": {
                "boundVolumeSnapshotContentName": "snapcontent-1",
                "readyToUse": true,
                "restoreSize": "10Gi",
                "creationTime": "2026-01-02T03:04:05Z",
            },
        });
        let snap: VolumeSnapshot = serde_json::from_value(wire.clone()).unwrap();
        assert_eq!(
            snap.spec.source.persistent_volume_claim_name.as_deref(),
            Some("data")
        );
        let status = snap.status.as_ref().unwrap();
        assert_eq!(status.ready_to_use, Some(true));
        assert_eq!(status.restore_size, Some(Quantity("10Gi".into())));
        assert_eq!(serde_json::to_value(&snap).unwrap(), wire);
    }

    #[test]
    fn a_new_snapshot_serialises_without_status() {
        let snap = VolumeSnapshot::default();
        let v = serde_json::to_value(&snap).unwrap();
        assert_eq!(v["kind"], "VolumeSnapshot");
        assert!(v.get("status").is_none());
        use k8s_openapi::Resource;
        assert_eq!(VolumeSnapshot::URL_PATH_SEGMENT, "volumesnapshots");
        assert_eq!(VolumeSnapshot::GROUP, "snapshot.storage.k8s.io");
    }
}
