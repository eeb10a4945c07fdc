//! Simulated controllers, driven by the store's change events: PVC binding
//! (provisioning a PV), the CSI snapshot controller, and the Job controller.
//!
//! All waiting uses `tokio::time`, so they work under `tokio::time::pause()`.
//! Behaviour is scriptable globally, per object through the Rust API, or per
//! object with annotations:
//!
//! | annotation | values |
//! |---|---|
//! | `sim.snapgate.io/pvc` | `never-bind`, `bind-after=2s` |
//! | `sim.snapgate.io/snapshot` | `never-ready`, `cut-never-ready`, `ready-unset`, `ready-after=500ms`, `fail=<message>` |
//! | `sim.snapgate.io/job` | `succeed`, `fail`, `hang` |

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use serde_json::{Value, json};

use crate::SimState;
use crate::resources::{self, ResourceDef};
use crate::store::{ChangeType, PatchType, WriteOptions, now_timestamp, random_suffix};

/// Annotation scripting PVC binding.
pub const PVC_ANNOTATION: &str = "sim.snapgate.io/pvc";
/// Annotation scripting the snapshot controller.
pub const SNAPSHOT_ANNOTATION: &str = "sim.snapgate.io/snapshot";
/// Annotation scripting the Job controller.
pub const JOB_ANNOTATION: &str = "sim.snapgate.io/job";
/// CSI driver name used for provisioned volumes and snapshots.
pub const CSI_DRIVER: &str = "sim.csi.snapgate.io";

/// How a PVC gets bound.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PvcBehaviour {
    /// Provision a PV and bind after the delay.
    BindAfter(Duration),
    /// Stay `Pending` forever.
    NeverBind,
}

/// How the snapshot controller treats a VolumeSnapshot.
///
/// A CSI snapshot is cut (`status.creationTime`) and then, for drivers that upload it
/// elsewhere, made ready (`readyToUse: true`) later.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SnapshotBehaviour {
    /// Bind a VolumeSnapshotContent and cut it at once, `readyToUse: true` after the delay.
    ReadyAfter(Duration),
    /// Bind a content but never cut it: no `creationTime`, `readyToUse: false`.
    NeverReady,
    /// Bind a content and cut it at once, but keep `readyToUse: false` (a driver whose upload
    /// after the cut does not end until the test sets `readyToUse` itself).
    CutNeverReady,
    /// Bind a content, cut it, and never set `readyToUse` at all.
    ReadyToUseUnset,
    /// Set `status.error.message` and `readyToUse: false`.
    Fail(String),
}

/// What one pod of a Job does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodOutcome {
    /// Whether the pod succeeds (exit 0) or fails (exit 1).
    pub succeed: bool,
    /// Log lines of the pod's first container.
    pub logs: Vec<String>,
    /// How long the pod runs before terminating.
    pub run_for: Duration,
    /// Keep running forever instead of terminating.
    pub hang: bool,
}

impl PodOutcome {
    /// A pod that succeeds after 100ms with these log lines.
    pub fn succeed<S: Into<String>>(logs: impl IntoIterator<Item = S>) -> Self {
        Self {
            succeed: true,
            logs: logs.into_iter().map(Into::into).collect(),
            run_for: Duration::from_millis(100),
            hang: false,
        }
    }

    /// A pod that fails after 100ms with these log lines.
    pub fn fail<S: Into<String>>(logs: impl IntoIterator<Item = S>) -> Self {
        Self {
            succeed: false,
            ..Self::succeed(logs)
        }
    }

    /// Change how long the pod runs.
    pub fn after(mut self, d: Duration) -> Self {
        self.run_for = d;
        self
    }
}

/// What the Job controller does with a Job: the pods it runs, in order (the
/// last outcome repeats for further retries).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobBehaviour {
    /// Outcomes of successive pods.
    pub pods: Vec<PodOutcome>,
}

impl JobBehaviour {
    /// Every pod succeeds with these log lines.
    pub fn succeed<S: Into<String>>(logs: impl IntoIterator<Item = S>) -> Self {
        Self {
            pods: vec![PodOutcome::succeed(logs)],
        }
    }

    /// Every pod fails with these log lines (the Job fails after `backoffLimit + 1` pods).
    pub fn fail<S: Into<String>>(logs: impl IntoIterator<Item = S>) -> Self {
        Self {
            pods: vec![PodOutcome::fail(logs)],
        }
    }

