//! The agent's RBAC, proven: the agent runs a gated Snapshot run, a paused mover and its
//! cleanups against the simulated API server with RBAC enforced and exactly the Role,
//! RoleBinding, ClusterRole and ClusterRoleBinding of `deploy/agent` bound to its
//! ServiceAccount's token, the scheduler authenticating callers so that the agent reviews each
//! source's author. No request is refused, every verb the manifests grant is used by some
//! request, and removing any one verb would refuse a request the agent made.

use std::{collections::BTreeSet, time::Duration};

use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, PolicyRule, Role, RoleBinding};
use snapgate_e2e::*;
use snapgate_kube_sim::{JobBehaviour, KubeSim, RequestRecord, rbac};
use snapgate_proto::v1::{self, CopyMethod};

const AGENT_YAML: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/agent/agent.yaml");

struct RbacObjects {
    role: Role,
    role_binding: RoleBinding,
    cluster_role: ClusterRole,
    cluster_role_binding: ClusterRoleBinding,
}

/// The RBAC objects of `deploy/agent`, for namespace `NS` (what the kustomize overlay does:
/// `my-app` is the one value to change).
fn deploy_rbac() -> RbacObjects {
    let text = std::fs::read_to_string(AGENT_YAML)
        .unwrap()
        .replace("my-app", NS);
    let mut role = None;
    let mut role_binding = None;
    let mut cluster_role = None;
    let mut cluster_role_binding = None;
    for doc in serde_yaml::Deserializer::from_str(&text) {
        let value: serde_json::Value = serde::Deserialize::deserialize(doc).unwrap();
        match value["kind"].as_str().unwrap_or_default() {
            "Role" => role = Some(serde_json::from_value(value).unwrap()),
            "RoleBinding" => role_binding = Some(serde_json::from_value(value).unwrap()),
            "ClusterRole" => cluster_role = Some(serde_json::from_value(value).unwrap()),
            "ClusterRoleBinding" => {
                cluster_role_binding = Some(serde_json::from_value(value).unwrap())
            }
            _ => {}
        }
    }
    RbacObjects {
        role: role.expect("deploy/agent has a Role"),
        role_binding: role_binding.expect("deploy/agent has a RoleBinding"),
        cluster_role: cluster_role.expect("deploy/agent has a ClusterRole"),
        cluster_role_binding: cluster_role_binding.expect("deploy/agent has a ClusterRoleBinding"),
    }
}

fn install(sim: &KubeSim, o: &RbacObjects) {
    sim.create(&o.role).unwrap();
    sim.create(&o.role_binding).unwrap();
    sim.create(&o.cluster_role).unwrap();
    sim.create(&o.cluster_role_binding).unwrap();
}

fn attributes(r: &RequestRecord) -> rbac::Attributes<'_> {
    rbac::Attributes {
        user: &r.user,
        verb: r.verb.map(|v| v.as_str()).unwrap_or_default(),
        group: &r.group,
        resource: &r.resource,
        subresource: r.subresource.as_deref(),
        namespace: r.namespace.as_deref(),
        name: r.name.as_deref(),
    }
}

/// `(group, resource[/subresource], verb)` of every verb a rule grants.
fn grants(rules: &[PolicyRule]) -> BTreeSet<(String, String, String)> {
    let mut out = BTreeSet::new();
    for rule in rules {
        for g in rule.api_groups.clone().unwrap_or_default() {
            for r in rule.resources.clone().unwrap_or_default() {
                for v in &rule.verbs {
                    out.insert((g.clone(), r.clone(), v.clone()));
                }
            }
        }
    }
    out
}

fn used(r: &RequestRecord) -> (String, String, String) {
    let resource = match &r.subresource {
        Some(s) => format!("{}/{s}", r.resource),
        None => r.resource.clone(),
    };
    (
        r.group.clone(),
        resource,
        r.verb.map(|v| v.as_str()).unwrap_or_default().to_owned(),
    )
}

