//! The stand-in: one node's kubelet and one CSI driver (with the CSI snapshot controller and
//! sidecars), played through the real API server with the admin's client. It writes only what
//! those components write: its own Node, node Lease, StorageClass, VolumeSnapshotClass and
//! CSIDriver; PersistentVolumes and VolumeSnapshotContents; the status of pods bound to its node
//! and of VolumeSnapshots. It never writes the spec or metadata of an object the agent made.

use std::{
    collections::HashSet,
    sync::{Arc, Mutex},
    time::Duration,
};

use anyhow::Context as _;
use chrono::{SecondsFormat, Utc};
use futures::StreamExt as _;
use k8s_openapi::api::{
    coordination::v1::Lease,
    core::v1::{Node, PersistentVolume, PersistentVolumeClaim, Pod},
};
use kube::{
    Api,
    api::{
        ApiResource, DeleteParams, DynamicObject, GroupVersionKind, ListParams, Patch, PatchParams,
        PostParams, Preconditions,
    },
    runtime::{WatchStreamExt as _, watcher},
};
use serde_json::{Value, json};
use tokio::{sync::Notify, task::JoinHandle};
use tracing::warn;

use crate::{
    ClusterEnv,
    kubelet::{self, LogRead, Logs, PodRun},
    wait_for,
};

/// The field manager of everything the stand-in writes.
const MANAGER: &str = "snapgate-standin";
/// How often the stand-in kubelet renews its node Lease (as the kubelet does).
const HEARTBEAT: Duration = Duration::from_secs(10);
/// How often every object is looked at again without an event (retries).
const RESYNC: Duration = Duration::from_secs(1);

/// What pods do: decided per pod when the stand-in kubelet starts it.
pub type PodScript = Arc<dyn Fn(&Pod) -> PodRun + Send + Sync>;

/// The stand-in's names and its pods' script.
#[derive(Clone)]
pub struct StandinConfig {
    /// The Node it registers and runs pods for.
    pub node: String,
    /// The CSI driver name of its StorageClass, VolumeSnapshotClass, PVs and contents.
    pub driver: String,
    /// Its StorageClass (the cluster's default class).
    pub storage_class: String,
    /// Its VolumeSnapshotClass (the default class for its driver).
    pub snapshot_class: String,
    /// What each pod run on its node does.
    pub pods: PodScript,
}

impl std::fmt::Debug for StandinConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StandinConfig")
            .field("node", &self.node)
            .field("driver", &self.driver)
            .field("storage_class", &self.storage_class)
            .field("snapshot_class", &self.snapshot_class)
            .finish_non_exhaustive()
    }
}

impl Default for StandinConfig {
    fn default() -> Self {
        Self {
            node: "snapgate-standin".into(),
            driver: "standin.csi.snapgate.test".into(),
            storage_class: "standin".into(),
            snapshot_class: "standin".into(),
            pods: Arc::new(|pod: &Pod| {
                PodRun::succeed([format!(
                    "pod {} ran on the stand-in kubelet",
                    pod.metadata.name.as_deref().unwrap_or_default()
                )])
            }),
        }
    }
}

fn ar(group: &str, version: &str, kind: &str, plural: &str) -> ApiResource {
    ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk(group, version, kind), plural)
}

fn snapshots() -> ApiResource {
    ar(
        "snapshot.storage.k8s.io",
        "v1",
        "VolumeSnapshot",
        "volumesnapshots",
    )
}

fn contents() -> ApiResource {
    ar(
        "snapshot.storage.k8s.io",
        "v1",
        "VolumeSnapshotContent",
        "volumesnapshotcontents",
    )
}

fn snapshot_classes() -> ApiResource {
    ar(
        "snapshot.storage.k8s.io",
        "v1",
        "VolumeSnapshotClass",
        "volumesnapshotclasses",
    )
}

fn now() -> String {
    Utc::now().to_rfc3339_opts(SecondsFormat::Secs, true)
}

