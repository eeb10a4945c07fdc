//! kube `Api` calls against the simulator: CRUD, patches, conflicts, status
//! subresource, garbage collection, selectors and pagination.

mod fixtures;

use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{ConfigMap, PersistentVolumeClaim};
use kube::api::{
    Api, DeleteParams, DynamicObject, ListParams, Patch, PatchParams, PostParams, Preconditions,
};
use kube::discovery::{ApiResource, Discovery};
use serde_json::json;
use snapgate_kube_sim::resources;

fn api_error(e: kube::Error) -> Box<kube::core::Status> {
    match e {
        kube::Error::Api(s) => s,
        other => panic!("expected an API error, got {other:?}"),
    }
}

#[tokio::test]
async fn a_created_pvc_gets_server_fields_and_can_be_read_back_and_listed() {
    let sim = fixtures::sim();
    let pvcs: Api<PersistentVolumeClaim> = Api::namespaced(sim.client(), "ns1");
    let created = pvcs
        .create(&PostParams::default(), &fixtures::pvc("ns1", "data"))
        .await
        .unwrap();
    let meta = &created.metadata;
    assert!(meta.uid.as_deref().is_some_and(|u| u.len() == 36));
    assert!(meta.creation_timestamp.is_some());
    // As the API server makes a PVC: no generation (core kinds other than pods have none),
    // PVC protection's finalizer, the volume mode defaulted.
    assert_eq!(meta.generation, None);
    assert_eq!(
        meta.finalizers.as_deref(),
        Some(&["kubernetes.io/pvc-protection".to_owned()][..])
    );
    assert_eq!(
        created.spec.as_ref().unwrap().volume_mode.as_deref(),
        Some("Filesystem")
    );
    let rv: u64 = meta.resource_version.as_deref().unwrap().parse().unwrap();
    assert!(rv > 0);
    assert_eq!(created.status.unwrap().phase.as_deref(), Some("Pending"));

    let got = pvcs.get("data").await.unwrap();
    assert_eq!(got.metadata.uid, meta.uid);
    let list = pvcs.list(&ListParams::default()).await.unwrap();
    assert_eq!(list.items.len(), 1);
    let list_rv: u64 = list.metadata.resource_version.unwrap().parse().unwrap();
    assert!(list_rv >= rv);
}

#[tokio::test]
async fn creating_an_existing_name_is_409_already_exists() {
    let sim = fixtures::sim();
    let pvcs: Api<PersistentVolumeClaim> = Api::namespaced(sim.client(), "ns1");
    pvcs.create(&PostParams::default(), &fixtures::pvc("ns1", "data"))
        .await
        .unwrap();
    let err = api_error(
        pvcs.create(&PostParams::default(), &fixtures::pvc("ns1", "data"))
            .await
            .unwrap_err(),
    );
    assert_eq!(err.code, 409);
    assert_eq!(err.reason, "AlreadyExists");
    assert_eq!(err.details.unwrap().name, "data");
}

#[tokio::test]
async fn getting_a_missing_object_is_404_not_found() {
    let sim = fixtures::sim();
    let pvcs: Api<PersistentVolumeClaim> = Api::namespaced(sim.client(), "ns1");
    let err = api_error(pvcs.get("nope").await.unwrap_err());
    assert_eq!((err.code, err.reason.as_str()), (404, "NotFound"));
    assert!(err.is_not_found());
    assert!(pvcs.get_opt("nope").await.unwrap().is_none());
}

#[tokio::test]
async fn invalid_and_missing_names_are_422_invalid_with_causes() {
    let sim = fixtures::sim();
    let pvcs: Api<PersistentVolumeClaim> = Api::namespaced(sim.client(), "ns1");
    let err = api_error(
        pvcs.create(&PostParams::default(), &fixtures::pvc("ns1", "Bad_Name"))
            .await
            .unwrap_err(),
    );
    assert_eq!((err.code, err.reason.as_str()), (422, "Invalid"));
    let causes = err.details.unwrap().causes;
    assert_eq!(causes[0].field, "metadata.name");

    let mut unnamed = fixtures::pvc("ns1", "x");
    unnamed.metadata.name = None;
    let err = api_error(
        pvcs.create(&PostParams::default(), &unnamed)
            .await
            .unwrap_err(),
    );
    assert_eq!(err.code, 422);
    assert_eq!(err.details.unwrap().causes[0].reason, "FieldValueRequired");
}

