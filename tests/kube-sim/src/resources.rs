//! The table of resources the simulated API server knows about.
//!
//! Objects are stored generically as JSON; this table is the only place that
//! knows a resource's group, version, plural, kind, scope and subresources.

/// Description of one served resource type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResourceDef {
    /// API group (`""` for the core group).
    pub group: &'static str,
    /// API version inside the group.
    pub version: &'static str,
    /// Lower-case plural used in URLs.
    pub plural: &'static str,
    /// Lower-case singular name.
    pub singular: &'static str,
    /// Object kind.
    pub kind: &'static str,
    /// Whether objects live in a namespace.
    pub namespaced: bool,
    /// Whether the resource has a `status` subresource (main-resource writes ignore `.status`).
    pub status_subresource: bool,
    /// Extra subresources other than `status` (`log` for pods, `token` for serviceaccounts).
    pub extra_subresources: &'static [&'static str],
    /// kubectl short names.
    pub short_names: &'static [&'static str],
    /// A create-only review (`LocalSubjectAccessReview`): answered, never stored.
    pub review: bool,
    /// Whether objects carry `metadata.generation` (Jobs, pods, custom resources; not
    /// PVCs, Secrets, Namespaces and most other core kinds).
    pub generation: bool,
    /// A custom resource (the VolumeSnapshot CRDs): list items keep `apiVersion` and `kind`,
    /// a list says `continue: ""`, and nothing is pruned or defaulted.
    pub crd: bool,
    /// The field selectors it supports besides `metadata.name` and `metadata.namespace`.
    pub field_labels: &'static [&'static str],
}

impl ResourceDef {
    /// `group/version`, or just `version` for the core group.
    pub fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.to_string()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }

    /// Whether `sub` is a subresource of this resource.
    pub fn has_subresource(&self, sub: &str) -> bool {
        (sub == "status" && self.status_subresource) || self.extra_subresources.contains(&sub)
    }
}

#[allow(clippy::too_many_arguments)]
const fn def(
    group: &'static str,
    version: &'static str,
    plural: &'static str,
    singular: &'static str,
    kind: &'static str,
    namespaced: bool,
    status_subresource: bool,
    short_names: &'static [&'static str],
) -> ResourceDef {
    ResourceDef {
        group,
        version,
        plural,
        singular,
        kind,
        namespaced,
        status_subresource,
        extra_subresources: &[],
        short_names,
        review: false,
        generation: false,
        crd: false,
        field_labels: &[],
    }
}

const fn crd(
    plural: &'static str,
    singular: &'static str,
    kind: &'static str,
    namespaced: bool,
    status_subresource: bool,
    short_names: &'static [&'static str],
) -> ResourceDef {
    ResourceDef {
        generation: true,
        crd: true,
        ..def(
            "snapshot.storage.k8s.io",
            "v1",
            plural,
            singular,
            kind,
            namespaced,
            status_subresource,
            short_names,
        )
    }
}

