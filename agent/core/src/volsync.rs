//! VolSync beside snapgate. Both controllers speak the same copy-trigger annotations: while a
//! VolSync `ReplicationSource` that is not paused replicates the same PVC, each would mark it
//! `WaitingForTrigger`, and one trigger value written by the application would release both, so
//! each controller's copy could be cut while the other's bookkeeping says the application was
//! not asked. A gated run therefore refuses to ask the application to quiesce while such a
//! ReplicationSource exists (`docs/migrating-from-volsync.md`).

use serde_json::Value;

/// The longest Kubernetes object name (a DNS-1123 subdomain).
const MAX_NAME_BYTES: usize = 253;

/// At most this many ReplicationSources of a namespace are read (the list is paged to it).
pub const MAX_LISTED: u32 = 1000;

/// What the agent reads of one VolSync `ReplicationSource`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReplicationSourceSeen {
    /// `metadata.name`.
    pub name: String,
    /// `spec.sourcePVC` ("" when absent).
    pub source_pvc: String,
    /// `spec.paused`.
    pub paused: bool,
}

impl ReplicationSourceSeen {
    /// The fields the check needs, from a ReplicationSource as the API server returned it;
    /// `None` for an object without a name. Names are held to their Kubernetes bound.
    pub fn from_object(o: &Value) -> Option<Self> {
        let text = |v: &Value| {
            v.as_str()
                .filter(|s| s.len() <= MAX_NAME_BYTES)
                .map(str::to_owned)
        };
        Some(Self {
            name: text(&o["metadata"]["name"])?,
            source_pvc: text(&o["spec"]["sourcePVC"]).unwrap_or_default(),
            paused: o["spec"]["paused"].as_bool().unwrap_or(false),
        })
    }
}

/// The ReplicationSources that would answer `pvc`'s copy-trigger too: those of that PVC that
/// are not paused.
pub fn conflicts<'a>(sources: &'a [ReplicationSourceSeen], pvc: &str) -> Vec<&'a str> {
    sources
        .iter()
        .filter(|s| s.source_pvc == pvc && !s.paused)
        .map(|s| s.name.as_str())
        .collect()
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn a_running_replication_source_of_the_same_pvc_conflicts() {
        let seen: Vec<ReplicationSourceSeen> = [
            json!({"metadata": {"name": "db-backup"}, "spec": {"sourcePVC": "data"}}),
            json!({"metadata": {"name": "paused"}, "spec": {"sourcePVC": "data", "paused": true}}),
            json!({"metadata": {"name": "other"}, "spec": {"sourcePVC": "logs"}}),
            json!({"metadata": {"name": "no-spec"}}),
            json!({"metadata": {}}),
            json!({"metadata": {"name": "x".repeat(300)}, "spec": {"sourcePVC": "data"}}),
        ]
        .iter()
        .filter_map(ReplicationSourceSeen::from_object)
        .collect();
        assert_eq!(seen.len(), 4, "no name, or an impossible one: skipped");
        assert_eq!(conflicts(&seen, "data"), ["db-backup"]);
        assert!(conflicts(&seen, "logs") == ["other"]);
        assert!(conflicts(&seen, "cache").is_empty());
    }
}
