//! TLS on the gRPC port: rustls (ring), ALPN `h2`, the certificate re-read when its files
//! change, and optionally mutual TLS.
//!
//! ```text
//!  TcpListener ─accept─► reload_if_changed (stat cert + key) ─► handshake task ─┐
//!                                    │                       (HANDSHAKE_TIMEOUT) │
//!                     ReloadingCert ◄┘ (RwLock<Arc<CertifiedKey>>)               ▼
//!  tonic ◄── HandshakeDeadline(TlsStream) ◄── (the rest of the deadline for the HTTP/2 preface)
//! ```
//!
//! cert-manager rotates a certificate in place through a Secret volume; every new connection
//! stats the two files first (two `stat` calls) and, when either changed, reads and checks the
//! new pair. A bad pair (half-written, mismatched) is logged and the old one kept; connections
//! already open keep the certificate they were made with.

use std::{
    fmt, io,
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::{Arc, Mutex, PoisonError, RwLock},
    time::SystemTime,
};

use anyhow::Context as _;
use futures::Stream;
use rustls::{
    RootCertStore, ServerConfig,
    crypto::CryptoProvider,
    pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject as _},
    server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier},
    sign::CertifiedKey,
};
use tokio::{
    net::{TcpListener, TcpStream},
    task::JoinSet,
    time::Instant,
};
use tokio_rustls::{TlsAcceptor, server::TlsStream};
use tracing::{debug, info, warn};

use crate::handshake::{HANDSHAKE_TIMEOUT, HandshakeDeadline};

/// A TLS connection that completed its handshake, with what is left of its deadline for the
/// HTTP/2 preface.
pub type TlsConnection = HandshakeDeadline<TlsStream<TcpStream>>;

/// The scheduler's TLS settings: a server certificate that follows its files, and optionally
/// the CA that client certificates must chain to. Cheap to clone.
#[derive(Clone)]
pub struct ServerTls {
    acceptor: TlsAcceptor,
    cert: Arc<ReloadingCert>,
}

impl fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServerTls")
            .field("cert", &self.cert.cert_path)
            .field("key", &self.cert.key_path)
            .finish_non_exhaustive()
    }
}

impl ServerTls {
    /// Reads the PEM certificate chain (`--tls-cert`) and private key (`--tls-key`), and the
    /// client CA (`--client-ca`) when given: with it, every client must present a certificate
    /// chaining to that CA; without it, none is asked for. Errors name the flag and the file.
    pub fn load(cert: &Path, key: &Path, client_ca: Option<&Path>) -> anyhow::Result<Self> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let fingerprint = Fingerprint::of(cert, key);
        let first = load_pair(cert, key, &provider)?;
        let resolver = Arc::new(ReloadingCert {
            cert_path: cert.to_owned(),
            key_path: key.to_owned(),
            provider: provider.clone(),
            current: RwLock::new(Arc::new(first)),
            seen: Mutex::new(fingerprint),
            failed: Mutex::new(None),
        });
        let builder = ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .context("TLS protocol versions")?;
        let builder = match client_ca {
            None => builder.with_no_client_auth(),
            Some(path) => {
                let mut roots = RootCertStore::empty();
                for cert in read_certs("client-ca", path)? {
                    roots.add(cert).map_err(|e| {
                        anyhow::anyhow!("--client-ca {}: not a usable CA: {e}", path.display())
                    })?;
                }
                let verifier =
                    WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                        .build()
                        .map_err(|e| anyhow::anyhow!("--client-ca {}: {e}", path.display()))?;
                builder.with_client_cert_verifier(verifier)
            }
        };
        let mut config = builder.with_cert_resolver(resolver.clone());
        config.alpn_protocols = vec![b"h2".to_vec()];
        Ok(Self {
            acceptor: TlsAcceptor::from(Arc::new(config)),
            cert: resolver,
        })
    }

    /// Re-reads the certificate and key if either file changed since last looked at (size,
    /// modification time, inode). Returns whether a new pair is now served; a pair that does
    /// not load is logged once and the old one kept.
    pub fn reload_if_changed(&self) -> bool {
        self.cert.reload_if_changed()
    }

    /// The certificate chain served to new connections (leaf first).
    pub fn current_chain(&self) -> Vec<CertificateDer<'static>> {
        self.cert.current().cert.clone()
    }

    /// The connections of `listener`, each through its TLS handshake. Handshakes run
    /// concurrently; one that has not finished within [`HANDSHAKE_TIMEOUT`] of the connection
    /// is dropped, and the HTTP/2 preface must then arrive within what is left of it.
    pub fn incoming(
        self,
        listener: TcpListener,
    ) -> impl Stream<Item = io::Result<TlsConnection>> + Send + 'static {
        struct State {
            listener: TcpListener,
            tls: ServerTls,
            handshakes: JoinSet<Option<TlsConnection>>,
        }
        let state = State {
            listener,
            tls: self,
            handshakes: JoinSet::new(),
        };
        futures::stream::unfold(state, |mut st| async move {
            loop {
                tokio::select! {
                    accepted = st.listener.accept() => match accepted {
                        Ok((tcp, peer)) => {
                            st.tls.reload_if_changed();
                            st.handshakes.spawn(handshake(st.tls.acceptor.clone(), tcp, peer));
                        }
                        Err(e) => return Some((Err(e), st)),
                    },
                    Some(done) = st.handshakes.join_next(), if !st.handshakes.is_empty() => {
                        if let Ok(Some(conn)) = done {
                            return Some((Ok(conn), st));
                        }
                    }
                }
            }
        })
    }
}

