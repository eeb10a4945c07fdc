//! Scheduler replicas on a real etcd, as `deploy/scheduler-ha` runs them: each a process that
//! is started again whenever it exits (as its pod's kubelet would), with its own way to etcd
//! through a [`Proxy`] the test can cut (a partition), behind a [`Proxy::service`] that passes
//! each connection to the ready replica (the leader).
//!
//! ```text
//!  agent, CLI, SDK ──► Service ──► replica-0 ──► etcd link 0 ──┐
//!                              └─► replica-1 ──► etcd link 1 ──┴─► etcd
//! ```

use std::{
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use snapgate_etcd::testing::EtcdServer;
use tokio::{process::Command, task::JoinHandle};

use super::{Proxy, binary, free_port};

/// The leader's lease in these tests: short, so that a failover takes seconds.
pub(crate) const LEASE_TTL: &str = "3s";

/// A leader's tenure: its name and the election key's create revision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Tenure {
    pub(crate) name: String,
    pub(crate) revision: i64,
}

/// One replica: its address, its link to etcd, and the pid of its current process.
struct Slot {
    name: String,
    grpc: String,
    etcd_link: Proxy,
    pid: Arc<Mutex<Option<u32>>>,
    /// How many times its process was started.
    starts: Arc<Mutex<u32>>,
    keeper: JoinHandle<()>,
}

/// The replicas, etcd, and the Service in front of them.
pub(crate) struct Replicas {
    pub(crate) etcd: EtcdServer,
    slots: Vec<Slot>,
    /// The Service: the address clients use.
    pub(crate) service: Proxy,
    dir: PathBuf,
}

impl Replicas {
    /// `count` replicas (their logs `replica-<i>.log` in `dir`, each start appended), with
    /// `extra` flags each, and the Service in front of them.
    pub(crate) async fn start(dir: &Path, count: usize, extra: &[String]) -> Self {
        let etcd = EtcdServer::start().await;
        let etcd_addr = etcd.endpoint().trim_start_matches("http://").to_owned();
        let mut slots = Vec::new();
        for i in 0..count {
            let name = format!("replica-{i}");
            let grpc = format!("127.0.0.1:{}", free_port());
            let etcd_link = Proxy::start(&etcd_addr).await;
            let args: Vec<String> = [
                "--listen".to_owned(),
                grpc.clone(),
                // Never read: an ephemeral port the process binds itself.
                "--metrics-listen".to_owned(),
                "127.0.0.1:0".to_owned(),
                "--data-dir".to_owned(),
                dir.join(format!("{name}-data")).display().to_string(),
                "--store=etcd".to_owned(),
                format!("--etcd-endpoints={}", etcd_link.url()),
                format!("--etcd-lease-ttl={LEASE_TTL}"),
                format!("--replica-name={name}"),
            ]
            .into_iter()
            .chain(extra.iter().cloned())
            .collect();
            let pid = Arc::new(Mutex::new(None));
            let starts = Arc::new(Mutex::new(0));
            let keeper = tokio::spawn(keep(
                args,
                dir.join(format!("{name}.log")),
                pid.clone(),
                starts.clone(),
            ));
            slots.push(Slot {
                name,
                grpc,
                etcd_link,
                pid,
                starts,
                keeper,
            });
        }
        let service = Proxy::service(slots.iter().map(|s| s.grpc.clone()).collect()).await;
        Self {
            etcd,
            slots,
            service,
            dir: dir.to_owned(),
        }
    }

    /// The leader's tenure as etcd has it (`None`: no leader now).
    pub(crate) async fn leader(&self) -> Option<Tenure> {
        let opts = self.etcd.options(snapgate_etcd::DEFAULT_PREFIX);
        let client = snapgate_etcd::Client::new(&opts).ok()?;
        let (kv, _) = client.get(opts.leader_key().as_bytes()).await.ok()?;
        kv.map(|kv| Tenure {
            name: String::from_utf8_lossy(&kv.value).into_owned(),
            revision: kv.create_revision,
        })
    }

    /// Waits until a replica leads; returns its tenure.
    pub(crate) async fn wait_leader(&self, what: &str) -> Tenure {
        super::eventually(what, 30, || self.leader()).await
    }

    fn slot(&self, name: &str) -> &Slot {
        self.slots
            .iter()
            .find(|s| s.name == name)
            .unwrap_or_else(|| panic!("no replica {name}"))
    }

