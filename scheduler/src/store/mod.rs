//! Durable state behind one narrow trait.
//!
//! The scheduler writes every change of one request as one [`Batch`], committed (and synced)
//! before the request is answered. [`RedbStore`] is the embedded store; [`etcd::EtcdStore`], for
//! high availability (schedulers on etcd, the leader's writes fenced), implements the same trait. [`FaultyStore`] wraps any store to fail commits
//! on demand, for fault tests.
//!
//! The core's domain records are encoded and decoded here, at the store's edge, in a versioned
//! record format ([`mod@format`]) that migrates what earlier versions wrote.

pub mod dump;
pub mod etcd;
pub mod format;

use std::{
    path::Path,
    sync::{
        Arc,
        atomic::{AtomicU32, Ordering},
    },
};

use redb::{ReadableDatabase, ReadableTable, TableDefinition};
use snapgate_scheduler_core::{Quarantined, SourceRecord, model::Run};

/// Why the store could not load or commit.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The embedded database failed.
    #[error("embedded store: {0}")]
    Redb(#[from] redb::Error),
    /// An injected fault (tests).
    #[error("injected store fault")]
    Injected,
    /// etcd could not be reached or refused a call.
    #[error("etcd store: {0}")]
    Etcd(#[from] snapgate_etcd::EtcdError),
    /// The etcd store holds data it cannot use (named in the message): a redo journal or the
    /// run counter that does not decode.
    #[error("etcd store: {0}")]
    Unusable(String),
    /// This replica no longer leads: the election key's create_revision is not its fence, so
    /// etcd refused the write. A batch refused before its redo journal's commit point is not
    /// written; one refused after it is committed and the next leader's load applies it (see
    /// [`etcd`]). Either way the deposed replica must stop.
    #[error(
        "deposed: the election key no longer carries this leader's fence; etcd refused the write"
    )]
    Deposed,
    /// One record is larger than one etcd request may carry.
    #[error("record {key} is {bytes} bytes encoded; one etcd request carries at most {limit}")]
    TooLarge {
        /// The record's etcd key.
        key: String,
        /// Its encoded size with the request's framing.
        bytes: usize,
        /// The most one request may carry (`max_request_bytes`).
        limit: usize,
    },
    /// The etcd store's thread is gone (it could not start, or panicked).
    #[error("etcd store: its client thread is gone: {0}")]
    Stopped(String),
}

/// Everything the store holds, as loaded at start.
#[derive(Debug, Default)]
pub struct Loaded {
    /// Every source record.
    pub sources: Vec<SourceRecord>,
    /// Every run kept (in flight and recent history).
    pub runs: Vec<Run>,
    /// The next run number.
    pub next_run: u64,
    /// Records that do not decode: left in the store, not loaded.
    pub corrupt: Vec<Quarantined>,
}

/// One write of a batch.
#[derive(Debug, Clone)]
pub enum Write {
    /// Store a source under `namespace/name`.
    PutSource(Box<SourceRecord>),
    /// Remove the source `namespace/name`.
    RemoveSource(String),
    /// Store a run under its id.
    PutRun(Box<Run>),
    /// Remove a run.
    RemoveRun(String),
}

/// The writes of one request, applied atomically.
#[derive(Debug, Default, Clone)]
pub struct Batch {
    /// In order; a later write to the same key wins.
    pub writes: Vec<Write>,
    /// The run counter after the request.
    pub next_run: u64,
}

impl Write {
    /// What the write replaces: `(false, namespace/name)` for a source, `(true, run id)` for
    /// a run.
    fn key(&self) -> (bool, String) {
        match self {
            Write::PutSource(r) => (false, r.source.key.to_string()),
            Write::RemoveSource(k) => (false, k.clone()),
            Write::PutRun(r) => (true, r.id.to_string()),
            Write::RemoveRun(id) => (true, id.clone()),
        }
    }
}

impl Batch {
    /// Drops every write that a later one to the same key replaces (a run is written at each
    /// phase it passes in one step, a source at each of its status changes): what the batch
    /// leaves in the store is the same, written once per key.
    pub fn coalesce(&mut self) {
        let mut seen = std::collections::HashSet::new();
        let mut kept: Vec<Write> = std::mem::take(&mut self.writes)
            .into_iter()
            .rev()
            .filter(|w| seen.insert(w.key()))
            .collect();
        kept.reverse();
        self.writes = kept;
    }
}

/// A durable store of sources and runs.
pub trait Store: Send + 'static {
    /// Reads everything.
    fn load(&self) -> Result<Loaded, StoreError>;
    /// Applies a batch atomically and durably.
    fn commit(&mut self, batch: Batch) -> Result<(), StoreError>;
}