/// One TLS handshake, bounded by the connection's deadline.
async fn handshake(
    acceptor: TlsAcceptor,
    tcp: TcpStream,
    peer: SocketAddr,
) -> Option<TlsConnection> {
    let started = Instant::now();
    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
        Ok(Ok(tls)) => {
            let left = HANDSHAKE_TIMEOUT.saturating_sub(started.elapsed());
            Some(HandshakeDeadline::with_timeout(tls, left))
        }
        Ok(Err(e)) => {
            debug!(%peer, error = %e, "TLS handshake failed");
            None
        }
        Err(_) => {
            debug!(
                %peer,
                "no TLS handshake within {}s of connecting; closed",
                HANDSHAKE_TIMEOUT.as_secs()
            );
            None
        }
    }
}

/// What identifies a version of the two files without reading them.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Fingerprint(Option<FileStamp>, Option<FileStamp>);

#[derive(Debug, Clone, PartialEq, Eq)]
struct FileStamp {
    len: u64,
    modified: Option<SystemTime>,
    inode: u64,
}

impl FileStamp {
    fn of(path: &Path) -> Option<Self> {
        // Follows symlinks: a Secret volume swaps its `..data` link on rotation.
        let meta = std::fs::metadata(path).ok()?;
        #[cfg(unix)]
        let inode = std::os::unix::fs::MetadataExt::ino(&meta);
        #[cfg(not(unix))]
        let inode = 0;
        Some(Self {
            len: meta.len(),
            modified: meta.modified().ok(),
            inode,
        })
    }
}

impl Fingerprint {
    fn of(cert: &Path, key: &Path) -> Self {
        Self(FileStamp::of(cert), FileStamp::of(key))
    }
}

/// The certificate resolver: always the last pair that loaded.
struct ReloadingCert {
    cert_path: PathBuf,
    key_path: PathBuf,
    provider: Arc<CryptoProvider>,
    current: RwLock<Arc<CertifiedKey>>,
    /// The files of the pair served.
    seen: Mutex<Fingerprint>,
    /// The files of the last pair that did not load, and when: retried at most every
    /// [`RETRY_FAILED_LOAD`].
    failed: Mutex<Option<(Fingerprint, std::time::Instant)>>,
}

/// How often a changed pair that did not load is read again (while it stays as it is).
const RETRY_FAILED_LOAD: std::time::Duration = std::time::Duration::from_secs(10);

impl fmt::Debug for ReloadingCert {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReloadingCert")
            .field("cert", &self.cert_path)
            .field("key", &self.key_path)
            .finish_non_exhaustive()
    }
}

impl ReloadingCert {
    fn current(&self) -> Arc<CertifiedKey> {
        self.current
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    fn reload_if_changed(&self) -> bool {
        let now = Fingerprint::of(&self.cert_path, &self.key_path);
        {
            let seen = self.seen.lock().unwrap_or_else(PoisonError::into_inner);
            if *seen == now {
                return false;
            }
        }
        {
            let failed = self.failed.lock().unwrap_or_else(PoisonError::into_inner);
            if failed
                .as_ref()
                .is_some_and(|(f, at)| *f == now && at.elapsed() < RETRY_FAILED_LOAD)
            {
                return false;
            }
        }
        match load_pair(&self.cert_path, &self.key_path, &self.provider) {
            Ok(pair) => {
                // Only a pair that loaded counts as seen: a read that failed (a half-written
                // rotation, a transient error) is tried again on the next connection.
                *self.seen.lock().unwrap_or_else(PoisonError::into_inner) = now;
                *self.current.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(pair);
                info!(
                    cert = %self.cert_path.display(),
                    key = %self.key_path.display(),
                    "TLS certificate reloaded"
                );
                true
            }
            Err(e) => {
                *self.failed.lock().unwrap_or_else(PoisonError::into_inner) =
                    Some((now, std::time::Instant::now()));
                warn!(
                    error = %format!("{e:#}"),
                    "the changed TLS certificate or key does not load; still serving the previous one"
                );
                false
            }
        }
    }
}

impl ResolvesServerCert for ReloadingCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current())
    }
}

