//! What the agent knows of the cluster: objects from its watches and from its own writes.
//!
//! Reconciling reads only from here, so a reconcile costs no API reads. A write's response is
//! recorded at once, so the next reconcile does not act on the older copy a watch event may
//! still deliver: between two copies of an object, the higher `resourceVersion` wins.

use std::collections::{BTreeMap, BTreeSet};

use kube::Resource;

type Key = (String, String);

/// The newest known copy of every object of one kind.
#[derive(Debug)]
pub struct Cache<K> {
    objects: BTreeMap<Key, K>,
    /// Objects deleted, with the resourceVersion they had, so a late event does not revive them.
    gone: BTreeMap<Key, u64>,
    /// Keys listed since the last watch restart, per namespace.
    relisting: BTreeMap<String, BTreeSet<String>>,
    /// Namespaces whose first listing is complete: only then does absence mean "absent".
    synced: BTreeSet<String>,
}

impl<K> Default for Cache<K> {
    fn default() -> Self {
        Self {
            objects: BTreeMap::new(),
            gone: BTreeMap::new(),
            relisting: BTreeMap::new(),
            synced: BTreeSet::new(),
        }
    }
}

fn version<K: Resource>(obj: &K) -> Option<u64> {
    obj.meta()
        .resource_version
        .as_deref()
        .and_then(|v| v.parse().ok())
}

fn key<K: Resource>(obj: &K) -> Key {
    (
        obj.meta().namespace.clone().unwrap_or_default(),
        obj.meta().name.clone().unwrap_or_default(),
    )
}

impl<K: Resource + Clone> Cache<K> {
    /// Records an object seen in a watch event or returned by a write.
    pub fn apply(&mut self, obj: K) {
        let k = key(&obj);
        if let Some(ns) = self.relisting.get_mut(&k.0) {
            ns.insert(k.1.clone());
        }
        let v = version(&obj);
        if let (Some(v), Some(dead)) = (v, self.gone.get(&k))
            && v <= *dead
        {
            return;
        }
        if let (Some(v), Some(old)) = (v, self.objects.get(&k).and_then(version))
            && v < old
        {
            return;
        }
        self.gone.remove(&k);
        self.objects.insert(k, obj);
    }

    /// Records a deletion (from a watch event, or our own delete).
    pub fn delete(&mut self, namespace: &str, name: &str) {
        let k = (namespace.to_owned(), name.to_owned());
        if let Some(old) = self.objects.remove(&k) {
            self.gone.insert(k, version(&old).unwrap_or(0));
        }
    }

    /// Records the answer to our own delete: the object is gone, or `left` is what is left of
    /// it (terminating), which stays in view until its watch says it is gone.
    pub fn deleted(&mut self, namespace: &str, name: &str, left: Option<K>) {
        match left {
            Some(terminating) => self.apply(terminating),
            None => self.delete(namespace, name),
        }
    }

    /// Records a deletion seen by a watch. A late event about an earlier object of the same
    /// name (another uid, or an older version) leaves the newer object alone.
    pub fn delete_seen(&mut self, obj: &K) {
        let k = key(obj);
        let Some(cached) = self.objects.get(&k) else {
            // Deleted by us and now confirmed by the watch: events are ordered, so nothing
            // older can follow and the tombstone is no longer needed.
            if let (Some(dead), Some(v)) = (self.gone.get(&k), version(obj))
                && *dead <= v
            {
                self.gone.remove(&k);
            }
            return;
        };
        let same_uid = match (&cached.meta().uid, &obj.meta().uid) {
            (Some(a), Some(b)) => a == b,
            _ => true,
        };
        let not_newer = match (version(cached), version(obj)) {
            (Some(c), Some(o)) => c <= o,
            _ => true,
        };
        if same_uid && not_newer {
            // The watch reported the deletion: no tombstone is needed (see above).
            self.objects.remove(&k);
            self.gone.remove(&k);
        }
    }

    /// A watch of `namespace` restarted: a full listing follows.
    pub fn relist_started(&mut self, namespace: &str) {
        self.relisting.insert(namespace.to_owned(), BTreeSet::new());
    }

