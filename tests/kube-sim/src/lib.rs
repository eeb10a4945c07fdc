//! A simulated Kubernetes API server, speaking the real REST protocol well
//! enough that kube-rs's `Client`, `Api` and `runtime::watcher` and the real
//! `kubectl` run against it unchanged.
//!
//! ```text
//!   kube::Client ──(in-process tower service: SimService)──┐
//!   kubectl ──────(HTTP/1, plain, bearer token: serve)─────┤
//!                                                          ▼
//!                 rest: authn ─► rbac ─► faults ─► handlers ──► request log
//!                        │                          │   ▲
//!                        ▼                          │   │
//!                 tokens: TokenSigner ◄─────────────┤   │
//!                   (ES256 key + issuer: verifies   │   │
//!                   its ServiceAccount tokens,      │   │
//!                   signs TokenRequests, serves     │   │
//!                   OIDC discovery and the JWKS)    │   │
//!                       discovery / table / watch ◄─┘   │
//!                                                       ▼
//!                 store: JSON objects, one resourceVersion sequence,
//!                        bounded change history, change subscriptions
//!                                                       │
//!                 controllers (PVC binding, snapshots, Jobs) ◄─┘
//! ```
//!
//! # ServiceAccount tokens
//!
//! Like a real API server, each simulator signs ServiceAccount tokens (ES256 JWTs)
//! with its own ECDSA P-256 key ([`TokenSigner`]) under an issuer ([`KubeSim::issuer`],
//! default [`DEFAULT_ISSUER`], changed with [`KubeSim::set_issuer`]), so an offline
//! validator checks them exactly as it would a real cluster's:
//!
//! * `GET /.well-known/openid-configuration`: `issuer`, `jwks_uri` (the served URL +
//!   `/openid/v1/jwks` once [`KubeSim::serve`] has run, else the issuer's), ES256;
//! * `GET /openid/v1/jwks`: the public key (`kty` EC, `crv` P-256, `kid`, `alg` ES256);
//!   both served to anyone, token or not, as a cluster does to
//!   `system:service-account-issuer-discovery`;
//! * `POST /api/v1/namespaces/{ns}/serviceaccounts/{name}/token` (the TokenRequest API,
//!   RBAC `create` on `serviceaccounts/token`): 201 with `status.token` and
//!   `status.expirationTimestamp`; 404 for a missing ServiceAccount; 422 Invalid for
//!   `expirationSeconds` under 600 or over 2^32; default audience the issuer, default
//!   lifetime 3600 s. Claims: `iss`, `sub` (`system:serviceaccount:<ns>:<name>`), `aud`,
//!   `exp`, `iat`, `nbf`, `jti`, `kubernetes.io` (`namespace`, `serviceaccount.name`,
//!   `serviceaccount.uid`);
//! * its own tokens as bearer tokens: valid now, current issuer, audience including the
//!   issuer, ServiceAccount still there with the same uid, they authenticate as
//!   `system:serviceaccount:<ns>:<name>` (in the groups `system:serviceaccounts` and
//!   `system:serviceaccounts:<ns>` for RBAC). Static tokens ([`KubeSim::add_token`])
//!   keep working.
//!
//! For test setup, [`KubeSim::issue_token`] signs a token without HTTP or RBAC,
//! [`KubeSim::service_account_claims`] + [`KubeSim::sign_claims`] make deliberately odd
//! ones, and [`TokenSigner::generate`] gives "some other key". See [`tokens`].
//!
//! ```no_run
//! # async fn demo() -> anyhow::Result<()> {
//! use k8s_openapi::api::core::v1::PersistentVolumeClaim;
//! use snapgate_kube_sim::{KubeSim, SnapshotBehaviour};
//!
//! let sim = KubeSim::new();
//! sim.controllers().pvc_bind_delay(std::time::Duration::from_secs(1));
//! sim.snapshot_behaviour("ns", "snap-1", SnapshotBehaviour::NeverReady);
//! let pvcs: kube::Api<PersistentVolumeClaim> = kube::Api::namespaced(sim.client(), "ns");
//! let _ = pvcs.list(&Default::default()).await?;
//! let addr = sim.serve("127.0.0.1:0").await?;
//! sim.write_kubeconfig("/tmp/kubeconfig".as_ref(), snapgate_kube_sim::ADMIN_TOKEN)?;
//! // a token for ServiceAccount ns/agent (created if missing), for audience "snapgate"
//! let token = sim.issue_token("ns", "agent", &["snapgate"], std::time::Duration::from_secs(3600));
//! # let _ = (addr, token); Ok(()) }
//! ```

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use kube::Resource;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

