//! snapgate against a real Kubernetes API server: the control plane that `scripts/cluster up`
//! starts (etcd, kube-apiserver, kube-controller-manager, kube-scheduler, built from source),
//! and [`Standin`], which plays what that machine has no hardware for (a kubelet and a CSI
//! driver with its snapshot controller) through the real API. See this crate's README for
//! exactly what is played.
//!
//! ```text
//!   test ──gRPC──► snapgate-scheduler ◄──link── snapgate-agent
//!     │                                              │ REST, its ServiceAccount's token
//!     │ admin client                                 ▼
//!     └──────────────────────────────────────► kube-apiserver ◄── kube-controller-manager,
//!                                               │    ▲   ▲          kube-scheduler
//!                  pod logs (HTTPS, client cert)│    │   └── etcd
//!                                               ▼    │ admin client
//!                                           Standin: node, pods, PVs, snapshots
//! ```

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{Context as _, bail};
use base64::Engine as _;
use k8s_openapi::api::{authentication::v1::TokenRequest, core::v1::ServiceAccount};
use kube::{
    Api,
    api::{DynamicObject, GroupVersionKind, Patch, PatchParams, PostParams},
    config::{KubeConfigOptions, Kubeconfig},
};

pub mod differential;
mod kubelet;
mod standin;

pub use kubelet::{LogRead, PodRun};
pub use standin::{PodScript, Standin, StandinConfig};

/// Where `scripts/cluster up` writes its env file, relative to the repository.
pub const ENV_FILE: &str = "cluster/env";

/// The variable that names another env file than the repository's `cluster/env`.
pub const ENV_VAR: &str = "SNAPGATE_CLUSTER_ENV";

/// A cluster started by `scripts/cluster up`, as its env file describes it.
#[derive(Clone, Debug)]
pub struct ClusterEnv {
    /// The Kubernetes version the binaries were built from.
    pub version: String,
    /// The API server's URL.
    pub server: String,
    /// The admin kubeconfig (client certificate, `system:masters`).
    pub kubeconfig: PathBuf,
    /// The cluster CA (it signs the API server's and the kubelet stand-in's certificates and
    /// the clients' ones).
    pub ca: PathBuf,
    /// The serving certificate and key for the kubelet stand-in (127.0.0.1), which the API
    /// server verifies against the CA when it reads pod logs.
    pub kubelet_cert: PathBuf,
    /// See [`ClusterEnv::kubelet_cert`].
    pub kubelet_key: PathBuf,
    /// The directory of the components' logs.
    pub logs: PathBuf,
    /// The kubectl of the cluster's version.
    pub kubectl: PathBuf,
}

impl ClusterEnv {
    /// The env file: `$SNAPGATE_CLUSTER_ENV`, else the repository's `cluster/env`.
    pub fn path() -> PathBuf {
        match std::env::var_os(ENV_VAR) {
            Some(p) => PathBuf::from(p),
            None => Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../..")
                .join(ENV_FILE),
        }
    }

    /// Reads the env file of the running cluster; the error says how to start one.
    pub fn load() -> anyhow::Result<Self> {
        let path = Self::path();
        let text = std::fs::read_to_string(&path).with_context(|| {
            format!(
                "no cluster: cannot read {} (start one with ./scripts/cluster up, or point \
                 {ENV_VAR} at the env file of one)",
                path.display()
            )
        })?;
        let vars: BTreeMap<&str, &str> = text
            .lines()
            .filter(|l| !l.starts_with('#'))
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k, v.trim_matches('"')))
            .collect();
        let get = |k: &str| {
            vars.get(k)
                .map(|v| (*v).to_owned())
                .with_context(|| format!("{}: no {k}", path.display()))
        };
        Ok(Self {
            version: get("SNAPGATE_CLUSTER_VERSION")?,
            server: get("SNAPGATE_CLUSTER_SERVER")?,
            kubeconfig: get("SNAPGATE_CLUSTER_KUBECONFIG")?.into(),
            ca: get("SNAPGATE_CLUSTER_CA")?.into(),
            kubelet_cert: get("SNAPGATE_CLUSTER_KUBELET_CERT")?.into(),
            kubelet_key: get("SNAPGATE_CLUSTER_KUBELET_KEY")?.into(),
            logs: get("SNAPGATE_CLUSTER_LOGS")?.into(),
            kubectl: get("SNAPGATE_CLUSTER_KUBECTL")?.into(),
        })
    }

    /// A client as the cluster admin, from the admin kubeconfig.
    pub async fn admin_client(&self) -> anyhow::Result<kube::Client> {
        let config = Kubeconfig::read_from(&self.kubeconfig)
            .with_context(|| format!("reading {}", self.kubeconfig.display()))?;
        let config = kube::Config::from_custom_kubeconfig(config, &KubeConfigOptions::default())
            .await
            .context("the admin kubeconfig")?;
        Ok(kube::Client::try_from(config)?)
    }

    /// Writes a kubeconfig for this cluster that authenticates with a bearer token.
    pub fn write_token_kubeconfig(
        &self,
        path: &Path,
        user: &str,
        token: &str,
    ) -> anyhow::Result<()> {
        let ca = std::fs::read_to_string(&self.ca)
            .with_context(|| format!("reading {}", self.ca.display()))?;
        let config = serde_json::json!({
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "snapgate-test", "cluster": {
                "server": self.server,
                "certificate-authority-data": base64::engine::general_purpose::STANDARD.encode(ca.as_bytes()),
            }}],
            "users": [{"name": user, "user": {"token": token}}],
            "contexts": [{"name": "snapgate-test", "context": {
                "cluster": "snapgate-test", "user": user,
            }}],
            "current-context": "snapgate-test",
        });
        std::fs::write(path, serde_yaml::to_string(&config)?)
            .with_context(|| format!("writing {}", path.display()))
    }

    /// The last `n` lines of each component's log, for failure messages.
    pub fn log_tails(&self, n: usize) -> String {
        let mut out = String::new();
        for c in [
            "kube-apiserver",
            "kube-controller-manager",
            "kube-scheduler",
            "etcd",
        ] {
            let path = self.logs.join(format!("{c}.log"));
            let text = std::fs::read_to_string(&path).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            let tail = lines.get(lines.len().saturating_sub(n)..).unwrap_or(&[]);
            out.push_str(&format!(
                "--- {} (last {n} lines)\n{}\n",
                path.display(),
                tail.join("\n")
            ));
        }
        out
    }
}

