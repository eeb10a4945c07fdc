//! The one seam between the agent and the Kubernetes API: the only module that names
//! `kube::Api`. Every call carries the field manager `snapgate`; errors are sorted into what
//! the executor can act on.

use std::{collections::BTreeSet, fmt::Debug};

use futures::{AsyncRead, AsyncReadExt as _};
use snapgate_agent_core::{
    annotations,
    classify::{LogTail, MOVER_LOG_MAX_LINE_BYTES, MOVER_LOG_READ_MAX_BYTES, MOVER_LOG_TAIL_LINES},
    review::{self, AuthorReview},
    volsync,
};

use k8s_openapi::{
    NamespaceResourceScope,
    api::{
        authorization::v1::{
            LocalSubjectAccessReview, ResourceAttributes, SubjectAccessReviewSpec,
        },
        core::v1::{Event, Namespace, Pod, Secret},
    },
};
use kube::{
    Api, Client, Resource,
    api::{DeleteParams, ListParams, LogParams, Patch, PatchParams, PostParams, PropagationPolicy},
};
use serde::{Serialize, de::DeserializeOwned};

/// Feeds `tail` the lines `reader` yields, split as `str::lines` splits them, holding one
/// line of at most `max_line` bytes at a time (the rest of a longer line is skipped) and
/// reading at most `max_total` bytes; whether it stopped there. Bytes that are not UTF-8 read
/// as U+FFFD.
pub async fn feed_lines(
    mut reader: impl AsyncRead + Unpin,
    tail: &mut LogTail,
    max_line: usize,
    max_total: usize,
) -> std::io::Result<bool> {
    let mut line: Vec<u8> = Vec::new();
    let mut chunk = [0u8; 8192];
    let mut total = 0usize;
    let push = |tail: &mut LogTail, line: &[u8]| {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        tail.push(&String::from_utf8_lossy(line));
    };
    loop {
        let n = reader.read(&mut chunk).await?;
        if n == 0 {
            break;
        }
        total = total.saturating_add(n);
        for part in chunk
            .get(..n)
            .unwrap_or_default()
            .split_inclusive(|b| *b == b'\n')
        {
            let (body, ended) = match part.strip_suffix(b"\n") {
                Some(body) => (body, true),
                None => (part, false),
            };
            let room = max_line.saturating_sub(line.len());
            line.extend_from_slice(body.get(..room.min(body.len())).unwrap_or_default());
            if ended {
                push(tail, &line);
                line.clear();
            }
        }
        if total >= max_total {
            if !line.is_empty() {
                push(tail, &line);
            }
            return Ok(true);
        }
    }
    if !line.is_empty() {
        // The last line, without a line end: kept as it is (a bare `\r` too, as `lines`).
        tail.push(&String::from_utf8_lossy(&line));
    }
    Ok(false)
}

/// The field manager of every write.
pub const FIELD_MANAGER: &str = "snapgate";

/// A failed API call, sorted by what to do about it.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// 404.
    #[error("not found: {0}")]
    NotFound(String),
    /// 409 AlreadyExists on create.
    #[error("already exists: {0}")]
    AlreadyExists(String),
    /// 403: the agent's RBAC does not allow it.
    #[error("forbidden: {0}")]
    Forbidden(String),
    /// 409 Conflict (another writer changed the object): try again later.
    #[error("conflict: {0}")]
    Conflict(String),
    /// 429, 5xx, transport errors: try again later.
    #[error("transient: {0}")]
    Transient(String),
    /// Anything else (422 and the like): the request itself is wrong.
    #[error("refused: {0}")]
    Refused(String),
}

impl From<kube::Error> for ClusterError {
    fn from(e: kube::Error) -> Self {
        match &e {
            kube::Error::Api(s) => match (s.code, s.reason.as_str()) {
                (404, _) => Self::NotFound(s.message.clone()),
                (409, "AlreadyExists") => Self::AlreadyExists(s.message.clone()),
                (403, _) => Self::Forbidden(s.message.clone()),
                (409, _) => Self::Conflict(s.message.clone()),
                (429, _) | (500..=599, _) => Self::Transient(format!("{} {}", s.code, s.message)),
                _ => Self::Refused(format!("{} {}: {}", s.code, s.reason, s.message)),
            },
            _ => Self::Transient(e.to_string()),
        }
    }
}

