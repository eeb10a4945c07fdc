//! TLS on the gRPC port: rustls (ring), ALPN `h2`, the certificate and the client CA re-read
//! when their files change, and a bound on the handshakes in flight.
//!
//! ```text
//!  TcpListener ─accept (paused while MAX_HANDSHAKES are in flight)─► peer's IP has
//!      MAX_HANDSHAKES_PER_IP in flight? ── yes: closed at once (debug log, a metric)
//!          │ no
//!          ▼
//!  reload_if_changed (stat cert + key, client CA) ─► handshake task (HANDSHAKE_TIMEOUT) ─┐
//!        │ cert: ReloadingCert (RwLock<Arc<CertifiedKey>>)                              │
//!        │ client CA: a new TlsAcceptor with the new verifier                           ▼
//!  tonic ◄── HandshakeDeadline(TlsStream) ◄── (the rest of the deadline for the HTTP/2 preface)
//! ```
//!
//! cert-manager rotates a certificate in place through a Secret volume; every new connection
//! stats the files first (two `stat` calls, three with a client CA) and, when one changed, reads
//! and checks it again. A bad new file (half-written, a mismatched pair, no certificate) is
//! logged and the old one kept; connections already open keep the certificate they were made
//! with and the verification they passed.
//!
//! A client that connects and sends nothing holds a handshake for [`HANDSHAKE_TIMEOUT`]. At most
//! [`MAX_HANDSHAKES_PER_IP`] of them are in flight per peer address (more are closed at once,
//! counted in `snapgate_tls_handshakes_refused_total`), so one peer cannot take every one of
//! the [`MAX_HANDSHAKES`] in flight at once; past that, accepting pauses until a handshake ends
//! and the kernel's listen backlog holds the connections meanwhile.

use std::{
    collections::HashMap,
    fmt, io,
    net::{IpAddr, SocketAddr},
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
    server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier, danger::ClientCertVerifier},
    sign::CertifiedKey,
};
use tokio::{
    net::{TcpListener, TcpStream},
    task::JoinSet,
    time::Instant,
};
use tokio_rustls::{TlsAcceptor, server::TlsStream};
use tracing::{debug, info, warn};

use crate::{
    handshake::{HANDSHAKE_TIMEOUT, HandshakeDeadline},
    metrics::Metrics,
};

/// The most TLS handshakes in flight at once. Past it the listener is not accepted from until
/// one ends (done, failed, or timed out after [`HANDSHAKE_TIMEOUT`]); the kernel's listen
/// backlog holds new connections meanwhile.
pub const MAX_HANDSHAKES: usize = 256;

/// The most TLS handshakes in flight from one peer IP address: a connection past it is closed
/// at once, so that one peer holding idle connections cannot take [`MAX_HANDSHAKES`] for
/// itself.
pub const MAX_HANDSHAKES_PER_IP: usize = 16;

/// A TLS connection that completed its handshake, with what is left of its deadline for the
/// HTTP/2 preface.
pub type TlsConnection = HandshakeDeadline<TlsStream<TcpStream>>;

/// The scheduler's TLS settings: a server certificate that follows its files, and optionally
/// the CA that client certificates must chain to, also followed. Cheap to clone.
#[derive(Clone)]
pub struct ServerTls {
    /// The acceptor for new connections: rebuilt when the client CA changes.
    acceptor: Arc<RwLock<TlsAcceptor>>,
    cert: Arc<ReloadingCert>,
    client_ca: Option<Arc<ClientCa>>,
}

impl fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServerTls")
            .field("cert", &self.cert.cert_path)
            .field("key", &self.cert.key_path)
            .field("client_ca", &self.client_ca.as_ref().map(|ca| &ca.path))
            .finish_non_exhaustive()
    }
}

