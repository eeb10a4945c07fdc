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
use snapgate_scheduler::store::format::SourceRecordV1;
use snapgate_scheduler::store::{Batch, Loaded, RedbStore, Store, StoreError};
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

/// As the binary runs it, the driver on a thread of its own: its panic is noticed the same
/// way, the call in flight is answered UNAVAILABLE and the server exits with an error.
#[tokio::test]
async fn a_driver_on_its_own_thread_that_dies_ends_the_server_with_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let armed = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let config = snapgate_scheduler::Config {
        store: PanickingStore {
            inner: RedbStore::open(dir.path()).unwrap(),
            armed: armed.clone(),
        }
        .into(),
        clock: Arc::new(snapgate_proto::clock::SystemClock),
        metrics: snapgate_scheduler::metrics::Metrics::new(),
        authorizer: Default::default(),
        authenticator: None,
        rate: (0, 0),
        lease_policy: Default::default(),
    };
    let listening = snapgate_scheduler::Listening {
        driver_thread: true,
        ..Default::default()
    };
    let task = tokio::spawn(snapgate_scheduler::serve_with(
        config,
        listener,
        listening,
        std::future::pending(),
    ));
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut sources = v1::source_service_client::SourceServiceClient::new(channel);
    sources
        .apply_source(apply("apps", "first", restic("data")))
        .await
        .expect("the driver on its own thread serves");
    armed.store(true, std::sync::atomic::Ordering::SeqCst);
    let err = sources
        .apply_source(apply("apps", "db", restic("data")))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");
    let exit = tokio::time::timeout(Duration::from_secs(10), task)
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

/// An HTTP/2 frame: type, flags, stream id, payload.
struct Frame {
    kind: u8,
    flags: u8,
    stream: u32,
    payload: Vec<u8>,
}

const SETTINGS: u8 = 0x4;
const HEADERS: u8 = 0x1;
const DATA: u8 = 0x0;
const RST_STREAM: u8 = 0x3;
const END_STREAM: u8 = 0x1;
const END_HEADERS: u8 = 0x4;
const SETTINGS_MAX_CONCURRENT_STREAMS: u16 = 0x3;
const REFUSED_STREAM: u32 = 0x7;

fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = u32::try_from(payload.len()).unwrap().to_be_bytes();
    let mut out = vec![len[1], len[2], len[3], kind, flags];
    out.extend_from_slice(&stream.to_be_bytes());
    out.extend_from_slice(payload);
    out
}

async fn read_frame(conn: &mut TcpStream) -> Frame {
    let mut head = [0u8; 9];
    conn.read_exact(&mut head).await.unwrap();
    let len = usize::from(head[0]) << 16 | usize::from(head[1]) << 8 | usize::from(head[2]);
    let mut payload = vec![0u8; len];
    conn.read_exact(&mut payload).await.unwrap();
    Frame {
        kind: head[3],
        flags: head[4],
        stream: u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & 0x7fff_ffff,
        payload,
    }
}

/// The HPACK block of a gRPC call to `path` (literals, no Huffman, no dynamic table).
fn grpc_headers(path: &str) -> Vec<u8> {
    let literal = |out: &mut Vec<u8>, value: &str| {
        out.push(u8::try_from(value.len()).unwrap());
        out.extend_from_slice(value.as_bytes());
    };
    // :method POST, :scheme http (static table 3 and 6).
    let mut block = vec![0x83, 0x86];
    // :path (name 4), :authority (name 1), content-type (name 31), without indexing.
    block.push(0x04);
    literal(&mut block, path);
    block.push(0x01);
    literal(&mut block, "localhost");
    block.extend_from_slice(&[0x0f, 0x10]);
    literal(&mut block, "application/grpc");
    block.push(0x00);
    literal(&mut block, "te");
    literal(&mut block, "trailers");
    block
}

