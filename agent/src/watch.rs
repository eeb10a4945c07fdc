//! Watches on the agent's namespaces: every change reaches the executor as one message.
//!
//! PVCs are watched in full (the source PVCs are the user's, with no label of ours); snapshots
//! and Jobs only with snapgate's `created-by` label. kube-runtime's watcher lists, then
//! watches from the list's resourceVersion, and re-lists on `410 Gone`.

use std::fmt::Debug;

use futures::StreamExt;
use kube::{
    Api, Client,
    runtime::{WatchStreamExt, watcher},
};
use tokio::sync::mpsc;
use tracing::warn;

use crate::cluster::Namespaced;

/// Spawns a watch of `K` in `namespace`, sending `wrap(event)` to `tx` until it is closed.
pub fn spawn<K, M>(
    client: Client,
    namespace: &str,
    labels: Option<&str>,
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
