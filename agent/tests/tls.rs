//! The agent's link over TLS: the scheduler is verified against `--ca-file`, every connection
//! carries the bearer token of `--token-file` as the file holds it then, and a scheduler the CA
//! does not vouch for gets nothing.

use std::{path::Path, time::Duration};

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

/// A TLS scheduler stand-in with `cert`/`key`; the headers it saw arrive on the receiver.
async fn tls_recorder(
    cert: &str,
    key: &str,
) -> (
    u16,
    mpsc::UnboundedReceiver<String>,
    tokio::sync::oneshot::Sender<()>,
) {
    let identity = tonic::transport::Identity::from_pem(
        std::fs::read(data(cert)).unwrap(),
        std::fs::read(data(key)).unwrap(),
    );
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let (seen_tx, seen_rx) = mpsc::unbounded_channel();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(
        tonic::transport::Server::builder()
            .tls_config(tonic::transport::ServerTlsConfig::new().identity(identity))
            .unwrap()
            .add_service(AgentServiceServer::new(Recorder(seen_tx)))
            .serve_with_incoming_shutdown(
                tokio_stream::wrappers::TcpListenerStream::new(listener),
                async {
                    let _ = stopped.await;
                },
            ),
    );
    (port, seen_rx, stop)
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
    };
    let scheduler = access
        .client_builder(&format!("https://localhost:{port}"))
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
    };
    let scheduler = access
        .client_builder(&format!("https://localhost:{port}"))
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
        token_file: None,
    }
    .client_builder("https://localhost:1")
    .unwrap_err();
    assert!(
        format!("{e:#}").contains("--ca-file /nonexistent/ca.pem: cannot read"),
        "{e:#}"
    );
    let e = SchedulerAccess {
        ca_file: None,
        token_file: Some("/nonexistent/token".into()),
    }
    .client_builder("http://localhost:1")
    .unwrap_err();
    assert!(format!("{e:#}").contains("/nonexistent/token"), "{e:#}");
    // A CA for a plaintext scheduler is a mistake.
    let e = SchedulerAccess {
        ca_file: Some(data("ca.pem")),
        token_file: None,
    }
    .client_builder("http://localhost:1")
    .unwrap_err();
    assert!(format!("{e:#}").contains("https://"), "{e:#}");
}
