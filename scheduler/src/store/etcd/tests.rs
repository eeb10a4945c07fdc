//! The etcd store against a real etcd (`snapgate_etcd::testing::EtcdServer`).
//!
//! The tests that hold a leadership run on a multi-thread runtime: the store's calls block
//! their caller (they are synchronous), and the leadership's keepalive runs on another worker.

use std::time::{Duration, Instant};

use prost::Message;
use snapgate_etcd::{Client, Elector, EtcdOptions, Leadership, testing::EtcdServer};
use snapgate_scheduler_core::{RunId, SourceKey};

use super::*;
use crate::wire::testing::{full_record, full_run};

/// Long enough that a loaded machine never loses the lease by accident.
const TTL: Duration = Duration::from_secs(10);

fn record(ns: &str, name: &str) -> snapgate_scheduler_core::SourceRecord {
    let mut r = full_record();
    r.source.key = SourceKey::new(ns, name);
    r
}

fn run(n: u64) -> snapgate_scheduler_core::model::Run {
    let mut r = full_run();
    r.id = RunId(n);
    r
}

/// Wins the election for `name` under `opts`.
async fn lead(opts: &EtcdOptions, name: &str) -> (Elector, Leadership) {
    let elector = Elector::connect(opts, name.into(), TTL).await.unwrap();
    let leadership = tokio::time::timeout(TTL, elector.campaign())
        .await
        .expect("an uncontested campaign wins at once")
        .unwrap();
    (elector, leadership)
}

/// Every key under `prefix`, for checks of what is (not) there.
async fn keys(opts: &EtcdOptions, prefix: &str) -> Vec<String> {
    let client = Client::new(opts).unwrap();
    client
        .range_prefix(prefix.as_bytes(), 1000)
        .await
        .unwrap()
        .kvs
        .into_iter()
        .map(|kv| String::from_utf8_lossy(&kv.key).into_owned())
        .collect()
}