/// The rules with one verb of one grant removed.
fn without(rules: &[PolicyRule], grant: &(String, String, String)) -> Vec<PolicyRule> {
    let mut out = Vec::new();
    for rule in rules {
        let groups = rule.api_groups.clone().unwrap_or_default();
        let resources = rule.resources.clone().unwrap_or_default();
        if !(groups.contains(&grant.0) && resources.contains(&grant.1)) {
            out.push(rule.clone());
            continue;
        }
        // Split the rule so that only (group, resource, verb) loses the verb.
        for g in &groups {
            for r in &resources {
                let verbs: Vec<String> = if *g == grant.0 && *r == grant.1 {
                    rule.verbs
                        .iter()
                        .filter(|v| **v != grant.2)
                        .cloned()
                        .collect()
                } else {
                    rule.verbs.clone()
                };
                if !verbs.is_empty() {
                    out.push(PolicyRule {
                        api_groups: Some(vec![g.clone()]),
                        resources: Some(vec![r.clone()]),
                        resource_names: rule.resource_names.clone(),
                        verbs,
                        ..Default::default()
                    });
                }
            }
        }
    }
    out
}

#[tokio::test]
async fn the_agent_needs_every_verb_of_the_deploy_role_and_nothing_more() {
    let token = "snapgate-agent-sa-token";
    let objects = deploy_rbac();
    let subject = &objects.role_binding.subjects.as_ref().unwrap()[0];
    assert_eq!(
        format!(
            "system:serviceaccount:{}:{}",
            subject.namespace.as_deref().unwrap_or_default(),
            subject.name
        ),
        AGENT_USER,
        "the RoleBinding binds the agent's ServiceAccount"
    );
    // Authentication on, so that sources have an author and the agent reviews them; the
    // author (the world's admin) may create Jobs in the namespace.
    let mut w = World::start_secured_after(Some(token), |sim| {
        install(sim, &objects);
        grant_author(sim, ADMIN, None);
        sim.enforce_rbac(true);
    })
    .await;

    // A gated Snapshot run through to cleanup.
    w.create_pvc(true);
    w.apply(
        SOURCE,
        restic_spec(CopyMethod::Snapshot, Duration::from_secs(600)),
    )
    .await;
    w.wait_copy_status("WaitingForTrigger").await;
    w.annotate_trigger("first").await;
    w.wait_successful_runs(SOURCE, 1).await;
    eventually("its cleanup", || w.snapshots().is_empty().then_some(())).await;

    // A second source whose mover is running when it is paused.
    w.sim
        .create(&secret("rclone-secret", &["rclone.conf"]))
        .unwrap();
    w.sim
        .job_behaviour(NS, "volsync-rclone-src-other", JobBehaviour::hang());
    w.apply("other", rclone_spec(CopyMethod::Clone)).await;
    w.annotate_trigger("second").await;
    eventually("the rclone Job runs", || {
        w.jobs()
            .into_iter()
            .find(|j| j.metadata.name.as_deref() == Some("volsync-rclone-src-other"))
    })
    .await;
    w.sources
        .pause_source(v1::PauseSourceRequest {
            namespace: NS.into(),
            name: "other".into(),
            note: "rbac test".into(),
        })
        .await
        .unwrap();
    eventually("the paused Job is scaled to zero", || {
        w.jobs()
            .into_iter()
            .find(|j| j.spec.as_ref().and_then(|s| s.parallelism) == Some(0))
    })
    .await;
    // Deleting the source ends its run: its clone and Job are cleaned up.
    w.sources
        .delete_source(v1::DeleteSourceRequest {
            namespace: NS.into(),
            name: "other".into(),
            expected_version: 0,
        })
        .await
        .unwrap();
    eventually("the deleted source's objects are cleaned up", || {
        w.jobs().is_empty().then_some(())
    })
    .await;
    // Then the source is retired: its mover ServiceAccount is read and deleted.
    eventually(
        "the deleted source's mover ServiceAccount is deleted",
        || {
            w.sim
                .get::<k8s_openapi::api::core::v1::ServiceAccount>(Some(NS), "volsync-src-other")
                .is_err()
                .then_some(())
        },
    )
    .await;

    let requests = w.sim.requests().filter(|r| r.user == AGENT_USER);
    let refused: Vec<_> = requests.iter().filter(|r| r.code == 403).collect();
    assert!(refused.is_empty(), "requests refused: {refused:#?}");

    let role_rules = objects.role.rules.clone().unwrap_or_default();
    let cluster_rules = objects.cluster_role.rules.clone().unwrap_or_default();
    let granted: BTreeSet<_> = grants(&role_rules)
        .into_iter()
        .chain(grants(&cluster_rules))
        .collect();
    let made: BTreeSet<_> = requests.iter().map(used).collect();
    let unused: Vec<_> = granted.difference(&made).collect();
    assert!(
        unused.is_empty(),
        "granted but never used by the agent (remove them): {unused:?}"
    );

    // Each verb is necessary: without it, some request the agent made is refused.
    for grant in grants(&role_rules) {
        let mut narrower = objects.role.clone();
        narrower.rules = Some(without(&role_rules, &grant));
        w.sim.delete::<Role>(Some(NS), "snapgate-agent").unwrap();
        w.sim.create(&narrower).unwrap();
        let refused = requests
            .iter()
            .filter(|r| !rbac::allowed(w.sim.store(), &attributes(r)))
            .count();
        assert!(
            refused > 0,
            "removing {grant:?} from the Role refuses nothing"
        );
        w.sim.delete::<Role>(Some(NS), "snapgate-agent").unwrap();
        w.sim.create(&objects.role).unwrap();
    }
    let cluster_name = objects.cluster_role.metadata.name.clone().unwrap();
    for grant in grants(&cluster_rules) {
        let mut narrower = objects.cluster_role.clone();
        narrower.rules = Some(without(&cluster_rules, &grant));
        w.sim.delete::<ClusterRole>(None, &cluster_name).unwrap();
        w.sim.create(&narrower).unwrap();
        let refused = requests
            .iter()
            .filter(|r| !rbac::allowed(w.sim.store(), &attributes(r)))
            .count();
        assert!(
            refused > 0,
            "removing {grant:?} from the ClusterRole refuses nothing"
        );
        w.sim.delete::<ClusterRole>(None, &cluster_name).unwrap();
        w.sim.create(&objects.cluster_role).unwrap();
    }
    // And with the Role as deployed, every request is allowed again.
    assert!(
        requests
            .iter()
            .all(|r| rbac::allowed(w.sim.store(), &attributes(r))),
        "the deployed Role allows every request the agent made"
    );
}

