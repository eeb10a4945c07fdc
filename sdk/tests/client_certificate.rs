//! Mutual TLS from the SDK and the CLI against a real scheduler with `--client-ca`, over
//! loopback: a client certificate chained to that CA is served; none, or one from another CA,
//! is refused; a certificate or key that cannot be used is refused before connecting, naming
//! it (and, in the CLI, the flag and the file); `--client-cert` and `--client-key` go together.

use std::{
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use snapgate_proto::clock::TokioClock;
use snapgate_scheduler::{
    Config, Listening, identity::Authorizer, metrics::Metrics, serve_with, store::RedbStore,
    tls::ServerTls,
};
use snapgate_sdk::{Client, Error};
use tokio::{net::TcpListener, task::JoinHandle};

fn data(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data/tls")
        .join(name)
}

fn read(name: &str) -> Vec<u8> {
    std::fs::read(data(name)).unwrap()
}

/// A scheduler serving TLS with the test server certificate and asking every client for a
/// certificate from `client-ca.pem`.
struct Mtls {
    port: u16,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: JoinHandle<anyhow::Result<()>>,
    _dir: tempfile::TempDir,
}

impl Mtls {
    async fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let config = Config {
            store: RedbStore::open(dir.path()).unwrap().into(),
            clock: Arc::new(TokioClock::starting_now()),
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
            stop: Some(stop),
            task,
            _dir: dir,
        }
    }

    fn url(&self) -> String {
        format!("https://localhost:{}", self.port)
    }

    async fn stop(mut self) {
        let _ = self.stop.take().unwrap().send(());
        tokio::time::timeout(Duration::from_secs(10), self.task)
            .await
            .expect("the scheduler stops")
            .unwrap()
            .unwrap();
    }
}

/// Lists sources trusting the test CA, presenting `identity` (certificate, key) if any.
async fn list(url: &str, identity: Option<(&str, &str)>) -> Result<(), Error> {
    let mut builder = Client::builder(url).ca_certificate_pem(read("ca.pem"));
    if let Some((cert, key)) = identity {
        builder = builder.client_identity(read(cert), read(key));
    }
    builder.connect().await?.list_sources("").await.map(|_| ())
}

#[tokio::test]
async fn the_sdk_is_served_with_a_certificate_from_the_client_ca_and_refused_without_one() {
    let s = Mtls::start().await;
    list(&s.url(), Some(("client.pem", "client.key")))
        .await
        .unwrap();
    for identity in [None, Some(("client2.pem", "client2.key"))] {
        let err = list(&s.url(), identity).await.unwrap_err();
        assert!(
            matches!(err, Error::Unavailable { .. }),
            "{identity:?}: {err:?}"
        );
    }
    s.stop().await;
}

#[tokio::test]
async fn an_unusable_client_identity_or_ca_is_refused_before_connecting_naming_it() {
    let url = "https://localhost:1";
    let invalid = |builder: snapgate_sdk::ClientBuilder| match builder.connect_lazy() {
        Err(Error::InvalidEndpoint { message, .. }) => message,
        other => panic!("{other:?}"),
    };
    let message =
        invalid(Client::builder(url).client_identity(read("client.pem"), read("client2.key")));
    assert!(
        message.starts_with("client key: not the private key of the client certificate"),
        "{message}"
    );
    let message =
        invalid(Client::builder(url).client_identity(read("client.key"), read("client.key")));
    assert_eq!(
        message,
        "client certificate: no certificate found in the PEM"
    );
    let message = invalid(Client::builder(url).ca_certificate_pem(read("client.key")));
    assert_eq!(message, "CA certificate: no certificate found in the PEM");
    // A client certificate for a plaintext endpoint is a mistake.
    let message = invalid(
        Client::builder("http://localhost:1")
            .client_identity(read("client.pem"), read("client.key")),
    );
    assert!(message.contains("https://"), "{message}");
    // The key never shows in Debug.
    let shown = format!(
        "{:?}",
        Client::builder(url).client_identity(read("client.pem"), read("client.key"))
    );
    assert!(shown.contains("client_identity: true"), "{shown}");
    assert!(!shown.contains("PRIVATE KEY"), "{shown}");
}

