//! The differential suite: kube-sim held against the real API server. The same requests (the
//! agent's, built by agent-core as the agent sends them; the demo's; kubectl's) go to a
//! kube-sim served on loopback and to the cluster of `./scripts/cluster up`, and their
//! answers are compared modulo what `snapgate_cluster_tests::differential::IGNORED` lists.
//! Each case is one named entry of the table below; a failure names the case and every field
//! that differs. A case whose difference kube-sim does not model (its README's "Not
//! modelled") records that difference, which must stay exactly as recorded.
//!
//! `#[ignore]`d like the other cluster tests (`./scripts/test` runs them with a cluster up).

use std::{
    collections::{BTreeMap, BTreeSet},
    time::{Duration, Instant},
};

use k8s_openapi::api::{
    core::v1::{Namespace, PersistentVolumeClaim, Secret},
    rbac::v1::{ClusterRole, ClusterRoleBinding},
    storage::v1::StorageClass,
};
use kube::{
    Api,
    api::{DeleteParams, ListParams},
};
use serde_json::{Value, json};
use snapgate_agent_core::{
    MoverSpec,
    resources::{self, MoverImages, MoverJobInput, ResticActions},
};
use snapgate_cluster_tests::{
    ClusterEnv,
    differential::{Case, IGNORED, Req, Side, keep, run_cases},
};
use snapgate_kube_sim::{ADMIN_TOKEN, JobBehaviour, KubeSim, PvcBehaviour, SnapshotBehaviour};
use snapgate_proto::v1;

/// The bound of every wait for a controller (the real Job, PV-protection and garbage
/// collector controllers; kube-sim's).
const WAIT: Duration = Duration::from_secs(60);

/// The Job the agent makes for source `db` (restic).
const JOB: &str = "volsync-src-db";

/// Where a pod of this suite can never be scheduled: no node has the label, so the real
/// scheduler leaves the mover's pods Pending (a node the stand-in left behind never runs them)
/// and their deletion is immediate, as on kube-sim.
const NOWHERE: (&str, &str) = ("snapgate.io/differential", "nowhere");

fn get(path: &str) -> Req {
    Req::new("GET", path)
}

fn post(path: &str, body: Value) -> Req {
    Req::new("POST", path).json(body)
}

fn merge(path: &str, body: Value) -> Req {
    Req::new("PATCH", path).body("application/merge-patch+json", body.to_string())
}

fn strategic(path: &str, body: Value) -> Req {
    Req::new("PATCH", path).body("application/strategic-merge-patch+json", body.to_string())
}

fn json_patch(path: &str, body: Value) -> Req {
    Req::new("PATCH", path).body("application/json-patch+json", body.to_string())
}

fn apply(path: &str, body: Value) -> Req {
    Req::new("PATCH", path).body("application/apply-patch+yaml", body.to_string())
}

fn delete(path: &str) -> Req {
    Req::new("DELETE", path)
}

const CORE: &str = "/api/v1/namespaces/{ns}";
const BATCH: &str = "/apis/batch/v1/namespaces/{ns}";
const SNAP: &str = "/apis/snapshot.storage.k8s.io/v1/namespaces/{ns}";