static RESOURCES: &[ResourceDef] = &[
    ResourceDef {
        field_labels: &["status.phase"],
        ..def(
            "",
            "v1",
            "namespaces",
            "namespace",
            "Namespace",
            false,
            true,
            &["ns"],
        )
    },
    def(
        "",
        "v1",
        "persistentvolumeclaims",
        "persistentvolumeclaim",
        "PersistentVolumeClaim",
        true,
        true,
        &["pvc"],
    ),
    def(
        "",
        "v1",
        "persistentvolumes",
        "persistentvolume",
        "PersistentVolume",
        false,
        true,
        &["pv"],
    ),
    ResourceDef {
        field_labels: &["type"],
        ..def("", "v1", "secrets", "secret", "Secret", true, false, &[])
    },
    ResourceDef {
        extra_subresources: &["token"],
        ..def(
            "",
            "v1",
            "serviceaccounts",
            "serviceaccount",
            "ServiceAccount",
            true,
            false,
            &["sa"],
        )
    },
    def(
        "",
        "v1",
        "configmaps",
        "configmap",
        "ConfigMap",
        true,
        false,
        &["cm"],
    ),
    ResourceDef {
        extra_subresources: &["log"],
        generation: true,
        field_labels: &[
            "spec.nodeName",
            "spec.restartPolicy",
            "spec.schedulerName",
            "spec.serviceAccountName",
            "spec.hostNetwork",
            "status.phase",
            "status.podIP",
            "status.podIPs",
            "status.nominatedNodeName",
        ],
        ..def("", "v1", "pods", "pod", "Pod", true, true, &["po"])
    },
    ResourceDef {
        field_labels: &[
            "involvedObject.kind",
            "involvedObject.namespace",
            "involvedObject.name",
            "involvedObject.uid",
            "involvedObject.apiVersion",
            "involvedObject.resourceVersion",
            "involvedObject.fieldPath",
            "reason",
            "reportingComponent",
            "source",
            "type",
        ],
        ..def("", "v1", "events", "event", "Event", true, false, &["ev"])
    },
    ResourceDef {
        generation: true,
        field_labels: &["status.successful"],
        ..def("batch", "v1", "jobs", "job", "Job", true, true, &[])
    },
    ResourceDef {
        field_labels: &[
            "regarding.kind",
            "regarding.namespace",
            "regarding.name",
            "regarding.uid",
            "regarding.apiVersion",
            "regarding.resourceVersion",
            "regarding.fieldPath",
            "reason",
            "reportingController",
            "type",
        ],
        ..def(
            "events.k8s.io",
            "v1",
            "events",
            "event",
            "Event",
            true,
            false,
            &["ev"],
        )
    },
    // VolSync's ReplicationSource, as its CRD serves it (the agent looks for one replicating
    // a gated PVC before asking the application to quiesce).
    ResourceDef {
        generation: true,
        crd: true,
        ..def(
            "volsync.backube",
            "v1alpha1",
            "replicationsources",
            "replicationsource",
            "ReplicationSource",
            true,
            true,
            &[],
        )
    },
    crd(
        "volumesnapshots",
        "volumesnapshot",
        "VolumeSnapshot",
        true,
        true,
        &["vs"],
    ),
    crd(
        "volumesnapshotcontents",
        "volumesnapshotcontent",
        "VolumeSnapshotContent",
        false,
        true,
        &["vsc", "vscs"],
    ),
    crd(
        "volumesnapshotclasses",
        "volumesnapshotclass",
        "VolumeSnapshotClass",
        false,
        false,
        &["vsclass", "vsclasses"],
    ),
    def(
        "storage.k8s.io",
        "v1",
        "storageclasses",
        "storageclass",
        "StorageClass",
        false,
        false,
        &["sc"],
    ),
    ResourceDef {
        review: true,
        ..def(
            "authorization.k8s.io",
            "v1",
            "localsubjectaccessreviews",
            "localsubjectaccessreview",
            "LocalSubjectAccessReview",
            true,
            false,
            &[],
        )
    },
    ResourceDef {
        review: true,
        ..def(
            "authorization.k8s.io",
            "v1",
            "selfsubjectaccessreviews",
            "selfsubjectaccessreview",
            "SelfSubjectAccessReview",
            false,
            false,
            &[],
        )
    },
    def(
        "rbac.authorization.k8s.io",
        "v1",
        "roles",
        "role",
        "Role",
        true,
        false,
        &[],
    ),
    def(
        "rbac.authorization.k8s.io",
        "v1",
        "rolebindings",
        "rolebinding",
        "RoleBinding",
        true,
        false,
        &[],
    ),
    def(
        "rbac.authorization.k8s.io",
        "v1",
        "clusterroles",
        "clusterrole",
        "ClusterRole",
        false,
        false,
        &[],
    ),
    def(
        "rbac.authorization.k8s.io",
        "v1",
        "clusterrolebindings",
        "clusterrolebinding",
        "ClusterRoleBinding",
        false,
        false,
        &[],
    ),
];

/// All resources served by the simulator.
pub fn all() -> &'static [ResourceDef] {
    RESOURCES
}

/// Index of a resource in [`all`]; used as the store's key.
pub(crate) fn index_of(def: &ResourceDef) -> usize {
    RESOURCES
        .iter()
        .position(|r| r == def)
        .expect("resource from the table")
}

/// Find a resource by group, version and plural.
pub fn find(group: &str, version: &str, plural: &str) -> Option<&'static ResourceDef> {
    RESOURCES
        .iter()
        .find(|r| r.group == group && r.version == version && r.plural == plural)
}

/// Find a resource by group and plural, any version.
pub fn find_plural(group: &str, plural: &str) -> Option<&'static ResourceDef> {
    RESOURCES
        .iter()
        .find(|r| r.group == group && r.plural == plural)
}

/// All `(group, versions)` pairs, core group first, in table order.
pub(crate) fn groups() -> Vec<(&'static str, &'static str)> {
    let mut out: Vec<(&'static str, &'static str)> = Vec::new();
    for r in RESOURCES {
        if !out.contains(&(r.group, r.version)) {
            out.push((r.group, r.version));
        }
    }
    out
}
