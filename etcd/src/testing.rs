//! A real etcd process for tests: loopback ports, a temporary data directory, killed on drop.
//!
//! The binary is `$SNAPGATE_ETCD`, else `~/.cache/snapgate/etcd-v3.7.3/bin/etcd` (where
//! `./scripts/cluster build-etcd` builds it), else `etcd` on `PATH`. Without one, starting
//! panics with how to build it: a test needing etcd fails, it never passes silently.

use std::{
    ffi::OsString,
    net::TcpListener,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::Duration,
};

use crate::{Client, EtcdOptions, EtcdTls};

/// The etcd version `scripts/cluster` builds.
pub const ETCD_VERSION: &str = "v3.7.3";

/// How long etcd may take to answer its first read after starting (a cold start on a loaded
/// 2-core machine takes a few seconds).
const READY_WITHIN: Duration = Duration::from_secs(60);

/// TLS on a test etcd's client port.
#[derive(Debug, Clone)]
pub struct EtcdServerTls {
    /// The server's certificate (PEM), valid for `127.0.0.1`.
    pub cert: PathBuf,
    /// Its private key (PEM).
    pub key: PathBuf,
    /// With a CA, etcd requires client certificates it signed (`--client-cert-auth`).
    pub client_ca: Option<PathBuf>,
    /// What clients (the readiness poll, [`EtcdServer::options`]) use.
    pub client: EtcdTls,
}

/// A running etcd on loopback.
#[derive(Debug)]
pub struct EtcdServer {
    binary: PathBuf,
    tls: Option<EtcdServerTls>,
    dir: tempfile::TempDir,
    client_port: u16,
    peer_port: u16,
    /// Its member name, and `--initial-cluster` (every member's `name=peer URL`).
    name: String,
    initial_cluster: String,
    child: Option<Child>,
}

/// Several etcd members on loopback forming one cluster (plaintext), each killed on drop.
#[derive(Debug)]
pub struct EtcdCluster {
    /// The members, in order.
    pub members: Vec<EtcdServer>,
}

impl EtcdCluster {
    /// Starts `size` members together and waits until each answers a read (on other ports
    /// again, up to five times, when one of them was taken meanwhile).
    pub async fn start(size: usize) -> Self {
        let binary = etcd_binary().unwrap_or_else(|e| panic!("{e}"));
        let members = start_fresh(|| {
            let mut members: Vec<EtcdServer> = (0..size)
                .map(|i| EtcdServer::unstarted(&binary, None, &format!("member-{i}")))
                .collect();
            let initial_cluster = members
                .iter()
                .map(|m| format!("{}=http://127.0.0.1:{}", m.name, m.peer_port))
                .collect::<Vec<_>>()
                .join(",");
            for m in &mut members {
                m.initial_cluster.clone_from(&initial_cluster);
            }
            members
        })
        .await;
        Self { members }
    }

    /// Options reaching every member, with keys under `prefix`.
    pub fn options(&self, prefix: &str) -> EtcdOptions {
        let mut opts = self
            .members
            .first()
            .expect("a cluster has members")
            .options(prefix);
        opts.endpoints = self.members.iter().map(EtcdServer::endpoint).collect();
        opts
    }
}

/// The etcd binary to run, or why there is none: `$SNAPGATE_ETCD`, else the cache under
/// `$HOME`, else `etcd` on `$PATH`.
pub fn etcd_binary() -> Result<PathBuf, String> {
    locate_etcd(
        std::env::var_os("SNAPGATE_ETCD"),
        std::env::var_os("HOME"),
        std::env::var_os("PATH"),
    )
}

/// [`etcd_binary`] from the given `SNAPGATE_ETCD`, `HOME` and `PATH`.
pub fn locate_etcd(
    explicit: Option<OsString>,
    home: Option<OsString>,
    path: Option<OsString>,
) -> Result<PathBuf, String> {
    if let Some(p) = explicit {
        let p = PathBuf::from(p);
        return if p.is_file() {
            Ok(p)
        } else {
            Err(format!(
                "SNAPGATE_ETCD={} is not a file; build etcd {ETCD_VERSION} with \
                 `./scripts/cluster build-etcd` (it prints the binary's path)",
                p.display()
            ))
        };
    }
    if let Some(home) = home {
        let p = PathBuf::from(home).join(format!(".cache/snapgate/etcd-{ETCD_VERSION}/bin/etcd"));
        if p.is_file() {
            return Ok(p);
        }
    }
    if let Some(path) = path {
        for dir in std::env::split_paths(&path) {
            let p = dir.join("etcd");
            if p.is_file() {
                return Ok(p);
            }
        }
    }
    Err(format!(
        "no etcd binary: these tests run a real etcd {ETCD_VERSION}. Build it with \
         `./scripts/cluster build-etcd` (Go needed; into ~/.cache/snapgate/etcd-{ETCD_VERSION}/bin), \
         or set SNAPGATE_ETCD to an etcd binary"
    ))
}

/// How many times a new etcd is started on other ports when one of its ports was taken between
/// [`free_port`] finding it free and etcd binding it (tests start many processes at once).
const START_ATTEMPTS: u32 = 5;