    /// Pods follow these outcomes in order.
    pub fn sequence(pods: Vec<PodOutcome>) -> Self {
        Self { pods }
    }

    /// One pod that runs forever.
    pub fn hang() -> Self {
        Self {
            pods: vec![PodOutcome {
                hang: true,
                ..PodOutcome::succeed(Vec::<String>::new())
            }],
        }
    }
}

#[derive(Debug)]
struct Config {
    pvc: PvcBehaviour,
    snapshot: SnapshotBehaviour,
    job: JobBehaviour,
    pvc_overrides: HashMap<(String, String), PvcBehaviour>,
    snapshot_overrides: HashMap<(String, String), SnapshotBehaviour>,
    job_overrides: HashMap<(String, String), JobBehaviour>,
    poll: Duration,
}

/// Scripting handle for the simulated controllers.
#[derive(Debug)]
pub struct Controllers {
    config: Mutex<Config>,
}

impl Default for Controllers {
    fn default() -> Self {
        Self {
            config: Mutex::new(Config {
                pvc: PvcBehaviour::BindAfter(Duration::from_millis(100)),
                snapshot: SnapshotBehaviour::ReadyAfter(Duration::from_millis(200)),
                job: JobBehaviour::succeed(["done"]),
                pvc_overrides: HashMap::new(),
                snapshot_overrides: HashMap::new(),
                job_overrides: HashMap::new(),
                poll: Duration::from_millis(50),
            }),
        }
    }
}

fn key(ns: &str, name: &str) -> (String, String) {
    (ns.to_string(), name.to_string())
}

/// Parse `500ms`, `2s`, `1m`.
fn parse_duration(s: &str) -> Option<Duration> {
    let s = s.trim();
    if let Some(ms) = s.strip_suffix("ms") {
        return ms.parse().ok().map(Duration::from_millis);
    }
    if let Some(sec) = s.strip_suffix('s') {
        return sec.parse().ok().map(Duration::from_secs);
    }
    if let Some(m) = s.strip_suffix('m') {
        return m.parse::<u64>().ok().map(|m| Duration::from_secs(m * 60));
    }
    None
}

fn annotation<'a>(obj: &'a Value, key: &str) -> Option<&'a str> {
    obj["metadata"]["annotations"][key].as_str()
}

impl Controllers {
    fn cfg(&self) -> std::sync::MutexGuard<'_, Config> {
        self.config.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Default delay before a PVC binds.
    pub fn pvc_bind_delay(&self, d: Duration) -> &Self {
        self.cfg().pvc = PvcBehaviour::BindAfter(d);
        self
    }

    /// Default PVC behaviour.
    pub fn default_pvc_behaviour(&self, b: PvcBehaviour) -> &Self {
        self.cfg().pvc = b;
        self
    }

    /// Behaviour for one PVC.
    pub fn pvc_behaviour(&self, ns: &str, name: &str, b: PvcBehaviour) -> &Self {
        self.cfg().pvc_overrides.insert(key(ns, name), b);
        self
    }

    /// Default delay before a snapshot becomes ready.
    pub fn snapshot_ready_delay(&self, d: Duration) -> &Self {
        self.cfg().snapshot = SnapshotBehaviour::ReadyAfter(d);
        self
    }

    /// Default snapshot behaviour.
    pub fn default_snapshot_behaviour(&self, b: SnapshotBehaviour) -> &Self {
        self.cfg().snapshot = b;
        self
    }

    /// Behaviour for one VolumeSnapshot.
    pub fn snapshot_behaviour(&self, ns: &str, name: &str, b: SnapshotBehaviour) -> &Self {
        self.cfg().snapshot_overrides.insert(key(ns, name), b);
        self
    }

    /// Default Job behaviour.
    pub fn default_job_behaviour(&self, b: JobBehaviour) -> &Self {
        self.cfg().job = b;
        self
    }

    /// Behaviour for one Job.
    pub fn job_behaviour(&self, ns: &str, name: &str, b: JobBehaviour) -> &Self {
        self.cfg().job_overrides.insert(key(ns, name), b);
        self
    }

    fn pvc_for(&self, obj: &Value, ns: &str, name: &str) -> PvcBehaviour {
        if let Some(a) = annotation(obj, PVC_ANNOTATION) {
            if a == "never-bind" {
                return PvcBehaviour::NeverBind;
            }
            if let Some(d) = a.strip_prefix("bind-after=").and_then(parse_duration) {
                return PvcBehaviour::BindAfter(d);
            }
        }
        let cfg = self.cfg();
        cfg.pvc_overrides
            .get(&key(ns, name))
            .cloned()
            .unwrap_or_else(|| cfg.pvc.clone())
    }

