//! The state's two tables, runs and sources, each with the indexes that keep every command
//! from scanning the whole state: runs by PVC and by source, sources by PVC, and the next
//! deadline of every run and every source.
//!
//! A run's PVC and source never change, so those indexes are kept as runs come and go. What a
//! deadline depends on does change, through `get_mut`: a table notes every entry it hands out
//! mutably, and brings those entries' index entries up to date in `settle`, which every
//! deadline query calls first. Queries by a source's PVC (which an apply may change) check
//! what the index says against the entry and look at the entries not yet settled as well, so
//! they are right whenever they are asked.

use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, Utc};

use super::SourceEntry;
use crate::{
    RunId, SourceKey,
    model::{Run, RunPhase},
};

/// The earliest time at which the passing of time changes a run: its wait for a copy trigger
/// times out, a holder's hold ends, or its hold lease runs out before the copy point.
fn run_deadline(r: &Run) -> Option<DateTime<Utc>> {
    let waiting = r.phase == RunPhase::WaitingForTrigger;
    let wait = r.wait_deadline.filter(|_| waiting && !r.timeout_reported);
    let holds = r
        .holds
        .iter()
        .filter_map(|h| h.deadline)
        .min()
        .filter(|_| waiting);
    let lease = r
        .lease_deadline
        .filter(|_| r.phase == RunPhase::Copying && r.copy_time.is_none());
    [wait, holds, lease].into_iter().flatten().min()
}

/// Runs by id, with their indexes.
#[derive(Default)]
pub(super) struct RunTable {
    /// Boxed: a run is over a kilobyte, and a map node holds eleven.
    runs: BTreeMap<RunId, Box<Run>>,
    /// `(namespace, pvc, run)`: one ordered set rather than a set per PVC, whose nodes would
    /// be mostly empty.
    by_pvc: BTreeSet<(String, String, RunId)>,
    /// `(source, run)`.
    by_source: BTreeSet<(SourceKey, RunId)>,
    /// Each run's deadline as last settled, and the same in time order.
    deadline_of: BTreeMap<RunId, DateTime<Utc>>,
    deadlines: BTreeSet<(DateTime<Utc>, RunId)>,
    /// Handed out mutably since the last settle.
    dirty: BTreeSet<RunId>,
}

impl RunTable {
    pub(super) fn get(&self, id: &RunId) -> Option<&Run> {
        self.runs.get(id).map(|r| &**r)
    }

    /// The run, to change: its deadline is looked at again on the next settle. Its PVC and
    /// source must not be changed (they are indexed for its whole life).
    pub(super) fn get_mut(&mut self, id: &RunId) -> Option<&mut Run> {
        let run = self.runs.get_mut(id)?;
        self.dirty.insert(*id);
        Some(&mut **run)
    }

    pub(super) fn contains_key(&self, id: &RunId) -> bool {
        self.runs.contains_key(id)
    }

    pub(super) fn insert(&mut self, run: Run) {
        let id = run.id;
        self.remove(&id);
        self.by_pvc
            .insert((run.source.namespace.clone(), run.pvc.clone(), id));
        self.by_source.insert((run.source.clone(), id));
        self.runs.insert(id, Box::new(run));
        self.dirty.insert(id);
    }

    pub(super) fn remove(&mut self, id: &RunId) -> Option<Run> {
        let run = *self.runs.remove(id)?;
        self.by_pvc
            .remove(&(run.source.namespace.clone(), run.pvc.clone(), *id));
        self.by_source.remove(&(run.source.clone(), *id));
        if let Some(at) = self.deadline_of.remove(id) {
            self.deadlines.remove(&(at, *id));
        }
        self.dirty.remove(id);
        Some(run)
    }

    /// Every run, in id order.
    pub(super) fn values(&self) -> impl DoubleEndedIterator<Item = &Run> {
        self.runs.values().map(|r| &**r)
    }