#[tokio::test]
async fn an_agent_whose_role_lacks_the_author_review_says_so_on_the_run_and_goes_on_once_granted() {
    let token = "snapgate-agent-sa-token";
    let objects = deploy_rbac();
    let review = (
        "authorization.k8s.io".to_owned(),
        "localsubjectaccessreviews".to_owned(),
        "create".to_owned(),
    );
    let rules = objects.role.rules.clone().unwrap_or_default();
    assert!(
        grants(&rules).contains(&review),
        "the deploy Role grants the review"
    );
    let mut narrower = objects.role.clone();
    narrower.rules = Some(without(&rules, &review));
    let mut w = World::start_secured_after(Some(token), |sim| {
        install(
            sim,
            &RbacObjects {
                role: narrower,
                role_binding: objects.role_binding.clone(),
                cluster_role: objects.cluster_role.clone(),
                cluster_role_binding: objects.cluster_role_binding.clone(),
            },
        );
        grant_author(sim, ADMIN, None);
        sim.enforce_rbac(true);
    })
    .await;
    w.create_pvc(true);
    w.apply(
        SOURCE,
        restic_spec(CopyMethod::Snapshot, Duration::from_secs(600)),
    )
    .await;
    let run = w
        .run_when(SOURCE, "the refused review on the run", |r| {
            r.message.contains("localsubjectaccessreviews")
        })
        .await;
    assert!(
        run.message.contains("ApiForbidden")
            && run
                .message
                .contains("grant the agent's Role create on localsubjectaccessreviews"),
        "{}",
        run.message
    );
    assert!(!w.annotations().contains_key(STATUS), "nothing was done");

    // Granted: the same run goes on (the agent asks again) and waits for its trigger.
    w.sim.delete::<Role>(Some(NS), "snapgate-agent").unwrap();
    w.sim.create(&objects.role).unwrap();
    w.wait_copy_status("WaitingForTrigger").await;
    assert_eq!(w.runs(SOURCE).await.len(), 1, "the same run");
}