#[tokio::test]
async fn generate_name_produces_distinct_names_with_the_prefix() {
    let sim = fixtures::sim();
    let pvcs: Api<PersistentVolumeClaim> = Api::namespaced(sim.client(), "ns1");
    let mut obj = fixtures::pvc("ns1", "x");
    obj.metadata.name = None;
    obj.metadata.generate_name = Some("snap-".into());
    let a = pvcs.create(&PostParams::default(), &obj).await.unwrap();
    let b = pvcs.create(&PostParams::default(), &obj).await.unwrap();
    let (a, b) = (a.metadata.name.unwrap(), b.metadata.name.unwrap());
    assert!(a.starts_with("snap-") && a.len() == 10, "{a}");
    assert_ne!(a, b);
}

#[tokio::test]
async fn replace_with_a_stale_resource_version_is_409_conflict() {
    let sim = fixtures::sim();
    let cms: Api<ConfigMap> = Api::namespaced(sim.client(), "ns1");
    let mut cm = ConfigMap::default();
    cm.metadata.name = Some("cfg".into());
    let first = cms.create(&PostParams::default(), &cm).await.unwrap();
    let mut fresh = first.clone();
    fresh.data = Some([("k".to_string(), "v1".to_string())].into());
    let updated = cms
        .replace("cfg", &PostParams::default(), &fresh)
        .await
        .unwrap();
    assert_ne!(
        updated.metadata.resource_version,
        first.metadata.resource_version
    );

    let mut stale = first;
    stale.data = Some([("k".to_string(), "v2".to_string())].into());
    let err = api_error(
        cms.replace("cfg", &PostParams::default(), &stale)
            .await
            .unwrap_err(),
    );
    assert_eq!((err.code, err.reason.as_str()), (409, "Conflict"));
    assert_eq!(cms.get("cfg").await.unwrap().data.unwrap()["k"], "v1");
}

#[tokio::test]
async fn merge_json_and_strategic_patches_change_the_object_and_bump_generation_only_for_spec() {
    let sim = fixtures::sim();
    // A Job: it has a generation (a PVC has none) and a mutable spec field (parallelism).
    let jobs: Api<Job> = Api::namespaced(sim.client(), "ns1");
    let created = jobs
        .create(&PostParams::default(), &fixtures::job("ns1", "j", 1))
        .await
        .unwrap();
    assert_eq!(created.metadata.generation, Some(1));

    let p = jobs
        .patch(
            "j",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"annotations": {"a": "1"}}})),
        )
        .await
        .unwrap();
    assert_eq!(p.metadata.annotations.unwrap()["a"], "1");
    assert_eq!(
        p.metadata.generation,
        Some(1),
        "metadata changes keep the generation"
    );

    let ops: json_patch::Patch = serde_json::from_value(json!([
        {"op": "add", "path": "/metadata/labels", "value": {"extra": "yes"}},
        {"op": "replace", "path": "/spec/parallelism", "value": 0},
    ]))
    .unwrap();
    let p = jobs
        .patch("j", &PatchParams::default(), &Patch::<()>::Json(ops))
        .await
        .unwrap();
    assert_eq!(p.metadata.labels.unwrap()["extra"], "yes");
    assert_eq!(
        p.metadata.generation,
        Some(2),
        "spec changes bump the generation"
    );

    let p = jobs
        .patch(
            "j",
            &PatchParams::default(),
            &Patch::Strategic(json!({"metadata": {"labels": {"s": "1"}}})),
        )
        .await
        .unwrap();
    assert_eq!(p.metadata.labels.unwrap()["s"], "1");

    let bad: json_patch::Patch =
        serde_json::from_value(json!([{"op": "remove", "path": "/metadata/nothing"}])).unwrap();
    let err = api_error(
        jobs.patch("j", &PatchParams::default(), &Patch::<()>::Json(bad))
            .await
            .unwrap_err(),
    );
    assert_eq!(err.code, 422);
}