impl ServerTls {
    /// Reads the PEM certificate chain (`--tls-cert`) and private key (`--tls-key`), and the
    /// client CA (`--client-ca`) when given: with it, every client must present a certificate
    /// chaining to that CA; without it, none is asked for. Errors name the flag and the file.
    pub fn load(cert: &Path, key: &Path, client_ca: Option<&Path>) -> anyhow::Result<Self> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let watched = Watched::new(vec![cert.to_owned(), key.to_owned()]);
        let first = load_pair(cert, key, &provider)?;
        let resolver = Arc::new(ReloadingCert {
            cert_path: cert.to_owned(),
            key_path: key.to_owned(),
            provider: provider.clone(),
            current: RwLock::new(Arc::new(first)),
            watched,
        });
        let (client_ca, verifier) = match client_ca {
            None => (None, None),
            Some(path) => {
                let watched = Watched::new(vec![path.to_owned()]);
                let verifier = load_client_verifier(path, &provider)?;
                let ca = ClientCa {
                    path: path.to_owned(),
                    provider: provider.clone(),
                    watched,
                };
                (Some(Arc::new(ca)), Some(verifier))
            }
        };
        let acceptor = acceptor(&provider, verifier, resolver.clone())?;
        Ok(Self {
            acceptor: Arc::new(RwLock::new(acceptor)),
            cert: resolver,
            client_ca,
        })
    }

    /// Re-reads the certificate and key if either file changed since last looked at (size,
    /// modification time, inode), and the client CA likewise. Returns whether something new
    /// is now used for new connections; a file that does not load is logged and the old one
    /// kept (and read again after 10 s if it stays as it is).
    pub fn reload_if_changed(&self) -> bool {
        let cert = self.cert.reload_if_changed();
        let ca = match self
            .client_ca
            .as_ref()
            .and_then(|ca| ca.reload_if_changed())
        {
            None => false,
            Some(verifier) => {
                match acceptor(&self.cert.provider, Some(verifier), self.cert.clone()) {
                    Ok(acceptor) => {
                        *self
                            .acceptor
                            .write()
                            .unwrap_or_else(PoisonError::into_inner) = acceptor;
                        true
                    }
                    Err(e) => {
                        warn!(
                            error = %format!("{e:#}"),
                            "cannot use the new client CA; still using the previous one"
                        );
                        false
                    }
                }
            }
        };
        cert || ca
    }

    /// The certificate chain served to new connections (leaf first).
    pub fn current_chain(&self) -> Vec<CertificateDer<'static>> {
        self.cert.current().cert.clone()
    }

    fn current_acceptor(&self) -> TlsAcceptor {
        self.acceptor
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// The connections of `listener`, each through its TLS handshake. Handshakes run
    /// concurrently, at most [`MAX_HANDSHAKES`] at once and [`MAX_HANDSHAKES_PER_IP`] from one
    /// peer address; one that has not finished within [`HANDSHAKE_TIMEOUT`] of the connection
    /// is dropped, and the HTTP/2 preface must then arrive within what is left of it.
    /// `metrics` counts the handshakes in flight and the connections refused.
    pub fn incoming(
        self,
        listener: TcpListener,
        metrics: Metrics,
    ) -> impl Stream<Item = io::Result<TlsConnection>> + Send + 'static {
        struct State {
            listener: TcpListener,
            tls: ServerTls,
            handshakes: JoinSet<Option<TlsConnection>>,
            per_peer: PerPeer,
            metrics: Metrics,
        }
        let state = State {
            listener,
            tls: self,
            handshakes: JoinSet::new(),
            per_peer: PerPeer::default(),
            metrics,
        };
        futures::stream::unfold(state, |mut st| async move {
            loop {
                tokio::select! {
                    // Past the bound nothing is accepted until a handshake ends.
                    accepted = st.listener.accept(), if st.handshakes.len() < MAX_HANDSHAKES => {
                        match accepted {
                            Ok((tcp, peer)) => {
                                crate::no_delay(&tcp);
                                let Some(slot) = st.per_peer.take(peer.ip()) else {
                                    drop(tcp);
                                    st.metrics.tls_handshakes_refused.inc();
                                    debug!(
                                        %peer,
                                        "{MAX_HANDSHAKES_PER_IP} TLS handshakes in flight from this address already; connection closed"
                                    );
                                    continue;
                                };
                                st.tls.reload_if_changed();
                                st.handshakes
                                    .spawn(handshake(st.tls.current_acceptor(), tcp, peer, slot));
                                st.metrics.tls_handshakes.set(count(st.handshakes.len()));
                            }
                            Err(e) => return Some((Err(e), st)),
                        }
                    }
                    Some(done) = st.handshakes.join_next(), if !st.handshakes.is_empty() => {
                        st.metrics.tls_handshakes.set(count(st.handshakes.len()));
                        if let Ok(Some(conn)) = done {
                            return Some((Ok(conn), st));
                        }
                    }
                }
            }
        })
    }
}

