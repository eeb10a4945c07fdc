//! Watches: `kube::runtime::watcher` and raw `Api::watch` against the simulator.

mod fixtures;

use std::time::Duration;

use futures::{Stream, StreamExt};
use k8s_openapi::api::core::v1::{ConfigMap, PersistentVolumeClaim};
use kube::api::{
    Api, ApiResource, DeleteParams, DynamicObject, GroupVersionKind, Patch, PatchParams,
    PostParams, WatchEvent, WatchParams,
};
use kube::runtime::watcher::{self, Event};
use serde_json::json;
use snapgate_kube_sim::{JobBehaviour, KubeSim, PvcBehaviour, SnapshotBehaviour, Verb};

type DynEvent = Result<Event<DynamicObject>, watcher::Error>;

async fn next_event<S: Stream<Item = DynEvent> + Unpin>(s: &mut S) -> Event<DynamicObject> {
    tokio::time::timeout(Duration::from_secs(10), s.next())
        .await
        .expect("watcher event in time")
        .expect("stream open")
        .expect("no watcher error")
}

/// Skip events until one satisfies `pred`.
async fn until<S: Stream<Item = DynEvent> + Unpin>(
    s: &mut S,
    pred: impl Fn(&Event<DynamicObject>) -> bool,
) {
    loop {
        let e = next_event(s).await;
        if pred(&e) {
            return;
        }
    }
}

fn named(e: &Event<DynamicObject>, name: &str) -> Option<&'static str> {
    match e {
        Event::Apply(o) if o.metadata.name.as_deref() == Some(name) => Some("apply"),
        Event::Delete(o) if o.metadata.name.as_deref() == Some(name) => Some("delete"),
        _ => None,
    }
}

async fn watcher_sees_lifecycle(sim: &KubeSim, ar: ApiResource, data: serde_json::Value) {
    let api: Api<DynamicObject> = Api::namespaced_with(sim.client(), "w", &ar);
    let mut stream = watcher::watcher(api.clone(), watcher::Config::default()).boxed();
    until(&mut stream, |e| matches!(e, Event::InitDone)).await;

    let mut obj = DynamicObject::new("obj", &ar).within("w");
    obj.data = data;
    api.create(&PostParams::default(), &obj).await.unwrap();
    until(&mut stream, |e| named(e, "obj") == Some("apply")).await;

    api.patch(
        "obj",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"labels": {"seen": "yes"}}})),
    )
    .await
    .unwrap();
    until(&mut stream, |e| {
        matches!(e, Event::Apply(o) if o.metadata.labels.as_ref().is_some_and(|l| l.contains_key("seen")))
    })
    .await;

    api.delete("obj", &DeleteParams::default()).await.unwrap();
    until(&mut stream, |e| named(e, "obj") == Some("delete")).await;
}

fn ar(group: &str, version: &str, kind: &str, plural: &str) -> ApiResource {
    ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk(group, version, kind), plural)
}

