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
//! | `sim.snapgate.io/snapshot` | `never-ready`, `cut-never-ready`, `ready-unset`, `untouched`, `ready-after=500ms`, `fail=<message>` |
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
use tokio::sync::mpsc;

use crate::SimState;
use crate::admission::PVC_PROTECTION;
use crate::resources::{self, ResourceDef};
use crate::store::{ChangeType, PatchType, WriteOptions, now_timestamp};

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
    /// Nothing: no snapshot controller acts on it (a cluster without one).
    Untouched,
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

    /// One pod that runs until the Job is scripted otherwise (then it ends as scripted).
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
    /// The Job controller's task of each Job (by uid): woken on changes of it and its pods.
    jobs: Mutex<HashMap<String, mpsc::UnboundedSender<()>>>,
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
            jobs: Mutex::new(HashMap::new()),
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
    fn jobs(&self) -> std::sync::MutexGuard<'_, HashMap<String, mpsc::UnboundedSender<()>>> {
        self.jobs.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn wake_job(&self, uid: &str) {
        if let Some(tx) = self.jobs().get(uid) {
            let _ = tx.send(());
        }
    }

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
        self.wake_jobs();
        self
    }

    /// Behaviour for one Job.
    pub fn job_behaviour(&self, ns: &str, name: &str, b: JobBehaviour) -> &Self {
        self.cfg().job_overrides.insert(key(ns, name), b);
        self.wake_jobs();
        self
    }

    /// Wakes every Job's task: a hanging pod reads its script again.
    fn wake_jobs(&self) {
        for tx in self.jobs().values() {
            let _ = tx.send(());
        }
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
                "untouched" => return SnapshotBehaviour::Untouched,
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
                ("", "persistentvolumeclaims", ChangeType::Modified) => {
                    release_unused_claims(&state, &ns);
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
                    let (tx, rx) = mpsc::unbounded_channel();
                    state.controllers.jobs().insert(uid.clone(), tx);
                    tokio::spawn(run_job(Arc::downgrade(&state), ns, name, uid, b, rx));
                }
                ("batch", "jobs", ChangeType::Modified) => {
                    state.controllers.wake_job(&uid);
                }
                ("batch", "jobs", ChangeType::Deleted) => {
                    state.controllers.jobs().remove(&uid);
                }
                ("", "pods", t) => {
                    if let Some(owner) = controller_of(&change.object, "Job") {
                        state.controllers.wake_job(&owner);
                    }
                    if t != ChangeType::Added {
                        release_unused_claims(&state, &ns);
                    }
                }
                _ => {}
            }
        }
    });
}

/// The uid of the controller of `obj` of `kind`, if any.
fn controller_of(obj: &Value, kind: &str) -> Option<String> {
    obj["metadata"]["ownerReferences"]
        .as_array()?
        .iter()
        .find(|o| o["controller"] == true && o["kind"] == kind)
        .and_then(|o| o["uid"].as_str().map(str::to_owned))
}

/// Records an Event about `object` as a controller does (core/v1, `source.component` and
/// `reportingComponent` the controller's name).
fn record_event(
    state: &SimState,
    object: &Value,
    type_: &str,
    reason: &str,
    message: &str,
    component: &str,
) {
    let ns = object["metadata"]["namespace"]
        .as_str()
        .unwrap_or("default");
    let name = object["metadata"]["name"].as_str().unwrap_or("");
    let now = now_timestamp();
    let suffix: u64 = rand::random();
    let event = json!({
        "metadata": {"name": format!("{name}.{suffix:016x}"), "namespace": ns},
        "involvedObject": {
            "kind": object["kind"], "namespace": ns, "name": name,
            "uid": object["metadata"]["uid"], "apiVersion": object["apiVersion"],
            "resourceVersion": object["metadata"]["resourceVersion"],
        },
        "reason": reason, "message": message,
        "source": {"component": component},
        "firstTimestamp": now, "lastTimestamp": now, "count": 1, "type": type_,
        "eventTime": null, "reportingComponent": component, "reportingInstance": "",
    });
    let events = res("", "events");
    if let Err(e) = state
        .store
        .create(events, Some(ns), event, &WriteOptions::default())
    {
        tracing::debug!("kube-sim: event {reason} about {ns}/{name}: {e}");
    }
}

