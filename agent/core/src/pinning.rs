//! A mover that mounts an application's volume in place (copyMethod `Direct`) must run on the
//! node where that volume is attached: a ReadWriteOnce volume in use cannot attach to a second
//! node (Multi-Attach), and the mover's pod would wait in ContainerCreating. As VolSync does,
//! the mover follows the pod that uses the volume: a Running one, else a Pending one, never
//! one snapgate made; it gets that pod's tolerations too. A ReadWriteMany volume may be
//! mounted anywhere and pins nothing.
//!
//! The node is required through node affinity on the node's name (`matchFields
//! metadata.name`), so the scheduler still places the pod and checks its resources, and the
//! agent needs no right to read Nodes.
//!
//! The PVCs a source mounts through `moverVolumes` are followed the same way when the source's
//! own volume pins nothing (a copy is not attached anywhere yet): the first of them in use by a
//! pod on a node gives the node.

use k8s_openapi::api::{
    batch::v1::Job,
    core::v1::{
        Affinity, NodeAffinity, NodeSelector, NodeSelectorRequirement, NodeSelectorTerm,
        PersistentVolumeClaim, Pod, Toleration,
    },
};

use crate::names;

/// Where a mover must run, and what it must tolerate there.
#[derive(Clone, Debug, PartialEq)]
pub struct Pin {
    /// The node of the pod using the volume.
    pub node: String,
    /// That pod, for messages (`namespace/name`).
    pub pod: String,
    /// That pod's tolerations.
    pub tolerations: Vec<Toleration>,
}

fn uses(pod: &Pod, claim: &str) -> bool {
    pod.spec
        .as_ref()
        .and_then(|s| s.volumes.as_ref())
        .is_some_and(|vs| {
            vs.iter().any(|v| {
                v.persistent_volume_claim
                    .as_ref()
                    .is_some_and(|c| c.claim_name == claim)
            })
        })
}

fn phase(pod: &Pod) -> &str {
    pod.status
        .as_ref()
        .and_then(|s| s.phase.as_deref())
        .unwrap_or_default()
}

fn read_write_many(pvc: &PersistentVolumeClaim) -> bool {
    pvc.status
        .as_ref()
        .and_then(|s| s.access_modes.as_ref())
        .or_else(|| pvc.spec.as_ref().and_then(|s| s.access_modes.as_ref()))
        .is_some_and(|m| m.iter().any(|m| m == "ReadWriteMany"))
}

/// The PVCs a source's `moverVolumes` mount (their `persistentVolumeClaim.claimName`s), in
/// order.
pub fn mover_volume_claims(volumes: &[snapgate_proto::v1::MoverVolume]) -> Vec<String> {
    volumes
        .iter()
        .filter_map(|v| v.volume_source.as_ref())
        .filter_map(|source| {
            crate::spec::struct_to_json(source)["persistentVolumeClaim"]["claimName"]
                .as_str()
                .filter(|c| !c.is_empty() && c.len() <= 253)
                .map(str::to_owned)
        })
        .collect()
}

/// Where a mover that mounts the PVCs `claims` (as `moverVolumes`) must run: the pin of the
/// first one a pod on a node uses. A claim whose PVC is in `known` and ReadWriteMany pins
/// nothing; one not known is taken as attachable to one node only.
pub fn pin_mover_volumes(
    claims: &[String],
    known: &[PersistentVolumeClaim],
    pods: &[Pod],
) -> Option<Pin> {
    claims.iter().find_map(|claim| {
        let pvc = known
            .iter()
            .find(|p| p.metadata.name.as_deref() == Some(claim.as_str()));
        if pvc.is_some_and(read_write_many) {
            return None;
        }
        pin_claim(claim, pods)
    })
}

/// Where a mover mounting `pvc` in place must run, from the pods of its namespace; `None`
/// when it may run anywhere (ReadWriteMany, or no pod on a node uses it).
pub fn pin(pvc: &PersistentVolumeClaim, pods: &[Pod]) -> Option<Pin> {
    let claim = pvc.metadata.name.as_deref()?;
    if read_write_many(pvc) {
        return None;
    }
    pin_claim(claim, pods)
}