/// A token for a ServiceAccount through the TokenRequest API (what a projected token volume
/// holds), made for `audiences` (none: the API server's own, which it accepts as a bearer
/// token).
pub async fn service_account_token(
    client: &kube::Client,
    namespace: &str,
    name: &str,
    audiences: &[&str],
    lifetime: Duration,
) -> anyhow::Result<String> {
    let accounts: Api<ServiceAccount> = Api::namespaced(client.clone(), namespace);
    let request: TokenRequest = serde_json::from_value(serde_json::json!({
        "apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest",
        "spec": {"audiences": audiences, "expirationSeconds": lifetime.as_secs()},
    }))?;
    let answer = accounts
        .create_token_request(name, &PostParams::default(), &request)
        .await
        .with_context(|| format!("TokenRequest for {namespace}/{name}"))?;
    match answer.status.map(|s| s.token) {
        Some(token) if !token.is_empty() => Ok(token),
        _ => bail!("TokenRequest for {namespace}/{name}: no token in the answer"),
    }
}

/// Applies (server-side, as `field_manager`) every object of a multi-document YAML manifest
/// whose kind `keep` accepts, each in the namespace the manifest gives it. Returns the
/// `Kind/name` of each object applied.
pub async fn apply_manifest(
    client: &kube::Client,
    yaml: &str,
    field_manager: &str,
    keep: impl Fn(&str) -> bool,
) -> anyhow::Result<Vec<String>> {
    use serde::Deserialize as _;
    let mut applied = Vec::new();
    for doc in serde_yaml::Deserializer::from_str(yaml) {
        let value = serde_json::Value::deserialize(doc)?;
        if value.is_null() {
            continue;
        }
        let object: DynamicObject = serde_json::from_value(value.clone())?;
        let types = object
            .types
            .clone()
            .context("an object without apiVersion/kind")?;
        if !keep(&types.kind) {
            continue;
        }
        let gvk = GroupVersionKind::try_from(&types)?;
        let (resource, caps) = kube::discovery::pinned_kind(client, &gvk)
            .await
            .with_context(|| format!("discovering {gvk:?}"))?;
        let name = object
            .metadata
            .name
            .clone()
            .context("an object without a name")?;
        let api: Api<DynamicObject> = match caps.scope {
            kube::discovery::Scope::Namespaced => Api::namespaced_with(
                client.clone(),
                object.metadata.namespace.as_deref().unwrap_or("default"),
                &resource,
            ),
            kube::discovery::Scope::Cluster => Api::all_with(client.clone(), &resource),
        };
        api.patch(
            &name,
            &PatchParams::apply(field_manager).force(),
            &Patch::Apply(&value),
        )
        .await
        .with_context(|| format!("applying {} {name}", types.kind))?;
        applied.push(format!("{}/{name}", types.kind));
    }
    Ok(applied)
}

/// Polls `check` until it yields `Ok`, or fails after `within` naming `what` and the last
/// `Err` (what was seen instead): the bound of every wait in these tests.
pub async fn wait_for<T, F: std::future::Future<Output = Result<T, String>>>(
    what: &str,
    within: Duration,
    mut check: impl FnMut() -> F,
) -> anyhow::Result<T> {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        match check().await {
            Ok(v) => return Ok(v),
            Err(seen) if tokio::time::Instant::now() >= deadline => {
                bail!("timed out after {within:?} waiting for: {what}; last seen: {seen}")
            }
            // The pause between two looks (a real API server, on the wall clock).
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}
