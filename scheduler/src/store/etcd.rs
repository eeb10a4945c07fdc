//! The etcd store: the scheduler's records in etcd, every write fenced by the leader's tenure.
//!
//! # Keys
//!
//! ```text
//!   <prefix>/sources/<namespace>/<name>   format::encode_source's bytes
//!   <prefix>/runs/<run id>                format::encode_run's bytes
//!   <prefix>/meta/next_run                the run counter, a decimal u64
//!   <prefix>/leader                       the election key (snapgate_etcd::Elector)
//!   <prefix>/journal/<seq>/<i>            a redo journal's chunk i (JournalChunk), never a record
//!   <prefix>/journal/<seq>/commit         its commit marker: the number of chunks
//! ```
//!
//! Values are exactly the record format's bytes, so records and their migrations are shared
//! with redb; the store module's one `Decoder` decodes and quarantines for both.
//!
//! # Commits
//!
//! A batch is one etcd Txn: compare (when fenced) `create_revision(<prefix>/leader) ==
//! fence.revision`, then its puts and deletes and the put of `meta/next_run`. A failed compare
//! is [`StoreError::Deposed`] and writes nothing. A commit is acknowledged only once etcd
//! answered the txn, and etcd answers only after raft committed it to a quorum's logs: that is
//! the durability promise.
//!
//! A batch larger than one txn may carry (`max_txn_ops`, `max_request_bytes`: etcd's
//! `--max-txn-ops` and `--max-request-bytes`) stays atomic through a **redo journal**:
//!
//! 1. its writes, encoded, are put as chunks `journal/<seq>/<i>` (each a fenced txn);
//! 2. one fenced txn puts `journal/<seq>/commit`: **the commit point**;
//! 3. the writes are applied to their keys in fenced txns of bounded size;
//! 4. one fenced txn deletes the journal.
//!
//! [`Store::load`] (which a new leader calls before it acts, and the scheduler after a failed
//! commit) and [`EtcdStore::open`] first finish every journal with a marker (apply, then
//! delete) and delete every journal without one. So a crash before step 2 leaves nothing of the
//! batch once loaded, and a crash after it leaves all of it. A journal's writes only touch
//! `sources/`, `runs/` and `meta/`; one naming another key is refused, not applied.
//!
//! A leader deposed between a journal's commit point and its deletion gets
//! [`StoreError::Deposed`] although its batch is committed: the new leader's load applies it.
//!
//! Only `load` (and journal recovery) ranges over prefixes; a commit touches its own keys.
//! `load` reads in pages of 1,000 keys (each page one response, at most 64 MiB).
//!
//! # Threads
//!
//! [`Store`] is synchronous and is called from inside tokio runtimes (multi-thread, and
//! current-thread in tests), so the async client runs on a dedicated thread with its own
//! current-thread runtime: `load` and `commit` send it a job and wait for the reply on a
//! `std::sync::mpsc` channel. Dropping the store ends the thread (after its current job).

use std::{
    sync::mpsc as std_mpsc,
    thread::JoinHandle,
    time::{SystemTime, UNIX_EPOCH},
};

use prost::Message;
use snapgate_etcd::{
    Client, EtcdOptions, Fence,
    client::DEFAULT_PAGE,
    pb::etcdserverpb::{
        DeleteRangeRequest, PutRequest, RequestOp, TxnRequest, TxnResponse, request_op::Request,
    },
};
use tokio::sync::mpsc;

use super::{Batch, Decoder, Loaded, Store, StoreError, Write, format};

/// Limits of one etcd request, as the etcd cluster is configured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EtcdLimits {
    /// etcd's `--max-txn-ops` (default 128): the most operations one txn may carry.
    pub max_txn_ops: usize,
    /// The most bytes one txn request may encode to: etcd's `--max-request-bytes` (default
    /// 1.5 MiB) minus headroom for etcd's own wrapping of the request.
    pub max_request_bytes: usize,
}

impl Default for EtcdLimits {
    fn default() -> Self {
        Self {
            max_txn_ops: 128,
            // 1.5 MiB less 64 KiB for etcd's raft request header around the txn.
            max_request_bytes: 1536 * 1024 - 64 * 1024,
        }
    }
}

/// Journal chunks per range page: each is up to `max_request_bytes`, so a page stays far under
/// the client's response limit.
const JOURNAL_PAGE: i64 = 16;