/// Bytes of a Kubernetes quantity such as `1Gi`, `500M` or `1073741824` (whole numbers only,
/// which is what storage requests are).
fn quantity_bytes(q: &str) -> Option<i64> {
    let split = q.find(|c: char| !c.is_ascii_digit()).unwrap_or(q.len());
    let (digits, suffix) = q.split_at(split);
    let n: i64 = digits.parse().ok()?;
    let factor: i64 = match suffix {
        "" => 1,
        "k" => 1_000,
        "M" => 1_000_000,
        "G" => 1_000_000_000,
        "T" => 1_000_000_000_000,
        "Ki" => 1 << 10,
        "Mi" => 1 << 20,
        "Gi" => 1 << 30,
        "Ti" => 1 << 40,
        _ => return None,
    };
    n.checked_mul(factor)
}

/// Whether a write failed only because its object already exists.
fn exists(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 409)
}

/// Whether a write failed only because its object is gone.
fn gone(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 404)
}

struct Shared {
    client: kube::Client,
    config: StandinConfig,
    kubelet_version: String,
    logs: Logs,
    /// Pods (by uid) the kubelet has started; each is run once.
    started: Mutex<HashSet<String>>,
    /// The pods it ran, as `namespace/name`, in order.
    ran: Mutex<Vec<String>>,
    /// The last errors of its passes, for failure messages.
    errors: Mutex<Vec<String>>,
    poke: Notify,
}

/// The stand-in, running until dropped.
pub struct Standin {
    shared: Arc<Shared>,
    tasks: Vec<JoinHandle<()>>,
}

impl Drop for Standin {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

impl std::fmt::Debug for Standin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Standin")
            .field("config", &self.shared.config)
            .finish_non_exhaustive()
    }
}

impl Standin {
    /// Installs its classes and CSIDriver, registers its node, serves the kubelet's log
    /// endpoint, and starts playing; returns once the node is schedulable (the node lifecycle
    /// controller has seen it Ready and lifted the `not-ready` taint).
    pub async fn start(
        env: &ClusterEnv,
        client: kube::Client,
        config: StandinConfig,
    ) -> anyhow::Result<Self> {
        let logs = Logs::default();
        let (port, server) =
            kubelet::serve(&env.kubelet_cert, &env.kubelet_key, &env.ca, logs.clone()).await?;
        let shared = Arc::new(Shared {
            client,
            config,
            kubelet_version: env.version.clone(),
            logs,
            started: Mutex::default(),
            ran: Mutex::default(),
            errors: Mutex::default(),
            poke: Notify::new(),
        });
        let mut tasks = vec![server];
        shared.install_classes().await?;
        shared.register_node(port).await?;
        tasks.push(tokio::spawn(shared.clone().heartbeat()));
        tasks.extend(shared.clone().watches());
        tasks.push(tokio::spawn(shared.clone().control_loop()));
        let standin = Self { shared, tasks };
        let nodes: Api<Node> = Api::all(standin.shared.client.clone());
        let node = standin.shared.config.node.clone();
        wait_for(
            &format!("node {node} schedulable (Ready, no not-ready taint)"),
            Duration::from_secs(90),
            || async {
                let n = nodes.get(&node).await.map_err(|e| e.to_string())?;
                let taints = n.spec.and_then(|s| s.taints).unwrap_or_default();
                if taints.is_empty() {
                    Ok(())
                } else {
                    Err(format!("taints {taints:?}"))
                }
            },
        )
        .await?;
        Ok(standin)
    }

    /// The pods its kubelet ran, as `namespace/name`, in order.
    pub fn pods_ran(&self) -> Vec<String> {
        self.shared.ran.lock().unwrap().clone()
    }

    /// The log reads the API server made of its kubelet.
    pub fn log_reads(&self) -> Vec<LogRead> {
        self.shared.logs.reads()
    }

    /// The last errors of its passes (it retries each on the next pass).
    pub fn errors(&self) -> Vec<String> {
        self.shared.errors.lock().unwrap().clone()
    }
}

impl Shared {
    fn cfg(&self) -> &StandinConfig {
        &self.config
    }