    fn snapshot_for(&self, obj: &Value, ns: &str, name: &str) -> SnapshotBehaviour {
        if let Some(a) = annotation(obj, SNAPSHOT_ANNOTATION) {
            match a {
                "never-ready" => return SnapshotBehaviour::NeverReady,
                "cut-never-ready" => return SnapshotBehaviour::CutNeverReady,
                "ready-unset" => return SnapshotBehaviour::ReadyToUseUnset,
                _ => {}
            }
            if let Some(msg) = a.strip_prefix("fail=") {
                return SnapshotBehaviour::Fail(msg.to_string());
            }
            if let Some(d) = a.strip_prefix("ready-after=").and_then(parse_duration) {
                return SnapshotBehaviour::ReadyAfter(d);
            }
        }
        let cfg = self.cfg();
        cfg.snapshot_overrides
            .get(&key(ns, name))
            .cloned()
            .unwrap_or_else(|| cfg.snapshot.clone())
    }

    fn job_for(&self, obj: &Value, ns: &str, name: &str) -> JobBehaviour {
        match annotation(obj, JOB_ANNOTATION) {
            Some("succeed") => return JobBehaviour::succeed(["done"]),
            Some("fail") => return JobBehaviour::fail(["failed"]),
            Some("hang") => return JobBehaviour::hang(),
            _ => {}
        }
        let cfg = self.cfg();
        cfg.job_overrides
            .get(&key(ns, name))
            .cloned()
            .unwrap_or_else(|| cfg.job.clone())
    }

    fn poll(&self) -> Duration {
        self.cfg().poll
    }
}

fn res(group: &str, plural: &str) -> &'static ResourceDef {
    resources::find_plural(group, plural).expect("resource in table")
}

fn pvcs() -> &'static ResourceDef {
    res("", "persistentvolumeclaims")
}

fn snapshots() -> &'static ResourceDef {
    res("snapshot.storage.k8s.io", "volumesnapshots")
}

fn contents() -> &'static ResourceDef {
    res("snapshot.storage.k8s.io", "volumesnapshotcontents")
}

fn keep_status() -> WriteOptions {
    WriteOptions {
        keep_status: true,
        ..WriteOptions::default()
    }
}

/// Spawn the controller loop; it ends when the simulator is dropped.
pub(crate) fn spawn(state: &Arc<SimState>) {
    let mut changes = state.store.subscribe();
    let weak = Arc::downgrade(state);
    tokio::spawn(async move {
        while let Some(change) = changes.recv().await {
            let Some(state) = weak.upgrade() else { return };
            let r = change.resource;
            let ns = change.namespace().to_string();
            let name = change.name().to_string();
            let uid = change.object["metadata"]["uid"]
                .as_str()
                .unwrap_or("")
                .to_string();
            match (r.group, r.plural, change.change_type) {
                ("", "persistentvolumeclaims", ChangeType::Added) => {
                    let b = state.controllers.pvc_for(&change.object, &ns, &name);
                    tokio::spawn(bind_pvc(Arc::downgrade(&state), ns, name, uid, b));
                }
                ("", "persistentvolumeclaims", ChangeType::Deleted) => {
                    if let Some(pv) = change.object["spec"]["volumeName"].as_str() {
                        let pv_res = res("", "persistentvolumes");
                        if let Ok(v) = state.store.get(pv_res, None, pv)
                            && v["spec"]["persistentVolumeReclaimPolicy"] == "Delete"
                        {
                            let _ = state.store.delete(pv_res, None, pv, &Default::default());
                        }
                    }
                }
                ("snapshot.storage.k8s.io", "volumesnapshots", ChangeType::Added) => {
                    let b = state.controllers.snapshot_for(&change.object, &ns, &name);
                    tokio::spawn(run_snapshot(Arc::downgrade(&state), ns, name, uid, b));
                }
                ("snapshot.storage.k8s.io", "volumesnapshots", ChangeType::Deleted) => {
                    if let Some(c) =
                        change.object["status"]["boundVolumeSnapshotContentName"].as_str()
                    {
                        let _ = state.store.delete(contents(), None, c, &Default::default());
                    }
                }
                ("batch", "jobs", ChangeType::Added) => {
                    let b = state.controllers.job_for(&change.object, &ns, &name);
                    tokio::spawn(run_job(Arc::downgrade(&state), ns, name, uid, b));
                }
                _ => {}
            }
        }
    });
}