/// Where a journalled commit may be stopped, to test its crash points.
#[cfg(test)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Step {
    /// After the chunks, before the commit marker.
    Chunks,
    /// After the commit marker, before the writes are applied.
    Marker,
    /// After the writes are applied, before the journal is deleted.
    Applied,
}

/// A journal chunk: some of a batch's writes, in order.
#[derive(Clone, PartialEq, prost::Message)]
struct JournalChunk {
    #[prost(message, repeated, tag = "1")]
    writes: Vec<JournalWrite>,
}

/// One write of a journal: a put of `value` under `key`, or its deletion when `value` is absent.
#[derive(Clone, PartialEq, prost::Message)]
struct JournalWrite {
    #[prost(bytes = "vec", tag = "1")]
    key: Vec<u8>,
    #[prost(bytes = "vec", optional, tag = "2")]
    value: Option<Vec<u8>>,
}

impl JournalWrite {
    fn op(&self) -> RequestOp {
        let request = match &self.value {
            Some(value) => Request::RequestPut(PutRequest {
                key: self.key.clone(),
                value: value.clone(),
                ..Default::default()
            }),
            None => Request::RequestDeleteRange(DeleteRangeRequest {
                key: self.key.clone(),
                ..Default::default()
            }),
        };
        RequestOp {
            request: Some(request),
        }
    }
}

/// What one item adds to its enclosing message: tag, length, then the item.
fn framed_len(len: usize) -> usize {
    1usize
        .saturating_add(prost::length_delimiter_len(len))
        .saturating_add(len)
}

/// Splits `ops` into consecutive groups that each fit one txn with `compare_len` bytes of
/// compares: at most `limits.max_txn_ops` ops and `limits.max_request_bytes` bytes. An op that
/// cannot fit alone is [`StoreError::TooLarge`].
fn txn_groups(
    ops: &[JournalWrite],
    compare_len: usize,
    limits: EtcdLimits,
) -> Result<Vec<std::ops::Range<usize>>, StoreError> {
    let max_ops = limits.max_txn_ops.max(1);
    let mut groups = Vec::new();
    let mut start = 0;
    let mut bytes = compare_len;
    for (i, w) in ops.iter().enumerate() {
        let len = framed_len(w.op().encoded_len());
        let alone = compare_len.saturating_add(len);
        if alone > limits.max_request_bytes {
            return Err(StoreError::TooLarge {
                key: String::from_utf8_lossy(&w.key).into_owned(),
                bytes: alone,
                limit: limits.max_request_bytes,
            });
        }
        let full = i.saturating_sub(start) >= max_ops
            || bytes.saturating_add(len) > limits.max_request_bytes;
        if full {
            groups.push(start..i);
            start = i;
            bytes = compare_len;
        }
        bytes = bytes.saturating_add(len);
    }
    if start < ops.len() {
        groups.push(start..ops.len());
    }
    Ok(groups)
}

/// Splits `writes` into journal chunks whose put (key of `key_len` bytes, compares of
/// `compare_len`) fits one request.
fn journal_chunks(
    writes: Vec<JournalWrite>,
    key_len: usize,
    compare_len: usize,
    limits: EtcdLimits,
) -> Result<Vec<JournalChunk>, StoreError> {
    // A put op around the chunk: key, value framing, op framing (generous).
    let overhead = compare_len.saturating_add(key_len).saturating_add(64);
    let budget = limits.max_request_bytes.saturating_sub(overhead);
    let mut chunks = Vec::new();
    let mut current = JournalChunk::default();
    let mut bytes = 0usize;
    for w in writes {
        let len = framed_len(w.encoded_len());
        if len > budget {
            return Err(StoreError::TooLarge {
                key: String::from_utf8_lossy(&w.key).into_owned(),
                bytes: len.saturating_add(overhead),
                limit: limits.max_request_bytes,
            });
        }
        if bytes.saturating_add(len) > budget {
            chunks.push(std::mem::take(&mut current));
            bytes = 0;
        }
        bytes = bytes.saturating_add(len);
        current.writes.push(w);
    }
    if !current.writes.is_empty() {
        chunks.push(current);
    }
    Ok(chunks)
}

enum Job {
    Load(std_mpsc::SyncSender<Result<Loaded, StoreError>>),
    Commit {
        batch: Batch,
        #[cfg(test)]
        stop: Option<Step>,
        reply: std_mpsc::SyncSender<Result<(), StoreError>>,
    },
}