pub mod admission;
pub mod controllers;
pub mod discovery;
pub mod error;
pub mod faults;
mod protobuf;
pub mod rbac;
pub mod resources;
pub mod rest;
pub mod selector;
pub mod serve;
mod smp;
mod ssa;
pub mod store;
mod table;
pub mod tokens;
mod watch;

pub use controllers::{
    Controllers, JobBehaviour, PodOutcome, PodStuck, PvcBehaviour, SnapshotBehaviour,
};
pub use error::ApiError;
pub use faults::{FaultKind, FaultRule, Faults, RequestLog, RequestRecord, Verb, WatchEnd};
pub use resources::ResourceDef;
pub use serve::SimService;
pub use store::{Change, ChangeType, Store, WallClock, WriteOptions, set_thread_clock};
pub use tokens::{DEFAULT_ISSUER, TokenSigner};

/// The default StorageClass every simulator starts with (provisioner
/// [`controllers::CSI_DRIVER`]); a PVC without a class gets it, as on kind.
pub const DEFAULT_STORAGE_CLASS: &str = "standard";

/// Token of the built-in administrator (bypasses RBAC).
pub const ADMIN_TOKEN: &str = "kube-sim-admin-token";
/// User name of the built-in administrator.
pub const ADMIN_USER: &str = "kube-sim:admin";

/// Shared state behind every handle, service and controller.
pub(crate) struct SimState {
    pub(crate) store: Store,
    pub(crate) tokens: Mutex<HashMap<String, String>>,
    pub(crate) rbac: AtomicBool,
    pub(crate) faults: Faults,
    pub(crate) log: RequestLog,
    pub(crate) controllers: Controllers,
    pod_logs: Mutex<HashMap<(String, String, String), String>>,
    served: Mutex<Option<SocketAddr>>,
    /// The key ServiceAccount tokens are signed with.
    pub(crate) signer: TokenSigner,
    issuer: Mutex<String>,
}

impl SimState {
    pub(crate) fn rbac_enforced(&self) -> bool {
        self.rbac.load(Ordering::SeqCst)
    }

    pub(crate) fn is_admin(&self, user: &str) -> bool {
        user == ADMIN_USER
    }