impl ClusterError {
    /// The class of the failure, as the metric labels it.
    pub fn class(&self) -> &'static str {
        match self {
            Self::NotFound(_) => "not_found",
            Self::AlreadyExists(_) => "already_exists",
            Self::Forbidden(_) => "forbidden",
            Self::Conflict(_) => "conflict",
            Self::Transient(_) => "transient",
            Self::Refused(_) => "invalid",
        }
    }

    /// Whether trying again can help without anyone acting: a forbidden or invalid request
    /// fails the same way until the RBAC or the object is fixed.
    pub fn is_transient(&self) -> bool {
        matches!(self, Self::Conflict(_) | Self::Transient(_))
    }
}

/// A namespaced resource kind the agent reads and writes.
pub trait Namespaced:
    Resource<Scope = NamespaceResourceScope, DynamicType = ()>
    + Clone
    + Debug
    + Serialize
    + DeserializeOwned
    + Send
    + Sync
    + 'static
{
}

impl<K> Namespaced for K where
    K: Resource<Scope = NamespaceResourceScope, DynamicType = ()>
        + Clone
        + Debug
        + Serialize
        + DeserializeOwned
        + Send
        + Sync
        + 'static
{
}

/// The agent's access to the cluster.
#[derive(Clone)]
pub struct Cluster {
    client: Client,
}

impl Cluster {
    /// Wraps a kube client.
    pub fn new(client: Client) -> Self {
        Self { client }
    }

    /// The kube client (for watchers).
    pub fn client(&self) -> Client {
        self.client.clone()
    }

    fn api<K: Namespaced>(&self, ns: &str) -> Api<K> {
        Api::namespaced(self.client.clone(), ns)
    }

    /// Creates an object.
    pub async fn create<K: Namespaced>(&self, ns: &str, obj: &K) -> Result<K, ClusterError> {
        let pp = PostParams {
            field_manager: Some(FIELD_MANAGER.into()),
            ..Default::default()
        };
        Ok(self.api::<K>(ns).create(&pp, obj).await?)
    }

    /// Applies a JSON merge patch that names only the fields snapgate owns.
    pub async fn merge_patch<K: Namespaced>(
        &self,
        ns: &str,
        name: &str,
        patch: &serde_json::Value,
    ) -> Result<K, ClusterError> {
        let pp = PatchParams {
            field_manager: Some(FIELD_MANAGER.into()),
            ..Default::default()
        };
        Ok(self
            .api::<K>(ns)
            .patch(name, &pp, &Patch::Merge(patch))
            .await?)
    }

    /// Reads an object; `None` when there is none.
    pub async fn get_opt<K: Namespaced>(
        &self,
        ns: &str,
        name: &str,
    ) -> Result<Option<K>, ClusterError> {
        Ok(self.api::<K>(ns).get_opt(name).await?)
    }

    /// Deletes an object (dependents in the background); a missing object is not an error.
    /// `Some(object)` when it still exists, terminating (finalizers, PVC protection).
    pub async fn delete<K: Namespaced>(
        &self,
        ns: &str,
        name: &str,
    ) -> Result<Option<K>, ClusterError> {
        let dp = DeleteParams {
            propagation_policy: Some(PropagationPolicy::Background),
            ..Default::default()
        };
        match self.api::<K>(ns).delete(name, &dp).await {
            // The API server answers with the object (or a Status); the object is still there
            // only if it carries a deletionTimestamp (finalizers, PVC protection).
            Ok(either) => Ok(either
                .left()
                .filter(|o| o.meta().deletion_timestamp.is_some())),
            Err(e) => match ClusterError::from(e) {
                ClusterError::NotFound(_) => Ok(None),
                other => Err(other),
            },
        }
    }

