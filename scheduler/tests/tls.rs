//! TLS on the gRPC port, on loopback: only clients trusting the CA are served, a rotated
//! certificate is picked up by new connections without a restart, `--client-ca` asks for a
//! client certificate (and a rotated client CA is used for new connections), a client that
//! starts no handshake is dropped in time, one peer holding idle connections cannot keep
//! another from being served, and the plaintext health port answers while the TLS port serves.

use std::{
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use snapgate_proto::clock::TokioClock;
use snapgate_scheduler::{
    Config, Listening,
    handshake::HANDSHAKE_TIMEOUT,
    identity::Authorizer,
    metrics::Metrics,
    serve_with,
    store::{Batch, Loaded, RedbStore, Store, StoreError},
    tls::{MAX_HANDSHAKES, MAX_HANDSHAKES_PER_IP, ServerTls},
};
use snapgate_sdk::{Client, Error};
use tokio::{io::AsyncReadExt as _, io::AsyncWriteExt as _, net::TcpListener, task::JoinHandle};
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};

fn data(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../sdk/tests/data/tls")
        .join(name)
}

fn read(name: &str) -> Vec<u8> {
    std::fs::read(data(name)).unwrap()
}

/// Replaces `to` with `from` the way a Secret volume does: a new file renamed over the old.
fn replace(from: &str, to: &Path) {
    let tmp = to.with_extension("new");
    std::fs::copy(data(from), &tmp).unwrap();
    std::fs::rename(&tmp, to).unwrap();
}

struct Tls {
    port: u16,
    health_port: u16,
    metrics: Metrics,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: JoinHandle<anyhow::Result<()>>,
    _dir: tempfile::TempDir,
}

