//! The real binaries as separate processes, for the process tests: `snapgate-kube-sim` (or,
//! where a test must script the snapshot controller, the same server hosted in the test and
//! served over loopback with its kubeconfig), `snapgate-scheduler` on its redb store,
//! `snapgate-agent` reading the kubeconfig, and the `snapgate` CLI (also as
//! `snapgate quiesce-exec`). The test talks to the API server with kube's client from the same
//! kubeconfig. The agent reaches the scheduler through a [`Proxy`] the test can cut
//! ([`Cluster::link`]); [`invariants`] checks what every run a fault hit must still show.

#![allow(dead_code)]

pub(crate) mod invariants;
mod proxy;
mod replicas;

pub(crate) use proxy::Proxy;
pub(crate) use replicas::Replicas;

use std::{
    collections::BTreeMap,
    net::TcpListener,
    path::{Path, PathBuf},
    process::Stdio,
    time::Duration,
};

use k8s_openapi::{
    api::core::v1::{Namespace, PersistentVolumeClaim, Secret},
    apimachinery::pkg::api::resource::Quantity,
};
use kube::{
    Api,
    api::{ObjectMeta, Patch, PatchParams, PostParams},
    config::{KubeConfigOptions, Kubeconfig},
};
use serde_json::Value;
use snapgate_e2e::recorder::resource;
use tokio::process::{Child, Command};

/// The namespace every process test works in.
pub(crate) const NS: &str = "app";
/// Who the agent is to a hosted kube-sim (RBAC off: allowed everything), so that a test's
/// fault rules can pick the agent's requests out ([`snapgate_kube_sim::FaultRule::user`]).
pub(crate) const AGENT_USER: &str = "system:serviceaccount:app:snapgate-agent";

/// A binary of the workspace, built next to this test's own executable.
pub(crate) fn binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let dir = exe.parent().and_then(Path::parent).unwrap();
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} is not built: run `cargo build --workspace --bins` (scripts/test does)",
        path.display()
    );
    path
}

pub(crate) fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A child process, killed when dropped.
pub(crate) struct Proc(pub(crate) Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.start_kill();
    }
}

/// Spawns `cmd` with its stderr in `log` (for the failure messages).
pub(crate) fn spawn(cmd: &mut Command, log: &Path) -> Proc {
    let err = std::fs::File::create(log).unwrap();
    Proc(
        cmd.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(err)
            .kill_on_drop(true)
            .spawn()
            .unwrap(),
    )
}

/// The scheduler on `grpc`, its store in `dir/data`, its stderr in `dir/log`.
fn spawn_scheduler(grpc: &str, dir: &Path, log: &str, extra: &[String]) -> Proc {
    spawn(
        Command::new(binary("snapgate-scheduler"))
            .args(["--listen", grpc])
            // Never read: an ephemeral port the process binds itself (no port to race for).
            .args(["--metrics-listen", "127.0.0.1:0"])
            .arg("--data-dir")
            .arg(dir.join("data"))
            .args(extra),
        &dir.join(log),
    )
}

/// An agent of [`NS`] on the scheduler at `url`, its stderr in `log`.
fn spawn_agent(
    kubeconfig: &Path,
    url: &str,
    secure: &Secure,
    extra: &[String],
    log: &Path,
) -> Proc {
    let mut agent_cmd = Command::new(binary("snapgate-agent"));
    match &secure.agent_token {
        // The scheduler authenticates callers: the agent reviews each source's author.
        Some(token) => agent_cmd.arg("--token-file").arg(token),
        // Sources have no author: the agent acts on the scheduler's word.
        None => agent_cmd.arg("--source-authors=trust"),
    };
    spawn(
        agent_cmd
            .env("KUBECONFIG", kubeconfig)
            .args(["--scheduler", url])
            .args(["--namespace", NS])
            // Never read: an ephemeral port the process binds itself (no port to race for).
            .args(["--metrics-listen", "127.0.0.1:0"])
            .args(["--agent-id", "process-test"])
            .args(extra),
        log,
    )
}