/// The etcd store (see the module docs).
pub struct EtcdStore {
    jobs: Option<mpsc::UnboundedSender<Job>>,
    thread: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for EtcdStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdStore").finish_non_exhaustive()
    }
}

impl EtcdStore {
    /// Connects to etcd, finishes or discards any redo journal left by a crash, and starts the
    /// store's client thread. `fence`: the leadership every write is guarded by; `None` only
    /// for an admin tool (export, import) that runs while no scheduler leads.
    pub fn open(opts: &EtcdOptions, fence: Option<Fence>) -> Result<Self, StoreError> {
        Self::open_with(opts, fence, EtcdLimits::default())
    }

    /// [`EtcdStore::open`] for an etcd with other request limits.
    pub fn open_with(
        opts: &EtcdOptions,
        fence: Option<Fence>,
        limits: EtcdLimits,
    ) -> Result<Self, StoreError> {
        let (jobs, mut rx) = mpsc::unbounded_channel::<Job>();
        let (ready_tx, ready_rx) = std_mpsc::sync_channel::<Result<(), StoreError>>(1);
        let opts = opts.clone();
        let thread = std::thread::Builder::new()
            .name("etcd-store".into())
            .spawn(move || {
                let rt = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(rt) => rt,
                    Err(e) => {
                        let _ = ready_tx.send(Err(StoreError::Stopped(format!(
                            "building its runtime: {e}"
                        ))));
                        return;
                    }
                };
                rt.block_on(async move {
                    let mut inner = match Inner::open(&opts, fence, limits).await {
                        Ok(inner) => inner,
                        Err(e) => {
                            let _ = ready_tx.send(Err(e));
                            return;
                        }
                    };
                    let _ = ready_tx.send(Ok(()));
                    while let Some(job) = rx.recv().await {
                        match job {
                            Job::Load(reply) => {
                                let _ = reply.send(inner.load().await);
                            }
                            Job::Commit {
                                batch,
                                #[cfg(test)]
                                stop,
                                reply,
                            } => {
                                #[cfg(not(test))]
                                let stop = None;
                                let _ = reply.send(inner.commit(batch, stop).await);
                            }
                        }
                    }
                });
            })
            .map_err(|e| StoreError::Stopped(format!("starting its thread: {e}")))?;
        let store = Self {
            jobs: Some(jobs),
            thread: Some(thread),
        };
        match ready_rx.recv() {
            Ok(Ok(())) => Ok(store),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(StoreError::Stopped("it ended while opening".into())),
        }
    }

    fn send(&self, job: Job) -> Result<(), StoreError> {
        self.jobs
            .as_ref()
            .and_then(|j| j.send(job).ok())
            .ok_or_else(|| StoreError::Stopped("it took no more jobs".into()))
    }

    #[cfg(test)]
    fn commit_until(&mut self, batch: Batch, stop: Option<Step>) -> Result<(), StoreError> {
        let (reply, rx) = std_mpsc::sync_channel(1);
        self.send(Job::Commit { batch, stop, reply })?;
        rx.recv()
            .map_err(|_| StoreError::Stopped("it dropped a commit".into()))?
    }
}

impl Store for EtcdStore {
    fn load(&self) -> Result<Loaded, StoreError> {
        let (reply, rx) = std_mpsc::sync_channel(1);
        self.send(Job::Load(reply))?;
        rx.recv()
            .map_err(|_| StoreError::Stopped("it dropped a load".into()))?
    }

    fn commit(&mut self, batch: Batch) -> Result<(), StoreError> {
        let (reply, rx) = std_mpsc::sync_channel(1);
        self.send(Job::Commit {
            batch,
            #[cfg(test)]
            stop: None,
            reply,
        })?;
        rx.recv()
            .map_err(|_| StoreError::Stopped("it dropped a commit".into()))?
    }
}

