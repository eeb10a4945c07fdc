//! A replica that does not lead serves reads from a copy of the leader's commits.
//!
//! The copy is a core restored from the store at one revision, then changed commit by commit
//! as the store's [`Feed`] reports them (`Scheduler::mirror`, by the rules a restore loads
//! by). It never ticks and never writes: it answers `GetSource`, `ListSources`, `ListRuns`,
//! `PreviewSchedule`, `ListQuarantined` and `GetCopyStatus` as the leader would have at that
//! revision, without the leader's word on agents (it holds no agent link, so a source's
//! `NoAgent` condition shows on the leader only). Every other call is refused with
//! `UNAVAILABLE` naming the leader, in the interceptor (see `replica::Gate`) and here again.
//!
//! A copy that has heard nothing from the store for [`STALE_AFTER`] (no commit and no answer
//! to its progress requests) is dropped and reads are refused until a new snapshot is loaded:
//! a follower never answers from a copy it cannot vouch for.

use std::{collections::HashSet, future::Future, pin::Pin, sync::Arc, time::Duration};

use futures::FutureExt as _;

use snapgate_proto::clock::Clock;
use snapgate_scheduler_core::{Mirrored, Quarantined, Scheduler};
use tokio::{
    sync::{mpsc, watch},
    time::Instant,
};
use tracing::{info, warn};

use crate::{
    driver::{self, Command, DriverError},
    metrics::Metrics,
    reads,
    replica::Gate,
    store::{Loaded, StoreError},
};

/// How often the feed asks the store for word of progress while no commit comes.
pub const PROGRESS_EVERY: Duration = Duration::from_secs(2);
/// How long a copy is trusted without word from the store.
pub const STALE_AFTER: Duration = Duration::from_secs(10);
/// How long the feed waits before starting over after an error.
const RETRY_AFTER: Duration = Duration::from_secs(1);

/// One commit of the leader, decoded.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Commit {
    /// The records it put or removed. A record that does not decode is a removal here (a
    /// restore would leave it out) and an entry in `corrupt`.
    pub changes: Vec<Mirrored>,
    /// Its records that do not decode.
    pub corrupt: Vec<Quarantined>,
}

/// A boxed future, as the feed's methods return.
pub type FeedFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T, StoreError>> + Send + 'a>>;

/// Where a follower reads the leader's commits: the shared store.
pub trait Feed: Send + 'static {
    /// The whole store at one revision, and that revision. Later calls to [`Feed::next`]
    /// report the commits after it.
    fn snapshot(&mut self) -> FeedFuture<'_, (Loaded, i64)>;
    /// The next commits, in order, and the revision they bring the copy to. Empty: word that
    /// nothing was committed up to that revision (an answer to [`Feed::nudge`]). Waits as long
    /// as nothing comes.
    fn next(&mut self) -> FeedFuture<'_, (Vec<Commit>, i64)>;
    /// Asks the store for word of progress, which the next [`Feed::next`] brings.
    fn nudge(&mut self) -> FeedFuture<'_, ()>;
}

/// What the feed's task reports.
enum News {
    /// A copy restored from a snapshot.
    Snapshot(Box<Copy>),
    Commits(Vec<Commit>, i64),
}

/// Reads the feed for ever: a snapshot, then its commits, nudging it when quiet; after an
/// error, after [`STALE_AFTER`] without word, or when `restart` is notified, a new snapshot.
/// Ends when the follower is gone.
async fn read_feed(
    mut feed: Box<dyn Feed>,
    news: mpsc::Sender<News>,
    restart: Arc<tokio::sync::Notify>,
) {
    loop {
        match feed.snapshot().await {
            Ok((loaded, revision)) => {
                // A whole store's restore takes seconds when large: off the runtime's workers.
                let Ok(copy) =
                    tokio::task::spawn_blocking(move || Copy::restore(loaded, revision)).await
                else {
                    warn!("follower: restoring the copy failed; retrying");
                    continue;
                };
                if news.send(News::Snapshot(Box::new(copy))).await.is_err() {
                    return;
                }
                // A restart asked for while this snapshot was read is answered by it.
                let _ = restart.notified().now_or_never();
            }
            Err(e) => {
                warn!(error = %e, "follower: reading the store failed; retrying");
                tokio::time::sleep(RETRY_AFTER).await;
                continue;
            }
        }
        let mut heard = Instant::now();
        loop {
            let next = tokio::select! {
                next = tokio::time::timeout(PROGRESS_EVERY, feed.next()) => next,
                () = restart.notified() => break,
            };
            let next = match next {
                Ok(next) => next,
                Err(_) if heard.elapsed() >= STALE_AFTER => {
                    warn!(after = ?STALE_AFTER, "follower: no word from the store's watch; loading a new snapshot");
                    break;
                }
                Err(_) => match feed.nudge().await {
                    Ok(()) => continue,
                    Err(e) => Err(e),
                },
            };
            match next {
                Ok((commits, revision)) => {
                    heard = Instant::now();
                    if news.send(News::Commits(commits, revision)).await.is_err() {
                        return;
                    }
                }
                Err(e) => {
                    warn!(error = %e, "follower: the store's watch failed; loading a new snapshot");
                    tokio::time::sleep(RETRY_AFTER).await;
                    break;
                }
            }
        }
    }
}