impl Tls {
    async fn start(cert: &Path, key: &Path, client_ca: Option<&Path>) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let health = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let health_port = health.local_addr().unwrap().port();
        let metrics = Metrics::new();
        let config = Config {
            store: RedbStore::open(dir.path()).unwrap().into(),
            clock: Arc::new(TokioClock::starting_now()),
            metrics: metrics.clone(),
            authorizer: Authorizer::default(),
            authenticator: None,
            rate: (0, 0),
            lease_policy: Default::default(),
        };
        let listening = Listening {
            tls: Some(ServerTls::load(cert, key, client_ca).unwrap()),
            health: Some(health),
            driver_thread: false,
        };
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(serve_with(config, listener, listening, async {
            let _ = stopped.await;
        }));
        Self {
            port,
            health_port,
            metrics,
            stop: Some(stop),
            task,
            _dir: dir,
        }
    }

    async fn stop(mut self) {
        let _ = self.stop.take().unwrap().send(());
        tokio::time::timeout(Duration::from_secs(10), self.task)
            .await
            .expect("the scheduler stops")
            .unwrap()
            .unwrap();
    }

    /// The value of a metric without labels.
    fn metric(&self, name: &str) -> i64 {
        self.metrics
            .encode()
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{name} ")))
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no {name} in the metrics"))
    }

    /// Waits (bounded) until a metric reaches a value: the event, not a sleep.
    async fn until_metric(&self, name: &str, want: i64) {
        tokio::time::timeout(Duration::from_secs(20), async {
            while self.metric(name) != want {
                // The pause between two looks at the metric.
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
        .await
        .unwrap_or_else(|_| panic!("{name} stayed at {} (want {want})", self.metric(name)));
    }
}

/// Lists sources with an SDK client trusting `ca` (none: the system roots only).
async fn list(port: u16, ca: Option<&str>) -> Result<(), Error> {
    let mut builder = Client::builder(format!("https://localhost:{port}"));
    if let Some(ca) = ca {
        builder = builder.ca_certificate_pem(read(ca));
    }
    builder.connect().await?.list_sources("").await.map(|_| ())
}

/// An SDK client trusting `ca.pem` and presenting the client certificate `cert` with `key`.
async fn client_with(port: u16, cert: &str, key: &str) -> Result<Client, Error> {
    Client::builder(format!("https://localhost:{port}"))
        .ca_certificate_pem(read("ca.pem"))
        .client_identity(read(cert), read(key))
        .connect()
        .await
}

/// Lists sources on a new connection presenting the client certificate `cert` with `key`.
async fn list_as(port: u16, cert: &str, key: &str) -> Result<(), Error> {
    client_with(port, cert, key)
        .await?
        .list_sources("")
        .await
        .map(|_| ())
}

fn assert_untrusted(r: Result<(), Error>) {
    let err = r.expect_err("refused");
    assert!(matches!(err, Error::Unavailable { .. }), "{err:?}");
    assert!(err.to_string().contains("certificate"), "{err}");
}

#[tokio::test]
async fn a_tls_scheduler_serves_clients_trusting_its_ca_and_no_others() {
    let s = Tls::start(&data("server.pem"), &data("server.key"), None).await;
    list(s.port, Some("ca.pem")).await.unwrap();
    assert_untrusted(list(s.port, None).await);
    assert_untrusted(list(s.port, Some("ca2.pem")).await);

    // Plaintext on the TLS port gets nothing.
    let plain = async {
        Client::connect(format!("http://127.0.0.1:{}", s.port))
            .await?
            .list_sources("")
            .await
    };
    let err = tokio::time::timeout(Duration::from_secs(20), plain)
        .await
        .expect("refused at once, not hung")
        .unwrap_err();
    assert!(matches!(err, Error::Unavailable { .. }), "{err:?}");
    s.stop().await;
}

#[tokio::test]
async fn the_plaintext_health_port_answers_serving_while_the_tls_port_serves_and_stops_with_it() {
    let s = Tls::start(&data("server.pem"), &data("server.key"), None).await;
    let url = format!("http://127.0.0.1:{}", s.health_port);
    let channel = Endpoint::from_shared(url.clone())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut health = HealthClient::new(channel.clone());
    for service in ["", "snapgate.v1.SourceService", "snapgate.v1.AgentService"] {
        let status = health
            .check(HealthCheckRequest {
                service: service.into(),
            })
            .await
            .unwrap()
            .into_inner()
            .status;
        assert_eq!(status, ServingStatus::Serving as i32, "{service:?}");
    }
    list(s.port, Some("ca.pem")).await.unwrap();
    // Health only: the plaintext port serves nothing else.
    let err = Client::connect(url.clone())
        .await
        .unwrap()
        .list_sources("")
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            Error::Refused {
                code: tonic::Code::Unimplemented,
                ..
            }
        ),
        "{err:?}"
    );
    drop((health, channel));
    s.stop().await;
    let gone = Endpoint::from_shared(url).unwrap().connect().await;
    assert!(gone.is_err(), "the health port closes with the scheduler");
}

#[tokio::test]
async fn a_replaced_certificate_is_served_to_new_connections_without_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = (dir.path().join("tls.crt"), dir.path().join("tls.key"));
    replace("server.pem", &cert);
    replace("server.key", &key);
    let s = Tls::start(&cert, &key, None).await;
    list(s.port, Some("ca.pem")).await.unwrap();
    assert_untrusted(list(s.port, Some("ca2.pem")).await);

    // A connection made before the rotation keeps working.
    let before = Client::builder(format!("https://localhost:{}", s.port))
        .ca_certificate_pem(read("ca.pem"))
        .connect()
        .await
        .unwrap();

    // cert-manager rotates the pair (a new CA, even).
    replace("server2.pem", &cert);
    replace("server2.key", &key);
    list(s.port, Some("ca2.pem")).await.unwrap();
    assert_untrusted(list(s.port, Some("ca.pem")).await);
    before.list_sources("").await.unwrap();

    // A bad new pair is refused and the last good one kept.
    std::fs::write(&cert, "not a certificate").unwrap();
    list(s.port, Some("ca2.pem")).await.unwrap();
    s.stop().await;
}

