//! The copy of a source PVC (VolumeSnapshot or clone PVC), the PVC restored from a snapshot,
//! and the restic cache PVC.
//!
//! Sizes, classes and access modes follow VolSync: the mover spec's value when set, otherwise
//! the source PVC's (capacity: `status.capacity.storage`, then `spec.resources.requests.storage`;
//! a restored PVC prefers the snapshot's `restoreSize`).

use std::collections::BTreeMap;

use k8s_openapi::{
    api::core::v1::{
        PersistentVolumeClaim, PersistentVolumeClaimSpec, TypedLocalObjectReference,
        VolumeResourceRequirements,
    },
    apimachinery::pkg::{api::resource::Quantity, apis::meta::v1::ObjectMeta},
};
use snapgate_contract::ACCESS_MODES;
use snapgate_proto::v1;

use super::{
    RunRef,
    snapshot::{VolumeSnapshot, VolumeSnapshotSource, VolumeSnapshotSpec},
};
use crate::{
    names,
    spec::{MoverSpec, SpecError, VolumeOptions},
};

/// The restic cache size when `cacheCapacity` is unset.
pub const DEFAULT_CACHE_CAPACITY: &str = "1Gi";

/// The VolumeSnapshot of the source PVC for one run (`volumeSnapshotClassName` from the spec).
pub fn volume_snapshot(run: &RunRef<'_>, spec: MoverSpec<'_>, source_pvc: &str) -> VolumeSnapshot {
    let o = spec.volume_options();
    VolumeSnapshot {
        metadata: temporary_meta(run, names::copy_name(run.source)),
        spec: VolumeSnapshotSpec {
            source: VolumeSnapshotSource {
                persistent_volume_claim_name: Some(source_pvc.to_owned()),
                volume_snapshot_content_name: None,
            },
            volume_snapshot_class_name: o.volume_snapshot_class_name.map(str::to_owned),
        },
        status: None,
    }
}

/// The clone PVC of the source PVC for one run (dataSource = the source PVC).
pub fn clone_pvc(
    run: &RunRef<'_>,
    spec: MoverSpec<'_>,
    source_pvc: &PersistentVolumeClaim,
) -> Result<PersistentVolumeClaim, SpecError> {
    let o = spec.volume_options();
    let capacity = match o.capacity {
        Some(c) => quantity(&format!("{}.capacity", o.prefix), c)?,
        None => source_capacity(source_pvc)?,
    };
    let data_source = TypedLocalObjectReference {
        api_group: None,
        kind: "PersistentVolumeClaim".to_owned(),
        name: source_pvc.metadata.name.clone().unwrap_or_default(),
    };
    copy_pvc(run, &o, source_pvc, capacity, data_source)
}

/// The PVC restored from this run's snapshot, which the mover reads.
pub fn pvc_from_snapshot(
    run: &RunRef<'_>,
    spec: MoverSpec<'_>,
    source_pvc: &PersistentVolumeClaim,
    snapshot: &VolumeSnapshot,
) -> Result<PersistentVolumeClaim, SpecError> {
    let o = spec.volume_options();
    let restore_size = snapshot
        .status
        .as_ref()
        .and_then(|s| s.restore_size.clone())
        .filter(|q| !is_zero(q));
    let capacity = match (o.capacity, restore_size) {
        (Some(c), _) => quantity(&format!("{}.capacity", o.prefix), c)?,
        (None, Some(q)) => q,
        (None, None) => source_capacity(source_pvc)?,
    };
    let data_source = TypedLocalObjectReference {
        api_group: Some("snapshot.storage.k8s.io".to_owned()),
        kind: "VolumeSnapshot".to_owned(),
        name: snapshot.metadata.name.clone().unwrap_or_default(),
    };
    copy_pvc(run, &o, source_pvc, capacity, data_source)
}

