//! What a seed saw: the trace of events (for the replay digest) and the observations the
//! invariants are checked against, all timed on the one virtual clock.

use std::{
    collections::{BTreeMap, BTreeSet},
    sync::{Arc, Mutex, MutexGuard, PoisonError},
    time::Duration,
};

use sha2::{Digest as _, Sha256};
use snapgate_proto::v1;

/// A copy's cut as the simulated cluster committed it.
#[derive(Clone, Debug)]
pub struct Cut {
    /// Which copy of the run, in the order the cluster cut them (not its uid: uids are random).
    pub object: String,
    /// The release value the copy was made for (`snapgate.io/copy-trigger`), empty if none.
    pub value: String,
    /// When it was cut, since the seed began.
    pub at: Duration,
}

/// One hold of an application: from quiesced to the start of its unquiesce.
#[derive(Clone, Debug)]
pub struct Hold {
    /// The application.
    pub app: String,
    /// The PVC it holds (`namespace/pvc`).
    pub pvc: String,
    /// When its quiesce returned.
    pub quiesced: Option<Duration>,
    /// When its unquiesce started.
    pub released: Option<Duration>,
    /// The longest it may last: the guard's hold limit plus its disconnect grace and a second.
    pub bound: Duration,
}

/// A source as the scheduler last acknowledged it.
#[derive(Clone, Debug, Default)]
pub struct Acked {
    /// The version of the last acknowledged write.
    pub version: u64,
    /// Deleted (acknowledged).
    pub deleted: bool,
}

/// Everything a seed observed.
#[derive(Default)]
pub struct Observed {
    /// Every event, `<virtual ms> <what>`: the replay digest is over this.
    pub trace: Vec<String>,
    /// Every copy cut, by run.
    pub cuts: BTreeMap<String, Vec<Cut>>,
    /// Uids of copies already cut (so a copy counts once), and the run's count of copies.
    pub cut_uids: BTreeSet<String>,
    /// Every hold, by the trigger value its guard sent.
    pub holds: BTreeMap<String, Hold>,
    /// Every run the scheduler showed, as last seen, by id.
    pub runs: BTreeMap<String, v1::Run>,
    /// When each run was last seen (a run of a deleted source is no longer listed).
    pub run_seen: BTreeMap<String, Duration>,
    /// When the runs were last read.
    pub last_poll: Duration,
    /// Sources as acknowledged, by `namespace/name`.
    pub acked: BTreeMap<String, Acked>,
    /// SyncNow requests acknowledged with a run started: (`namespace/name`, request id, run).
    pub acked_syncs: Vec<(String, String, String)>,
    /// Trigger values the applications' guards were told released their run.
    pub guard_copies: BTreeSet<String>,
}

/// The seed's record. Cheap to clone; clones share it.
#[derive(Clone, Default)]
pub struct Record {
    inner: Arc<Mutex<Observed>>,
    origin: Option<tokio::time::Instant>,
    verbose: bool,
}

impl Record {
    /// A record timing events from now.
    pub fn new(verbose: bool) -> Self {
        Self {
            inner: Arc::default(),
            origin: Some(tokio::time::Instant::now()),
            verbose,
        }
    }

    /// The virtual time since the seed began.
    pub fn now(&self) -> Duration {
        self.origin
            .map(|o| tokio::time::Instant::now().saturating_duration_since(o))
            .unwrap_or_default()
    }

    /// The observations.
    pub fn lock(&self) -> MutexGuard<'_, Observed> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Adds an event to the trace (and prints it when verbose).
    pub fn event(&self, what: impl AsRef<str>) {
        let line = format!("{:>10.3}s {}", self.now().as_secs_f64(), what.as_ref());
        if self.verbose {
            println!("{line}");
        }
        self.lock().trace.push(line);
    }

    /// The SHA-256 of the trace, hex.
    pub fn digest(&self) -> String {
        let mut hash = Sha256::new();
        for line in &self.lock().trace {
            hash.update(line.as_bytes());
            hash.update(b"\n");
        }
        hex::encode(hash.finalize())
    }
}