    pub(crate) fn issuer(&self) -> String {
        self.issuer
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    fn server_url(&self) -> Option<String> {
        self.served
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .map(|a| format!("http://{a}"))
    }

    /// `<server url>/openid/v1/jwks` once serving, else `<issuer>/openid/v1/jwks`.
    pub(crate) fn jwks_uri(&self) -> String {
        let base = self.server_url().unwrap_or_else(|| self.issuer());
        format!("{}{}", base.trim_end_matches('/'), tokens::JWKS_PATH)
    }

    pub(crate) fn set_pod_log(&self, ns: &str, pod: &str, container: &str, text: &str) {
        self.pod_logs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert((ns.into(), pod.into(), container.into()), text.into());
    }

    /// The log text of a pod container, honouring `container`, `tailLines` and `limitBytes`.
    pub(crate) fn pod_log(
        &self,
        ns: &str,
        pod: &str,
        query: &rest::Query,
    ) -> Result<String, ApiError> {
        let pods = resources::find_plural("", "pods").expect("pods");
        let obj = self.store.get(pods, Some(ns), pod)?;
        let containers: Vec<String> = obj["spec"]["containers"]
            .as_array()
            .map(|cs| {
                cs.iter()
                    .filter_map(|c| c["name"].as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default();
        let container = match query.get("container") {
            Some(c) if !containers.iter().any(|x| x == c) => {
                return Err(ApiError::bad_request(format!(
                    "container {c} is not valid for pod {pod}"
                )));
            }
            Some(c) => c.to_string(),
            None if containers.len() > 1 => {
                return Err(ApiError::bad_request(format!(
                    "a container name must be specified for pod {pod}, choose one of: [{}]",
                    containers.join(" ")
                )));
            }
            None => containers.first().cloned().unwrap_or_default(),
        };
        let mut text = self
            .pod_logs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&(ns.to_string(), pod.to_string(), container))
            .cloned()
            .unwrap_or_default();
        if let Some(n) = query.get("tailLines").and_then(|t| t.parse::<usize>().ok()) {
            let lines: Vec<&str> = text.lines().collect();
            let start = lines.len().saturating_sub(n);
            text = lines[start..].iter().map(|l| format!("{l}\n")).collect();
        }
        if let Some(n) = query
            .get("limitBytes")
            .and_then(|t| t.parse::<usize>().ok())
            && text.len() > n
        {
            let mut cut = n;
            while !text.is_char_boundary(cut) {
                cut -= 1;
            }
            text.truncate(cut);
        }
        Ok(text)
    }
}

/// The simulated cluster. Cheap to clone; all clones share state.
///
/// Must be created inside a tokio runtime (the controllers run as tasks).
#[derive(Clone)]
pub struct KubeSim {
    state: Arc<SimState>,
}

impl std::fmt::Debug for KubeSim {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KubeSim")
            .field("store", &self.state.store)
            .finish()
    }
}

impl Default for KubeSim {
    fn default() -> Self {
        Self::new()
    }
}

fn def_of<K: Resource<DynamicType = ()>>() -> Result<&'static ResourceDef, ApiError> {
    let (group, version, plural) = (K::group(&()), K::version(&()), K::plural(&()));
    resources::find(&group, &version, &plural).ok_or_else(|| {
        ApiError::new(
            404,
            "NotFound",
            format!("resource {plural}.{group}/{version} is not simulated"),
        )
    })
}

fn from_value<K: DeserializeOwned>(v: Value) -> Result<K, ApiError> {
    serde_json::from_value(v)
        .map_err(|e| ApiError::new(500, "InternalError", format!("decoding object: {e}")))
}

impl KubeSim {
    /// A fresh, empty cluster with the `default` namespace and running controllers.
    pub fn new() -> Self {
        let state = Arc::new(SimState {
            store: Store::new(),
            tokens: Mutex::new(HashMap::from([(
                ADMIN_TOKEN.to_string(),
                ADMIN_USER.to_string(),
            )])),
            rbac: AtomicBool::new(false),
            faults: Faults::default(),
            log: RequestLog::default(),
            controllers: Controllers::default(),
            pod_logs: Mutex::new(HashMap::new()),
            served: Mutex::new(None),
            signer: TokenSigner::generate(),
            issuer: Mutex::new(DEFAULT_ISSUER.to_string()),
        });
        controllers::spawn(&state);
        let sim = Self { state };
        sim.ensure_namespace("default");
        // As kind has it: a default StorageClass, provisioned by kube-sim's own CSI driver.
        if let Some(classes) = resources::find_plural("storage.k8s.io", "storageclasses") {
            let _ = sim.state.store.create(
                classes,
                None,
                serde_json::json!({"metadata": {"name": DEFAULT_STORAGE_CLASS, "annotations": {
                        admission::DEFAULT_CLASS_ANNOTATION: "true"}},
                    "provisioner": controllers::CSI_DRIVER,
                    "reclaimPolicy": "Delete", "volumeBindingMode": "Immediate"}),
                &WriteOptions::default(),
            );
        }
        sim
    }

    /// A `kube::Client` authenticated as the administrator (default namespace `default`).
    pub fn client(&self) -> kube::Client {
        self.client_as(ADMIN_TOKEN)
    }

    /// A `kube::Client` sending `Authorization: Bearer <token>`.
    pub fn client_as(&self, token: &str) -> kube::Client {
        kube::Client::new(self.service(Some(token)), "default")
    }

