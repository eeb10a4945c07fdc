//! The real `snapgate-scheduler` and `snapgate-agent` processes against a real kube-apiserver
//! (`./scripts/cluster up`), the agent authenticated by a token of `deploy/agent`'s
//! ServiceAccount and authorized by that manifest's Role only; the stand-in plays the kubelet
//! and the CSI driver (this crate's README).
//!
//! These tests need a running cluster, so they are `#[ignore]`d in a plain `cargo test` and run
//! by `./scripts/test` (which brings the cluster up) as `cargo test -p snapgate-cluster-tests
//! -- --ignored --test-threads 1` (one at a time: the cluster has one stand-in node). Run with
//! `--ignored` and no cluster, they fail saying how to start one.

use std::{
    collections::BTreeMap,
    net::TcpListener,
    path::{Path, PathBuf},
    process::Stdio,
    sync::Arc,
    time::{Duration, Instant},
};

use k8s_openapi::{
    api::{
        authentication::v1::SelfSubjectReview,
        batch::v1::Job,
        core::v1::{Event, Namespace, PersistentVolumeClaim, Pod, Secret},
    },
    apimachinery::pkg::api::resource::Quantity,
};
use kube::{
    Api,
    api::{DeleteParams, DynamicObject, ListParams, ObjectMeta, Patch, PatchParams, PostParams},
    config::{KubeConfigOptions, Kubeconfig},
};
use serde_json::{Value, json};
use snapgate_cluster_tests::{
    ClusterEnv, PodRun, PodScript, Standin, StandinConfig, apply_manifest, service_account_token,
    wait_for,
};
use snapgate_contract::{
    COPY_TRIGGER as TRIGGER, LATEST_COPY_STATUS as STATUS, LATEST_COPY_TRIGGER as LATEST,
    LATEST_COPY_TRIGGER_WAITING_SINCE as SINCE,
};
use snapgate_e2e::recorder::{Recorder, resource};
use snapgate_proto::v1::{self, source_service_client::SourceServiceClient};
use tokio::process::{Child, Command};

/// The bound of every wait on the cluster: real controllers, a real scheduler.
const WAIT: Duration = Duration::from_secs(120);

/// The four movers: what each source needs, its Job, and what its pod logs (scripted).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mover {
    Restic,
    Rclone,
    Rsync,
    RsyncTls,
}

impl Mover {
    /// The mover Job of source `db`.
    fn job(self) -> &'static str {
        match self {
            Self::Restic => "volsync-src-db",
            Self::Rclone => "volsync-rclone-src-db",
            Self::Rsync => "volsync-rsync-src-db",
            Self::RsyncTls => "volsync-rsync-tls-src-db",
        }
    }

    /// The Secret the source names, with the keys the agent checks.
    fn secret(self) -> Value {
        let (name, data) = match self {
            Self::Restic => (
                "restic-config",
                json!({"RESTIC_REPOSITORY": "s3:x", "RESTIC_PASSWORD": "x"}),
            ),
            Self::Rclone => ("rclone-secret", json!({"rclone.conf": "[s3]\ntype = s3\n"})),
            Self::Rsync => (
                "rsync-keys",
                json!({"source": "k", "source.pub": "p", "destination.pub": "d"}),
            ),
            Self::RsyncTls => ("tls-key", json!({"psk.txt": "volsync:0123"})),
        };
        json!({"metadata": {"name": name}, "stringData": data})
    }

    /// Source `db` of PVC `data` with this mover and copy method, manual trigger `once`.
    fn spec(self, method: v1::CopyMethod) -> v1::SourceSpec {
        let mut spec = v1::SourceSpec {
            source_pvc: "data".into(),
            trigger: Some(v1::ReplicationSourceTrigger {
                schedule: None,
                manual: Some("once".into()),
            }),
            ..Default::default()
        };
        match self {
            Self::Restic => {
                spec.restic = Some(v1::ReplicationSourceResticSpec {
                    copy_method: method as i32,
                    repository: "restic-config".into(),
                    ..Default::default()
                });
            }
            Self::Rclone => {
                spec.rclone = Some(v1::ReplicationSourceRcloneSpec {
                    copy_method: method as i32,
                    rclone_config: "rclone-secret".into(),
                    rclone_config_section: "s3".into(),
                    rclone_dest_path: "bucket/db".into(),
                    ..Default::default()
                });
            }
            Self::Rsync => {
                spec.rsync = Some(v1::ReplicationSourceRsyncSpec {
                    copy_method: method as i32,
                    ssh_keys: "rsync-keys".into(),
                    address: "backup.example.com".into(),
                    ..Default::default()
                });
            }
            Self::RsyncTls => {
                spec.rsync_tls = Some(v1::ReplicationSourceRsyncTlsSpec {
                    copy_method: method as i32,
                    key_secret: "tls-key".into(),
                    address: "10.0.0.9".into(),
                    ..Default::default()
                });
            }
        }
        spec
    }

    /// What its pod logs: summary lines and a line of noise the agent filters out.
    fn log(self) -> Vec<&'static str> {
        match self {
            Self::Restic => vec![
                "using parent snapshot 4f2a",
                "processed 12 files, 3.4 MiB in 0:01",
                "snapshot 9c1d77ab saved",
                "some noise that is filtered out",
                "Restic completed in 2s",
            ],
            Self::Rclone => vec![
                "Transferred:   1.2 MiB / 1.2 MiB, 100%",
                "some noise that is filtered out",
                "Elapsed time:  1.0s",
                "Rclone completed in 1s",
            ],
            Self::Rsync | Self::RsyncTls => vec![
                "some noise that is filtered out",
                "sent 1,234 bytes  received 56 bytes  2,580.00 bytes/sec",
                "total size is 10,000  speedup is 7.75",
                "rsync completed in 2s",
            ],
        }
    }

    /// The summary the agent must report of that log.
    fn tail(self) -> String {
        self.log()
            .into_iter()
            .filter(|l| !l.contains("noise"))
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// The PVCs left after a run besides `data`: restic keeps its cache.
    fn kept_pvcs(self) -> Vec<&'static str> {
        match self {
            Self::Restic => vec!["volsync-src-db-cache"],
            _ => Vec::new(),
        }
    }
}