/// Starts the servers `make` gives together (every member must be up before any elects a raft
/// leader and answers) and waits until each answers; made and started again, on other ports,
/// when one of their ports was taken meanwhile, up to [`START_ATTEMPTS`] times. Panics with
/// etcd's log otherwise.
async fn start_fresh(make: impl Fn() -> Vec<EtcdServer>) -> Vec<EtcdServer> {
    let mut attempt = 1;
    loop {
        let mut servers = make();
        for s in &mut servers {
            s.spawn();
        }
        let mut failed = None;
        for s in &mut servers {
            if let Err(e) = s.wait_ready().await {
                failed = Some(e);
                break;
            }
        }
        match failed {
            None => return servers,
            Some(e) if port_taken(&e) && attempt < START_ATTEMPTS => attempt += 1,
            Some(e) => panic!("{e}"),
        }
    }
}

/// Whether etcd failed because a port it was given was taken meanwhile.
fn port_taken(error: &str) -> bool {
    error.contains("address already in use")
}

fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("binding a loopback port");
    l.local_addr().expect("a bound port's address").port()
}

impl EtcdServer {
    /// Starts etcd and waits until it answers a read. Panics (failing the test) when there is
    /// no binary or it does not come up.
    pub async fn start() -> Self {
        Self::start_with(None).await
    }

    /// [`EtcdServer::start`], serving its client port over TLS when given.
    pub async fn start_with(tls: Option<EtcdServerTls>) -> Self {
        let binary = etcd_binary().unwrap_or_else(|e| panic!("{e}"));
        let mut started = start_fresh(|| vec![Self::unstarted(&binary, tls.clone(), "test")]).await;
        started.pop().expect("one server started")
    }

    /// A server not started yet, on fresh ports and in a directory of its own: a cluster of
    /// itself until its `initial_cluster` says otherwise.
    fn unstarted(binary: &Path, tls: Option<EtcdServerTls>, name: &str) -> Self {
        let peer_port = free_port();
        Self {
            binary: binary.to_owned(),
            tls,
            dir: tempfile::tempdir().expect("a temporary directory for etcd"),
            client_port: free_port(),
            peer_port,
            name: name.to_owned(),
            initial_cluster: format!("{name}=http://127.0.0.1:{peer_port}"),
            child: None,
        }
    }

    /// The client URL, `http://127.0.0.1:<port>` (`https://` with TLS).
    pub fn endpoint(&self) -> String {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        format!("{scheme}://127.0.0.1:{}", self.client_port)
    }

    /// Options reaching this server, with keys under `prefix`.
    pub fn options(&self, prefix: &str) -> EtcdOptions {
        EtcdOptions {
            endpoints: vec![self.endpoint()],
            prefix: prefix.into(),
            tls: self.tls.as_ref().map(|t| t.client.clone()),
            dial_timeout: Duration::from_secs(2),
            request_timeout: Duration::from_secs(5),
        }
    }

    /// Kills etcd with SIGKILL (no clean shutdown) and reaps it.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// (Re)starts etcd on the same ports and data directory, and waits until it answers.
    pub async fn restart(&mut self) {
        self.spawn();
        if let Err(e) = self.wait_ready().await {
            panic!("{e}");
        }
    }

    /// (Re)starts the process, killing any running one first.
    fn spawn(&mut self) {
        self.kill();
        let peer = format!("http://127.0.0.1:{}", self.peer_port);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("etcd.log"))
            .expect("etcd's log file");
        let mut command = Command::new(&self.binary);
        if let Some(tls) = &self.tls {
            command
                .arg(format!("--cert-file={}", tls.cert.display()))
                .arg(format!("--key-file={}", tls.key.display()));
            if let Some(ca) = &tls.client_ca {
                command
                    .arg("--client-cert-auth")
                    .arg(format!("--trusted-ca-file={}", ca.display()));
            }
        }
        let child = command
            .arg(format!("--name={}", self.name))
            .arg(format!(
                "--data-dir={}",
                self.dir.path().join("data").display()
            ))
            .arg(format!("--listen-client-urls={}", self.endpoint()))
            .arg(format!("--advertise-client-urls={}", self.endpoint()))
            .arg(format!("--listen-peer-urls={peer}"))
            .arg(format!("--initial-advertise-peer-urls={peer}"))
            .arg(format!("--initial-cluster={}", self.initial_cluster))
            .arg("--log-level=warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("starting {}: {e}", self.binary.display()));
        self.child = Some(child);
    }

    /// Waits until etcd answers a read; the error (its log included) when it exits first or
    /// does not answer within [`READY_WITHIN`].
    async fn wait_ready(&mut self) -> Result<(), String> {
        let client = Client::new(&self.options("/")).expect("options of a loopback etcd");
        let until = tokio::time::Instant::now() + READY_WITHIN;
        // etcd is another process: there is no event to wait for, so its readiness is polled
        // (a read every 50 ms), bounded by READY_WITHIN.
        loop {
            if client.get(b"/ready").await.is_ok() {
                return Ok(());
            }
            if let Some(child) = self.child.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                self.child = None;
                return Err(format!(
                    "etcd exited ({status}) before answering; its log: {}",
                    self.log()
                ));
            }
            if tokio::time::Instant::now() > until {
                return Err(format!(
                    "etcd did not answer within {READY_WITHIN:?}; its log: {}",
                    self.log()
                ));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// etcd's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("etcd.log")).unwrap_or_default()
    }
}

impl Drop for EtcdServer {
    fn drop(&mut self) {
        self.kill();
    }
}
