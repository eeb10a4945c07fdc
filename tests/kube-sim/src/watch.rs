//! Watch streams: newline-delimited JSON watch events, replayed from the
//! store's change history after a resourceVersion, then live.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use http::{Response, StatusCode, header};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use serde_json::{Value, json};
use tokio::sync::{broadcast, mpsc};
use tokio_stream::wrappers::ReceiverStream;

use crate::SimState;
use crate::error::ApiError;
use crate::faults::WatchEnd;
use crate::resources::ResourceDef;
use crate::rest::SimBody;
use crate::selector::Selector;
use crate::store::{Change, ChangeType};
use crate::table;

/// Interval between BOOKMARK events when `allowWatchBookmarks` is set.
pub(crate) const BOOKMARK_INTERVAL: Duration = Duration::from_secs(30);

/// A parsed watch request.
#[derive(Debug)]
pub(crate) struct WatchRequest {
    pub(crate) res: &'static ResourceDef,
    pub(crate) namespace: Option<String>,
    pub(crate) labels: Selector,
    pub(crate) fields: Selector,
    pub(crate) resource_version: Option<u64>,
    pub(crate) bookmarks: bool,
    pub(crate) send_initial_events: bool,
    pub(crate) timeout: Option<Duration>,
    /// `Some(includeObject)` when the client wants Table objects.
    pub(crate) table: Option<String>,
    pub(crate) close_immediately: bool,
}

impl WatchRequest {
    fn matches(&self, obj: &Value) -> bool {
        let ns_ok = !self.res.namespaced
            || self
                .namespace
                .as_ref()
                .is_none_or(|ns| obj["metadata"]["namespace"] == ns.as_str());
        ns_ok && self.labels.matches(obj) && self.fields.matches(obj)
    }

    /// The event to send for a change, if any: its type and object. An object entering the
    /// watched set is ADDED; one leaving it is DELETED with its last state that matched, at
    /// the change's resourceVersion (as the API server's watch cache sends it).
    fn event(&self, change: &Change) -> Option<(&'static str, Value)> {
        let t = self.event_type(change)?;
        let leaving = change.change_type == ChangeType::Modified && t == "DELETED";
        match (&change.previous, leaving) {
            (Some(prev), true) => {
                let mut obj = prev.clone();
                obj["metadata"]["resourceVersion"] = json!(change.rv.to_string());
                Some((t, obj))
            }
            _ => Some((t, change.object.clone())),
        }
    }

    /// The event type to send for a change, if any (selector transitions map to ADDED/DELETED).
    fn event_type(&self, change: &Change) -> Option<&'static str> {
        if change.resource != self.res {
            return None;
        }
        let now = self.matches(&change.object);
        let before = change.previous.as_ref().is_some_and(|p| self.matches(p));
        match change.change_type {
            ChangeType::Added if now => Some(ChangeType::Added.as_str()),
            ChangeType::Deleted if now || before => Some(ChangeType::Deleted.as_str()),
            ChangeType::Modified if now && before => Some(ChangeType::Modified.as_str()),
            // A selector transition: the object enters or leaves the watched set.
            ChangeType::Modified if now => Some(ChangeType::Added.as_str()),
            ChangeType::Modified if before => Some(ChangeType::Deleted.as_str()),
            _ => None,
        }
    }

    fn line(&self, event_type: &str, obj: &Value) -> Bytes {
        let object = match &self.table {
            Some(include) => {
                let meta = json!({"resourceVersion": obj["metadata"]["resourceVersion"]});
                table::table(self.res, std::slice::from_ref(obj), meta, include)
            }
            None => obj.clone(),
        };
        let mut line =
            serde_json::to_vec(&json!({"type": event_type, "object": object})).expect("json");
        line.push(b'\n');
        Bytes::from(line)
    }

    fn bookmark(&self, rv: u64, initial_end: bool) -> Bytes {
        let mut meta = json!({"resourceVersion": rv.to_string()});
        if initial_end {
            meta["annotations"] = json!({"k8s.io/initial-events-end": "true"});
        }
        let obj =
            json!({"kind": self.res.kind, "apiVersion": self.res.api_version(), "metadata": meta});
        let mut line =
            serde_json::to_vec(&json!({"type": "BOOKMARK", "object": obj})).expect("json");
        line.push(b'\n');
        Bytes::from(line)
    }
}

fn error_line(status: &Value) -> Bytes {
    let mut line = serde_json::to_vec(&json!({"type": "ERROR", "object": status})).expect("json");
    line.push(b'\n');
    Bytes::from(line)
}

/// Start a watch and return the streaming response.
pub(crate) fn respond(state: Arc<SimState>, req: WatchRequest) -> Response<SimBody> {
    let (tx, rx) = mpsc::channel::<Bytes>(256);
    if !req.close_immediately {
        // Listening from here, before the response: a watch answered before `end_watches`
        // returns is ended by it.
        let ends = state.faults.watch_ends();
        tokio::spawn(run(state, req, tx, ends));
    }
    let body = StreamBody::new(ReceiverStream::new(rx).map(|b| Ok(Frame::data(b)))).boxed_unsync();
    Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "application/json")
        .body(body)
        .expect("valid response")
}

async fn run(
    state: Arc<SimState>,
    req: WatchRequest,
    tx: mpsc::Sender<Bytes>,
    mut ends: broadcast::Receiver<WatchEnd>,
) {
    let start = match state.store.watch(req.res, req.resource_version) {
        Ok(s) => s,
        Err(e) => {
            let _ = tx.send(error_line(&e.to_status())).await;
            return;
        }
    };
    let mut last_rv = start.current_rv;
    for obj in start.initial.iter().filter(|o| req.matches(o)) {
        if tx
            .send(req.line(ChangeType::Added.as_str(), obj))
            .await
            .is_err()
        {
            return;
        }
    }
    if req.send_initial_events
        && req.bookmarks
        && req.resource_version.is_none_or(|r| r == 0)
        && tx.send(req.bookmark(last_rv, true)).await.is_err()
    {
        return;
    }
    for change in &start.replay {
        if let Some((t, obj)) = req.event(change)
            && tx.send(req.line(t, &obj)).await.is_err()
        {
            return;
        }
    }
    let mut live = start.live;
    let deadline = req.timeout.map(|t| tokio::time::Instant::now() + t);
    let mut bookmark_at = tokio::time::Instant::now() + BOOKMARK_INTERVAL;
    loop {
        let timeout = async {
            match deadline {
                Some(d) => tokio::time::sleep_until(d).await,
                None => futures::future::pending().await,
            }
        };
        let bookmark = async {
            if req.bookmarks {
                tokio::time::sleep_until(bookmark_at).await
            } else {
                futures::future::pending().await
            }
        };
        tokio::select! {
            change = live.recv() => {
                let Some(change) = change else { return };
                last_rv = change.rv;
                if let Some((t, obj)) = req.event(&change)
                    && tx.send(req.line(t, &obj)).await.is_err()
                {
                    return;
                }
            }
            () = bookmark => {
                bookmark_at = tokio::time::Instant::now() + BOOKMARK_INTERVAL;
                if tx.send(req.bookmark(last_rv, false)).await.is_err() {
                    return;
                }
            }
            end = ends.recv() => {
                if end == Ok(WatchEnd::Expire) {
                    let gone = ApiError::expired(format!(
                        "too old resource version: {} ({})",
                        req.resource_version.unwrap_or(0),
                        last_rv
                    ));
                    let _ = tx.send(error_line(&gone.to_status())).await;
                }
                return;
            }
            () = timeout => return,
            () = tx.closed() => return,
        }
    }
}
