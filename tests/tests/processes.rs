//! The real binaries as separate processes: `snapgate-kube-sim` serving the Kubernetes REST
//! API on loopback with its kubeconfig, `snapgate-scheduler` on its redb store, and
//! `snapgate-agent` reading that kubeconfig as kubectl would. The test talks to the API server
//! with kube's client from the same kubeconfig and to the scheduler over gRPC. The agent is
//! killed (SIGKILL) while the run waits; the trigger written meanwhile is honoured by the next
//! agent.

use std::{
    collections::BTreeMap,
    path::Path,
    process::{Child, Command, Stdio},
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
use snapgate_proto::v1::{self, source_service_client::SourceServiceClient};
use support::{binary, eventually, free_port};

mod support;

struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn spawn(cmd: &mut Command) -> Proc {
    Proc(
        cmd.stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    )
}

/// An agent process; its metrics listen on the returned address.
fn agent(kubeconfig: &Path, scheduler: &str) -> (Proc, String) {
    let metrics = format!("127.0.0.1:{}", free_port());
    let proc = spawn(
        Command::new(binary("snapgate-agent"))
            .env("KUBECONFIG", kubeconfig)
            .args(["--scheduler", scheduler])
            .args(["--namespace", "app"])
            // The scheduler runs without authentication: sources have no author.
            .arg("--source-authors=trust")
            .args(["--metrics-listen", &metrics])
            .args(["--agent-id", "process-test"]),
    );
    (proc, metrics)
}

/// `GET path` over plain HTTP/1.1; the body.
fn http_get(addr: &str, path: &str) -> Option<String> {
    use std::io::{Read as _, Write as _};
    let mut stream = std::net::TcpStream::connect(addr).ok()?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    response
        .starts_with("HTTP/1.1 200")
        .then(|| response.split_once("\r\n\r\n").map(|(_, b)| b.to_owned()))
        .flatten()
}

async fn annotations(pvcs: &Api<PersistentVolumeClaim>) -> BTreeMap<String, String> {
    pvcs.get("data")
        .await
        .ok()
        .and_then(|p| p.metadata.annotations)
        .unwrap_or_default()
}

#[tokio::test]
async fn scheduler_agent_and_simulated_cluster_as_separate_processes_complete_a_gated_copy() {
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = dir.path().join("kubeconfig");
    let _sim = spawn(
        Command::new(binary("snapgate-kube-sim"))
            .args(["--listen", &format!("127.0.0.1:{}", free_port())])
            .arg("--kubeconfig")
            .arg(&kubeconfig),
    );
    let grpc = format!("127.0.0.1:{}", free_port());
    let _scheduler = spawn(
        Command::new(binary("snapgate-scheduler"))
            .args(["--listen", &grpc])
            // Never read: an ephemeral port the process binds itself (no port to race for).
            .args(["--metrics-listen", "127.0.0.1:0"])
            .arg("--data-dir")
            .arg(dir.path().join("data")),
    );
    let config = eventually("the kubeconfig", 60, || {
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
    eventually("the API server", 60, || {
        let namespaces = namespaces.clone();
        async move {
            namespaces
                .create(
                    &PostParams::default(),
                    &Namespace {
                        metadata: ObjectMeta {
                            name: Some("app".into()),
                            ..Default::default()
                        },
                        ..Default::default()
                    },
                )
                .await
                .ok()
        }
    })
    .await;
    let secrets: Api<Secret> = Api::namespaced(client.clone(), "app");
    secrets
        .create(
            &PostParams::default(),
            &Secret {
                metadata: ObjectMeta {
                    name: Some("restic-config".into()),
                    ..Default::default()
                },
                string_data: Some(BTreeMap::from([
                    ("RESTIC_REPOSITORY".into(), "s3:x".into()),
                    ("RESTIC_PASSWORD".into(), "x".into()),
                ])),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let pvcs: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), "app");
    pvcs.create(
        &PostParams::default(),
        &PersistentVolumeClaim {
            metadata: ObjectMeta {
                name: Some("data".into()),
                annotations: Some(BTreeMap::from([(
                    "volsync.backube/use-copy-trigger".into(),
                    String::new(),
                )])),
                ..Default::default()
            },
            spec: Some(k8s_openapi::api::core::v1::PersistentVolumeClaimSpec {
                access_modes: Some(vec!["ReadWriteOnce".into()]),
                resources: Some(k8s_openapi::api::core::v1::VolumeResourceRequirements {
                    requests: Some(BTreeMap::from([("storage".into(), Quantity("1Gi".into()))])),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            status: None,
        },
    )
    .await
    .unwrap();

    let url = format!("http://{grpc}");
    let (mut first_agent, _) = agent(&kubeconfig, &url);
    let channel = eventually("the scheduler", 60, || {
        let url = url.clone();
        async move {
            tonic::transport::Endpoint::from_shared(url)
                .unwrap()
                .connect()
                .await
                .ok()
        }
    })
    .await;
    let mut sources = SourceServiceClient::new(channel);
    sources
        .apply_source(v1::ApplySourceRequest {
            namespace: "app".into(),
            name: "db".into(),
            spec: Some(v1::SourceSpec {
                source_pvc: "data".into(),
                trigger: Some(v1::ReplicationSourceTrigger {
                    schedule: None,
                    manual: Some("once".into()),
                }),
                restic: Some(v1::ReplicationSourceResticSpec {
                    copy_method: v1::CopyMethod::Snapshot as i32,
                    repository: "restic-config".into(),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            expected_version: 0,
        })
        .await
        .unwrap();
    eventually(
        "WaitingForTrigger, written by the agent process",
        60,
        || {
            let pvcs = pvcs.clone();
            async move {
                let a = annotations(&pvcs).await;
                (a.get("volsync.backube/latest-copy-status")
                    .map(String::as_str)
                    == Some("WaitingForTrigger"))
                .then_some(())
            }
        },
    )
    .await;

    // SIGKILL the agent; the application confirms meanwhile; a new agent process carries on.
    first_agent.0.kill().unwrap();
    first_agent.0.wait().unwrap();
    pvcs.patch(
        "data",
        &PatchParams::default(),
        &Patch::Merge(serde_json::json!({
            "metadata": {"annotations": {"volsync.backube/copy-trigger": "first"}}
        })),
    )
    .await
    .unwrap();
    let (_second_agent, metrics) = agent(&kubeconfig, &url);
    eventually("the run succeeds", 60, || {
        let mut sources = sources.clone();
        async move {
            let s = sources
                .get_source(v1::GetSourceRequest {
                    namespace: "app".into(),
                    name: "db".into(),
                })
                .await
                .ok()?
                .into_inner();
            let st = s.status?;
            (st.last_manual_sync == "once"
                && st
                    .latest_mover_status
                    .is_some_and(|m| m.result == "Successful"))
            .then_some(())
        }
    })
    .await;
    let a = annotations(&pvcs).await;
    assert_eq!(
        a.get("volsync.backube/latest-copy-status")
            .map(String::as_str),
        Some("Completed")
    );
    assert_eq!(
        a.get("volsync.backube/latest-copy-trigger")
            .map(String::as_str),
        Some("first")
    );
    assert!(!a.contains_key("volsync.backube/latest-copy-trigger-waiting-since"));

    // The agent's own endpoints.
    assert_eq!(http_get(&metrics, "/healthz").as_deref(), Some("ok"));
    let text = http_get(&metrics, "/metrics").expect("agent metrics");
    assert!(text.contains("snapgate_agent_connected 1"), "{text}");
    assert!(
        text.contains("snapgate_agent_reports_total{kind=\"MoverFinished\"} 1"),
        "{text}"
    );
}