/// Sends `req` until `done` says the answer is the awaited one, at most [`WAIT`]; the last
/// answer either way (so a side that never gets there shows what it has instead).
async fn poll(side: &Side, req: &Req, done: fn(&Value) -> bool) -> anyhow::Result<Value> {
    let deadline = Instant::now() + WAIT;
    loop {
        let answer = side.http(req).await?;
        if done(&answer) || Instant::now() >= deadline {
            return Ok(answer);
        }
        // The pause between two asks (a real API server, on the wall clock).
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn items(answer: &Value) -> Vec<Value> {
    answer["body"]["items"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

/// The code only (bodies that are each server's own: key sets, OpenAPI documents).
fn code_only(v: Value) -> Value {
    keep(&v, &["code", "exit"])
}

/// Without the object's `status` (what controllers write concurrently with the request).
fn without_status(mut v: Value) -> Value {
    if let Some(b) = v.get_mut("body").and_then(Value::as_object_mut) {
        b.remove("status");
    }
    v
}

/// Of a pod list: what the Job controller made each pod from (its labels, owner, containers,
/// restart policy and node selector). Not the rest: the real API server's admission fills in
/// a pod's service account token volume, tolerations, priority and more (not modelled), and
/// no kubelet runs either side's pods.
fn pods_projection(v: Value) -> Value {
    let pods: Vec<Value> = items(&v)
        .iter()
        .map(|p| {
            json!({
                "name": p["metadata"]["name"],
                "labels": p["metadata"]["labels"],
                "ownerReferences": p["metadata"]["ownerReferences"],
                "containers": p["spec"]["containers"].as_array().map(|cs| cs.iter().map(|c| keep(c, &["name", "image", "command", "args"])).collect::<Vec<_>>()),
                "restartPolicy": p["spec"]["restartPolicy"],
                "nodeSelector": p["spec"]["nodeSelector"],
                "terminating": p["metadata"]["deletionTimestamp"].is_string(),
            })
        })
        .collect();
    json!({"code": v["code"], "pods": pods})
}

/// Of an event list: the set of (object, reason, message, type, component), without counts
/// and times (a controller's retries repeat an event at their own pace).
fn events_projection(v: Value) -> Value {
    let set: BTreeSet<String> = items(&v)
        .iter()
        .map(|e| {
            json!({
                "object": format!("{}/{}", e["involvedObject"]["kind"].as_str().unwrap_or(""), e["involvedObject"]["name"].as_str().unwrap_or("")),
                "reason": e["reason"],
                "message": e["message"],
                "type": e["type"],
                "component": e["reportingComponent"],
            })
            .to_string()
        })
        .collect();
    let events: Vec<Value> = set
        .iter()
        .filter_map(|s| serde_json::from_str(s).ok())
        .collect();
    json!({"code": v["code"], "events": events})
}

/// A watch's events: their types and objects' names, and the status of an ERROR event with
/// the numbers in its message left out (resourceVersions).
fn watch_projection(v: Value) -> Value {
    let events: Vec<Value> = v["body"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .map(|e| {
            let mut obj = e["object"].clone();
            if let Some(m) = obj
                .get_mut("message")
                .and_then(|m| m.as_str().map(str::to_owned))
            {
                obj["message"] = json!(m.replace(|c: char| c.is_ascii_digit(), ""));
            }
            json!({"type": e["type"], "object": obj})
        })
        .collect();
    json!({"code": v["code"], "events": events})
}

/// The source PVC as the demo (and the cluster tests) make it, with the suite's class.
fn data_pvc(class: Option<&str>) -> Value {
    let mut pvc = json!({
        "apiVersion": "v1", "kind": "PersistentVolumeClaim",
        "metadata": {"name": "data", "annotations": {"volsync.backube/use-copy-trigger": ""}},
        "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}},
    });
    if let Some(c) = class {
        pvc["spec"]["storageClassName"] = json!(c);
    }
    pvc
}

/// The agent's objects for run `run-1` of source `db` (restic, Snapshot), as agent-core
/// builds them: the VolumeSnapshot, the PVC restored from it, the clone PVC (Clone), the
/// restic cache PVC and the mover Job.
struct AgentObjects {
    snapshot: Value,
    restored: Value,
    clone: Value,
    cache: Value,
    job: Value,
}

fn agent_objects(ns: &str, class: &str) -> AgentObjects {
    let run = resources::RunRef {
        namespace: ns,
        source: "db",
        run_id: "run-1",
    };
    let restic = v1::ReplicationSourceResticSpec {
        copy_method: v1::CopyMethod::Snapshot as i32,
        repository: "restic-config".into(),
        storage_class_name: Some(class.into()),
        cache_storage_class_name: Some(class.into()),
        ..Default::default()
    };
    let spec = MoverSpec::Restic(&restic);
    let source: PersistentVolumeClaim = serde_json::from_value(data_pvc(Some(class))).unwrap();
    let snapshot = resources::volume_snapshot(&run, spec, "data");
    let restored = resources::pvc_from_snapshot(&run, spec, &source, &snapshot).unwrap();
    let clone = resources::clone_pvc(&run, spec, &source).unwrap();
    let cache = resources::restic_cache_pvc(ns, "db", &restic, &restored).unwrap();
    let keys: BTreeSet<String> = ["RESTIC_PASSWORD", "RESTIC_REPOSITORY"]
        .into_iter()
        .map(str::to_owned)
        .collect();
    let mut job = resources::mover_job(&MoverJobInput {
        run,
        spec,
        paused: false,
        data_pvc: &restored,
        privileged_movers: false,
        images: &MoverImages::default(),
        proxy: &BTreeMap::new(),
        secret_keys: &keys,
        restic: ResticActions::default(),
        // The namespace's default ServiceAccount: the agent's own per-source one would have to
        // be made on both sides first.
        mover_account: None,
    })
    .unwrap();
    if let Some(pod) = job.spec.as_mut().and_then(|s| s.template.spec.as_mut()) {
        pod.node_selector = Some(BTreeMap::from([(NOWHERE.0.into(), NOWHERE.1.into())]));
    }
    // The agent's VolumeSnapshot type is read-only (Deserialize); written as kube-rs would.
    let snapshot = json!({
        "apiVersion": "snapshot.storage.k8s.io/v1", "kind": "VolumeSnapshot",
        "metadata": {"name": snapshot.metadata.name, "namespace": ns, "labels": snapshot.metadata.labels},
        "spec": {"source": {"persistentVolumeClaimName": "data"}},
    });
    let with_kind = |mut v: Value, api: &str, kind: &str| {
        v["apiVersion"] = json!(api);
        v["kind"] = json!(kind);
        v
    };
    AgentObjects {
        snapshot,
        restored: with_kind(
            serde_json::to_value(&restored).unwrap(),
            "v1",
            "PersistentVolumeClaim",
        ),
        clone: with_kind(
            serde_json::to_value(&clone).unwrap(),
            "v1",
            "PersistentVolumeClaim",
        ),
        cache: with_kind(
            serde_json::to_value(&cache).unwrap(),
            "v1",
            "PersistentVolumeClaim",
        ),
        job: with_kind(serde_json::to_value(&job).unwrap(), "batch/v1", "Job"),
    }
}

/// The agent's Event about PVC `data` (as agent-core's plan makes one).
fn agent_event(ns: &str) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Event",
        "metadata": {"name": "data.run-1.srcpvcwaitingforcopytrigger", "namespace": ns,
                     "labels": {"app.kubernetes.io/created-by": "snapgate", "snapgate.io/source": "db"}},
        "involvedObject": {"apiVersion": "v1", "kind": "PersistentVolumeClaim", "name": "data", "namespace": ns},
        "reason": "SrcPVCWaitingForCopyTrigger",
        "message": "waiting for a copy trigger",
        "type": "Normal",
        "count": 1,
        "firstTimestamp": "2026-01-01T00:00:00Z",
        "lastTimestamp": "2026-01-01T00:00:00Z",
        "eventTime": "2026-01-01T00:00:00.000000Z",
        "reportingComponent": "snapgate-agent",
        "reportingInstance": "snapgate-agent",
        "action": "SrcPVCWaitingForCopyTrigger",
        "source": {"component": "snapgate-agent"},
    })
}

/// The demo's objects as a manifest for `kubectl apply -f`: the restic Secret and the gated
/// PVC (with the suite's class).
fn demo_manifest(class: &str, image: &str) -> String {
    format!(
        "apiVersion: v1
kind: Secret
metadata:
  name: demo-restic
stringData:
  RESTIC_REPOSITORY: s3:http://minio:9000/demo
  RESTIC_PASSWORD: demo
---
apiVersion: v1
kind: PersistentVolumeClaim
metadata:
  name: demo-data
  annotations:
    volsync.backube/use-copy-trigger: \"\"
spec:
  storageClassName: {class}
  accessModes: [ReadWriteOnce]
  resources:
    requests:
      storage: 1Gi
---
apiVersion: v1
kind: Pod
metadata:
  name: demo-app
  labels: {{app: demo}}
spec:
  nodeSelector: {{{}: {}}}
  containers:
  - name: app
    image: {image}
    command: [sleep, infinity]
    env: [{{name: A, value: a}}]
  - name: sidecar
    image: busybox:1.36
    command: [sleep, infinity]
",
        NOWHERE.0, NOWHERE.1
    )
}

/// The whole table, in order: later cases read what earlier ones made.
fn cases(ns: &str, class: &str) -> Vec<Vec<Case>> {
    let agent = agent_objects(ns, class);
    let ns_path = "/api/v1/namespaces/{ns}";
    let job_pods = format!("{CORE}/pods?labelSelector=batch.kubernetes.io%2Fjob-name%3D{JOB}");
    let job_events = format!("{CORE}/events?fieldSelector=involvedObject.name%3D{JOB}");

    let basics = vec![
        Case::http(
            "POST namespace",
            post("/api/v1/namespaces", json!({"metadata": {"name": "{ns}"}})),
        ),
        Case::http(
            "GET namespace (the agent's privileged-movers check)",
            get(ns_path),
        ),
        Case::http(
            "POST configmap in a namespace that does not exist (404)",
            post(
                "/api/v1/namespaces/snapgate-diff-missing/configmaps",
                json!({"metadata": {"name": "c"}}),
            ),
        ),
        Case::http(
            "GET pvcs without credentials (401)",
            get(&format!("{CORE}/persistentvolumeclaims")).anonymous(),
        )
        .known(
            &["/code", "/body"],
            "kube-sim serves plain HTTP, over which kubectl sends no credentials: it takes a \
             request without any as system:anonymous, under RBAC (allowed everything while \
             RBAC is off, as in the demo; the suite binds it to everything); the cluster \
             runs with --anonymous-auth=false",
        ),
        // Secrets: the demo's and the cluster tests' restic Secret, read as the agent reads it.
        Case::http(
            "POST secret with stringData (the demo's restic Secret)",
            post(
                &format!("{CORE}/secrets"),
                json!({"metadata": {"name": "restic-config", "labels": {"diff": "secret"}},
                       "stringData": {"RESTIC_REPOSITORY": "s3:x", "RESTIC_PASSWORD": "x"}}),
            ),
        ),
        Case::http(
            "GET secret (the agent's secret_keys)",
            get(&format!("{CORE}/secrets/restic-config")),
        ),
        Case::http(
            "GET secret that does not exist (404)",
            get(&format!("{CORE}/secrets/missing")),
        ),
        Case::http(
            "POST secret that exists (409 AlreadyExists)",
            post(
                &format!("{CORE}/secrets"),
                json!({"metadata": {"name": "restic-config"}}),
            ),
        ),
        Case::http(
            "POST storageclass (the suite's, no provisioner)",
            post(
                "/apis/storage.k8s.io/v1/storageclasses",
                json!({"metadata": {"name": class}, "provisioner": "kubernetes.io/no-provisioner",
                       "volumeBindingMode": "WaitForFirstConsumer"}),
            ),
        ),
        // PVCs: the demo's, the agent's patches, errors.
        Case::http(
            "POST pvc without class, dry run (the demo's PVC; the default class)",
            post(
                &format!("{CORE}/persistentvolumeclaims?dryRun=All"),
                data_pvc(None),
            ),
        ),
        Case::http(
            "POST pvc data",
            post(
                &format!("{CORE}/persistentvolumeclaims"),
                data_pvc(Some(class)),
            ),
        ),
        Case::http(
            "POST pvc data again (409)",
            post(
                &format!("{CORE}/persistentvolumeclaims"),
                data_pvc(Some(class)),
            ),
        ),
        Case::http(
            "POST pvc without spec (422)",
            post(
                &format!("{CORE}/persistentvolumeclaims"),
                json!({"metadata": {"name": "nospec"}}),
            ),
        ),
        Case::http(
            "POST pvc with an unknown field (dropped)",
            post(&format!("{CORE}/persistentvolumeclaims?dryRun=All"), {
                let mut p = data_pvc(Some(class));
                p["spec"]["sizeOfTheMoon"] = json!("large");
                p
            }),
        ),
        Case::http(
            "POST pvc with an unknown field, fieldValidation=Strict (400)",
            post(
                &format!("{CORE}/persistentvolumeclaims?dryRun=All&fieldValidation=Strict"),
                {
                    let mut p = data_pvc(Some(class));
                    p["spec"]["sizeOfTheMoon"] = json!("large");
                    p
                },
            ),
        ),
        Case::http(
            "GET pvc data",
            get(&format!("{CORE}/persistentvolumeclaims/data")),
        ),
        Case::http(
            "PATCH pvc data, merge (the agent marks WaitingForTrigger)",
            merge(
                &format!("{CORE}/persistentvolumeclaims/data?fieldManager=snapgate-agent"),
                json!({"metadata": {"annotations": {
                    "volsync.backube/latest-copy-status": "WaitingForTrigger",
                    "volsync.backube/latest-copy-trigger-waiting-since": "2026-01-01T00:00:00Z"}}}),
            ),
        ),
        Case::http(
            "PATCH pvc data, JSON patch (add an annotation)",
            json_patch(
                &format!("{CORE}/persistentvolumeclaims/data"),
                json!([{"op": "add", "path": "/metadata/annotations/volsync.backube~1copy-trigger", "value": "t1"}]),
            ),
        ),
        Case::http(
            "PATCH pvc data, JSON patch whose test fails (422)",
            json_patch(
                &format!("{CORE}/persistentvolumeclaims/data"),
                json!([{"op": "test", "path": "/metadata/annotations/volsync.backube~1copy-trigger", "value": "other"}]),
            ),
        ),
        Case::http(
            "PATCH pvc data, strategic merge of finalizers (merged, not replaced)",
            strategic(
                &format!("{CORE}/persistentvolumeclaims/data"),
                json!({"metadata": {"finalizers": ["snapgate.io/diff"]}}),
            ),
        ),
        Case::http(
            "PATCH pvc data, strategic merge $deleteFromPrimitiveList",
            strategic(
                &format!("{CORE}/persistentvolumeclaims/data"),
                json!({"metadata": {"$deleteFromPrimitiveList/finalizers": ["snapgate.io/diff"]}}),
            ),
        ),
        Case::http(
            "PATCH pvc data accessModes (immutable: 422)",
            merge(
                &format!("{CORE}/persistentvolumeclaims/data"),
                json!({"spec": {"accessModes": ["ReadWriteMany"]}}),
            ),
        )
        .known(
            &["/body/message", "/body/details/causes/0/message"],
            "the API server appends a diff of its Go structs to the message",
        ),
        Case::new("PUT pvc data with a stale resourceVersion (409)", |s| {
            Box::pin(async move {
                let current = s
                    .http(&get(&format!("{CORE}/persistentvolumeclaims/data")))
                    .await?;
                let mut body = current["body"].clone();
                body["metadata"]["resourceVersion"] = json!("1");
                s.http(&Req::new("PUT", &format!("{CORE}/persistentvolumeclaims/data")).json(body))
                    .await
            })
        }),
        Case::http(
            "PATCH pvc that does not exist (404)",
            merge(
                &format!("{CORE}/persistentvolumeclaims/missing"),
                json!({"metadata": {"labels": {"a": "b"}}}),
            ),
        ),
        Case::http(
            "POST pvc in a namespace that does not exist (404)",
            post(
                "/api/v1/namespaces/snapgate-diff-missing/persistentvolumeclaims",
                data_pvc(Some(class)),
            ),
        ),
    ];

    let agent_cases = vec![
        Case::http(
            "POST volumesnapshot (the agent's)",
            post(&format!("{SNAP}/volumesnapshots"), agent.snapshot.clone()),
        )
        .project(without_status),
        Case::http(
            "LIST volumesnapshots by the agent's label (its watch's list)",
            get(&format!("{SNAP}/volumesnapshots?labelSelector=app.kubernetes.io%2Fcreated-by%3Dsnapgate")),
        )
        .project(|v| {
            let mut v = v;
            if let Some(items) = v["body"]["items"].as_array_mut() {
                for i in items {
                    i.as_object_mut().map(|o| o.remove("status"));
                }
            }
            v
        }),
        Case::http(
            "POST pvc restored from the snapshot (the agent's)",
            post(&format!("{CORE}/persistentvolumeclaims"), agent.restored.clone()),
        ),
        Case::http(
            "POST clone pvc, dry run (the agent's Clone copy)",
            post(&format!("{CORE}/persistentvolumeclaims?dryRun=All"), agent.clone.clone()),
        ),
        Case::http(
            "POST restic cache pvc (the agent's)",
            post(&format!("{CORE}/persistentvolumeclaims"), agent.cache.clone()),
        ),
        Case::http(
            "LIST pvcs",
            get(&format!("{CORE}/persistentvolumeclaims")),
        ),
        Case::http(
            "LIST pvcs by label",
            get(&format!("{CORE}/persistentvolumeclaims?labelSelector=snapgate.io%2Frun%3Drun-1")),
        ),
        Case::http(
            "LIST pvcs by field metadata.name (the demo's watch)",
            get(&format!("{CORE}/persistentvolumeclaims?fieldSelector=metadata.name%3Ddata")),
        ),
        Case::http(
            "LIST pvcs by a field that is not a field label (400)",
            get(&format!("{CORE}/persistentvolumeclaims?fieldSelector=spec.volumeName%3Dx")),
        ),
        Case::http(
            "LIST pvcs limit=1 (a continue token)",
            get(&format!("{CORE}/persistentvolumeclaims?limit=1")),
        ),
        Case::http(
            "POST job (the agent's restic mover Job)",
            post(&format!("{BATCH}/jobs?fieldManager=snapgate-agent"), agent.job.clone()),
        )
        .project(without_status),
        Case::http(
            "POST job without a pod template (422)",
            post(&format!("{BATCH}/jobs"), json!({"metadata": {"name": "bad"}, "spec": {}})),
        ),
        Case::new("the Job controller runs the Job's pod, labelled and owned", {
            let job_pods = job_pods.clone();
            move |s| {
                let req = get(&job_pods);
                Box::pin(async move { poll(s, &req, |v| items(v).len() == 1).await })
            }
        })
        .project(pods_projection),
        Case::http(
            "PATCH job template (immutable: 422)",
            merge(
                &format!("{BATCH}/jobs/{JOB}"),
                json!({"spec": {"template": {"spec": {"containers": [{"name": "restic", "image": "other"}]}}}}),
            ),
        )
        .known(
            &["/body/message", "/body/details/causes/0/message"],
            "the API server quotes the template as its Go struct prints",
        ),
        Case::http(
            "PATCH job parallelism 0 (the agent pauses a source)",
            merge(&format!("{BATCH}/jobs/{JOB}?fieldManager=snapgate-agent"), json!({"spec": {"parallelism": 0}})),
        )
        .project(without_status),
        Case::new("the Job controller deletes the pod of a Job at parallelism 0", {
            let job_pods = job_pods.clone();
            move |s| {
                let req = get(&job_pods);
                Box::pin(async move { poll(s, &req, |v| items(v).is_empty()).await })
            }
        })
        .project(pods_projection),
        Case::http(
            "PATCH job parallelism 1 (the agent resumes)",
            merge(&format!("{BATCH}/jobs/{JOB}?fieldManager=snapgate-agent"), json!({"spec": {"parallelism": 1}})),
        )
        .project(without_status),
        Case::new("the Job controller starts a pod again at parallelism 1", {
            let job_pods = job_pods.clone();
            move |s| {
                let req = get(&job_pods);
                Box::pin(async move { poll(s, &req, |v| items(v).len() == 1).await })
            }
        })
        .project(pods_projection),
        Case::http(
            "PATCH job suspend",
            merge(&format!("{BATCH}/jobs/{JOB}"), json!({"spec": {"suspend": true}})),
        )
        .project(without_status),
        Case::new("the Job controller suspends the Job: no pod, Suspended", {
            move |s| {
                let req = get(&format!("{BATCH}/jobs/{JOB}"));
                Box::pin(async move {
                    poll(s, &req, |v| {
                        v["body"]["status"]["conditions"]
                            .as_array()
                            .is_some_and(|c| c.iter().any(|c| c["type"] == "Suspended" && c["status"] == "True"))
                            && v["body"]["status"]["active"].as_i64().unwrap_or(0) == 0
                            && v["body"]["status"]["terminating"].as_i64().unwrap_or(0) == 0
                    })
                    .await
                })
            }
        })
        .project(|v| json!({"code": v["code"], "status": v["body"]["status"]})),
        Case::http(
            "PATCH job resume",
            merge(&format!("{BATCH}/jobs/{JOB}"), json!({"spec": {"suspend": false}})),
        )
        .project(without_status),
        Case::new("the Job controller resumes the Job: one pod", {
            let job_pods = job_pods.clone();
            move |s| {
                let req = get(&job_pods);
                Box::pin(async move { poll(s, &req, |v| items(v).len() == 1).await })
            }
        })
        .project(pods_projection),
        Case::new("the Job controller's Events", {
            move |s| {
                let req = get(&job_events);
                Box::pin(async move {
                    poll(s, &req, |v| {
                        let reasons: BTreeSet<String> = items(v)
                            .iter()
                            .filter_map(|e| e["reason"].as_str().map(str::to_owned))
                            .collect();
                        ["SuccessfulCreate", "SuccessfulDelete", "Suspended", "Resumed"]
                            .iter()
                            .all(|r| reasons.contains(*r))
                    })
                    .await
                })
            }
        })
        .project(events_projection),
        Case::new("GET pods/log of the mover's pod (not started: no node)", {
            let job_pods = job_pods.clone();
            move |s| {
                let job_pods = job_pods.clone();
                Box::pin(async move {
                    let pods = s.http(&get(&job_pods)).await?;
                    let name = items(&pods)
                        .first()
                        .and_then(|p| p["metadata"]["name"].as_str().map(str::to_owned))
                        .unwrap_or_default();
                    s.http(&get(&format!("{CORE}/pods/{name}/log?tailLines=2000"))).await
                })
            }
        }),
        Case::kubectl(
            "kubectl logs job/<the mover's Job>",
            &["-n", "{ns}", "logs", &format!("job/{JOB}")],
            None,
        ),
        Case::http(
            "POST event (the agent's)",
            post(&format!("{CORE}/events"), agent_event(ns)),
        ),
        Case::http(
            "LIST events by involvedObject and reason",
            get(&format!(
                "{CORE}/events?fieldSelector=involvedObject.name%3Ddata%2Creason%3DSrcPVCWaitingForCopyTrigger"
            )),
        ),
        Case::http(
            "POST event that exists (409: the agent's record_event tolerates it)",
            post(&format!("{CORE}/events"), agent_event(ns)),
        ),
        // The author review.
        Case::http(
            "POST role (create jobs)",
            post(
                "/apis/rbac.authorization.k8s.io/v1/namespaces/{ns}/roles",
                json!({"metadata": {"name": "jobs"}, "rules": [{"apiGroups": ["batch"], "resources": ["jobs"], "verbs": ["create"]}]}),
            ),
        ),
        Case::http(
            "POST rolebinding (alice)",
            post(
                "/apis/rbac.authorization.k8s.io/v1/namespaces/{ns}/rolebindings",
                json!({"metadata": {"name": "jobs-alice"},
                       "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "jobs"},
                       "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": "alice"}]}),
            ),
        ),
        Case::http(
            "POST localsubjectaccessreview, allowed (the agent's author review)",
            post(
                "/apis/authorization.k8s.io/v1/namespaces/{ns}/localsubjectaccessreviews",
                json!({"apiVersion": "authorization.k8s.io/v1", "kind": "LocalSubjectAccessReview",
                       "metadata": {"namespace": "{ns}"},
                       "spec": {"user": "alice", "groups": ["system:authenticated"],
                                "resourceAttributes": {"namespace": "{ns}", "verb": "create", "group": "batch", "resource": "jobs"}}}),
            ),
        ),
        Case::http(
            "POST localsubjectaccessreview, denied",
            post(
                "/apis/authorization.k8s.io/v1/namespaces/{ns}/localsubjectaccessreviews",
                json!({"apiVersion": "authorization.k8s.io/v1", "kind": "LocalSubjectAccessReview",
                       "metadata": {"namespace": "{ns}"},
                       "spec": {"user": "bob", "groups": ["system:authenticated"],
                                "resourceAttributes": {"namespace": "{ns}", "verb": "create", "group": "batch", "resource": "jobs"}}}),
            ),
        ),
        Case::http(
            "POST localsubjectaccessreview for another namespace (400)",
            post(
                "/apis/authorization.k8s.io/v1/namespaces/{ns}/localsubjectaccessreviews",
                json!({"apiVersion": "authorization.k8s.io/v1", "kind": "LocalSubjectAccessReview",
                       "spec": {"user": "alice",
                                "resourceAttributes": {"namespace": "other", "verb": "create", "group": "batch", "resource": "jobs"}}}),
            ),
        ),
        Case::kubectl("kubectl auth can-i create jobs", &["-n", "{ns}", "auth", "can-i", "create", "jobs"], None),
    ];

    let deletes = vec![
        // Dry runs first: none may delete.
        Case::new(
            "DELETE secret, dry run (kube-rs DeleteParams dry_run), then GET",
            |s| {
                Box::pin(async move {
                    let secrets: Api<Secret> = Api::namespaced(s.client.clone(), &s.fill("{ns}"));
                    let answer = match secrets
                        .delete("restic-config", &DeleteParams::default().dry_run())
                        .await
                    {
                        Ok(either) => either.either(
                            |o| json!({"object": serde_json::to_value(o).unwrap()}),
                            |st| json!({"status": serde_json::to_value(st).unwrap()}),
                        ),
                        Err(e) => json!({"error": e.to_string()}),
                    };
                    let after = s
                        .http(&get(&format!("{CORE}/secrets/restic-config")))
                        .await?;
                    Ok(json!({"answer": answer, "after": after["code"]}))
                })
            },
        ),
        Case::new(
            "DELETE pvc data, dry run, then GET (no deletionTimestamp)",
            |s| {
                Box::pin(async move {
                    let answer = s
                        .http(&delete(&format!(
                            "{CORE}/persistentvolumeclaims/data?dryRun=All"
                        )))
                        .await?;
                    let after = s
                        .http(&get(&format!("{CORE}/persistentvolumeclaims/data")))
                        .await?;
                    Ok(json!({"answer": answer, "after": after}))
                })
            },
        ),
        Case::new(
            "DELETE secrets collection by label, dry run, then LIST",
            |s| {
                Box::pin(async move {
                    let answer = s
                        .http(&delete(&format!(
                            "{CORE}/secrets?dryRun=All&labelSelector=diff%3Dsecret"
                        )))
                        .await?;
                    let after = s
                        .http(&get(&format!("{CORE}/secrets?labelSelector=diff%3Dsecret")))
                        .await?;
                    Ok(json!({"answer": answer, "after": after}))
                })
            },
        ),
        Case::new("DELETE pvcs collection, dry run, then LIST", |s| {
            Box::pin(async move {
                let answer = s
                    .http(&delete(&format!(
                        "{CORE}/persistentvolumeclaims?dryRun=All"
                    )))
                    .await?;
                let after = s
                    .http(&get(&format!("{CORE}/persistentvolumeclaims")))
                    .await?;
                Ok(json!({"answer": answer, "after": after}))
            })
        }),
        Case::kubectl(
            "kubectl delete secret --dry-run=server",
            &[
                "-n",
                "{ns}",
                "delete",
                "secret",
                "restic-config",
                "--dry-run=server",
            ],
            None,
        ),
        Case::kubectl(
            "kubectl delete secrets -l --dry-run=server",
            &[
                "-n",
                "{ns}",
                "delete",
                "secrets",
                "-l",
                "diff=secret",
                "--dry-run=server",
            ],
            None,
        ),
        Case::kubectl(
            "kubectl get secrets after the dry runs",
            &[
                "-n",
                "{ns}",
                "get",
                "secrets",
                "-l",
                "diff=secret",
                "-o",
                "name",
            ],
            None,
        ),
        Case::new(
            "kube-rs list of PVCs after the dry runs (nothing deleted)",
            |s| {
                Box::pin(async move {
                    let pvcs: Api<PersistentVolumeClaim> =
                        Api::namespaced(s.client.clone(), &s.fill("{ns}"));
                    let names: Vec<Value> = pvcs
                        .list(&ListParams::default())
                        .await?
                        .items
                        .into_iter()
                        .map(|p| json!([p.metadata.name, p.metadata.deletion_timestamp.is_some()]))
                        .collect();
                    Ok(json!(names))
                })
            },
        ),
        // For real.
        Case::http(
            "DELETE secret",
            delete(&format!("{CORE}/secrets/restic-config")),
        ),
        Case::http(
            "DELETE secret again (404)",
            delete(&format!("{CORE}/secrets/restic-config")),
        ),
        Case::http(
            "DELETE pvc with a uid precondition that fails (409)",
            Req::new("DELETE", &format!("{CORE}/persistentvolumeclaims/data"))
                .json(json!({"preconditions": {"uid": "00000000-0000-0000-0000-000000000000"}})),
        ),
        Case::http(
            "DELETE volumesnapshot, background (the agent's cleanup)",
            Req::new(
                "DELETE",
                &format!("{SNAP}/volumesnapshots/{}", "volsync-db-src"),
            )
            .json(json!({"propagationPolicy": "Background"})),
        ),
        Case::http(
            "DELETE job, background (the agent's cleanup)",
            Req::new("DELETE", &format!("{BATCH}/jobs/{JOB}"))
                .json(json!({"propagationPolicy": "Background"})),
        )
        .project(without_status),
        Case::new("the garbage collector deletes the Job's pods", {
            let job_pods = job_pods.clone();
            move |s| {
                let req = get(&job_pods);
                Box::pin(async move { poll(s, &req, |v| items(v).is_empty()).await })
            }
        })
        .project(pods_projection),
        Case::http(
            "DELETE pvc data (pvc-protection: terminating)",
            Req::new("DELETE", &format!("{CORE}/persistentvolumeclaims/data"))
                .json(json!({"propagationPolicy": "Background"})),
        ),
        Case::new("pvc-protection releases the unused pvc data", |s| {
            let req = get(&format!("{CORE}/persistentvolumeclaims/data"));
            Box::pin(async move { poll(s, &req, |v| v["code"] == 404).await })
        }),
        Case::http(
            "DELETE pvcs collection by label",
            delete(&format!(
                "{CORE}/persistentvolumeclaims?labelSelector=snapgate.io%2Frun%3Drun-1"
            )),
        ),
    ];

    // No case for 410 Expired: the API server's watch cache replays whatever it still holds
    // from an older resourceVersion (on a young cluster, everything since it started) and
    // answers 410 only once its window has moved on, which depends on the cluster's history.
    let watches = vec![Case::new(
        "watch secrets from a resourceVersion (the watcher's resume)",
        |s| {
            Box::pin(async move {
                let created = s
                    .http(&post(
                        &format!("{CORE}/secrets"),
                        json!({"metadata": {"name": "w1", "labels": {"w": "1"}}}),
                    ))
                    .await?;
                let rv = created["body"]["metadata"]["resourceVersion"]
                    .as_str()
                    .unwrap_or("")
                    .to_owned();
                s.http(&merge(
                    &format!("{CORE}/secrets/w1"),
                    json!({"metadata": {"labels": {"step": "2"}}}),
                ))
                .await?;
                s.http(&merge(
                    &format!("{CORE}/secrets/w1"),
                    json!({"metadata": {"labels": {"w": "gone"}}}),
                ))
                .await?;
                s.http(&delete(&format!("{CORE}/secrets/w1"))).await?;
                s.remember("w1rv", rv);
                let all = s
                    .http(&get(&format!(
                        "{CORE}/secrets?watch=1&resourceVersion={{w1rv}}&timeoutSeconds=1"
                    )))
                    .await?;
                let labelled = s
                    .http(&get(&format!("{CORE}/secrets?watch=1&resourceVersion={{w1rv}}&timeoutSeconds=1&labelSelector=w%3D1")))
                    .await?;
                Ok(json!({"all": watch_projection(all), "labelled": watch_projection(labelled)}))
            })
        },
    )];

    let ssa = vec![
        Case::http(
            "apply configmap (manager a)",
            apply(
                &format!("{CORE}/configmaps/ssa?fieldManager=a"),
                json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "ssa"}, "data": {"k1": "1", "k2": "2"}}),
            ),
        ),
        Case::http(
            "apply configmap without k2 (manager a): k2 removed",
            apply(
                &format!("{CORE}/configmaps/ssa?fieldManager=a"),
                json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "ssa"}, "data": {"k1": "1"}}),
            ),
        ),
        Case::http(
            "apply configmap k1 by manager b (409 Conflict)",
            apply(
                &format!("{CORE}/configmaps/ssa?fieldManager=b"),
                json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "ssa"}, "data": {"k1": "other"}}),
            ),
        ),
        Case::http(
            "apply configmap k1 by manager b, force",
            apply(
                &format!("{CORE}/configmaps/ssa?fieldManager=b&force=true"),
                json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "ssa"}, "data": {"k1": "other"}}),
            ),
        ),
    ];

    let kubectl = vec![
        Case::kubectl(
            "kubectl apply -f the demo's manifests",
            &["-n", "{ns}", "apply", "-f", "-"],
            Some(&demo_manifest(class, "busybox:1.36")),
        ),
        Case::kubectl(
            "kubectl annotate pvc (what the application writes)",
            &["-n", "{ns}", "annotate", "pvc", "demo-data", "volsync.backube/copy-trigger=t1"],
            None,
        ),
        Case::kubectl(
            "kubectl apply -f the demo's manifests again, one image changed",
            &["-n", "{ns}", "apply", "-f", "-"],
            Some(&demo_manifest(class, "busybox:1.37")),
        ),
        Case::http("GET the re-applied pod", get(&format!("{CORE}/pods/demo-app")))
            .project(|v| {
                json!({"code": v["code"], "containers": v["body"]["spec"]["containers"].as_array().map(|cs| cs.iter().map(|c| keep(c, &["name", "image", "command", "env"])).collect::<Vec<_>>()),
                       "lastApplied": v["body"]["metadata"]["annotations"]["kubectl.kubernetes.io/last-applied-configuration"]})
            }),
        Case::http("GET the re-applied pvc", get(&format!("{CORE}/persistentvolumeclaims/demo-data"))),
        Case::kubectl("kubectl get pvc", &["-n", "{ns}", "get", "pvc"], None),
        Case::kubectl("kubectl get pvc -o json", &["-n", "{ns}", "get", "pvc", "demo-data", "-o", "json"], None),
        Case::kubectl("kubectl get secrets", &["-n", "{ns}", "get", "secrets"], None),
        Case::kubectl("kubectl get volumesnapshots", &["-n", "{ns}", "get", "volumesnapshots"], None),
        Case::kubectl("kubectl get jobs", &["-n", "{ns}", "get", "jobs"], None),
        Case::kubectl("kubectl get pods", &["-n", "{ns}", "get", "pods"], None),
        Case::kubectl(
            "kubectl create configmap (a protobuf body)",
            &["-n", "{ns}", "create", "configmap", "made-by-kubectl", "--from-literal=a=b"],
            None,
        ),
        Case::kubectl("kubectl explain pvc.spec (OpenAPI v3)", &["explain", "pvc.spec.volumeMode"], None)
            .known(
                &["/exit", "/stdout", "/stderr"],
                "kube-sim's OpenAPI v3 documents have no schemas (kubectl explain reads them)",
            ),
        Case::http("GET /openapi/v2", get("/openapi/v2"))
            .project(code_only)
            .known(
                &["/code"],
                "no OpenAPI v2 document: kubectl validates on the server (fieldValidation) with v3",
            ),
        Case::http("GET /openapi/v3", get("/openapi/v3")).project(code_only),
        Case::http(
            "GET the JWKS as application/json (406)",
            get("/openid/v1/jwks").accept("application/json"),
        )
        .project(code_only),
        Case::http(
            "GET the JWKS as application/jwk-set+json",
            get("/openid/v1/jwks").accept("application/jwk-set+json"),
        )
        .project(code_only),
        Case::http(
            "DELETE namespace (Terminating)",
            delete("/api/v1/namespaces/{ns}"),
        ),
    ];
    vec![basics, agent_cases, deletes, watches, ssa, kubectl]
}

