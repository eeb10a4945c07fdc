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
//! | `sim.snapgate.io/job` | `succeed`, `fail`, `hang`, `stuck=<reason>` |
//!
//! # Mover pods that cannot start
//!
//! A pod can be scripted stuck ([`PodOutcome::stuck_in`], [`JobBehaviour::stuck`], the
//! binary's `--mover-pods <reason>`): it sits there, its Job active, showing what a kubelet
//! (or the scheduler) would, until the test scripts another behaviour for the Job (then it
//! recovers and goes on as scripted) or [`PodOutcome::stuck_for`] has passed, or its Job is
//! deleted:
//!
//! | reason | the pod | Events on the pod |
//! |---|---|---|
//! | `ImagePullBackOff` | Pending, container waiting (`Back-off pulling image "<image>"`) | Normal `BackOff`, Warning `Failed` |
//! | `ErrImagePull` | Pending, container waiting | Warning `Failed` (the pull, then `Error: ErrImagePull`) |
//! | `InvalidImageName` | Pending, container waiting | Warning `InspectFailed`, `Failed` |
//! | `CreateContainerConfigError` | Pending, container waiting (`couldn't find key <key> in Secret <ns>/<name>`, from its first `secretKeyRef`) | Warning `Failed` |
//! | `CreateContainerError`, any other word | Pending, container waiting | Warning `Failed` |
//! | `CrashLoopBackOff` | Running, container waiting, restarted, last state exit 1 | Warning `BackOff` |
//! | `FailedMount`, `FailedAttachVolume` | Pending, no sandbox (`PodReadyToStartContainers` False), container waiting `ContainerCreating` | Warning `FailedMount` / `FailedAttachVolume` |
//! | `Unschedulable` | Pending, `PodScheduled` False `Unschedulable`, no container status | Warning `FailedScheduling` |
//!
//! Every stuck pod is `ContainersReady` and `Ready` False since it was made (the time a user
//! sees as stuck since). A Job scripted [`JobBehaviour::failed_create`] (`--mover-pods
//! FailedCreate`) makes no pod at all: a Warning `FailedCreate` Event on the Job says why
//! (its ServiceAccount is not found), and it stays active, until scripted otherwise.

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

/// How a pod cannot start (see the module's table).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodStuck {
    /// The reason Kubernetes shows: a container's waiting reason (`ImagePullBackOff`,
    /// `CreateContainerConfigError`, ...), `FailedMount` or `FailedAttachVolume` (an Event, the
    /// container `ContainerCreating`), or `Unschedulable` (the `PodScheduled` condition).
    pub reason: String,
    /// The message shown with it; `None`: what a kubelet would say for this pod.
    pub message: Option<String>,
    /// How long it stays stuck before it recovers by itself; `None`: until the Job's
    /// behaviour is scripted otherwise (or for ever).
    pub for_: Option<Duration>,
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
    /// Cannot start first: stuck as this says, then (once it recovers) as above.
    pub stuck: Option<PodStuck>,
}

impl PodOutcome {
    /// A pod that succeeds after 100ms with these log lines.
    pub fn succeed<S: Into<String>>(logs: impl IntoIterator<Item = S>) -> Self {
        Self {
            succeed: true,
            logs: logs.into_iter().map(Into::into).collect(),
            run_for: Duration::from_millis(100),
            hang: false,
            stuck: None,
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

    /// The pod cannot start first, for `reason` (see the module's table), with the message
    /// a kubelet would give; until the Job's behaviour is scripted otherwise.
    pub fn stuck_in(mut self, reason: &str) -> Self {
        self.stuck = Some(PodStuck {
            reason: reason.to_owned(),
            message: None,
            for_: None,
        });
        self
    }

    /// The message shown with the stuck reason.
    pub fn stuck_message(mut self, message: &str) -> Self {
        if let Some(s) = &mut self.stuck {
            s.message = Some(message.to_owned());
        }
        self
    }

    /// The pod recovers by itself after being stuck for `d`.
    pub fn stuck_for(mut self, d: Duration) -> Self {
        if let Some(s) = &mut self.stuck {
            s.for_ = Some(d);
        }
        self
    }
}

/// What the Job controller does with a Job: the pods it runs, in order (the
/// last outcome repeats for further retries).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobBehaviour {
    /// Outcomes of successive pods.
    pub pods: Vec<PodOutcome>,
    /// The Job cannot create its pods: a Warning `FailedCreate` Event on it with this message
    /// (`None`: one naming its missing ServiceAccount), and no pod, until scripted otherwise.
    pub create_fails: Option<Option<String>>,
}

impl JobBehaviour {
    /// Every pod succeeds with these log lines.
    pub fn succeed<S: Into<String>>(logs: impl IntoIterator<Item = S>) -> Self {
        Self::sequence(vec![PodOutcome::succeed(logs)])
    }