/// Decodes stored records into a [`Loaded`], quarantining what does not decode: the one path
/// every store loads through, so redb and etcd treat a damaged or future record alike.
pub(crate) struct Decoder {
    loaded: Loaded,
    /// The lowest next run number that reuses no stored run's number, corrupt ones included.
    next_run_floor: u64,
}

impl Decoder {
    /// An empty load.
    pub(crate) fn new() -> Self {
        Self {
            loaded: Loaded::default(),
            next_run_floor: 1,
        }
    }

    /// A source record stored under `namespace/name`. A record that does not decode is
    /// quarantined, not fatal: everything else loads.
    pub(crate) fn source(&mut self, key: &str, bytes: &[u8]) {
        match format::decode_source(key, bytes) {
            Ok(record) => self.loaded.sources.push(record),
            Err(e) => self.loaded.corrupt.push(Quarantined::source(key, &e)),
        }
    }

    /// A run record stored under its id.
    pub(crate) fn run(&mut self, key: &str, bytes: &[u8]) {
        match format::decode_run(key, bytes) {
            Ok(run) => self.loaded.runs.push(run),
            Err(e) => {
                // Its number stays taken, so no new run overwrites the record.
                if let Some(n) = key.strip_prefix("run-").and_then(|n| n.parse::<u64>().ok()) {
                    self.next_run_floor = self.next_run_floor.max(n.saturating_add(1));
                }
                self.loaded.corrupt.push(Quarantined::run(key, &e));
            }
        }
    }

    /// The load, with the stored run counter (`None`: never stored) raised past every stored
    /// run's number.
    pub(crate) fn finish(mut self, next_run: Option<u64>) -> Loaded {
        self.loaded.next_run = next_run.unwrap_or(1).max(self.next_run_floor);
        self.loaded
    }
}

const SOURCES: TableDefinition<'_, &str, &[u8]> = TableDefinition::new("sources");
const RUNS: TableDefinition<'_, &str, &[u8]> = TableDefinition::new("runs");
const META: TableDefinition<'_, &str, u64> = TableDefinition::new("meta");
const NEXT_RUN: &str = "next_run";

/// The most memory redb keeps as its page cache. The scheduler holds its whole state in
/// memory and reads the store only at start, so the cache serves writes (the pages on a
/// record's path) and a start's one pass; redb's default (1 GiB) would keep the whole file
/// read at start resident for the life of the process.
const CACHE_BYTES: usize = 32 * 1024 * 1024;

/// The embedded store: one redb file, `snapgate.redb`, in the data directory.
pub struct RedbStore {
    db: redb::Database,
}

impl RedbStore {
    /// Opens (or creates) the store in `dir`.
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        std::fs::create_dir_all(dir).map_err(|e| StoreError::Redb(e.into()))?;
        let db = redb::Database::builder()
            .set_cache_size(CACHE_BYTES)
            .create(dir.join("snapgate.redb"))
            .map_err(redb::Error::from)?;
        let tx = db.begin_write().map_err(redb::Error::from)?;
        {
            tx.open_table(SOURCES).map_err(redb::Error::from)?;
            tx.open_table(RUNS).map_err(redb::Error::from)?;
            tx.open_table(META).map_err(redb::Error::from)?;
        }
        tx.commit().map_err(redb::Error::from)?;
        Ok(Self { db })
    }
}

impl Store for RedbStore {
    fn load(&self) -> Result<Loaded, StoreError> {
        let tx = self.db.begin_read().map_err(redb::Error::from)?;
        let mut decoder = Decoder::new();
        let sources = tx.open_table(SOURCES).map_err(redb::Error::from)?;
        for row in sources.iter().map_err(redb::Error::from)? {
            let (k, v) = row.map_err(redb::Error::from)?;
            decoder.source(k.value(), v.value());
        }
        let runs = tx.open_table(RUNS).map_err(redb::Error::from)?;
        for row in runs.iter().map_err(redb::Error::from)? {
            let (k, v) = row.map_err(redb::Error::from)?;
            decoder.run(k.value(), v.value());
        }
        let meta = tx.open_table(META).map_err(redb::Error::from)?;
        let next_run = meta
            .get(NEXT_RUN)
            .map_err(redb::Error::from)?
            .map(|v| v.value());
        Ok(decoder.finish(next_run))
    }

