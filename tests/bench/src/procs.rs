//! The processes the harness starts (the release `snapgate-scheduler` and `snapgate-agent`, the
//! bare echo server), killed when their guard drops; TLS and authentication settings; RSS.

use std::{
    net::TcpListener,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use snapgate_kube_sim::KubeSim;
use snapgate_proto::v1;

/// Where the release binaries are.
#[derive(Debug, Clone)]
pub(crate) struct Bins {
    /// `snapgate-scheduler`.
    pub(crate) scheduler: PathBuf,
    /// `snapgate-agent`.
    pub(crate) agent: PathBuf,
    /// This binary (it serves the echo reference as a child process).
    pub(crate) bench: PathBuf,
}

impl Bins {
    /// The binaries in `dir`, or next to this one (`cargo build --release -p snapgate-scheduler
    /// -p snapgate-agent -p snapgate-bench --bins` puts them there, built with the same
    /// features as this binary). A missing one is an error naming that command; the header
    /// the harness prints shows when each was built, so a stale one is seen.
    pub(crate) fn locate(dir: Option<PathBuf>) -> anyhow::Result<Self> {
        let bench = std::env::current_exe().context("locating this binary")?;
        let dir = match dir {
            Some(d) => d,
            None => bench
                .parent()
                .context("this binary has no directory")?
                .to_owned(),
        };
        let find = |name: &str| {
            let p = dir.join(name);
            if p.exists() {
                Ok(p)
            } else {
                Err(anyhow::anyhow!(
                    "{} is not built: run `cargo build --release --locked -p snapgate-scheduler -p snapgate-agent -p snapgate-bench --bins` (or pass --bin-dir)",
                    p.display()
                ))
            }
        };
        Ok(Self {
            scheduler: find("snapgate-scheduler")?,
            agent: find("snapgate-agent")?,
            bench,
        })
    }

    /// `path (built <time>)` for each binary.
    pub(crate) fn describe(&self) -> String {
        let built = |p: &Path| {
            std::fs::metadata(p)
                .and_then(|m| m.modified())
                .map(|t| {
                    chrono::DateTime::<chrono::Utc>::from(t)
                        .format("%Y-%m-%d %H:%M:%S UTC")
                        .to_string()
                })
                .unwrap_or_else(|_| "?".into())
        };
        format!(
            "scheduler {} (built {})\nagent {} (built {})",
            self.scheduler.display(),
            built(&self.scheduler),
            self.agent.display(),
            built(&self.agent)
        )
    }
}

/// A loopback port free a moment ago.
pub(crate) fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or(0)
}

/// A child process, killed (and reaped) when dropped.
#[derive(Debug)]
pub(crate) struct Proc {
    name: String,
    child: Child,
    log: PathBuf,
}

impl Proc {
    /// Spawns `cmd` with its stdout and stderr in `log`.
    pub(crate) fn spawn(name: &str, cmd: &mut Command, log: &Path) -> anyhow::Result<Self> {
        let out = std::fs::File::create(log).with_context(|| format!("{}", log.display()))?;
        let err = out.try_clone()?;
        let child = cmd
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .with_context(|| format!("starting {name} ({cmd:?})"))?;
        Ok(Self {
            name: name.to_owned(),
            child,
            log: log.to_owned(),
        })
    }

    /// The process id.
    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Fails (a harness error) if the process has exited, quoting the end of its log.
    pub(crate) fn check_alive(&mut self) -> anyhow::Result<()> {
        match self.child.try_wait() {
            Ok(None) => Ok(()),
            Ok(Some(status)) => bail!(
                "{} exited ({status}); the end of its log ({}):\n{}",
                self.name,
                self.log.display(),
                tail(&self.log, 20)
            ),
            Err(e) => bail!("{}: {e}", self.name),
        }
    }

    /// The memory the process holds now and at its peak.
    pub(crate) fn memory(&self) -> anyhow::Result<Memory> {
        Memory::of(self.pid())
    }

    /// Stops the process (SIGKILL) and waits for it.
    pub(crate) fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The last `n` lines of a log file.
pub(crate) fn tail(path: &Path, n: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// A process's resident memory, from `/proc/<pid>/status`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Memory {
    /// VmRSS, bytes.
    pub(crate) rss: u64,
    /// VmHWM (the peak RSS), bytes.
    pub(crate) hwm: u64,
}

impl Memory {
    /// Reads `/proc/<pid>/status`.
    pub(crate) fn of(pid: u32) -> anyhow::Result<Self> {
        let path = format!("/proc/{pid}/status");
        let text = std::fs::read_to_string(&path).with_context(|| path.clone())?;
        let field = |name: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|v| v.trim().strip_suffix("kB"))
                .and_then(|v| v.trim().parse::<u64>().ok())
                .map(|kb| kb * 1024)
                .with_context(|| format!("{name} in {path}"))
        };
        Ok(Self {
            rss: field("VmRSS:")?,
            hwm: field("VmHWM:")?,
        })
    }
}