    /// The StorageClass (default, Immediate binding, Delete), the VolumeSnapshotClass (default
    /// for the driver, Delete) and the CSIDriver object a CSI driver's installation brings.
    async fn install_classes(&self) -> anyhow::Result<()> {
        let c = self.cfg();
        let apply = PatchParams::apply(MANAGER).force();
        let storage: Api<DynamicObject> = Api::all_with(
            self.client.clone(),
            &ar("storage.k8s.io", "v1", "StorageClass", "storageclasses"),
        );
        storage
            .patch(
                &c.storage_class,
                &apply,
                &Patch::Apply(json!({
                    "apiVersion": "storage.k8s.io/v1", "kind": "StorageClass",
                    "metadata": {"name": c.storage_class, "annotations": {
                        "storageclass.kubernetes.io/is-default-class": "true"}},
                    "provisioner": c.driver,
                    "reclaimPolicy": "Delete",
                    "volumeBindingMode": "Immediate",
                })),
            )
            .await
            .context("the stand-in's StorageClass")?;
        let classes: Api<DynamicObject> = Api::all_with(self.client.clone(), &snapshot_classes());
        classes
            .patch(
                &c.snapshot_class,
                &apply,
                &Patch::Apply(json!({
                    "apiVersion": "snapshot.storage.k8s.io/v1", "kind": "VolumeSnapshotClass",
                    "metadata": {"name": c.snapshot_class, "annotations": {
                        "snapshot.storage.kubernetes.io/is-default-class": "true"}},
                    "driver": c.driver,
                    "deletionPolicy": "Delete",
                })),
            )
            .await
            .context("the stand-in's VolumeSnapshotClass (are the snapshot CRDs installed?)")?;
        let drivers: Api<DynamicObject> = Api::all_with(
            self.client.clone(),
            &ar("storage.k8s.io", "v1", "CSIDriver", "csidrivers"),
        );
        drivers
            .patch(
                &c.driver,
                &apply,
                &Patch::Apply(json!({
                    "apiVersion": "storage.k8s.io/v1", "kind": "CSIDriver",
                    "metadata": {"name": c.driver},
                    "spec": {"attachRequired": false, "podInfoOnMount": false},
                })),
            )
            .await
            .context("the stand-in's CSIDriver")?;
        Ok(())
    }

    /// Registers the node as a kubelet does (or takes over the one an earlier stand-in
    /// registered) with its status: Ready, room for pods, its address and kubelet port.
    async fn register_node(&self, port: u16) -> anyhow::Result<()> {
        let node = &self.cfg().node;
        let nodes: Api<Node> = Api::all(self.client.clone());
        let object: Node = serde_json::from_value(json!({
            "apiVersion": "v1", "kind": "Node",
            "metadata": {"name": node, "labels": {
                "kubernetes.io/hostname": node,
                "kubernetes.io/os": "linux",
                "kubernetes.io/arch": "amd64",
            }},
        }))?;
        match nodes.create(&PostParams::default(), &object).await {
            Ok(_) => {}
            Err(e) if exists(&e) => {}
            Err(e) => return Err(e).context(format!("registering node {node}")),
        }
        let t = now();
        let capacity =
            json!({"cpu": "8", "memory": "16Gi", "pods": "110", "ephemeral-storage": "100Gi"});
        let condition = |kind: &str, status: &str, reason: &str| {
            json!({"type": kind, "status": status, "reason": reason, "message": "played by snapgate's stand-in",
                   "lastHeartbeatTime": t, "lastTransitionTime": t})
        };
        nodes
            .patch_status(
                node,
                &PatchParams::default(),
                &Patch::Merge(json!({"status": {
                    "capacity": capacity,
                    "allocatable": capacity,
                    "conditions": [
                        condition("MemoryPressure", "False", "KubeletHasSufficientMemory"),
                        condition("DiskPressure", "False", "KubeletHasNoDiskPressure"),
                        condition("PIDPressure", "False", "KubeletHasSufficientPID"),
                        condition("Ready", "True", "KubeletReady"),
                    ],
                    "addresses": [
                        {"type": "InternalIP", "address": "127.0.0.1"},
                        {"type": "Hostname", "address": node},
                    ],
                    "daemonEndpoints": {"kubeletEndpoint": {"Port": port}},
                    "nodeInfo": {
                        "machineID": "snapgate-standin", "systemUUID": "snapgate-standin",
                        "bootID": "snapgate-standin", "kernelVersion": "",
                        "osImage": "snapgate stand-in (no containers run)",
                        "containerRuntimeVersion": "standin://0",
                        "kubeletVersion": self.kubelet_version, "kubeProxyVersion": "",
                        "operatingSystem": "linux", "architecture": "amd64",
                    },
                }})),
            )
            .await
            .with_context(|| format!("the status of node {node}"))?;
        self.renew_lease().await
    }