#[tokio::test]
async fn watcher_sees_added_modified_and_deleted_pvcs() {
    let sim = fixtures::sim();
    sim.controllers()
        .default_pvc_behaviour(PvcBehaviour::NeverBind);
    let spec = json!({"spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}}});
    watcher_sees_lifecycle(
        &sim,
        ar("", "v1", "PersistentVolumeClaim", "persistentvolumeclaims"),
        spec,
    )
    .await;
}

#[tokio::test]
async fn watcher_sees_added_modified_and_deleted_volume_snapshots() {
    let sim = fixtures::sim();
    sim.controllers()
        .default_snapshot_behaviour(SnapshotBehaviour::NeverReady);
    let spec = json!({"spec": {"source": {"persistentVolumeClaimName": "data"}}});
    watcher_sees_lifecycle(&sim, fixtures::snapshot_resource(), spec).await;
}

#[tokio::test]
async fn watcher_sees_added_modified_and_deleted_jobs() {
    let sim = fixtures::sim();
    sim.controllers()
        .default_job_behaviour(JobBehaviour::hang());
    let spec = json!({"spec": {"parallelism": 0, "template": {"spec": {"restartPolicy": "Never", "containers": [{"name": "c", "image": "busybox"}]}}}});
    watcher_sees_lifecycle(&sim, ar("batch", "v1", "Job", "jobs"), spec).await;
}

#[tokio::test]
async fn watcher_sees_added_modified_and_deleted_pods() {
    let sim = fixtures::sim();
    let spec = json!({"spec": {"containers": [{"name": "c", "image": "busybox"}]}});
    watcher_sees_lifecycle(&sim, ar("", "v1", "Pod", "pods"), spec).await;
}

#[tokio::test]
async fn a_watch_resumes_after_a_resource_version_and_replays_later_changes() {
    let sim = fixtures::sim();
    let cms: Api<ConfigMap> = Api::namespaced(sim.client(), "w");
    let mk = |n: &str| {
        let mut c = ConfigMap::default();
        c.metadata.name = Some(n.into());
        c
    };
    let a = cms.create(&PostParams::default(), &mk("a")).await.unwrap();
    let rv = a.metadata.resource_version.unwrap();
    cms.create(&PostParams::default(), &mk("b")).await.unwrap();
    cms.patch(
        "a",
        &PatchParams::default(),
        &Patch::Merge(json!({"data": {"k": "v"}})),
    )
    .await
    .unwrap();
    cms.delete("b", &DeleteParams::default()).await.unwrap();

    let mut stream = cms
        .watch(&WatchParams::default().timeout(5), &rv)
        .await
        .unwrap()
        .boxed();
    let mut seen = Vec::new();
    for _ in 0..3 {
        let ev = tokio::time::timeout(Duration::from_secs(5), stream.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        seen.push(match ev {
            WatchEvent::Added(c) => format!("ADDED {}", c.metadata.name.unwrap()),
            WatchEvent::Modified(c) => format!("MODIFIED {}", c.metadata.name.unwrap()),
            WatchEvent::Deleted(c) => format!("DELETED {}", c.metadata.name.unwrap()),
            other => format!("{other:?}"),
        });
    }
    assert_eq!(seen, ["ADDED b", "MODIFIED a", "DELETED b"]);
}

#[tokio::test]
async fn a_too_old_resource_version_gives_a_410_expired_error_event() {
    let sim = fixtures::sim();
    let cms: Api<ConfigMap> = Api::namespaced(sim.client(), "w");
    let mut c = ConfigMap::default();
    c.metadata.name = Some("a".into());
    let a = cms.create(&PostParams::default(), &c).await.unwrap();
    c.metadata.name = Some("b".into());
    cms.create(&PostParams::default(), &c).await.unwrap();
    sim.store().compact();
    let mut stream = cms
        .watch(
            &WatchParams::default(),
            a.metadata.resource_version.as_deref().unwrap(),
        )
        .await
        .unwrap()
        .boxed();
    match stream.next().await.unwrap().unwrap() {
        WatchEvent::Error(status) => {
            assert_eq!(status.code, 410);
            assert_eq!(status.reason, "Expired");
        }
        other => panic!("expected a 410 error event, got {other:?}"),
    }
}

#[tokio::test]
async fn a_bounded_history_expires_old_resource_versions() {
    let sim = fixtures::sim();
    sim.store().set_history_limit(2);
    let cms: Api<ConfigMap> = Api::namespaced(sim.client(), "w");
    let mut c = ConfigMap::default();
    let mut rvs = Vec::new();
    for n in ["a", "b", "c", "d"] {
        c.metadata.name = Some(n.into());
        rvs.push(
            cms.create(&PostParams::default(), &c)
                .await
                .unwrap()
                .metadata
                .resource_version
                .unwrap(),
        );
    }
    let first = |rv: String| {
        let cms = cms.clone();
        async move {
            let mut s = cms
                .watch(&WatchParams::default().timeout(1), &rv)
                .await
                .unwrap()
                .boxed();
            s.next().await.unwrap().unwrap()
        }
    };
    assert!(matches!(first(rvs[0].clone()).await, WatchEvent::Error(s) if s.code == 410));
    assert!(
        matches!(first(rvs[2].clone()).await, WatchEvent::Added(c) if c.metadata.name.as_deref() == Some("d"))
    );
}

type PvcStream =
    futures::stream::BoxStream<'static, Result<Event<PersistentVolumeClaim>, watcher::Error>>;

async fn next(s: &mut PvcStream) -> Result<Event<PersistentVolumeClaim>, watcher::Error> {
    tokio::time::timeout(Duration::from_secs(30), s.next())
        .await
        .unwrap()
        .unwrap()
}

#[tokio::test(start_paused = true)]
async fn the_watcher_relists_after_a_410_and_recovers() {
    let sim = fixtures::sim();
    sim.controllers()
        .default_pvc_behaviour(PvcBehaviour::NeverBind);
    let pvcs: Api<PersistentVolumeClaim> = Api::namespaced(sim.client(), "w");
    let cms: Api<ConfigMap> = Api::namespaced(sim.client(), "w");
    let mut stream = watcher::watcher(pvcs.clone(), watcher::Config::default().timeout(1)).boxed();
    assert!(matches!(next(&mut stream).await, Ok(Event::Init)));
    assert!(matches!(next(&mut stream).await, Ok(Event::InitDone)));
    pvcs.create(&PostParams::default(), &fixtures::pvc("w", "a"))
        .await
        .unwrap();
    assert!(
        matches!(next(&mut stream).await, Ok(Event::Apply(p)) if p.metadata.name.as_deref() == Some("a"))
    );
    // changes the watcher has not seen, then compaction: its resume rv is now too old
    let mut c = ConfigMap::default();
    c.metadata.name = Some("noise".into());
    cms.create(&PostParams::default(), &c).await.unwrap();
    sim.store().compact();
    let lists_before = sim
        .requests()
        .count_verb(Verb::List, "persistentvolumeclaims");

    // the watch times out after 1s; the re-watch gets 410 and the watcher re-lists
    let mut saw_gone = false;
    loop {
        match next(&mut stream).await {
            Err(watcher::Error::WatchError(s)) if s.code == 410 => saw_gone = true,
            Ok(Event::InitApply(p)) => assert_eq!(p.metadata.name.as_deref(), Some("a")),
            Ok(Event::InitDone) => break,
            Ok(Event::Init) => {}
            other => panic!("unexpected {other:?}"),
        }
    }
    assert!(saw_gone, "the watcher saw 410 Gone");
    assert_eq!(
        sim.requests()
            .count_verb(Verb::List, "persistentvolumeclaims"),
        lists_before + 1
    );
    // and it keeps working
    pvcs.create(&PostParams::default(), &fixtures::pvc("w", "b"))
        .await
        .unwrap();
    assert!(
        matches!(next(&mut stream).await, Ok(Event::Apply(p)) if p.metadata.name.as_deref() == Some("b"))
    );
}

#[tokio::test]
async fn label_selected_watches_turn_selector_transitions_into_added_and_deleted() {
    let sim = fixtures::sim();
    let cms: Api<ConfigMap> = Api::namespaced(sim.client(), "w");
    let mut c = ConfigMap::default();
    c.metadata.name = Some("a".into());
    let created = cms.create(&PostParams::default(), &c).await.unwrap();
    let mut stream = cms
        .watch(
            &WatchParams::default().labels("pick=yes").timeout(5),
            created.metadata.resource_version.as_deref().unwrap(),
        )
        .await
        .unwrap()
        .boxed();
    for v in ["yes", "no"] {
        cms.patch(
            "a",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"labels": {"pick": v}}})),
        )
        .await
        .unwrap();
    }
    assert!(matches!(
        stream.next().await.unwrap().unwrap(),
        WatchEvent::Added(_)
    ));
    assert!(matches!(
        stream.next().await.unwrap().unwrap(),
        WatchEvent::Deleted(_)
    ));
}

#[tokio::test]
async fn streaming_list_watches_end_the_initial_events_with_a_bookmark() {
    let sim = fixtures::sim();
    sim.controllers()
        .default_pvc_behaviour(PvcBehaviour::NeverBind);
    let pvcs: Api<PersistentVolumeClaim> = Api::namespaced(sim.client(), "w");
    pvcs.create(&PostParams::default(), &fixtures::pvc("w", "a"))
        .await
        .unwrap();
    let cfg = watcher::Config::default().streaming_lists();
    let mut stream = watcher::watcher(pvcs, cfg).boxed();
    let mut events = Vec::new();
    loop {
        let e = tokio::time::timeout(Duration::from_secs(5), stream.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        let done = matches!(e, Event::InitDone);
        events.push(match e {
            Event::Init => "init".to_string(),
            Event::InitApply(p) => format!("init-apply {}", p.metadata.name.unwrap()),
            Event::InitDone => "done".to_string(),
            other => format!("{other:?}"),
        });
        if done {
            break;
        }
    }
    assert_eq!(events, ["init", "init-apply a", "done"]);
}
