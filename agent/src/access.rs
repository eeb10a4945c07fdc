//! How the agent reaches the scheduler beyond its URL: the CA it verifies the scheduler against
//! (`--ca-file`), the client certificate it presents (`--client-cert`, `--client-key`) and its
//! bearer token (`--token-file`).
//!
//! ```text
//!  start             SchedulerAccess::connector ─► read + check every file
//!                                                   (a bad one: an error naming flag and file)
//!  each (re)connect  Connector::builder ─► stat the TLS files ─► changed? read + check
//!                      ─► ClientBuilder (new contents; if bad: logged once, the last good)
//! ```
//!
//! The files are re-read only when one changed (size, modification time or inode: a Secret or
//! ConfigMap volume swaps its `..data` link), so a rotated scheduler CA or client certificate is
//! used from the next connection on without a restart. The certificate and its key are read and
//! checked as a pair: a half-done rotation (a new certificate, the old key) keeps the previous
//! pair until both are there. The token file is re-read by the SDK, on every call.

use std::{
    fmt,
    path::{Path, PathBuf},
    sync::{Arc, Mutex, PoisonError},
};

use anyhow::Context as _;
use snapgate_sdk::{
    Client, ClientBuilder,
    client::FileStamp,
    tls::{self, PemInput},
};
use tracing::{info, warn};

/// How the agent proves itself to the scheduler and checks the scheduler, beyond its URL.
#[derive(Debug, Clone, Default)]
pub struct SchedulerAccess {
    /// PEM CA to verify an `https://` scheduler against (else the system roots); re-read when
    /// it changes, at the next (re)connect.
    pub ca_file: Option<PathBuf>,
    /// A bearer token file, read on every (re)connect and re-read when it changes.
    pub token_file: Option<PathBuf>,
    /// PEM client certificate chain presented to a scheduler that asks for one (its
    /// `--client-ca`); with `client_key`. Re-read with its key when either changes, at the next
    /// (re)connect.
    pub client_cert: Option<PathBuf>,
    /// PEM private key of `client_cert`.
    pub client_key: Option<PathBuf>,
}

impl SchedulerAccess {
    /// The connection settings for the scheduler at `url`, checked now (the URL, every file),
    /// with errors naming the flag and the file.
    pub fn connector(&self, url: &str) -> anyhow::Result<Connector> {
        let mut base = Client::builder(url).connect_timeout(std::time::Duration::from_secs(10));
        if let Some(path) = &self.token_file {
            base = base.token_file(path.clone());
        }
        let ca = self
            .ca_file
            .as_ref()
            .map(|path| Reloading::new("--ca-file", vec![path.clone()], load_ca))
            .transpose()?;
        let identity = match (&self.client_cert, &self.client_key) {
            (Some(cert), Some(key)) => Some(Reloading::new(
                "--client-cert/--client-key",
                vec![cert.clone(), key.clone()],
                load_identity,
            )?),
            (None, None) => None,
            (Some(_), None) => anyhow::bail!("--client-cert needs --client-key"),
            (None, Some(_)) => anyhow::bail!("--client-key needs --client-cert"),
        };
        let connector = Connector {
            base,
            ca: ca.map(Arc::new),
            identity: identity.map(Arc::new),
            dial: None,
            jitter: None,
        };
        // Checks the URL and the TLS settings together (a CA for an http:// URL is a mistake),
        // and reads the token once.
        connector
            .builder()
            .connect_lazy()
            .with_context(|| format!("--scheduler {url}"))?;
        Ok(connector)
    }
}

/// The settings of each connection to the scheduler: [`Connector::builder`] re-reads the TLS
/// files that changed. Cheap to clone; clones share what was read.
#[derive(Clone)]
pub struct Connector {
    base: ClientBuilder,
    ca: Option<Arc<Reloading<Vec<u8>>>>,
    identity: Option<Arc<Reloading<Pair>>>,
    /// Set by [`Connector::dialing`]: how each connection is made instead of from `base`.
    dial: Option<Dial>,
    /// Set by [`Connector::dialing`]: the reconnect back-off's jitter factors.
    jitter: Option<Jitter>,
}

/// Makes one connection to the scheduler (see [`Connector::dialing`]).
pub type Dial = Arc<
    dyn Fn()
            -> futures::future::BoxFuture<'static, anyhow::Result<snapgate_sdk::client::AuthChannel>>
        + Send
        + Sync,
>;

/// Draws the reconnect back-off's jitter factor, in `0.75..1.25` (see [`Connector::dialing`]).
pub type Jitter = Arc<Mutex<dyn FnMut() -> f64 + Send>>;

/// A client certificate chain and its key (PEM).
type Pair = (Vec<u8>, Vec<u8>);