#[tokio::test]
async fn server_side_apply_creates_then_merges_and_records_managed_fields() {
    let sim = fixtures::sim();
    let pvcs: Api<PersistentVolumeClaim> = Api::namespaced(sim.client(), "ns1");
    let pp = PatchParams::apply("snapgate-agent").force();
    let created = pvcs
        .patch("data", &pp, &Patch::Apply(fixtures::pvc("ns1", "data")))
        .await
        .unwrap();
    assert!(created.metadata.uid.is_some());
    let merged = pvcs
        .patch(
            "data",
            &PatchParams::apply("other"),
            &Patch::Apply(json!({
                "apiVersion": "v1", "kind": "PersistentVolumeClaim",
                "metadata": {"name": "data", "labels": {"owner": "other"}},
            })),
        )
        .await
        .unwrap();
    let labels = merged.metadata.labels.unwrap();
    assert_eq!(labels["owner"], "other");
    assert_eq!(
        labels["app"], "demo",
        "apply merges into the existing object"
    );
    let managers: Vec<String> = merged
        .metadata
        .managed_fields
        .unwrap()
        .into_iter()
        .filter(|m| m.operation.as_deref() == Some("Apply"))
        .filter_map(|m| m.manager)
        .collect();
    assert_eq!(managers, ["snapgate-agent", "other"]);
}

#[tokio::test]
async fn server_side_apply_without_a_field_manager_is_422() {
    let sim = fixtures::sim();
    let res = resources::find_plural("", "configmaps").unwrap();
    let err = sim
        .store()
        .patch(
            res,
            Some("ns1"),
            "cfg",
            snapgate_kube_sim::store::PatchType::Apply,
            &json!({"metadata": {"name": "cfg"}}),
            false,
            &Default::default(),
        )
        .unwrap_err();
    assert_eq!(err.code, 422);
}

#[tokio::test]
async fn status_subresource_writes_only_status_and_main_writes_ignore_status() {
    let sim = fixtures::sim();
    sim.controllers()
        .default_pvc_behaviour(snapgate_kube_sim::PvcBehaviour::NeverBind);
    let pvcs: Api<PersistentVolumeClaim> = Api::namespaced(sim.client(), "ns1");
    let mut obj = fixtures::pvc("ns1", "data");
    obj.status = Some(serde_json::from_value(json!({"phase": "Lost"})).unwrap());
    let created = pvcs.create(&PostParams::default(), &obj).await.unwrap();
    assert_eq!(
        created.status.unwrap().phase.as_deref(),
        Some("Pending"),
        "create drops status"
    );

    let p = pvcs
        .patch(
            "data",
            &PatchParams::default(),
            &Patch::Merge(
                json!({"status": {"phase": "Bound"}, "metadata": {"labels": {"x": "1"}}}),
            ),
        )
        .await
        .unwrap();
    assert_eq!(
        p.status.unwrap().phase.as_deref(),
        Some("Pending"),
        "main patch ignores status"
    );
    assert_eq!(p.metadata.labels.unwrap()["x"], "1");

    let p = pvcs
        .patch_status(
            "data",
            &PatchParams::default(),
            &Patch::Merge(
                json!({"status": {"phase": "Bound"}, "metadata": {"labels": {"y": "1"}}}),
            ),
        )
        .await
        .unwrap();
    assert_eq!(p.status.as_ref().unwrap().phase.as_deref(), Some("Bound"));
    assert!(
        !p.metadata.labels.as_ref().unwrap().contains_key("y"),
        "status patch ignores metadata"
    );

    let mut whole = p.clone();
    whole.status.as_mut().unwrap().phase = Some("Lost".into());
    let r = pvcs
        .replace_status("data", &PostParams::default(), &whole)
        .await
        .unwrap();
    assert_eq!(r.status.unwrap().phase.as_deref(), Some("Lost"));
    let got = pvcs.get_status("data").await.unwrap();
    assert_eq!(got.status.unwrap().phase.as_deref(), Some("Lost"));
}

