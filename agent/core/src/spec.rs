//! The source spec as the agent reads it: which mover, which copy method, the shared volume
//! options, and the conversion of `google.protobuf.Struct` fields into Kubernetes types.
//!
//! Everything here refuses bad input with a [`SpecError`] naming the field (in the
//! protobuf JSON spelling a user wrote, e.g. `restic.moverSecurityContext`).

use std::collections::HashMap;

use serde::de::DeserializeOwned;
use snapgate_proto::v1;

/// Bad source-spec input, naming the field it came from.
#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    /// The source names no mover (`restic`, `rclone`, `rsync`, `rsyncTLS`).
    #[error("the source names no mover: set one of restic, rclone, rsync, rsyncTLS")]
    NoMover,
    /// The source names more than one mover.
    #[error("the source names more than one mover: {0}")]
    SeveralMovers(String),
    /// A required field is empty or absent.
    #[error("{field} is required")]
    Missing {
        /// The field, e.g. `restic.repository`.
        field: String,
    },
    /// A field has a value the agent cannot use.
    #[error("{field} is invalid: {reason}")]
    Invalid {
        /// The field, e.g. `restic.copyMethod`.
        field: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A `google.protobuf.Struct` field is not the Kubernetes object it must be.
    #[error("{field} is not a valid {kind}: {source}")]
    Struct {
        /// The field, e.g. `rclone.moverAffinity`.
        field: String,
        /// The Kubernetes type expected, e.g. `Affinity`.
        kind: &'static str,
        /// Why deserialisation failed.
        #[source]
        source: serde_json::Error,
    },
}

impl SpecError {
    pub(crate) fn missing(field: impl Into<String>) -> Self {
        Self::Missing {
            field: field.into(),
        }
    }

    pub(crate) fn invalid(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Self::Invalid {
            field: field.into(),
            reason: reason.into(),
        }
    }
}

/// The four movers snapgate runs for a source.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Mover {
    /// Restic backup to a repository.
    Restic,
    /// Rclone copy to an rclone remote.
    Rclone,
    /// Rsync over ssh to a VolSync ReplicationDestination.
    Rsync,
    /// Rsync over stunnel (TLS-PSK) to a VolSync ReplicationDestination.
    RsyncTls,
}

impl Mover {
    /// The mover's name as VolSync spells it in specs (and in the JSON of a source).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Restic => "restic",
            Self::Rclone => "rclone",
            Self::Rsync => "rsync",
            Self::RsyncTls => "rsyncTLS",
        }
    }

    /// The container name in the mover Job (VolSync's).
    pub fn container_name(self) -> &'static str {
        match self {
            Self::Restic => "restic",
            Self::Rclone => "rclone",
            Self::Rsync => "rsync",
            Self::RsyncTls => "rsync-tls",
        }
    }
}

/// How the point-in-time copy is made, once `None` is folded into `Direct`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CopyMethod {
    /// The mover reads the source PVC itself.
    Direct,
    /// A clone PVC whose dataSource is the source PVC.
    Clone,
    /// A VolumeSnapshot, then a PVC restored from it.
    Snapshot,
}