/// TLS and authentication on the scheduler's gRPC port.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Security {
    /// `--tls-cert`/`--tls-key` (the SDK's test certificate for 127.0.0.1).
    pub(crate) tls: bool,
    /// `--auth-jwks` (ServiceAccount tokens signed by a simulated API server).
    pub(crate) auth: bool,
}

impl Security {
    /// No TLS, no authentication.
    pub(crate) const PLAIN: Self = Self {
        tls: false,
        auth: false,
    };
    /// TLS only.
    pub(crate) const TLS: Self = Self {
        tls: true,
        auth: false,
    };
    /// TLS and authentication.
    pub(crate) const TLS_AUTH: Self = Self {
        tls: true,
        auth: true,
    };

    /// `plain`, `tls` or `tls+auth`.
    pub(crate) fn name(self) -> &'static str {
        match (self.tls, self.auth) {
            (false, false) => "plain",
            (true, false) => "tls",
            (true, true) => "tls+auth",
            (false, true) => "auth",
        }
    }
}

const CA_PEM: &[u8] = include_bytes!("../../../sdk/tests/data/tls/ca.pem");
const SERVER_PEM: &[u8] = include_bytes!("../../../sdk/tests/data/tls/server.pem");
const SERVER_KEY: &[u8] = include_bytes!("../../../sdk/tests/data/tls/server.key");

/// The admin every bench client calls as when authentication is on.
pub(crate) const ADMIN: (&str, &str) = ("snapgate", "admin");

/// The files and flags of one [`Security`] setting, in a directory of their own.
#[derive(Debug, Clone)]
pub(crate) struct SecSetup {
    /// The setting.
    pub(crate) security: Security,
    dir: PathBuf,
    cert: PathBuf,
    key: PathBuf,
    /// The CA of the server certificate (TLS).
    pub(crate) ca: PathBuf,
    jwks: Option<PathBuf>,
    issuer: String,
    admin_token: Option<PathBuf>,
}

impl SecSetup {
    /// Writes what `security` needs into `dir`: the certificate and key, and with
    /// authentication the key set of `signer` (whose tokens the scheduler then accepts) and
    /// the admin's token.
    pub(crate) fn new(dir: &Path, security: Security, signer: &KubeSim) -> anyhow::Result<Self> {
        std::fs::create_dir_all(dir)?;
        let (cert, key, ca) = (dir.join("tls.crt"), dir.join("tls.key"), dir.join("ca.pem"));
        std::fs::write(&cert, SERVER_PEM)?;
        std::fs::write(&key, SERVER_KEY)?;
        std::fs::write(&ca, CA_PEM)?;
        let (jwks, admin_token) = if security.auth {
            let jwks = dir.join("jwks.json");
            std::fs::write(&jwks, signer.jwks().to_string())?;
            (
                Some(jwks),
                Some(snapgate_e2e::secure::write_token(signer, dir, ADMIN)),
            )
        } else {
            (None, None)
        };
        Ok(Self {
            security,
            dir: dir.to_owned(),
            cert,
            key,
            ca,
            jwks,
            issuer: signer.issuer(),
            admin_token,
        })
    }

    /// The scheduler's flags for this setting. With authentication the rate limit is off
    /// (`--rate-limit 0`): the bench calls as one identity far past the default 50/s.
    pub(crate) fn scheduler_args(&self) -> Vec<String> {
        let mut args = Vec::new();
        if self.security.tls {
            args.extend([
                "--tls-cert".into(),
                self.cert.display().to_string(),
                "--tls-key".into(),
                self.key.display().to_string(),
            ]);
        }
        if let Some(jwks) = &self.jwks {
            args.extend([
                "--auth-jwks".into(),
                jwks.display().to_string(),
                "--auth-issuer".into(),
                self.issuer.clone(),
                "--admin".into(),
                snapgate_e2e::secure::subject(ADMIN),
                "--rate-limit".into(),
                "0".into(),
            ]);
        }
        args
    }

