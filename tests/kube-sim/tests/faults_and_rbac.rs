//! Fault injection, request accounting, identities and RBAC.

mod fixtures;

use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{ConfigMap, PersistentVolumeClaim, Pod};
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use kube::api::{
    Api, ListParams, LogParams, Patch, PatchParams, PostParams, WatchEvent, WatchParams,
};
use serde_json::json;
use snapgate_kube_sim::{FaultKind, FaultRule, Verb, WatchEnd};

fn code(e: kube::Error) -> u16 {
    match e {
        kube::Error::Api(s) => s.code,
        other => panic!("expected an API error, got {other:?}"),
    }
}

#[tokio::test]
async fn status_faults_fail_only_matching_requests_for_the_given_count() {
    let sim = fixtures::sim();
    let pvcs: Api<PersistentVolumeClaim> = Api::namespaced(sim.client(), "ns");
    pvcs.create(&PostParams::default(), &fixtures::pvc("ns", "data"))
        .await
        .unwrap();
    sim.faults().fail(
        FaultRule::new(FaultKind::Status(500))
            .verb(Verb::Get)
            .resource("persistentvolumeclaims")
            .namespace("ns")
            .name("data")
            .times(2),
    );
    sim.faults().fail(
        FaultRule::new(FaultKind::Status(429))
            .verb(Verb::List)
            .times(1),
    );
    sim.faults().fail(
        FaultRule::new(FaultKind::Status(409))
            .verb(Verb::Patch)
            .times(1),
    );

    match pvcs.get("data").await.unwrap_err() {
        kube::Error::Api(s) => assert_eq!((s.code, s.reason.as_str()), (500, "InternalError")),
        other => panic!("{other:?}"),
    }
    assert_eq!(code(pvcs.get("data").await.unwrap_err()), 500);
    pvcs.get("data").await.expect("the rule is used up");
    match pvcs.list(&ListParams::default()).await.unwrap_err() {
        kube::Error::Api(s) => assert_eq!((s.code, s.reason.as_str()), (429, "TooManyRequests")),
        other => panic!("{other:?}"),
    }
    pvcs.list(&ListParams::default()).await.unwrap();
    let patch = Patch::Merge(json!({"metadata": {"labels": {"a": "b"}}}));
    assert_eq!(
        code(
            pvcs.patch("data", &PatchParams::default(), &patch)
                .await
                .unwrap_err()
        ),
        409
    );
    pvcs.patch("data", &PatchParams::default(), &patch)
        .await
        .unwrap();
}

#[tokio::test]
async fn a_fault_for_one_user_leaves_other_users_requests_alone() {
    let sim = fixtures::sim();
    sim.add_token("agent-token", "system:serviceaccount:ns:agent");
    let admin: Api<ConfigMap> = Api::namespaced(sim.client(), "ns");
    let agent: Api<ConfigMap> = Api::namespaced(sim.client_as("agent-token"), "ns");
    sim.faults().fail(
        FaultRule::new(FaultKind::Status(409))
            .user("system:serviceaccount:ns:agent")
            .times(1),
    );
    admin.list(&ListParams::default()).await.unwrap();
    assert_eq!(sim.faults().rules().len(), 1, "the admin's request left it");
    assert_eq!(
        code(agent.list(&ListParams::default()).await.unwrap_err()),
        409
    );
    assert!(sim.faults().rules().is_empty(), "used up");
}

#[tokio::test(start_paused = true)]
async fn timeout_faults_hang_then_answer_504_and_delay_faults_only_delay() {
    let sim = fixtures::sim();
    sim.faults().set_timeout_duration(Duration::from_secs(30));
    sim.faults().fail(
        FaultRule::new(FaultKind::Timeout)
            .resource("configmaps")
            .times(1),
    );
    sim.faults().fail(
        FaultRule::new(FaultKind::Delay(Duration::from_secs(7)))
            .resource("persistentvolumeclaims")
            .times(1),
    );
    let cms: Api<ConfigMap> = Api::namespaced(sim.client(), "ns");
    let start = tokio::time::Instant::now();
    assert_eq!(
        code(cms.list(&ListParams::default()).await.unwrap_err()),
        504
    );
    assert!(start.elapsed() >= Duration::from_secs(30));
    let pvcs: Api<PersistentVolumeClaim> = Api::namespaced(sim.client(), "ns");
    let start = tokio::time::Instant::now();
    pvcs.list(&ListParams::default()).await.unwrap();
    assert!(start.elapsed() >= Duration::from_secs(7));
}