impl Drop for EtcdStore {
    fn drop(&mut self) {
        // Closing the job channel ends the thread's loop once its current job is answered.
        self.jobs.take();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// The store's keys under `<prefix>` (see the module's docs).
#[derive(Clone, Debug)]
pub(crate) struct Keys {
    /// `<prefix>` without a trailing `/`.
    prefix: String,
}

impl Keys {
    pub(crate) fn new(opts: &EtcdOptions) -> Self {
        Self {
            prefix: opts.key_prefix().to_owned(),
        }
    }

    /// `<prefix>/`: every key of the store.
    pub(crate) fn all(&self) -> String {
        format!("{}/", self.prefix)
    }

    pub(crate) fn sources(&self) -> String {
        format!("{}/sources/", self.prefix)
    }

    pub(crate) fn runs(&self) -> String {
        format!("{}/runs/", self.prefix)
    }

    pub(crate) fn meta(&self) -> String {
        format!("{}/meta/", self.prefix)
    }

    pub(crate) fn next_run(&self) -> String {
        format!("{}/meta/next_run", self.prefix)
    }

    pub(crate) fn journal(&self) -> String {
        format!("{}/journal/", self.prefix)
    }

    /// The value of `meta/next_run`, checked.
    fn parse_next_run(&self, value: &[u8]) -> Result<u64, StoreError> {
        std::str::from_utf8(value)
            .ok()
            .and_then(|v| v.parse::<u64>().ok())
            .ok_or_else(|| {
                StoreError::Unusable(format!(
                    "{} is {:?}, not a decimal u64",
                    self.next_run(),
                    String::from_utf8_lossy(value)
                ))
            })
    }

    /// Decodes record keys and values (`sources/`, `runs/`, `meta/`; others are skipped) into
    /// a load, quarantining what does not decode.
    fn decode<'a>(
        &self,
        kvs: impl IntoIterator<Item = (&'a [u8], &'a [u8])>,
    ) -> Result<Loaded, StoreError> {
        let (sources, runs, next_run_key) = (self.sources(), self.runs(), self.next_run());
        let mut decoder = Decoder::new();
        let mut next_run = None;
        for (key, value) in kvs {
            let key = String::from_utf8_lossy(key);
            if let Some(name) = key.strip_prefix(&sources) {
                decoder.source(name, value);
            } else if let Some(id) = key.strip_prefix(&runs) {
                decoder.run(id, value);
            } else if key == next_run_key {
                next_run = Some(self.parse_next_run(value)?);
            }
        }
        Ok(decoder.finish(next_run))
    }

    /// The journals among `kvs` (keys under `journal/`), by journal prefix `journal/<seq>/`,
    /// oldest first, each with its parts.
    fn journals(
        &self,
        kvs: impl IntoIterator<Item = (Vec<u8>, Vec<u8>)>,
    ) -> Vec<(String, JournalParts)> {
        let prefix = self.journal();
        // Keys sort as <seq>/<i>... then <seq>/commit: group them by sequence.
        let mut journals: Vec<(String, JournalParts)> = Vec::new();
        for (key, value) in kvs {
            let key = String::from_utf8_lossy(&key).into_owned();
            let Some(rest) = key.strip_prefix(&prefix) else {
                continue;
            };
            let (seq, part) = rest.split_once('/').unwrap_or((rest, ""));
            let journal = format!("{prefix}{seq}/");
            match journals.last_mut() {
                Some((j, parts)) if *j == journal => parts.push((part.to_owned(), value)),
                _ => journals.push((journal, vec![(part.to_owned(), value)])),
            }
        }
        journals
    }

    /// A committed journal's writes, checked: every chunk its marker counts, each decoding, each
    /// write to a record key.
    fn journal_writes(
        &self,
        journal: &str,
        count: &[u8],
        parts: &[(String, Vec<u8>)],
    ) -> Result<Vec<JournalWrite>, StoreError> {
        let unusable = |what: String| StoreError::Unusable(format!("journal {journal}: {what}"));
        let count = std::str::from_utf8(count)
            .ok()
            .and_then(|c| c.parse::<usize>().ok())
            .ok_or_else(|| unusable("its commit marker is not a chunk count".into()))?;
        let allowed = [self.sources(), self.runs(), self.meta()];
        let mut writes = Vec::new();
        for i in 0..count {
            let name = format!("{i:08}");
            let (_, bytes) = parts
                .iter()
                .find(|(part, _)| *part == name)
                .ok_or_else(|| unusable(format!("chunk {i} of {count} is missing")))?;
            let chunk = JournalChunk::decode(bytes.as_slice())
                .map_err(|e| unusable(format!("chunk {i} does not decode: {e}")))?;
            for w in chunk.writes {
                if !allowed.iter().any(|p| w.key.starts_with(p.as_bytes())) {
                    return Err(unusable(format!(
                        "chunk {i} writes {:?}, which is no record key",
                        String::from_utf8_lossy(&w.key)
                    )));
                }
                writes.push(w);
            }
        }
        Ok(writes)
    }
}

/// The store's state on its thread.
struct Inner {
    client: Client,
    keys: Keys,
    fence: Option<Fence>,
    limits: EtcdLimits,
    /// A journalled commit did not finish: journals are recovered before the next commit.
    unfinished_journal: bool,
    /// The last journal sequence used (sequences are the wall clock's nanoseconds, raised).
    last_seq: u128,
}

#[cfg(not(test))]
type Step = std::convert::Infallible;

impl Inner {
    async fn open(
        opts: &EtcdOptions,
        fence: Option<Fence>,
        limits: EtcdLimits,
    ) -> Result<Self, StoreError> {
        let client = Client::new(opts)?;
        let mut inner = Self {
            client,
            keys: Keys::new(opts),
            fence,
            limits,
            unfinished_journal: false,
            last_seq: 0,
        };
        inner.recover_journals().await?;
        Ok(inner)
    }