/// The mover section of a source spec: exactly one of the four.
#[derive(Clone, Copy, Debug)]
pub enum MoverSpec<'a> {
    /// `restic`.
    Restic(&'a v1::ReplicationSourceResticSpec),
    /// `rclone`.
    Rclone(&'a v1::ReplicationSourceRcloneSpec),
    /// `rsync`.
    Rsync(&'a v1::ReplicationSourceRsyncSpec),
    /// `rsyncTLS`.
    RsyncTls(&'a v1::ReplicationSourceRsyncTlsSpec),
}

/// The volume and mover-pod options every mover spec repeats (VolSync's
/// `ReplicationSourceVolumeOptions` and `MoverConfig`), borrowed from one of them.
#[derive(Clone, Copy, Debug)]
pub struct VolumeOptions<'a> {
    /// The JSON prefix of the mover section, e.g. `restic`, for error messages.
    pub prefix: &'static str,
    /// `copyMethod`, raw.
    pub copy_method: i32,
    /// `capacity`.
    pub capacity: Option<&'a str>,
    /// `storageClassName`.
    pub storage_class_name: Option<&'a str>,
    /// `accessModes`.
    pub access_modes: &'a [String],
    /// `volumeSnapshotClassName`.
    pub volume_snapshot_class_name: Option<&'a str>,
    /// `moverSecurityContext`.
    pub mover_security_context: Option<&'a prost_types::Struct>,
    /// `moverServiceAccount`.
    pub mover_service_account: Option<&'a str>,
    /// `moverResources`.
    pub mover_resources: Option<&'a prost_types::Struct>,
    /// `moverAffinity`.
    pub mover_affinity: Option<&'a prost_types::Struct>,
    /// `moverPodLabels`.
    pub mover_pod_labels: &'a HashMap<String, String>,
    /// `moverVolumes`.
    pub mover_volumes: &'a [v1::MoverVolume],
}

macro_rules! volume_options {
    ($prefix:expr, $s:expr) => {
        VolumeOptions {
            prefix: $prefix,
            copy_method: $s.copy_method,
            capacity: $s.capacity.as_deref(),
            storage_class_name: $s.storage_class_name.as_deref(),
            access_modes: &$s.access_modes,
            volume_snapshot_class_name: $s.volume_snapshot_class_name.as_deref(),
            mover_security_context: $s.mover_security_context.as_ref(),
            mover_service_account: $s.mover_service_account.as_deref(),
            mover_resources: $s.mover_resources.as_ref(),
            mover_affinity: $s.mover_affinity.as_ref(),
            mover_pod_labels: &$s.mover_pod_labels,
            mover_volumes: &$s.mover_volumes,
        }
    };
}

impl<'a> MoverSpec<'a> {
    /// The one mover section of `spec`, refusing none or several.
    pub fn of(spec: &'a v1::SourceSpec) -> Result<Self, SpecError> {
        let mut found = Vec::new();
        if let Some(r) = &spec.restic {
            found.push(Self::Restic(r));
        }
        if let Some(r) = &spec.rclone {
            found.push(Self::Rclone(r));
        }
        if let Some(r) = &spec.rsync {
            found.push(Self::Rsync(r));
        }
        if let Some(r) = &spec.rsync_tls {
            found.push(Self::RsyncTls(r));
        }
        match found.as_slice() {
            [] => Err(SpecError::NoMover),
            [one] => Ok(*one),
            _ => Err(SpecError::SeveralMovers(
                found
                    .iter()
                    .map(|m| m.mover().as_str())
                    .collect::<Vec<_>>()
                    .join(", "),
            )),
        }
    }

    /// Which mover this is.
    pub fn mover(&self) -> Mover {
        match self {
            Self::Restic(_) => Mover::Restic,
            Self::Rclone(_) => Mover::Rclone,
            Self::Rsync(_) => Mover::Rsync,
            Self::RsyncTls(_) => Mover::RsyncTls,
        }
    }

    /// The shared volume options of the mover section.
    pub fn volume_options(&self) -> VolumeOptions<'a> {
        match *self {
            Self::Restic(s) => volume_options!("restic", s),
            Self::Rclone(s) => volume_options!("rclone", s),
            Self::Rsync(s) => volume_options!("rsync", s),
            Self::RsyncTls(s) => volume_options!("rsyncTLS", s),
        }
    }

    /// The copy method, with VolSync's `None` read as `Direct`; unset is refused.
    pub fn copy_method(&self) -> Result<CopyMethod, SpecError> {
        let o = self.volume_options();
        let field = || format!("{}.copyMethod", o.prefix);
        match v1::CopyMethod::try_from(o.copy_method) {
            Ok(v1::CopyMethod::Direct | v1::CopyMethod::None) => Ok(CopyMethod::Direct),
            Ok(v1::CopyMethod::Clone) => Ok(CopyMethod::Clone),
            Ok(v1::CopyMethod::Snapshot) => Ok(CopyMethod::Snapshot),
            Ok(v1::CopyMethod::Unspecified) => Err(SpecError::missing(field())),
            Err(_) => Err(SpecError::invalid(
                field(),
                format!(
                    "unknown value {}: must be Direct, None, Clone or Snapshot",
                    o.copy_method
                ),
            )),
        }
    }
}

pub use snapgate_proto::json::struct_to_json;

/// Converts an optional `Struct` field into the Kubernetes type `T`, naming the field (and
/// the expected `kind`) when the object does not fit.
pub fn from_struct<T: DeserializeOwned>(
    field: &str,
    kind: &'static str,
    s: Option<&prost_types::Struct>,
) -> Result<Option<T>, SpecError> {
    s.map(|s| {
        serde_json::from_value(struct_to_json(s)).map_err(|source| SpecError::Struct {
            field: field.to_owned(),
            kind,
            source,
        })
    })
    .transpose()
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{Affinity, PodSecurityContext};
    use pretty_assertions::assert_eq;
    use prost_types::Struct;

    pub(crate) fn to_struct(json: serde_json::Value) -> Struct {
        match json {
            serde_json::Value::Object(o) => snapgate_proto::json::json_to_struct(&o),
            other => panic!("not an object: {other}"),
        }
    }

    #[test]
    fn a_struct_with_integral_doubles_becomes_a_typed_pod_security_context() {
        let s = to_struct(serde_json::json!({
            "runAsUser": 1000, "runAsGroup": 2000, "fsGroup": 3000, "runAsNonRoot": true,
            "seccompProfile": {"type": "RuntimeDefault"},
        }));
        let psc: PodSecurityContext = from_struct("restic.moverSecurityContext", "x", Some(&s))
            .unwrap()
            .unwrap();
        assert_eq!(psc.run_as_user, Some(1000));
        assert_eq!(psc.fs_group, Some(3000));
        assert_eq!(psc.run_as_non_root, Some(true));
        assert_eq!(psc.seccomp_profile.unwrap().type_, "RuntimeDefault");
    }

    #[test]
    fn a_struct_of_the_wrong_shape_is_refused_naming_its_field() {
        let s = to_struct(serde_json::json!({"nodeAffinity": "everywhere"}));
        let err =
            from_struct::<Affinity>("rclone.moverAffinity", "Affinity", Some(&s)).unwrap_err();
        assert!(
            matches!(err, SpecError::Struct { ref field, .. } if field == "rclone.moverAffinity")
        );
        assert!(
            err.to_string()
                .starts_with("rclone.moverAffinity is not a valid Affinity")
        );
    }

    #[test]
    fn an_absent_struct_is_none() {
        assert!(
            from_struct::<Affinity>("restic.moverAffinity", "Affinity", None)
                .unwrap()
                .is_none()
        );
    }

    #[test]
    fn a_source_names_exactly_one_mover_and_a_copy_method() {
        let none = v1::SourceSpec::default();
        assert!(matches!(MoverSpec::of(&none), Err(SpecError::NoMover)));

        let two = v1::SourceSpec {
            restic: Some(Default::default()),
            rclone: Some(Default::default()),
            ..Default::default()
        };
        let err = MoverSpec::of(&two).unwrap_err();
        assert_eq!(
            err.to_string(),
            "the source names more than one mover: restic, rclone"
        );

        let cases = [
            (v1::CopyMethod::Direct as i32, Ok(CopyMethod::Direct)),
            (v1::CopyMethod::None as i32, Ok(CopyMethod::Direct)),
            (v1::CopyMethod::Clone as i32, Ok(CopyMethod::Clone)),
            (v1::CopyMethod::Snapshot as i32, Ok(CopyMethod::Snapshot)),
            (0, Err("rsyncTLS.copyMethod is required".to_owned())),
            (
                42,
                Err("rsyncTLS.copyMethod is invalid: unknown value 42: must be Direct, None, Clone or Snapshot".to_owned()),
            ),
        ];
        for (raw, want) in cases {
            let spec = v1::SourceSpec {
                rsync_tls: Some(v1::ReplicationSourceRsyncTlsSpec {
                    copy_method: raw,
                    ..Default::default()
                }),
                ..Default::default()
            };
            let m = MoverSpec::of(&spec).unwrap();
            assert_eq!(m.mover(), Mover::RsyncTls);
            assert_eq!(
                m.copy_method().map_err(|e| e.to_string()),
                want,
                "raw {raw}"
            );
        }
    }
}