#[tokio::test]
async fn deleting_an_owner_garbage_collects_dependents_unless_orphaned() {
    let sim = fixtures::sim();
    let cms: Api<ConfigMap> = Api::namespaced(sim.client(), "ns1");
    let mk = |name: &str, owner: Option<&ConfigMap>| {
        let mut cm = ConfigMap::default();
        cm.metadata.name = Some(name.into());
        if let Some(o) = owner {
            cm.metadata.owner_references = Some(vec![
                serde_json::from_value(json!({
                    "apiVersion": "v1", "kind": "ConfigMap",
                    "name": o.metadata.name, "uid": o.metadata.uid, "controller": true,
                }))
                .unwrap(),
            ]);
        }
        cm
    };
    let owner = cms
        .create(&PostParams::default(), &mk("owner", None))
        .await
        .unwrap();
    let child = cms
        .create(&PostParams::default(), &mk("child", Some(&owner)))
        .await
        .unwrap();
    cms.create(&PostParams::default(), &mk("grandchild", Some(&child)))
        .await
        .unwrap();
    cms.create(&PostParams::default(), &mk("unrelated", None))
        .await
        .unwrap();
    let deleted = cms
        .delete("owner", &DeleteParams::background())
        .await
        .unwrap();
    let status = deleted
        .right()
        .expect("a deletion done at once is answered with a Status");
    assert_eq!(
        status.details.map(|d| (d.name, d.kind, d.uid)),
        Some((
            "owner".to_owned(),
            "configmaps".to_owned(),
            owner.metadata.uid.clone().unwrap()
        ))
    );
    let names: Vec<String> = cms
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter_map(|c| c.metadata.name)
        .collect();
    assert_eq!(names, ["unrelated"]);

    let owner = cms
        .create(&PostParams::default(), &mk("owner2", None))
        .await
        .unwrap();
    cms.create(&PostParams::default(), &mk("kept", Some(&owner)))
        .await
        .unwrap();
    cms.delete("owner2", &DeleteParams::orphan()).await.unwrap();
    let kept = cms.get("kept").await.unwrap();
    assert!(
        kept.metadata
            .owner_references
            .unwrap_or_default()
            .is_empty()
    );
}

#[tokio::test]
async fn delete_preconditions_on_uid_and_resource_version_give_409() {
    let sim = fixtures::sim();
    let pvcs: Api<PersistentVolumeClaim> = Api::namespaced(sim.client(), "ns1");
    pvcs.create(&PostParams::default(), &fixtures::pvc("ns1", "data"))
        .await
        .unwrap();
    let dp = DeleteParams {
        preconditions: Some(Preconditions {
            uid: Some("wrong".into()),
            resource_version: None,
        }),
        ..DeleteParams::default()
    };
    let err = api_error(pvcs.delete("data", &dp).await.unwrap_err());
    assert_eq!((err.code, err.reason.as_str()), (409, "Conflict"));
    let dp = DeleteParams {
        preconditions: Some(Preconditions {
            uid: None,
            resource_version: Some("1".into()),
        }),
        ..DeleteParams::default()
    };
    assert_eq!(
        api_error(pvcs.delete("data", &dp).await.unwrap_err()).code,
        409
    );
    assert!(pvcs.get_opt("data").await.unwrap().is_some());
}

#[tokio::test]
async fn finalizers_delay_deletion_until_removed() {
    let sim = fixtures::sim();
    let cms: Api<ConfigMap> = Api::namespaced(sim.client(), "ns1");
    let mut cm = ConfigMap::default();
    cm.metadata.name = Some("guarded".into());
    cm.metadata.finalizers = Some(vec!["snapgate.io/protect".into()]);
    cms.create(&PostParams::default(), &cm).await.unwrap();
    cms.delete("guarded", &DeleteParams::default())
        .await
        .unwrap();
    let marked = cms.get("guarded").await.unwrap();
    assert!(marked.metadata.deletion_timestamp.is_some());
    cms.patch(
        "guarded",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"finalizers": null}})),
    )
    .await
    .unwrap();
    assert!(cms.get_opt("guarded").await.unwrap().is_none());
}