fn count(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// The TLS handshakes in flight per peer address.
#[derive(Clone, Default)]
struct PerPeer(Arc<Mutex<HashMap<IpAddr, usize>>>);

impl PerPeer {
    /// A slot for one more handshake from `ip`, or `None` when it has
    /// [`MAX_HANDSHAKES_PER_IP`] in flight.
    fn take(&self, ip: IpAddr) -> Option<PeerSlot> {
        // An IPv4 client of a dual-stack listener is the same peer as over IPv4.
        let ip = ip.to_canonical();
        let mut counts = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        let n = counts.entry(ip).or_insert(0);
        if *n >= MAX_HANDSHAKES_PER_IP {
            return None;
        }
        *n += 1;
        Some(PeerSlot {
            peers: self.clone(),
            ip,
        })
    }
}

/// One handshake in flight from a peer; given back when dropped (the handshake ended, however).
struct PeerSlot {
    peers: PerPeer,
    ip: IpAddr,
}

impl Drop for PeerSlot {
    fn drop(&mut self) {
        let mut counts = self.peers.0.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(n) = counts.get_mut(&self.ip) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                counts.remove(&self.ip);
            }
        }
    }
}

/// One TLS handshake, bounded by the connection's deadline; `_slot` is held until it ends.
async fn handshake(
    acceptor: TlsAcceptor,
    tcp: TcpStream,
    peer: SocketAddr,
    _slot: PeerSlot,
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

/// The acceptor of new connections: the certificate from `resolver`, client certificates
/// checked by `verifier` (none asked for without one), ALPN `h2`.
fn acceptor(
    provider: &Arc<CryptoProvider>,
    verifier: Option<Arc<dyn ClientCertVerifier>>,
    resolver: Arc<ReloadingCert>,
) -> anyhow::Result<TlsAcceptor> {
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .context("TLS protocol versions")?;
    let builder = match verifier {
        None => builder.with_no_client_auth(),
        Some(verifier) => builder.with_client_cert_verifier(verifier),
    };
    let mut config = builder.with_cert_resolver(resolver);
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// What identifies a version of some files without reading them.
type Fingerprint = Vec<Option<FileStamp>>;

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

/// Files read together, and the versions of them loaded and last failed.
#[derive(Debug)]
struct Watched {
    paths: Vec<PathBuf>,
    /// The files of what is in use.
    seen: Mutex<Fingerprint>,
    /// The files of the last version that did not load, and when: retried at most every
    /// [`RETRY_FAILED_LOAD`].
    failed: Mutex<Option<(Fingerprint, std::time::Instant)>>,
}

/// How often a changed file that did not load is read again (while it stays as it is).
const RETRY_FAILED_LOAD: std::time::Duration = std::time::Duration::from_secs(10);

impl Watched {
    /// Stamps the files now, before they are first read: a change made meanwhile is read
    /// again at the next look.
    fn new(paths: Vec<PathBuf>) -> Self {
        let seen = Self::stamp(&paths);
        Self {
            paths,
            seen: Mutex::new(seen),
            failed: Mutex::new(None),
        }
    }

    fn stamp(paths: &[PathBuf]) -> Fingerprint {
        paths.iter().map(|p| FileStamp::of(p)).collect()
    }

    /// The files' fingerprint if they changed since what is in use was read and should be
    /// read now (not a version that failed less than [`RETRY_FAILED_LOAD`] ago).
    fn changed(&self) -> Option<Fingerprint> {
        let now = Self::stamp(&self.paths);
        if *self.seen.lock().unwrap_or_else(PoisonError::into_inner) == now {
            return None;
        }
        let failed = self.failed.lock().unwrap_or_else(PoisonError::into_inner);
        if failed
            .as_ref()
            .is_some_and(|(f, at)| *f == now && at.elapsed() < RETRY_FAILED_LOAD)
        {
            return None;
        }
        Some(now)
    }

    /// The files of `fingerprint` are now in use.
    fn loaded(&self, fingerprint: Fingerprint) {
        *self.seen.lock().unwrap_or_else(PoisonError::into_inner) = fingerprint;
        *self.failed.lock().unwrap_or_else(PoisonError::into_inner) = None;
    }

    /// The files of `fingerprint` did not load. Only what loaded counts as seen: a read that
    /// failed (a half-written rotation, a transient error) is tried again later.
    fn failed(&self, fingerprint: Fingerprint) {
        *self.failed.lock().unwrap_or_else(PoisonError::into_inner) =
            Some((fingerprint, std::time::Instant::now()));
    }
}

/// The certificate resolver: always the last pair that loaded.
struct ReloadingCert {
    cert_path: PathBuf,
    key_path: PathBuf,
    provider: Arc<CryptoProvider>,
    current: RwLock<Arc<CertifiedKey>>,
    watched: Watched,
}

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
        let Some(now) = self.watched.changed() else {
            return false;
        };
        match load_pair(&self.cert_path, &self.key_path, &self.provider) {
            Ok(pair) => {
                self.watched.loaded(now);
                *self.current.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(pair);
                info!(
                    cert = %self.cert_path.display(),
                    key = %self.key_path.display(),
                    "TLS certificate reloaded"
                );
                true
            }
            Err(e) => {
                self.watched.failed(now);
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

/// The `--client-ca` file, followed.
struct ClientCa {
    path: PathBuf,
    provider: Arc<CryptoProvider>,
    watched: Watched,
}

impl ClientCa {
    /// A verifier of the changed CA, if it changed and loads (a CA that does not load is
    /// logged and `None` returned: the previous one stays in use).
    fn reload_if_changed(&self) -> Option<Arc<dyn ClientCertVerifier>> {
        let now = self.watched.changed()?;
        match load_client_verifier(&self.path, &self.provider) {
            Ok(verifier) => {
                self.watched.loaded(now);
                info!(client_ca = %self.path.display(), "client CA reloaded");
                Some(verifier)
            }
            Err(e) => {
                self.watched.failed(now);
                warn!(
                    error = %format!("{e:#}"),
                    "the changed client CA does not load; still using the previous one"
                );
                None
            }
        }
    }
}

/// A verifier of client certificates chaining to the CA in `path` (`--client-ca`).
fn load_client_verifier(
    path: &Path,
    provider: &Arc<CryptoProvider>,
) -> anyhow::Result<Arc<dyn ClientCertVerifier>> {
    let mut roots = RootCertStore::empty();
    for cert in read_certs("client-ca", path)? {
        roots
            .add(cert)
            .map_err(|e| anyhow::anyhow!("--client-ca {}: not a usable CA: {e}", path.display()))?;
    }
    WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .build()
        .map_err(|e| anyhow::anyhow!("--client-ca {}: {e}", path.display()))
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

    /// Replaces `to` with the test file `from`: a new file renamed over the old.
    fn replace(from: &str, to: &Path) {
        let tmp = to.with_extension("new");
        std::fs::copy(data(from), &tmp).unwrap();
        std::fs::rename(&tmp, to).unwrap();
    }

    #[test]
    fn a_changed_client_ca_is_used_and_a_bad_one_keeps_the_old() {
        let dir = tempfile::tempdir().unwrap();
        let ca = dir.path().join("client-ca.crt");
        replace("client-ca.pem", &ca);
        let tls = ServerTls::load(&data("server.pem"), &data("server.key"), Some(&ca)).unwrap();
        assert!(!tls.reload_if_changed(), "nothing changed");
        let before = tls.current_acceptor();

        std::fs::write(&ca, "").unwrap();
        assert!(!tls.reload_if_changed(), "an empty CA is not used");
        assert!(Arc::ptr_eq(
            before.config(),
            tls.current_acceptor().config()
        ));

        replace("client-ca2.pem", &ca);
        assert!(tls.reload_if_changed(), "a new CA is used");
        assert!(!Arc::ptr_eq(
            before.config(),
            tls.current_acceptor().config()
        ));
        assert!(!tls.reload_if_changed(), "and read once");
    }

    #[test]
    fn handshakes_are_counted_per_peer_address_and_given_back() {
        let peers = PerPeer::default();
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let slots: Vec<_> = (0..MAX_HANDSHAKES_PER_IP)
            .map(|_| peers.take(a).expect("under the bound"))
            .collect();
        assert!(peers.take(a).is_none(), "past the bound");
        // The same address over a dual-stack listener is the same peer.
        assert!(peers.take("::ffff:10.0.0.1".parse().unwrap()).is_none());
        let other = peers.take("10.0.0.2".parse().unwrap());
        assert!(other.is_some(), "another address is not affected");
        drop(slots);
        assert!(
            peers.take(a).is_some(),
            "given back when the handshakes end"
        );
        drop(other);
        assert_eq!(
            peers.0.lock().unwrap().len(),
            0,
            "no address kept for nothing"
        );
    }
}