/// Every certificate of a PEM file; at least one.
fn read_certs(flag: &str, path: &Path) -> anyhow::Result<Vec<CertificateDer<'static>>> {
    let pem =
        std::fs::read(path).with_context(|| format!("--{flag} {}: cannot read", path.display()))?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| anyhow::anyhow!("--{flag} {}: bad PEM: {e}", path.display()))?;
    if certs.is_empty() {
        anyhow::bail!(
            "--{flag} {}: no certificate found in the PEM",
            path.display()
        );
    }
    Ok(certs)
}

/// A certificate chain and its private key, checked to match.
fn load_pair(cert: &Path, key: &Path, provider: &CryptoProvider) -> anyhow::Result<CertifiedKey> {
    let chain = read_certs("tls-cert", cert)?;
    let pem =
        std::fs::read(key).with_context(|| format!("--tls-key {}: cannot read", key.display()))?;
    let der = PrivateKeyDer::from_pem_slice(&pem).map_err(|e| match e {
        rustls::pki_types::pem::Error::NoItemsFound => anyhow::anyhow!(
            "--tls-key {}: no private key found in the PEM",
            key.display()
        ),
        e => anyhow::anyhow!("--tls-key {}: bad PEM: {e}", key.display()),
    })?;
    CertifiedKey::from_der(chain, der, provider).map_err(|e| {
        anyhow::anyhow!(
            "--tls-cert {} / --tls-key {}: {e} (is the key the certificate's?)",
            cert.display(),
            key.display()
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(name: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../sdk/tests/data/tls")
            .join(name)
    }

    fn err(cert: &Path, key: &Path, ca: Option<&Path>) -> String {
        format!("{:#}", ServerTls::load(cert, key, ca).unwrap_err())
    }

    #[test]
    fn bad_files_are_named_with_their_flag() {
        let dir = tempfile::tempdir().unwrap();
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "").unwrap();
        let missing = dir.path().join("missing.pem");

        let e = err(&empty, &data("server.key"), None);
        assert!(
            e.contains(&format!(
                "--tls-cert {}: no certificate found in the PEM",
                empty.display()
            )),
            "{e}"
        );
        let e = err(&data("server.pem"), &empty, None);
        assert!(
            e.contains(&format!(
                "--tls-key {}: no private key found in the PEM",
                empty.display()
            )),
            "{e}"
        );
        let e = err(&missing, &data("server.key"), None);
        assert!(
            e.contains(&format!("--tls-cert {}: cannot read", missing.display())),
            "{e}"
        );
        let e = err(&data("server.pem"), &data("server2.key"), None);
        assert!(e.contains("--tls-cert") && e.contains("--tls-key"), "{e}");
        let e = err(&data("server.pem"), &data("server.key"), Some(&empty));
        assert!(
            e.contains(&format!(
                "--client-ca {}: no certificate found",
                empty.display()
            )),
            "{e}"
        );

        ServerTls::load(
            &data("server.pem"),
            &data("server.key"),
            Some(&data("client-ca.pem")),
        )
        .unwrap();
    }

    #[test]
    fn a_changed_pair_is_served_and_a_bad_one_keeps_the_old() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = (dir.path().join("tls.crt"), dir.path().join("tls.key"));
        std::fs::copy(data("server.pem"), &cert).unwrap();
        std::fs::copy(data("server.key"), &key).unwrap();
        let tls = ServerTls::load(&cert, &key, None).unwrap();
        let first = tls.current_chain();
        assert!(!tls.reload_if_changed(), "nothing changed");

        // Half a rotation: the certificate is new, the key still the old one.
        std::fs::copy(data("server2.pem"), &cert).unwrap();
        assert!(!tls.reload_if_changed());
        assert_eq!(tls.current_chain(), first, "the old pair is kept");

        std::fs::copy(data("server2.key"), &key).unwrap();
        assert!(tls.reload_if_changed());
        assert_ne!(tls.current_chain(), first);
        let pem = std::fs::read(data("server2.pem")).unwrap();
        let want = CertificateDer::pem_slice_iter(&pem)
            .next()
            .unwrap()
            .unwrap();
        assert_eq!(tls.current_chain()[0], want);
    }
}