/// The PVC-protection controller: a terminating PVC that no pod uses any more (no pod of
/// the namespace that has not ended names it in its volumes) loses
/// `kubernetes.io/pvc-protection`, and so goes.
fn release_unused_claims(state: &SimState, ns: &str) {
    let terminating: Vec<Value> = state
        .store
        .all(pvcs())
        .into_iter()
        .filter(|p| p["metadata"]["namespace"] == ns)
        .filter(|p| p["metadata"]["deletionTimestamp"].is_string())
        .filter(|p| {
            p["metadata"]["finalizers"]
                .as_array()
                .is_some_and(|f| f.iter().any(|x| x == PVC_PROTECTION))
        })
        .collect();
    if terminating.is_empty() {
        return;
    }
    let pods: Vec<Value> = state
        .store
        .all(res("", "pods"))
        .into_iter()
        .filter(|p| p["metadata"]["namespace"] == ns)
        .filter(|p| !matches!(p["status"]["phase"].as_str(), Some("Succeeded" | "Failed")))
        .collect();
    for pvc in terminating {
        let name = pvc["metadata"]["name"].as_str().unwrap_or("");
        let used = pods.iter().any(|p| {
            p["spec"]["volumes"].as_array().is_some_and(|vs| {
                vs.iter()
                    .any(|v| v["persistentVolumeClaim"]["claimName"] == name)
            })
        });
        if used {
            continue;
        }
        let finalizers: Vec<Value> = pvc["metadata"]["finalizers"]
            .as_array()
            .map(|f| f.iter().filter(|x| *x != PVC_PROTECTION).cloned().collect())
            .unwrap_or_default();
        let _ = state.store.patch(
            pvcs(),
            Some(ns),
            name,
            PatchType::Merge,
            &json!({"metadata": {"finalizers": finalizers, "resourceVersion": pvc["metadata"]["resourceVersion"]}}),
            false,
            &WriteOptions::default(),
        );
    }
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
    // The PV controller provisions only through a StorageClass that exists and names a
    // provisioner (a claim without a class is bound as before: kube-sim's own provisioner).
    {
        let Some(s) = state.upgrade() else { return };
        let Some(pvc) = current(&s, pvcs(), &ns, &name, &uid) else {
            return;
        };
        if let Some(class) = pvc["spec"]["storageClassName"]
            .as_str()
            .filter(|c| !c.is_empty())
        {
            match s
                .store
                .get(res("storage.k8s.io", "storageclasses"), None, class)
            {
                Err(_) => {
                    record_event(
                        &s,
                        &pvc,
                        "Warning",
                        "ProvisioningFailed",
                        &format!("storageclass.storage.k8s.io \"{class}\" not found"),
                        "persistentvolume-controller",
                    );
                    return;
                }
                Ok(c) if c["provisioner"] == "kubernetes.io/no-provisioner" => return,
                Ok(_) => {}
            }
        }
    }
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
    if b == SnapshotBehaviour::Untouched {
        return;
    }
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

fn condition(kind: &str, status: &str, reason: &str, message: &str) -> Value {
    let now = now_timestamp();
    json!({
        "type": kind, "status": status, "reason": reason, "message": message,
        "lastProbeTime": now, "lastTransitionTime": now,
    })
}

/// A pod's log as its outcome scripts it: its lines, and a newline after the last.
fn log_text(outcome: &PodOutcome) -> String {
    let mut text = outcome.logs.join("\n");
    if !text.is_empty() {
        text.push('\n');
    }
    text
}

fn outcome_of(b: &JobBehaviour, attempt: usize) -> PodOutcome {
    b.pods[attempt.min(b.pods.len().saturating_sub(1))].clone()
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

/// The labels of the one node pods are run on (kube-sim has no Node objects): a pod whose
/// `nodeSelector` asks for anything else is never scheduled (it stays Pending, without a
/// `nodeName`), as on a cluster without such a node.
pub const NODE_LABELS: [(&str, &str); 3] = [
    ("kubernetes.io/hostname", NODE_NAME),
    ("kubernetes.io/os", "linux"),
    ("kubernetes.io/arch", "amd64"),
];

/// The name of that node (the `spec.nodeName` of the pods the Job controller runs).
pub const NODE_NAME: &str = "kube-sim";

fn schedulable(pod_spec: &Value) -> bool {
    pod_spec["nodeSelector"].as_object().is_none_or(|sel| {
        sel.iter()
            .all(|(k, v)| NODE_LABELS.iter().any(|(nk, nv)| nk == k && v == nv))
    })
}

/// A pod this Job controller made and that has not ended.
struct Run {
    name: String,
    /// Which pod of the Job it is (0 for the first), for its scripted outcome.
    attempt: usize,
    /// Stuck (see the module's table) until this time (`None`: until scripted otherwise).
    stuck_until: Option<Option<tokio::time::Instant>>,
    outcome: PodOutcome,
    /// When it ends (`None`: it never does by itself: it hangs, or it was never scheduled).
    ends: Option<tokio::time::Instant>,
    container: Value,
}

/// How many pods the Job wants running now.
fn wanted(job: &Value, succeeded: i64) -> i64 {
    let spec = &job["spec"];
    if spec["suspend"] == true {
        return 0;
    }
    let parallelism = spec["parallelism"].as_i64().unwrap_or(1).max(0);
    match spec["completions"].as_i64() {
        Some(c) => parallelism.min((c - succeeded).max(0)),
        // A work queue: done once one pod succeeded.
        None if succeeded > 0 => 0,
        None => parallelism,
    }
}

/// The Job controller for one Job, level-triggered: woken by any change of the Job or of a
/// pod it controls, and by its pods' ends. It runs `wanted` pods (deleting the newest beyond,
/// as at `parallelism: 0`), suspends and resumes, counts successes and failures, and finishes
/// the Job `Complete` (completions reached) or `Failed` (over `backoffLimit`); its Events are
/// the real controller's (`SuccessfulCreate`, `SuccessfulDelete`, `Suspended`, `Resumed`,
/// `Completed`, `BackoffLimitExceeded`).
async fn run_job(
    state: Weak<SimState>,
    ns: String,
    name: String,
    uid: String,
    b: JobBehaviour,
    mut wake: mpsc::UnboundedReceiver<()>,
) {
    // let the creator observe the fresh object before the controller acts
    tokio::time::sleep(Duration::from_millis(10)).await;
    let jobs = res("batch", "jobs");
    let pods_res = res("", "pods");
    let mut runs: Vec<Run> = Vec::new();
    let (mut made, mut succeeded, mut failed) = (0usize, 0i64, 0i64);
    let mut suspended: Option<bool> = None;
    let mut started: Option<String> = None;
    let mut conditions: Vec<Value> = Vec::new();
    let mut finished = false;
    let mut create_failed_recorded = false;
    loop {
        // Whether a stuck pod or a failing create waits on the script (polled: a test may
        // script the Job anew through the Rust API, which no watch event announces).
        let mut polling = false;
        {
            let Some(s) = state.upgrade() else { return };
            let Some(job) = current(&s, jobs, &ns, &name, &uid) else {
                return;
            };
            // The script is read when the Job starts; a Job scripted stuck, hanging (or unable
            // to create its pods) follows its script as it is now, so that a test can let it
            // go on.
            let now_scripted = s.controllers.job_for(&job, &ns, &name);
            let b =
                if b.create_fails.is_some() || b.pods.iter().any(|p| p.stuck.is_some() || p.hang) {
                    &now_scripted
                } else {
                    &b
                };
            // A stuck pod recovers once its scripted outcome no longer is stuck, or its time
            // is up: it runs on as scripted then.
            for run in runs.iter_mut().filter(|r| r.stuck_until.is_some()) {
                let scripted = outcome_of(b, run.attempt);
                let time_up = run
                    .stuck_until
                    .flatten()
                    .is_some_and(|u| tokio::time::Instant::now() >= u);
                if scripted.stuck.is_none() || time_up {
                    let outcome = PodOutcome {
                        stuck: None,
                        ..if scripted.stuck.is_none() {
                            scripted
                        } else {
                            run.outcome.clone()
                        }
                    };
                    recover_pod(&s, &ns, run, outcome);
                } else {
                    polling = true;
                }
            }
            // A running pod that hangs ends once its scripted outcome no longer hangs: it
            // runs on for that outcome's time, and ends as it says. Scripting a Job wakes its
            // task, so this needs no polling.
            for run in runs
                .iter_mut()
                .filter(|r| r.outcome.hang && r.stuck_until.is_none() && r.ends.is_none())
            {
                let running = s
                    .store
                    .get(pods_res, Some(&ns), &run.name)
                    .is_ok_and(|p| p["status"]["phase"] == "Running");
                if !running {
                    continue;
                }
                let scripted = outcome_of(b, run.attempt);
                if !scripted.hang && scripted.stuck.is_none() {
                    let first = run.container["name"].as_str().unwrap_or("");
                    s.set_pod_log(&ns, &run.name, first, &log_text(&scripted));
                    run.ends = Some(tokio::time::Instant::now() + scripted.run_for);
                    run.outcome = scripted;
                }
            }
            // Pods deleted by someone else are no longer run.
            runs.retain(|r| s.store.get(pods_res, Some(&ns), &r.name).is_ok());
            let suspend = job["spec"]["suspend"] == true;
            if !finished && suspended != Some(suspend) {
                let before = suspended.replace(suspend);
                if suspend {
                    conditions.retain(|c| c["type"] != "Suspended");
                    conditions.push(condition(
                        "Suspended",
                        "True",
                        "JobSuspended",
                        "Job suspended",
                    ));
                    started = None;
                    record_event(
                        &s,
                        &job,
                        "Normal",
                        "Suspended",
                        "Job suspended",
                        "job-controller",
                    );
                } else {
                    started = Some(now_timestamp());
                    if before == Some(true) {
                        conditions.retain(|c| c["type"] != "Suspended");
                        conditions.push(condition(
                            "Suspended",
                            "False",
                            "JobResumed",
                            "Job resumed",
                        ));
                        record_event(
                            &s,
                            &job,
                            "Normal",
                            "Resumed",
                            "Job resumed",
                            "job-controller",
                        );
                    }
                }
            }
            let want = if finished { 0 } else { wanted(&job, succeeded) };
            while runs.len() as i64 > want {
                let Some(run) = runs.pop() else { break };
                if s.store
                    .delete(pods_res, Some(&ns), &run.name, &Default::default())
                    .is_ok()
                {
                    record_event(
                        &s,
                        &job,
                        "Normal",
                        "SuccessfulDelete",
                        &format!("Deleted pod: {}", run.name),
                        "job-controller",
                    );
                }
            }
            if (runs.len() as i64) < want
                && let Some(message) = &b.create_fails
            {
                // The Job cannot create its pods (its ServiceAccount is missing, say): said
                // once, and it stays active until scripted otherwise.
                polling = true;
                if !create_failed_recorded {
                    create_failed_recorded = true;
                    let account = job["spec"]["template"]["spec"]["serviceAccountName"]
                        .as_str()
                        .unwrap_or("default");
                    let message = message.clone().unwrap_or_else(|| {
                        format!(
                            "Error creating: pods \"{name}-\" is forbidden: error looking up \
                             service account {ns}/{account}: serviceaccount \"{account}\" not found"
                        )
                    });
                    record_event(
                        &s,
                        &job,
                        "Warning",
                        "FailedCreate",
                        &message,
                        "job-controller",
                    );
                }
            }
            while (runs.len() as i64) < want && b.create_fails.is_none() {
                let outcome = outcome_of(b, made);
                let attempt = made;
                made += 1;
                match start_pod(&s, &job, &ns, &name, &uid, attempt, outcome) {
                    Some(run) => {
                        record_event(
                            &s,
                            &job,
                            "Normal",
                            "SuccessfulCreate",
                            &format!("Created pod: {}", run.name),
                            "job-controller",
                        );
                        runs.push(run);
                    }
                    None => break,
                }
            }
            let completions = job["spec"]["completions"].as_i64();
            let backoff_limit = job["spec"]["backoffLimit"].as_i64().unwrap_or(6);
            if !finished {
                let done = match completions {
                    Some(c) => succeeded >= c,
                    None => succeeded > 0 && runs.is_empty(),
                };
                if done {
                    finished = true;
                    conditions.push(condition(
                        "SuccessCriteriaMet",
                        "True",
                        "CompletionsReached",
                        "Reached expected number of succeeded pods",
                    ));
                    conditions.push(condition(
                        "Complete",
                        "True",
                        "CompletionsReached",
                        "Reached expected number of succeeded pods",
                    ));
                    record_event(
                        &s,
                        &job,
                        "Normal",
                        "Completed",
                        "Job completed",
                        "job-controller",
                    );
                } else if failed > backoff_limit {
                    finished = true;
                    for run in runs.drain(..) {
                        let _ = s
                            .store
                            .delete(pods_res, Some(&ns), &run.name, &Default::default());
                    }
                    conditions.push(condition(
                        "FailureTarget",
                        "True",
                        "BackoffLimitExceeded",
                        "Job has reached the specified backoff limit",
                    ));
                    conditions.push(condition(
                        "Failed",
                        "True",
                        "BackoffLimitExceeded",
                        "Job has reached the specified backoff limit",
                    ));
                    record_event(
                        &s,
                        &job,
                        "Warning",
                        "BackoffLimitExceeded",
                        "Job has reached the specified backoff limit",
                        "job-controller",
                    );
                }
            }
            let ready = runs
                .iter()
                .filter(|r| {
                    s.store
                        .get(pods_res, Some(&ns), &r.name)
                        .is_ok_and(|p| p["status"]["phase"] == "Running")
                })
                .count();
            let mut status = json!({
                "active": null, "succeeded": null, "failed": null, "startTime": started,
                "ready": ready, "terminating": 0, "uncountedTerminatedPods": {},
                "conditions": if conditions.is_empty() { Value::Null } else { json!(conditions) },
            });
            for (k, n) in [
                ("active", runs.len() as i64),
                ("succeeded", succeeded),
                ("failed", failed),
            ] {
                if n > 0 {
                    status[k] = json!(n);
                }
            }
            if finished && succeeded > 0 && failed <= backoff_limit {
                let done_at = job["status"]["completionTime"]
                    .as_str()
                    .map(str::to_owned)
                    .unwrap_or_else(now_timestamp);
                status["completionTime"] = json!(done_at);
            }
            job_status_patch(&s, &ns, &name, status);
        }
        let mut next_end = runs.iter().filter_map(|r| r.ends).min();
        if polling {
            let poll = match state.upgrade() {
                Some(s) => s.controllers.poll(),
                None => return,
            };
            let at = tokio::time::Instant::now() + poll;
            next_end = Some(next_end.map_or(at, |e| e.min(at)));
        }
        tokio::select! {
            woke = wake.recv() => {
                if woke.is_none() {
                    return;
                }
            }
            () = async {
                match next_end {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => futures::future::pending().await,
                }
            } => {
                let Some(s) = state.upgrade() else { return };
                let now = tokio::time::Instant::now();
                let (ended, still): (Vec<Run>, Vec<Run>) =
                    runs.drain(..).partition(|r| r.ends.is_some_and(|e| e <= now));
                runs = still;
                for run in ended {
                    end_pod(&s, &ns, &run);
                    if run.outcome.succeed {
                        succeeded += 1;
                    } else {
                        failed += 1;
                    }
                }
            }
        }
    }
}

/// Creates the next pod of the Job (named `<job>-<random>`, from its template, owned by it)
/// and, when a node fits its `nodeSelector`, runs it there.
fn start_pod(
    s: &SimState,
    job: &Value,
    ns: &str,
    name: &str,
    uid: &str,
    attempt: usize,
    outcome: PodOutcome,
) -> Option<Run> {
    let pods_res = res("", "pods");
    let template = &job["spec"]["template"];
    let mut labels = template["metadata"]["labels"].clone();
    if !labels.is_object() {
        labels = json!({});
    }
    labels["job-name"] = json!(name);
    labels["batch.kubernetes.io/job-name"] = json!(name);
    labels["controller-uid"] = json!(uid);
    labels["batch.kubernetes.io/controller-uid"] = json!(uid);
    let mut spec = template["spec"].clone();
    let runs = schedulable(&spec);
    if runs {
        spec["nodeName"] = json!(NODE_NAME);
    }
    let mut pod = json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {
            "generateName": format!("{name}-"),
            "namespace": ns,
            "labels": labels,
            "annotations": template["metadata"]["annotations"],
            "ownerReferences": [{
                "apiVersion": "batch/v1", "kind": "Job", "name": name, "uid": uid,
                "controller": true, "blockOwnerDeletion": true,
            }],
        },
        "spec": spec,
    });
    crate::admission::default_pod(&mut pod);
    let pod = match s.store.create(pods_res, Some(ns), pod, &keep_status()) {
        Ok(p) => p,
        Err(e) => {
            tracing::warn!("kube-sim: pod for job {ns}/{name}: {e}");
            return None;
        }
    };
    let pod_name = pod["metadata"]["name"].as_str().unwrap_or("").to_owned();
    let container = pod["spec"]["containers"][0].clone();
    let first = container["name"].as_str().unwrap_or("").to_owned();
    s.set_pod_log(ns, &pod_name, &first, &log_text(&outcome));
    if let Some(stuck) = outcome.stuck.clone()
        && runs
    {
        let (status, events) = stuck_status(ns, &pod, &stuck);
        let _ = s.store.patch(
            pods_res,
            Some(ns),
            &pod_name,
            PatchType::Merge,
            &json!({ "status": status }),
            true,
            &WriteOptions::default(),
        );
        let mut about = pod.clone();
        about["kind"] = json!("Pod");
        about["apiVersion"] = json!("v1");
        for [type_, reason, message, component] in events {
            record_event(s, &about, &type_, &reason, &message, &component);
        }
        return Some(Run {
            name: pod_name,
            attempt,
            stuck_until: Some(stuck.for_.map(|d| tokio::time::Instant::now() + d)),
            outcome,
            ends: None,
            container,
        });
    }
    let mut ends = None;
    if runs {
        let now = now_timestamp();
        let statuses: Vec<Value> =
            pod["spec"]["containers"]
                .as_array()
                .map(|cs| {
                    cs.iter()
                    .map(|c| json!({
                        "name": c["name"], "image": c["image"], "ready": true, "started": true,
                        "restartCount": 0, "state": {"running": {"startedAt": now}},
                    }))
                    .collect()
                })
                .unwrap_or_default();
        let running = json!({"status": {
            "phase": "Running", "startTime": now, "containerStatuses": statuses,
            "conditions": [{"type": "Ready", "status": "True", "lastProbeTime": null, "lastTransitionTime": now}],
        }});
        let _ = s.store.patch(
            pods_res,
            Some(ns),
            &pod_name,
            PatchType::Merge,
            &running,
            true,
            &WriteOptions::default(),
        );
        if !outcome.hang {
            ends = Some(tokio::time::Instant::now() + outcome.run_for);
        }
    }
    Some(Run {
        name: pod_name,
        attempt,
        stuck_until: None,
        outcome,
        ends,
        container,
    })
}

