//! The real kubectl against the served simulator.

mod fixtures;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use k8s_openapi::api::core::v1::PersistentVolumeClaim;
use kube::api::{Api, Patch, PatchParams, PostParams};
use serde_json::{Value, json};
use snapgate_kube_sim::{ADMIN_TOKEN, PvcBehaviour};

fn kubectl_path() -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|p| p.join("kubectl"))
            .find(|p| p.is_file())
    })
}

async fn kubectl(bin: &Path, kubeconfig: &Path, args: &[&str]) -> (bool, String, String) {
    let mut cmd = Command::new(bin);
    cmd.arg("--kubeconfig")
        .arg(kubeconfig)
        .args(args)
        .arg("--request-timeout=20s");
    let out = tokio::task::spawn_blocking(move || cmd.output())
        .await
        .unwrap()
        .expect("kubectl runs");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

async fn next_line(rx: &mut tokio::sync::mpsc::UnboundedReceiver<String>) -> Option<String> {
    tokio::time::timeout(Duration::from_secs(20), rx.recv())
        .await
        .ok()
        .flatten()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_gets_annotates_deletes_and_watches_pvcs_and_snapshots() {
    let bin =
        kubectl_path().expect("kubectl on PATH (scripts/test installs Debian's kubernetes-client)");
    let sim = fixtures::sim();
    sim.controllers()
        .default_pvc_behaviour(PvcBehaviour::NeverBind);
    sim.serve("127.0.0.1:0").await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = dir.path().join("kubeconfig");
    sim.write_kubeconfig(&kubeconfig, ADMIN_TOKEN).unwrap();
    let pvcs: Api<PersistentVolumeClaim> = Api::namespaced(sim.client(), "ns");
    pvcs.create(&PostParams::default(), &fixtures::pvc("ns", "x"))
        .await
        .unwrap();
    let snaps: Api<kube::api::DynamicObject> =
        Api::namespaced_with(sim.client(), "ns", &fixtures::snapshot_resource());
    snaps
        .create(
            &PostParams::default(),
            &fixtures::snapshot("ns", "snap-1", "x"),
        )
        .await
        .unwrap();

    let (ok, out, err) = kubectl(&bin, &kubeconfig, &["get", "pvc", "-n", "ns"]).await;
    assert!(ok, "kubectl get pvc failed: {err}");
    assert!(
        out.lines().next().unwrap_or("").starts_with("NAME"),
        "{out}"
    );
    assert!(
        out.lines()
            .any(|l| l.starts_with("x ") && l.contains("Pending")),
        "{out}"
    );

    let (ok, out, err) =
        kubectl(&bin, &kubeconfig, &["get", "pvc", "-n", "ns", "-o", "json"]).await;
    assert!(ok, "kubectl get -o json failed: {err}");
    let list: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(list["items"][0]["metadata"]["name"], "x");

    let (ok, out, err) = kubectl(&bin, &kubeconfig, &["get", "volumesnapshots", "-n", "ns"]).await;
    assert!(ok, "kubectl get volumesnapshots failed: {err}");
    assert!(out.contains("snap-1"), "{out}");

    let (ok, out, err) = kubectl(
        &bin,
        &kubeconfig,
        &["annotate", "pvc", "x", "foo=bar", "-n", "ns"],
    )
    .await;
    assert!(ok, "kubectl annotate failed: {err}");
    assert!(out.contains("annotated"), "{out}");
    assert_eq!(
        pvcs.get("x").await.unwrap().metadata.annotations.unwrap()["foo"],
        "bar"
    );

    // watch: the initial object, then a change
    let mut child = Command::new(&bin)
        .arg("--kubeconfig")
        .arg(&kubeconfig)
        .args(["get", "pvc", "-n", "ns", "-w", "--output-watch-events"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut lines = Vec::new();
    while !lines
        .iter()
        .any(|l: &String| l.contains("ADDED") && l.contains('x'))
    {
        let l = next_line(&mut rx)
            .await
            .expect("kubectl -w printed the initial object");
        lines.push(l);
    }
    pvcs.patch_status(
        "x",
        &PatchParams::default(),
        &Patch::Merge(json!({"status": {"phase": "Bound"}})),
    )
    .await
    .unwrap();
    while !lines
        .iter()
        .any(|l| l.contains("MODIFIED") && l.contains("Bound"))
    {
        let l = next_line(&mut rx)
            .await
            .unwrap_or_else(|| panic!("kubectl -w printed the change; got {lines:?}"));
        lines.push(l);
    }
    child.kill().unwrap();
    let _ = child.wait();

    let (ok, out, err) = kubectl(&bin, &kubeconfig, &["delete", "pvc", "x", "-n", "ns"]).await;
    assert!(ok, "kubectl delete failed: {err}");
    assert!(out.contains("deleted"), "{out}");
    assert!(pvcs.get_opt("x").await.unwrap().is_none());

    let (ok, _, err) = kubectl(&bin, &kubeconfig, &["get", "pvc", "x", "-n", "ns"]).await;
    assert!(!ok);
    assert!(
        err.contains("NotFound") || err.contains("not found"),
        "{err}"
    );
}