fn copy_pvc(
    run: &RunRef<'_>,
    o: &VolumeOptions<'_>,
    source_pvc: &PersistentVolumeClaim,
    capacity: Quantity,
    data_source: TypedLocalObjectReference,
) -> Result<PersistentVolumeClaim, SpecError> {
    let source_spec = source_pvc.spec.as_ref();
    let access_modes = if o.access_modes.is_empty() {
        source_spec.and_then(|s| s.access_modes.clone())
    } else {
        Some(access_modes(
            &format!("{}.accessModes", o.prefix),
            o.access_modes,
        )?)
    };
    let storage_class_name = match o.storage_class_name {
        Some(c) => Some(c.to_owned()),
        None => source_spec.and_then(|s| s.storage_class_name.clone()),
    };
    let volume_mode = Some(
        source_spec
            .and_then(|s| s.volume_mode.clone())
            .unwrap_or_else(|| "Filesystem".to_owned()),
    );
    Ok(PersistentVolumeClaim {
        metadata: temporary_meta(run, names::copy_name(run.source)),
        spec: Some(PersistentVolumeClaimSpec {
            access_modes,
            data_source: Some(data_source),
            resources: Some(storage_request(capacity)),
            storage_class_name,
            volume_mode,
            ..Default::default()
        }),
        status: None,
    })
}

/// The restic cache PVC of a source (`volsync-src-<source>-cache`), which persists across runs.
///
/// Capacity `cacheCapacity` (default 1Gi); class `cacheStorageClassName`, else the spec's
/// `storageClassName`, else the cluster default; access modes `cacheAccessModes`, else the
/// spec's `accessModes`, else those of the data PVC the mover reads.
pub fn restic_cache_pvc(
    namespace: &str,
    source: &str,
    restic: &v1::ReplicationSourceResticSpec,
    data_pvc: &PersistentVolumeClaim,
) -> Result<PersistentVolumeClaim, SpecError> {
    let capacity = quantity(
        "restic.cacheCapacity",
        restic
            .cache_capacity
            .as_deref()
            .unwrap_or(DEFAULT_CACHE_CAPACITY),
    )?;
    let access_modes = if !restic.cache_access_modes.is_empty() {
        Some(access_modes(
            "restic.cacheAccessModes",
            &restic.cache_access_modes,
        )?)
    } else if !restic.access_modes.is_empty() {
        Some(access_modes("restic.accessModes", &restic.access_modes)?)
    } else {
        data_pvc.spec.as_ref().and_then(|s| s.access_modes.clone())
    };
    let storage_class_name = restic
        .cache_storage_class_name
        .clone()
        .or_else(|| restic.storage_class_name.clone());
    Ok(PersistentVolumeClaim {
        metadata: ObjectMeta {
            name: Some(names::cache_name(source)),
            namespace: Some(namespace.to_owned()),
            labels: Some(names::source_labels(source)),
            ..Default::default()
        },
        spec: Some(PersistentVolumeClaimSpec {
            access_modes,
            resources: Some(storage_request(capacity)),
            storage_class_name,
            volume_mode: Some("Filesystem".to_owned()),
            ..Default::default()
        }),
        status: None,
    })
}

pub(super) fn temporary_meta(run: &RunRef<'_>, name: String) -> ObjectMeta {
    ObjectMeta {
        name: Some(name),
        namespace: Some(run.namespace.to_owned()),
        labels: Some(names::temporary_labels(run.source, run.run_id)),
        ..Default::default()
    }
}

fn storage_request(capacity: Quantity) -> VolumeResourceRequirements {
    VolumeResourceRequirements {
        requests: Some(BTreeMap::from([("storage".to_owned(), capacity)])),
        ..Default::default()
    }
}

