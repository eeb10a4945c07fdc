//! The README's grpcurl examples, run as written against the real binary, in order.
//!
//! Every `grpcurl` command in the README's shell blocks must succeed, except the two whose
//! outcome the README states: `WatchCopy` streams (it is stopped after its first message) and
//! `Trigger` answers FailedPrecondition while no run waits. The demo's command (it names the
//! demo's token file) is run against the demo by `tests/tests/demo.rs`.

use std::{
    net::TcpListener,
    process::{Child, Command, Stdio},
    thread::sleep,
    time::{Duration, Instant},
};

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The grpcurl commands of the README, continuation lines joined.
fn readme_commands() -> Vec<String> {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md")).unwrap();
    let mut commands = Vec::new();
    let mut in_sh = false;
    let mut current = String::new();
    for line in readme.lines() {
        if line.starts_with("```") {
            in_sh = line == "```sh";
            continue;
        }
        if !in_sh || line.trim_start().starts_with('#') {
            continue;
        }
        if !current.is_empty() || line.starts_with("grpcurl") {
            current.push_str(line);
            current.push('\n');
            let open = current.matches('\'').count() % 2 == 1;
            if !line.ends_with('\\') && !open {
                commands.push(std::mem::take(&mut current));
            }
        }
    }
    commands
}

struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn the_readme_grpcurl_examples_work_as_written() {
    let commands = readme_commands();
    assert!(
        commands.len() >= 12,
        "found only {} grpcurl examples",
        commands.len()
    );
    if Command::new("grpcurl").arg("-version").output().is_err() {
        assert!(
            std::env::var_os("CI").is_none(),
            "grpcurl is required under CI"
        );
        eprintln!("SKIPPED: grpcurl not on PATH; the README's test command installs it");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let _scheduler = Killed(
        Command::new(env!("CARGO_BIN_EXE_snapgate-scheduler"))
            .args(["--data-dir", dir.path().to_str().unwrap()])
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .args(["--metrics-listen", &format!("127.0.0.1:{}", free_port())])
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let addr = format!("127.0.0.1:{port}");
    let deadline = Instant::now() + Duration::from_secs(20);
    while !Command::new("grpcurl")
        .args(["-plaintext", &addr, "list"])
        .output()
        .unwrap()
        .status
        .success()
    {
        assert!(Instant::now() < deadline, "the scheduler did not come up");
        // The pause between two calls to the child process (real time: it is another process).
        sleep(Duration::from_millis(100));
    }

    for cmd in commands.iter().filter(|c| !c.contains("snapgate-demo/")) {
        let cmd = cmd.replace("127.0.0.1:50051", &addr);
        let streaming = cmd.contains("TriggerService/WatchCopy");
        let cmd = if streaming {
            cmd.replacen("grpcurl", "grpcurl -max-time 2", 1)
        } else {
            cmd
        };
        let out = Command::new("bash").args(["-c", &cmd]).output().unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        if streaming {
            assert!(text.contains("\"state\""), "{cmd}\n{text}");
        } else if cmd.contains("TriggerService/Trigger ")
            || cmd.contains("TriggerService/Trigger\n")
        {
            assert!(text.contains("FailedPrecondition"), "{cmd}\n{text}");
        } else {
            assert!(out.status.success(), "{cmd}\n{text}");
        }
    }
}