/// `n` runs whose messages make the batch larger than one etcd request (and than 128 ops).
fn big_batch(n: u64) -> Batch {
    Batch {
        writes: (1..=n)
            .map(|i| {
                let mut r = run(i);
                r.message = format!("{i}: {}", "x".repeat(600));
                Write::PutRun(Box::new(r))
            })
            .collect(),
        next_run: n.saturating_add(1),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_committed_batch_is_there_after_reopening() {
    let etcd = EtcdServer::start().await;
    let opts = etcd.options("/snapgate");
    let (_elector, leadership) = lead(&opts, "a").await;
    let batch = Batch {
        writes: vec![
            Write::PutSource(Box::new(record("a", "x"))),
            Write::PutSource(Box::new(record("a", "y"))),
            Write::PutRun(Box::new(full_run())),
            Write::RemoveSource("a/y".into()),
        ],
        next_run: 43,
    };
    {
        let mut s = EtcdStore::open(&opts, Some(leadership.fence.clone())).unwrap();
        let started = Instant::now();
        s.commit(batch.clone()).unwrap();
        eprintln!(
            "latency: one small batch ({} writes) committed in {:?}",
            batch.writes.len(),
            started.elapsed()
        );
    }
    let s = EtcdStore::open(&opts, Some(leadership.fence.clone())).unwrap();
    let loaded = s.load().unwrap();
    assert_eq!(loaded.sources, vec![record("a", "x")]);
    assert_eq!(loaded.runs, vec![full_run()]);
    assert_eq!(loaded.next_run, 43);
    assert!(loaded.corrupt.is_empty());
    // The layout: records and the counter under their prefixes, no journal left.
    let mut all = keys(&opts, "/snapgate/").await;
    all.sort();
    assert_eq!(
        all,
        [
            "/snapgate/leader",
            "/snapgate/meta/next_run",
            "/snapgate/runs/run-42",
            "/snapgate/sources/a/x",
        ]
    );
    // An admin tool's unfenced store reads the same.
    let admin = EtcdStore::open(&opts, None).unwrap();
    assert_eq!(admin.load().unwrap().next_run, 43);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deposed_leaders_store_is_refused_and_writes_nothing() {
    let etcd = EtcdServer::start().await;
    let opts = etcd.options("/snapgate");
    let (_a, lead_a) = lead(&opts, "a").await;
    let old = lead_a.fence.clone();
    let mut s = EtcdStore::open(&opts, Some(old.clone())).unwrap();
    lead_a.resign().await.unwrap();
    let (_b, lead_b) = lead(&opts, "b").await;
    assert_ne!(lead_b.fence, old);

    let small = Batch {
        writes: vec![Write::PutSource(Box::new(record("a", "x")))],
        next_run: 2,
    };
    assert!(matches!(s.commit(small), Err(StoreError::Deposed)));
    // A journalled batch is refused at its first chunk.
    assert!(matches!(s.commit(big_batch(300)), Err(StoreError::Deposed)));
    assert_eq!(keys(&opts, "/snapgate/").await, ["/snapgate/leader"]);
    // b's store, fenced by b's tenure, writes.
    let mut b = EtcdStore::open(&opts, Some(lead_b.fence.clone())).unwrap();
    b.commit(big_batch(3)).unwrap();
    assert_eq!(b.load().unwrap().runs.len(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_of_3000_runs_commits_atomically_through_the_journal() {
    let etcd = EtcdServer::start().await;
    let opts = etcd.options("/snapgate");
    let (_elector, leadership) = lead(&opts, "a").await;
    let mut s = EtcdStore::open(&opts, Some(leadership.fence.clone())).unwrap();
    let batch = big_batch(3000);
    let bytes: usize = batch
        .writes
        .iter()
        .map(|w| match w {
            Write::PutRun(r) => format::encode_run(r).len(),
            _ => 0,
        })
        .sum();
    let limits = EtcdLimits::default();
    assert!(batch.writes.len() > limits.max_txn_ops);
    assert!(bytes > 1536 * 1024, "the batch is {bytes} bytes");
    let started = Instant::now();
    s.commit(batch).unwrap();
    eprintln!(
        "latency: 3,000 runs ({bytes} bytes encoded) committed through the journal in {:?}",
        started.elapsed()
    );
    assert!(keys(&opts, "/snapgate/journal/").await.is_empty());
    let started = Instant::now();
    let loaded = EtcdStore::open(&opts, Some(leadership.fence.clone()))
        .unwrap()
        .load()
        .unwrap();
    eprintln!("latency: 3,000 runs loaded in {:?}", started.elapsed());
    assert_eq!(loaded.runs.len(), 3000);
    assert_eq!(loaded.next_run, 3001);
    assert!(loaded.corrupt.is_empty());
}

/// Small limits, so a few hundred runs take many chunks and apply txns.
fn small_limits() -> EtcdLimits {
    EtcdLimits {
        max_txn_ops: 16,
        max_request_bytes: 32 * 1024,
    }
}

/// Commits a journalled batch stopped at `step`, then loads it with a new store (a new leader's
/// start).
async fn crash_at(step: Step) -> (Loaded, Vec<String>, EtcdServer) {
    let etcd = EtcdServer::start().await;
    let opts = etcd.options("/snapgate");
    let (_elector, leadership) = lead(&opts, "a").await;
    let fence = Some(leadership.fence.clone());
    let mut s = EtcdStore::open_with(&opts, fence.clone(), small_limits()).unwrap();
    s.commit(Batch {
        writes: vec![Write::PutSource(Box::new(record("a", "before")))],
        next_run: 1,
    })
    .unwrap();
    assert!(matches!(
        s.commit_until(big_batch(200), Some(step)),
        Err(StoreError::Injected)
    ));
    assert!(
        !keys(&opts, "/snapgate/journal/").await.is_empty(),
        "the crash left a journal"
    );
    drop(s);
    let loaded = EtcdStore::open_with(&opts, fence, small_limits())
        .unwrap()
        .load()
        .unwrap();
    let journal = keys(&opts, "/snapgate/journal/").await;
    (loaded, journal, etcd)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_journal_without_its_commit_marker_is_discarded_on_load() {
    let (loaded, journal, _etcd) = crash_at(Step::Chunks).await;
    assert!(loaded.runs.is_empty(), "nothing of the batch");
    assert_eq!(loaded.next_run, 1);
    assert_eq!(loaded.sources, vec![record("a", "before")]);
    assert!(journal.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_journal_with_its_commit_marker_is_applied_on_load() {
    let (loaded, journal, _etcd) = crash_at(Step::Marker).await;
    assert_eq!(loaded.runs.len(), 200, "all of the batch");
    assert_eq!(loaded.next_run, 201);
    assert!(journal.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_journal_applied_but_not_deleted_is_deleted_on_load() {
    let (loaded, journal, _etcd) = crash_at(Step::Applied).await;
    assert_eq!(loaded.runs.len(), 200);
    assert!(journal.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_journalled_commit_is_finished_before_the_next_commit() {
    let etcd = EtcdServer::start().await;
    let opts = etcd.options("/snapgate");
    let mut s = EtcdStore::open_with(&opts, None, small_limits()).unwrap();
    assert!(s.commit_until(big_batch(50), Some(Step::Marker)).is_err());
    // The same store commits on without a load: the committed journal is applied first, so
    // it can never be replayed over this newer write.
    let mut newer = run(1);
    newer.message = "newer".into();
    s.commit(Batch {
        writes: vec![Write::PutRun(Box::new(newer.clone()))],
        next_run: 51,
    })
    .unwrap();
    let loaded = s.load().unwrap();
    assert_eq!(loaded.runs.len(), 50);
    assert_eq!(loaded.runs.iter().find(|r| r.id == RunId(1)), Some(&newer));
}

#[tokio::test]
async fn records_that_do_not_decode_are_quarantined_and_the_rest_loads() {
    let etcd = EtcdServer::start().await;
    let opts = etcd.options("/snapgate");
    let mut s = EtcdStore::open(&opts, None).unwrap();
    s.commit(Batch {
        writes: vec![
            Write::PutSource(Box::new(record("apps", "good"))),
            Write::PutRun(Box::new(full_run())),
        ],
        next_run: 43,
    })
    .unwrap();
    let client = Client::new(&opts).unwrap();
    let put = |key: &'static str, value: Vec<u8>| {
        let client = client.clone();
        async move { client.put(key.as_bytes(), &value, 0).await.unwrap() }
    };
    put(
        "/snapgate/sources/apps/empty",
        format::SourceRecordV1::default().encode_to_vec(),
    )
    .await;
    let mut odd = crate::wire::sources::run_to_wire(&full_run());
    odd.id = "not-a-run".into();
    put("/snapgate/runs/not-a-run", odd.encode_to_vec()).await;
    put("/snapgate/runs/run-901", b"\xff\xff not a run".to_vec()).await;

    let loaded = s.load().unwrap();
    assert_eq!(loaded.sources, vec![record("apps", "good")]);
    assert_eq!(loaded.runs, vec![full_run()]);
    assert_eq!(
        crate::store::quarantined(&loaded),
        [
            ("run", "not-a-run"),
            ("run", "run-901"),
            ("source", "apps/empty")
        ]
    );
    assert_eq!(loaded.next_run, 902, "no new run overwrites run-901");
    // They are left in etcd, untouched.
    assert_eq!(keys(&opts, "/snapgate/runs/").await.len(), 3);

    // A counter that is no number is named, not guessed.
    put("/snapgate/meta/next_run", b"lots".to_vec()).await;
    let err = s.load().unwrap_err().to_string();
    assert!(err.contains("/snapgate/meta/next_run"), "{err}");
}

#[tokio::test]
async fn a_journal_writing_outside_the_records_is_refused() {
    let etcd = EtcdServer::start().await;
    let opts = etcd.options("/snapgate");
    let client = Client::new(&opts).unwrap();
    let chunk = JournalChunk {
        writes: vec![JournalWrite {
            key: b"/snapgate/leader".to_vec(),
            value: Some(b"me".to_vec()),
        }],
    };
    let journal = "/snapgate/journal/00000000000000000001/";
    client
        .put(
            format!("{journal}00000000").as_bytes(),
            &chunk.encode_to_vec(),
            0,
        )
        .await
        .unwrap();
    client
        .put(format!("{journal}commit").as_bytes(), b"1", 0)
        .await
        .unwrap();
    let err = EtcdStore::open(&opts, None).unwrap_err().to_string();
    assert!(err.contains("no record key"), "{err}");
    assert!(client.get(b"/snapgate/leader").await.unwrap().0.is_none());
}

#[test]
fn txn_groups_stay_within_both_limits() {
    let limits = EtcdLimits {
        max_txn_ops: 5,
        max_request_bytes: 2_000,
    };
    let writes: Vec<JournalWrite> = (0..37)
        .map(|i| JournalWrite {
            key: format!("/p/runs/run-{i}").into_bytes(),
            value: (i % 3 != 0).then(|| vec![b'v'; 100 + i * 10]),
        })
        .collect();
    let compare = snapgate_etcd::Fence {
        key: "/p/leader".into(),
        revision: 7,
    }
    .compare();
    let groups = txn_groups(&writes, framed_len(compare.encoded_len()), limits).unwrap();
    let mut next = 0;
    for g in groups {
        assert_eq!(g.start, next, "consecutive");
        next = g.end;
        let txn = TxnRequest {
            compare: vec![compare.clone()],
            success: writes[g.clone()].iter().map(JournalWrite::op).collect(),
            failure: vec![],
        };
        assert!(txn.success.len() <= limits.max_txn_ops);
        assert!(txn.encoded_len() <= limits.max_request_bytes);
    }
    assert_eq!(next, writes.len());
    let huge = [JournalWrite {
        key: b"/p/runs/run-1".to_vec(),
        value: Some(vec![0; 5_000]),
    }];
    assert!(matches!(
        txn_groups(&huge, 0, limits),
        Err(StoreError::TooLarge { limit: 2_000, .. })
    ));
}

#[test]
fn journal_chunks_fit_one_request_each_and_keep_every_write_in_order() {
    let limits = EtcdLimits {
        max_txn_ops: 128,
        max_request_bytes: 4_000,
    };
    let writes: Vec<JournalWrite> = (0..100)
        .map(|i| JournalWrite {
            key: format!("/p/runs/run-{i}").into_bytes(),
            value: Some(vec![b'v'; 200]),
        })
        .collect();
    let key = "/p/journal/00000000000000000001/00000000";
    let chunks = journal_chunks(writes.clone(), key.len(), 40, limits).unwrap();
    assert!(chunks.len() > 1);
    for c in &chunks {
        let put = put_op(key.into(), c.encode_to_vec());
        assert!(framed_len(put.encoded_len()).saturating_add(40) <= limits.max_request_bytes);
    }
    let back: Vec<JournalWrite> = chunks.into_iter().flat_map(|c| c.writes).collect();
    assert_eq!(back, writes);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_acknowledged_commit_survives_etcd_being_killed() {
    let mut etcd = EtcdServer::start().await;
    let opts = etcd.options("/snapgate");
    {
        let mut s = EtcdStore::open(&opts, None).unwrap();
        s.commit(Batch {
            writes: vec![Write::PutRun(Box::new(full_run()))],
            next_run: 43,
        })
        .unwrap();
        s.commit(big_batch(300)).unwrap();
    }
    // SIGKILL: no clean shutdown; etcd answered only after its raft log had the writes.
    etcd.restart().await;
    let loaded = EtcdStore::open(&opts, None).unwrap().load().unwrap();
    assert_eq!(
        loaded.runs.len(),
        300,
        "the 300 (run-1..run-300, run-42 rewritten by them)"
    );
    assert_eq!(loaded.next_run, 301);
}

/// The records a follower's copy holds: sources by key, runs by id, the run counter.
#[derive(Debug, Default, PartialEq)]
struct Records {
    sources: std::collections::BTreeMap<String, snapgate_scheduler_core::SourceRecord>,
    runs: std::collections::BTreeMap<RunId, snapgate_scheduler_core::model::Run>,
    next_run: u64,
}

impl Records {
    fn of(loaded: &Loaded) -> Self {
        Self {
            sources: loaded
                .sources
                .iter()
                .map(|r| (r.source.key.to_string(), r.clone()))
                .collect(),
            runs: loaded.runs.iter().map(|r| (r.id, r.clone())).collect(),
            next_run: loaded.next_run,
        }
    }

    fn apply(&mut self, commit: &crate::follower::Commit) {
        use snapgate_scheduler_core::Mirrored;
        for change in &commit.changes {
            match change {
                Mirrored::PutSource(r) => {
                    self.sources.insert(r.source.key.to_string(), (**r).clone());
                }
                Mirrored::RemoveSource(k) => {
                    self.sources.remove(&k.to_string());
                }
                Mirrored::PutRun(r) => {
                    self.runs.insert(r.id, (**r).clone());
                }
                Mirrored::RemoveRun(id) => {
                    self.runs.remove(id);
                }
                Mirrored::NextRun(n) => self.next_run = self.next_run.max(*n),
            }
        }
    }
}

/// Reads `feed` until its copy has reached the store's current revision; returns the commits.
async fn follow_to_now(
    feed: &mut EtcdFeed,
    opts: &EtcdOptions,
    records: &mut Records,
) -> Vec<crate::follower::Commit> {
    let (_, now) = Client::new(opts).unwrap().get(b"/snapgate/").await.unwrap();
    let mut all = Vec::new();
    loop {
        let (commits, revision) = tokio::time::timeout(Duration::from_secs(10), feed.next())
            .await
            .expect("the watch brings the commits")
            .unwrap();
        for c in &commits {
            records.apply(c);
        }
        all.extend(commits);
        if revision >= now {
            return all;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_followers_feed_reports_every_commit_and_its_copy_equals_a_load() {
    let etcd = EtcdServer::start().await;
    let opts = etcd.options("/snapgate");
    let mut s = EtcdStore::open_with(&opts, None, small_limits()).unwrap();
    s.commit(Batch {
        writes: vec![
            Write::PutSource(Box::new(record("a", "x"))),
            Write::PutRun(Box::new(run(1))),
        ],
        next_run: 2,
    })
    .unwrap();
    let mut feed = EtcdFeed::new(&opts).unwrap();
    let (loaded, _) = feed.snapshot().await.unwrap();
    assert_eq!(Records::of(&loaded), Records::of(&s.load().unwrap()));
    let mut copy = Records::of(&loaded);

    // Small commits, then one journalled batch of 200 runs.
    s.commit(Batch {
        writes: vec![
            Write::PutSource(Box::new(record("a", "y"))),
            Write::RemoveSource("a/x".into()),
        ],
        next_run: 2,
    })
    .unwrap();
    s.commit(Batch {
        writes: vec![Write::RemoveRun(RunId(1).to_string())],
        next_run: 2,
    })
    .unwrap();
    s.commit(big_batch(200)).unwrap();
    let commits = follow_to_now(&mut feed, &opts, &mut copy).await;
    assert_eq!(copy, Records::of(&s.load().unwrap()));
    // The journalled batch came whole, in one commit (at its marker).
    assert!(
        commits
            .iter()
            .any(|c| c.changes.len() == 201 && c.corrupt.is_empty()),
        "{:?}",
        commits.iter().map(|c| c.changes.len()).collect::<Vec<_>>()
    );

    // A record that does not decode: out of the copy, and reported.
    Client::new(&opts)
        .unwrap()
        .put(b"/snapgate/sources/a/y", b"garbage", 0)
        .await
        .unwrap();
    let commits = follow_to_now(&mut feed, &opts, &mut copy).await;
    assert!(!copy.sources.contains_key("a/y"));
    assert_eq!(
        commits.iter().flat_map(|c| &c.corrupt).count(),
        1,
        "{commits:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_followers_snapshot_holds_a_committed_journal_and_not_an_uncommitted_one() {
    for (step, runs) in [(Step::Chunks, 0), (Step::Marker, 200)] {
        let etcd = EtcdServer::start().await;
        let opts = etcd.options("/snapgate");
        let mut s = EtcdStore::open_with(&opts, None, small_limits()).unwrap();
        assert!(s.commit_until(big_batch(200), Some(step)).is_err());
        let (loaded, _) = EtcdFeed::new(&opts).unwrap().snapshot().await.unwrap();
        assert_eq!(loaded.runs.len(), runs, "{step:?}");
        assert!(
            !keys(&opts, "/snapgate/journal/").await.is_empty(),
            "the follower wrote nothing"
        );
    }
}

/// With a three-member etcd, a member dying (the one the store's client was using) stops
/// commits no longer than etcd takes to elect a raft leader among the other two, when it was
/// the leader: the client moves to the next endpoint, and the quorum left commits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commits_go_on_when_the_etcd_member_in_use_dies() {
    let mut cluster = snapgate_etcd::testing::EtcdCluster::start(3).await;
    let opts = cluster.options("/snapgate");
    let (_elector, leadership) = lead(&opts, "a").await;
    let mut s = EtcdStore::open(&opts, Some(leadership.fence.clone())).unwrap();
    let put = |name: &str| Batch {
        writes: vec![Write::PutSource(Box::new(record("a", name)))],
        next_run: 1,
    };
    s.commit(put("before")).unwrap();
    cluster.members[0].kill();
    // A commit refused meanwhile is refused whole, as any failed commit: the caller retries.
    // etcd is other processes: its election is waited for by retrying, bounded.
    let started = Instant::now();
    while let Err(e) = s.commit(put("after")) {
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "no commit within 15 s of a member's death: {e}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut names: Vec<String> = s
        .load()
        .unwrap()
        .sources
        .into_iter()
        .map(|r| r.source.key.name)
        .collect();
    names.sort();
    assert_eq!(names, ["after", "before"]);
}
