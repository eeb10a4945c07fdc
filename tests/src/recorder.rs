//! Every version of the objects of one kind in a namespace, as a watch delivers them: what a
//! test asserts about objects that come and go (a copy made once, a Job replaced) without
//! polling for them.

use std::{
    sync::{Arc, Mutex, PoisonError},
    time::Duration,
};

use futures::StreamExt as _;
use kube::{
    Api,
    api::{ApiResource, DynamicObject, GroupVersionKind},
    runtime::watcher,
};
use serde_json::Value;

/// The watch of one kind in one namespace, and every version it delivered, in order.
pub struct Recorder {
    seen: Arc<Mutex<Vec<Value>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Recorder {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The resource `group/v1` `kind` with its `plural`.
pub fn resource(group: &str, kind: &str, plural: &str) -> ApiResource {
    ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk(group, "v1", kind), plural)
}

impl Recorder {
    /// Starts the watch of `ar` in `ns` and returns once it has listed what exists (panics,
    /// naming the wait, if that takes longer than `within`).
    pub async fn start(client: kube::Client, ns: &str, ar: ApiResource, within: Duration) -> Self {
        let api: Api<DynamicObject> = Api::namespaced_with(client, ns, &ar);
        let seen = Arc::new(Mutex::new(Vec::new()));
        let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
        let task = tokio::spawn({
            let seen = seen.clone();
            async move {
                let mut ready = Some(ready_tx);
                let mut events = std::pin::pin!(watcher(api, watcher::Config::default()));
                while let Some(event) = events.next().await {
                    match event {
                        Ok(watcher::Event::InitDone) => {
                            if let Some(tx) = ready.take() {
                                let _ = tx.send(());
                            }
                        }
                        Ok(watcher::Event::Apply(o) | watcher::Event::InitApply(o)) => {
                            if let Ok(v) = serde_json::to_value(&o) {
                                seen.lock().unwrap_or_else(PoisonError::into_inner).push(v);
                            }
                        }
                        _ => {}
                    }
                }
            }
        });
        tokio::time::timeout(within, ready_rx)
            .await
            .unwrap_or_else(|_| panic!("the watch of {} did not list within {within:?}", ar.plural))
            .unwrap_or_else(|_| panic!("the watch of {} ended before listing", ar.plural));
        Self { seen, task }
    }

    /// Every version seen so far of the object `name`.
    pub fn versions(&self, name: &str) -> Vec<Value> {
        self.seen
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .filter(|o| o["metadata"]["name"] == name)
            .cloned()
            .collect()
    }

    /// Waits until a version of `name` satisfies `ok` (panics naming `what` after `within`);
    /// returns it.
    pub async fn wait(
        &self,
        name: &str,
        what: &str,
        within: Duration,
        ok: impl Fn(&Value) -> bool,
    ) -> Value {
        crate::poll_until(what, within, || async {
            let versions = self.versions(name);
            versions
                .iter()
                .find(|o| ok(o))
                .cloned()
                .ok_or_else(|| format!("versions of {name}: {versions:#?}"))
        })
        .await
    }

    /// The names seen so far, each once per run of versions.
    pub fn names(&self) -> Vec<String> {
        let mut names: Vec<String> = self
            .seen
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .filter_map(|o| o["metadata"]["name"].as_str().map(str::to_owned))
            .collect();
        names.dedup();
        names
    }
}