    /// The in-process tower service, optionally injecting a bearer token.
    pub fn service(&self, token: Option<&str>) -> SimService {
        SimService::new(self.state.clone(), token.map(str::to_string))
    }

    /// The object store (direct access, bypassing HTTP, RBAC, faults and the request log).
    pub fn store(&self) -> &Store {
        &self.state.store
    }

    /// Controller scripting.
    pub fn controllers(&self) -> &Controllers {
        &self.state.controllers
    }

    /// Script the snapshot controller for one VolumeSnapshot.
    pub fn snapshot_behaviour(&self, ns: &str, name: &str, b: SnapshotBehaviour) {
        self.state.controllers.snapshot_behaviour(ns, name, b);
    }

    /// Script the Job controller for one Job.
    pub fn job_behaviour(&self, ns: &str, name: &str, b: JobBehaviour) {
        self.state.controllers.job_behaviour(ns, name, b);
    }

    /// Script PVC binding for one PVC.
    pub fn pvc_behaviour(&self, ns: &str, name: &str, b: PvcBehaviour) {
        self.state.controllers.pvc_behaviour(ns, name, b);
    }

    /// Fault injection.
    pub fn faults(&self) -> &Faults {
        &self.state.faults
    }

    /// The log of every request served.
    pub fn requests(&self) -> &RequestLog {
        &self.state.log
    }

    /// Accept `token` as `user` (e.g. `system:serviceaccount:ns:sa`).
    pub fn add_token(&self, token: &str, user: &str) {
        self.state
            .tokens
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(token.into(), user.into());
    }

    /// Turn RBAC enforcement on or off (off by default). The admin always passes.
    pub fn enforce_rbac(&self, on: bool) {
        self.state.rbac.store(on, Ordering::SeqCst);
    }

    /// Set the log text of a pod container (what `pods/{name}/log` returns).
    pub fn set_pod_log(&self, ns: &str, pod: &str, container: &str, text: &str) {
        self.state.set_pod_log(ns, pod, container, text);
    }

    /// Create a namespace if it does not exist.
    pub fn ensure_namespace(&self, name: &str) {
        let ns = resources::find_plural("", "namespaces").expect("namespaces");
        if self.state.store.get(ns, None, name).is_err() {
            let _ = self.state.store.create(
                ns,
                None,
                serde_json::json!({"metadata": {"name": name}}),
                &WriteOptions::default(),
            );
        }
    }

    /// Create a typed object directly in the store (status is kept as given).
    pub fn create<K>(&self, obj: &K) -> Result<K, ApiError>
    where
        K: Resource<DynamicType = ()> + Serialize + DeserializeOwned,
    {
        let def = def_of::<K>()?;
        let v = serde_json::to_value(obj).map_err(|e| ApiError::bad_request(e.to_string()))?;
        let ns = obj.meta().namespace.clone();
        let opts = WriteOptions {
            keep_status: true,
            ..WriteOptions::default()
        };
        from_value(self.state.store.create(def, ns.as_deref(), v, &opts)?)
    }

    /// Get a typed object from the store.
    pub fn get<K>(&self, ns: Option<&str>, name: &str) -> Result<K, ApiError>
    where
        K: Resource<DynamicType = ()> + DeserializeOwned,
    {
        from_value(self.state.store.get(def_of::<K>()?, ns, name)?)
    }

    /// Every object of a type (all namespaces, or one).
    pub fn list<K>(&self, ns: Option<&str>) -> Result<Vec<K>, ApiError>
    where
        K: Resource<DynamicType = ()> + DeserializeOwned,
    {
        let def = def_of::<K>()?;
        self.state
            .store
            .all(def)
            .into_iter()
            .filter(|v| ns.is_none_or(|n| v["metadata"]["namespace"] == n))
            .map(from_value)
            .collect()
    }

    /// Delete a typed object from the store (with garbage collection).
    pub fn delete<K>(&self, ns: Option<&str>, name: &str) -> Result<(), ApiError>
    where
        K: Resource<DynamicType = ()>,
    {
        self.state
            .store
            .delete(def_of::<K>()?, ns, name, &Default::default())
            .map(|_| ())
    }