/// The Job a pod belongs to (the label the Job controller sets).
fn job_of(pod: &Pod) -> String {
    pod.metadata
        .labels
        .as_ref()
        .and_then(|l| l.get("batch.kubernetes.io/job-name"))
        .cloned()
        .unwrap_or_default()
}

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// A binary of the workspace, built next to this test's own executable.
fn binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let path = exe.parent().and_then(Path::parent).unwrap().join(name);
    assert!(
        path.exists(),
        "{} is not built: run `cargo build --workspace --bins` (scripts/test does)",
        path.display()
    );
    path
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A child process, killed when dropped.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.start_kill();
    }
}

fn spawn(cmd: &mut Command, log: &Path) -> Proc {
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

async fn client_from(path: &Path) -> kube::Client {
    let config = Kubeconfig::read_from(path).unwrap();
    kube::Client::try_from(
        kube::Config::from_custom_kubeconfig(config, &KubeConfigOptions::default())
            .await
            .unwrap(),
    )
    .unwrap()
}

/// The last `n` lines of a process's log, without the frames of a backtrace (an error's
/// backtrace would otherwise push the error itself out of the tail).
fn tail(path: &Path, n: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().filter(|l| !backtrace_frame(l)).collect();
    format!(
        "--- {} (last {n} lines, backtrace frames left out)\n{}",
        path.display(),
        lines[lines.len().saturating_sub(n)..].join("\n")
    )
}

/// A line of a Rust backtrace: `  12: function` or `        at file:line`.
fn backtrace_frame(line: &str) -> bool {
    let trimmed = line.trim_start();
    if trimmed.len() == line.len() {
        return false;
    }
    trimmed.starts_with("at ")
        || trimmed
            .split_once(": ")
            .is_some_and(|(n, _)| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
}

#[tokio::test]
#[ignore = "needs a real cluster: ./scripts/cluster up, then cargo test -p snapgate-cluster-tests -- --ignored --test-threads 1 (./scripts/test does both)"]
async fn a_gated_snapshot_run_completes_and_is_cleaned_up_by_the_agent_under_its_role_on_a_real_api_server()
 {
    gated_run(
        Mover::Restic,
        v1::CopyMethod::Snapshot,
        TriggerPath::Annotation,
        false,
    )
    .await;
}

#[tokio::test]
#[ignore = "needs a real cluster: ./scripts/cluster up, then cargo test -p snapgate-cluster-tests -- --ignored --test-threads 1 (./scripts/test does both)"]
async fn a_gated_clone_run_completes_and_is_cleaned_up_by_the_agent_under_its_role_on_a_real_api_server()
 {
    gated_run(
        Mover::Restic,
        v1::CopyMethod::Clone,
        TriggerPath::Annotation,
        false,
    )
    .await;
}

#[tokio::test]
#[ignore = "needs a real cluster: ./scripts/cluster up, then cargo test -p snapgate-cluster-tests -- --ignored --test-threads 1 (./scripts/test does both)"]
async fn a_snapshot_run_triggered_through_the_sdk_completes_and_is_cleaned_up_by_the_agent_under_its_role_on_a_real_api_server()
 {
    gated_run(
        Mover::Restic,
        v1::CopyMethod::Snapshot,
        TriggerPath::Rpc,
        false,
    )
    .await;
}

#[tokio::test]
#[ignore = "needs a real cluster: ./scripts/cluster up, then cargo test -p snapgate-cluster-tests -- --ignored --test-threads 1 (./scripts/test does both)"]
async fn a_gated_rclone_snapshot_run_completes_and_is_cleaned_up_on_a_real_api_server() {
    gated_run(
        Mover::Rclone,
        v1::CopyMethod::Snapshot,
        TriggerPath::Annotation,
        false,
    )
    .await;
}

#[tokio::test]
#[ignore = "needs a real cluster: ./scripts/cluster up, then cargo test -p snapgate-cluster-tests -- --ignored --test-threads 1 (./scripts/test does both)"]
async fn a_gated_rsync_snapshot_run_completes_and_is_cleaned_up_on_a_real_api_server() {
    gated_run(
        Mover::Rsync,
        v1::CopyMethod::Snapshot,
        TriggerPath::Annotation,
        false,
    )
    .await;
}

#[tokio::test]
#[ignore = "needs a real cluster: ./scripts/cluster up, then cargo test -p snapgate-cluster-tests -- --ignored --test-threads 1 (./scripts/test does both)"]
async fn a_gated_rsync_tls_snapshot_run_completes_and_is_cleaned_up_on_a_real_api_server() {
    gated_run(
        Mover::RsyncTls,
        v1::CopyMethod::Snapshot,
        TriggerPath::Annotation,
        false,
    )
    .await;
}

#[tokio::test]
#[ignore = "needs a real cluster: ./scripts/cluster up, then cargo test -p snapgate-cluster-tests -- --ignored --test-threads 1 (./scripts/test does both)"]
async fn with_callers_authenticated_against_the_api_servers_jwks_a_snapshot_run_triggered_through_the_sdk_completes()
 {
    gated_run(
        Mover::Restic,
        v1::CopyMethod::Snapshot,
        TriggerPath::Rpc,
        true,
    )
    .await;
}

#[tokio::test]
#[ignore = "needs a real cluster: ./scripts/cluster up, then cargo test -p snapgate-cluster-tests -- --ignored --test-threads 1 (./scripts/test does both)"]
async fn a_trigger_written_while_the_agent_is_killed_is_honoured_by_the_next_agent_on_a_real_api_server()
 {
    let mover = Mover::Restic;
    let pods: PodScript = Arc::new(move |pod: &Pod| {
        if job_of(pod) == mover.job() {
            PodRun::succeed(mover.log())
        } else {
            PodRun::fail(1, [format!("unexpected pod of job {:?}", job_of(pod))])
        }
    });
    let mut scene = Scene::start(mover, true, false, pods).await;
    let mut sources = scene.sources.clone();
    let (ns, name) = (scene.ns.clone(), "db".to_owned());
    sources
        .apply_source(v1::ApplySourceRequest {
            namespace: ns.clone(),
            name: name.clone(),
            spec: Some(mover.spec(v1::CopyMethod::Snapshot)),
            expected_version: 0,
        })
        .await
        .unwrap();
    let annotations = |pvcs: Api<PersistentVolumeClaim>| async move {
        pvcs.get("data")
            .await
            .map_err(|e| e.to_string())
            .map(|p| p.metadata.annotations.unwrap_or_default())
    };
    wait_for("WaitingForTrigger on PVC data", WAIT, || async {
        let a = annotations(scene.pvcs.clone()).await?;
        if a.get(STATUS).map(String::as_str) == Some("WaitingForTrigger") {
            Ok(())
        } else {
            Err(format!("annotations {a:?}\n{}", scene.logs()))
        }
    })
    .await
    .unwrap();

    // SIGKILL the agent; the application confirms meanwhile; a new agent process carries on.
    scene.kill_agent().await;
    scene
        .pvcs
        .patch(
            "data",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"annotations": {TRIGGER: "first"}}})),
        )
        .await
        .unwrap();
    assert!(
        scene.snapshots.versions("volsync-db-src").is_empty(),
        "no copy is cut while no agent runs"
    );
    scene.start_agent("agent-2.log");
    let status = wait_for("the run succeeds with the second agent", WAIT, || async {
        let s = sources
            .clone()
            .get_source(v1::GetSourceRequest {
                namespace: ns.clone(),
                name: name.clone(),
            })
            .await
            .map_err(|e| e.to_string())?
            .into_inner();
        match s.status.and_then(|st| st.latest_mover_status) {
            Some(m) => Ok(m),
            None => Err(format!("no mover result yet\n{}", scene.logs())),
        }
    })
    .await
    .unwrap();
    assert_eq!(status.result, "Successful", "{status:?}\n{}", scene.logs());
    assert_eq!(status.logs, mover.tail());
    let a = annotations(scene.pvcs.clone()).await.unwrap();
    assert_eq!(
        a.get(STATUS).map(String::as_str),
        Some("Completed"),
        "{a:?}"
    );
    assert_eq!(a.get(LATEST).map(String::as_str), Some("first"), "{a:?}");
    assert!(!a.contains_key(SINCE), "{a:?}");
    assert_eq!(
        scene
            .snapshots
            .versions("volsync-db-src")
            .iter()
            .filter_map(|s| s["metadata"]["uid"].as_str())
            .collect::<std::collections::BTreeSet<_>>()
            .len(),
        1,
        "one snapshot was cut, by the second agent"
    );
    scene.finish().await;
}