    /// The runs on a PVC, in id order (oldest first).
    pub(super) fn on_pvc(
        &self,
        namespace: &str,
        pvc: &str,
    ) -> impl DoubleEndedIterator<Item = &Run> + '_ {
        let (ns, pvc) = (namespace.to_owned(), pvc.to_owned());
        self.by_pvc
            .range((ns.clone(), pvc.clone(), RunId(0))..=(ns, pvc, RunId(u64::MAX)))
            .filter_map(|(_, _, id)| self.get(id))
    }

    /// The runs of a source, in id order (oldest first).
    pub(super) fn of_source(&self, key: &SourceKey) -> impl DoubleEndedIterator<Item = &Run> + '_ {
        self.by_source
            .range((key.clone(), RunId(0))..=(key.clone(), RunId(u64::MAX)))
            .filter_map(|(_, id)| self.get(id))
    }

    /// Brings the deadlines of the runs changed since the last call up to date.
    pub(super) fn settle(&mut self) {
        for id in std::mem::take(&mut self.dirty) {
            if let Some(at) = self.deadline_of.remove(&id) {
                self.deadlines.remove(&(at, id));
            }
            if let Some(at) = self.get(&id).and_then(run_deadline) {
                self.deadline_of.insert(id, at);
                self.deadlines.insert((at, id));
            }
        }
    }

    /// The earliest deadline of any run.
    pub(super) fn next_deadline(&mut self) -> Option<DateTime<Utc>> {
        self.settle();
        self.deadlines.first().map(|(at, _)| *at)
    }

    /// The runs with a deadline at or before `now`, in id order.
    pub(super) fn due(&mut self, now: DateTime<Utc>) -> Vec<RunId> {
        self.settle();
        let mut ids: Vec<RunId> = self
            .deadlines
            .iter()
            .take_while(|(at, _)| *at <= now)
            .map(|(_, id)| *id)
            .collect();
        ids.sort_unstable();
        ids
    }
}

/// When a source is due to start a run (see [`super::due`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Due {
    /// At this time (a schedule time, or a continuous source's retry).
    At(DateTime<Utc>),
    /// As soon as possible, whatever the time (a new manual tag, a continuous source's next run).
    Now,
}

/// What a source is indexed under, as last settled.
#[derive(Clone, Debug, Default)]
pub(super) struct Indexed {
    due: Option<Due>,
    /// `None` until first settled.
    pvc: Option<String>,
    /// Counted in its namespace's live sources (not being deleted).
    live: bool,
}

/// Sources by key, with their indexes.
#[derive(Default)]
pub(super) struct SourceTable {
    /// Boxed: an entry is over a kilobyte, and a map node holds eleven.
    entries: BTreeMap<SourceKey, Box<SourceEntry>>,
    /// `(namespace, spec.sourcePVC, name)`, as last settled.
    by_pvc: BTreeSet<(String, String, String)>,
    /// Due at a time, in time order, and due now.
    due_at: BTreeSet<(DateTime<Utc>, SourceKey)>,
    due_now: BTreeSet<SourceKey>,
    /// Handed out mutably since the last settle.
    dirty: BTreeSet<SourceKey>,
    /// Sources not being deleted, per namespace, as last settled.
    live: BTreeMap<String, usize>,
}

impl SourceTable {
    pub(super) fn get(&self, key: &SourceKey) -> Option<&SourceEntry> {
        self.entries.get(key).map(|e| &**e)
    }

    /// The entry, to change: it is indexed again on the next settle.
    pub(super) fn get_mut(&mut self, key: &SourceKey) -> Option<&mut SourceEntry> {
        let entry = self.entries.get_mut(key)?;
        if !self.dirty.contains(key) {
            self.dirty.insert(key.clone());
        }
        Some(&mut **entry)
    }

    pub(super) fn contains_key(&self, key: &SourceKey) -> bool {
        self.entries.contains_key(key)
    }

    pub(super) fn insert(&mut self, key: SourceKey, entry: SourceEntry) {
        self.remove(&key);
        self.entries.insert(key.clone(), Box::new(entry));
        self.dirty.insert(key);
    }

    pub(super) fn remove(&mut self, key: &SourceKey) -> Option<SourceEntry> {
        let entry = *self.entries.remove(key)?;
        self.unindex(key, &entry.indexed);
        self.dirty.remove(key);
        Some(entry)
    }

    fn unindex(&mut self, key: &SourceKey, indexed: &Indexed) {
        self.unindex_due(key, indexed.due);
        if let Some(pvc) = &indexed.pvc {
            self.unindex_pvc(key, pvc);
        }
        if indexed.live {
            self.count_live(&key.namespace, false);
        }
    }

