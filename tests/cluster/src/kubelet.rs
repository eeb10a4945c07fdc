//! The kubelet's log endpoint, played: HTTPS on loopback with the serving certificate
//! `scripts/cluster` issued for the stand-in, client certificates required (the API server
//! presents its kubelet client certificate), `GET /containerLogs/{ns}/{pod}/{container}` with
//! `tailLines` and `limitBytes` applied as the kubelet applies them.

use std::{
    collections::HashMap,
    convert::Infallible,
    path::Path,
    sync::{Arc, Mutex},
};

use anyhow::Context as _;
use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use rustls::{
    RootCertStore, ServerConfig,
    pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject as _},
    server::WebPkiClientVerifier,
};
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;

/// What one pod does when the stand-in kubelet runs it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodRun {
    /// The exit code of its containers: 0 makes the pod `Succeeded`, anything else `Failed`.
    pub exit_code: i32,
    /// What its first container logs (the others log nothing).
    pub log: String,
    /// It keeps running until it is deleted (then it exits 143, as on SIGTERM).
    pub until_deleted: bool,
}

impl PodRun {
    /// Exits 0 after logging these lines.
    pub fn succeed<S: AsRef<str>>(lines: impl IntoIterator<Item = S>) -> Self {
        Self {
            exit_code: 0,
            log: join_lines(lines),
            until_deleted: false,
        }
    }

    /// Exits with `code` (not 0) after logging these lines.
    pub fn fail<S: AsRef<str>>(code: i32, lines: impl IntoIterator<Item = S>) -> Self {
        assert_ne!(code, 0, "a failing pod exits non-zero");
        Self {
            exit_code: code,
            log: join_lines(lines),
            until_deleted: false,
        }
    }

    /// Keeps running after logging these lines, until the pod is deleted.
    pub fn until_deleted<S: AsRef<str>>(lines: impl IntoIterator<Item = S>) -> Self {
        Self {
            exit_code: 143,
            log: join_lines(lines),
            until_deleted: true,
        }
    }
}

fn join_lines<S: AsRef<str>>(lines: impl IntoIterator<Item = S>) -> String {
    lines
        .into_iter()
        .map(|l| format!("{}\n", l.as_ref()))
        .collect()
}

/// One log read the API server made of the stand-in kubelet.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LogRead {
    /// `namespace/pod/container`.
    pub container: String,
    /// The query string as the API server sent it (`tailLines=...&limitBytes=...`).
    pub query: String,
    /// The HTTP status answered.
    pub status: u16,
}

/// The logs of the containers the stand-in ran, by `namespace/pod/container`, and the reads
/// made of them.
#[derive(Clone, Default)]
pub(crate) struct Logs {
    logs: Arc<Mutex<HashMap<String, String>>>,
    reads: Arc<Mutex<Vec<LogRead>>>,
}

impl Logs {
    pub(crate) fn set(&self, ns: &str, pod: &str, container: &str, log: String) {
        self.logs
            .lock()
            .unwrap()
            .insert(format!("{ns}/{pod}/{container}"), log);
    }

    pub(crate) fn reads(&self) -> Vec<LogRead> {
        self.reads.lock().unwrap().clone()
    }

    fn answer(&self, path: &str, query: &str) -> (StatusCode, String) {
        let Some(key) = path.strip_prefix("/containerLogs/") else {
            return (
                StatusCode::NOT_FOUND,
                format!("the stand-in kubelet serves no {path}"),
            );
        };
        let found = self.logs.lock().unwrap().get(key).cloned();
        let (status, body) = match found {
            Some(log) => (StatusCode::OK, select(&log, query)),
            None => (
                StatusCode::NOT_FOUND,
                format!("container {key} is not known to the stand-in kubelet"),
            ),
        };
        self.reads.lock().unwrap().push(LogRead {
            container: key.to_owned(),
            query: query.to_owned(),
            status: status.as_u16(),
        });
        (status, body)
    }
}

/// The kubelet's selection: the last `tailLines` lines, then at most `limitBytes` bytes of
/// those from their start.
fn select(log: &str, query: &str) -> String {
    let param = |name: &str| {
        query
            .split('&')
            .filter_map(|kv| kv.split_once('='))
            .find(|(k, _)| *k == name)
            .and_then(|(_, v)| v.parse::<usize>().ok())
    };
    let mut text = log.to_owned();
    if let Some(n) = param("tailLines") {
        let lines: Vec<&str> = log.split_inclusive('\n').collect();
        text = lines[lines.len().saturating_sub(n)..].concat();
    }
    if let Some(limit) = param("limitBytes")
        && text.len() > limit
    {
        let mut end = limit;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
    }
    text
}

fn read_pem(path: &Path) -> anyhow::Result<Vec<u8>> {
    std::fs::read(path).with_context(|| format!("reading {}", path.display()))
}

/// Serves the log endpoint on 127.0.0.1 (a free port, returned) until the task is aborted.
pub(crate) async fn serve(
    cert: &Path,
    key: &Path,
    client_ca: &Path,
    logs: Logs,
) -> anyhow::Result<(u16, JoinHandle<()>)> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let certs = CertificateDer::pem_slice_iter(&read_pem(cert)?)
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("{}: not PEM certificates", cert.display()))?;
    let key = PrivateKeyDer::from_pem_slice(&read_pem(key)?)
        .with_context(|| format!("{}: not a PEM private key", key.display()))?;
    let mut roots = RootCertStore::empty();
    for ca in CertificateDer::pem_slice_iter(&read_pem(client_ca)?) {
        roots.add(ca.with_context(|| format!("{}: not PEM", client_ca.display()))?)?;
    }
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .build()
        .context("the client certificate verifier")?;
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_client_cert_verifier(verifier)
        .with_single_cert(certs, key)
        .context("the kubelet serving certificate")?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let acceptor = TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let port = listener.local_addr()?.port();
    let task = tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let acceptor = acceptor.clone();
            let logs = logs.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(stream).await else {
                    return;
                };
                let service = service_fn(move |req: Request<hyper::body::Incoming>| {
                    let (status, body) =
                        logs.answer(req.uri().path(), req.uri().query().unwrap_or(""));
                    async move {
                        Ok::<_, Infallible>(
                            Response::builder()
                                .status(status)
                                .header(http::header::CONTENT_TYPE, "text/plain")
                                .body(Full::new(Bytes::from(body)))
                                .expect("a valid response"),
                        )
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tls), service)
                    .await;
            });
        }
    });
    Ok((port, task))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tail_lines_then_limit_bytes_select_as_the_kubelet_does() {
        let log = "one\ntwo\nthree\n";
        assert_eq!(select(log, ""), log);
        assert_eq!(select(log, "tailLines=2"), "two\nthree\n");
        assert_eq!(select(log, "tailLines=9"), log);
        assert_eq!(select(log, "tailLines=2&limitBytes=5"), "two\nt");
        assert_eq!(select(log, "limitBytes=3&follow=false"), "one");
        assert_eq!(
            select("é\n", "limitBytes=1"),
            "",
            "cut at a character boundary"
        );
    }

    #[test]
    fn pod_runs_log_one_line_each() {
        assert_eq!(PodRun::succeed(["a", "b"]).log, "a\nb\n");
        assert_eq!(PodRun::fail(2, ["x"]).exit_code, 2);
    }
}