#[tokio::test]
async fn close_watch_faults_end_the_watch_stream_without_events() {
    let sim = fixtures::sim();
    sim.faults().fail(
        FaultRule::new(FaultKind::CloseWatch)
            .verb(Verb::Watch)
            .times(1),
    );
    let cms: Api<ConfigMap> = Api::namespaced(sim.client(), "ns");
    let mut s = cms
        .watch(&WatchParams::default(), "0")
        .await
        .unwrap()
        .boxed();
    assert!(
        tokio::time::timeout(Duration::from_secs(5), s.next())
            .await
            .unwrap()
            .is_none()
    );
    // the next watch works
    let mut c = ConfigMap::default();
    c.metadata.name = Some("a".into());
    cms.create(&PostParams::default(), &c).await.unwrap();
    let mut s = cms
        .watch(&WatchParams::default().timeout(5), "0")
        .await
        .unwrap()
        .boxed();
    assert!(matches!(
        s.next().await.unwrap().unwrap(),
        kube::api::WatchEvent::Added(_)
    ));
}

/// The next item of a watch (`None`: it ended), within 5 s.
async fn next_within<S: futures::Stream + Unpin>(s: &mut S) -> Option<S::Item> {
    tokio::time::timeout(Duration::from_secs(5), s.next())
        .await
        .expect("an event or the end in time")
}

#[tokio::test]
async fn ending_the_open_watches_closes_or_expires_each_and_leaves_later_ones_alone() {
    let sim = fixtures::sim();
    let cms: Api<ConfigMap> = Api::namespaced(sim.client(), "ns");

    let mut closed = cms
        .watch(&WatchParams::default(), "0")
        .await
        .unwrap()
        .boxed();
    assert_eq!(sim.faults().end_watches(WatchEnd::Close), 1);
    assert!(next_within(&mut closed).await.is_none(), "closed, no event");

    let mut expired = cms
        .watch(&WatchParams::default(), "0")
        .await
        .unwrap()
        .boxed();
    assert_eq!(sim.faults().end_watches(WatchEnd::Expire), 1);
    match next_within(&mut expired).await {
        Some(Ok(WatchEvent::Error(e))) => {
            assert_eq!((e.code, e.reason.as_str()), (410, "Expired"), "{e:?}");
        }
        other => panic!("expected a 410 Expired ERROR event, got {other:?}"),
    }
    assert!(next_within(&mut expired).await.is_none(), "then the end");

    // A watch opened afterwards goes on.
    let mut later = cms
        .watch(&WatchParams::default().timeout(5), "0")
        .await
        .unwrap()
        .boxed();
    let mut c = ConfigMap::default();
    c.metadata.name = Some("a".into());
    cms.create(&PostParams::default(), &c).await.unwrap();
    assert!(matches!(
        next_within(&mut later).await,
        Some(Ok(WatchEvent::Added(_)))
    ));
}

#[tokio::test]
async fn the_request_log_counts_calls_by_verb_resource_and_user() {
    let sim = fixtures::sim();
    sim.add_token("agent-token", "system:serviceaccount:ns:agent");
    let pvcs: Api<PersistentVolumeClaim> = Api::namespaced(sim.client_as("agent-token"), "ns");
    pvcs.create(&PostParams::default(), &fixtures::pvc("ns", "data"))
        .await
        .unwrap();
    pvcs.get("data").await.unwrap();
    pvcs.get("data").await.unwrap();
    let _ = pvcs.get("missing").await;
    pvcs.list(&ListParams::default()).await.unwrap();
    pvcs.patch_status(
        "data",
        &PatchParams::default(),
        &Patch::Merge(json!({"status": {}})),
    )
    .await
    .unwrap();

    let log = sim.requests();
    assert_eq!(log.count_verb(Verb::Create, "persistentvolumeclaims"), 1);
    assert_eq!(log.count_verb(Verb::Get, "persistentvolumeclaims"), 3);
    assert_eq!(log.count_verb(Verb::List, "persistentvolumeclaims"), 1);
    assert_eq!(log.count_user("system:serviceaccount:ns:agent"), 6);
    assert_eq!(log.count(|r| r.code == 404), 1);
    let status = log.filter(|r| r.subresource.as_deref() == Some("status"));
    assert_eq!(status.len(), 1);
    assert_eq!(status[0].verb, Some(Verb::Patch));
    assert_eq!(status[0].namespace.as_deref(), Some("ns"));
    assert_eq!(status[0].name.as_deref(), Some("data"));
    log.clear();
    assert_eq!(log.records().len(), 0);
}

#[tokio::test]
async fn unknown_tokens_are_401() {
    let sim = fixtures::sim();
    let pvcs: Api<PersistentVolumeClaim> = Api::namespaced(sim.client_as("bogus"), "ns");
    assert_eq!(
        code(pvcs.list(&ListParams::default()).await.unwrap_err()),
        401
    );
}