/// The capacity of the source PVC: what was provisioned, else what was requested.
fn source_capacity(pvc: &PersistentVolumeClaim) -> Result<Quantity, SpecError> {
    pvc.status
        .as_ref()
        .and_then(|s| s.capacity.as_ref())
        .and_then(|c| c.get("storage"))
        .or_else(|| {
            pvc.spec
                .as_ref()
                .and_then(|s| s.resources.as_ref())
                .and_then(|r| r.requests.as_ref())
                .and_then(|r| r.get("storage"))
        })
        .cloned()
        .ok_or_else(|| {
            SpecError::invalid(
                "sourcePVC",
                "the PVC has neither status.capacity.storage nor a storage request; set capacity",
            )
        })
}

fn quantity(field: &str, v: &str) -> Result<Quantity, SpecError> {
    let v = v.trim();
    let ok = !v.is_empty()
        && v.starts_with(|c: char| c.is_ascii_digit() || c == '.' || c == '+')
        && v.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '+' | '-'));
    if ok {
        Ok(Quantity(v.to_owned()))
    } else {
        Err(SpecError::invalid(
            field,
            format!("{v:?} is not a quantity such as 10Gi"),
        ))
    }
}

fn is_zero(q: &Quantity) -> bool {
    q.0.trim_start_matches(['0', '.'])
        .chars()
        .next()
        .is_none_or(|c| !c.is_ascii_digit())
}