/// A stuck pod recovers: it runs, as `outcome` says (its log too).
fn recover_pod(s: &SimState, ns: &str, run: &mut Run, outcome: PodOutcome) {
    let pods_res = res("", "pods");
    let first = run.container["name"].as_str().unwrap_or("").to_owned();
    s.set_pod_log(ns, &run.name, &first, &log_text(&outcome));
    let now = now_timestamp();
    let ready = |kind: &str| json!({"type": kind, "status": "True", "lastProbeTime": null, "lastTransitionTime": now});
    let running = json!({"status": {
        "phase": "Running", "startTime": now,
        "conditions": [
            ready("PodReadyToStartContainers"), ready("Initialized"), ready("Ready"),
            ready("ContainersReady"), ready("PodScheduled"),
        ],
        "containerStatuses": [{
            "name": run.container["name"], "image": run.container["image"], "ready": true,
            "started": true, "restartCount": 0, "state": {"running": {"startedAt": now}},
        }],
    }});
    let _ = s.store.patch(
        pods_res,
        Some(ns),
        &run.name,
        PatchType::Merge,
        &running,
        true,
        &WriteOptions::default(),
    );
    run.stuck_until = None;
    run.ends = (!outcome.hang).then(|| tokio::time::Instant::now() + outcome.run_for);
    run.outcome = outcome;
}