    /// The node's Lease in `kube-node-lease`: the heartbeat the node lifecycle controller reads.
    async fn renew_lease(&self) -> anyhow::Result<()> {
        let node = &self.cfg().node;
        let leases: Api<Lease> = Api::namespaced(self.client.clone(), "kube-node-lease");
        let renew = Utc::now().to_rfc3339_opts(SecondsFormat::Micros, true);
        let lease = json!({
            "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
            "metadata": {"name": node, "namespace": "kube-node-lease"},
            "spec": {"holderIdentity": node, "leaseDurationSeconds": 40, "renewTime": renew},
        });
        leases
            .patch(
                node,
                &PatchParams::apply(MANAGER).force(),
                &Patch::Apply(&lease),
            )
            .await
            .with_context(|| format!("renewing the Lease of node {node}"))?;
        Ok(())
    }

    async fn heartbeat(self: Arc<Self>) {
        let mut tick = tokio::time::interval(HEARTBEAT);
        loop {
            tick.tick().await;
            if let Err(e) = self.renew_lease().await {
                self.error(format!("{e:#}"));
            }
        }
    }

    fn error(&self, e: String) {
        warn!(error = e, "stand-in");
        let mut errors = self.errors.lock().unwrap();
        errors.push(e);
        let excess = errors.len().saturating_sub(20);
        errors.drain(..excess);
    }

    /// Watches of what it acts on; every event pokes the control loop.
    fn watches(self: Arc<Self>) -> Vec<JoinHandle<()>> {
        fn watch<K>(shared: Arc<Shared>, api: Api<K>, config: watcher::Config) -> JoinHandle<()>
        where
            K: kube::Resource
                + Clone
                + std::fmt::Debug
                + serde::de::DeserializeOwned
                + Send
                + 'static,
            K::DynamicType: Default,
        {
            tokio::spawn(async move {
                let mut events = std::pin::pin!(watcher(api, config).default_backoff());
                while let Some(event) = events.next().await {
                    match event {
                        Ok(_) => shared.poke.notify_one(),
                        Err(e) => shared.error(format!("watch: {e}")),
                    }
                }
            })
        }
        fn watch_dynamic(shared: Arc<Shared>, resource: &ApiResource) -> JoinHandle<()> {
            let api: Api<DynamicObject> = Api::all_with(shared.client.clone(), resource);
            tokio::spawn(async move {
                let mut events =
                    std::pin::pin!(watcher(api, watcher::Config::default()).default_backoff());
                while let Some(event) = events.next().await {
                    match event {
                        Ok(_) => shared.poke.notify_one(),
                        Err(e) => shared.error(format!("watch: {e}")),
                    }
                }
            })
        }
        let c = self.client.clone();
        let on_node =
            watcher::Config::default().fields(&format!("spec.nodeName={}", self.cfg().node));
        vec![
            watch(self.clone(), Api::<Pod>::all(c.clone()), on_node),
            watch(
                self.clone(),
                Api::<PersistentVolumeClaim>::all(c.clone()),
                watcher::Config::default(),
            ),
            watch(
                self.clone(),
                Api::<PersistentVolume>::all(c),
                watcher::Config::default(),
            ),
            watch_dynamic(self.clone(), &snapshots()),
            watch_dynamic(self, &contents()),
        ]
    }

    async fn control_loop(self: Arc<Self>) {
        loop {
            tokio::select! {
                () = self.poke.notified() => {}
                () = tokio::time::sleep(RESYNC) => {}
            }
            for (what, result) in [
                ("provisioning", self.provision().await),
                ("deleting released volumes", self.delete_released().await),
                ("snapshots", self.snapshot().await),
                ("pods", self.run_pods().await),
            ] {
                if let Err(e) = result {
                    self.error(format!("{what}: {e:#}"));
                }
            }
        }
    }