/// A kube-sim served on loopback as the suite's other side: RBAC enforced (the real server
/// authorizes too; both admins pass), PVCs not bound, snapshots not taken and mover pods not
/// run (the cluster has no provisioner for the suite's class, no snapshot controller while
/// the stand-in is not running, and no node for its pods), and the cluster's
/// StorageClasses mirrored (so the default class of a PVC without one is the same).
async fn sim_side(
    real: &Side,
    dir: &std::path::Path,
    kubectl: &std::path::Path,
) -> (KubeSim, Side) {
    let sim = KubeSim::new();
    sim.enforce_rbac(true);
    sim.controllers()
        .default_pvc_behaviour(PvcBehaviour::NeverBind)
        .default_snapshot_behaviour(SnapshotBehaviour::Untouched)
        .default_job_behaviour(JobBehaviour::hang());
    sim.serve("127.0.0.1:0").await.unwrap();
    let kubeconfig = dir.join("kube-sim.kubeconfig");
    sim.write_kubeconfig(&kubeconfig, ADMIN_TOKEN).unwrap();
    // The cluster's StorageClasses instead of kube-sim's own default one.
    sim.delete::<StorageClass>(None, snapgate_kube_sim::DEFAULT_STORAGE_CLASS)
        .unwrap();
    let classes: Api<StorageClass> = Api::all(real.client.clone());
    for class in classes.list(&ListParams::default()).await.unwrap().items {
        let mirrored = StorageClass {
            metadata: kube::api::ObjectMeta {
                name: class.metadata.name.clone(),
                annotations: class.metadata.annotations.clone(),
                labels: class.metadata.labels.clone(),
                ..Default::default()
            },
            ..class
        };
        sim.create(&mirrored).unwrap();
    }
    // kubectl sends no credentials over plain HTTP (client-go's rule): its requests reach
    // the served kube-sim as system:anonymous, which the suite lets do anything (the cluster's
    // kubectl is its admin). Not modelled: see kube-sim's README.
    let anyone: ClusterRole = serde_json::from_value(json!({
        "metadata": {"name": "diff-kubectl"},
        "rules": [{"apiGroups": ["*"], "resources": ["*"], "verbs": ["*"]}],
    }))
    .unwrap();
    sim.create(&anyone).unwrap();
    let binding: ClusterRoleBinding = serde_json::from_value(json!({
        "metadata": {"name": "diff-kubectl"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "diff-kubectl"},
        "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "Group", "name": "system:unauthenticated"}],
    }))
    .unwrap();
    sim.create(&binding).unwrap();
    let side = Side::new("kube-sim", &kubeconfig, kubectl).await.unwrap();
    (sim, side)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "needs a cluster: ./scripts/cluster up (scripts/test runs it)"]