/// The object if it still exists with the same uid.
fn current(state: &SimState, r: &ResourceDef, ns: &str, name: &str, uid: &str) -> Option<Value> {
    state
        .store
        .get(r, Some(ns), name)
        .ok()
        .filter(|o| o["metadata"]["uid"] == uid)
}

async fn bind_pvc(state: Weak<SimState>, ns: String, name: String, uid: String, b: PvcBehaviour) {
    let PvcBehaviour::BindAfter(delay) = b else {
        return;
    };
    tokio::time::sleep(delay).await;
    // wait for the data source to be usable
    loop {
        let Some(s) = state.upgrade() else { return };
        let Some(pvc) = current(&s, pvcs(), &ns, &name, &uid) else {
            return;
        };
        let ds = &pvc["spec"]["dataSource"];
        let ready = match (ds["kind"].as_str(), ds["name"].as_str()) {
            (Some("VolumeSnapshot"), Some(src)) => s
                .store
                .get(snapshots(), Some(&ns), src)
                .is_ok_and(|v| v["status"]["readyToUse"] == true),
            (Some("PersistentVolumeClaim"), Some(src)) => s
                .store
                .get(pvcs(), Some(&ns), src)
                .is_ok_and(|v| v["status"]["phase"] == "Bound"),
            _ => true,
        };
        if ready {
            break;
        }
        let poll = s.controllers.poll();
        drop(s);
        tokio::time::sleep(poll).await;
    }
    let Some(s) = state.upgrade() else { return };
    let Some(pvc) = current(&s, pvcs(), &ns, &name, &uid) else {
        return;
    };
    if pvc["status"]["phase"] == "Bound" {
        return;
    }
    let storage = pvc["spec"]["resources"]["requests"]["storage"].clone();
    let access_modes = pvc["spec"]["accessModes"].clone();
    let pv_name = format!("pvc-{uid}");
    let pv = json!({
        "metadata": {
            "name": pv_name,
            "annotations": {"pv.kubernetes.io/provisioned-by": CSI_DRIVER},
        },
        "spec": {
            "capacity": {"storage": storage},
            "accessModes": access_modes,
            "persistentVolumeReclaimPolicy": "Delete",
            "storageClassName": pvc["spec"]["storageClassName"],
            "volumeMode": pvc["spec"]["volumeMode"].as_str().unwrap_or("Filesystem"),
            "claimRef": {
                "kind": "PersistentVolumeClaim", "apiVersion": "v1",
                "namespace": ns, "name": name, "uid": uid,
            },
            "csi": {"driver": CSI_DRIVER, "volumeHandle": pv_name},
        },
        "status": {"phase": "Bound"},
    });
    let pv_res = res("", "persistentvolumes");
    if let Err(e) = s.store.create(pv_res, None, pv, &keep_status()) {
        tracing::warn!("kube-sim: PV for {ns}/{name}: {e}");
        return;
    }
    let spec_patch = json!({
        "metadata": {"annotations": {
            "pv.kubernetes.io/bind-completed": "yes",
            "pv.kubernetes.io/bound-by-controller": "yes",
        }},
        "spec": {"volumeName": pv_name},
    });
    let opts = WriteOptions::default();
    let _ = s.store.patch(
        pvcs(),
        Some(&ns),
        &name,
        PatchType::Merge,
        &spec_patch,
        false,
        &opts,
    );
    let status = json!({"status": {"phase": "Bound", "accessModes": access_modes, "capacity": {"storage": storage}}});
    let _ = s.store.patch(
        pvcs(),
        Some(&ns),
        &name,
        PatchType::Merge,
        &status,
        true,
        &opts,
    );
}