#[tokio::test]
async fn rbac_allows_what_a_role_binding_grants_and_denies_the_rest_with_403() {
    let sim = fixtures::sim();
    sim.add_token("agent-token", "system:serviceaccount:ns:agent");
    sim.add_token("other-token", "system:serviceaccount:ns:other");
    let admin = sim.client();
    let role: Role = serde_json::from_value(json!({
        "metadata": {"name": "agent", "namespace": "ns"},
        "rules": [
            {"apiGroups": [""], "resources": ["persistentvolumeclaims"], "verbs": ["get", "list", "watch"]},
            {"apiGroups": [""], "resources": ["pods/log"], "verbs": ["get"]},
            {"apiGroups": [""], "resources": ["configmaps"], "verbs": ["*"], "resourceNames": ["allowed"]},
        ],
    }))
    .unwrap();
    Api::<Role>::namespaced(admin.clone(), "ns")
        .create(&PostParams::default(), &role)
        .await
        .unwrap();
    let binding: RoleBinding = serde_json::from_value(json!({
        "metadata": {"name": "agent", "namespace": "ns"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "agent"},
        "subjects": [{"kind": "ServiceAccount", "name": "agent", "namespace": "ns"}],
    }))
    .unwrap();
    Api::<RoleBinding>::namespaced(admin.clone(), "ns")
        .create(&PostParams::default(), &binding)
        .await
        .unwrap();
    Api::<PersistentVolumeClaim>::namespaced(admin.clone(), "ns")
        .create(&PostParams::default(), &fixtures::pvc("ns", "data"))
        .await
        .unwrap();
    let pod: Pod = serde_json::from_value(json!({
        "metadata": {"name": "p", "namespace": "ns"},
        "spec": {"nodeName": snapgate_kube_sim::controllers::NODE_NAME,
                 "containers": [{"name": "c", "image": "busybox"}]},
    }))
    .unwrap();
    Api::<Pod>::namespaced(admin.clone(), "ns")
        .create(&PostParams::default(), &pod)
        .await
        .unwrap();
    sim.set_pod_log("ns", "p", "c", "hello\n");
    sim.enforce_rbac(true);

    let agent = sim.client_as("agent-token");
    let pvcs: Api<PersistentVolumeClaim> = Api::namespaced(agent.clone(), "ns");
    pvcs.get("data").await.unwrap();
    pvcs.list(&ListParams::default()).await.unwrap();
    match pvcs
        .create(&PostParams::default(), &fixtures::pvc("ns", "new"))
        .await
        .unwrap_err()
    {
        kube::Error::Api(s) => {
            assert_eq!((s.code, s.reason.as_str()), (403, "Forbidden"));
            assert!(s.message.contains("cannot create"), "{}", s.message);
        }
        other => panic!("{other:?}"),
    }
    let other_ns: Api<PersistentVolumeClaim> = Api::namespaced(agent.clone(), "elsewhere");
    assert_eq!(
        code(other_ns.list(&ListParams::default()).await.unwrap_err()),
        403
    );
    let pods: Api<Pod> = Api::namespaced(agent.clone(), "ns");
    assert_eq!(
        pods.logs("p", &LogParams::default()).await.unwrap(),
        "hello\n"
    );
    assert_eq!(
        code(pods.get("p").await.unwrap_err()),
        403,
        "pods/log does not grant pods"
    );
    let cms: Api<ConfigMap> = Api::namespaced(agent, "ns");
    let mut cm = ConfigMap::default();
    cm.metadata.name = Some("allowed".into());
    Api::<ConfigMap>::namespaced(admin.clone(), "ns")
        .create(&PostParams::default(), &cm)
        .await
        .unwrap();
    cms.get("allowed").await.unwrap();
    assert_eq!(
        code(cms.get("denied").await.unwrap_err()),
        403,
        "resourceNames restrict"
    );

    let other: Api<PersistentVolumeClaim> = Api::namespaced(sim.client_as("other-token"), "ns");
    assert_eq!(
        code(other.get("data").await.unwrap_err()),
        403,
        "unbound identities are denied"
    );
    Api::<PersistentVolumeClaim>::namespaced(admin, "ns")
        .get("data")
        .await
        .expect("admin bypasses RBAC");
    sim.enforce_rbac(false);
    other.get("data").await.expect("RBAC off allows everything");
}