pub(super) fn access_modes(field: &str, modes: &[String]) -> Result<Vec<String>, SpecError> {
    for m in modes {
        if !ACCESS_MODES.contains(&m.as_str()) {
            return Err(SpecError::invalid(
                field,
                format!(
                    "unknown access mode {m:?}: must be one of {}",
                    ACCESS_MODES.join(", ")
                ),
            ));
        }
    }
    Ok(modes.to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources::snapshot::VolumeSnapshotStatus;
    use k8s_openapi::api::core::v1::PersistentVolumeClaimStatus;
    use pretty_assertions::assert_eq;

    const RUN: RunRef<'static> = RunRef {
        namespace: "apps",
        source: "db",
        run_id: "run-7",
    };

    fn source_pvc(status_capacity: Option<&str>, request: Option<&str>) -> PersistentVolumeClaim {
        PersistentVolumeClaim {
            metadata: ObjectMeta {
                name: Some("data".into()),
                namespace: Some("apps".into()),
                ..Default::default()
            },
            spec: Some(PersistentVolumeClaimSpec {
                access_modes: Some(vec!["ReadWriteOnce".into()]),
                storage_class_name: Some("fast".into()),
                volume_mode: Some("Block".into()),
                resources: request.map(|r| storage_request(Quantity(r.into()))),
                ..Default::default()
            }),
            status: Some(PersistentVolumeClaimStatus {
                capacity: status_capacity
                    .map(|c| BTreeMap::from([("storage".to_owned(), Quantity(c.into()))])),
                ..Default::default()
            }),
        }
    }

    fn restic(f: impl FnOnce(&mut v1::ReplicationSourceResticSpec)) -> v1::SourceSpec {
        let mut r = v1::ReplicationSourceResticSpec {
            copy_method: v1::CopyMethod::Snapshot as i32,
            repository: "repo".into(),
            ..Default::default()
        };
        f(&mut r);
        v1::SourceSpec {
            restic: Some(r),
            ..Default::default()
        }
    }

    fn request(pvc: &PersistentVolumeClaim) -> String {
        pvc.spec
            .as_ref()
            .unwrap()
            .resources
            .as_ref()
            .unwrap()
            .requests
            .as_ref()
            .unwrap()["storage"]
            .0
            .clone()
    }

    #[test]
    fn the_snapshot_names_the_source_pvc_and_the_spec_snapshot_class() {
        let spec = restic(|r| r.volume_snapshot_class_name = Some("csi-snap".into()));
        let snap = volume_snapshot(&RUN, MoverSpec::of(&spec).unwrap(), "data");
        assert_eq!(snap.metadata.name.as_deref(), Some("volsync-db-src"));
        assert_eq!(snap.metadata.namespace.as_deref(), Some("apps"));
        assert_eq!(
            snap.metadata.labels,
            Some(names::temporary_labels("db", "run-7"))
        );
        assert_eq!(
            snap.spec,
            VolumeSnapshotSpec {
                source: VolumeSnapshotSource {
                    persistent_volume_claim_name: Some("data".into()),
                    volume_snapshot_content_name: None,
                },
                volume_snapshot_class_name: Some("csi-snap".into()),
            }
        );
        let spec = restic(|_| {});
        let snap = volume_snapshot(&RUN, MoverSpec::of(&spec).unwrap(), "data");
        assert_eq!(
            snap.spec.volume_snapshot_class_name, None,
            "cluster default"
        );
    }

    #[test]
    fn a_clone_copies_class_modes_and_capacity_from_the_source_unless_the_spec_says() {
        let src = source_pvc(Some("11Gi"), Some("10Gi"));
        let spec = restic(|_| {});
        let clone = clone_pvc(&RUN, MoverSpec::of(&spec).unwrap(), &src).unwrap();
        assert_eq!(clone.metadata.name.as_deref(), Some("volsync-db-src"));
        let s = clone.spec.as_ref().unwrap();
        assert_eq!(request(&clone), "11Gi", "provisioned capacity first");
        assert_eq!(s.storage_class_name.as_deref(), Some("fast"));
        assert_eq!(s.access_modes, Some(vec!["ReadWriteOnce".to_owned()]));
        assert_eq!(s.volume_mode.as_deref(), Some("Block"));
        assert_eq!(
            s.data_source,
            Some(TypedLocalObjectReference {
                api_group: None,
                kind: "PersistentVolumeClaim".into(),
                name: "data".into(),
            })
        );

        let clone = clone_pvc(
            &RUN,
            MoverSpec::of(&spec).unwrap(),
            &source_pvc(None, Some("10Gi")),
        )
        .unwrap();
        assert_eq!(request(&clone), "10Gi", "then the request");

        let spec = restic(|r| {
            r.capacity = Some("20Gi".into());
            r.storage_class_name = Some("slow".into());
            r.access_modes = vec!["ReadOnlyMany".into()];
        });
        let clone = clone_pvc(&RUN, MoverSpec::of(&spec).unwrap(), &src).unwrap();
        let s = clone.spec.as_ref().unwrap();
        assert_eq!(request(&clone), "20Gi");
        assert_eq!(s.storage_class_name.as_deref(), Some("slow"));
        assert_eq!(s.access_modes, Some(vec!["ReadOnlyMany".to_owned()]));
    }

    #[test]
    fn bad_capacity_access_modes_or_a_sizeless_source_are_refused_naming_the_field() {
        let src = source_pvc(Some("1Gi"), None);
        let cases = [
            (
                restic(|r| r.capacity = Some("lots".into())),
                "restic.capacity is invalid",
            ),
            (
                restic(|r| r.access_modes = vec!["ReadWriteSometimes".into()]),
                "restic.accessModes is invalid",
            ),
        ];
        for (spec, want) in cases {
            let err = clone_pvc(&RUN, MoverSpec::of(&spec).unwrap(), &src).unwrap_err();
            assert!(err.to_string().starts_with(want), "{err}");
        }
        let spec = restic(|_| {});
        let err =
            clone_pvc(&RUN, MoverSpec::of(&spec).unwrap(), &source_pvc(None, None)).unwrap_err();
        assert!(err.to_string().starts_with("sourcePVC is invalid"), "{err}");
    }

    #[test]
    fn a_pvc_from_snapshot_prefers_the_spec_then_restore_size_then_the_source() {
        let src = source_pvc(Some("11Gi"), Some("10Gi"));
        let mut snap = VolumeSnapshot {
            metadata: ObjectMeta {
                name: Some("volsync-db-src".into()),
                ..Default::default()
            },
            ..Default::default()
        };
        let spec = restic(|_| {});
        let m = MoverSpec::of(&spec).unwrap();
        assert_eq!(
            request(&pvc_from_snapshot(&RUN, m, &src, &snap).unwrap()),
            "11Gi"
        );
        snap.status = Some(VolumeSnapshotStatus {
            restore_size: Some(Quantity("0".into())),
            ..Default::default()
        });
        assert_eq!(
            request(&pvc_from_snapshot(&RUN, m, &src, &snap).unwrap()),
            "11Gi",
            "a zero restoreSize is ignored"
        );
        snap.status = Some(VolumeSnapshotStatus {
            restore_size: Some(Quantity("12Gi".into())),
            ..Default::default()
        });
        let pvc = pvc_from_snapshot(&RUN, m, &src, &snap).unwrap();
        assert_eq!(request(&pvc), "12Gi");
        assert_eq!(
            pvc.spec.as_ref().unwrap().data_source,
            Some(TypedLocalObjectReference {
                api_group: Some("snapshot.storage.k8s.io".into()),
                kind: "VolumeSnapshot".into(),
                name: "volsync-db-src".into(),
            })
        );
        assert_eq!(
            pvc.metadata.labels,
            Some(names::temporary_labels("db", "run-7"))
        );
        let spec = restic(|r| r.capacity = Some("30Gi".into()));
        let m = MoverSpec::of(&spec).unwrap();
        assert_eq!(
            request(&pvc_from_snapshot(&RUN, m, &src, &snap).unwrap()),
            "30Gi"
        );
    }

    #[test]
    fn the_restic_cache_defaults_to_1gi_and_inherits_modes_in_volsync_order() {
        let data = source_pvc(Some("10Gi"), None);
        let spec = restic(|_| {});
        let r = spec.restic.as_ref().unwrap();
        let cache = restic_cache_pvc("apps", "db", r, &data).unwrap();
        assert_eq!(cache.metadata.name.as_deref(), Some("volsync-src-db-cache"));
        assert_eq!(cache.metadata.labels, Some(names::source_labels("db")));
        let s = cache.spec.as_ref().unwrap();
        assert_eq!(request(&cache), "1Gi");
        assert_eq!(s.access_modes, Some(vec!["ReadWriteOnce".to_owned()]));
        assert_eq!(s.storage_class_name, None);
        assert_eq!(s.volume_mode.as_deref(), Some("Filesystem"));
        assert_eq!(s.data_source, None);

        let spec = restic(|r| {
            r.access_modes = vec!["ReadWriteMany".into()];
            r.storage_class_name = Some("fast".into());
        });
        let cache = restic_cache_pvc("apps", "db", spec.restic.as_ref().unwrap(), &data).unwrap();
        let s = cache.spec.as_ref().unwrap();
        assert_eq!(s.access_modes, Some(vec!["ReadWriteMany".to_owned()]));
        assert_eq!(s.storage_class_name.as_deref(), Some("fast"));

        let spec = restic(|r| {
            r.access_modes = vec!["ReadWriteMany".into()];
            r.storage_class_name = Some("fast".into());
            r.cache_access_modes = vec!["ReadWriteOncePod".into()];
            r.cache_storage_class_name = Some("cache".into());
            r.cache_capacity = Some("5Gi".into());
        });
        let cache = restic_cache_pvc("apps", "db", spec.restic.as_ref().unwrap(), &data).unwrap();
        let s = cache.spec.as_ref().unwrap();
        assert_eq!(request(&cache), "5Gi");
        assert_eq!(s.access_modes, Some(vec!["ReadWriteOncePod".to_owned()]));
        assert_eq!(s.storage_class_name.as_deref(), Some("cache"));

        let spec = restic(|r| r.cache_capacity = Some("".into()));
        let err = restic_cache_pvc("apps", "db", spec.restic.as_ref().unwrap(), &data).unwrap_err();
        assert!(
            err.to_string()
                .starts_with("restic.cacheCapacity is invalid")
        );
    }
}
