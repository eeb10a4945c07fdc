//! Watches on the agent's namespaces: every change reaches the executor as one message.
//!
//! PVCs are watched in full (the source PVCs are the user's, with no label of ours); snapshots,
//! Jobs and pods only with snapgate's `created-by` label (a mover Job's pods carry it); Events
//! only of type Warning (the kubelet's and the Job controller's, which carry no label of ours).
//! kube-runtime's watcher lists, then watches from the list's resourceVersion, and re-lists on
//! `410 Gone`.

use std::fmt::Debug;

use futures::StreamExt;
use kube::{
    Api, Client,
    runtime::{WatchStreamExt, watcher},
};
use tokio::sync::mpsc;
use tracing::warn;

use crate::cluster::Namespaced;

/// Spawns a watch of `K` in `namespace` (with a label and a field selector, when given),
/// sending `wrap(event)` to `tx` until it is closed.
pub fn spawn<K, M>(
    client: Client,
    namespace: &str,
    (labels, fields): (Option<&str>, Option<&str>),
    tx: mpsc::Sender<M>,
    wrap: fn(String, watcher::Event<K>) -> M,
) -> tokio::task::JoinHandle<()>
where
    K: Namespaced,
    M: Send + Debug + 'static,
{
    let api: Api<K> = Api::namespaced(client, namespace);
    let mut config = watcher::Config::default().any_semantic();
    if let Some(l) = labels {
        config = config.labels(l);
    }
    if let Some(f) = fields {
        config = config.fields(f);
    }
    let namespace = namespace.to_owned();
    tokio::spawn(async move {
        let mut stream = watcher(api, config).default_backoff().boxed();
        while let Some(event) = stream.next().await {
            match event {
                Ok(e) => {
                    if tx.send(wrap(namespace.clone(), e)).await.is_err() {
                        return;
                    }
                }
                Err(e) => {
                    warn!(namespace, kind = %K::kind(&()), error = %e, "watch failed; retrying")
                }
            }
        }
    })
}

/// Spawns a watch of the Namespace object `namespace` itself (a field selector on its name, so
/// that RBAC can grant `list`/`watch` on that one name), sending `wrap(event)` to `tx`.
pub fn spawn_namespace<M>(
    client: Client,
    namespace: &str,
    tx: mpsc::Sender<M>,
    wrap: fn(String, watcher::Event<k8s_openapi::api::core::v1::Namespace>) -> M,
) -> tokio::task::JoinHandle<()>
where
    M: Send + Debug + 'static,
{
    let api: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(client);
    let config = watcher::Config::default()
        .any_semantic()
        .fields(&format!("metadata.name={namespace}"));
    let namespace = namespace.to_owned();
    tokio::spawn(async move {
        let mut stream = watcher(api, config).default_backoff().boxed();
        while let Some(event) = stream.next().await {
            match event {
                Ok(e) => {
                    if tx.send(wrap(namespace.clone(), e)).await.is_err() {
                        return;
                    }
                }
                Err(e) => warn!(namespace, error = %e, "namespace watch failed; retrying"),
            }
        }
    })
}
