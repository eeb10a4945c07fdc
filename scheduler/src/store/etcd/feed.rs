//! A follower's feed from the etcd store: the records at one revision, then every commit after
//! it, from a watch of the store's prefix.
//!
//! A leader's commit is one txn, so its events share one revision and make one [`Commit`]. A
//! journalled batch (see the store's docs) becomes visible whole at its commit marker: the
//! feed keeps every journal's chunks as they are written and, when the marker comes, reports
//! the journal's writes as that commit; the writes' later application to their keys repeats
//! them. A snapshot applies the journals committed but not yet applied in the same way. Only
//! the leader writes, so what the feed reads never changes the store.

use std::collections::BTreeMap;

use snapgate_etcd::{Client, EtcdOptions, WatchStream, pb::mvccpb::event::EventType};
use snapgate_scheduler_core::{Mirrored, Quarantined, RunId, SourceKey};

use super::{JOURNAL_PAGE, JournalParts, Keys, read_records};
use crate::{
    follower::{Commit, Feed, FeedFuture},
    store::{Loaded, StoreError, format},
};

/// The feed of a follower on the etcd store.
pub struct EtcdFeed {
    client: Client,
    keys: Keys,
    /// The journals written and not yet deleted, by `journal/<seq>/`.
    journals: BTreeMap<String, JournalParts>,
    watch: Option<WatchStream>,
    /// The revision the copy has reached.
    revision: i64,
}

impl std::fmt::Debug for EtcdFeed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdFeed")
            .field("prefix", &self.keys.all())
            .field("revision", &self.revision)
            .finish_non_exhaustive()
    }
}

impl EtcdFeed {
    /// A feed of the store `opts` names (nothing is read until the first snapshot).
    pub fn new(opts: &EtcdOptions) -> Result<Self, StoreError> {
        Ok(Self {
            client: Client::new(opts)?,
            keys: Keys::new(opts),
            journals: BTreeMap::new(),
            watch: None,
            revision: 0,
        })
    }

    pub(crate) async fn snapshot(&mut self) -> Result<(Loaded, i64), StoreError> {
        self.watch = None;
        let (records, revision) = read_records(&self.client, &self.keys).await?;
        let journal = self
            .client
            .range_prefix_at(self.keys.journal().as_bytes(), JOURNAL_PAGE, revision)
            .await?;
        let mut records: BTreeMap<Vec<u8>, Vec<u8>> =
            records.into_iter().map(|kv| (kv.key, kv.value)).collect();
        self.journals = self
            .keys
            .journals(journal.kvs.into_iter().map(|kv| (kv.key, kv.value)))
            .into_iter()
            .collect();
        for (journal, parts) in &self.journals {
            let Some((_, count)) = parts.iter().find(|(part, _)| part == "commit") else {
                continue;
            };
            for w in self.keys.journal_writes(journal, count, parts)? {
                match w.value {
                    Some(value) => records.insert(w.key, value),
                    None => records.remove(&w.key),
                };
            }
        }
        let loaded = self
            .keys
            .decode(records.iter().map(|(k, v)| (k.as_slice(), v.as_slice())))?;
        self.revision = revision;
        Ok((loaded, revision))
    }

    pub(crate) async fn next(&mut self) -> Result<(Vec<Commit>, i64), StoreError> {
        let watch = match &mut self.watch {
            Some(watch) => watch,
            None => {
                let from = self.revision.checked_add(1).ok_or_else(|| {
                    StoreError::Unusable(format!("revision {} is the last one", self.revision))
                })?;
                self.watch.insert(
                    self.client
                        .watch_key(self.keys.all().as_bytes(), true, from)
                        .await?,
                )
            }
        };
        let (events, revision) = watch.next_message().await?;
        let mut commits: Vec<(i64, Commit)> = Vec::new();
        for event in events {
            let Some(kv) = event.kv else {
                continue;
            };
            if commits.last().map(|(r, _)| *r) != Some(kv.mod_revision) {
                commits.push((kv.mod_revision, Commit::default()));
            }
            let put = event.r#type == EventType::Put as i32;
            if let Some((_, commit)) = commits.last_mut() {
                self.change(&kv.key, put.then_some(kv.value), commit)?;
            }
        }
        let last = commits.last().map_or(revision, |(r, _)| *r);
        self.revision = self.revision.max(revision).max(last);
        let commits = commits
            .into_iter()
            .map(|(_, c)| c)
            .filter(|c| !c.changes.is_empty() || !c.corrupt.is_empty())
            .collect();
        Ok((commits, self.revision))
    }