    /// The listing is complete: whatever it did not contain is gone.
    pub fn relist_done(&mut self, namespace: &str) {
        self.synced.insert(namespace.to_owned());
        let Some(seen) = self.relisting.remove(namespace) else {
            return;
        };
        let stale: Vec<Key> = self
            .objects
            .keys()
            .filter(|(ns, name)| ns == namespace && !seen.contains(name))
            .cloned()
            .collect();
        for (ns, name) in stale {
            self.delete(&ns, &name);
        }
    }

    /// Whether the watch of `namespace` has listed it completely at least once. Before that, a
    /// missing object may merely not be listed yet.
    pub fn is_synced(&self, namespace: &str) -> bool {
        self.synced.contains(namespace)
    }

    /// Every object of `namespace`.
    pub fn in_namespace<'a>(&'a self, namespace: &'a str) -> impl Iterator<Item = &'a K> + 'a {
        self.objects
            .iter()
            .filter(move |((ns, _), _)| ns == namespace)
            .map(|(_, o)| o)
    }

    /// The object, if it exists.
    pub fn get(&self, namespace: &str, name: &str) -> Option<&K> {
        self.objects.get(&(namespace.to_owned(), name.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::{
        api::core::v1::PersistentVolumeClaim, apimachinery::pkg::apis::meta::v1::ObjectMeta,
    };

    use super::*;

    fn pvc(name: &str, rv: &str, note: &str) -> PersistentVolumeClaim {
        PersistentVolumeClaim {
            metadata: ObjectMeta {
                name: Some(name.into()),
                namespace: Some("ns".into()),
                resource_version: Some(rv.into()),
                annotations: Some([("note".to_owned(), note.to_owned())].into()),
                ..Default::default()
            },
            ..Default::default()
        }
    }

    fn note(c: &Cache<PersistentVolumeClaim>, name: &str) -> Option<String> {
        c.get("ns", name)
            .and_then(|p| p.metadata.annotations.as_ref()?.get("note").cloned())
    }

    #[test]
    fn an_older_copy_arriving_late_does_not_replace_a_newer_one() {
        let mut c = Cache::default();
        c.apply(pvc("a", "12", "written by us"));
        c.apply(pvc("a", "10", "stale watch event"));
        assert_eq!(note(&c, "a").as_deref(), Some("written by us"));
        c.apply(pvc("a", "13", "newer"));
        assert_eq!(note(&c, "a").as_deref(), Some("newer"));
    }

    #[test]
    fn a_deleted_object_is_not_revived_by_a_late_event() {
        let mut c = Cache::default();
        c.apply(pvc("a", "5", "x"));
        c.delete("ns", "a");
        c.apply(pvc("a", "5", "late"));
        assert!(c.get("ns", "a").is_none());
        c.apply(pvc("a", "9", "recreated"));
        assert_eq!(note(&c, "a").as_deref(), Some("recreated"));
    }

    #[test]
    fn a_late_delete_event_of_an_earlier_object_of_the_same_name_keeps_the_new_one() {
        let mut c = Cache::default();
        let mut old = pvc("a", "5", "first");
        old.metadata.uid = Some("u1".into());
        let mut new = pvc("a", "8", "second");
        new.metadata.uid = Some("u2".into());
        c.apply(new);
        c.delete_seen(&old);
        assert_eq!(note(&c, "a").as_deref(), Some("second"));
        let mut gone = pvc("a", "9", "second");
        gone.metadata.uid = Some("u2".into());
        c.delete_seen(&gone);
        assert!(c.get("ns", "a").is_none());
    }

    #[test]
    fn a_namespace_is_synced_only_once_its_first_listing_is_complete() {
        let mut c: Cache<PersistentVolumeClaim> = Cache::default();
        assert!(!c.is_synced("ns"));
        c.relist_started("ns");
        c.apply(pvc("a", "1", "x"));
        assert!(!c.is_synced("ns"));
        c.relist_done("ns");
        assert!(c.is_synced("ns"));
        assert!(!c.is_synced("other"));
    }

    #[test]
    fn a_relist_drops_what_it_no_longer_contains() {
        let mut c = Cache::default();
        c.apply(pvc("a", "1", "x"));
        c.apply(pvc("b", "2", "y"));
        c.relist_started("ns");
        c.apply(pvc("b", "2", "y"));
        c.relist_done("ns");
        assert!(c.get("ns", "a").is_none());
        assert!(c.get("ns", "b").is_some());
    }
}