    /// `http://<address>` of a replica other than `name`, for a client talking to it directly
    /// rather than through the Service.
    pub(crate) fn other_than(&self, name: &str) -> String {
        let slot = self
            .slots
            .iter()
            .find(|s| s.name != name)
            .unwrap_or_else(|| panic!("no replica besides {name}"));
        format!("http://{}", slot.grpc)
    }

    /// Kills the leader with SIGKILL and returns its tenure at once, before any other began.
    pub(crate) async fn kill_leader_now(&self) -> Tenure {
        let old = self.wait_leader("a leader to kill").await;
        let pid = (*self.slot(&old.name).pid.lock().unwrap()).expect("the leader runs");
        kill(pid, "-KILL");
        old
    }

    /// Kills the leader with SIGKILL (its keeper starts it again, as a follower); returns the
    /// next tenure (another replica's, or the restarted one's if it won the race) once there
    /// is one, and how long that took.
    pub(crate) async fn kill_leader(&self) -> (Tenure, Duration) {
        let old = self.wait_leader("a leader to kill").await;
        let pid = (*self.slot(&old.name).pid.lock().unwrap()).expect("the leader runs");
        let killed = Instant::now();
        kill(pid, "-KILL");
        let new = self.wait_new_tenure(&old).await;
        (new, killed.elapsed())
    }

    /// Partitions the leader from etcd (its link a black hole: no answer, no reset, so it
    /// can neither renew its lease nor write, and learns so only by its own deadlines) until
    /// it has stopped leading (it exits; its keeper starts it again) and another tenure
    /// began; then heals the link. Returns the new tenure.
    pub(crate) async fn partition_leader(&self) -> Tenure {
        let old = self.wait_leader("a leader to partition").await;
        let slot = self.slot(&old.name);
        let starts = *slot.starts.lock().unwrap();
        slot.etcd_link.stall();
        super::eventually(
            &format!("{} stopped leading and restarted", old.name),
            30,
            || async { (*slot.starts.lock().unwrap() > starts).then_some(()) },
        )
        .await;
        let new = self.wait_new_tenure(&old).await;
        slot.etcd_link.restore();
        // The stalled connections end; the restarted replica connects afresh.
        slot.etcd_link.cut();
        slot.etcd_link.restore();
        new
    }

    /// Kills etcd with SIGKILL and starts it again on its data.
    pub(crate) async fn restart_etcd(&mut self) {
        self.etcd.kill();
        self.etcd.restart().await;
    }

    async fn wait_new_tenure(&self, old: &Tenure) -> Tenure {
        super::eventually(&format!("a tenure after {old:?}"), 60, || async {
            self.leader().await.filter(|l| l.revision != old.revision)
        })
        .await
    }

    /// The replicas' log files, for failure messages.
    pub(crate) fn log_files(&self) -> Vec<PathBuf> {
        self.slots
            .iter()
            .map(|s| self.dir.join(format!("{}.log", s.name)))
            .collect()
    }
}

impl Drop for Replicas {
    fn drop(&mut self) {
        for slot in &self.slots {
            slot.keeper.abort();
            if let Some(pid) = *slot.pid.lock().unwrap() {
                kill(pid, "-KILL");
            }
        }
    }
}

/// Runs the replica's process, and again each time it exits (its log appended).
async fn keep(
    args: Vec<String>,
    log: PathBuf,
    pid: Arc<Mutex<Option<u32>>>,
    starts: Arc<Mutex<u32>>,
) {
    loop {
        let mut cmd = Command::new(binary("snapgate-scheduler"));
        cmd.args(&args);
        let mut proc = spawn_appending(&mut cmd, &log);
        *pid.lock().unwrap() = proc.0.id();
        *starts.lock().unwrap() += 1;
        let _ = proc.0.wait().await;
        *pid.lock().unwrap() = None;
        // A pod's restart is not instant either; and a replica that cannot start must not
        // spin. (Real time: the replica is another process.)
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// As `support::spawn`, appending to `log`.
fn spawn_appending(cmd: &mut Command, log: &Path) -> super::Proc {
    let err = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .unwrap();
    super::Proc(
        cmd.stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(err)
            .kill_on_drop(true)
            .spawn()
            .unwrap(),
    )
}

fn kill(pid: u32, which: &str) {
    // Quietly: the process may have exited already.
    let _ = std::process::Command::new("kill")
        .args([which, &pid.to_string()])
        .stderr(std::process::Stdio::null())
        .status();
}
