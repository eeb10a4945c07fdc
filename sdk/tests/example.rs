//! `examples/guarded_writer.rs` run as the application it is, against the real scheduler.

mod support;

use std::time::Duration;

use snapgate_proto::v1;
use support::{Agent, OnCopy, Scheduler, create, restic};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_guarded_writer_example_pauses_its_writes_around_two_copies() {
    // `cargo test` builds the examples next to the binaries.
    let exe = std::path::Path::new(env!("CARGO_BIN_EXE_snapgate"))
        .parent()
        .unwrap()
        .join("examples/guarded_writer");
    assert!(
        exe.exists(),
        "{} is missing: run the whole `cargo test -p snapgate-sdk`, which builds the examples",
        exe.display()
    );
    let dir = tempfile::tempdir().unwrap();
    let s = Scheduler::start(dir.path(), 0).await;
    let _agent = Agent::start(&s.endpoint(), "apps", OnCopy::Complete).await;
    let client = s.client().await;
    let journal = dir.path().join("journal.log");
    let app = tokio::process::Command::new(&exe)
        .args([
            "--server",
            &s.endpoint(),
            "--namespace",
            "apps",
            "--pvc",
            "data",
        ])
        .args(["--file", journal.to_str().unwrap(), "--copies", "2"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    // The application writes before its first copy: the source is made once it has.
    tokio::time::timeout(Duration::from_secs(20), async {
        while std::fs::read_to_string(&journal)
            .unwrap_or_default()
            .lines()
            .next()
            .is_none()
        {
            // The pause between two looks at the journal.
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("the application writes");
    create(&client, "apps", "db", restic("data")).await;

    // The second copy: a SyncNow once the first run is over.
    tokio::time::timeout(Duration::from_secs(30), async {
        let mut n = 0;
        loop {
            n += 1;
            let r = client
                .sources()
                .sync_now(v1::SyncNowRequest {
                    namespace: "apps".into(),
                    name: "db".into(),
                    request_id: format!("second-{n}"),
                })
                .await
                .unwrap()
                .into_inner();
            if r.started {
                return;
            }
            // The pause between two SyncNow calls.
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await
    .expect("run-1 finishes");

    let out = tokio::time::timeout(Duration::from_secs(30), app.wait_with_output())
        .await
        .expect("the example stops after two copies")
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<&str> = stdout.lines().collect();
    assert!(
        lines[0].starts_with("run-1: writes paused after "),
        "{stdout}"
    );
    assert!(
        lines[1].starts_with("run-1: copy point reached with trigger \"sdk-run-1-"),
        "{stdout}"
    );
    assert!(
        lines[2].starts_with("run-2: writes paused after "),
        "{stdout}"
    );
    assert!(
        lines[3].starts_with("run-2: copy point reached"),
        "{stdout}"
    );
    let paused_at =
        |line: &str| -> u64 { line.split_whitespace().nth(4).unwrap().parse().unwrap() };
    let (first, second) = (paused_at(lines[0]), paused_at(lines[2]));
    assert!(first > 0, "it wrote before the first copy");
    assert!(second > first, "writes resumed between the copies");
    s.stop().await;
}