/// Authentication for a cluster of processes: flags for the scheduler, token files for the
/// agent and the CLI.
#[derive(Clone, Debug, Default)]
pub(crate) struct Secure {
    pub(crate) scheduler_args: Vec<String>,
    pub(crate) agent_token: Option<PathBuf>,
    pub(crate) cli_token: Option<PathBuf>,
}

/// Sends a signal (`-STOP`, `-CONT`, `-KILL`) to a child process.
fn signal(p: &Proc, which: &str) {
    let pid = p.0.id().expect("the process is running").to_string();
    let ok = std::process::Command::new("kill")
        .args([which, &pid])
        .status()
        .unwrap()
        .success();
    assert!(ok, "kill {which} {pid} failed");
}

/// Polls `check` until it yields, for at most `secs` seconds; then fails naming `what`.
pub(crate) async fn eventually<T, F: std::future::Future<Output = Option<T>>>(
    what: &str,
    secs: u64,
    mut check: impl FnMut() -> F,
) -> T {
    snapgate_e2e::poll_until(what, Duration::from_secs(secs), || {
        let f = check();
        async move { f.await.ok_or_else(|| "nothing yet".to_owned()) }
    })
    .await
}

/// The output of one CLI call.
#[derive(Debug)]
pub(crate) struct Out {
    pub(crate) code: i32,
    pub(crate) stdout: String,
    pub(crate) stderr: String,
}

impl Out {
    pub(crate) fn json(&self) -> Value {
        serde_json::from_str(&self.stdout).unwrap_or_else(|e| panic!("not JSON ({e}): {self:?}"))
    }
}

/// How the API server runs.
pub(crate) enum Sim {
    /// The `snapgate-kube-sim` binary.
    Process(Proc),
    /// The same server in the test's runtime, so that the test can script its controllers.
    Hosted(snapgate_kube_sim::KubeSim),
}

/// kube-sim, the scheduler and one agent, each a process (but see [`Sim`]).
pub(crate) struct Cluster {
    pub(crate) dir: tempfile::TempDir,
    pub(crate) kubeconfig: PathBuf,
    /// The kubeconfig the agent reads.
    agent_kubeconfig: PathBuf,
    pub(crate) sim: Sim,
    pub(crate) client: kube::Client,
    pub(crate) url: String,
    /// The agent's way to the scheduler: a proxy the test can cut.
    pub(crate) link: Proxy,
    grpc: String,
    secure: Secure,
    /// The scheduler on its redb store, or (see [`Cluster::start_hosted_ha`]) none...
    scheduler: Option<Proc>,
    /// ...and replicas on etcd behind a Service at [`Cluster::grpc`].
    pub(crate) replicas: Option<Replicas>,
    agent: Proc,
    /// The agent's arguments besides the usual ones (for a restart).
    agent_args: Vec<String>,
}

impl Cluster {
    /// Everything as separate processes.
    pub(crate) async fn start() -> Self {
        Self::start_with_args(&[], &[]).await
    }

    /// Everything as separate processes, `snapgate-kube-sim` with `sim_args` and
    /// `snapgate-agent` with `agent_args` besides the usual ones.
    pub(crate) async fn start_with_args(sim_args: &[&str], agent_args: &[&str]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let kubeconfig = dir.path().join("kubeconfig");
        let sim = Sim::Process(spawn(
            Command::new(binary("snapgate-kube-sim"))
                .args(["--listen", &format!("127.0.0.1:{}", free_port())])
                .arg("--kubeconfig")
                .arg(&kubeconfig)
                .args(sim_args),
            &dir.path().join("kube-sim.log"),
        ));
        let agent_kubeconfig = kubeconfig.clone();
        Self::with_sim(
            dir,
            (kubeconfig, agent_kubeconfig),
            sim,
            Secure::default(),
            agent_args,
        )
        .await
    }