/// A follower's copy of the leader's state.
struct Copy {
    core: Scheduler,
    quarantined: Vec<Quarantined>,
    revision: i64,
}

impl Copy {
    fn restore(loaded: Loaded, revision: i64) -> Self {
        let (core, quarantined) = driver::rebuild(loaded);
        Self {
            core,
            quarantined,
            revision,
        }
    }

    fn apply(&mut self, commits: Vec<Commit>, revision: i64) {
        for commit in commits {
            let out = self.core.mirror(commit.changes);
            let cleared: HashSet<(&str, &str)> = out
                .cleared
                .iter()
                .map(|(k, key)| (*k, key.as_str()))
                .collect();
            self.quarantined
                .retain(|q| !cleared.contains(&(q.kind, q.key.as_str())));
            self.quarantined.extend(commit.corrupt);
            self.quarantined.extend(out.quarantined);
        }
        self.revision = self.revision.max(revision);
    }
}

/// What a follower needs besides its feed.
pub(crate) struct Following {
    pub gate: Gate,
    pub clock: Arc<dyn Clock>,
    pub metrics: Metrics,
    /// The leader as last observed, for refusals.
    pub leader: watch::Receiver<Option<String>>,
}

/// Serves `commands` as a follower until the channel closes (or the caller drops this, once
/// elected): reads from the copy the feed keeps, every other command refused.
pub(crate) async fn follow(
    feed: Option<Box<dyn Feed>>,
    commands: &mut mpsc::Receiver<Command>,
    f: Following,
) {
    let (news_tx, mut news) = mpsc::channel(16);
    let restart = Arc::new(tokio::sync::Notify::new());
    let _feed =
        feed.map(|feed| AbortOnDrop(tokio::spawn(read_feed(feed, news_tx, restart.clone()))));
    let mut copy: Option<Copy> = None;
    let mut heard = Instant::now();
    loop {
        let stale_at = heard.checked_add(STALE_AFTER).unwrap_or(heard);
        tokio::select! {
            cmd = commands.recv() => {
                let Some(cmd) = cmd else { return };
                serve(cmd, copy.as_ref(), &f);
            }
            Some(item) = news.recv() => {
                heard = Instant::now();
                match item {
                    News::Snapshot(c) => {
                        info!(revision = c.revision, quarantined = c.quarantined.len(), "follower: copy of the store loaded; serving reads");
                        copy = Some(*c);
                    }
                    News::Commits(commits, revision) => match &mut copy {
                        Some(c) => c.apply(commits, revision),
                        // Dropped as stale, and the feed went on: start it over.
                        None => restart.notify_one(),
                    },
                }
                let revision = copy.as_ref().map_or(0, |c| c.revision);
                f.metrics.follower_revision.set(revision);
                f.gate.set_reads(copy.is_some());
            }
            () = tokio::time::sleep_until(stale_at), if copy.is_some() => {
                warn!(after = ?STALE_AFTER, "follower: no word from the store; refusing reads until a new copy is loaded");
                copy = None;
                f.gate.set_reads(false);
                f.metrics.follower_revision.set(0);
                restart.notify_one();
            }
        }
    }
}

/// Answers one command as a follower.
fn serve(cmd: Command, copy: Option<&Copy>, f: &Following) {
    let not_leader = || DriverError::NotLeader(f.leader.borrow().clone());
    match (cmd, copy) {
        (Command::Read(read), Some(copy)) => reads::answer(
            &copy.core,
            read,
            &reads::Context {
                now: f.clock.now(),
                absence: &|_| None,
                quarantined: &copy.quarantined,
            },
        ),
        (cmd, _) => cmd.refuse(not_leader()),
    }
}

