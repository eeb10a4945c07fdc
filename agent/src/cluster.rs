//! The one seam between the agent and the Kubernetes API: the only module that names
//! `kube::Api`. Every call carries the field manager `snapgate`; errors are sorted into what
//! the executor can act on.

use std::{collections::BTreeSet, fmt::Debug};

use futures::{AsyncRead, AsyncReadExt as _};
use snapgate_agent_core::{
    annotations,
    classify::{MOVER_LOG_KEEP_BYTES, MOVER_LOG_READ_MAX_BYTES, MOVER_LOG_TAIL_LINES},
    review::{self, AuthorReview},
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

/// The last `keep` bytes of what `reader` yields, holding at most twice that at any time.
pub async fn last_bytes(
    mut reader: impl AsyncRead + Unpin,
    keep: usize,
) -> std::io::Result<Vec<u8>> {
    let mut kept = Vec::new();
    let mut chunk = [0u8; 8192];
    loop {
        let n = reader.read(&mut chunk).await?;
        if n == 0 {
            break;
        }
        kept.extend_from_slice(chunk.get(..n).unwrap_or_default());
        if kept.len() > keep.saturating_mul(2) {
            kept.drain(..kept.len().saturating_sub(keep));
        }
    }
    kept.drain(..kept.len().saturating_sub(keep));
    Ok(kept)
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

    /// The pods of a Job (by the `batch.kubernetes.io/job-name` label Kubernetes sets).
    pub async fn job_pods(&self, ns: &str, job: &str) -> Result<Vec<Pod>, ClusterError> {
        let lp = ListParams::default().labels(&format!("batch.kubernetes.io/job-name={job}"));
        Ok(self.api::<Pod>(ns).list(&lp).await?.items)
    }

    /// The last lines of a pod's log (as many as movers.md filters from), bounded: the API
    /// server sends at most [`MOVER_LOG_READ_MAX_BYTES`] of them, of which the last
    /// [`MOVER_LOG_KEEP_BYTES`] are kept; bytes that are not UTF-8 read as U+FFFD.
    pub async fn pod_log_tail(&self, ns: &str, pod: &str) -> Result<String, ClusterError> {
        let lp = LogParams {
            tail_lines: Some(MOVER_LOG_TAIL_LINES),
            limit_bytes: Some(MOVER_LOG_READ_MAX_BYTES),
            ..Default::default()
        };
        let stream = self.api::<Pod>(ns).log_stream(pod, &lp).await?;
        let bytes = last_bytes(Box::pin(stream), MOVER_LOG_KEEP_BYTES)
            .await
            .map_err(|e| ClusterError::Transient(format!("reading the log of pod {pod}: {e}")))?;
        Ok(String::from_utf8_lossy(&bytes).into_owned())
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

    #[tokio::test]
    async fn only_the_last_bytes_of_a_long_log_are_kept() {
        let log: Vec<u8> = (0..100_000u32).flat_map(|i| i.to_le_bytes()).collect();
        let kept = last_bytes(futures::io::Cursor::new(log.clone()), 1000)
            .await
            .unwrap();
        assert_eq!(kept.as_slice(), log.get(log.len() - 1000..).unwrap());
        let short = last_bytes(futures::io::Cursor::new(b"short".to_vec()), 1000)
            .await
            .unwrap();
        assert_eq!(short, b"short");
        let none = last_bytes(futures::io::Cursor::new(Vec::new()), 0)
            .await
            .unwrap();
        assert!(none.is_empty());
    }
}