    /// kube-sim hosted in the test (served over loopback HTTP with its kubeconfig, as the
    /// binary does), the scheduler, the agent and the CLI as processes; the agent presents a
    /// token of its own, as [`AGENT_USER`].
    pub(crate) async fn start_hosted(script: impl FnOnce(&snapgate_kube_sim::KubeSim)) -> Self {
        Self::start_hosted_with(script, 0).await
    }

    /// As [`Cluster::start_hosted`], with the scheduler as two replicas on a real etcd behind a
    /// Service (`deploy/scheduler-ha`): [`Cluster::restart_scheduler`] then kills the leader.
    pub(crate) async fn start_hosted_ha(script: impl FnOnce(&snapgate_kube_sim::KubeSim)) -> Self {
        Self::start_hosted_with(script, 2).await
    }

    async fn start_hosted_with(
        script: impl FnOnce(&snapgate_kube_sim::KubeSim),
        replicas: usize,
    ) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let kubeconfig = dir.path().join("kubeconfig");
        let sim = snapgate_kube_sim::KubeSim::new();
        script(&sim);
        sim.add_token(
            snapgate_kube_sim::ADMIN_TOKEN,
            snapgate_kube_sim::ADMIN_USER,
        );
        sim.serve("127.0.0.1:0").await.unwrap();
        sim.write_kubeconfig(&kubeconfig, snapgate_kube_sim::ADMIN_TOKEN)
            .unwrap();
        let agent_kubeconfig = dir.path().join("agent-kubeconfig");
        sim.add_token("process-test-agent-token", AGENT_USER);
        sim.write_kubeconfig(&agent_kubeconfig, "process-test-agent-token")
            .unwrap();
        Self::with_sim_on(
            dir,
            (kubeconfig, agent_kubeconfig),
            Sim::Hosted(sim),
            Secure::default(),
            &[],
            replicas,
        )
        .await
    }

    /// As a cluster runs it: kube-sim hosted in the test issues ServiceAccount tokens (audience
    /// `snapgate`) and serves its key set; the scheduler authenticates callers against that
    /// URL, with `system:serviceaccount:snapgate:admin` as admin; the agent presents the token
    /// of `snapgate-agent` in its namespace, the CLI the admin's.
    pub(crate) async fn start_secured() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let kubeconfig = dir.path().join("kubeconfig");
        let sim = snapgate_kube_sim::KubeSim::new();
        sim.add_token(
            snapgate_kube_sim::ADMIN_TOKEN,
            snapgate_kube_sim::ADMIN_USER,
        );
        sim.serve("127.0.0.1:0").await.unwrap();
        sim.write_kubeconfig(&kubeconfig, snapgate_kube_sim::ADMIN_TOKEN)
            .unwrap();
        let token =
            |ns: &str, sa: &str| snapgate_e2e::secure::write_token(&sim, dir.path(), (ns, sa));
        let secure = Secure {
            scheduler_args: vec![
                "--auth-jwks".into(),
                format!("{}/openid/v1/jwks", sim.server_url().unwrap()),
                "--auth-issuer".into(),
                sim.issuer(),
                "--admin".into(),
                "system:serviceaccount:snapgate:admin".into(),
            ],
            agent_token: Some(token(NS, "snapgate-agent")),
            cli_token: Some(token("snapgate", "admin")),
        };
        // Tokens for the tests' applications.
        token(NS, "db-app");
        token("web", "db-app");
        let agent_kubeconfig = kubeconfig.clone();
        Self::with_sim(
            dir,
            (kubeconfig, agent_kubeconfig),
            Sim::Hosted(sim),
            secure,
            &[],
        )
        .await
    }

    /// `kubeconfigs`: the test's (the admin's), the agent's.
    async fn with_sim(
        dir: tempfile::TempDir,
        kubeconfigs: (PathBuf, PathBuf),
        sim: Sim,
        secure: Secure,
        agent_args: &[&str],
    ) -> Self {
        Self::with_sim_on(dir, kubeconfigs, sim, secure, agent_args, 0).await
    }

    /// With `replicas` scheduler replicas on etcd, or (0) one scheduler on redb.
    async fn with_sim_on(
        dir: tempfile::TempDir,
        (kubeconfig, agent_kubeconfig): (PathBuf, PathBuf),
        sim: Sim,
        secure: Secure,
        agent_args: &[&str],
        replicas: usize,
    ) -> Self {
        let (grpc, scheduler, replicas) = if replicas == 0 {
            let grpc = format!("127.0.0.1:{}", free_port());
            let scheduler =
                spawn_scheduler(&grpc, dir.path(), "scheduler.log", &secure.scheduler_args);
            (grpc, Some(scheduler), None)
        } else {
            let replicas = Replicas::start(dir.path(), replicas, &secure.scheduler_args).await;
            (replicas.service.addr(), None, Some(replicas))
        };
        let config = eventually("the kubeconfig", 15, || {
            let path = kubeconfig.clone();
            async move { Kubeconfig::read_from(&path).ok() }
        })
        .await;
        let client = kube::Client::try_from(
            kube::Config::from_custom_kubeconfig(config, &KubeConfigOptions::default())
                .await
                .unwrap(),
        )
        .unwrap();
        let namespaces: Api<Namespace> = Api::all(client.clone());
        eventually("the API server", 15, || {
            let namespaces = namespaces.clone();
            async move {
                namespaces
                    .create(
                        &PostParams::default(),
                        &Namespace {
                            metadata: ObjectMeta {
                                name: Some(NS.into()),
                                ..Default::default()
                            },
                            ..Default::default()
                        },
                    )
                    .await
                    .map(drop)
                    .or_else(|e| match e {
                        // Made already (issuing a token makes its namespace).
                        kube::Error::Api(s) if s.code == 409 => Ok(()),
                        other => Err(other),
                    })
                    .ok()
            }
        })
        .await;
        let secrets: Api<Secret> = Api::namespaced(client.clone(), NS);
        for (name, keys) in [
            (
                "restic-config",
                &[("RESTIC_REPOSITORY", "s3:x"), ("RESTIC_PASSWORD", "x")][..],
            ),
            ("rclone-secret", &[("rclone.conf", "[s3]\ntype = s3\n")][..]),
        ] {
            secrets
                .create(
                    &PostParams::default(),
                    &Secret {
                        metadata: ObjectMeta {
                            name: Some(name.into()),
                            ..Default::default()
                        },
                        string_data: Some(
                            keys.iter()
                                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                                .collect(),
                        ),
                        ..Default::default()
                    },
                )
                .await
                .unwrap();
        }
        let url = format!("http://{grpc}");
        let link = Proxy::start(&grpc).await;
        let agent_args: Vec<String> = agent_args.iter().map(|a| (*a).to_owned()).collect();
        let agent = spawn_agent(
            &agent_kubeconfig,
            &link.url(),
            &secure,
            &agent_args,
            &dir.path().join("agent.log"),
        );
        let cluster = Self {
            dir,
            kubeconfig,
            agent_kubeconfig,
            sim,
            client,
            url,
            link,
            grpc,
            secure,
            scheduler,
            replicas,
            agent,
            agent_args,
        };
        snapgate_e2e::poll_until(
            "the scheduler answers the CLI",
            Duration::from_secs(15),
            || async {
                let out = cluster.cli(&["list"]).await;
                if out.code == 0 {
                    Ok(())
                } else {
                    Err(format!("{out:?}\n{}", cluster.logs()))
                }
            },
        )
        .await;
        cluster
    }

    /// Stops the agent where it is (SIGSTOP): a stalled process, its sockets open.
    pub(crate) fn freeze_agent(&self) {
        signal(&self.agent, "-STOP");
    }

    /// Lets a frozen agent go on (SIGCONT).
    pub(crate) fn thaw_agent(&self) {
        signal(&self.agent, "-CONT");
    }

    /// Kills the scheduler with SIGKILL and starts it again on the same store and address
    /// (its log goes on in `scheduler-2.log`); returns once it answers the CLI.
    ///
    /// With replicas, kills the leader with SIGKILL instead (it is started again, a
    /// follower); returns once another replica leads and answers the CLI.
    pub(crate) async fn restart_scheduler(&mut self) {
        self.kill_scheduler().await;
        self.wait_answering("restarted").await;
    }

    /// Waits (bounded) until the scheduler answers the CLI again.
    pub(crate) async fn wait_answering(&self, case: &str) {
        eventually(
            &format!("{case}: the scheduler answers the CLI"),
            30,
            || async { (self.cli(&["list"]).await.code == 0).then_some(()) },
        )
        .await;
    }

    /// Kills the scheduler (with replicas: the leader, until another leads) and starts it
    /// again.
    async fn kill_scheduler(&mut self) {
        if let Some(replicas) = &self.replicas {
            let (next, took) = replicas.kill_leader().await;
            eprintln!("failover: {next:?} leads {took:?} after the leader was killed");
            return;
        }
        let scheduler = self.scheduler.as_mut().expect("a scheduler");
        signal(scheduler, "-KILL");
        let _ = scheduler.0.wait().await;
        self.scheduler = Some(spawn_scheduler(
            &self.grpc,
            self.dir.path(),
            "scheduler-2.log",
            &self.secure.scheduler_args,
        ));
    }

    /// Kills the scheduler and the agent with SIGKILL, both gone before either starts again;
    /// then starts the scheduler (on the same store and address; once it answers the CLI) and
    /// a new agent (their logs go on in `scheduler-2.log`, `agent-2.log`).
    pub(crate) async fn restart_both(&mut self) {
        signal(&self.agent, "-KILL");
        self.kill_scheduler().await;
        let _ = self.agent.0.wait().await;
        self.start_agent_again();
        self.wait_answering("restarted").await;
    }

    /// The scheduler's gRPC address (`host:port`).
    pub(crate) fn grpc(&self) -> &str {
        &self.grpc
    }

    /// Kills the agent with SIGKILL and starts a new agent process, which keeps nothing of
    /// the old one (its log goes on in `agent-2.log`).
    pub(crate) async fn restart_agent(&mut self) {
        signal(&self.agent, "-KILL");
        let _ = self.agent.0.wait().await;
        self.start_agent_again();
    }

    /// A new agent process, its log in `agent-2.log`.
    fn start_agent_again(&mut self) {
        self.agent = spawn_agent(
            &self.agent_kubeconfig,
            &self.link.url(),
            &self.secure,
            &self.agent_args,
            &self.dir.path().join("agent-2.log"),
        );
    }

    /// A file in the test's directory.
    pub(crate) fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// The logs of the scheduler and the agent, for failure messages.
    pub(crate) fn logs(&self) -> String {
        let replicas = self.replicas.iter().flat_map(Replicas::log_files);
        [
            "scheduler.log",
            "scheduler-2.log",
            "agent.log",
            "agent-2.log",
        ]
        .iter()
        .map(|f| self.path(f))
        .chain(replicas)
        .map(|f| {
            let text = std::fs::read_to_string(&f).unwrap_or_default();
            let f = f
                .file_name()
                .unwrap_or_default()
                .to_string_lossy()
                .into_owned();
            let tail: Vec<&str> = text.lines().rev().take(30).collect();
            format!(
                "--- {f} (last 30 lines)\n{}",
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
    }

    /// `snapgate --server <scheduler> -n app <args>`.
    pub(crate) fn cli_command(&self, args: &[&str]) -> Command {
        let mut cmd = self.cli_command_as(self.secure.cli_token.as_deref(), args);
        cmd.kill_on_drop(true);
        cmd
    }

    /// `snapgate --server <scheduler> -n app [--token-file <token>] <args>`.
    pub(crate) fn cli_command_as(&self, token: Option<&Path>, args: &[&str]) -> Command {
        self.cli_command_on(&self.url, token, args)
    }

    /// The CLI against the scheduler at `server` (a replica, not the Service).
    pub(crate) fn cli_command_on(
        &self,
        server: &str,
        token: Option<&Path>,
        args: &[&str],
    ) -> Command {
        let mut cmd = Command::new(binary("snapgate"));
        cmd.args(["--server", server, "-n", NS]);
        if let Some(t) = token {
            cmd.arg("--token-file").arg(t);
        }
        cmd.args(args)
            .env_remove("SNAPGATE_OUTPUT")
            .env_remove("SNAPGATE_TOKEN")
            .env_remove("SNAPGATE_TOKEN_FILE")
            .kill_on_drop(true);
        cmd
    }

    /// Runs the CLI to its end.
    pub(crate) async fn cli(&self, args: &[&str]) -> Out {
        self.cli_on(&self.url.clone(), args).await
    }

    /// Runs the CLI against the scheduler at `server` to its end.
    pub(crate) async fn cli_on(&self, server: &str, args: &[&str]) -> Out {
        let out = self
            .cli_command_on(server, self.secure.cli_token.as_deref(), args)
            .stdin(Stdio::null())
            .output()
            .await
            .unwrap();
        Out {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    /// Runs the CLI, which must succeed.
    pub(crate) async fn cli_ok(&self, args: &[&str]) -> Out {
        let out = self.cli(args).await;
        assert_eq!(out.code, 0, "snapgate {args:?}: {out:?}\n{}", self.logs());
        out
    }

    /// `snapgate apply -f <file>` with this ReplicationSource YAML.
    pub(crate) async fn apply(&self, yaml: &str) {
        let file = self.path(&format!("source-{}.yaml", free_port()));
        std::fs::write(&file, yaml).unwrap();
        self.cli_ok(&["apply", "-f", file.to_str().unwrap()]).await;
    }

    /// The gated PVC `data` and a restic Snapshot source `db` of it (manual trigger `once`,
    /// `extra` spec lines added, e.g. `  copyTrigger: {holders: [a]}\n`), applied through the
    /// CLI; returns once the agent has marked the PVC `WaitingForTrigger`.
    pub(crate) async fn gated_db_source_waiting(&self, extra: &str) {
        self.create_pvc("data", true).await;
        self.apply(&format!(
            "apiVersion: volsync.backube/v1alpha1
kind: ReplicationSource
metadata: {{name: db, namespace: {NS}}}
spec:
  sourcePVC: data
  trigger: {{manual: once}}
{extra}  restic: {{copyMethod: Snapshot, repository: restic-config}}
"
        ))
        .await;
        self.wait_annotations("data", "the run waits", |a| {
            a.get("volsync.backube/latest-copy-status")
                .map(String::as_str)
                == Some("WaitingForTrigger")
        })
        .await;
    }

    /// `snapgate runs <source> -o json`: the runs, newest first.
    pub(crate) async fn runs(&self, source: &str) -> Vec<Value> {
        let out = self.cli_ok(&["runs", source, "-o", "json"]).await;
        out.json()["items"].as_array().cloned().unwrap_or_default()
    }

    pub(crate) fn pvcs(&self) -> Api<PersistentVolumeClaim> {
        Api::namespaced(self.client.clone(), NS)
    }

    /// A 1Gi PVC, gated (`use-copy-trigger`) or not.
    pub(crate) async fn create_pvc(&self, name: &str, gated: bool) {
        let annotations = gated.then(|| {
            BTreeMap::from([("volsync.backube/use-copy-trigger".to_owned(), String::new())])
        });
        self.pvcs()
            .create(
                &PostParams::default(),
                &PersistentVolumeClaim {
                    metadata: ObjectMeta {
                        name: Some(name.into()),
                        annotations,
                        ..Default::default()
                    },
                    spec: Some(k8s_openapi::api::core::v1::PersistentVolumeClaimSpec {
                        access_modes: Some(vec!["ReadWriteOnce".into()]),
                        resources: Some(k8s_openapi::api::core::v1::VolumeResourceRequirements {
                            requests: Some(BTreeMap::from([(
                                "storage".into(),
                                Quantity("1Gi".into()),
                            )])),
                            ..Default::default()
                        }),
                        ..Default::default()
                    }),
                    status: None,
                },
            )
            .await
            .unwrap();
    }

    /// The PVC's annotations (empty if it cannot be read).
    pub(crate) async fn annotations(&self, pvc: &str) -> BTreeMap<String, String> {
        self.pvcs()
            .get(pvc)
            .await
            .ok()
            .and_then(|p| p.metadata.annotations)
            .unwrap_or_default()
    }

    /// Writes `copy-trigger` on the PVC with kube's client, as an application would.
    pub(crate) async fn write_copy_trigger(&self, pvc: &str, value: &str) {
        self.pvcs()
            .patch(
                pvc,
                &PatchParams::default(),
                &Patch::Merge(serde_json::json!({
                    "metadata": {"annotations": {"volsync.backube/copy-trigger": value}}
                })),
            )
            .await
            .unwrap();
    }

    /// Waits until the PVC's annotations satisfy `ok`.
    pub(crate) async fn wait_annotations(
        &self,
        pvc: &str,
        what: &str,
        ok: impl Fn(&BTreeMap<String, String>) -> bool,
    ) -> BTreeMap<String, String> {
        snapgate_e2e::poll_until(
            &format!("{pvc}: {what}"),
            Duration::from_secs(15),
            || async {
                let a = self.annotations(pvc).await;
                if ok(&a) {
                    Ok(a)
                } else {
                    Err(format!("annotations {a:?}\n{}", self.logs()))
                }
            },
        )
        .await
    }

    /// Waits until the newest run of `source` satisfies `ok`; returns it.
    pub(crate) async fn wait_run(
        &self,
        source: &str,
        what: &str,
        ok: impl Fn(&Value) -> bool,
    ) -> Value {
        self.wait_run_where(
            &format!("the newest run of {source}: {what}"),
            source,
            |runs| runs.first().filter(|r| ok(r)).cloned(),
        )
        .await
    }

    /// Waits until `pick` finds a run among the runs of `source`; returns it.
    pub(crate) async fn wait_run_where(
        &self,
        what: &str,
        source: &str,
        pick: impl Fn(&[Value]) -> Option<Value>,
    ) -> Value {
        snapgate_e2e::poll_until(what, Duration::from_secs(15), || async {
            let runs = self.runs(source).await;
            pick(&runs).ok_or_else(|| format!("runs {runs:#?}\n{}", self.logs()))
        })
        .await
    }

    /// Records every VolumeSnapshot the API server ever shows from now on.
    pub(crate) async fn record_snapshots(&self) -> Recorder {
        Recorder::start(
            self.client.clone(),
            NS,
            resource(
                "snapshot.storage.k8s.io",
                "VolumeSnapshot",
                "volumesnapshots",
            ),
            Duration::from_secs(15),
        )
        .await
    }

    /// Records every Job the API server ever shows from now on.
    pub(crate) async fn record_jobs(&self) -> Recorder {
        Recorder::start(
            self.client.clone(),
            NS,
            resource("batch", "Job", "jobs"),
            Duration::from_secs(15),
        )
        .await
    }
}

/// What a watch delivered in [`NS`] (see [`snapgate_e2e::recorder`]).
pub(crate) use snapgate_e2e::recorder::Recorder;