/// Aborts the feed's task when the follower ends.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use chrono::{DateTime, Utc};
    use snapgate_proto::clock::TokioClock;
    use snapgate_scheduler_core::{
        Effect, SourceKey, SourceRecord,
        model::{CopyMethod, MoverInput, Source, SpecInput},
    };
    use tokio::sync::oneshot;

    use super::*;
    use crate::reads::Read;

    /// A feed the test drives: each snapshot and each batch of commits is sent by the test;
    /// nudges are counted and, unless `silent`, answered with word of progress.
    struct StandIn {
        snapshots: mpsc::Receiver<(Loaded, i64)>,
        commits: mpsc::Receiver<(Vec<Commit>, i64)>,
        snapshots_taken: Arc<AtomicUsize>,
        silent: Arc<std::sync::atomic::AtomicBool>,
        progress: Option<i64>,
    }

    impl Feed for StandIn {
        fn snapshot(&mut self) -> FeedFuture<'_, (Loaded, i64)> {
            Box::pin(async move {
                let s = self.snapshots.recv().await;
                self.snapshots_taken.fetch_add(1, Ordering::SeqCst);
                s.ok_or(StoreError::Unusable("no more snapshots".into()))
            })
        }
        fn next(&mut self) -> FeedFuture<'_, (Vec<Commit>, i64)> {
            Box::pin(async move {
                if let Some(revision) = self.progress.take() {
                    return Ok((vec![], revision));
                }
                match self.commits.recv().await {
                    Some(c) => Ok(c),
                    None => std::future::pending().await,
                }
            })
        }
        fn nudge(&mut self) -> FeedFuture<'_, ()> {
            Box::pin(async move {
                if !self.silent.load(Ordering::SeqCst) {
                    self.progress = Some(0);
                }
                Ok(())
            })
        }
    }

    fn t0() -> DateTime<Utc> {
        DateTime::parse_from_rfc3339("2026-03-02T10:00:00Z")
            .unwrap()
            .with_timezone(&Utc)
    }

    /// The record the leader commits for a new source `name` on pvc `data`.
    fn record(name: &str) -> SourceRecord {
        let mut core = Scheduler::new();
        core.apply_source(
            SourceKey::new("apps", name),
            SpecInput::new("data", MoverInput::restic(CopyMethod::Snapshot, "repo")),
            0,
            t0(),
        )
        .unwrap();
        core.drain_effects()
            .into_iter()
            .find_map(|e| match e {
                Effect::PutSource(r) => Some(*r),
                _ => None,
            })
            .unwrap()
    }

    async fn get(commands: &mpsc::Sender<Command>, name: &str) -> Result<Source, DriverError> {
        let (reply, rx) = oneshot::channel();
        commands
            .send(Command::Read(Read::Get {
                key: SourceKey::new("apps", name),
                reply,
            }))
            .await
            .unwrap();
        rx.await.unwrap()
    }

    struct Harness {
        commands: mpsc::Sender<Command>,
        snapshots: mpsc::Sender<(Loaded, i64)>,
        commits: mpsc::Sender<(Vec<Commit>, i64)>,
        taken: Arc<AtomicUsize>,
        silent: Arc<std::sync::atomic::AtomicBool>,
        gate: Gate,
        metrics: Metrics,
        _task: AbortOnDrop,
    }

    fn start() -> Harness {
        let (commands, mut rx) = mpsc::channel(16);
        let (snapshots, snapshots_rx) = mpsc::channel(4);
        let (commits, commits_rx) = mpsc::channel(4);
        let taken = Arc::new(AtomicUsize::new(0));
        let silent = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let feed = StandIn {
            snapshots: snapshots_rx,
            commits: commits_rx,
            snapshots_taken: taken.clone(),
            silent: silent.clone(),
            progress: None,
        };
        let (_leader_tx, leader) = watch::channel(Some("replica-b".to_owned()));
        let gate = Gate::follower(leader.clone());
        let metrics = Metrics::new();
        let following = Following {
            gate: gate.clone(),
            clock: Arc::new(TokioClock::starting_at(t0())),
            metrics: metrics.clone(),
            leader,
        };
        let task = tokio::spawn(async move {
            let _leader_tx = _leader_tx;
            follow(Some(Box::new(feed)), &mut rx, following).await;
        });
        Harness {
            commands,
            snapshots,
            commits,
            taken,
            silent,
            gate,
            metrics,
            _task: AbortOnDrop(task),
        }
    }

    /// Lets the follower's tasks run until nothing is ready (paused time does not move).
    async fn settle() {
        for _ in 0..20 {
            tokio::task::yield_now().await;
        }
    }

    /// Waits until the follower's copy has reached `revision` (a snapshot is restored on a
    /// blocking thread, whose end paused time waits for), within a virtual second.
    async fn reached(h: &Harness, revision: i64) {
        for _ in 0..1000 {
            if h.metrics.follower_revision.get() == revision {
                return;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        panic!(
            "the copy is at revision {}, not {revision}",
            h.metrics.follower_revision.get()
        );
    }

    fn loaded(records: Vec<SourceRecord>) -> Loaded {
        Loaded {
            sources: records,
            next_run: 1,
            ..Loaded::default()
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_follower_serves_reads_from_its_copy_and_refuses_the_rest_naming_the_leader() {
        let h = start();
        // No copy yet: refused.
        assert!(matches!(
            get(&h.commands, "db").await,
            Err(DriverError::NotLeader(Some(ref l))) if l == "replica-b"
        ));
        h.snapshots
            .send((loaded(vec![record("db")]), 7))
            .await
            .unwrap();
        reached(&h, 7).await;
        assert_eq!(get(&h.commands, "db").await.unwrap().key.name, "db");
        assert!(h.gate.check("snapgate.v1.SourceService/GetSource").is_ok());
        assert_eq!(h.metrics.follower_revision.get(), 7);

        // A commit: a second source.
        let commit = Commit {
            changes: vec![Mirrored::PutSource(Box::new(record("web")))],
            corrupt: vec![],
        };
        h.commits.send((vec![commit], 9)).await.unwrap();
        settle().await;
        assert!(get(&h.commands, "web").await.is_ok());
        assert_eq!(h.metrics.follower_revision.get(), 9);

        // A commit whose record does not decode: the source is gone, and listed as left out.
        let commit = Commit {
            changes: vec![Mirrored::RemoveSource(SourceKey::new("apps", "web"))],
            corrupt: vec![Quarantined::source("apps/web", "not a source record")],
        };
        h.commits.send((vec![commit], 10)).await.unwrap();
        settle().await;
        assert!(matches!(
            get(&h.commands, "web").await,
            Err(DriverError::Core(_))
        ));
        let (reply, rx) = oneshot::channel();
        h.commands
            .send(Command::Read(Read::ListQuarantined { reply }))
            .await
            .unwrap();
        let left_out = rx.await.unwrap().unwrap();
        assert_eq!(left_out.len(), 1);
        assert_eq!(left_out[0].key, "apps/web");

        // A write is refused naming the leader, even past the interceptor.
        let (reply, rx) = oneshot::channel();
        h.commands
            .send(Command::SyncNow {
                key: SourceKey::new("apps", "db"),
                request_id: String::new(),
                reply,
            })
            .await
            .unwrap();
        assert!(matches!(
            rx.await.unwrap(),
            Err(DriverError::NotLeader(Some(ref l))) if l == "replica-b"
        ));
    }

    #[tokio::test(start_paused = true)]
    async fn a_copy_without_word_from_the_store_is_dropped_and_reloaded() {
        let h = start();
        h.snapshots
            .send((loaded(vec![record("db")]), 7))
            .await
            .unwrap();
        reached(&h, 7).await;
        assert!(get(&h.commands, "db").await.is_ok());

        // Quiet but answering its progress requests: still trusted long after.
        tokio::time::sleep(STALE_AFTER * 3).await;
        settle().await;
        assert!(get(&h.commands, "db").await.is_ok(), "progress keeps it");
        assert_eq!(h.taken.load(Ordering::SeqCst), 1);

        // Silent: after STALE_AFTER its reads are refused, and a new snapshot is asked for.
        h.silent.store(true, Ordering::SeqCst);
        tokio::time::sleep(STALE_AFTER + PROGRESS_EVERY * 2).await;
        settle().await;
        assert!(matches!(
            get(&h.commands, "db").await,
            Err(DriverError::NotLeader(_))
        ));
        assert!(h.gate.check("snapgate.v1.SourceService/GetSource").is_err());
        assert_eq!(h.metrics.follower_revision.get(), 0);

        // The new snapshot serves again.
        h.silent.store(false, Ordering::SeqCst);
        h.snapshots
            .send((loaded(vec![record("db"), record("web")]), 20))
            .await
            .unwrap();
        reached(&h, 20).await;
        assert_eq!(h.taken.load(Ordering::SeqCst), 2);
        assert!(get(&h.commands, "web").await.is_ok());
        assert_eq!(h.metrics.follower_revision.get(), 20);
    }
}
