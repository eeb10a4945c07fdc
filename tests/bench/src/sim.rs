//! The simulated API server, hosted in the harness and served over loopback HTTP/1 the way the
//! `snapgate-kube-sim` binary serves it (with `TCP_NODELAY`, as a real API server has it),
//! behind a journal that notes when each request
//! arrived, who sent it, and whether a write changed anything; and a watch of the store that
//! notes when each copy became ready.

use std::{
    collections::BTreeMap,
    convert::Infallible,
    sync::{Arc, Mutex, PoisonError},
    time::Instant,
};

use bytes::Bytes;
use http::{Method, Request, Response};
use http_body_util::{BodyExt as _, Full};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Secret};
use kube::{
    api::ObjectMeta,
    config::{KubeConfigOptions, Kubeconfig},
};
use snapgate_kube_sim::{ChangeType, KubeSim, rest::SimBody, serve::kubeconfig_yaml};
use tower::Service as _;

/// The bearer token the agent's kubeconfig carries; its requests are logged as [`AGENT_USER`].
pub(crate) const AGENT_TOKEN: &str = "bench-agent-token";
/// The user the simulator logs the agent's requests as.
pub(crate) const AGENT_USER: &str = "bench:agent";

/// One request, as the journal saw it.
#[derive(Debug, Clone)]
pub(crate) struct Entry {
    /// When it arrived (before the simulator handled it).
    pub(crate) at: Instant,
    /// HTTP method.
    pub(crate) method: Method,
    /// Path and query.
    pub(crate) uri: String,
    /// The bearer token it carried.
    pub(crate) token: String,
    /// A PATCH or PUT answered with the object as it was (nothing changed).
    pub(crate) noop_write: bool,
    /// For a created VolumeSnapshot: the PVC it copies.
    pub(crate) snapshot_of: Option<String>,
}

/// A copy that became ready (cut, or `readyToUse`), as the store's change stream showed it.
#[derive(Debug, Clone)]
pub(crate) struct Ready {
    /// When the harness saw the change.
    pub(crate) at: Instant,
    /// The PVC copied.
    pub(crate) pvc: String,
}

/// What the journal holds.
#[derive(Debug, Default)]
pub(crate) struct Journal {
    entries: Mutex<Vec<Entry>>,
    ready: Mutex<Vec<Ready>>,
}