#[tokio::test]
async fn a_connection_holds_at_most_its_bound_of_streams_and_one_past_it_is_refused() {
    use snapgate_scheduler::limits::MAX_STREAMS_PER_CONNECTION;
    let dir = tempfile::tempdir().unwrap();
    let s = Running::open(dir.path()).await;
    let mut conn = TcpStream::connect(s.addr).await.unwrap();
    conn.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
        .await
        .unwrap();
    conn.write_all(&frame(SETTINGS, 0, 0, &[])).await.unwrap();
    // The server says its bound in its first SETTINGS.
    let settings = tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            let f = read_frame(&mut conn).await;
            if f.kind == SETTINGS && f.flags & 0x1 == 0 {
                return f;
            }
        }
    })
    .await
    .expect("the server's SETTINGS");
    let advertised = settings.payload.chunks(6).find_map(|entry| {
        (u16::from_be_bytes([entry[0], entry[1]]) == SETTINGS_MAX_CONCURRENT_STREAMS)
            .then(|| u32::from_be_bytes([entry[2], entry[3], entry[4], entry[5]]))
    });
    assert_eq!(advertised, Some(MAX_STREAMS_PER_CONNECTION));
    conn.write_all(&frame(SETTINGS, 0x1, 0, &[])).await.unwrap();

    // A client that ignores it opens one stream more than allowed: health watches whose
    // request never comes, so every stream stays open.
    let watch = grpc_headers("/grpc.health.v1.Health/Watch");
    let streams: Vec<u32> = (0..=MAX_STREAMS_PER_CONNECTION)
        .map(|i| 2 * i + 1)
        .collect();
    for id in &streams {
        conn.write_all(&frame(HEADERS, END_HEADERS, *id, &watch))
            .await
            .unwrap();
    }
    let last = *streams.last().unwrap();
    let refused = tokio::time::timeout(Duration::from_secs(20), async {
        let mut refused = Vec::new();
        loop {
            let f = read_frame(&mut conn).await;
            if f.kind == RST_STREAM {
                let code = u32::from_be_bytes(f.payload[..4].try_into().unwrap());
                assert_eq!(code, REFUSED_STREAM, "stream {}", f.stream);
                refused.push(f.stream);
                if f.stream == last {
                    return refused;
                }
            }
        }
    })
    .await
    .expect("the stream past the bound is refused");
    assert_eq!(refused, [last], "only the stream past the bound is refused");

    // One ended (the client cancels it): a new call on the connection is served.
    let cancel = 0x8u32.to_be_bytes();
    conn.write_all(&frame(RST_STREAM, 0, 1, &cancel))
        .await
        .unwrap();
    let check = grpc_headers("/grpc.health.v1.Health/Check");
    let next = last + 2;
    conn.write_all(&frame(HEADERS, END_HEADERS, next, &check))
        .await
        .unwrap();
    // An empty HealthCheckRequest: no compression, length 0.
    conn.write_all(&frame(DATA, END_STREAM, next, &[0, 0, 0, 0, 0]))
        .await
        .unwrap();
    tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            let f = read_frame(&mut conn).await;
            assert!(
                !(f.kind == RST_STREAM && f.stream == next),
                "the new call was refused"
            );
            if f.kind == HEADERS && f.stream == next {
                return;
            }
        }
    })
    .await
    .expect("the new call is answered");
    drop(conn);
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

/// Writes records straight into the store, as an older version (records without a format
/// header) or a damaged disk left them.
fn seed(dir: &Path, sources: &[SourceRecordV1], raw: &[(&str, &[u8])]) {
    drop(RedbStore::open(dir).unwrap());
    let db = redb::Database::open(dir.join("snapgate.redb")).unwrap();
    let tx = db.begin_write().unwrap();
    {
        let mut t = tx
            .open_table(redb::TableDefinition::<&str, &[u8]>::new("sources"))
            .unwrap();
        for r in sources {
            let s = r.source.as_ref().unwrap();
            let key = format!("{}/{}", s.namespace, s.name);
            t.insert(key.as_str(), r.encode_to_vec().as_slice())
                .unwrap();
        }
        for (k, v) in raw {
            t.insert(*k, *v).unwrap();
        }
    }
    tx.commit().unwrap();
}

fn record(name: &str, spec: v1::SourceSpec, status: v1::SourceStatus) -> SourceRecordV1 {
    SourceRecordV1 {
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
    assert!(SourceRecordV1::decode(kept.value()).is_ok());
}