    fn compares(&self) -> Vec<snapgate_etcd::pb::etcdserverpb::Compare> {
        self.fence.iter().map(Fence::compare).collect()
    }

    fn compare_len(&self) -> usize {
        self.compares()
            .iter()
            .map(|c| framed_len(c.encoded_len()))
            .fold(0, usize::saturating_add)
    }

    /// One txn of `ops`, guarded by the fence: [`StoreError::Deposed`] when it no longer holds.
    async fn fenced_txn(&self, ops: Vec<RequestOp>) -> Result<TxnResponse, StoreError> {
        let resp = self
            .client
            .txn(TxnRequest {
                compare: self.compares(),
                success: ops,
                failure: vec![],
            })
            .await?;
        if !resp.succeeded {
            return Err(StoreError::Deposed);
        }
        Ok(resp)
    }

    async fn load(&mut self) -> Result<Loaded, StoreError> {
        self.recover_journals().await?;
        let (records, _) = read_records(&self.client, &self.keys).await?;
        self.keys.decode(
            records
                .iter()
                .map(|kv| (kv.key.as_slice(), kv.value.as_slice())),
        )
    }

    /// The batch's writes as etcd puts and deletes, each key once, the counter last.
    fn writes(&self, mut batch: Batch) -> Vec<JournalWrite> {
        // etcd refuses a txn that writes one key twice; coalescing leaves the same store.
        batch.coalesce();
        let mut out = Vec::with_capacity(batch.writes.len().saturating_add(1));
        for w in batch.writes {
            let (key, value) = match w {
                Write::PutSource(r) => (
                    format!("{}{}", self.keys.sources(), r.source.key),
                    Some(format::encode_source(&r)),
                ),
                Write::RemoveSource(k) => (format!("{}{k}", self.keys.sources()), None),
                Write::PutRun(r) => (
                    format!("{}{}", self.keys.runs(), r.id),
                    Some(format::encode_run(&r)),
                ),
                Write::RemoveRun(id) => (format!("{}{id}", self.keys.runs()), None),
            };
            out.push(JournalWrite {
                key: key.into_bytes(),
                value,
            });
        }
        out.push(JournalWrite {
            key: self.keys.next_run().into_bytes(),
            value: Some(batch.next_run.to_string().into_bytes()),
        });
        out
    }

    async fn commit(&mut self, batch: Batch, stop: Option<Step>) -> Result<(), StoreError> {
        if self.unfinished_journal {
            self.recover_journals().await?;
        }
        let writes = self.writes(batch);
        let groups = txn_groups(&writes, self.compare_len(), self.limits)?;
        if let [one] = groups.as_slice()
            && one.len() == writes.len()
        {
            self.fenced_txn(writes.iter().map(JournalWrite::op).collect())
                .await?;
            return Ok(());
        }
        self.unfinished_journal = true;
        self.commit_journalled(writes, stop).await?;
        self.unfinished_journal = false;
        Ok(())
    }

    /// The next journal's key prefix, `<prefix>/journal/<seq>/`: the wall clock in nanoseconds
    /// (zero-padded, so journals sort by age), raised past the last one this store used.
    fn next_journal(&mut self) -> String {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        self.last_seq = now.max(self.last_seq.saturating_add(1));
        format!("{}{:020}/", self.keys.journal(), self.last_seq)
    }