    fn commit(&mut self, batch: Batch) -> Result<(), StoreError> {
        let tx = self.db.begin_write().map_err(redb::Error::from)?;
        {
            let mut sources = tx.open_table(SOURCES).map_err(redb::Error::from)?;
            let mut runs = tx.open_table(RUNS).map_err(redb::Error::from)?;
            let mut meta = tx.open_table(META).map_err(redb::Error::from)?;
            for w in batch.writes {
                match w {
                    Write::PutSource(r) => {
                        let key = r.source.key.to_string();
                        sources
                            .insert(key.as_str(), format::encode_source(&r).as_slice())
                            .map_err(redb::Error::from)?;
                    }
                    Write::RemoveSource(key) => {
                        sources.remove(key.as_str()).map_err(redb::Error::from)?;
                    }
                    Write::PutRun(r) => {
                        let key = r.id.to_string();
                        runs.insert(key.as_str(), format::encode_run(&r).as_slice())
                            .map_err(redb::Error::from)?;
                    }
                    Write::RemoveRun(id) => {
                        runs.remove(id.as_str()).map_err(redb::Error::from)?;
                    }
                }
            }
            meta.insert(NEXT_RUN, batch.next_run)
                .map_err(redb::Error::from)?;
        }
        // Durability::Immediate (the default): synced when commit returns.
        tx.commit().map_err(redb::Error::from)?;
        Ok(())
    }
}

/// The `(kind, key)` of every record a load quarantined, sorted (store tests).
#[cfg(test)]
pub(crate) fn quarantined(loaded: &Loaded) -> Vec<(&str, &str)> {
    let mut corrupt: Vec<(&str, &str)> = loaded
        .corrupt
        .iter()
        .map(|q| (q.kind, q.key.as_str()))
        .collect();
    corrupt.sort();
    corrupt
}

#[cfg(test)]
impl RedbStore {
    /// Writes raw bytes as a run record, as a damaged disk would have.
    pub(crate) fn put_raw_run(&self, key: &str, bytes: &[u8]) {
        let tx = self.db.begin_write().unwrap();
        tx.open_table(RUNS).unwrap().insert(key, bytes).unwrap();
        tx.commit().unwrap();
    }
}

/// Fails the next N commits of the wrapped store (tests and fault drills).
pub struct FaultyStore<S> {
    inner: S,
    fail_next: Arc<AtomicU32>,
}

impl<S: Store> FaultyStore<S> {
    /// Wraps `inner`; the returned handle sets how many of the next commits fail.
    pub fn new(inner: S) -> (Self, Arc<AtomicU32>) {
        let fail_next = Arc::new(AtomicU32::new(0));
        (
            Self {
                inner,
                fail_next: fail_next.clone(),
            },
            fail_next,
        )
    }
}

impl<S: Store> Store for FaultyStore<S> {
    fn load(&self) -> Result<Loaded, StoreError> {
        self.inner.load()
    }

    fn commit(&mut self, batch: Batch) -> Result<(), StoreError> {
        let failing = self
            .fail_next
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok();
        if failing {
            return Err(StoreError::Injected);
        }
        self.inner.commit(batch)
    }
}

#[cfg(test)]
mod tests {
    use prost::Message;

    use super::*;
    use crate::wire::testing::{full_record, full_run};

    fn record(ns: &str, name: &str) -> SourceRecord {
        let mut r = full_record();
        r.source.key = snapgate_scheduler_core::SourceKey::new(ns, name);
        r
    }

    /// Writes raw bytes under a key, as an earlier version (or a damaged disk) would have.
    fn put_raw(s: &RedbStore, table: TableDefinition<'_, &str, &[u8]>, key: &str, bytes: &[u8]) {
        let tx = s.db.begin_write().unwrap();
        tx.open_table(table).unwrap().insert(key, bytes).unwrap();
        tx.commit().unwrap();
    }