    /// The echo server's flags for this setting (TLS only: it checks no token).
    pub(crate) fn echo_args(&self) -> Vec<String> {
        if self.security.tls {
            vec![
                "--tls-cert".into(),
                self.cert.display().to_string(),
                "--tls-key".into(),
                self.key.display().to_string(),
            ]
        } else {
            Vec::new()
        }
    }

    /// `http://127.0.0.1:<port>` or `https://...`.
    pub(crate) fn url(&self, port: u16) -> String {
        let scheme = if self.security.tls { "https" } else { "http" };
        format!("{scheme}://127.0.0.1:{port}")
    }

    /// A token of the ServiceAccount `who` for the scheduler (authentication only).
    pub(crate) fn token(&self, signer: &KubeSim, who: (&str, &str)) -> Option<PathBuf> {
        self.security
            .auth
            .then(|| snapgate_e2e::secure::write_token(signer, &self.dir, who))
    }

    /// An SDK client of `url` as the admin (or as `token`'s ServiceAccount), connected.
    pub(crate) async fn client(
        &self,
        url: &str,
        token: Option<&Path>,
    ) -> anyhow::Result<snapgate_sdk::Client> {
        let mut b = snapgate_sdk::Client::builder(url);
        if self.security.tls {
            b = b
                .ca_certificate_pem(CA_PEM.to_vec())
                .tls_domain("localhost");
        }
        if let Some(t) = token.or(self.admin_token.as_deref()) {
            b = b.token_file(t);
        }
        Ok(b.connect().await?)
    }
}

/// Starts the scheduler on `port` with its store in `data` and its log in `log`.
pub(crate) fn spawn_scheduler(
    bins: &Bins,
    data: &Path,
    port: u16,
    sec: &SecSetup,
    log: &Path,
) -> anyhow::Result<Proc> {
    spawn_scheduler_with(bins, data, port, sec, log, &[])
}

/// [`spawn_scheduler`] with more flags (e.g. `--store etcd ...`).
pub(crate) fn spawn_scheduler_with(
    bins: &Bins,
    data: &Path,
    port: u16,
    sec: &SecSetup,
    log: &Path,
    extra: &[String],
) -> anyhow::Result<Proc> {
    Proc::spawn(
        "snapgate-scheduler",
        Command::new(&bins.scheduler)
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .args(["--metrics-listen", &format!("127.0.0.1:{}", free_port())])
            .arg("--data-dir")
            .arg(data)
            .args(sec.scheduler_args())
            .args(extra),
        log,
    )
}

/// Waits until the scheduler answers a SourceService call (GetSource of `probe`, found or
/// not): the driver has loaded the store and serves. Returns the client and when it answered.
pub(crate) async fn wait_serving(
    proc: &mut Proc,
    sec: &SecSetup,
    url: &str,
    probe: (&str, &str),
    within: Duration,
) -> anyhow::Result<(snapgate_sdk::Client, Instant)> {
    let deadline = Instant::now() + within;
    loop {
        proc.check_alive()?;
        if let Ok(client) = sec.client(url, None).await {
            let answer = client
                .sources()
                .get_source(v1::GetSourceRequest {
                    namespace: probe.0.into(),
                    name: probe.1.into(),
                })
                .await;
            match answer {
                Ok(_) => return Ok((client, Instant::now())),
                Err(s) if s.code() == tonic::Code::NotFound => {
                    return Ok((client, Instant::now()));
                }
                Err(_) => {}
            }
        }
        if Instant::now() > deadline {
            bail!("the scheduler did not serve within {within:?}");
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Starts the bare echo server (this binary, `serve-echo`) and returns it with its port.
pub(crate) fn spawn_echo(bins: &Bins, sec: &SecSetup, log: &Path) -> anyhow::Result<(Proc, u16)> {
    let port = free_port();
    let proc = Proc::spawn(
        "echo server",
        Command::new(&bins.bench)
            .args(["serve-echo", "--listen", &format!("127.0.0.1:{port}")])
            .args(sec.echo_args()),
        log,
    )?;
    Ok((proc, port))
}

/// Connects an SDK client to the echo server, retrying while it starts.
pub(crate) async fn echo_client(
    proc: &mut Proc,
    sec: &SecSetup,
    port: u16,
) -> anyhow::Result<snapgate_sdk::Client> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        proc.check_alive()?;
        if let Ok(c) = sec.client(&sec.url(port), None).await {
            return Ok(c);
        }
        if Instant::now() > deadline {
            bail!("the echo server did not answer within 10 s");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