/// The pod's end as its kubelet reports it: `Succeeded` (exit 0) or `Failed` (exit 1).
fn end_pod(s: &SimState, ns: &str, run: &Run) {
    let pods_res = res("", "pods");
    let (phase, exit_code, reason) = if run.outcome.succeed {
        ("Succeeded", 0, "Completed")
    } else {
        ("Failed", 1, "Error")
    };
    let Ok(pod) = s.store.get(pods_res, Some(ns), &run.name) else {
        return;
    };
    let statuses: Vec<Value> = pod["spec"]["containers"]
        .as_array()
        .map(|cs| {
            cs.iter()
                .map(|c| {
                    json!({
                        "name": c["name"], "image": c["image"], "ready": false, "started": false,
                        "restartCount": 0,
                        "state": {"terminated": {"exitCode": exit_code, "reason": reason, "finishedAt": now_timestamp()}},
                    })
                })
                .collect()
        })
        .unwrap_or_else(|| vec![run.container.clone()]);
    let done = json!({"status": {"phase": phase, "containerStatuses": statuses,
        "conditions": [{"type": "Ready", "status": "False", "lastProbeTime": null, "lastTransitionTime": now_timestamp(), "reason": "PodCompleted"}]}});
    let _ = s.store.patch(
        pods_res,
        Some(ns),
        &run.name,
        PatchType::Merge,
        &done,
        true,
        &WriteOptions::default(),
    );
}