#[tokio::test]
async fn label_selectors_field_selectors_and_pagination_filter_lists() {
    let sim = fixtures::sim();
    let client = sim.client();
    for (ns, name, labels) in [
        ("a", "p1", json!({"app": "x", "tier": "db"})),
        ("a", "p2", json!({"app": "y"})),
        ("a", "p3", json!({"app": "z", "tier": "web"})),
        ("b", "p4", json!({"app": "x"})),
        ("b", "p5", json!({})),
    ] {
        let api: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), ns);
        let mut obj = fixtures::pvc(ns, name);
        obj.metadata.labels = Some(serde_json::from_value(labels).unwrap());
        api.create(&PostParams::default(), &obj).await.unwrap();
    }
    let all: Api<PersistentVolumeClaim> = Api::all(client.clone());
    let names = |l: kube::core::ObjectList<PersistentVolumeClaim>| -> Vec<String> {
        l.items
            .into_iter()
            .filter_map(|p| p.metadata.name)
            .collect()
    };
    let q = |s: &str| ListParams::default().labels(s);
    assert_eq!(names(all.list(&q("app=x")).await.unwrap()), ["p1", "p4"]);
    assert_eq!(
        names(all.list(&q("app!=x")).await.unwrap()),
        ["p2", "p3", "p5"]
    );
    assert_eq!(
        names(all.list(&q("app in (y,z)")).await.unwrap()),
        ["p2", "p3"]
    );
    assert_eq!(
        names(all.list(&q("app notin (x)")).await.unwrap()),
        ["p2", "p3", "p5"]
    );
    assert_eq!(names(all.list(&q("tier")).await.unwrap()), ["p1", "p3"]);
    assert_eq!(
        names(all.list(&q("!tier,app")).await.unwrap()),
        ["p2", "p4"]
    );
    let fs = ListParams::default().fields("metadata.name=p3");
    assert_eq!(names(all.list(&fs).await.unwrap()), ["p3"]);
    let fs = ListParams::default().fields("metadata.namespace=b");
    assert_eq!(names(all.list(&fs).await.unwrap()), ["p4", "p5"]);
    let in_a: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), "a");
    assert_eq!(
        names(in_a.list(&ListParams::default()).await.unwrap()),
        ["p1", "p2", "p3"]
    );

    let mut seen = Vec::new();
    let mut lp = ListParams::default().limit(2);
    let mut pages = 0;
    let mut first_rv = None;
    loop {
        let page = all.list(&lp).await.unwrap();
        pages += 1;
        first_rv.get_or_insert(page.metadata.resource_version.clone());
        assert_eq!(
            Some(page.metadata.resource_version.clone()),
            first_rv,
            "pages share the list rv"
        );
        seen.extend(page.items.into_iter().filter_map(|p| p.metadata.name));
        if pages == 1 {
            // A write between pages moves the global resourceVersion on; the later pages must
            // still report the list's.
            let in_b: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), "b");
            in_b.create(&PostParams::default(), &fixtures::pvc("b", "p6"))
                .await
                .unwrap();
        }
        match page.metadata.continue_ {
            Some(c) if !c.is_empty() => lp = lp.continue_token(&c),
            _ => break,
        }
    }
    // Unlike a real API server, later pages are not a snapshot as of the list: an object
    // created mid-way (p6) is included. Nothing in snapgate pages through lists that change.
    assert_eq!(pages, 3);
    assert_eq!(seen, ["p1", "p2", "p3", "p4", "p5", "p6"]);
}