    /// Counts a source of `namespace` in (`true`) or out of its live sources.
    fn count_live(&mut self, namespace: &str, live: bool) {
        if live {
            *self.live.entry(namespace.to_owned()).or_default() += 1;
        } else if let Some(n) = self.live.get_mut(namespace) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                self.live.remove(namespace);
            }
        }
    }

    /// How many sources of `namespace` are not being deleted: the settled count, corrected
    /// by the sources changed since (a range of the few changed, not a scan).
    pub(super) fn live_count(&self, namespace: &str) -> usize {
        let settled = self.live.get(namespace).copied().unwrap_or(0);
        let changed = self
            .dirty
            .range(SourceKey::new(namespace, "")..)
            .take_while(|k| k.namespace == namespace)
            .filter_map(|k| self.entries.get(k))
            .map(|e| (!e.record.deleting, e.indexed.live));
        let (mut added, mut removed) = (0_usize, 0_usize);
        for (now, then) in changed {
            match (now, then) {
                (true, false) => added += 1,
                (false, true) => removed += 1,
                _ => {}
            }
        }
        settled.saturating_add(added).saturating_sub(removed)
    }

    fn unindex_due(&mut self, key: &SourceKey, due: Option<Due>) {
        match due {
            Some(Due::At(at)) => {
                self.due_at.remove(&(at, key.clone()));
            }
            Some(Due::Now) => {
                self.due_now.remove(key);
            }
            None => {}
        }
    }

    fn index_due(&mut self, key: &SourceKey, due: Option<Due>) {
        match due {
            Some(Due::At(at)) => {
                self.due_at.insert((at, key.clone()));
            }
            Some(Due::Now) => {
                self.due_now.insert(key.clone());
            }
            None => {}
        }
    }

    fn unindex_pvc(&mut self, key: &SourceKey, pvc: &str) {
        self.by_pvc
            .remove(&(key.namespace.clone(), pvc.to_owned(), key.name.clone()));
    }

    /// Every source, in key order.
    pub(super) fn iter(&self) -> impl Iterator<Item = (&SourceKey, &SourceEntry)> {
        self.entries.iter().map(|(k, e)| (k, &**e))
    }

    /// Sources in key order within `range`.
    pub(super) fn range<R: std::ops::RangeBounds<SourceKey>>(
        &self,
        range: R,
    ) -> impl Iterator<Item = (&SourceKey, &SourceEntry)> {
        self.entries.range(range).map(|(k, e)| (k, &**e))
    }

    /// The sources (deleting or not) whose spec names `pvc` in `namespace`, in key order.
    pub(super) fn on_pvc(&self, namespace: &str, pvc: &str) -> BTreeSet<SourceKey> {
        let names = |k: &SourceKey| {
            self.entries
                .get(k)
                .is_some_and(|e| k.namespace == namespace && e.spec().source_pvc == pvc)
        };
        let indexed = self
            .by_pvc
            .range((namespace.to_owned(), pvc.to_owned(), String::new())..)
            .take_while(|(n, p, _)| n == namespace && p == pvc)
            .map(|(n, _, name)| SourceKey::new(n, name));
        indexed
            .chain(self.dirty.iter().cloned())
            .filter(|k| names(k))
            .collect()
    }

    /// Brings the index entries of the sources changed since the last call up to date.
    pub(super) fn settle(&mut self) {
        for key in std::mem::take(&mut self.dirty) {
            let Some(entry) = self.entries.get(&key) else {
                continue;
            };
            let old = entry.indexed.clone();
            let new = Indexed {
                due: super::due_time(entry),
                pvc: Some(entry.spec().source_pvc.clone()),
                live: !entry.record.deleting,
            };
            if old.live != new.live {
                self.count_live(&key.namespace, new.live);
            }
            if old.due != new.due {
                self.unindex_due(&key, old.due);
                self.index_due(&key, new.due);
            }
            if old.pvc != new.pvc {
                if let Some(pvc) = &old.pvc {
                    self.unindex_pvc(&key, pvc);
                }
                if let Some(pvc) = &new.pvc {
                    self.by_pvc
                        .insert((key.namespace.clone(), pvc.clone(), key.name.clone()));
                }
            }
            if let Some(entry) = self.entries.get_mut(&key) {
                entry.indexed = new;
            }
        }
    }

    /// The earliest time a source is due at (sources due now, whatever the time, are
    /// [`Self::any_due_now`]).
    pub(super) fn next_due(&mut self) -> Option<DateTime<Utc>> {
        self.settle();
        self.due_at.first().map(|(at, _)| *at)
    }

    /// At most `limit` of the sources due: those due now (in key order), then those due at
    /// or before `now`, earliest first.
    pub(super) fn due(&mut self, now: DateTime<Utc>, limit: usize) -> Vec<SourceKey> {
        self.settle();
        self.due_now
            .iter()
            .chain(
                self.due_at
                    .iter()
                    .take_while(|(at, _)| *at <= now)
                    .map(|(_, k)| k),
            )
            .take(limit)
            .cloned()
            .collect()
    }

    /// Whether a source is due now, whatever the time.
    pub(super) fn any_due_now(&mut self) -> bool {
        self.settle();
        !self.due_now.is_empty()
    }
}