impl fmt::Debug for Connector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Connector")
            .field("base", &self.base)
            .field("ca", &self.ca.as_ref().map(|r| &r.paths))
            .field("identity", &self.identity.as_ref().map(|r| &r.paths))
            .field("dialing", &self.dial.is_some())
            .finish()
    }
}

impl Connector {
    /// A connector that makes each connection with `dial` instead of from a URL and files,
    /// and draws the link's reconnect jitter from `jitter` instead of the thread's random
    /// generator: for an embedding that carries the link itself, such as the deterministic
    /// simulation (`tests/sim`: in-memory duplex streams, seeded randomness). Nothing else of
    /// the agent changes.
    pub fn dialing(dial: Dial, jitter: Jitter) -> Self {
        Self {
            base: Client::builder("http://in-process.invalid"),
            ca: None,
            identity: None,
            dial: Some(dial),
            jitter: Some(jitter),
        }
    }

    /// One new connection to the scheduler: with [`Connector::builder`]'s settings, or the
    /// dialer of [`Connector::dialing`].
    pub async fn connect(&self) -> anyhow::Result<snapgate_sdk::client::AuthChannel> {
        match &self.dial {
            Some(dial) => dial().await,
            None => Ok(self.builder().connect().await?.channel()),
        }
    }

    /// The jitter factor of the next reconnect delay (`0.75..1.25`): from the thread's random
    /// generator, or from [`Connector::dialing`]'s source.
    pub fn jitter(&self) -> f64 {
        match &self.jitter {
            Some(jitter) => (jitter.lock().unwrap_or_else(PoisonError::into_inner))(),
            None => rand::Rng::random_range(&mut rand::rng(), 0.75..1.25),
        }
    }

    /// The settings for a new connection: the TLS files as they are now, re-read if one
    /// changed since last read (a change that does not load is logged once and the last good
    /// contents used).
    pub fn builder(&self) -> ClientBuilder {
        let mut builder = self.base.clone();
        if let Some(ca) = &self.ca {
            builder = builder.ca_certificate_pem(ca.current());
        }
        if let Some(identity) = &self.identity {
            let (cert, key) = identity.current();
            builder = builder.client_identity(cert, key);
        }
        builder
    }
}

/// Reads a file named by a flag.
fn read(flag: &str, path: &Path) -> anyhow::Result<Vec<u8>> {
    std::fs::read(path).with_context(|| format!("--{flag} {}: cannot read", path.display()))
}

/// `--ca-file`: at least one usable certificate.
fn load_ca(paths: &[PathBuf]) -> anyhow::Result<Vec<u8>> {
    let [path] = paths else {
        anyhow::bail!("--ca-file: one file expected");
    };
    let pem = read("ca-file", path)?;
    tls::check_ca(&pem)
        .map_err(|e| anyhow::anyhow!("--ca-file {}: {}", path.display(), e.message))?;
    Ok(pem)
}

/// `--client-cert` and `--client-key`: a certificate and its own key.
fn load_identity(paths: &[PathBuf]) -> anyhow::Result<Pair> {
    let [cert_path, key_path] = paths else {
        anyhow::bail!("--client-cert/--client-key: two files expected");
    };
    let cert = read("client-cert", cert_path)?;
    let key = read("client-key", key_path)?;
    tls::check_client_identity(&cert, &key).map_err(|e| {
        let (flag, path) = match e.input {
            PemInput::ClientCert | PemInput::Ca => ("client-cert", cert_path),
            PemInput::ClientKey => ("client-key", key_path),
        };
        anyhow::anyhow!("--{flag} {}: {}", path.display(), e.message)
    })?;
    Ok((cert, key))
}

/// Files read together, re-read when one of them changed; the last contents that loaded.
struct Reloading<T> {
    /// The flags, for the log.
    flags: &'static str,
    paths: Vec<PathBuf>,
    load: fn(&[PathBuf]) -> anyhow::Result<T>,
    state: Mutex<State<T>>,
}

struct State<T> {
    /// The files of `current`.
    seen: Vec<Option<FileStamp>>,
    /// The files as they were when they last failed to load: logged once (they are read
    /// again at every connection until they load).
    failed: Option<Vec<Option<FileStamp>>>,
    current: T,
}

fn stamps(paths: &[PathBuf]) -> Vec<Option<FileStamp>> {
    paths.iter().map(|p| FileStamp::of(p)).collect()
}

