//! The README's demo command, run as a user would (with free ports and a temp dir): it prints
//! the copy-trigger timeline WaitingForTrigger → InProgress → Completed, the application's
//! quiesce and unquiesce around it, and the mover's result.

use std::process::Command;

#[test]
fn the_demo_prints_the_copy_trigger_timeline_and_the_movers_result() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_snapgate-demo"))
        .args(["--runs", "1"])
        .args([
            "--kube-listen",
            "127.0.0.1:0",
            "--grpc-listen",
            "127.0.0.1:0",
        ])
        .arg("--dir")
        .arg(dir.path())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let position = |needle: &str| {
        text.find(needle)
            .unwrap_or_else(|| panic!("{needle:?} not in the demo's output:\n{text}"))
    };
    // The PVC's states, as its watch printed them, in order.
    let pvc = [
        position("latest-copy-status=WaitingForTrigger"),
        position("latest-copy-status=InProgress"),
        position("latest-copy-status=Completed"),
    ];
    // The application's steps (printed from the SDK's guard), in order; the trigger comes after
    // the quiesce, so InProgress follows it too.
    let app = [
        position("app: copy requested for run-1"),
        position("app: unquiesced at the copy point"),
    ];
    let end = [
        position("run run-1 ended Successful"),
        position("snapshot 9c1d77ab saved"),
        position("demo done: 1 runs"),
    ];
    for seq in [
        &pvc[..],
        &app[..],
        &end[..],
        &[app[0], pvc[1]],
        &[pvc[2], end[0]],
    ] {
        assert!(
            seq.windows(2).all(|w| w[0] < w[1]),
            "the timeline is out of order:\n{text}"
        );
    }
    assert!(
        dir.path().join("kubeconfig").exists(),
        "kubectl's kubeconfig"
    );
}

/// The grpcurl command the demo prints works as printed, with the operator's token, and the
/// scheduler refuses the same call without it.
#[test]
fn the_demos_grpcurl_command_works_as_printed_and_only_with_its_token() {
    use std::io::{BufRead as _, BufReader};
    let dir = tempfile::tempdir().unwrap();
    let mut demo = Command::new(env!("CARGO_BIN_EXE_snapgate-demo"))
        .args(["--runs", "0"])
        .args([
            "--kube-listen",
            "127.0.0.1:0",
            "--grpc-listen",
            "127.0.0.1:0",
        ])
        .arg("--dir")
        .arg(dir.path())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    struct Kill(std::process::Child);
    impl Drop for Kill {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let mut lines = BufReader::new(demo.stdout.take().unwrap()).lines();
    let _demo = Kill(demo);
    // The command spans two lines; the demo has applied its source once it says so.
    let mut command = String::new();
    for line in lines.by_ref() {
        let line = line.unwrap();
        if let Some(rest) = line.trim().strip_prefix("drive it:") {
            command = rest.trim().trim_end_matches('\\').to_owned();
        } else if !command.is_empty() && !command.contains("ListRuns") {
            command.push(' ');
            command.push_str(line.trim());
        }
        if line.contains("ops: applied source") {
            break;
        }
    }
    assert!(command.contains("authorization: Bearer"), "{command}");
    // The README shows the same command, for the demo's default directory and address.
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md")).unwrap();
    let words = |s: &str| s.split_whitespace().collect::<Vec<_>>().join(" ");
    let port = command
        .split_whitespace()
        .find(|w| w.starts_with("127.0.0.1:"))
        .unwrap()
        .to_owned();
    let as_documented = words(
        &command
            .replace(&format!("{}/", dir.path().display()), "snapgate-demo/")
            .replace(&port, "127.0.0.1:50051"),
    );
    assert!(
        words(&readme.replace("\\\n", " ")).contains(&as_documented),
        "the README does not show the demo's command:\n{as_documented}"
    );
    let out = Command::new("sh").arg("-c").arg(&command).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && text.contains("\"runs\""),
        "{command}\n{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let anonymous = command.replace(
        &command[command.find("-H").unwrap()..command.find("-d ").unwrap()],
        "",
    );
    let out = Command::new("sh")
        .arg("-c")
        .arg(&anonymous)
        .output()
        .unwrap();
    assert!(!out.status.success(), "{anonymous}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("Unauthenticated"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