    /// The CSI external-provisioner and driver: a PV for each pending PVC of the driver's
    /// class (the PV controller marks those with `volume.kubernetes.io/storage-provisioner`),
    /// from a data source only once that source is usable (a bound PVC, a ready snapshot). The
    /// PV controller then binds the two.
    async fn provision(&self) -> anyhow::Result<()> {
        let c = self.cfg();
        let pvcs: Api<PersistentVolumeClaim> = Api::all(self.client.clone());
        let pvs: Api<PersistentVolume> = Api::all(self.client.clone());
        for pvc in pvcs.list(&ListParams::default()).await? {
            let meta = &pvc.metadata;
            let annotations = meta.annotations.clone().unwrap_or_default();
            let ours = [
                "volume.kubernetes.io/storage-provisioner",
                "volume.beta.kubernetes.io/storage-provisioner",
            ]
            .iter()
            .any(|k| annotations.get(*k) == Some(&c.driver));
            let spec = pvc.spec.clone().unwrap_or_default();
            let pending = pvc.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Pending");
            if !ours || !pending || meta.deletion_timestamp.is_some() || spec.volume_name.is_some()
            {
                continue;
            }
            let (ns, name, uid) = (
                meta.namespace.clone().unwrap_or_default(),
                meta.name.clone().unwrap_or_default(),
                meta.uid.clone().unwrap_or_default(),
            );
            if let Some(source) = &spec.data_source
                && !self.source_usable(&ns, source).await?
            {
                continue;
            }
            let size = spec
                .resources
                .as_ref()
                .and_then(|r| r.requests.as_ref())
                .and_then(|r| r.get("storage"))
                .map(|q| q.0.clone())
                .context(format!("PVC {ns}/{name} requests no storage"))?;
            let pv: PersistentVolume = serde_json::from_value(json!({
                "apiVersion": "v1", "kind": "PersistentVolume",
                "metadata": {"name": format!("pvc-{uid}"), "annotations": {
                    "pv.kubernetes.io/provisioned-by": c.driver}},
                "spec": {
                    "capacity": {"storage": size},
                    "accessModes": spec.access_modes.clone().unwrap_or_default(),
                    "volumeMode": spec.volume_mode.clone().unwrap_or_else(|| "Filesystem".into()),
                    "storageClassName": spec.storage_class_name,
                    "persistentVolumeReclaimPolicy": "Delete",
                    "csi": {"driver": c.driver, "volumeHandle": format!("standin-vol-{uid}")},
                    "claimRef": {"apiVersion": "v1", "kind": "PersistentVolumeClaim",
                                 "namespace": ns, "name": name, "uid": uid},
                },
            }))?;
            match pvs.create(&PostParams::default(), &pv).await {
                Ok(_) => {}
                Err(e) if exists(&e) => {}
                Err(e) => return Err(e).context(format!("provisioning a PV for {ns}/{name}")),
            }
        }
        Ok(())
    }

    /// Whether a PVC's data source can be provisioned from: a bound PVC, or a VolumeSnapshot
    /// that is ready to use.
    async fn source_usable(
        &self,
        ns: &str,
        source: &k8s_openapi::api::core::v1::TypedLocalObjectReference,
    ) -> anyhow::Result<bool> {
        Ok(match (source.api_group.as_deref(), source.kind.as_str()) {
            (None | Some(""), "PersistentVolumeClaim") => {
                let pvcs: Api<PersistentVolumeClaim> = Api::namespaced(self.client.clone(), ns);
                pvcs.get_opt(&source.name)
                    .await?
                    .is_some_and(|p| p.status.and_then(|s| s.phase).as_deref() == Some("Bound"))
            }
            (Some("snapshot.storage.k8s.io"), "VolumeSnapshot") => {
                let snaps: Api<DynamicObject> =
                    Api::namespaced_with(self.client.clone(), ns, &snapshots());
                snaps
                    .get_opt(&source.name)
                    .await?
                    .is_some_and(|s| s.data["status"]["readyToUse"] == true)
            }
            _ => false,
        })
    }