    #[test]
    fn a_committed_batch_is_there_after_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let run = full_run();
        {
            let mut s = RedbStore::open(dir.path()).unwrap();
            s.commit(Batch {
                writes: vec![
                    Write::PutSource(Box::new(record("a", "x"))),
                    Write::PutSource(Box::new(record("a", "y"))),
                    Write::PutRun(Box::new(run.clone())),
                    Write::RemoveSource("a/y".into()),
                ],
                next_run: 43,
            })
            .unwrap();
        }
        let s = RedbStore::open(dir.path()).unwrap();
        let loaded = s.load().unwrap();
        assert_eq!(loaded.sources, vec![record("a", "x")]);
        assert_eq!(loaded.runs, vec![run]);
        assert_eq!(loaded.next_run, 43);
        assert!(loaded.corrupt.is_empty());
    }

    /// Coalescing keeps the last write to each key, in order, and leaves the store as the
    /// whole batch would have.
    #[test]
    fn a_coalesced_batch_writes_each_key_once_and_leaves_the_same_store() {
        let mut run = full_run();
        let first = run.clone();
        run.generation += 1;
        let writes = || {
            vec![
                Write::PutSource(Box::new(record("a", "x"))),
                Write::PutRun(Box::new(first.clone())),
                Write::PutSource(Box::new(record("a", "y"))),
                Write::RemoveSource("a/x".into()),
                Write::PutRun(Box::new(run.clone())),
                Write::RemoveRun("run-9".into()),
                Write::PutSource(Box::new(record("a", "x"))),
            ]
        };
        let mut batch = Batch {
            writes: writes(),
            next_run: 10,
        };
        batch.coalesce();
        let keys: Vec<(bool, String)> = batch.writes.iter().map(Write::key).collect();
        let run_key = (true, run.id.to_string());
        assert_eq!(
            keys,
            vec![
                (false, "a/y".to_owned()),
                run_key,
                (true, "run-9".to_owned()),
                (false, "a/x".to_owned()),
            ]
        );
        let load = |writes: Vec<Write>| {
            let dir = tempfile::tempdir().unwrap();
            let mut s = RedbStore::open(dir.path()).unwrap();
            s.commit(Batch {
                writes,
                next_run: 10,
            })
            .unwrap();
            let l = s.load().unwrap();
            (l.sources, l.runs)
        };
        assert_eq!(load(batch.writes), load(writes()));
    }

    /// Records today's types cannot hold are left in the store and reported, and the rest
    /// loads; a run left out keeps its number.
    #[test]
    fn records_the_domain_cannot_hold_are_quarantined_and_the_rest_loads() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = RedbStore::open(dir.path()).unwrap();
        s.commit(Batch {
            writes: vec![
                Write::PutSource(Box::new(record("apps", "good"))),
                Write::PutRun(Box::new(full_run())),
            ],
            next_run: 43,
        })
        .unwrap();
        // A source record without its source.
        put_raw(
            &s,
            SOURCES,
            "apps/empty",
            &format::SourceRecordV1::default().encode_to_vec(),
        );
        // A source whose spec has no mover.
        let mut no_mover = format::source_message(&record("apps", "broken"));
        if let Some(spec) = no_mover.source.as_mut().and_then(|s| s.spec.as_mut()) {
            spec.restic = None;
            spec.rclone = None;
            spec.rsync = None;
            spec.rsync_tls = None;
        }
        put_raw(&s, SOURCES, "apps/broken", &no_mover.encode_to_vec());
        // A run under a key that is no run id.
        let mut odd = crate::wire::sources::run_to_wire(&full_run());
        odd.id = "not-a-run".into();
        put_raw(&s, RUNS, "not-a-run", &odd.encode_to_vec());
        // A run in a phase this version does not know.
        let mut future = crate::wire::sources::run_to_wire(&full_run());
        future.id = "run-901".into();
        future.phase = 99;
        put_raw(&s, RUNS, "run-901", &future.encode_to_vec());

        let loaded = s.load().unwrap();
        assert_eq!(loaded.sources, vec![record("apps", "good")]);
        assert_eq!(loaded.runs, vec![full_run()]);
        assert_eq!(
            quarantined(&loaded),
            [
                ("run", "not-a-run"),
                ("run", "run-901"),
                ("source", "apps/broken"),
                ("source", "apps/empty"),
            ]
        );
        for q in &loaded.corrupt {
            assert!(!q.reason.is_empty(), "{q:?} says why");
        }
        assert_eq!(loaded.next_run, 902, "no new run overwrites run-901");
    }

    #[test]
    fn a_run_record_that_does_not_decode_is_reported_and_keeps_its_number() {
        let dir = tempfile::tempdir().unwrap();
        let s = RedbStore::open(dir.path()).unwrap();
        let tx = s.db.begin_write().unwrap();
        tx.open_table(RUNS)
            .unwrap()
            .insert("run-9", b"\xff\xff not a run".as_slice())
            .unwrap();
        tx.commit().unwrap();
        let loaded = s.load().unwrap();
        assert!(loaded.runs.is_empty());
        assert_eq!(loaded.corrupt.len(), 1);
        assert_eq!(loaded.corrupt[0].key, "run-9");
        assert_eq!(loaded.next_run, 10, "no new run overwrites run-9");
    }

    #[test]
    fn an_injected_fault_fails_the_commit_and_writes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let (mut s, fail) = FaultyStore::new(RedbStore::open(dir.path()).unwrap());
        fail.store(1, Ordering::SeqCst);
        let batch = Batch {
            writes: vec![Write::PutSource(Box::new(record("a", "x")))],
            next_run: 2,
        };
        assert!(matches!(s.commit(batch.clone()), Err(StoreError::Injected)));
        assert!(s.load().unwrap().sources.is_empty());
        s.commit(batch).unwrap();
        assert_eq!(s.load().unwrap().sources.len(), 1);
    }
}