/// A raw tonic client trusting `ca.pem`, presenting `identity` (certificate, key) if any.
async fn health_check(port: u16, identity: Option<(&str, &str)>) -> Result<(), String> {
    let mut tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(read("ca.pem")))
        .domain_name("localhost");
    if let Some((cert, key)) = identity {
        tls = tls.identity(Identity::from_pem(read(cert), read(key)));
    }
    let channel = Endpoint::from_shared(format!("https://127.0.0.1:{port}"))
        .unwrap()
        .tls_config(tls)
        .unwrap()
        .connect()
        .await
        .map_err(|e| format!("{e:?}"))?;
    HealthClient::new(channel)
        .check(HealthCheckRequest::default())
        .await
        .map(|_| ())
        .map_err(|e| format!("{e:?}"))
}

#[tokio::test]
async fn with_a_client_ca_only_clients_with_a_certificate_from_it_are_served() {
    let s = Tls::start(
        &data("server.pem"),
        &data("server.key"),
        Some(&data("client-ca.pem")),
    )
    .await;
    health_check(s.port, Some(("client.pem", "client.key")))
        .await
        .unwrap();
    let without = health_check(s.port, None).await.unwrap_err();
    assert!(
        without.contains("Certificate") || without.contains("certificate"),
        "{without}"
    );
    // A certificate from another CA is refused too.
    health_check(s.port, Some(("client2.pem", "client2.key")))
        .await
        .unwrap_err();
    // The SDK: served with a certificate from the client CA, refused without or with another.
    list_as(s.port, "client.pem", "client.key").await.unwrap();
    list(s.port, Some("ca.pem")).await.unwrap_err();
    list_as(s.port, "client2.pem", "client2.key")
        .await
        .unwrap_err();
    // The plaintext health port asks for nothing.
    let mut health = HealthClient::new(
        Endpoint::from_shared(format!("http://127.0.0.1:{}", s.health_port))
            .unwrap()
            .connect()
            .await
            .unwrap(),
    );
    health.check(HealthCheckRequest::default()).await.unwrap();
    drop(health);
    s.stop().await;
}

#[tokio::test]
async fn a_replaced_client_ca_is_used_for_new_connections_and_a_broken_one_keeps_the_old() {
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("client-ca.crt");
    replace("client-ca.pem", &ca);
    let s = Tls::start(&data("server.pem"), &data("server.key"), Some(&ca)).await;
    list_as(s.port, "client.pem", "client.key").await.unwrap();
    list_as(s.port, "client2.pem", "client2.key")
        .await
        .unwrap_err();
    // A connection made before the rotation keeps working.
    let before = client_with(s.port, "client.pem", "client.key")
        .await
        .unwrap();
    before.list_sources("").await.unwrap();

    // The client CA is rotated: new connections need a certificate from the new CA.
    replace("client-ca2.pem", &ca);
    list_as(s.port, "client2.pem", "client2.key").await.unwrap();
    list_as(s.port, "client.pem", "client.key")
        .await
        .unwrap_err();
    before.list_sources("").await.unwrap();

    // A bad new CA is refused (logged) and the last good one kept.
    std::fs::write(&ca, "not a certificate").unwrap();
    list_as(s.port, "client2.pem", "client2.key").await.unwrap();
    list_as(s.port, "client.pem", "client.key")
        .await
        .unwrap_err();
    s.stop().await;
}

/// A TCP connection to the scheduler from the local address `ip` (any of 127.0.0.0/8).
async fn connect_from(ip: &str, port: u16) -> tokio::net::TcpStream {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind(format!("{ip}:0").parse().unwrap()).unwrap();
    socket
        .connect(format!("127.0.0.1:{port}").parse().unwrap())
        .await
        .unwrap()
}