async fn run_snapshot(
    state: Weak<SimState>,
    ns: String,
    name: String,
    uid: String,
    b: SnapshotBehaviour,
) {
    // let the creator observe the fresh object before the controller acts
    tokio::time::sleep(Duration::from_millis(10)).await;
    let Some(s) = state.upgrade() else { return };
    let Some(snap) = current(&s, snapshots(), &ns, &name, &uid) else {
        return;
    };
    let opts = WriteOptions::default();
    if let SnapshotBehaviour::Fail(msg) = &b {
        let status = json!({"status": {
            "readyToUse": false,
            "error": {"message": msg, "time": now_timestamp()},
        }});
        let _ = s.store.patch(
            snapshots(),
            Some(&ns),
            &name,
            PatchType::Merge,
            &status,
            true,
            &opts,
        );
        return;
    }
    let source_pvc = snap["spec"]["source"]["persistentVolumeClaimName"]
        .as_str()
        .unwrap_or("");
    let pvc = s.store.get(pvcs(), Some(&ns), source_pvc).ok();
    let restore_size = pvc
        .as_ref()
        .and_then(|p| {
            p["status"]["capacity"]["storage"]
                .as_str()
                .or(p["spec"]["resources"]["requests"]["storage"].as_str())
        })
        .map(str::to_string);
    let volume_handle = pvc
        .as_ref()
        .and_then(|p| p["spec"]["volumeName"].as_str())
        .unwrap_or(source_pvc)
        .to_string();
    let content_name = format!("snapcontent-{uid}");
    let content = json!({
        "metadata": {"name": content_name},
        "spec": {
            "volumeSnapshotRef": {
                "kind": "VolumeSnapshot", "apiVersion": "snapshot.storage.k8s.io/v1",
                "namespace": ns, "name": name, "uid": uid,
            },
            "source": {"volumeHandle": volume_handle},
            "driver": CSI_DRIVER,
            "deletionPolicy": "Delete",
            "volumeSnapshotClassName": snap["spec"]["volumeSnapshotClassName"],
        },
        "status": {"snapshotHandle": format!("snap-{uid}"), "readyToUse": false, "creationTime": 0},
    });
    if let Err(e) = s.store.create(contents(), None, content, &keep_status()) {
        tracing::warn!("kube-sim: content for {ns}/{name}: {e}");
        return;
    }
    let mut status = json!({
        "boundVolumeSnapshotContentName": content_name,
        "creationTime": now_timestamp(),
        "readyToUse": false,
    });
    if b == SnapshotBehaviour::ReadyToUseUnset {
        status.as_object_mut().expect("object").remove("readyToUse");
    }
    if b == SnapshotBehaviour::NeverReady {
        status
            .as_object_mut()
            .expect("object")
            .remove("creationTime");
    }
    let _ = s.store.patch(
        snapshots(),
        Some(&ns),
        &name,
        PatchType::Merge,
        &json!({"status": status}),
        true,
        &opts,
    );
    let SnapshotBehaviour::ReadyAfter(delay) = b else {
        return;
    };
    drop(s);
    tokio::time::sleep(delay).await;
    let Some(s) = state.upgrade() else { return };
    if current(&s, snapshots(), &ns, &name, &uid).is_none() {
        return;
    }
    let mut ready = json!({"status": {"readyToUse": true}});
    if let Some(size) = &restore_size {
        ready["status"]["restoreSize"] = json!(size);
    }
    let _ = s.store.patch(
        snapshots(),
        Some(&ns),
        &name,
        PatchType::Merge,
        &ready,
        true,
        &opts,
    );
    let _ = s.store.patch(
        contents(),
        None,
        &content_name,
        PatchType::Merge,
        &json!({"status": {"readyToUse": true}}),
        true,
        &opts,
    );
}

fn job_status_patch(s: &SimState, ns: &str, name: &str, status: Value) {
    let jobs = res("batch", "jobs");
    let _ = s.store.patch(
        jobs,
        Some(ns),
        name,
        PatchType::Merge,
        &json!({ "status": status }),
        true,
        &WriteOptions::default(),
    );
}

fn condition(kind: &str, reason: &str, message: &str) -> Value {
    let now = now_timestamp();
    json!({
        "type": kind, "status": "True", "reason": reason, "message": message,
        "lastProbeTime": now, "lastTransitionTime": now,
    })
}