    /// The keys of a Secret, `None` when it does not exist (names come from the source spec;
    /// the agent may only `get` Secrets, never list or watch them).
    pub async fn secret_keys(
        &self,
        ns: &str,
        name: &str,
    ) -> Result<Option<BTreeSet<String>>, ClusterError> {
        let secrets: Api<Secret> = self.api(ns);
        Ok(secrets.get_opt(name).await?.map(|s| {
            let mut keys: BTreeSet<String> = s.data.unwrap_or_default().into_keys().collect();
            keys.extend(s.string_data.unwrap_or_default().into_keys());
            keys
        }))
    }

    /// Whether the namespace allows privileged movers (its `volsync.backube/privileged-movers`
    /// annotation, read as VolSync reads it).
    pub async fn privileged_movers(&self, ns: &str) -> Result<bool, ClusterError> {
        let api: Api<Namespace> = Api::all(self.client.clone());
        Ok(api
            .get_opt(ns)
            .await?
            .is_some_and(|n| annotations::privileged_movers_allowed(&n)))
    }

    /// The namespace's VolSync ReplicationSources (at most [`volsync::MAX_LISTED`]); none
    /// when VolSync's API is not installed.
    pub async fn volsync_sources(
        &self,
        ns: &str,
    ) -> Result<Vec<volsync::ReplicationSourceSeen>, ClusterError> {
        use kube::api::{ApiResource, DynamicObject, GroupVersionKind, ListParams};
        let resource = ApiResource::from_gvk_with_plural(
            &GroupVersionKind::gvk("volsync.backube", "v1alpha1", "ReplicationSource"),
            "replicationsources",
        );
        let api: Api<DynamicObject> = Api::namespaced_with(self.client.clone(), ns, &resource);
        match api
            .list(&ListParams::default().limit(volsync::MAX_LISTED))
            .await
        {
            Ok(list) => Ok(list
                .items
                .iter()
                .filter_map(|o| serde_json::to_value(o).ok())
                .filter_map(|v| volsync::ReplicationSourceSeen::from_object(&v))
                .collect()),
            Err(kube::Error::Api(s)) if s.code == 404 => Ok(Vec::new()),
            Err(e) => Err(e.into()),
        }
    }

    /// Every pod of the namespace (to find the one using a PVC).
    pub async fn pods(&self, ns: &str) -> Result<Vec<Pod>, ClusterError> {
        Ok(self
            .api::<Pod>(ns)
            .list(&ListParams::default())
            .await?
            .items)
    }

    /// The pods of a Job (by the `batch.kubernetes.io/job-name` label Kubernetes sets).
    pub async fn job_pods(&self, ns: &str, job: &str) -> Result<Vec<Pod>, ClusterError> {
        let lp = ListParams::default().labels(&format!("batch.kubernetes.io/job-name={job}"));
        Ok(self.api::<Pod>(ns).list(&lp).await?.items)
    }

    /// A pod's log (its last [`MOVER_LOG_TAIL_LINES`] lines, at most
    /// [`MOVER_LOG_READ_MAX_BYTES`] of them) read line by line into `tail`, so the whole log
    /// is filtered while only what can be kept is held.
    pub async fn pod_log_into(
        &self,
        ns: &str,
        pod: &str,
        mut tail: LogTail,
    ) -> Result<String, ClusterError> {
        let lp = LogParams {
            tail_lines: Some(MOVER_LOG_TAIL_LINES),
            ..Default::default()
        };
        let stream = self.api::<Pod>(ns).log_stream(pod, &lp).await?;
        let cut = feed_lines(
            Box::pin(stream),
            &mut tail,
            MOVER_LOG_MAX_LINE_BYTES,
            MOVER_LOG_READ_MAX_BYTES,
        )
        .await
        .map_err(|e| ClusterError::Transient(format!("reading the log of pod {pod}: {e}")))?;
        let text = tail.finish();
        Ok(if cut {
            format!("(log read up to {MOVER_LOG_READ_MAX_BYTES} bytes)\n{text}")
        } else {
            text
        })
    }