struct Run {
    code: Option<i32>,
    stderr: String,
}

async fn snapgate(url: &str, args: &[&str], env: &[(&str, PathBuf)]) -> Run {
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_snapgate"));
    command.args(["--server", url]);
    if !args.contains(&"--ca-file") {
        command.arg("--ca-file").arg(data("ca.pem"));
    }
    let out = command
        .args(args)
        .env_remove("SNAPGATE_TOKEN")
        .env_remove("SNAPGATE_TOKEN_FILE")
        .env_remove("SNAPGATE_CLIENT_CERT")
        .env_remove("SNAPGATE_CLIENT_KEY")
        .envs(env.iter().map(|(k, v)| (*k, v.as_os_str())))
        .output()
        .await
        .unwrap();
    Run {
        code: out.status.code(),
        stderr: String::from_utf8(out.stderr).unwrap(),
    }
}

fn arg(name: &str) -> String {
    data(name).display().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_presents_client_cert_and_client_key_and_names_the_flag_and_file_of_a_bad_one() {
    let s = Mtls::start().await;
    let url = s.url();
    let (cert, key) = (arg("client.pem"), arg("client.key"));

    let run = snapgate(
        &url,
        &["--client-cert", &cert, "--client-key", &key, "list"],
        &[],
    )
    .await;
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    // The same from the environment.
    let run = snapgate(
        &url,
        &["list"],
        &[
            ("SNAPGATE_CLIENT_CERT", data("client.pem")),
            ("SNAPGATE_CLIENT_KEY", data("client.key")),
        ],
    )
    .await;
    assert_eq!(run.code, Some(0), "{}", run.stderr);

    // Without a certificate, or with one from another CA: refused by the scheduler.
    let run = snapgate(&url, &["list"], &[]).await;
    assert_eq!(run.code, Some(1), "{}", run.stderr);
    assert!(run.stderr.contains("unavailable"), "{}", run.stderr);
    let (other_cert, other_key) = (arg("client2.pem"), arg("client2.key"));
    let run = snapgate(
        &url,
        &[
            "--client-cert",
            &other_cert,
            "--client-key",
            &other_key,
            "list",
        ],
        &[],
    )
    .await;
    assert_eq!(run.code, Some(1), "{}", run.stderr);
    assert!(run.stderr.contains("unavailable"), "{}", run.stderr);

    // One without the other.
    let run = snapgate(&url, &["--client-cert", &cert, "list"], &[]).await;
    assert_eq!(run.code, Some(2), "{}", run.stderr);
    assert!(run.stderr.contains("--client-key <FILE>"), "{}", run.stderr);
    let run = snapgate(&url, &["--client-key", &key, "list"], &[]).await;
    assert_eq!(run.code, Some(2), "{}", run.stderr);
    assert!(
        run.stderr.contains("--client-cert <FILE>"),
        "{}",
        run.stderr
    );

    // A file that cannot be read or used: the flag and the file are named.
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing.pem").display().to_string();
    let cases = [
        (
            [missing.as_str(), key.as_str()],
            format!("--client-cert {missing}: cannot read"),
        ),
        (
            [cert.as_str(), missing.as_str()],
            format!("--client-key {missing}: cannot read"),
        ),
        (
            [key.as_str(), key.as_str()],
            format!("--client-cert {key}: no certificate found in the PEM"),
        ),
        (
            [cert.as_str(), cert.as_str()],
            format!("--client-key {cert}: no private key found in the PEM"),
        ),
        (
            [cert.as_str(), other_key.as_str()],
            format!("--client-key {other_key}: not the private key of the client certificate"),
        ),
    ];
    for ([c, k], says) in cases {
        let run = snapgate(&url, &["--client-cert", c, "--client-key", k, "list"], &[]).await;
        assert_eq!(run.code, Some(1), "{}", run.stderr);
        assert!(run.stderr.contains(&says), "want {says:?}: {}", run.stderr);
    }
    let run = snapgate(&url, &["--ca-file", &key, "list"], &[]).await;
    assert!(
        run.stderr
            .contains(&format!("--ca-file {key}: no certificate found in the PEM")),
        "{}",
        run.stderr
    );
    s.stop().await;
}