#[tokio::test]
async fn every_simulated_resource_supports_create_get_list_and_delete() {
    let sim = fixtures::sim();
    let client = sim.client();
    // Reviews are answered, never stored (faults_and_rbac.rs tests them).
    for def in resources::all().iter().filter(|d| !d.review) {
        let ar = ApiResource {
            group: def.group.into(),
            version: def.version.into(),
            api_version: def.api_version(),
            kind: def.kind.into(),
            plural: def.plural.into(),
        };
        let api: Api<DynamicObject> = if def.namespaced {
            Api::namespaced_with(client.clone(), "roundtrip", &ar)
        } else {
            Api::all_with(client.clone(), &ar)
        };
        let name = format!("rt-{}", def.singular);
        let mut obj = DynamicObject::new(&name, &ar);
        // What each kind requires to be valid.
        obj.data = match def.plural {
            "persistentvolumeclaims" => json!({"spec": {"accessModes": ["ReadWriteOnce"],
                "resources": {"requests": {"storage": "1Gi"}}}}),
            "jobs" => json!({"spec": {"template": {"spec": {"restartPolicy": "Never",
                "containers": [{"name": "c", "image": "busybox"}]}}}}),
            "rolebindings" | "clusterrolebindings" => json!({"roleRef": {
                "apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "x"}}),
            "storageclasses" => json!({"provisioner": "example.com/x"}),
            "events" if def.group.is_empty() => {
                json!({"involvedObject": {"kind": "Pod", "name": "p"}})
            }
            "events" => json!({"eventTime": "2026-01-01T00:00:00.000000Z"}),
            _ => json!({}),
        };
        let created = api
            .create(&PostParams::default(), &obj)
            .await
            .unwrap_or_else(|e| panic!("{}: {e}", def.plural));
        assert_eq!(created.types.as_ref().unwrap().kind, def.kind);
        assert_eq!(
            api.get(&name).await.unwrap().metadata.uid,
            created.metadata.uid
        );
        let listed = api
            .list(&ListParams::default().fields(&format!("metadata.name={name}")))
            .await
            .unwrap();
        assert_eq!(listed.items.len(), 1, "{}", def.plural);
        api.delete(&name, &DeleteParams::default()).await.unwrap();
        // A PVC goes once PVC protection saw that no pod uses it.
        fixtures::eventually(std::time::Duration::from_secs(5), || async {
            api.get_opt(&name).await.unwrap().is_none().then_some(())
        })
        .await;
    }
}

#[tokio::test]
async fn resource_versions_form_one_increasing_sequence_across_resources() {
    let sim = fixtures::sim();
    let client = sim.client();
    let pvcs: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), "ns1");
    let cms: Api<ConfigMap> = Api::namespaced(client, "ns1");
    let a = pvcs
        .create(&PostParams::default(), &fixtures::pvc("ns1", "a"))
        .await
        .unwrap();
    let mut cm = ConfigMap::default();
    cm.metadata.name = Some("b".into());
    let b = cms.create(&PostParams::default(), &cm).await.unwrap();
    let rv = |m: &kube::core::ObjectMeta| {
        m.resource_version
            .as_deref()
            .unwrap()
            .parse::<u64>()
            .unwrap()
    };
    assert!(rv(&b.metadata) > rv(&a.metadata));
}

#[tokio::test]
async fn kube_discovery_finds_core_batch_and_snapshot_resources() {
    let sim = fixtures::sim();
    let discovery = Discovery::new(sim.client()).run().await.unwrap();
    let groups: Vec<String> = discovery.groups().map(|g| g.name().to_string()).collect();
    for g in [
        "",
        "batch",
        "snapshot.storage.k8s.io",
        "rbac.authorization.k8s.io",
    ] {
        assert!(
            groups.iter().any(|x| x == g),
            "missing group {g:?} in {groups:?}"
        );
    }
    let snap = discovery
        .groups()
        .find(|g| g.name() == "snapshot.storage.k8s.io")
        .unwrap()
        .recommended_kind("VolumeSnapshot")
        .unwrap();
    assert_eq!(snap.0.plural, "volumesnapshots");
    assert!(snap.1.subresources.iter().any(|s| s.0.plural == "status"));
    let info = sim.client().apiserver_version().await.unwrap();
    assert_eq!(info.major, "1");
}

#[tokio::test]
async fn delete_collection_removes_matching_objects() {
    let sim = fixtures::sim();
    let pvcs: Api<PersistentVolumeClaim> = Api::namespaced(sim.client(), "ns1");
    for n in ["a", "b"] {
        pvcs.create(&PostParams::default(), &fixtures::pvc("ns1", n))
            .await
            .unwrap();
    }
    let mut other = fixtures::pvc("ns1", "c");
    other.metadata.labels = None;
    pvcs.create(&PostParams::default(), &other).await.unwrap();
    pvcs.delete_collection(
        &DeleteParams::default(),
        &ListParams::default().labels("app=demo"),
    )
    .await
    .unwrap();
    let left: Vec<String> = pvcs
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter_map(|p| p.metadata.name)
        .collect();
    assert_eq!(left, ["c"]);
}