impl Journal {
    /// Every request so far.
    pub(crate) fn entries(&self) -> Vec<Entry> {
        self.entries
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// The first VolumeSnapshot created for `pvc` after `after`.
    pub(crate) fn snapshot_created(&self, pvc: &str, after: Instant) -> Option<Instant> {
        self.entries
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .find(|e| e.at >= after && e.snapshot_of.as_deref() == Some(pvc))
            .map(|e| e.at)
    }

    /// The first copy of `pvc` that became ready after `after`.
    pub(crate) fn copy_ready(&self, pvc: &str, after: Instant) -> Option<Instant> {
        self.ready
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .find(|r| r.at >= after && r.pvc == pvc)
            .map(|r| r.at)
    }

    /// Forgets everything (a long run keeps the journal small).
    pub(crate) fn clear(&self) {
        self.entries
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clear();
        self.ready
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clear();
    }
}

/// The hosted simulator and its address.
pub(crate) struct HostedSim {
    /// The simulated cluster.
    pub(crate) sim: KubeSim,
    /// `http://127.0.0.1:<port>`.
    pub(crate) url: String,
    /// What was requested.
    pub(crate) journal: Arc<Journal>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Drop for HostedSim {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

impl HostedSim {
    /// A new simulator with [`AGENT_TOKEN`] known, served on a loopback port.
    pub(crate) async fn start() -> anyhow::Result<Self> {
        let sim = KubeSim::new();
        sim.add_token(AGENT_TOKEN, AGENT_USER);
        let journal = Arc::new(Journal::default());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let url = format!("http://{}", listener.local_addr()?);
        let serve = tokio::spawn(serve(listener, sim.clone(), journal.clone()));
        let watch = tokio::spawn(watch_copies(sim.clone(), journal.clone()));
        Ok(Self {
            sim,
            url,
            journal,
            tasks: vec![serve, watch],
        })
    }

    /// A kubeconfig for this server with `token`.
    pub(crate) fn kubeconfig(&self, token: &str) -> String {
        kubeconfig_yaml(&self.url, token, "default")
    }

    /// A kube client of this server as the administrator, over HTTP.
    pub(crate) async fn client(&self) -> anyhow::Result<kube::Client> {
        let config = Kubeconfig::from_yaml(&self.kubeconfig(snapgate_kube_sim::ADMIN_TOKEN))?;
        let config =
            kube::Config::from_custom_kubeconfig(config, &KubeConfigOptions::default()).await?;
        Ok(kube::Client::try_from(config)?)
    }

    /// The namespace `ns` with the restic Secret `restic-config` the sources name.
    pub(crate) fn namespace_with_secret(&self, ns: &str) -> anyhow::Result<()> {
        self.sim.ensure_namespace(ns);
        let secret = Secret {
            metadata: ObjectMeta {
                name: Some("restic-config".into()),
                namespace: Some(ns.into()),
                ..Default::default()
            },
            string_data: Some(
                [("RESTIC_REPOSITORY", "s3:bench"), ("RESTIC_PASSWORD", "x")]
                    .into_iter()
                    .map(|(k, v)| (k.to_owned(), v.to_owned()))
                    .collect(),
            ),
            ..Default::default()
        };
        self.sim.create(&secret)?;
        Ok(())
    }

    /// A 1Gi PVC `ns/name`, gated (`use-copy-trigger`) or not.
    pub(crate) fn create_pvc(&self, ns: &str, name: &str, gated: bool) -> anyhow::Result<()> {
        let mut annotations = BTreeMap::new();
        if gated {
            annotations.insert("volsync.backube/use-copy-trigger".to_owned(), String::new());
        }
        let pvc = PersistentVolumeClaim {
            metadata: ObjectMeta {
                name: Some(name.into()),
                namespace: Some(ns.into()),
                annotations: Some(annotations),
                ..Default::default()
            },
            spec: Some(k8s_openapi::api::core::v1::PersistentVolumeClaimSpec {
                access_modes: Some(vec!["ReadWriteOnce".into()]),
                resources: Some(k8s_openapi::api::core::v1::VolumeResourceRequirements {
                    requests: Some(BTreeMap::from([(
                        "storage".to_owned(),
                        k8s_openapi::apimachinery::pkg::api::resource::Quantity("1Gi".into()),
                    )])),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            status: None,
        };
        self.sim.create(&pvc)?;
        Ok(())
    }
}

/// Serves `sim` on `listener`, each request journaled before it is handled.
async fn serve(listener: tokio::net::TcpListener, sim: KubeSim, journal: Arc<Journal>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        // As the real API server (Go's net package) does: no Nagle delay on watch events.
        let _ = stream.set_nodelay(true);
        let (sim, journal) = (sim.clone(), journal.clone());
        tokio::spawn(async move {
            let svc = service_fn(move |req: Request<hyper::body::Incoming>| {
                let (sim, journal) = (sim.clone(), journal.clone());
                async move { Ok::<_, Infallible>(handle(sim, journal, req).await) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}

async fn handle(
    sim: KubeSim,
    journal: Arc<Journal>,
    req: Request<hyper::body::Incoming>,
) -> Response<SimBody> {
    let at = Instant::now();
    let (parts, body) = req.into_parts();
    let body = match body.collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => Bytes::new(),
    };
    let method = parts.method.clone();
    let uri = parts.uri.to_string();
    let token = parts
        .headers
        .get(http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or_default()
        .to_owned();
    let rv_before = sim.store().resource_version();
    let creates_snapshot = method == Method::POST && parts.uri.path().ends_with("/volumesnapshots");
    let inspect = creates_snapshot || method == Method::PATCH || method == Method::PUT;
    let mut svc = sim.service(None);
    let response = match svc.call(Request::from_parts(parts, Full::new(body))).await {
        Ok(r) => r,
        Err(e) => {
            return Response::builder()
                .status(500)
                .body(Full::new(Bytes::from(e.to_string())).boxed_unsync())
                .unwrap_or_default();
        }
    };
    let mut entry = Entry {
        at,
        method,
        uri,
        token,
        noop_write: false,
        snapshot_of: None,
    };
    let response = if inspect {
        let (parts, body) = response.into_parts();
        let bytes = match body.collect().await {
            Ok(b) => b.to_bytes(),
            Err(never) => match never {},
        };
        if parts.status.is_success()
            && let Ok(obj) = serde_json::from_slice::<serde_json::Value>(&bytes)
        {
            let rv: u64 = obj["metadata"]["resourceVersion"]
                .as_str()
                .and_then(|s| s.parse().ok())
                .unwrap_or(u64::MAX);
            // An object whose resourceVersion is no newer than the store was before the
            // request: the write changed nothing.
            entry.noop_write = !creates_snapshot && rv <= rv_before;
            if creates_snapshot {
                entry.snapshot_of = obj["spec"]["source"]["persistentVolumeClaimName"]
                    .as_str()
                    .map(str::to_owned);
            }
        }
        Response::from_parts(parts, Full::new(bytes).boxed_unsync())
    } else {
        response
    };
    journal
        .entries
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .push(entry);
    response
}

/// Notes the moment each VolumeSnapshot first shows a copy the agent counts (cut or ready).
async fn watch_copies(sim: KubeSim, journal: Arc<Journal>) {
    let mut changes = sim.store().subscribe();
    let counts = |o: &serde_json::Value| {
        let st = &o["status"];
        !st["creationTime"].is_null() || st["readyToUse"] == serde_json::Value::Bool(true)
    };
    while let Some(change) = changes.recv().await {
        if change.resource.plural != "volumesnapshots" || change.change_type == ChangeType::Deleted
        {
            continue;
        }
        if !counts(&change.object) || change.previous.as_ref().is_some_and(counts) {
            continue;
        }
        let at = Instant::now();
        if let Some(pvc) = change.object["spec"]["source"]["persistentVolumeClaimName"].as_str() {
            journal
                .ready
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .push(Ready {
                    at,
                    pvc: pvc.to_owned(),
                });
        }
    }
}