#[tokio::test]
async fn a_peer_holding_idle_connections_gets_only_its_share_of_handshakes_and_others_are_served() {
    let s = Tls::start(&data("server.pem"), &data("server.key"), None).await;
    // One peer opens more idle connections than there are handshake slots in all, and never
    // sends a ClientHello.
    let opened = MAX_HANDSHAKES + 44;
    let mut idle = Vec::new();
    for _ in 0..opened {
        idle.push(connect_from("127.0.0.2", s.port).await);
    }
    let refused = opened - MAX_HANDSHAKES_PER_IP;
    s.until_metric(
        "snapgate_tls_handshakes_refused_total",
        i64::try_from(refused).unwrap(),
    )
    .await;
    assert_eq!(
        s.metric("snapgate_tls_handshakes"),
        i64::try_from(MAX_HANDSHAKES_PER_IP).unwrap()
    );
    // Those past its bound are closed at once (their reads end), well before the handshake
    // deadline that closes the others.
    let started = tokio::time::Instant::now();
    let mut reads: futures::stream::FuturesUnordered<_> = idle
        .iter_mut()
        .map(|conn| async move {
            let mut buf = [0u8; 1];
            let _ = conn.read(&mut buf).await;
        })
        .collect();
    for _ in 0..refused {
        tokio::time::timeout(
            Duration::from_secs(20),
            futures::StreamExt::next(&mut reads),
        )
        .await
        .expect("the refused connections are closed")
        .unwrap();
    }
    assert!(
        started.elapsed() < HANDSHAKE_TIMEOUT,
        "{:?}",
        started.elapsed()
    );
    drop(reads);

    // Another peer's TLS call goes through while every handshake the first one holds is still
    // in flight: it waited for none of them to time out.
    list(s.port, Some("ca.pem")).await.unwrap();
    assert_eq!(
        s.metric("snapgate_tls_handshakes"),
        i64::try_from(MAX_HANDSHAKES_PER_IP).unwrap()
    );
    drop(idle);
    s.until_metric("snapgate_tls_handshakes", 0).await;
    s.stop().await;
}

/// A TLS handshake as a client trusting `ca.pem` (no HTTP/2 on top).
async fn tls_handshake(port: u16) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
    use rustls::pki_types::pem::PemObject as _;
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls::pki_types::CertificateDer::pem_slice_iter(&read("ca.pem")) {
        roots.add(cert.unwrap()).unwrap();
    }
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec()];
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect("localhost".try_into().unwrap(), tcp)
        .await
        .unwrap()
}

#[tokio::test]
async fn past_the_bound_on_handshakes_in_flight_a_new_connection_waits_for_one_to_end() {
    tokio::time::pause();
    let s = Tls::start(&data("server.pem"), &data("server.key"), None).await;
    // Peers each holding their share of idle connections take every handshake slot.
    let mut idle = Vec::new();
    for peer in 0..MAX_HANDSHAKES / MAX_HANDSHAKES_PER_IP {
        let ip = format!("127.0.0.{}", peer + 2);
        for _ in 0..MAX_HANDSHAKES_PER_IP {
            idle.push(connect_from(&ip, s.port).await);
        }
    }
    s.until_metric(
        "snapgate_tls_handshakes",
        i64::try_from(MAX_HANDSHAKES).unwrap(),
    )
    .await;
    assert_eq!(s.metric("snapgate_tls_handshakes_refused_total"), 0);

    // A new client is not refused: its connection waits in the listen backlog until a slot
    // is free. Paused time moves on only once nothing else can happen, so the handshake
    // completes when the idle ones reach their deadline, not before.
    let started = tokio::time::Instant::now();
    let tls = tokio::time::timeout(Duration::from_secs(60), tls_handshake(s.port))
        .await
        .expect("served once a handshake slot is free");
    let waited = started.elapsed();
    assert!(
        waited >= HANDSHAKE_TIMEOUT - Duration::from_secs(1)
            && waited <= HANDSHAKE_TIMEOUT + Duration::from_secs(1),
        "served after {waited:?}"
    );
    drop((tls, idle));
    tokio::time::resume();
    s.stop().await;
}

