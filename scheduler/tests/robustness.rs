//! The scheduler survives any request: a dead driver is reported and exits, a store with bad
//! records still starts, and every stream, queue and answer is bounded.

mod support;

use std::{collections::BTreeMap, path::Path, sync::Arc, time::Duration};

use futures::StreamExt;
use prost::Message as _;
use redb::ReadableDatabase as _;
use snapgate_proto::v1::{
    self, CopyMethod, agent_message, agent_service_client::AgentServiceClient,
    scheduler_message::Message as ToAgent,
};
use snapgate_scheduler::store::{Batch, Loaded, RedbStore, Store, StoreError, Write};
use snapgate_scheduler_core::SourceRecord;
use support::Running;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
    sync::mpsc,
};
use tokio_stream::wrappers::ReceiverStream;
use tonic::Code;
use tonic_health::pb::{HealthCheckRequest, health_check_response::ServingStatus};

fn restic(pvc: &str) -> v1::SourceSpec {
    v1::SourceSpec {
        source_pvc: pvc.into(),
        trigger: Some(v1::ReplicationSourceTrigger {
            schedule: None,
            manual: Some("first".into()),
        }),
        restic: Some(v1::ReplicationSourceResticSpec {
            copy_method: CopyMethod::Snapshot as i32,
            repository: "restic-config".into(),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn apply(ns: &str, name: &str, spec: v1::SourceSpec) -> v1::ApplySourceRequest {
    v1::ApplySourceRequest {
        namespace: ns.into(),
        name: name.into(),
        spec: Some(spec),
        expected_version: 0,
    }
}

/// A store whose commits panic once armed: a stand-in for any bug in the driver.
struct PanickingStore {
    inner: RedbStore,
    armed: Arc<std::sync::atomic::AtomicBool>,
}

impl Store for PanickingStore {
    fn load(&self) -> Result<Loaded, StoreError> {
        self.inner.load()
    }
    fn commit(&mut self, batch: Batch) -> Result<(), StoreError> {
        assert!(
            !self.armed.load(std::sync::atomic::Ordering::SeqCst),
            "injected driver panic"
        );
        self.inner.commit(batch)
    }
}

#[tokio::test]
async fn a_driver_that_dies_turns_health_not_serving_and_the_server_exits_with_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let armed = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let s = Running::start(Box::new(PanickingStore {
        inner: RedbStore::open(dir.path()).unwrap(),
        armed: armed.clone(),
    }))
    .await;
    let mut health = tonic_health::pb::health_client::HealthClient::new(s.channel.clone());
    let mut watch = health
        .watch(HealthCheckRequest {
            service: "snapgate.v1.SourceService".into(),
        })
        .await
        .unwrap()
        .into_inner();
    let first = watch.next().await.unwrap().unwrap();
    assert_eq!(first.status, ServingStatus::Serving as i32);

    armed.store(true, std::sync::atomic::Ordering::SeqCst);
    let err = s
        .sources()
        .apply_source(apply("apps", "db", restic("data")))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");

    let next = watch.next().await.unwrap().unwrap();
    assert_eq!(next.status, ServingStatus::NotServing as i32);
    let exit = tokio::time::timeout(Duration::from_secs(10), s.task)
        .await
        .expect("serve returns once the driver died")
        .unwrap();
    let err = exit.expect_err("an error, so the process exits non-zero");
    assert!(err.to_string().contains("panicked"), "{err}");
}

#[tokio::test]
async fn a_connection_that_never_sends_the_http2_preface_is_closed() {
    tokio::time::pause();
    let dir = tempfile::tempdir().unwrap();
    let s = Running::open(dir.path()).await;
    let mut silent = TcpStream::connect(s.addr).await.unwrap();
    let mut half = TcpStream::connect(s.addr).await.unwrap();
    half.write_all(b"PRI * HTTP/2.0\r\n").await.unwrap();
    // Paused time moves to the deadline once nothing else can happen; the server then
    // closes both (a read sees the end of the stream or a reset).
    for conn in [&mut silent, &mut half] {
        let mut buf = [0u8; 64];
        let closed = tokio::time::timeout(Duration::from_secs(60), async {
            loop {
                match conn.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(_) => continue, // the server's own SETTINGS frame
                }
            }
        })
        .await;
        assert!(closed.is_ok(), "still open a minute after connecting");
    }
    // A real client is unaffected.
    let mut health = tonic_health::pb::health_client::HealthClient::new(s.channel.clone());
    health
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .unwrap();
    drop((silent, half));
    tokio::time::resume();
    s.stop().await;
}

#[tokio::test]
async fn closed_watch_streams_are_forgotten_at_once_and_open_ones_are_bounded() {
    let dir = tempfile::tempdir().unwrap();
    let s = Running::open(dir.path()).await;
    let watch = |pvc: &str| v1::WatchCopyRequest {
        target: Some(v1::CopyTarget {
            namespace: "apps".into(),
            pvc: pvc.into(),
            source: String::new(),
        }),
    };
    let mut open = Vec::new();
    for _ in 0..64 {
        open.push(
            s.triggers()
                .watch_copy(watch("quiet"))
                .await
                .unwrap()
                .into_inner(),
        );
    }
    s.until_gauge("snapgate_watch_streams", 64).await;
    let err = s.triggers().watch_copy(watch("quiet")).await.unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted);
    assert!(err.message().contains("at most 64"), "{}", err.message());
    // Another PVC is not affected by this one's limit.
    let other = s.triggers().watch_copy(watch("other")).await.unwrap();

    // Cancelled on a PVC where nothing ever happens: forgotten without any status change.
    drop(open);
    s.until_gauge("snapgate_watch_streams", 1).await;
    s.triggers().watch_copy(watch("quiet")).await.unwrap();
    drop(other);
    s.stop().await;
}

#[tokio::test]
async fn an_agent_hello_is_bounded_and_a_resync_carries_every_run_in_flight() {
    let dir = tempfile::tempdir().unwrap();
    let s = Running::open(dir.path()).await;
    let hello = |namespaces: Vec<String>| v1::AgentMessage {
        message: Some(agent_message::Message::Hello(v1::AgentHello {
            agent_id: "agent".into(),
            namespaces,
            version: "test".into(),
            leases: true,
        })),
    };
    let (tx, rx) = mpsc::channel(1);
    tx.send(hello((0..1001).map(|i| format!("ns-{i}")).collect()))
        .await
        .unwrap();
    let err = AgentServiceClient::new(s.channel.clone())
        .connect(ReceiverStream::new(rx))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("at most 1000"), "{}", err.message());

    // More runs in flight than an agent's queue holds (1024): all are resent on connect.
    let runs = 1100;
    let mut sources = s.sources();
    for i in 0..runs {
        sources
            .apply_source(apply("apps", &format!("s{i}"), restic(&format!("pvc-{i}"))))
            .await
            .unwrap();
    }
    let (tx, rx) = mpsc::channel(1);
    tx.send(hello(vec!["apps".into()])).await.unwrap();
    let mut inbound = AgentServiceClient::new(s.channel.clone())
        .connect(ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    match inbound.next().await.unwrap().unwrap().message {
        Some(ToAgent::Welcome(w)) => assert_eq!(w.active_runs, runs),
        other => panic!("expected welcome, got {other:?}"),
    }
    let mut directives = std::collections::BTreeSet::new();
    while directives.len() < runs as usize {
        match inbound.next().await.unwrap().unwrap().message {
            Some(ToAgent::Directive(d)) => {
                directives.insert(d.run_id);
            }
            other => panic!("expected a directive, got {other:?}"),
        }
    }
    drop(tx);
    s.stop().await;
}

#[tokio::test]
async fn a_huge_name_is_answered_with_invalid_argument_quoting_a_prefix() {
    let dir = tempfile::tempdir().unwrap();
    let s = Running::open(dir.path()).await;
    let name = "n".repeat(1 << 20);
    let err = s
        .sources()
        .apply_source(apply("apps", &name, restic("data")))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    assert!(err.message().starts_with("name: "), "{}", err.message());
    assert!(err.message().len() < 512, "{} bytes", err.message().len());
    s.stop().await;
}

/// Writes records straight into the store, as an older version or a damaged disk left them.
fn seed(dir: &Path, sources: &[SourceRecord], raw: &[(&str, &[u8])]) {
    let mut store = RedbStore::open(dir).unwrap();
    store
        .commit(Batch {
            writes: sources
                .iter()
                .map(|r| Write::PutSource(Box::new(r.clone())))
                .collect(),
            next_run: 1,
        })
        .unwrap();
    drop(store);
    let db = redb::Database::open(dir.join("snapgate.redb")).unwrap();
    let tx = db.begin_write().unwrap();
    {
        let mut t = tx
            .open_table(redb::TableDefinition::<&str, &[u8]>::new("sources"))
            .unwrap();
        for (k, v) in raw {
            t.insert(*k, *v).unwrap();
        }
    }
    tx.commit().unwrap();
}

fn record(name: &str, spec: v1::SourceSpec, status: v1::SourceStatus) -> SourceRecord {
    SourceRecord {
        source: Some(v1::Source {
            namespace: "apps".into(),
            name: name.into(),
            spec: Some(spec),
            status: Some(status),
            version: 1,
            create_time: None,
            author: None,
        }),
        deleting: false,
    }
}

#[tokio::test]
async fn a_store_with_bad_records_starts_quarantines_them_and_serves_the_rest() {
    let dir = tempfile::tempdir().unwrap();
    let long_ago = prost_types::Timestamp {
        seconds: 1_600_000_000,
        nanos: 0,
    };
    // The crash loop of old: a huge prune interval, pruned once, a run due at start.
    let mut prune = restic("data");
    prune.trigger = None;
    prune.restic.as_mut().unwrap().prune_interval_days = Some(99_999_999);
    let prune_status = v1::SourceStatus {
        last_pruned: Some(long_ago),
        last_sync_time: Some(long_ago),
        last_sync_start_time: Some(long_ago),
        next_sync_time: Some(long_ago),
        ..Default::default()
    };
    // Stored by a version that admitted a cron that never fires.
    let mut never = restic("other");
    never.trigger = Some(v1::ReplicationSourceTrigger {
        schedule: Some("0 0 31 2 *".into()),
        manual: None,
    });
    let mut no_mover = restic("third");
    no_mover.restic = None;
    seed(
        dir.path(),
        &[
            record("prune", prune, prune_status),
            record("never", never, v1::SourceStatus::default()),
            record("no-mover", no_mover, v1::SourceStatus::default()),
        ],
        &[("apps/garbage", b"\xff\xff\xff\xff not a record")],
    );

    let s = Running::open(dir.path()).await;
    let mut health = tonic_health::pb::health_client::HealthClient::new(s.channel.clone());
    let h = health
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(h.status, ServingStatus::Serving as i32);

    let prune = s
        .sources()
        .get_source(v1::GetSourceRequest {
            namespace: "apps".into(),
            name: "prune".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(
        !prune.status.unwrap().current_run_id.is_empty(),
        "its due run started at catch-up"
    );
    let never = s
        .sources()
        .get_source(v1::GetSourceRequest {
            namespace: "apps".into(),
            name: "never".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(never.status.unwrap().message.contains("never fires"));

    let q = s
        .sources()
        .list_quarantined(v1::ListQuarantinedRequest {})
        .await
        .unwrap()
        .into_inner()
        .records;
    let q: BTreeMap<String, String> = q.into_iter().map(|r| (r.key, r.kind)).collect();
    assert_eq!(
        q,
        BTreeMap::from([
            ("apps/garbage".to_owned(), "source".to_owned()),
            ("apps/no-mover".to_owned(), "source".to_owned()),
        ])
    );
    assert_eq!(s.gauge("snapgate_store_quarantined_records"), 2);
    s.stop().await;

    // Kept in the store, untouched.
    let db = redb::Database::open(dir.path().join("snapgate.redb")).unwrap();
    let tx = db.begin_read().unwrap();
    let t = tx
        .open_table(redb::TableDefinition::<&str, &[u8]>::new("sources"))
        .unwrap();
    assert!(t.get("apps/garbage").unwrap().is_some());
    let kept = t.get("apps/no-mover").unwrap().unwrap();
    assert!(SourceRecord::decode(kept.value()).is_ok());
}
