//! The ServiceAccount a source's mover runs as (when the source names none), and on clusters
//! with SecurityContextConstraints the Role and RoleBinding that let it use the privileged-mover
//! SCC. Made once per source, kept across runs, deleted with the source.

use k8s_openapi::{
    api::{
        core::v1::{LocalObjectReference, ServiceAccount},
        rbac::v1::{PolicyRule, Role, RoleBinding, RoleRef, Subject},
    },
    apimachinery::pkg::apis::meta::v1::ObjectMeta,
};

use crate::names;

/// Everything the agent applies for one source's mover identity.
#[derive(Clone, Debug, PartialEq)]
pub struct MoverAccount {
    /// The ServiceAccount (`volsync-src-<source>`).
    pub service_account: ServiceAccount,
    /// The Role granting `use` of the SCC and its RoleBinding to the ServiceAccount, when the
    /// agent was given an SCC and the mover needs it.
    pub scc: Option<(Role, RoleBinding)>,
}

/// The mover identity of `source` in `namespace`: its pods pull images with `pull_secrets`
/// (Secrets of the namespace) and, when `scc` is given, may use that SecurityContextConstraints.
/// The ServiceAccount mounts no token: movers never call the Kubernetes API.
pub fn mover_account(
    namespace: &str,
    source: &str,
    pull_secrets: &[String],
    scc: Option<&str>,
) -> MoverAccount {
    let name = names::mover_account_name(source);
    let meta = ObjectMeta {
        name: Some(name.clone()),
        namespace: Some(namespace.to_owned()),
        labels: Some(names::source_labels(source)),
        ..Default::default()
    };
    let service_account = ServiceAccount {
        metadata: meta.clone(),
        automount_service_account_token: Some(false),
        image_pull_secrets: (!pull_secrets.is_empty()).then(|| {
            pull_secrets
                .iter()
                .map(|s| LocalObjectReference { name: s.clone() })
                .collect()
        }),
        secrets: None,
    };
    let scc = scc.map(|scc| {
        let role = Role {
            metadata: meta.clone(),
            rules: Some(vec![PolicyRule {
                api_groups: Some(vec!["security.openshift.io".to_owned()]),
                resources: Some(vec!["securitycontextconstraints".to_owned()]),
                resource_names: Some(vec![scc.to_owned()]),
                verbs: vec!["use".to_owned()],
                non_resource_urls: None,
            }]),
        };
        let binding = RoleBinding {
            metadata: meta.clone(),
            role_ref: RoleRef {
                api_group: "rbac.authorization.k8s.io".to_owned(),
                kind: "Role".to_owned(),
                name: name.clone(),
            },
            subjects: Some(vec![Subject {
                kind: "ServiceAccount".to_owned(),
                name: name.clone(),
                namespace: Some(namespace.to_owned()),
                api_group: None,
            }]),
        };
        (role, binding)
    });
    MoverAccount {
        service_account,
        scc,
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn a_mover_account_mounts_no_token_and_pulls_with_the_agents_secrets() {
        let a = mover_account("app", "db", &["regcred".to_owned()], None);
        assert_eq!(
            serde_json::to_value(&a.service_account).unwrap(),
            json!({
                "apiVersion": "v1",
                "kind": "ServiceAccount",
                "metadata": {
                    "name": "volsync-src-db",
                    "namespace": "app",
                    "labels": {
                        "app.kubernetes.io/created-by": "snapgate",
                        "snapgate.io/source": "db",
                    },
                },
                "automountServiceAccountToken": false,
                "imagePullSecrets": [{"name": "regcred"}],
            })
        );
        assert!(a.scc.is_none());
        let none = mover_account("app", "db", &[], None);
        assert!(none.service_account.image_pull_secrets.is_none());
    }

    #[test]
    fn with_an_scc_the_account_may_use_that_scc_and_nothing_else() {
        let a = mover_account("app", "db", &[], Some("snapgate-privileged-mover"));
        let (role, binding) = a.scc.unwrap();
        assert_eq!(
            serde_json::to_value(&role).unwrap()["rules"],
            json!([{
                "apiGroups": ["security.openshift.io"],
                "resources": ["securitycontextconstraints"],
                "resourceNames": ["snapgate-privileged-mover"],
                "verbs": ["use"],
            }])
        );
        assert_eq!(binding.role_ref.name, "volsync-src-db");
        assert_eq!(
            serde_json::to_value(binding.subjects.unwrap()).unwrap(),
            json!([{"kind": "ServiceAccount", "name": "volsync-src-db", "namespace": "app"}])
        );
    }

    #[test]
    fn a_long_source_name_gives_a_valid_shortened_name() {
        let long = "s".repeat(80);
        let a = mover_account("app", &long, &[], None);
        let name = a.service_account.metadata.name.unwrap();
        assert!(
            name.len() <= 63 && name.starts_with("volsync-src-"),
            "{name}"
        );
    }
}