/// The pin of the pod (not snapgate's, on a node, not terminating; Running first) that uses
/// the PVC `claim`.
fn pin_claim(claim: &str, pods: &[Pod]) -> Option<Pin> {
    let users: Vec<&Pod> = pods
        .iter()
        .filter(|p| uses(p, claim))
        .filter(|p| {
            // Never a pod snapgate made (a mover of an earlier run).
            p.metadata.labels.as_ref().is_none_or(|l| {
                l.get(names::CREATED_BY).map(String::as_str) != Some(names::CREATED_BY_VALUE)
            })
        })
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .filter(|p| {
            p.spec
                .as_ref()
                .and_then(|s| s.node_name.as_deref())
                .is_some_and(|n| !n.is_empty())
        })
        .collect();
    let chosen = users
        .iter()
        .find(|p| phase(p) == "Running")
        .or_else(|| users.iter().find(|p| phase(p) == "Pending"))?;
    let spec = chosen.spec.as_ref()?;
    Some(Pin {
        node: spec.node_name.clone()?,
        pod: format!(
            "{}/{}",
            chosen.metadata.namespace.as_deref().unwrap_or_default(),
            chosen.metadata.name.as_deref().unwrap_or_default()
        ),
        tolerations: spec.tolerations.clone().unwrap_or_default(),
    })
}