impl super::Scheduler {
    /// Checks every index against a scan of the state it indexes: the runs by PVC and by
    /// source, each run's deadline, each source's due time, PVC and namespace count (before
    /// and after settling), and [`Self::poll_timeout`]
    /// against the earliest of them all. For tests; a scan of everything.
    #[doc(hidden)]
    pub fn check_indexes(&mut self) -> Result<(), String> {
        for (name, table) in [("active", &mut self.active), ("history", &mut self.history)] {
            table.settle();
            table.check().map_err(|e| format!("{name} runs: {e}"))?;
        }
        // The live counts, unsettled (as the driver asks them after a write), then settled.
        let mut scanned_live = BTreeMap::<String, usize>::new();
        for (k, e) in self.sources.iter() {
            let n = scanned_live.entry(k.namespace.clone()).or_default();
            if !e.record.deleting {
                *n += 1;
            }
        }
        for (namespace, want) in &scanned_live {
            let got = self.sources.live_count(namespace);
            if got != *want {
                return Err(format!(
                    "namespace {namespace}: {got} live sources before settling, a scan says {want}"
                ));
            }
        }
        self.sources.settle();
        self.sources.check()?;
        let due_now = self
            .sources
            .iter()
            .any(|(_, e)| super::due_time(e) == Some(Due::Now));
        let left = self.starts_checked.filter(|_| due_now);
        let scanned = self
            .active
            .values()
            .filter_map(run_deadline)
            .chain(
                self.sources
                    .iter()
                    .filter_map(|(_, e)| match super::due_time(e) {
                        Some(Due::At(at)) => Some(at),
                        _ => None,
                    }),
            )
            .chain(left)
            .min();
        let polled = self.poll_timeout();
        if polled != scanned {
            return Err(format!("poll_timeout {polled:?}, a scan says {scanned:?}"));
        }
        Ok(())
    }
}

impl RunTable {
    fn check(&self) -> Result<(), String> {
        let mut by_pvc = BTreeSet::new();
        let mut by_source = BTreeSet::new();
        let mut deadlines = BTreeSet::new();
        for (id, r) in &self.runs {
            by_pvc.insert((r.source.namespace.clone(), r.pvc.clone(), *id));
            by_source.insert((r.source.clone(), *id));
            if let Some(at) = run_deadline(r) {
                deadlines.insert((at, *id));
            }
        }
        if by_pvc != self.by_pvc {
            return Err(format!("by PVC {:?}, a scan says {by_pvc:?}", self.by_pvc));
        }
        if by_source != self.by_source {
            return Err(format!(
                "by source {:?}, a scan says {by_source:?}",
                self.by_source
            ));
        }
        if deadlines != self.deadlines || deadlines.len() != self.deadline_of.len() {
            return Err(format!(
                "deadlines {:?}, a scan says {deadlines:?}",
                self.deadlines
            ));
        }
        Ok(())
    }
}

impl SourceTable {
    fn check(&self) -> Result<(), String> {
        let mut by_pvc = BTreeSet::new();
        let mut due_at = BTreeSet::new();
        let mut due_now = BTreeSet::new();
        let mut live = BTreeMap::<String, usize>::new();
        for (k, e) in &self.entries {
            if !e.record.deleting {
                *live.entry(k.namespace.clone()).or_default() += 1;
            }
            by_pvc.insert((
                k.namespace.clone(),
                e.spec().source_pvc.clone(),
                k.name.clone(),
            ));
            match super::due_time(e) {
                Some(Due::At(at)) => {
                    due_at.insert((at, k.clone()));
                }
                Some(Due::Now) => {
                    due_now.insert(k.clone());
                }
                None => {}
            }
        }
        if by_pvc != self.by_pvc {
            return Err(format!(
                "sources by PVC {:?}, a scan says {by_pvc:?}",
                self.by_pvc
            ));
        }
        if due_at != self.due_at || due_now != self.due_now {
            return Err(format!(
                "sources due {:?} and now {:?}, a scan says {due_at:?} and {due_now:?}",
                self.due_at, self.due_now
            ));
        }
        if live != self.live {
            return Err(format!(
                "live sources per namespace {:?}, a scan says {live:?}",
                self.live
            ));
        }
        Ok(())
    }
}