#[tokio::test]
async fn a_connection_that_never_completes_tls_is_closed_within_the_handshake_deadline() {
    tokio::time::pause();
    let s = Tls::start(&data("server.pem"), &data("server.key"), None).await;
    let addr = format!("127.0.0.1:{}", s.port);
    let started = tokio::time::Instant::now();
    let mut silent = tokio::net::TcpStream::connect(&addr).await.unwrap();
    // The first bytes of a ClientHello, and nothing more.
    let mut half = tokio::net::TcpStream::connect(&addr).await.unwrap();
    half.write_all(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01])
        .await
        .unwrap();
    for conn in [&mut silent, &mut half] {
        let mut buf = [0u8; 64];
        let closed = tokio::time::timeout(Duration::from_secs(60), async {
            loop {
                match conn.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(_) => continue,
                }
            }
        })
        .await;
        assert!(closed.is_ok(), "still open a minute after connecting");
    }
    assert!(
        started.elapsed() <= HANDSHAKE_TIMEOUT + Duration::from_secs(1),
        "closed after {:?}",
        started.elapsed()
    );
    drop((silent, half));
    tokio::time::resume();
    // A real client is unaffected.
    list(s.port, Some("ca.pem")).await.unwrap();
    s.stop().await;
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
async fn a_driver_failure_shows_not_serving_on_the_health_port_which_stops_with_the_server() {
    let dir = tempfile::tempdir().unwrap();
    let armed = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let health = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let health_url = format!("http://{}", health.local_addr().unwrap());
    let config = Config {
        store: PanickingStore {
            inner: RedbStore::open(dir.path()).unwrap(),
            armed: armed.clone(),
        }
        .into(),
        clock: Arc::new(TokioClock::starting_now()),
        metrics: Metrics::new(),
        authorizer: Authorizer::default(),
        authenticator: None,
        rate: (0, 0),
        lease_policy: Default::default(),
    };
    let listening = Listening {
        tls: Some(ServerTls::load(&data("server.pem"), &data("server.key"), None).unwrap()),
        health: Some(health),
        driver_thread: false,
    };
    let task = tokio::spawn(serve_with(
        config,
        listener,
        listening,
        std::future::pending(),
    ));
    let channel = Endpoint::from_shared(health_url.clone())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let check = |service: &'static str| {
        let mut health = HealthClient::new(channel.clone());
        async move {
            health
                .check(HealthCheckRequest {
                    service: service.into(),
                })
                .await
                .unwrap()
                .into_inner()
                .status
        }
    };
    assert_eq!(
        check("snapgate.v1.SourceService").await,
        ServingStatus::Serving as i32
    );

    armed.store(true, std::sync::atomic::Ordering::SeqCst);
    let client = Client::builder(format!("https://localhost:{port}"))
        .ca_certificate_pem(read("ca.pem"))
        .connect()
        .await
        .unwrap();
    let apply = snapgate_proto::v1::ApplySourceRequest {
        namespace: "apps".into(),
        name: "db".into(),
        spec: Some(snapgate_proto::v1::SourceSpec {
            source_pvc: "data".into(),
            trigger: Some(snapgate_proto::v1::ReplicationSourceTrigger {
                schedule: None,
                manual: Some("first".into()),
            }),
            restic: Some(snapgate_proto::v1::ReplicationSourceResticSpec {
                copy_method: snapgate_proto::v1::CopyMethod::Snapshot as i32,
                repository: "restic-config".into(),
                ..Default::default()
            }),
            ..Default::default()
        }),
        expected_version: 0,
    };
    let err = client.sources().apply_source(apply).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unavailable, "{err:?}");
    // NOT_SERVING on the plaintext port too, while the server drains.
    tokio::time::timeout(Duration::from_secs(10), async {
        while check("snapgate.v1.SourceService").await != ServingStatus::NotServing as i32 {
            // The pause between two health checks.
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("NOT_SERVING on the health port");
    drop(channel);
    let exit = tokio::time::timeout(Duration::from_secs(10), task)
        .await
        .expect("serve returns once the driver died")
        .unwrap();
    assert!(exit.is_err());
    let gone = Endpoint::from_shared(health_url).unwrap().connect().await;
    assert!(gone.is_err(), "the health port closes with the scheduler");
}

#[test]
fn the_binary_refuses_a_bad_tls_file_naming_the_flag_and_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let empty = dir.path().join("tls.crt");
    std::fs::write(&empty, "").unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_snapgate-scheduler"))
        .arg("--tls-cert")
        .arg(&empty)
        .arg("--tls-key")
        .arg(data("server.key"))
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .args(["--listen", "127.0.0.1:0", "--metrics-listen", "127.0.0.1:0"])
        .env_remove("SNAPGATE_CLIENT_CA")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!(
            "--tls-cert {}: no certificate found in the PEM",
            empty.display()
        )),
        "{stderr}"
    );
}