    /// The external-provisioner's deletion: a PV of the driver that its claim released, with
    /// reclaim policy Delete, is deleted (the volume with it).
    async fn delete_released(&self) -> anyhow::Result<()> {
        let pvs: Api<PersistentVolume> = Api::all(self.client.clone());
        for pv in pvs.list(&ListParams::default()).await? {
            let spec = pv.spec.clone().unwrap_or_default();
            let ours = spec
                .csi
                .as_ref()
                .is_some_and(|c| c.driver == self.cfg().driver);
            let released = pv.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Released");
            let delete = spec.persistent_volume_reclaim_policy.as_deref() == Some("Delete");
            if ours && released && delete && pv.metadata.deletion_timestamp.is_none() {
                let name = pv.metadata.name.clone().unwrap_or_default();
                match pvs.delete(&name, &DeleteParams::default()).await {
                    Ok(_) => {}
                    Err(e) if gone(&e) => {}
                    Err(e) => return Err(e).context(format!("deleting released PV {name}")),
                }
            }
        }
        Ok(())
    }

    /// The CSI snapshot controller and the csi-snapshotter sidecar with the driver: for a
    /// VolumeSnapshot of a bound PVC of the driver, a VolumeSnapshotContent bound to it, cut
    /// and ready at once (its status, then the snapshot's status); a content whose snapshot is
    /// gone is deleted under `deletionPolicy: Delete`.
    async fn snapshot(&self) -> anyhow::Result<()> {
        let c = self.cfg();
        let snaps: Api<DynamicObject> = Api::all_with(self.client.clone(), &snapshots());
        let contents_api: Api<DynamicObject> = Api::all_with(self.client.clone(), &contents());
        let classes: Api<DynamicObject> = Api::all_with(self.client.clone(), &snapshot_classes());
        let listed = snaps.list(&ListParams::default()).await?;
        for snap in &listed {
            let status = &snap.data["status"];
            if snap.metadata.deletion_timestamp.is_some()
                || (status["boundVolumeSnapshotContentName"].is_string()
                    && status["readyToUse"] == true)
            {
                continue;
            }
            let (ns, name, uid) = (
                snap.metadata.namespace.clone().unwrap_or_default(),
                snap.metadata.name.clone().unwrap_or_default(),
                snap.metadata.uid.clone().unwrap_or_default(),
            );
            let Some(claim) = snap.data["spec"]["source"]["persistentVolumeClaimName"].as_str()
            else {
                continue; // pre-provisioned contents are not played
            };
            let class_name = match snap.data["spec"]["volumeSnapshotClassName"].as_str() {
                Some(n) => n.to_owned(),
                None => c.snapshot_class.clone(),
            };
            let Some(class) = classes.get_opt(&class_name).await? else {
                continue;
            };
            if class.data["driver"].as_str() != Some(&c.driver) {
                continue;
            }
            let pvcs: Api<PersistentVolumeClaim> = Api::namespaced(self.client.clone(), &ns);
            let Some(volume) = pvcs
                .get_opt(claim)
                .await?
                .filter(|p| p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Bound"))
                .and_then(|p| p.spec.and_then(|s| s.volume_name))
            else {
                continue; // the real controller waits for the claim to be bound too
            };
            let pv = Api::<PersistentVolume>::all(self.client.clone())
                .get(&volume)
                .await?;
            let pv_spec = pv.spec.unwrap_or_default();
            let Some(handle) = pv_spec
                .csi
                .filter(|s| s.driver == c.driver)
                .map(|s| s.volume_handle)
            else {
                continue;
            };
            let size = pv_spec
                .capacity
                .and_then(|cap| cap.get("storage").map(|q| q.0.clone()))
                .unwrap_or_else(|| "0".into());
            let content = format!("snapcontent-{uid}");
            let object: DynamicObject = serde_json::from_value(json!({
                "apiVersion": "snapshot.storage.k8s.io/v1", "kind": "VolumeSnapshotContent",
                "metadata": {"name": content},
                "spec": {
                    "volumeSnapshotRef": {"apiVersion": "snapshot.storage.k8s.io/v1",
                        "kind": "VolumeSnapshot", "namespace": ns, "name": name, "uid": uid},
                    "source": {"volumeHandle": handle},
                    "driver": c.driver,
                    "deletionPolicy": class.data["deletionPolicy"].as_str().unwrap_or("Delete"),
                    "volumeSnapshotClassName": class_name,
                },
            }))?;
            match contents_api.create(&PostParams::default(), &object).await {
                Ok(_) => {}
                Err(e) if exists(&e) => {}
                Err(e) => return Err(e).context(format!("the content of snapshot {ns}/{name}")),
            }
            let cut = Utc::now();
            contents_api
                .patch_status(
                    &content,
                    &PatchParams::default(),
                    &Patch::Merge(json!({"status": {
                        "snapshotHandle": format!("standin-snap-{uid}"),
                        "creationTime": cut.timestamp_nanos_opt().unwrap_or_default(),
                        "readyToUse": true,
                        "restoreSize": quantity_bytes(&size).unwrap_or_default(),
                    }})),
                )
                .await
                .with_context(|| format!("the status of content {content}"))?;
            let snaps_ns: Api<DynamicObject> =
                Api::namespaced_with(self.client.clone(), &ns, &snapshots());
            match snaps_ns
                .patch_status(
                    &name,
                    &PatchParams::default(),
                    &Patch::Merge(json!({"status": {
                        "boundVolumeSnapshotContentName": content,
                        "creationTime": cut.to_rfc3339_opts(SecondsFormat::Secs, true),
                        "readyToUse": true,
                        "restoreSize": size,
                    }})),
                )
                .await
            {
                Ok(_) => {}
                Err(e) if gone(&e) => {}
                Err(e) => return Err(e).context(format!("the status of snapshot {ns}/{name}")),
            }
        }
        let live: HashSet<String> = listed
            .iter()
            .filter_map(|s| s.metadata.uid.clone())
            .collect();
        for content in contents_api.list(&ListParams::default()).await? {
            let spec = &content.data["spec"];
            let ours = spec["driver"].as_str() == Some(&c.driver);
            let delete = spec["deletionPolicy"].as_str() == Some("Delete");
            let owner = spec["volumeSnapshotRef"]["uid"]
                .as_str()
                .unwrap_or_default();
            if ours
                && delete
                && !live.contains(owner)
                && content.metadata.deletion_timestamp.is_none()
            {
                let name = content.metadata.name.clone().unwrap_or_default();
                match contents_api.delete(&name, &DeleteParams::default()).await {
                    Ok(_) => {}
                    Err(e) if gone(&e) => {}
                    Err(e) => return Err(e).context(format!("deleting content {name}")),
                }
            }
        }
        Ok(())
    }

    /// The kubelet: each pod bound to the node is run once, by its script (running, then
    /// terminated with the script's exit code, its log kept for the log endpoint); a pod being
    /// deleted is stopped and its deletion confirmed, as the kubelet does.
    async fn run_pods(&self) -> anyhow::Result<()> {
        let pods: Api<Pod> = Api::all(self.client.clone());
        let on_node = ListParams::default().fields(&format!("spec.nodeName={}", self.cfg().node));
        for pod in pods.list(&on_node).await? {
            let (ns, name, uid) = (
                pod.metadata.namespace.clone().unwrap_or_default(),
                pod.metadata.name.clone().unwrap_or_default(),
                pod.metadata.uid.clone().unwrap_or_default(),
            );
            let api: Api<Pod> = Api::namespaced(self.client.clone(), &ns);
            let phase = pod.status.as_ref().and_then(|s| s.phase.clone());
            if pod.metadata.deletion_timestamp.is_some() {
                // A running pod's containers are stopped (SIGTERM: exit 143) and its status
                // says so before the deletion is confirmed.
                if phase.as_deref() == Some("Running") {
                    let now = now();
                    let containers: Vec<Value> = pod
                        .spec
                        .iter()
                        .flat_map(|s| &s.containers)
                        .map(|c| {
                            json!({"name": c.name, "image": c.image, "imageID": "",
                                   "ready": false, "started": false, "restartCount": 0,
                                   "state": {"terminated": {"exitCode": 143, "reason": "Error",
                                             "finishedAt": now}}})
                        })
                        .collect();
                    let stopped = json!({"status": {"phase": "Failed",
                                                    "containerStatuses": containers}});
                    match api
                        .patch_status(&name, &PatchParams::default(), &Patch::Strategic(stopped))
                        .await
                    {
                        Ok(_) => {}
                        Err(e) if gone(&e) => continue,
                        Err(e) => return Err(e).context(format!("stopping pod {ns}/{name}")),
                    }
                }
                let confirm = DeleteParams {
                    grace_period_seconds: Some(0),
                    preconditions: Some(Preconditions {
                        uid: Some(uid.clone()),
                        resource_version: None,
                    }),
                    ..Default::default()
                };
                match api.delete(&name, &confirm).await {
                    Ok(_) => {}
                    Err(e) if gone(&e) || exists(&e) => {}
                    Err(e) => {
                        return Err(e).context(format!("confirming deletion of pod {ns}/{name}"));
                    }
                }
                continue;
            }
            if !matches!(phase.as_deref(), None | Some("Pending"))
                || !self.started.lock().unwrap().insert(uid.clone())
            {
                continue;
            }
            let run = (self.config.pods)(&pod);
            self.ran.lock().unwrap().push(format!("{ns}/{name}"));
            let spec = pod.spec.clone().unwrap_or_default();
            for (i, container) in spec.containers.iter().enumerate() {
                let log = if i == 0 {
                    run.log.clone()
                } else {
                    String::new()
                };
                self.logs.set(&ns, &name, &container.name, log);
            }
            let started = now();
            let statuses = |state: Value, ready: bool| -> Vec<Value> {
                spec.containers
                    .iter()
                    .map(|c| {
                        json!({"name": c.name, "image": c.image, "imageID": "",
                               "containerID": format!("standin://{uid}-{}", c.name),
                               "ready": ready, "started": ready, "restartCount": 0, "state": state})
                    })
                    .collect()
            };
            let init_statuses: Vec<Value> = spec
                .init_containers
                .iter()
                .flatten()
                .map(|c| {
                    json!({"name": c.name, "image": c.image, "imageID": "", "ready": true,
                           "restartCount": 0, "state": {"terminated": {"exitCode": 0,
                           "reason": "Completed", "startedAt": started, "finishedAt": started}}})
                })
                .collect();
            let condition = |kind: &str, status: &str, reason: Option<&str>| json!({"type": kind, "status": status, "reason": reason, "lastTransitionTime": started});
            let running = json!({"status": {
                "phase": "Running",
                "hostIP": "127.0.0.1", "hostIPs": [{"ip": "127.0.0.1"}],
                "startTime": started,
                "conditions": [
                    condition("Initialized", "True", None),
                    condition("ContainersReady", "True", None),
                    condition("Ready", "True", None),
                ],
                "initContainerStatuses": init_statuses,
                "containerStatuses": statuses(json!({"running": {"startedAt": started}}), true),
            }});
            match api
                .patch_status(&name, &PatchParams::default(), &Patch::Strategic(running))
                .await
            {
                Ok(_) => {}
                Err(e) if gone(&e) => continue,
                Err(e) => return Err(e).context(format!("starting pod {ns}/{name}")),
            }
            if run.until_deleted {
                continue;
            }
            let ok = run.exit_code == 0;
            let finished = now();
            let terminated = json!({"terminated": {
                "exitCode": run.exit_code,
                "reason": if ok { "Completed" } else { "Error" },
                "startedAt": started, "finishedAt": finished,
            }});
            let done = json!({"status": {
                "phase": if ok { "Succeeded" } else { "Failed" },
                "conditions": [
                    condition("ContainersReady", "False", Some("PodCompleted")),
                    condition("Ready", "False", Some("PodCompleted")),
                ],
                "containerStatuses": statuses(terminated, false),
            }});
            match api
                .patch_status(&name, &PatchParams::default(), &Patch::Strategic(done))
                .await
            {
                Ok(_) => {}
                Err(e) if gone(&e) => {}
                Err(e) => return Err(e).context(format!("ending pod {ns}/{name}")),
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantities_read_as_bytes() {
        assert_eq!(quantity_bytes("1Gi"), Some(1 << 30));
        assert_eq!(quantity_bytes("500M"), Some(500_000_000));
        assert_eq!(quantity_bytes("1073741824"), Some(1 << 30));
        assert_eq!(quantity_bytes("1.5Gi"), None);
        assert_eq!(quantity_bytes("Gi"), None);
    }
}