/// Requires `job`'s pod to run on the pin's node (added to every required node-affinity term
/// the source's `moverAffinity` has, or as the one term) and to tolerate what the pinned-to
/// pod tolerates.
pub fn apply(job: &mut Job, pin: &Pin) {
    let Some(pod) = job.spec.as_mut().and_then(|s| s.template.spec.as_mut()) else {
        return;
    };
    let on_node = NodeSelectorRequirement {
        key: "metadata.name".into(),
        operator: "In".into(),
        values: Some(vec![pin.node.clone()]),
    };
    let affinity = pod.affinity.get_or_insert_with(Affinity::default);
    let node = affinity
        .node_affinity
        .get_or_insert_with(NodeAffinity::default);
    let required = node
        .required_during_scheduling_ignored_during_execution
        .get_or_insert_with(|| NodeSelector {
            node_selector_terms: Vec::new(),
        });
    if required.node_selector_terms.is_empty() {
        required
            .node_selector_terms
            .push(NodeSelectorTerm::default());
    }
    for term in &mut required.node_selector_terms {
        term.match_fields
            .get_or_insert_with(Vec::new)
            .push(on_node.clone());
    }
    let tolerations = pod.tolerations.get_or_insert_with(Vec::new);
    for t in &pin.tolerations {
        if !tolerations.contains(t) {
            tolerations.push(t.clone());
        }
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::{
        batch::v1::JobSpec,
        core::v1::{
            PersistentVolumeClaimSpec, PersistentVolumeClaimStatus,
            PersistentVolumeClaimVolumeSource, PodSpec, PodStatus, PodTemplateSpec, Volume,
        },
    };
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    use super::*;

    fn pvc(modes: &[&str]) -> PersistentVolumeClaim {
        PersistentVolumeClaim {
            metadata: ObjectMeta {
                name: Some("data".into()),
                ..Default::default()
            },
            spec: Some(PersistentVolumeClaimSpec::default()),
            status: Some(PersistentVolumeClaimStatus {
                access_modes: Some(modes.iter().map(|m| (*m).to_owned()).collect()),
                ..Default::default()
            }),
        }
    }

    fn pod(name: &str, claim: &str, phase: &str, node: &str, ours: bool) -> Pod {
        Pod {
            metadata: ObjectMeta {
                name: Some(name.into()),
                namespace: Some("app".into()),
                labels: ours.then(|| {
                    [(
                        names::CREATED_BY.to_owned(),
                        names::CREATED_BY_VALUE.to_owned(),
                    )]
                    .into()
                }),
                ..Default::default()
            },
            spec: Some(PodSpec {
                node_name: (!node.is_empty()).then(|| node.to_owned()),
                volumes: Some(vec![Volume {
                    name: "v".into(),
                    persistent_volume_claim: Some(PersistentVolumeClaimVolumeSource {
                        claim_name: claim.into(),
                        read_only: None,
                    }),
                    ..Default::default()
                }]),
                tolerations: Some(vec![Toleration {
                    key: Some(format!("on-{node}")),
                    operator: Some("Exists".into()),
                    ..Default::default()
                }]),
                ..Default::default()
            }),
            status: Some(PodStatus {
                phase: Some(phase.into()),
                ..Default::default()
            }),
        }
    }

    #[test]
    fn the_mover_follows_the_running_pod_then_a_pending_one_never_its_own_nor_for_rwx() {
        let node = |p: Option<Pin>| p.map(|p| p.node);
        let rwo = pvc(&["ReadWriteOnce"]);
        let pods = [
            pod("other-claim", "logs", "Running", "n0", false),
            pod("pending", "data", "Pending", "n1", false),
            pod("mover", "data", "Running", "n9", true),
            pod("done", "data", "Succeeded", "n8", false),
            pod("app", "data", "Running", "n2", false),
        ];
        assert_eq!(node(pin(&rwo, &pods)), Some("n2".into()));
        let pin_pending = pin(&rwo, &pods[..4]).unwrap();
        assert_eq!(pin_pending.node, "n1");
        assert_eq!(pin_pending.pod, "app/pending");
        assert_eq!(
            pin_pending.tolerations[0].key.as_deref(),
            Some("on-n1"),
            "the pod's tolerations come along"
        );
        // Not scheduled yet: no node to follow.
        assert_eq!(
            node(pin(&rwo, &[pod("p", "data", "Pending", "", false)])),
            None
        );
        assert_eq!(node(pin(&pvc(&["ReadWriteMany"]), &pods)), None);
        assert_eq!(node(pin(&rwo, &[])), None);
    }

    #[test]
    fn a_pin_is_added_to_every_required_term_and_the_tolerations_once() {
        let pin = Pin {
            node: "n2".into(),
            pod: "app/db".into(),
            tolerations: vec![Toleration {
                key: Some("dedicated".into()),
                ..Default::default()
            }],
        };
        let mut job = Job {
            spec: Some(JobSpec {
                template: PodTemplateSpec {
                    spec: Some(PodSpec::default()),
                    ..Default::default()
                },
                ..Default::default()
            }),
            ..Default::default()
        };
        apply(&mut job, &pin);
        apply(&mut job, &pin);
        let pod = job.spec.unwrap().template.spec.unwrap();
        let terms = pod
            .affinity
            .unwrap()
            .node_affinity
            .unwrap()
            .required_during_scheduling_ignored_during_execution
            .unwrap()
            .node_selector_terms;
        assert_eq!(terms.len(), 1);
        let fields = terms[0].match_fields.clone().unwrap();
        assert_eq!(fields[0].key, "metadata.name");
        assert_eq!(fields[0].values.as_deref(), Some(&["n2".to_owned()][..]));
        assert_eq!(pod.tolerations.unwrap().len(), 1, "tolerations added once");
    }

    #[test]
    fn mover_volume_pvcs_pin_the_mover_unless_they_are_read_write_many() {
        let volumes = [
            snapgate_proto::v1::MoverVolume {
                mount_path: "keys".into(),
                volume_source: Some(snapgate_proto::json::json_to_struct(
                    serde_json::json!({"secret": {"secretName": "k"}})
                        .as_object()
                        .unwrap(),
                )),
            },
            snapgate_proto::v1::MoverVolume {
                mount_path: "shared".into(),
                volume_source: Some(snapgate_proto::json::json_to_struct(
                    serde_json::json!({"persistentVolumeClaim": {"claimName": "data"}})
                        .as_object()
                        .unwrap(),
                )),
            },
        ];
        let claims = mover_volume_claims(&volumes);
        assert_eq!(claims, ["data"], "Secrets are not followed");
        let pods = [pod("app-0", "data", "Running", "node-a", false)];
        // Not known to the agent: taken as attachable to one node.
        assert_eq!(
            pin_mover_volumes(&claims, &[], &pods).map(|p| p.node),
            Some("node-a".to_owned())
        );
        assert_eq!(
            pin_mover_volumes(&claims, &[pvc(&["ReadWriteOnce"])], &pods).map(|p| p.node),
            Some("node-a".to_owned())
        );
        assert!(pin_mover_volumes(&claims, &[pvc(&["ReadWriteMany"])], &pods).is_none());
        assert!(
            pin_mover_volumes(&claims, &[], &[]).is_none(),
            "no pod uses it"
        );
    }
}
