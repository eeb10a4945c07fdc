//! The agent's link over TLS: the scheduler is verified against `--ca-file`, every connection
//! carries the bearer token of `--token-file` as the file holds it then, and a scheduler the CA
//! does not vouch for gets nothing; the client certificate of `--client-cert`/`--client-key` is
//! presented to a scheduler with `--client-ca`; a replaced CA file or client certificate is used
//! from the next reconnect on, and a broken replacement keeps the last good one.

use std::{
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use snapgate_agent::{
    SchedulerAccess,
    link::{self, Backoff, LinkEvent},
};
use snapgate_proto::v1::{
    self,
    agent_service_server::{AgentService, AgentServiceServer},
    scheduler_message,
};
use tokio::{net::TcpListener, sync::mpsc};
use tonic::{Request, Response, Status, Streaming};

fn data(name: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../sdk/tests/data/tls")
        .join(name)
}

/// Welcomes every connection, reports its authorization header, then ends the stream (so the
/// agent reconnects).
struct Recorder(mpsc::UnboundedSender<String>);

#[tonic::async_trait]
impl AgentService for Recorder {
    type ConnectStream =
        std::pin::Pin<Box<dyn futures::Stream<Item = Result<v1::SchedulerMessage, Status>> + Send>>;

    async fn connect(
        &self,
        req: Request<Streaming<v1::AgentMessage>>,
    ) -> Result<Response<Self::ConnectStream>, Status> {
        let auth = req
            .metadata()
            .get("authorization")
            .map(|v| v.to_str().unwrap_or("?").to_owned())
            .unwrap_or_default();
        let _ = self.0.send(auth);
        let welcome = v1::SchedulerMessage {
            message: Some(scheduler_message::Message::Welcome(v1::Welcome {
                active_runs: 0,
            })),
        };
        Ok(Response::new(Box::pin(futures::stream::iter([Ok(
            welcome,
        )]))))
    }
}

/// A TLS scheduler stand-in (a [`Recorder`]) on loopback.
struct Recording {
    port: u16,
    /// The authorization header of every connection it served.
    seen: mpsc::UnboundedReceiver<String>,
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<Result<(), tonic::transport::Error>>,
}

impl Recording {
    /// Serves on `port` (0: any free port) with `cert`/`key`, asking every client for a
    /// certificate from `client_ca` when given.
    async fn start(port: u16, cert: &str, key: &str, client_ca: Option<&str>) -> Self {
        let identity = tonic::transport::Identity::from_pem(read(cert), read(key));
        let mut tls = tonic::transport::ServerTlsConfig::new().identity(identity);
        if let Some(ca) = client_ca {
            tls = tls.client_ca_root(tonic::transport::Certificate::from_pem(read(ca)));
        }
        let listener = TcpListener::bind(("127.0.0.1", port)).await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let (seen_tx, seen) = mpsc::unbounded_channel();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(
            tonic::transport::Server::builder()
                .tls_config(tls)
                .unwrap()
                .add_service(AgentServiceServer::new(Recorder(seen_tx)))
                .serve_with_incoming_shutdown(
                    tokio_stream::wrappers::TcpListenerStream::new(listener),
                    async {
                        let _ = stopped.await;
                    },
                ),
        );
        Self {
            port,
            seen,
            stop,
            task,
        }
    }

    /// Stops serving; the port is free again once this returns.
    async fn stop(self) {
        let _ = self.stop.send(());
        tokio::time::timeout(Duration::from_secs(20), self.task)
            .await
            .expect("the stand-in stops")
            .unwrap()
            .unwrap();
    }
}

/// A TLS scheduler stand-in with `cert`/`key`; the headers it saw arrive on the receiver.
async fn tls_recorder(
    cert: &str,
    key: &str,
) -> (
    u16,
    mpsc::UnboundedReceiver<String>,
    tokio::sync::oneshot::Sender<()>,
) {
    let r = Recording::start(0, cert, key, None).await;
    (r.port, r.seen, r.stop)
}

fn read(name: &str) -> Vec<u8> {
    std::fs::read(data(name)).unwrap()
}

/// Replaces `to` with the test file `from` as a Secret or ConfigMap volume does: a new file
/// renamed over the old.
fn replace(from: &str, to: &Path) {
    let tmp = to.with_extension("new");
    std::fs::copy(data(from), &tmp).unwrap();
    std::fs::rename(&tmp, to).unwrap();
}

/// A back-off short enough for the tests to see many attempts.
fn quick() -> Backoff {
    Backoff {
        initial: Duration::from_millis(20),
        max: Duration::from_millis(100),
    }
}

async fn next_event(events: &mut mpsc::Receiver<LinkEvent>) -> LinkEvent {
    tokio::time::timeout(Duration::from_secs(20), events.recv())
        .await
        .expect("a link event within 20s")
        .expect("the link runs")
}

/// Waits for a connection the scheduler welcomed.
async fn connected(events: &mut mpsc::Receiver<LinkEvent>) {
    tokio::time::timeout(Duration::from_secs(20), async {
        while !matches!(next_event(events).await, LinkEvent::Connected { .. }) {}
    })
    .await
    .expect("a welcomed connection within 20s");
}

/// Waits for `n` attempts in a row that failed (a `Disconnected` without a `Connected` before
/// it); a welcomed connection starts the count again.
async fn failed_in_a_row(events: &mut mpsc::Receiver<LinkEvent>, n: usize) {
    tokio::time::timeout(Duration::from_secs(20), async {
        let mut failed = 0;
        let mut welcomed = false;
        while failed < n {
            match next_event(events).await {
                LinkEvent::Connected { .. } => {
                    welcomed = true;
                    failed = 0;
                }
                LinkEvent::Disconnected if welcomed => welcomed = false,
                LinkEvent::Disconnected => failed += 1,
                _ => {}
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("no {n} failed attempts in a row within 20s"));
}

/// Forgets the events so far.
fn drain(events: &mut mpsc::Receiver<LinkEvent>) {
    while events.try_recv().is_ok() {}
}

fn hello() -> v1::AgentHello {
    v1::AgentHello {
        agent_id: "test".into(),
        namespaces: vec!["apps".into()],
        version: "test".into(),
        leases: true,
    }
}

async fn next_header(seen: &mut mpsc::UnboundedReceiver<String>) -> String {
    tokio::time::timeout(Duration::from_secs(20), seen.recv())
        .await
        .expect("a connection within 20s")
        .unwrap()
}

#[tokio::test]
async fn the_agent_verifies_the_scheduler_with_ca_file_and_sends_the_current_token_on_each_connect()
{
    let (port, mut seen, stop) = tls_recorder("server.pem", "server.key").await;
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("token");
    std::fs::write(&token, "sa-token-1\n").unwrap();
    let access = SchedulerAccess {
        ca_file: Some(data("ca.pem")),
        token_file: Some(token.clone()),
        ..SchedulerAccess::default()
    };
    let scheduler = access
        .connector(&format!("https://localhost:{port}"))
        .unwrap();
    let (events_tx, mut events) = mpsc::channel(64);
    let backoff = Backoff {
        initial: Duration::from_millis(50),
        max: Duration::from_millis(200),
    };
    let link = tokio::spawn(link::run(scheduler, hello(), backoff, events_tx));

    assert_eq!(next_header(&mut seen).await, "Bearer sa-token-1");
    let first = tokio::time::timeout(Duration::from_secs(20), events.recv())
        .await
        .unwrap()
        .unwrap();
    assert!(matches!(first, LinkEvent::Connected { .. }), "{first:?}");

    // kubelet rotates the projected token: the next connection carries the new one.
    let tmp = dir.path().join("token.new");
    std::fs::write(&tmp, "sa-token-2\n").unwrap();
    std::fs::rename(&tmp, &token).unwrap();
    let header = loop {
        let h = next_header(&mut seen).await;
        if h != "Bearer sa-token-1" {
            break h;
        }
    };
    assert_eq!(header, "Bearer sa-token-2");
    link.abort();
    let _ = stop.send(());
}

#[tokio::test]
async fn a_scheduler_the_ca_file_does_not_vouch_for_gets_no_connection_and_no_token() {
    // A certificate from another CA.
    let (port, mut seen, stop) = tls_recorder("server2.pem", "server2.key").await;
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("token");
    std::fs::write(&token, "secret").unwrap();
    let access = SchedulerAccess {
        ca_file: Some(data("ca.pem")),
        token_file: Some(token),
        ..SchedulerAccess::default()
    };
    let scheduler = access
        .connector(&format!("https://localhost:{port}"))
        .unwrap();
    let (events_tx, mut events) = mpsc::channel(64);
    let link = tokio::spawn(link::run(scheduler, hello(), Backoff::default(), events_tx));
    // Attempts fail (Disconnected after each), and the server never sees a call.
    for _ in 0..3 {
        let event = tokio::time::timeout(Duration::from_secs(20), events.recv())
            .await
            .unwrap()
            .unwrap();
        assert!(matches!(event, LinkEvent::Disconnected), "{event:?}");
    }
    assert!(seen.try_recv().is_err());
    link.abort();
    let _ = stop.send(());
}

#[test]
fn bad_access_settings_are_refused_at_once_naming_the_flag() {
    let missing = Path::new("/nonexistent/ca.pem");
    let e = SchedulerAccess {
        ca_file: Some(missing.into()),
        ..SchedulerAccess::default()
    }
    .connector("https://localhost:1")
    .unwrap_err();
    assert!(
        format!("{e:#}").contains("--ca-file /nonexistent/ca.pem: cannot read"),
        "{e:#}"
    );
    let e = SchedulerAccess {
        token_file: Some("/nonexistent/token".into()),
        ..SchedulerAccess::default()
    }
    .connector("http://localhost:1")
    .unwrap_err();
    assert!(format!("{e:#}").contains("/nonexistent/token"), "{e:#}");
    // A CA for a plaintext scheduler is a mistake.
    let e = SchedulerAccess {
        ca_file: Some(data("ca.pem")),
        ..SchedulerAccess::default()
    }
    .connector("http://localhost:1")
    .unwrap_err();
    assert!(format!("{e:#}").contains("https://"), "{e:#}");
}

/// The real scheduler on loopback, over TLS, asking every client for a certificate from
/// `client-ca.pem`.
struct Scheduler {
    port: u16,
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
    _dir: tempfile::TempDir,
}

impl Scheduler {
    async fn start() -> Self {
        use snapgate_scheduler::{
            Config, Listening, identity::Authorizer, metrics::Metrics, serve_with,
            store::RedbStore, tls::ServerTls,
        };
        let dir = tempfile::tempdir().unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let config = Config {
            store: RedbStore::open(dir.path()).unwrap().into(),
            clock: Arc::new(snapgate_proto::clock::TokioClock::starting_now()),
            metrics: Metrics::new(),
            authorizer: Authorizer::default(),
            authenticator: None,
            rate: (0, 0),
            lease_policy: Default::default(),
        };
        let tls = ServerTls::load(
            &data("server.pem"),
            &data("server.key"),
            Some(&data("client-ca.pem")),
        )
        .unwrap();
        let listening = Listening {
            tls: Some(tls),
            health: None,
            driver_thread: false,
        };
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(serve_with(config, listener, listening, async {
            let _ = stopped.await;
        }));
        Self {
            port,
            stop,
            task,
            _dir: dir,
        }
    }
}

#[tokio::test]
async fn a_scheduler_with_client_ca_serves_the_agent_with_a_certificate_from_it_only() {
    let scheduler = Scheduler::start().await;
    let url = format!("https://localhost:{}", scheduler.port);
    for (identity, served) in [
        (Some(("client.pem", "client.key")), true),
        (None, false),
        (Some(("client2.pem", "client2.key")), false),
    ] {
        let access = SchedulerAccess {
            ca_file: Some(data("ca.pem")),
            client_cert: identity.map(|(cert, _)| data(cert)),
            client_key: identity.map(|(_, key)| data(key)),
            ..SchedulerAccess::default()
        };
        let (events_tx, mut events) = mpsc::channel(64);
        let link = tokio::spawn(link::run(
            access.connector(&url).unwrap(),
            hello(),
            quick(),
            events_tx,
        ));
        if served {
            let first = next_event(&mut events).await;
            assert!(matches!(first, LinkEvent::Connected { .. }), "{first:?}");
        } else {
            // Every attempt fails from the first on.
            for _ in 0..3 {
                let event = next_event(&mut events).await;
                assert!(
                    matches!(event, LinkEvent::Disconnected),
                    "{identity:?}: {event:?}"
                );
            }
        }
        link.abort();
    }
    let _ = scheduler.stop.send(());
    tokio::time::timeout(Duration::from_secs(20), scheduler.task)
        .await
        .expect("the scheduler stops")
        .unwrap()
        .unwrap();
}

#[tokio::test]
async fn a_replaced_ca_file_is_used_at_the_next_reconnect_and_a_broken_one_keeps_the_last() {
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca.crt");
    replace("ca.pem", &ca);
    let first = Recording::start(0, "server.pem", "server.key", None).await;
    let port = first.port;
    let access = SchedulerAccess {
        ca_file: Some(ca.clone()),
        ..SchedulerAccess::default()
    };
    let (events_tx, mut events) = mpsc::channel(64);
    let link = tokio::spawn(link::run(
        access
            .connector(&format!("https://localhost:{port}"))
            .unwrap(),
        hello(),
        quick(),
        events_tx,
    ));
    connected(&mut events).await;

    // The scheduler comes back with a certificate from a new CA: the old CA refuses it.
    first.stop().await;
    let mut second = Recording::start(port, "server2.pem", "server2.key", None).await;
    drain(&mut events);
    failed_in_a_row(&mut events, 3).await;
    assert!(second.seen.try_recv().is_err(), "nothing reached it");

    // The CA file is rotated (a ConfigMap update): the next attempt trusts the new CA.
    replace("ca2.pem", &ca);
    connected(&mut events).await;
    assert_eq!(second.seen.recv().await.unwrap(), "");

    // A broken replacement is logged and the last good CA kept: attempts made after it, two
    // connections later, are still welcomed.
    std::fs::write(&ca, "not a certificate").unwrap();
    connected(&mut events).await;
    connected(&mut events).await;
    link.abort();
    second.stop().await;
}

#[tokio::test]
async fn a_replaced_client_certificate_is_used_at_the_next_reconnect_and_a_broken_one_keeps_the_last()
 {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key): (PathBuf, PathBuf) = (dir.path().join("tls.crt"), dir.path().join("tls.key"));
    replace("client.pem", &cert);
    replace("client.key", &key);
    let first = Recording::start(0, "server.pem", "server.key", Some("client-ca.pem")).await;
    let port = first.port;
    let access = SchedulerAccess {
        ca_file: Some(data("ca.pem")),
        client_cert: Some(cert.clone()),
        client_key: Some(key.clone()),
        ..SchedulerAccess::default()
    };
    let (events_tx, mut events) = mpsc::channel(64);
    let link = tokio::spawn(link::run(
        access
            .connector(&format!("https://localhost:{port}"))
            .unwrap(),
        hello(),
        quick(),
        events_tx,
    ));
    connected(&mut events).await;

    // The scheduler's client CA is rotated: the agent's old certificate is refused.
    first.stop().await;
    let mut second =
        Recording::start(port, "server.pem", "server.key", Some("client-ca2.pem")).await;
    drain(&mut events);
    failed_in_a_row(&mut events, 3).await;
    assert!(second.seen.try_recv().is_err(), "nothing reached it");

    // cert-manager renews the agent's pair from the new CA, the key first: until the
    // certificate follows, the pair does not match and the last good one is kept.
    replace("client2.key", &key);
    replace("client2.pem", &cert);
    connected(&mut events).await;

    // A broken replacement (the old certificate with the new key; then no key at all) is
    // logged and the last good pair kept.
    replace("client.pem", &cert);
    connected(&mut events).await;
    connected(&mut events).await;
    std::fs::write(&key, "not a key").unwrap();
    connected(&mut events).await;
    connected(&mut events).await;
    link.abort();
    second.stop().await;
}