    /// Every pod fails with these log lines (the Job fails after `backoffLimit + 1` pods).
    pub fn fail<S: Into<String>>(logs: impl IntoIterator<Item = S>) -> Self {
        Self::sequence(vec![PodOutcome::fail(logs)])
    }

    /// Pods follow these outcomes in order.
    pub fn sequence(pods: Vec<PodOutcome>) -> Self {
        Self {
            pods,
            create_fails: None,
        }
    }

    /// One pod that runs forever.
    pub fn hang() -> Self {
        Self::sequence(vec![PodOutcome {
            hang: true,
            ..PodOutcome::succeed(Vec::<String>::new())
        }])
    }

    /// Every pod is stuck for `reason` (see the module's table), for ever (until scripted
    /// otherwise); the Job stays active.
    pub fn stuck(reason: &str) -> Self {
        Self::sequence(vec![PodOutcome::succeed(["done"]).stuck_in(reason)])
    }

    /// The Job cannot create a pod (a Warning `FailedCreate` Event on it says so, naming its
    /// missing ServiceAccount), until scripted otherwise; then its pods succeed.
    pub fn failed_create() -> Self {
        Self {
            create_fails: Some(None),
            ..Self::succeed(["done"])
        }
    }

    /// What `--mover-pods` names: `succeed`, `fail`, `FailedCreate`, or a reason a pod is
    /// stuck for (a word of ASCII letters, e.g. `ImagePullBackOff`; see the module's table).
    pub fn parse(s: &str) -> Result<Self, String> {
        match s {
            "succeed" => Ok(Self::succeed(["done"])),
            "fail" => Ok(Self::fail(["failed"])),
            "hang" => Ok(Self::hang()),
            "FailedCreate" => Ok(Self::failed_create()),
            reason
                if reason.starts_with(|c: char| c.is_ascii_uppercase())
                    && reason.chars().all(|c| c.is_ascii_alphabetic()) =>
            {
                Ok(Self::stuck(reason))
            }
            other => Err(format!(
                "{other:?}: expected succeed, fail, hang, FailedCreate or a waiting reason such \
                 as ImagePullBackOff or CreateContainerConfigError"
            )),
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
            Some(a) if a.starts_with("stuck=") => {
                if let Ok(b) = JobBehaviour::parse(&a["stuck=".len()..]) {
                    return b;
                }
            }
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

/// The Job's behaviour as scripted now (a test may change it while a pod is stuck), if the
/// Job still exists with the same uid.
fn behaviour_now(state: &SimState, ns: &str, name: &str, uid: &str) -> Option<JobBehaviour> {
    let job = current(state, res("batch", "jobs"), ns, name, uid)?;
    Some(state.controllers.job_for(&job, ns, name))
}

fn outcome_of(b: &JobBehaviour, attempt: usize) -> PodOutcome {
    b.pods[attempt.min(b.pods.len().saturating_sub(1))].clone()
}

/// Records a core/v1 Event about `object` (`kind` `Pod` or `Job`), as a kubelet or a
/// controller does.
fn record_event(
    s: &SimState,
    ns: &str,
    object: &Value,
    type_: &str,
    reason: &str,
    message: &str,
    component: &str,
) {
    let now = now_timestamp();
    let name = object["metadata"]["name"].as_str().unwrap_or("");
    let event = json!({
        "metadata": {"name": format!("{name}.{}", random_suffix())},
        "involvedObject": {
            "apiVersion": if object["kind"] == "Job" { "batch/v1" } else { "v1" },
            "kind": object["kind"], "namespace": ns, "name": name,
            "uid": object["metadata"]["uid"],
            "resourceVersion": object["metadata"]["resourceVersion"],
        },
        "reason": reason, "message": message, "type": type_,
        "source": {"component": component, "host": "sim-node"},
        "reportingComponent": component, "reportingInstance": "sim-node",
        "firstTimestamp": now, "lastTimestamp": now, "count": 1,
    });
    if let Err(e) = s
        .store
        .create(res("", "events"), Some(ns), event, &keep_status())
    {
        tracing::warn!("kube-sim: event {reason} for {ns}/{name}: {e}");
    }
}

/// The first `secretKeyRef` of the pod's first container, `(secret, key)`.
fn first_secret_key(pod: &Value) -> Option<(String, String)> {
    pod["spec"]["containers"][0]["env"]
        .as_array()?
        .iter()
        .find_map(|e| {
            let r = &e["valueFrom"]["secretKeyRef"];
            Some((
                r["name"].as_str()?.to_owned(),
                r["key"].as_str()?.to_owned(),
            ))
        })
}

/// What a kubelet (or the scheduler) shows of a pod stuck as `stuck` says: its status and the
/// Events it records, `(type, reason, message, component)`.
fn stuck_status(ns: &str, pod: &Value, stuck: &PodStuck) -> (Value, Vec<[String; 4]>) {
    let now = now_timestamp();
    let pod_name = pod["metadata"]["name"].as_str().unwrap_or("");
    let container = pod["spec"]["containers"][0]["name"].as_str().unwrap_or("");
    let image = pod["spec"]["containers"][0]["image"].as_str().unwrap_or("");
    let reason = stuck.reason.as_str();
    let default_message = match reason {
        "ImagePullBackOff" => format!("Back-off pulling image \"{image}\""),
        "ErrImagePull" => format!(
            "rpc error: code = NotFound desc = failed to pull and unpack image \"{image}\": not found"
        ),
        "InvalidImageName" => format!(
            "Failed to apply default image tag \"{image}\": couldn't parse image name \"{image}\": invalid reference format"
        ),
        "CreateContainerConfigError" => match first_secret_key(pod) {
            Some((secret, key)) => format!("couldn't find key {key} in Secret {ns}/{secret}"),
            None => "secret \"mover-secret\" not found".to_owned(),
        },
        "CrashLoopBackOff" => format!(
            "back-off 40s restarting failed container={container} pod={pod_name}_{ns}({})",
            pod["metadata"]["uid"].as_str().unwrap_or("")
        ),
        "FailedMount" => {
            let secret = pod["spec"]["volumes"]
                .as_array()
                .into_iter()
                .flatten()
                .find_map(|v| Some((v["name"].as_str()?, v["secret"]["secretName"].as_str()?)));
            match secret {
                Some((volume, secret)) => format!(
                    "MountVolume.SetUp failed for volume \"{volume}\" : secret \"{secret}\" not found"
                ),
                None => "Unable to attach or mount volumes: unmounted volumes=[data], unattached volumes=[], failed to process volumes=[]: timed out waiting for the condition".to_owned(),
            }
        }
        "FailedAttachVolume" => "AttachVolume.Attach failed for volume \"data\" : rpc error: code = DeadlineExceeded desc = context deadline exceeded".to_owned(),
        "Unschedulable" => "0/1 nodes are available: 1 Insufficient memory. preemption: 0/1 nodes are available: 1 No preemption victims found for incoming pod.".to_owned(),
        "CreateContainerError" => "failed to reserve container name: name is reserved".to_owned(),
        other => format!("the container cannot start: {other}"),
    };
    let message = stuck.message.clone().unwrap_or(default_message);
    let condition = |kind: &str, status: &str, why: Option<(&str, &str)>| {
        let mut c = json!({"type": kind, "status": status, "lastProbeTime": null, "lastTransitionTime": now});
        if let Some((r, m)) = why {
            c["reason"] = json!(r);
            c["message"] = json!(m);
        }
        c
    };
    let unready = format!("containers with unready status: [{container}]");
    let not_ready = Some(("ContainersNotReady", unready.as_str()));
    let event = |type_: &str, reason: &str, message: String| {
        [
            type_.to_owned(),
            reason.to_owned(),
            message,
            "kubelet".to_owned(),
        ]
    };
    if reason == "Unschedulable" {
        let status = json!({
            "phase": "Pending",
            "conditions": [condition("PodScheduled", "False", Some(("Unschedulable", &message)))],
        });
        let events = vec![[
            "Warning".to_owned(),
            "FailedScheduling".to_owned(),
            message,
            "default-scheduler".to_owned(),
        ]];
        return (status, events);
    }
    let volume = matches!(reason, "FailedMount" | "FailedAttachVolume");
    let crash = reason == "CrashLoopBackOff";
    let mut container_status = json!({
        "name": container, "image": image, "imageID": "", "ready": false, "started": false,
        "restartCount": if crash { 3 } else { 0 },
        "state": {"waiting": if volume {
            json!({"reason": "ContainerCreating"})
        } else {
            json!({"reason": reason, "message": message})
        }},
    });
    if crash {
        container_status["lastState"] = json!({"terminated": {
            "exitCode": 1, "reason": "Error", "startedAt": now, "finishedAt": now,
        }});
    }
    let status = json!({
        "phase": if crash { "Running" } else { "Pending" },
        "startTime": now,
        "conditions": [
            condition("PodReadyToStartContainers", if volume { "False" } else { "True" }, None),
            condition("Initialized", "True", None),
            condition("Ready", "False", not_ready),
            condition("ContainersReady", "False", not_ready),
            condition("PodScheduled", "True", None),
        ],
        "containerStatuses": [container_status],
    });
    let events = match reason {
        "ImagePullBackOff" => vec![
            event("Normal", "BackOff", message),
            event("Warning", "Failed", "Error: ImagePullBackOff".into()),
        ],
        "ErrImagePull" => vec![
            event(
                "Warning",
                "Failed",
                format!("Failed to pull image \"{image}\": {message}"),
            ),
            event("Warning", "Failed", "Error: ErrImagePull".into()),
        ],
        "InvalidImageName" => vec![
            event("Warning", "InspectFailed", message),
            event("Warning", "Failed", "Error: InvalidImageName".into()),
        ],
        "CrashLoopBackOff" => vec![event(
            "Warning",
            "BackOff",
            format!("Back-off restarting failed container {container} in pod {pod_name}_{ns}"),
        )],
        r @ ("FailedMount" | "FailedAttachVolume") => vec![event("Warning", r, message)],
        _ => vec![event("Warning", "Failed", format!("Error: {message}"))],
    };
    (status, events)
}

/// Holds the pod stuck until its Job's behaviour (as scripted now) no longer is, or its time
/// is up: the outcome it goes on with; `None` when the Job or the pod is gone.
async fn wait_stuck(
    state: &Weak<SimState>,
    (ns, name, uid): (&str, &str, &str),
    pod_name: &str,
    attempt: usize,
    outcome: PodOutcome,
) -> Option<PodOutcome> {
    let stuck_for = outcome.stuck.as_ref().and_then(|st| st.for_);
    let until = stuck_for.map(|d| tokio::time::Instant::now() + d);
    loop {
        let s = state.upgrade()?;
        let b = behaviour_now(&s, ns, name, uid)?;
        s.store.get(res("", "pods"), Some(ns), pod_name).ok()?;
        let now = outcome_of(&b, attempt);
        if now.stuck.is_none() {
            return Some(now);
        }
        if until.is_some_and(|u| tokio::time::Instant::now() >= u) {
            return Some(PodOutcome {
                stuck: None,
                ..outcome
            });
        }
        let poll = s.controllers.poll();
        drop(s);
        tokio::time::sleep(poll).await;
    }
}

/// Holds a Job that cannot create its pods (a `FailedCreate` Event on it, recorded once) until
/// its behaviour (as scripted now) lets it: `None` when the Job is gone.
async fn wait_create(
    state: &Weak<SimState>,
    (ns, name, uid): (&str, &str, &str),
    message: Option<String>,
    template: &Value,
) -> Option<()> {
    let s = state.upgrade()?;
    let job = current(&s, res("batch", "jobs"), ns, name, uid)?;
    let sa = template["spec"]["serviceAccountName"]
        .as_str()
        .unwrap_or("default");
    let message = message.unwrap_or_else(|| {
        format!(
            "Error creating: pods \"{name}-\" is forbidden: error looking up service account {ns}/{sa}: serviceaccount \"{sa}\" not found"
        )
    });
    let mut job = job;
    job["kind"] = json!("Job");
    record_event(
        &s,
        ns,
        &job,
        "Warning",
        "FailedCreate",
        &message,
        "job-controller",
    );
    drop(s);
    loop {
        let s = state.upgrade()?;
        let b = behaviour_now(&s, ns, name, uid)?;
        if b.create_fails.is_none() {
            return Some(());
        }
        let poll = s.controllers.poll();
        drop(s);
        tokio::time::sleep(poll).await;
    }
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
    let who = (ns.as_str(), name.as_str(), uid.as_str());
    if let Some(message) = b.create_fails.clone()
        && wait_create(&state, who, message, &template).await.is_none()
    {
        return;
    }
    let (mut succeeded, mut failed) = (0i64, 0i64);
    for attempt in 0usize.. {
        let mut outcome = outcome_of(&b, attempt);
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
        let mut pod = match s.store.create(pods_res, Some(&ns), pod, &keep_status()) {
            Ok(p) => p,
            Err(e) => {
                tracing::warn!("kube-sim: pod for job {ns}/{name}: {e}");
                return;
            }
        };
        job_status_patch(&s, &ns, &name, json!({"active": 1}));
        if let Some(stuck) = outcome.stuck.clone() {
            let (status, events) = stuck_status(&ns, &pod, &stuck);
            if let Ok(p) = s.store.patch(
                pods_res,
                Some(&ns),
                &pod_name,
                PatchType::Merge,
                &json!({ "status": status }),
                true,
                &WriteOptions::default(),
            ) {
                pod = p;
            }
            pod["kind"] = json!("Pod");
            for [type_, reason, message, component] in events {
                record_event(&s, &ns, &pod, &type_, &reason, &message, &component);
            }
            drop(s);
            match wait_stuck(&state, who, &pod_name, attempt, outcome).await {
                Some(next) => outcome = next,
                None => return,
            }
        } else {
            drop(s);
        }
        let Some(s) = state.upgrade() else { return };
        let first_container = pod["spec"]["containers"][0]["name"]
            .as_str()
            .unwrap_or("")
            .to_string();
        let mut text = outcome.logs.join("\n");
        if !text.is_empty() {
            text.push('\n');
        }
        s.set_pod_log(&ns, &pod_name, &first_container, &text);
        let now = now_timestamp();
        let ready = |kind: &str| json!({"type": kind, "status": "True", "lastProbeTime": null, "lastTransitionTime": now});
        let containers: Vec<Value> = pod["spec"]["containers"]
            .as_array()
            .map(|cs| {
                cs.iter()
                    .map(|c| {
                        json!({
                            "name": c["name"], "image": c["image"], "ready": true, "started": true,
                            "restartCount": 0, "state": {"running": {"startedAt": now}},
                        })
                    })
                    .collect()
            })
            .unwrap_or_default();
        let running = json!({"status": {
            "phase": "Running", "startTime": now,
            "conditions": [
                ready("PodReadyToStartContainers"), ready("Initialized"), ready("Ready"),
                ready("ContainersReady"), ready("PodScheduled"),
            ],
            "containerStatuses": containers,
        }});
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