    /// Serve over plain HTTP on `addr` (e.g. `127.0.0.1:0`); returns the bound address.
    pub async fn serve(&self, addr: &str) -> std::io::Result<SocketAddr> {
        let bound = serve::serve(self.state.clone(), addr).await?;
        *self.state.served.lock().unwrap_or_else(|e| e.into_inner()) = Some(bound);
        Ok(bound)
    }

    /// The URL of the served endpoint, once [`KubeSim::serve`] has run.
    pub fn server_url(&self) -> Option<String> {
        self.state.server_url()
    }

    /// The issuer (`iss`) of the ServiceAccount tokens this simulator signs and accepts;
    /// [`DEFAULT_ISSUER`] unless [`KubeSim::set_issuer`] changed it.
    pub fn issuer(&self) -> String {
        self.state.issuer()
    }

    /// Sign and accept tokens with issuer `issuer` from now on (e.g. the
    /// [`KubeSim::server_url`] once serving). Tokens issued under the old issuer stop
    /// authenticating here, as on a real API server whose `--service-account-issuer`
    /// changed; the issuer is also the default audience of TokenRequests and the only
    /// audience the simulator accepts for its own authentication.
    pub fn set_issuer(&self, issuer: &str) {
        *self.state.issuer.lock().unwrap_or_else(|e| e.into_inner()) = issuer.to_string();
    }

    /// The key this simulator signs ServiceAccount tokens with.
    pub fn token_signer(&self) -> &TokenSigner {
        &self.state.signer
    }

    /// The JSON Web Key Set served at `/openid/v1/jwks`.
    pub fn jwks(&self) -> Value {
        self.state.signer.jwks()
    }

    /// The claims of a ServiceAccount token for `ns/sa` as the TokenRequest API would
    /// make them (`iss`, `sub`, `aud`, `exp`, `iat`, `nbf`, `jti`, `kubernetes.io`), valid
    /// from now for `ttl`. Empty `audiences` means the issuer. Creates the namespace
    /// and the ServiceAccount if missing (the `uid` claim is the ServiceAccount's).
    /// Edit them and [`KubeSim::sign_claims`] for a deliberately odd token.
    pub fn service_account_claims(
        &self,
        ns: &str,
        sa: &str,
        audiences: &[&str],
        ttl: Duration,
    ) -> Value {
        let uid = tokens::ensure_service_account(&self.state, ns, sa);
        let issuer = self.issuer();
        let audiences: Vec<String> = if audiences.is_empty() {
            vec![issuer.clone()]
        } else {
            audiences.iter().map(|a| a.to_string()).collect()
        };
        tokens::service_account_claims(
            &issuer,
            ns,
            sa,
            &uid,
            &audiences,
            tokens::unix_now(),
            tokens::ttl_seconds(ttl),
        )
    }

    /// A ServiceAccount token for `ns/sa`, signed by this simulator, valid from now for
    /// `ttl` (any length: no 10-minute minimum here), for `audiences` (empty means the
    /// issuer, which is what the simulator itself accepts). For test setup: no RBAC, no
    /// request log; creates the namespace and the ServiceAccount if missing.
    pub fn issue_token(&self, ns: &str, sa: &str, audiences: &[&str], ttl: Duration) -> String {
        self.sign_claims(self.service_account_claims(ns, sa, audiences, ttl))
    }

    /// Sign any claims with this simulator's key (ES256, its `kid`): for expired tokens,
    /// wrong issuers or audiences, and other deliberately odd tokens.
    pub fn sign_claims(&self, claims: Value) -> String {
        self.state.signer.sign(&claims)
    }

    /// Write a kubeconfig for the served endpoint using `token`. Call [`KubeSim::serve`] first.
    pub fn write_kubeconfig(&self, path: &Path, token: &str) -> std::io::Result<()> {
        let url = self.server_url().ok_or_else(|| {
            std::io::Error::new(
                std::io::ErrorKind::NotConnected,
                "KubeSim::serve has not been called",
            )
        })?;
        serve::write_kubeconfig(path, &url, token)
    }
}