    /// Asks the API server whether the review's author may do each of its checks in `ns`
    /// (one `LocalSubjectAccessReview` each, in order): `None` when every one is allowed,
    /// else why the first refused one is (see [`review::denial`]).
    pub async fn review_author(
        &self,
        ns: &str,
        r: &AuthorReview,
    ) -> Result<Option<String>, ClusterError> {
        for check in &r.checks {
            let ask = LocalSubjectAccessReview {
                metadata: kube::api::ObjectMeta {
                    namespace: Some(ns.to_owned()),
                    ..Default::default()
                },
                spec: SubjectAccessReviewSpec {
                    user: Some(r.user.clone()),
                    groups: Some(r.groups.clone()),
                    resource_attributes: Some(ResourceAttributes {
                        namespace: Some(ns.to_owned()),
                        verb: Some(check.verb.to_owned()),
                        group: Some(check.group.to_owned()),
                        resource: Some(check.resource.to_owned()),
                        name: check.name.clone(),
                        ..Default::default()
                    }),
                    ..Default::default()
                },
                status: None,
            };
            let answer = self
                .api::<LocalSubjectAccessReview>(ns)
                .create(&PostParams::default(), &ask)
                .await?;
            let status = answer.status.unwrap_or_default();
            if !status.allowed {
                let reason = [status.reason, status.evaluation_error]
                    .into_iter()
                    .flatten()
                    .filter(|s| !s.is_empty())
                    .collect::<Vec<_>>()
                    .join("; ");
                return Ok(Some(review::denial(&r.user, check, ns, &reason)));
            }
        }
        Ok(None)
    }

    /// Records a Kubernetes Event; an event of the same name already recorded is not an error.
    pub async fn record_event(&self, ns: &str, event: &Event) -> Result<(), ClusterError> {
        match self.create(ns, event).await {
            Ok(_) | Err(ClusterError::AlreadyExists(_)) => Ok(()),
            Err(e) => Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use snapgate_agent_core::{Mover, classify};

    async fn fed(log: &[u8], max_line: usize, max_total: usize) -> (String, bool) {
        let mut tail = LogTail::new(Mover::Restic, true);
        let cut = feed_lines(
            futures::io::Cursor::new(log.to_vec()),
            &mut tail,
            max_line,
            max_total,
        )
        .await
        .unwrap();
        (tail.finish(), cut)
    }

    #[tokio::test]
    async fn a_log_is_fed_line_by_line_as_lines_splits_it() {
        for log in ["a\nb\r\nc", "a\n\nb\n", "x\r", "", "\n", "é\r\n¡\r"] {
            let (got, cut) = fed(log.as_bytes(), 1 << 20, 1 << 20).await;
            assert!(!cut);
            assert_eq!(
                got,
                classify::mover_failure_log_tail(Mover::Restic, log),
                "{log:?}"
            );
        }
        // Over chunk boundaries: 100,000 lines.
        let many: String = (0..100_000).map(|i| format!("line {i}\n")).collect();
        let (got, _) = fed(many.as_bytes(), 1 << 20, 1 << 30).await;
        assert_eq!(got, classify::mover_failure_log_tail(Mover::Restic, &many));
        assert!(got.ends_with("line 99999"));
    }

    #[tokio::test]
    async fn a_long_line_is_held_only_to_its_bound_and_a_long_log_only_to_its() {
        let mut log = vec![b'x'; 100_000];
        log.extend_from_slice(b"\nend\n");
        let (got, cut) = fed(&log, 10, 1 << 20).await;
        assert!(!cut);
        assert_eq!(got, "xxxxxxxxxx\nend");
        let (_, cut) = fed(&log, 10, 50_000).await;
        assert!(cut, "stopped at the bound");
        // Not UTF-8: read as U+FFFD.
        let (got, _) = fed(b"\xff\xfeok\n", 100, 100).await;
        assert_eq!(got, "\u{FFFD}\u{FFFD}ok");
    }
}