#[tokio::test]
async fn cluster_role_bindings_grant_across_namespaces() {
    let sim = fixtures::sim();
    sim.add_token("sched", "snapgate-scheduler");
    let admin = sim.client();
    let cr: k8s_openapi::api::rbac::v1::ClusterRole = serde_json::from_value(json!({
        "metadata": {"name": "reader"},
        "rules": [{"apiGroups": ["snapshot.storage.k8s.io"], "resources": ["*"], "verbs": ["list"]}],
    }))
    .unwrap();
    Api::all(admin.clone())
        .create(&PostParams::default(), &cr)
        .await
        .unwrap();
    let crb: k8s_openapi::api::rbac::v1::ClusterRoleBinding = serde_json::from_value(json!({
        "metadata": {"name": "reader"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "reader"},
        "subjects": [{"kind": "User", "name": "snapgate-scheduler"}],
    }))
    .unwrap();
    Api::all(admin)
        .create(&PostParams::default(), &crb)
        .await
        .unwrap();
    sim.enforce_rbac(true);
    let snaps: Api<kube::api::DynamicObject> =
        Api::all_with(sim.client_as("sched"), &fixtures::snapshot_resource());
    snaps.list(&ListParams::default()).await.unwrap();
    let pvcs: Api<PersistentVolumeClaim> = Api::all(sim.client_as("sched"));
    assert_eq!(
        code(pvcs.list(&ListParams::default()).await.unwrap_err()),
        403
    );
}

/// A LocalSubjectAccessReview as the agent posts one.
fn review(ns: &str, user: &str, groups: &[&str], verb: &str, resource: &str) -> serde_json::Value {
    json!({
        "apiVersion": "authorization.k8s.io/v1",
        "kind": "LocalSubjectAccessReview",
        "metadata": {"namespace": ns},
        "spec": {
            "user": user,
            "groups": groups,
            "resourceAttributes": {
                "namespace": ns, "verb": verb, "group": "batch", "resource": resource,
            },
        },
    })
}

#[tokio::test]
async fn a_local_subject_access_review_answers_from_rbac_for_the_user_and_its_groups() {
    use k8s_openapi::api::authorization::v1::LocalSubjectAccessReview;
    let sim = fixtures::sim();
    sim.ensure_namespace("app");
    sim.create(
        &serde_json::from_value::<Role>(json!({
            "metadata": {"name": "jobs", "namespace": "app"},
            "rules": [{"apiGroups": ["batch"], "resources": ["jobs"], "verbs": ["create"]}],
        }))
        .unwrap(),
    )
    .unwrap();
    sim.create(
        &serde_json::from_value::<RoleBinding>(json!({
            "metadata": {"name": "jobs", "namespace": "app"},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "jobs"},
            "subjects": [
                {"kind": "ServiceAccount", "name": "ops", "namespace": "app"},
                {"kind": "Group", "name": "team-a"},
            ],
        }))
        .unwrap(),
    )
    .unwrap();
    sim.enforce_rbac(true);
    let api: Api<LocalSubjectAccessReview> = Api::namespaced(sim.client(), "app");
    let ask = |v: serde_json::Value| {
        let api = api.clone();
        async move {
            api.create(&PostParams::default(), &serde_json::from_value(v).unwrap())
                .await
                .map(|r| r.status.unwrap().allowed)
        }
    };
    let ops = "system:serviceaccount:app:ops";
    assert!(
        ask(review("app", ops, &[], "create", "jobs"))
            .await
            .unwrap()
    );
    assert!(
        !ask(review("app", ops, &[], "delete", "jobs"))
            .await
            .unwrap()
    );
    assert!(
        !ask(review("app", "alice", &[], "create", "jobs"))
            .await
            .unwrap()
    );
    // The groups the review names count, as the API server's do.
    assert!(
        ask(review("app", "alice", &["team-a"], "create", "jobs"))
            .await
            .unwrap()
    );
    // Another namespace: no binding there.
    sim.ensure_namespace("web");
    let web: Api<LocalSubjectAccessReview> = Api::namespaced(sim.client(), "web");
    let answer = web
        .create(
            &PostParams::default(),
            &serde_json::from_value(review("web", ops, &[], "create", "jobs")).unwrap(),
        )
        .await
        .unwrap();
    assert!(!answer.status.unwrap().allowed);
    // The review's namespace must be the one it is posted in; reviews are never stored.
    let e = ask(review("web", ops, &[], "create", "jobs"))
        .await
        .unwrap_err();
    assert_eq!(code(e), 422, "spec.resourceAttributes.namespace must match");
    assert_eq!(code(api.get("anything").await.unwrap_err()), 405);
    // Who may post a review is RBAC's business too.
    let anon: Api<LocalSubjectAccessReview> = Api::namespaced(sim.client_as("nobody"), "app");
    sim.add_token("nobody", "system:serviceaccount:app:nobody");
    let e = anon
        .create(
            &PostParams::default(),
            &serde_json::from_value(review("app", ops, &[], "create", "jobs")).unwrap(),
        )
        .await
        .unwrap_err();
    assert_eq!(code(e), 403);
}