async fn kube_sim_answers_as_the_real_api_server() {
    let start = Instant::now();
    let env = ClusterEnv::load().unwrap_or_else(|e| panic!("{e:#}"));
    let dir = tempfile::tempdir().unwrap();
    let real = Side::new("kube-apiserver", &env.kubeconfig, &env.kubectl)
        .await
        .unwrap();
    // The simulator lives as long as the suite (its server and controllers with it).
    let (_sim, sim_side) = sim_side(&real, dir.path(), &env.kubectl).await;
    let ns = format!("snapgate-diff-{:08x}", rand::random::<u32>());
    let class = format!("{ns}-none");
    for side in [&real, &sim_side] {
        side.remember("ns", ns.clone());
    }

    let groups = cases(&ns, &class);
    let mut verdicts = Vec::new();
    for group in &groups {
        verdicts.extend(run_cases(&sim_side, &real, group).await);
    }

    // Whatever happened: the cluster-scoped StorageClass and the namespace go.
    let classes: Api<StorageClass> = Api::all(real.client.clone());
    let _ = classes.delete(&class, &DeleteParams::default()).await;
    let namespaces: Api<Namespace> = Api::all(real.client.clone());
    let _ = namespaces.delete(&ns, &DeleteParams::default()).await;

    let mut report = String::new();
    for v in &verdicts {
        report.push_str(&format!(
            "{:>6} ms  {:<7} {}\n",
            v.took.as_millis(),
            match (&v.failure, v.known) {
                (Some(_), _) => "FAIL",
                (None, true) => "known",
                (None, false) => "same",
            },
            v.name
        ));
    }
    println!("{report}");
    println!(
        "{} cases in {:.1} s; ignored everywhere: {}",
        verdicts.len(),
        start.elapsed().as_secs_f64(),
        IGNORED
            .iter()
            .map(|(what, _)| *what)
            .collect::<Vec<_>>()
            .join("; ")
    );
    let failures: Vec<String> = verdicts
        .iter()
        .filter_map(|v| v.failure.as_ref().map(|f| format!("-- {}: {f}", v.name)))
        .collect();
    assert!(
        failures.is_empty(),
        "{} of {} cases failed:\n{}",
        failures.len(),
        verdicts.len(),
        failures.join("\n")
    );
}