async fn run_job(state: Weak<SimState>, ns: String, name: String, uid: String, b: JobBehaviour) {
    tokio::time::sleep(Duration::from_millis(10)).await;
    let jobs = res("batch", "jobs");
    let pods_res = res("", "pods");
    let Some(s) = state.upgrade() else { return };
    let Some(job) = current(&s, jobs, &ns, &name, &uid) else {
        return;
    };
    let parallelism = job["spec"]["parallelism"].as_i64().unwrap_or(1);
    if parallelism == 0 || job["spec"]["suspend"] == true {
        return;
    }
    let completions = job["spec"]["completions"].as_i64().unwrap_or(1).max(1);
    let backoff_limit = job["spec"]["backoffLimit"].as_i64().unwrap_or(6);
    let template = job["spec"]["template"].clone();
    job_status_patch(
        &s,
        &ns,
        &name,
        json!({"startTime": now_timestamp(), "active": 0}),
    );
    drop(s);
    let (mut succeeded, mut failed) = (0i64, 0i64);
    for attempt in 0usize.. {
        let outcome = b.pods[attempt.min(b.pods.len().saturating_sub(1))].clone();
        let Some(s) = state.upgrade() else { return };
        if current(&s, jobs, &ns, &name, &uid).is_none() {
            return;
        }
        let mut labels = template["metadata"]["labels"].clone();
        if !labels.is_object() {
            labels = json!({});
        }
        labels["job-name"] = json!(name);
        labels["batch.kubernetes.io/job-name"] = json!(name);
        labels["controller-uid"] = json!(uid);
        labels["batch.kubernetes.io/controller-uid"] = json!(uid);
        let pod_name = format!("{name}-{}", random_suffix());
        let pod = json!({
            "metadata": {
                "name": pod_name,
                "labels": labels,
                "annotations": template["metadata"]["annotations"],
                "ownerReferences": [{
                    "apiVersion": "batch/v1", "kind": "Job", "name": name, "uid": uid,
                    "controller": true, "blockOwnerDeletion": true,
                }],
            },
            "spec": template["spec"],
            "status": {"phase": "Pending"},
        });
        let pod = match s.store.create(pods_res, Some(&ns), pod, &keep_status()) {
            Ok(p) => p,
            Err(e) => {
                tracing::warn!("kube-sim: pod for job {ns}/{name}: {e}");
                return;
            }
        };
        let first_container = pod["spec"]["containers"][0]["name"]
            .as_str()
            .unwrap_or("")
            .to_string();
        let mut text = outcome.logs.join("\n");
        if !text.is_empty() {
            text.push('\n');
        }
        s.set_pod_log(&ns, &pod_name, &first_container, &text);
        job_status_patch(&s, &ns, &name, json!({"active": 1}));
        let running = json!({"status": {"phase": "Running", "startTime": now_timestamp()}});
        let _ = s.store.patch(
            pods_res,
            Some(&ns),
            &pod_name,
            PatchType::Merge,
            &running,
            true,
            &WriteOptions::default(),
        );
        drop(s);
        if outcome.hang {
            return;
        }
        tokio::time::sleep(outcome.run_for).await;
        let Some(s) = state.upgrade() else { return };
        let (phase, exit_code, reason) = if outcome.succeed {
            ("Succeeded", 0, "Completed")
        } else {
            ("Failed", 1, "Error")
        };
        let statuses: Vec<Value> = pod["spec"]["containers"]
            .as_array()
            .map(|cs| {
                cs.iter()
                    .map(|c| {
                        json!({
                            "name": c["name"], "image": c["image"], "ready": false, "restartCount": 0,
                            "state": {"terminated": {"exitCode": exit_code, "reason": reason, "finishedAt": now_timestamp()}},
                        })
                    })
                    .collect()
            })
            .unwrap_or_default();
        let done = json!({"status": {"phase": phase, "containerStatuses": statuses}});
        let _ = s.store.patch(
            pods_res,
            Some(&ns),
            &pod_name,
            PatchType::Merge,
            &done,
            true,
            &WriteOptions::default(),
        );
        if outcome.succeed {
            succeeded += 1;
        } else {
            failed += 1;
        }
        if succeeded >= completions {
            let now = now_timestamp();
            job_status_patch(
                &s,
                &ns,
                &name,
                json!({
                    "active": 0, "succeeded": succeeded, "failed": failed, "completionTime": now,
                    "conditions": [
                        condition("SuccessCriteriaMet", "CompletionsReached", "Reached expected number of succeeded pods"),
                        condition("Complete", "CompletionsReached", "Reached expected number of succeeded pods"),
                    ],
                }),
            );
            return;
        }
        if failed > backoff_limit {
            job_status_patch(
                &s,
                &ns,
                &name,
                json!({
                    "active": 0, "succeeded": succeeded, "failed": failed,
                    "conditions": [
                        condition("FailureTarget", "BackoffLimitExceeded", "Job has reached the specified backoff limit"),
                        condition("Failed", "BackoffLimitExceeded", "Job has reached the specified backoff limit"),
                    ],
                }),
            );
            return;
        }
        job_status_patch(
            &s,
            &ns,
            &name,
            json!({"active": 0, "succeeded": succeeded, "failed": failed}),
        );
    }
}