impl<T: Clone> Reloading<T> {
    /// Reads the files now: an error stops the agent.
    fn new(
        flags: &'static str,
        paths: Vec<PathBuf>,
        load: fn(&[PathBuf]) -> anyhow::Result<T>,
    ) -> anyhow::Result<Self> {
        // Stamped before reading: a change made meanwhile is read again next time.
        let seen = stamps(&paths);
        let current = load(&paths)?;
        Ok(Self {
            flags,
            paths,
            load,
            state: Mutex::new(State {
                seen,
                failed: None,
                current,
            }),
        })
    }

    /// The contents to use now.
    fn current(&self) -> T {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        let now = stamps(&self.paths);
        if now == state.seen {
            return state.current.clone();
        }
        match (self.load)(&self.paths) {
            Ok(loaded) => {
                state.current = loaded;
                state.seen = now;
                state.failed = None;
                info!(flags = self.flags, "reloaded the changed TLS file(s)");
            }
            Err(e) => {
                if state.failed.as_ref() != Some(&now) {
                    warn!(
                        flags = self.flags,
                        error = %format!("{e:#}"),
                        "a changed TLS file does not load; still using the previous one"
                    );
                }
                state.failed = Some(now);
            }
        }
        state.current.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(name: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../sdk/tests/data/tls")
            .join(name)
    }

    /// Replaces `to` with `from` as a Secret volume does: a new file renamed over the old.
    fn replace(from: &str, to: &Path) {
        let tmp = to.with_extension("new");
        std::fs::copy(data(from), &tmp).unwrap();
        std::fs::rename(&tmp, to).unwrap();
    }

    #[test]
    fn a_changed_pair_is_read_again_and_a_bad_or_half_rotated_one_keeps_the_last_good() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = (dir.path().join("tls.crt"), dir.path().join("tls.key"));
        replace("client.pem", &cert);
        replace("client.key", &key);
        let pair = Reloading::new(
            "--client-cert/--client-key",
            vec![cert.clone(), key.clone()],
            load_identity,
        )
        .unwrap();
        let first = std::fs::read(data("client.pem")).unwrap();
        let second = std::fs::read(data("client2.pem")).unwrap();
        assert_eq!(pair.current().0, first);

        // Half a rotation: the new certificate, the old key.
        replace("client2.pem", &cert);
        assert_eq!(pair.current().0, first, "the last good pair is kept");
        replace("client2.key", &key);
        assert_eq!(pair.current().0, second, "both new: the new pair");

        std::fs::write(&key, "not a key").unwrap();
        assert_eq!(pair.current().0, second);
        std::fs::remove_file(&cert).unwrap();
        assert_eq!(pair.current().0, second);
        replace("client.pem", &cert);
        replace("client.key", &key);
        assert_eq!(pair.current().0, first);
    }

    #[tokio::test]
    async fn the_files_are_checked_at_start_naming_the_flag_and_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing.pem");
        let access = |ca: Option<&Path>, cert: Option<&Path>, key: Option<&Path>| SchedulerAccess {
            ca_file: ca.map(Path::to_owned),
            client_cert: cert.map(Path::to_owned),
            client_key: key.map(Path::to_owned),
            ..SchedulerAccess::default()
        };
        let err =
            |a: SchedulerAccess| format!("{:#}", a.connector("https://localhost:1").unwrap_err());
        let (cert, key) = (data("client.pem"), data("client.key"));
        for (a, says) in [
            (
                access(None, Some(&cert), None),
                "--client-cert needs --client-key".to_owned(),
            ),
            (
                access(None, None, Some(&key)),
                "--client-key needs --client-cert".to_owned(),
            ),
            (
                access(None, Some(&missing), Some(&key)),
                format!("--client-cert {}: cannot read", missing.display()),
            ),
            (
                access(None, Some(&cert), Some(&cert)),
                format!(
                    "--client-key {}: no private key found in the PEM",
                    cert.display()
                ),
            ),
            (
                access(None, Some(&cert), Some(&data("client2.key"))),
                format!(
                    "--client-key {}: not the private key of the client certificate",
                    data("client2.key").display()
                ),
            ),
            (
                access(Some(&key), None, None),
                format!(
                    "--ca-file {}: no certificate found in the PEM",
                    key.display()
                ),
            ),
        ] {
            let e = err(a);
            assert!(e.contains(&says), "want {says:?}: {e}");
        }
        let ok = access(Some(&data("ca.pem")), Some(&cert), Some(&key))
            .connector("https://localhost:1")
            .unwrap();
        assert!(!format!("{ok:?}").contains("PRIVATE KEY"));
        // A client certificate for a plaintext scheduler is a mistake.
        let e = format!(
            "{:#}",
            access(None, Some(&cert), Some(&key))
                .connector("http://localhost:1")
                .unwrap_err()
        );
        assert!(e.contains("https://"), "{e}");
    }
}