    /// Adds to `commit` what the put (`Some` value) or deletion of `key` changes.
    fn change(
        &mut self,
        key: &[u8],
        value: Option<Vec<u8>>,
        commit: &mut Commit,
    ) -> Result<(), StoreError> {
        let key = String::from_utf8_lossy(key).into_owned();
        let (sources, runs, journal) = (self.keys.sources(), self.keys.runs(), self.keys.journal());
        if let Some(name) = key.strip_prefix(&sources) {
            let Some(source) = name
                .split_once('/')
                .map(|(namespace, name)| SourceKey::new(namespace, name))
            else {
                tracing::warn!(key, "follower: a source key without a namespace; ignored");
                return Ok(());
            };
            match value.map(|v| format::decode_source(name, &v)) {
                Some(Ok(record)) => commit.changes.push(Mirrored::PutSource(Box::new(record))),
                Some(Err(e)) => {
                    commit.changes.push(Mirrored::RemoveSource(source));
                    commit.corrupt.push(Quarantined::source(name, &e));
                }
                None => commit.changes.push(Mirrored::RemoveSource(source)),
            }
        } else if let Some(name) = key.strip_prefix(&runs) {
            let id = name
                .strip_prefix("run-")
                .and_then(|n| n.parse::<u64>().ok())
                .map(RunId);
            match value.map(|v| format::decode_run(name, &v)) {
                Some(Ok(run)) => commit.changes.push(Mirrored::PutRun(Box::new(run))),
                Some(Err(e)) => {
                    if let Some(id) = id {
                        // Its number stays taken, as a restore keeps it.
                        commit.changes.push(Mirrored::RemoveRun(id));
                        commit
                            .changes
                            .push(Mirrored::NextRun(id.0.saturating_add(1)));
                    }
                    commit.corrupt.push(Quarantined::run(name, &e));
                }
                None => commit.changes.extend(id.map(Mirrored::RemoveRun)),
            }
        } else if key == self.keys.next_run() {
            if let Some(value) = value {
                match self.keys.parse_next_run(&value) {
                    Ok(next) => commit.changes.push(Mirrored::NextRun(next)),
                    Err(e) => tracing::warn!(error = %e, "follower: ignored"),
                }
            }
        } else if let Some(rest) = key.strip_prefix(&journal) {
            let (seq, part) = rest.split_once('/').unwrap_or((rest, ""));
            let name = format!("{journal}{seq}/");
            match value {
                Some(value) => {
                    let parts = self.journals.entry(name.clone()).or_default();
                    parts.retain(|(p, _)| p != part);
                    parts.push((part.to_owned(), value.clone()));
                    if part == "commit" {
                        let writes = self.keys.journal_writes(&name, &value, parts)?;
                        for w in writes {
                            self.change(&w.key, w.value, commit)?;
                        }
                    }
                }
                None => {
                    if let Some(parts) = self.journals.get_mut(&name) {
                        parts.retain(|(p, _)| p != part);
                        if parts.is_empty() {
                            self.journals.remove(&name);
                        }
                    }
                }
            }
        }
        Ok(())
    }
}

impl Feed for EtcdFeed {
    fn snapshot(&mut self) -> FeedFuture<'_, (Loaded, i64)> {
        Box::pin(EtcdFeed::snapshot(self))
    }

    fn next(&mut self) -> FeedFuture<'_, (Vec<Commit>, i64)> {
        Box::pin(EtcdFeed::next(self))
    }

    fn nudge(&mut self) -> FeedFuture<'_, ()> {
        Box::pin(async move {
            if let Some(watch) = &self.watch {
                watch.request_progress().await?;
            }
            Ok(())
        })
    }
}