#[tokio::test]
#[ignore = "needs a real cluster: ./scripts/cluster up, then cargo test -p snapgate-cluster-tests -- --ignored --test-threads 1 (./scripts/test does both)"]
async fn pausing_a_source_stops_its_running_mover_through_the_job_controller_and_resuming_runs_it_to_success()
 {
    // The mover's first pod runs until it is deleted; the next one succeeds.
    let mover = Mover::Rclone;
    let first = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let pods: PodScript = Arc::new(move |pod: &Pod| {
        if job_of(pod) != mover.job() {
            PodRun::fail(1, [format!("unexpected pod of job {:?}", job_of(pod))])
        } else if first.swap(false, std::sync::atomic::Ordering::SeqCst) {
            PodRun::until_deleted(["Transferred:   0.1 MiB / 1.2 MiB, 8%"])
        } else {
            PodRun::succeed(mover.log())
        }
    });
    let scene = Scene::start(mover, false, false, pods).await;
    let logs = || scene.logs();
    let mut sources = scene.sources.clone();
    let (ns, name) = (scene.ns.clone(), "db".to_owned());
    sources
        .apply_source(v1::ApplySourceRequest {
            namespace: ns.clone(),
            name: name.clone(),
            spec: Some(mover.spec(v1::CopyMethod::Direct)),
            expected_version: 0,
        })
        .await
        .unwrap();
    let jobs_api: Api<Job> = Api::namespaced(scene.admin.clone(), &ns);
    let pods_api: Api<Pod> = Api::namespaced(scene.admin.clone(), &ns);
    let of_job =
        ListParams::default().labels(&format!("batch.kubernetes.io/job-name={}", mover.job()));
    let phases = || async {
        pods_api
            .list(&of_job)
            .await
            .map_err(|e| e.to_string())
            .map(|l| {
                l.items
                    .into_iter()
                    .map(|p| p.status.and_then(|s| s.phase).unwrap_or_default())
                    .collect::<Vec<_>>()
            })
    };
    wait_for("the mover's pod running", WAIT, || async {
        let phases = phases().await?;
        if phases == ["Running"] {
            Ok(())
        } else {
            Err(format!("pods {phases:?}\n{}", logs()))
        }
    })
    .await
    .unwrap();

    // Pause: the agent sets parallelism 0; the real Job controller deletes the running pod
    // and the kubelet stops it.
    sources
        .pause_source(v1::PauseSourceRequest {
            namespace: ns.clone(),
            name: name.clone(),
            note: "maintenance".into(),
        })
        .await
        .unwrap();
    wait_for(
        "parallelism 0 and no pod of the mover left",
        WAIT,
        || async {
            let job = jobs_api.get(mover.job()).await.map_err(|e| e.to_string())?;
            let parallelism = job.spec.as_ref().and_then(|s| s.parallelism);
            let active = job.status.as_ref().and_then(|s| s.active).unwrap_or(0);
            let phases = phases().await?;
            if parallelism == Some(0) && active == 0 && phases.is_empty() {
                Ok(())
            } else {
                Err(format!(
                    "parallelism {parallelism:?}, active {active}, pods {phases:?}\n{}",
                    logs()
                ))
            }
        },
    )
    .await
    .unwrap();
    let paused = sources
        .get_source(v1::GetSourceRequest {
            namespace: ns.clone(),
            name: name.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(
        paused
            .status
            .as_ref()
            .and_then(|s| s.latest_mover_status.as_ref())
            .is_none(),
        "no mover result while paused: {paused:?}"
    );
    assert_eq!(
        scene.standin.pods_ran().len(),
        1,
        "{:?}",
        scene.standin.pods_ran()
    );

    // Resume: parallelism 1 again; the Job controller starts a new pod, which succeeds.
    sources
        .resume_source(v1::ResumeSourceRequest {
            namespace: ns.clone(),
            name: name.clone(),
            note: String::new(),
        })
        .await
        .unwrap();
    let status = wait_for("the run succeeds after the resume", WAIT, || async {
        let s = sources
            .clone()
            .get_source(v1::GetSourceRequest {
                namespace: ns.clone(),
                name: name.clone(),
            })
            .await
            .map_err(|e| e.to_string())?
            .into_inner();
        match s.status.and_then(|st| st.latest_mover_status) {
            Some(m) => Ok(m),
            None => Err(format!("no mover result yet\n{}", logs())),
        }
    })
    .await
    .unwrap();
    assert_eq!(status.result, "Successful", "{status:?}\n{}", logs());
    assert_eq!(status.logs, mover.tail());
    assert_eq!(
        scene.standin.pods_ran().len(),
        2,
        "{:?}",
        scene.standin.pods_ran()
    );
    let parallelisms: Vec<Option<i64>> = scene
        .jobs
        .versions(mover.job())
        .iter()
        .map(|j| j["spec"]["parallelism"].as_i64())
        .collect();
    let zero = parallelisms.iter().position(|p| *p == Some(0));
    assert!(
        zero.is_some_and(|z| parallelisms[z..].contains(&Some(1))),
        "the Job went to parallelism 0 and back to 1: {parallelisms:?}"
    );
    wait_for("the Job and its pods deleted", WAIT, || async {
        let jobs = jobs_api
            .list(&ListParams::default())
            .await
            .map_err(|e| e.to_string())?;
        let phases = phases().await?;
        if jobs.items.is_empty() && phases.is_empty() {
            Ok(())
        } else {
            Err(format!(
                "{} jobs, pods {phases:?}\n{}",
                jobs.items.len(),
                logs()
            ))
        }
    })
    .await
    .unwrap();
    scene.finish().await;
}

/// How the application confirms it is quiesced.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum TriggerPath {
    /// It writes `copy-trigger` on the PVC.
    Annotation,
    /// It calls Trigger through the SDK for the run it waited for (WatchCopy).
    Rpc,
}

/// One namespace of the cluster with what a run needs: the stand-in, `deploy/agent`'s RBAC, the
/// mover's Secret, PVC `data` bound, the scheduler and the agent as processes (the agent with
/// its ServiceAccount's token), and watches recording the snapshots, Jobs and PVCs.
struct Scene {
    env: ClusterEnv,
    admin: kube::Client,
    ns: String,
    standin: Standin,
    pvcs: Api<PersistentVolumeClaim>,
    grpc: String,
    /// The scheduler's SourceService, as its admin when it authenticates callers.
    sources: SourceServiceClient<snapgate_sdk::client::AuthChannel>,
    /// The admin's token (audience `snapgate`) when the scheduler authenticates callers.
    admin_token: Option<String>,
    snapshots: Recorder,
    jobs: Recorder,
    claims: Recorder,
    dir: tempfile::TempDir,
    _scheduler: Proc,
    agent: Proc,
    agent_kubeconfig: PathBuf,
    agent_args: Vec<String>,
    /// The log file of the agent process running now.
    agent_log: String,
}

impl Scene {
    /// With `secured`, the scheduler authenticates every caller against the API server's
    /// JWKS (ServiceAccount tokens for audience `snapgate`), with the ServiceAccount `admin`
    /// of the namespace as admin; the agent presents its ServiceAccount's token.
    async fn start(mover: Mover, gated: bool, secured: bool, pods: PodScript) -> Self {
        let env = ClusterEnv::load().unwrap_or_else(|e| panic!("{e:#}"));
        let admin = env.admin_client().await.unwrap();
        let ns = format!("snapgate-e2e-{:08x}", rand::random::<u32>());
        let namespaces: Api<Namespace> = Api::all(admin.clone());
        namespaces
            .create(
                &PostParams::default(),
                &serde_json::from_value(json!({"metadata": {"name": ns}})).unwrap(),
            )
            .await
            .unwrap_or_else(|e| panic!("creating namespace {ns}: {e}\n{}", env.log_tails(20)));

        // The kubelet and the CSI driver, played.
        let standin = Standin::start(
            &env,
            admin.clone(),
            StandinConfig {
                pods,
                ..StandinConfig::default()
            },
        )
        .await
        .unwrap_or_else(|e| panic!("{e:#}\n{}", env.log_tails(20)));

        // The agent's RBAC exactly as deploy/agent/agent.yaml has it, in this namespace (what
        // kustomize's namespace replacement does); not its Deployment: no kubelet runs images here,
        // the agent runs as a process with its ServiceAccount's token instead.
        let manifest = std::fs::read_to_string(repo().join("deploy/agent/agent.yaml"))
            .unwrap()
            .replace("my-app", &ns);
        let applied = apply_manifest(&admin, &manifest, "snapgate-e2e", |kind| {
            kind != "Deployment"
        })
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
        assert_eq!(
            applied,
            [
                "ServiceAccount/snapgate-agent".to_owned(),
                "Role/snapgate-agent".into(),
                "RoleBinding/snapgate-agent".into(),
                format!("ClusterRole/snapgate-agent.{ns}"),
                format!("ClusterRoleBinding/snapgate-agent.{ns}"),
            ]
        );
        let dir = tempfile::tempdir().unwrap();
        let hour = Duration::from_secs(3600);
        let token = service_account_token(&admin, &ns, "snapgate-agent", &[], hour)
            .await
            .unwrap();
        let agent_kubeconfig = dir.path().join("agent.kubeconfig");
        env.write_token_kubeconfig(&agent_kubeconfig, "snapgate-agent", &token)
            .unwrap();
        let as_agent = client_from(&agent_kubeconfig).await;
        let review = Api::<SelfSubjectReview>::all(as_agent.clone())
            .create(&PostParams::default(), &SelfSubjectReview::default())
            .await
            .unwrap();
        assert_eq!(
            review
                .status
                .and_then(|s| s.user_info)
                .and_then(|u| u.username),
            Some(format!("system:serviceaccount:{ns}:snapgate-agent")),
            "the agent's kubeconfig authenticates as its ServiceAccount"
        );

        // The application's side: the mover's Secret and PVC `data` (gated or not), bound by the
        // stand-in's provisioner and the PV controller.
        let secrets: Api<Secret> = Api::namespaced(admin.clone(), &ns);
        secrets
            .create(
                &PostParams::default(),
                &serde_json::from_value(mover.secret()).unwrap(),
            )
            .await
            .unwrap();
        let pvcs: Api<PersistentVolumeClaim> = Api::namespaced(admin.clone(), &ns);
        pvcs.create(
            &PostParams::default(),
            &PersistentVolumeClaim {
                metadata: ObjectMeta {
                    name: Some("data".into()),
                    annotations: gated.then(|| {
                        BTreeMap::from([("volsync.backube/use-copy-trigger".into(), String::new())])
                    }),
                    ..Default::default()
                },
                spec: Some(k8s_openapi::api::core::v1::PersistentVolumeClaimSpec {
                    access_modes: Some(vec!["ReadWriteOnce".into()]),
                    storage_class_name: Some(StandinConfig::default().storage_class),
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
        wait_for("PVC data Bound", WAIT, || async {
            let p = pvcs.get("data").await.map_err(|e| e.to_string())?;
            match p.status.as_ref().and_then(|s| s.phase.as_deref()) {
                Some("Bound") => Ok(()),
                other => Err(format!(
                    "phase {other:?}; stand-in errors {:?}",
                    standin.errors()
                )),
            }
        })
        .await
        .unwrap();

        let snapshots = Recorder::start(
            admin.clone(),
            &ns,
            resource(
                "snapshot.storage.k8s.io",
                "VolumeSnapshot",
                "volumesnapshots",
            ),
            WAIT,
        )
        .await;
        let jobs =
            Recorder::start(admin.clone(), &ns, resource("batch", "Job", "jobs"), WAIT).await;
        let claims = Recorder::start(
            admin.clone(),
            &ns,
            resource("", "PersistentVolumeClaim", "persistentvolumeclaims"),
            WAIT,
        )
        .await;

        // The scheduler and the agent, as processes, on loopback. Secured: the scheduler reads
        // the API server's JWKS (verified against the cluster CA, with a token of its own
        // ServiceAccount) and takes ServiceAccount tokens made for `snapgate`.
        let mut scheduler_args: Vec<String> = Vec::new();
        // Without authentication sources have no author: the agent acts on the scheduler's
        // word. Secured, it reviews each source's author with the API server (the default).
        let mut agent_args: Vec<String> = vec!["--source-authors=trust".into()];
        let mut admin_token = None;
        if secured {
            let accounts: Api<k8s_openapi::api::core::v1::ServiceAccount> =
                Api::namespaced(admin.clone(), &ns);
            for name in ["admin", "snapgate-scheduler"] {
                accounts
                    .create(
                        &PostParams::default(),
                        &serde_json::from_value(json!({"metadata": {"name": name}})).unwrap(),
                    )
                    .await
                    .unwrap();
            }
            let write = |file: &str, token: String| {
                let path = dir.path().join(file);
                std::fs::write(&path, token).unwrap();
                path.to_string_lossy().into_owned()
            };
            let jwks_token = service_account_token(&admin, &ns, "snapgate-scheduler", &[], hour)
                .await
                .unwrap();
            let agent_token =
                service_account_token(&admin, &ns, "snapgate-agent", &["snapgate"], hour)
                    .await
                    .unwrap();
            let token = service_account_token(&admin, &ns, "admin", &["snapgate"], hour)
                .await
                .unwrap();
            scheduler_args = vec![
                "--auth-jwks".into(),
                format!("{}/openid/v1/jwks", env.server),
                "--auth-issuer".into(),
                env.server.clone(),
                "--auth-jwks-ca-file".into(),
                env.ca.to_string_lossy().into_owned(),
                "--auth-jwks-token-file".into(),
                write("jwks-token", jwks_token),
                "--admin".into(),
                format!("system:serviceaccount:{ns}:admin"),
            ];
            agent_args = vec!["--token-file".into(), write("agent-token", agent_token)];
            // The admin applies the sources, so the agent acts with the admin's rights in
            // Kubernetes: the built-in edit role in the namespace, as docs/running-on-kubernetes.md
            // binds it.
            let bindings: Api<k8s_openapi::api::rbac::v1::RoleBinding> =
                Api::namespaced(admin.clone(), &ns);
            bindings
                .create(
                    &PostParams::default(),
                    &serde_json::from_value(json!({
                        "metadata": {"name": "admin-edit"},
                        "roleRef": {
                            "apiGroup": "rbac.authorization.k8s.io",
                            "kind": "ClusterRole",
                            "name": "edit",
                        },
                        "subjects": [{"kind": "ServiceAccount", "name": "admin", "namespace": ns}],
                    }))
                    .unwrap(),
                )
                .await
                .unwrap();
            admin_token = Some(token);
        }
        let grpc = format!("127.0.0.1:{}", free_port());
        let scheduler = spawn(
            Command::new(binary("snapgate-scheduler"))
                .args(["--listen", &grpc])
                // Never read: an ephemeral port the process binds itself (no port to race for).
                .args(["--metrics-listen", "127.0.0.1:0"])
                .arg("--data-dir")
                .arg(dir.path().join("data"))
                .args(&scheduler_args),
            &dir.path().join("scheduler.log"),
        );
        let agent = spawn_agent(
            &dir,
            "agent.log",
            &agent_kubeconfig,
            &grpc,
            &ns,
            &agent_args,
        );
        let client = wait_for("the scheduler", WAIT, || async {
            let mut builder = snapgate_sdk::Client::builder(format!("http://{grpc}"));
            if let Some(t) = &admin_token {
                builder = builder.token(t.clone());
            }
            builder.connect().await.map_err(|e| e.to_string())
        })
        .await
        .unwrap();
        let sources = client.sources();
        Self {
            env,
            admin,
            ns,
            standin,
            pvcs,
            grpc,
            sources,
            admin_token,
            snapshots,
            jobs,
            claims,
            dir,
            _scheduler: scheduler,
            agent,
            agent_kubeconfig,
            agent_args,
            agent_log: "agent.log".into(),
        }
    }

    /// Kills the agent (SIGKILL) and waits for it to be gone.
    async fn kill_agent(&mut self) {
        self.agent.0.start_kill().unwrap();
        self.agent.0.wait().await.unwrap();
    }

    /// Starts a new agent process, its log in `log`.
    fn start_agent(&mut self, log: &str) {
        self.agent = spawn_agent(
            &self.dir,
            log,
            &self.agent_kubeconfig,
            &self.grpc,
            &self.ns,
            &self.agent_args,
        );
        self.agent_log = log.into();
    }

    /// The agent's and the scheduler's logs, the stand-in's errors and the components' logs.
    fn logs(&self) -> String {
        format!(
            "{}\n{}\nstand-in errors: {:?}\n{}",
            tail(&self.dir.path().join(&self.agent_log), 40),
            tail(&self.dir.path().join("scheduler.log"), 20),
            self.standin.errors(),
            self.env.log_tails(10)
        )
    }

    /// Deletes the namespace (not waited for).
    async fn finish(self) {
        Api::<Namespace>::all(self.admin.clone())
            .delete(&self.ns, &DeleteParams::default())
            .await
            .unwrap();
    }
}

/// The agent process on this kubeconfig and scheduler, serving `ns`, its stderr in `log`.
fn spawn_agent(
    dir: &tempfile::TempDir,
    log: &str,
    kubeconfig: &Path,
    grpc: &str,
    ns: &str,
    extra: &[String],
) -> Proc {
    spawn(
        Command::new(binary("snapgate-agent"))
            .env("KUBECONFIG", kubeconfig)
            .args(["--scheduler", &format!("http://{grpc}")])
            .args(["--namespace", ns])
            // Never read: an ephemeral port the process binds itself (no port to race for).
            .args(["--metrics-listen", "127.0.0.1:0"])
            .args(["--agent-id", "cluster-test"])
            .args(extra),
        &dir.path().join(log),
    )
}

/// One gated run of PVC `data` with this mover and copy method, triggered through `path`, in a
/// namespace of its own; checks the run, the copy it made, the cleanup and the Events.
async fn gated_run(mover: Mover, method: v1::CopyMethod, path: TriggerPath, secured: bool) {
    let started = Instant::now();
    let pods: PodScript = Arc::new(move |pod: &Pod| {
        if job_of(pod) == mover.job() {
            PodRun::succeed(mover.log())
        } else {
            PodRun::fail(1, [format!("unexpected pod of job {:?}", job_of(pod))])
        }
    });
    let scene = Scene::start(mover, true, secured, pods).await;
    let Scene {
        env,
        admin,
        ns,
        standin,
        pvcs,
        grpc,
        snapshots,
        jobs,
        claims,
        ..
    } = &scene;
    let logs = || scene.logs();
    let mut sources = scene.sources.clone();
    if secured {
        let anonymous = snapgate_sdk::Client::connect(format!("http://{grpc}"))
            .await
            .unwrap();
        let refused = anonymous
            .sources()
            .list_sources(v1::ListSourcesRequest {
                namespace: ns.clone(),
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(refused.code(), tonic::Code::Unauthenticated, "{refused:?}");
    }
    sources
        .apply_source(v1::ApplySourceRequest {
            namespace: ns.clone(),
            name: "db".into(),
            spec: Some(mover.spec(method)),
            expected_version: 0,
        })
        .await
        .unwrap();

    // The annotation path: the agent marks the PVC waiting; the application writes a trigger.
    let annotations = || async {
        pvcs.get("data")
            .await
            .map_err(|e| e.to_string())
            .map(|p| p.metadata.annotations.unwrap_or_default())
    };
    wait_for("WaitingForTrigger on PVC data", WAIT, || async {
        let a = annotations().await?;
        if a.get(STATUS).map(String::as_str) == Some("WaitingForTrigger") {
            Ok(())
        } else {
            Err(format!("annotations {a:?}\n{}", logs()))
        }
    })
    .await
    .unwrap();
    assert!(
        snapshots.versions("volsync-db-src").is_empty(),
        "no copy is cut before the trigger"
    );
    match path {
        TriggerPath::Annotation => {
            pvcs.patch(
                "data",
                &PatchParams::default(),
                &Patch::Merge(json!({"metadata": {"annotations": {TRIGGER: "first"}}})),
            )
            .await
            .unwrap();
        }
        TriggerPath::Rpc => {
            let mut builder = snapgate_sdk::Client::builder(format!("http://{grpc}"));
            if let Some(t) = &scene.admin_token {
                builder = builder.token(t.clone());
            }
            let sdk = builder.connect().await.unwrap();
            let target = v1::CopyTarget {
                namespace: ns.clone(),
                pvc: "data".into(),
                source: String::new(),
            };
            let request = tokio::time::timeout(WAIT, sdk.wait_for_copy_request(&target))
                .await
                .unwrap_or_else(|_| panic!("no copy request within {WAIT:?}\n{}", logs()))
                .unwrap();
            let answer = sdk
                .trigger(&target, Some(&request.run_id), "first")
                .await
                .unwrap();
            assert_eq!(answer.run_id, request.run_id);
        }
    }

    let source = wait_for("the run succeeds", WAIT, || async {
        let s = sources
            .clone()
            .get_source(v1::GetSourceRequest {
                namespace: ns.clone(),
                name: "db".into(),
            })
            .await
            .map_err(|e| e.to_string())?
            .into_inner();
        let st = s.status.clone().unwrap_or_default();
        if st.last_manual_sync == "once" && st.latest_mover_status.is_some() {
            Ok(st)
        } else {
            Err(format!("status {st:?}\n{}", logs()))
        }
    })
    .await
    .unwrap();
    let status = source.latest_mover_status.unwrap();
    assert_eq!(status.result, "Successful", "{status:?}\n{}", logs());
    assert_eq!(
        status.logs,
        mover.tail(),
        "the agent read the mover's log through the API server from the kubelet"
    );
    let reads = standin.log_reads();
    assert!(
        reads.iter().any(
            |r| r.container.starts_with(&format!("{ns}/{}-", mover.job()))
                && r.status == 200
                // The agent reads the log's last lines whole and filters them itself.
                && r.query.contains("tailLines=")
        ),
        "the API server read the mover pod's log from the stand-in kubelet: {reads:?}"
    );
    let a = annotations().await.unwrap();
    assert_eq!(
        a.get(STATUS).map(String::as_str),
        Some("Completed"),
        "{a:?}"
    );
    assert_eq!(a.get(LATEST).map(String::as_str), Some("first"), "{a:?}");
    assert!(!a.contains_key(SINCE), "{a:?}");

    // What the run made. Snapshot: the VolumeSnapshot, bound and ready (by the stand-in), and
    // the PVC restored from it; Clone: the clone PVC of data and no snapshot. Either is the
    // mover's source, bound like the restic cache PVC; the mover Job was completed by the real
    // Job controller.
    let copy_source = match method {
        v1::CopyMethod::Snapshot => {
            assert!(
                snapshots.versions("volsync-db-src").iter().any(|s| {
                    s["spec"]["source"]["persistentVolumeClaimName"] == "data"
                        && s["status"]["readyToUse"] == true
                }),
                "a ready VolumeSnapshot of data: {:?}",
                snapshots.versions("volsync-db-src")
            );
            json!({"apiGroup": "snapshot.storage.k8s.io", "kind": "VolumeSnapshot", "name": "volsync-db-src"})
        }
        _ => {
            assert!(
                snapshots.versions("volsync-db-src").is_empty(),
                "a Clone run cuts no snapshot"
            );
            json!({"apiGroup": null, "kind": "PersistentVolumeClaim", "name": "data"})
        }
    };
    for pvc in std::iter::once("volsync-db-src").chain(mover.kept_pvcs()) {
        assert!(
            claims
                .versions(pvc)
                .iter()
                .any(|p| p["status"]["phase"] == "Bound"),
            "PVC {pvc} bound: {:?}",
            claims.versions(pvc)
        );
    }
    assert_eq!(
        claims.versions("volsync-db-src")[0]["spec"]["dataSource"],
        copy_source
    );
    assert!(
        jobs.versions(mover.job()).iter().any(|j| {
            j["status"]["conditions"].as_array().is_some_and(|c| {
                c.iter()
                    .any(|c| c["type"] == "Complete" && c["status"] == "True")
            })
        }),
        "the mover Job completed: {:?}",
        jobs.versions(mover.job())
    );
    assert_eq!(standin.pods_ran().len(), 1, "{:?}", standin.pods_ran());

    // Cleanup: the snapshot, the restored PVC, the Job and its pod are gone; a restic cache
    // stays.
    let snaps_api: Api<DynamicObject> = Api::namespaced_with(
        admin.clone(),
        ns,
        &resource(
            "snapshot.storage.k8s.io",
            "VolumeSnapshot",
            "volumesnapshots",
        ),
    );
    let jobs_api: Api<Job> = Api::namespaced(admin.clone(), ns);
    let pods_api: Api<Pod> = Api::namespaced(admin.clone(), ns);
    wait_for("the run's temporary objects deleted", WAIT, || async {
        let names = |v: Vec<Option<String>>| v.into_iter().flatten().collect::<Vec<_>>();
        let lp = ListParams::default();
        let left = (
            names(
                snaps_api
                    .list(&lp)
                    .await
                    .map_err(|e| e.to_string())?
                    .items
                    .into_iter()
                    .map(|o| o.metadata.name)
                    .collect(),
            ),
            names(
                jobs_api
                    .list(&lp)
                    .await
                    .map_err(|e| e.to_string())?
                    .items
                    .into_iter()
                    .map(|o| o.metadata.name)
                    .collect(),
            ),
            names(
                pods_api
                    .list(&lp)
                    .await
                    .map_err(|e| e.to_string())?
                    .items
                    .into_iter()
                    .map(|o| o.metadata.name)
                    .collect(),
            ),
            names(
                pvcs.list(&lp)
                    .await
                    .map_err(|e| e.to_string())?
                    .items
                    .into_iter()
                    .map(|o| o.metadata.name)
                    .collect(),
            ),
        );
        let (s, j, p, c) = &left;
        if s.is_empty()
            && j.is_empty()
            && p.is_empty()
            && *c == [vec!["data"], mover.kept_pvcs()].concat()
        {
            Ok(())
        } else {
            Err(format!(
                "snapshots, jobs, pods, PVCs left: {left:?}\n{}",
                logs()
            ))
        }
    })
    .await
    .unwrap();

    // The agent recorded its Events (it may create them under its Role).
    let events: Api<Event> = Api::namespaced(admin.clone(), ns);
    let reasons: Vec<String> = events
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter(|e| e.reporting_component.as_deref() == Some("snapgate-agent"))
        .filter_map(|e| e.reason)
        .collect();
    assert!(
        !reasons.is_empty(),
        "the agent recorded Events about its run\n{}",
        logs()
    );
    if secured {
        // The agent reviewed the source's author (the admin, bound to `edit` here) with the
        // real API server before it acted.
        let agent_log =
            std::fs::read_to_string(scene.dir.path().join(&scene.agent_log)).unwrap_or_default();
        assert!(
            agent_log.contains("author allowed")
                && agent_log.contains(&format!("system:serviceaccount:{ns}:admin")),
            "{}",
            logs()
        );
    }

    eprintln!(
        "snapgate-cluster-tests: Kubernetes {}: one gated {mover:?} {method:?} run ({path:?} trigger{}) end to end in {:.1} s; agent Events: {reasons:?}",
        env.version,
        if secured {
            ", callers authenticated"
        } else {
            ""
        },
        started.elapsed().as_secs_f64()
    );
    scene.finish().await;
}

#[test]
fn a_log_tail_leaves_out_backtrace_frames_and_keeps_the_error() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("agent.log");
    std::fs::write(
        &log,
        "INFO starting\nError: cannot listen on 127.0.0.1:4 (--metrics-listen)\n\nStack backtrace:\n   0: anyhow::error::msg\n             at /src/lib.rs:690:13\n  12: main\n",
    )
    .unwrap();
    let tail = tail(&log, 3);
    assert!(
        tail.ends_with(
            "Error: cannot listen on 127.0.0.1:4 (--metrics-listen)\n\nStack backtrace:"
        ),
        "{tail}"
    );
    assert!(!backtrace_frame("Error: 12: x"));
    assert!(!backtrace_frame("2026-12-03T08:24:50Z  INFO at start"));
}