    #[cfg_attr(not(test), allow(unused_variables))]
    async fn commit_journalled(
        &mut self,
        writes: Vec<JournalWrite>,
        stop: Option<Step>,
    ) -> Result<(), StoreError> {
        let journal = self.next_journal();
        let chunk_key = |i: usize| format!("{journal}{i:08}");
        let compare_len = self.compare_len();
        let apply = writes.clone();
        let chunks = journal_chunks(writes, chunk_key(0).len(), compare_len, self.limits)?;
        let count = chunks.len();
        // 1. The chunks.
        for (i, chunk) in chunks.into_iter().enumerate() {
            self.fenced_txn(vec![put_op(chunk_key(i), chunk.encode_to_vec())])
                .await?;
        }
        #[cfg(test)]
        if stop == Some(Step::Chunks) {
            return Err(StoreError::Injected);
        }
        // 2. The commit point.
        self.fenced_txn(vec![put_op(
            format!("{journal}commit"),
            count.to_string().into_bytes(),
        )])
        .await?;
        #[cfg(test)]
        if stop == Some(Step::Marker) {
            return Err(StoreError::Injected);
        }
        // 3. The writes, to their keys.
        self.apply(&apply).await?;
        #[cfg(test)]
        if stop == Some(Step::Applied) {
            return Err(StoreError::Injected);
        }
        // 4. The journal, gone.
        self.delete_journal(&journal).await
    }

    async fn apply(&self, writes: &[JournalWrite]) -> Result<(), StoreError> {
        for group in txn_groups(writes, self.compare_len(), self.limits)? {
            let ops = writes
                .get(group)
                .unwrap_or_default()
                .iter()
                .map(JournalWrite::op)
                .collect();
            self.fenced_txn(ops).await?;
        }
        Ok(())
    }

    async fn delete_journal(&self, journal: &str) -> Result<(), StoreError> {
        let key = journal.as_bytes().to_vec();
        let range_end = snapgate_etcd::prefix_end(&key);
        self.fenced_txn(vec![RequestOp {
            request: Some(Request::RequestDeleteRange(DeleteRangeRequest {
                key,
                range_end,
                ..Default::default()
            })),
        }])
        .await
        .map(drop)
    }

    /// Finishes every journal with a commit marker (applies its writes, then deletes it) and
    /// deletes every journal without one, oldest first.
    async fn recover_journals(&mut self) -> Result<(), StoreError> {
        let prefix = self.keys.journal();
        let range = self
            .client
            .range_prefix(prefix.as_bytes(), JOURNAL_PAGE)
            .await?;
        let journals = self
            .keys
            .journals(range.kvs.into_iter().map(|kv| (kv.key, kv.value)));
        for (journal, parts) in journals {
            let marker = parts.iter().find(|(part, _)| part == "commit");
            if let Some((_, count)) = marker {
                let writes = self.keys.journal_writes(&journal, count, &parts)?;
                tracing::warn!(
                    journal,
                    writes = writes.len(),
                    "finishing a committed journal"
                );
                self.apply(&writes).await?;
            } else {
                tracing::warn!(journal, "discarding a journal that was never committed");
            }
            self.delete_journal(&journal).await?;
        }
        self.unfinished_journal = false;
        Ok(())
    }
}

/// Every record key (`sources/`, `runs/`, `meta/`) and its value at one revision (one view),
/// and that revision.
async fn read_records(
    client: &Client,
    keys: &Keys,
) -> Result<(Vec<snapgate_etcd::pb::mvccpb::KeyValue>, i64), StoreError> {
    let sources = client
        .range_prefix(keys.sources().as_bytes(), DEFAULT_PAGE)
        .await?;
    let revision = sources.revision;
    let runs = client
        .range_prefix_at(keys.runs().as_bytes(), DEFAULT_PAGE, revision)
        .await?;
    let meta = client
        .range_prefix_at(keys.meta().as_bytes(), DEFAULT_PAGE, revision)
        .await?;
    let mut records = sources.kvs;
    records.extend(runs.kvs);
    records.extend(meta.kvs);
    Ok((records, revision))
}

/// A journal's keys: (the part after `<seq>/`, the value).
type JournalParts = Vec<(String, Vec<u8>)>;

fn put_op(key: String, value: Vec<u8>) -> RequestOp {
    RequestOp {
        request: Some(Request::RequestPut(PutRequest {
            key: key.into_bytes(),
            value,
            ..Default::default()
        })),
    }
}

mod feed;
#[cfg(test)]
mod tests;

pub use feed::EtcdFeed;
