//! The `snapgate` binary as a process against a real scheduler: VolSync YAML in, the same spec
//! out; tables; refusals; and `quiesce-exec` around a copy.

mod support;

use std::{path::Path, time::Duration};

use tokio::io::AsyncBufReadExt as _;

use serde_json::Value;
use snapgate_proto::v1::{self, DirectivePhase};
use support::{Agent, OnCopy, Scheduler};

struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

async fn snapgate(server: &str, args: &[&str]) -> Run {
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_snapgate"))
        .args(["--server", server])
        .args(args)
        .env_remove("SNAPGATE_NAMESPACE")
        .env_remove("SNAPGATE_OUTPUT")
        .env_remove("SNAPGATE_TOKEN")
        .output()
        .await
        .unwrap();
    Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8(out.stdout).unwrap(),
        stderr: String::from_utf8(out.stderr).unwrap(),
    }
}

async fn ok(server: &str, args: &[&str]) -> String {
    let run = snapgate(server, args).await;
    assert_eq!(run.code, 0, "snapgate {args:?} failed: {}", run.stderr);
    run.stdout
}

fn data(name: &str) -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data")
        .join(name)
        .display()
        .to_string()
}

/// The `spec` of every document of a YAML file, as JSON.
fn specs_of(file: &str) -> Vec<Value> {
    let text = std::fs::read_to_string(file).unwrap();
    serde_yaml::Deserializer::from_str(&text)
        .map(|d| {
            let v: Value = serde::Deserialize::deserialize(d).unwrap();
            v["spec"].clone()
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_volsync_docs_restic_example_applies_unchanged_and_round_trips_through_get_json() {
    let dir = tempfile::tempdir().unwrap();
    let s = Scheduler::start(dir.path(), 0).await;
    let server = s.endpoint();
    let file = data("volsync-docs-restic.yaml");

    let first = snapgate(&server, &["-n", "backups", "apply", "-f", &file]).await;
    assert_eq!(first.code, 0, "{}", first.stderr);
    assert_eq!(
        first.stdout,
        "replicationsource backups/mydata-backup created\n"
    );
    // No agent serves the namespace here: its first run cannot move, and apply says so.
    assert!(
        first.stderr.contains(
            "warning: replicationsource backups/mydata-backup: no agent serves namespace backups since"
        ),
        "{}",
        first.stderr
    );
    let again = ok(&server, &["-n", "backups", "apply", "-f", &file]).await;
    assert_eq!(again, "replicationsource backups/mydata-backup unchanged\n");

    let json: Value = serde_json::from_str(
        &ok(
            &server,
            &["-n", "backups", "get", "mydata-backup", "-o", "json"],
        )
        .await,
    )
    .unwrap();
    assert_eq!(json["apiVersion"], "volsync.backube/v1alpha1");
    assert_eq!(json["kind"], "ReplicationSource");
    assert_eq!(json["metadata"]["name"], "mydata-backup");
    assert_eq!(json["metadata"]["namespace"], "backups");
    assert_eq!(json["metadata"]["generation"], 1);
    assert_eq!(
        json["spec"],
        specs_of(&file)[0],
        "the spec comes back as written"
    );
    assert!(json["status"]["nextSyncTime"].is_string(), "{json:#}");

    // What get prints applies again unchanged (status and server metadata are not spec).
    let yaml = ok(
        &server,
        &["-n", "backups", "get", "mydata-backup", "-o", "yaml"],
    )
    .await;
    let reapply = dir.path().join("reapply.yaml");
    std::fs::write(&reapply, yaml).unwrap();
    let run = snapgate(&server, &["apply", "-f", reapply.to_str().unwrap()]).await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(
        run.stdout,
        "replicationsource backups/mydata-backup unchanged\n"
    );
    assert_eq!(run.stderr, "", "what get printed applies without a warning");

    let table = ok(&server, &["-n", "backups", "get", "mydata-backup"]).await;
    let lines: Vec<&str> = table.lines().collect();
    assert!(lines[0].starts_with("NAMESPACE  NAME"), "{table}");
    assert!(lines[1].contains("mydata-backup"), "{table}");
    assert!(lines[1].contains("restic"), "{table}");
    assert!(lines[1].contains("Clone"), "{table}");
    assert!(lines[1].contains("*/30 * * * *"), "{table}");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_field_of_every_mover_round_trips_through_get_yaml_and_applies_again_silently() {
    let dir = tempfile::tempdir().unwrap();
    let s = Scheduler::start(dir.path(), 0).await;
    let server = s.endpoint();
    let file = data("every-field.yaml");
    let names = [
        "every-restic",
        "every-rclone",
        "every-rsync",
        "every-rsync-tls",
    ];

    let run = snapgate(&server, &["apply", "-f", &file]).await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(
        run.stderr, "",
        "a file of supported fields applies without a warning"
    );
    let created: String = names
        .iter()
        .map(|n| format!("replicationsource roundtrip/{n} created\n"))
        .collect();
    assert_eq!(run.stdout, created);

    // What get -o yaml prints, every source in one file.
    async fn get_all(server: &str, names: &[&str]) -> String {
        let mut all = String::new();
        for name in names {
            all += "---\n";
            all += &ok(server, &["-n", "roundtrip", "get", name, "-o", "yaml"]).await;
        }
        all
    }
    let first = get_all(&server, &names).await;
    assert!(
        first.contains("last: '10'"),
        "retain.last prints as a string: {first}"
    );
    let printed = dir.path().join("printed.yaml");
    std::fs::write(&printed, &first).unwrap();
    let printed = printed.to_str().unwrap();
    // Every field comes back as written.
    let specs = specs_of(&file);
    for (i, spec) in specs_of(printed).iter().enumerate() {
        assert_eq!(spec, &specs[i], "{}", names[i]);
    }

    let run = snapgate(&server, &["apply", "-f", printed]).await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(run.stderr, "", "get's own output applies without a warning");
    let unchanged: String = names
        .iter()
        .map(|n| format!("replicationsource roundtrip/{n} unchanged\n"))
        .collect();
    assert_eq!(run.stdout, unchanged);

    // Read back again: the same sources, same versions (only the status may move on).
    let without_status = |text: &str| -> Vec<Value> {
        serde_yaml::Deserializer::from_str(text)
            .map(|d| {
                let mut v: Value = serde::Deserialize::deserialize(d).unwrap();
                v.as_object_mut().unwrap().remove("status");
                v
            })
            .collect()
    };
    let second = get_all(&server, &names).await;
    assert_eq!(without_status(&second), without_status(&first));
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn several_documents_in_one_file_become_several_sources_listed_and_previewed() {
    let dir = tempfile::tempdir().unwrap();
    let s = Scheduler::start(dir.path(), 0).await;
    let server = s.endpoint();
    let file = data("several-sources.yaml");

    let out = ok(&server, &["apply", "-f", &file]).await;
    assert_eq!(
        out,
        "replicationsource shop/db-restic created\n\
         replicationsource shop/db-rclone created\n\
         replicationsource shop/logs-tls created\n"
    );
    let list: Value =
        serde_json::from_str(&ok(&server, &["-n", "shop", "list", "-o", "json"]).await).unwrap();
    let items = list["items"].as_array().unwrap();
    let mut names: Vec<&str> = items
        .iter()
        .map(|i| i["metadata"]["name"].as_str().unwrap())
        .collect();
    names.sort_unstable();
    assert_eq!(names, ["db-rclone", "db-restic", "logs-tls"]);
    let specs = specs_of(&file);
    for item in items {
        let want = specs
            .iter()
            .find(|s| {
                s["sourcePVC"] == item["spec"]["sourcePVC"] && {
                    let mover = |v: &Value| {
                        ["restic", "rclone", "rsyncTLS"]
                            .into_iter()
                            .find(|m| !v[*m].is_null())
                    };
                    mover(s) == mover(&item["spec"])
                }
            })
            .unwrap();
        assert_eq!(&item["spec"], want);
    }

    let table = ok(&server, &["list", "-A"]).await;
    assert_eq!(table.lines().count(), 4, "{table}");
    let logs = table.lines().find(|l| l.contains("logs-tls")).unwrap();
    assert!(
        logs.contains("rsyncTLS") && logs.contains("Paused"),
        "{table}"
    );
    assert!(table.contains("manual:first"), "{table}");
    let yaml = ok(&server, &["-n", "shop", "list", "-o", "yaml"]).await;
    let parsed: Value = serde_yaml::from_str(&yaml).unwrap();
    assert_eq!(parsed["items"].as_array().unwrap().len(), 3);

    let preview = ok(
        &server,
        &["-n", "shop", "preview", "db-restic", "--count", "3"],
    )
    .await;
    let rows: Vec<&str> = preview.lines().collect();
    assert_eq!(rows.len(), 4, "{preview}");
    assert!(rows[0].starts_with("#  UTC"), "{preview}");
    for row in &rows[1..] {
        let utc = row.split_whitespace().nth(1).unwrap();
        let hour: u32 = utc[11..13].parse().unwrap();
        assert_eq!(hour % 6, 0, "0 */6 * * * fires every 6 hours: {row}");
        assert!(utc.ends_with(":00:00Z"), "{row}");
    }
    let preview: Value = serde_json::from_str(
        &ok(
            &server,
            &[
                "-n",
                "shop",
                "preview",
                "db-restic",
                "--count",
                "2",
                "-o",
                "json",
            ],
        )
        .await,
    )
    .unwrap();
    assert_eq!(preview["times"].as_array().unwrap().len(), 2);

    // Pause, resume and delete through the CLI.
    ok(
        &server,
        &["-n", "shop", "pause", "db-restic", "--note", "maintenance"],
    )
    .await;
    let paused: Value =
        serde_json::from_str(&ok(&server, &["-n", "shop", "get", "db-restic", "-o", "json"]).await)
            .unwrap();
    assert_eq!(paused["spec"]["paused"], true);
    assert_eq!(paused["status"]["pauseNote"], "maintenance");
    ok(&server, &["-n", "shop", "resume", "db-restic"]).await;
    let out = ok(&server, &["-n", "shop", "delete", "db-rclone"]).await;
    assert_eq!(out, "replicationsource shop/db-rclone deleted\n");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_key_is_refused_naming_it_and_nothing_in_the_file_is_applied() {
    let dir = tempfile::tempdir().unwrap();
    let s = Scheduler::start(dir.path(), 0).await;
    let server = s.endpoint();
    let good = std::fs::read_to_string(data("volsync-docs-restic.yaml")).unwrap();
    let typo = good.replace("retain:", "retian:");
    let file = dir.path().join("typo.yaml");
    // A valid document first: it must not be applied either.
    std::fs::write(
        &file,
        format!("{}\n---\n{typo}", good.replace("mydata-backup", "first")),
    )
    .unwrap();

    let run = snapgate(&server, &["apply", "-f", file.to_str().unwrap()]).await;
    assert_eq!(run.code, 1, "{}", run.stdout);
    assert!(run.stderr.contains("spec.restic.retian"), "{}", run.stderr);
    assert!(run.stderr.contains("unknown key"), "{}", run.stderr);
    assert!(run.stderr.contains("document 2"), "{}", run.stderr);
    let run = snapgate(&server, &["list", "-A"]).await;
    assert_eq!(run.stdout, "");
    assert!(run.stderr.contains("no sources found"), "{}", run.stderr);

    let syncthing = dir.path().join("syncthing.yaml");
    std::fs::write(
        &syncthing,
        "apiVersion: volsync.backube/v1alpha1\nkind: ReplicationSource\nmetadata: {name: st}\n\
         spec: {sourcePVC: data, syncthing: {peers: []}}\n",
    )
    .unwrap();
    let run = snapgate(&server, &["apply", "-f", syncthing.to_str().unwrap()]).await;
    assert_eq!(run.code, 1);
    assert!(
        run.stderr.contains("spec.syncthing: not supported"),
        "{}",
        run.stderr
    );
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_duplicate_key_is_refused_with_its_line_and_path_and_nothing_is_applied() {
    let dir = tempfile::tempdir().unwrap();
    let s = Scheduler::start(dir.path(), 0).await;
    let server = s.endpoint();
    let good = std::fs::read_to_string(data("volsync-docs-restic.yaml")).unwrap();
    // Line 11 of the docs example is the schedule; a second one (which a plain YAML map would
    // keep silently) follows it on line 12.
    assert_eq!(
        good.lines().nth(10).unwrap().trim(),
        "schedule: \"*/30 * * * *\""
    );
    let twice = good.replace(
        "    schedule: \"*/30 * * * *\"\n",
        "    schedule: \"*/30 * * * *\"\n    schedule: \"0 0 1 1 *\"\n",
    );
    let file = dir.path().join("twice.yaml");
    std::fs::write(&file, twice).unwrap();

    let run = snapgate(&server, &["apply", "-f", file.to_str().unwrap()]).await;
    assert_eq!(run.code, 1, "{}", run.stdout);
    assert!(
        run.stderr
            .contains("document 1: spec.trigger.schedule: line 12: duplicate key"),
        "{}",
        run.stderr
    );
    let run = snapgate(&server, &["list", "-A"]).await;
    assert!(run.stderr.contains("no sources found"), "{}", run.stderr);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quarantined_lists_the_stored_records_the_scheduler_left_out() {
    use prost::Message as _;
    use snapgate_scheduler::store::{RedbStore, format::SourceRecordV1};
    let dir = tempfile::tempdir().unwrap();
    {
        // A source this version cannot run (no mover), as a damaged store could hold.
        drop(RedbStore::open(dir.path()).unwrap());
        let mut spec = support::restic("data");
        spec.restic = None;
        let record = SourceRecordV1 {
            source: Some(v1::Source {
                namespace: "apps".into(),
                name: "broken".into(),
                spec: Some(spec),
                version: 1,
                ..Default::default()
            }),
            deleting: false,
        };
        let db = redb::Database::open(dir.path().join("snapgate.redb")).unwrap();
        let tx = db.begin_write().unwrap();
        tx.open_table(redb::TableDefinition::<&str, &[u8]>::new("sources"))
            .unwrap()
            .insert("apps/broken", record.encode_to_vec().as_slice())
            .unwrap();
        tx.commit().unwrap();
    }
    let s = Scheduler::start(dir.path(), 0).await;
    let server = s.endpoint();
    let table = ok(&server, &["quarantined"]).await;
    assert!(table.contains("KIND"), "{table}");
    assert!(table.contains("apps/broken"), "{table}");
    assert!(table.contains("exactly one mover"), "{table}");
    let json = ok(&server, &["quarantined", "-o", "json"]).await;
    let v: Value = serde_json::from_str(&json).unwrap();
    assert_eq!(v["records"][0]["kind"], "source");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_refusals_print_the_grpc_code_and_message_and_exit_non_zero() {
    let dir = tempfile::tempdir().unwrap();
    let s = Scheduler::start(dir.path(), 0).await;
    let server = s.endpoint();

    let run = snapgate(&server, &["-n", "apps", "get", "ghost"]).await;
    assert_eq!(run.code, 1);
    assert!(run.stderr.contains("NotFound"), "{}", run.stderr);
    assert!(run.stderr.contains("apps/ghost"), "{}", run.stderr);

    // The scheduler's own validation (a bad cron) comes back with its code and field.
    let bad = dir.path().join("bad-cron.yaml");
    std::fs::write(
        &bad,
        std::fs::read_to_string(data("volsync-docs-restic.yaml"))
            .unwrap()
            .replace("*/30 * * * *", "every half hour"),
    )
    .unwrap();
    let run = snapgate(&server, &["apply", "-f", bad.to_str().unwrap()]).await;
    assert_eq!(run.code, 1);
    assert!(run.stderr.contains("InvalidArgument"), "{}", run.stderr);
    assert!(run.stderr.contains("schedule"), "{}", run.stderr);

    let run = snapgate(&server, &["-n", "apps", "trigger", "--pvc", "data", "v1"]).await;
    assert_eq!(run.code, 1);
    assert!(run.stderr.contains("FailedPrecondition"), "{}", run.stderr);
    s.stop().await;

    let run = snapgate(&server, &["list"]).await;
    assert_eq!(run.code, 1);
    assert!(run.stderr.contains("unavailable"), "{}", run.stderr);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quiesce_exec_runs_the_commands_around_a_copy_and_runs_shows_the_release() {
    let dir = tempfile::tempdir().unwrap();
    let s = Scheduler::start(dir.path(), 0).await;
    let server = s.endpoint();
    let mut agent = Agent::start(&server, "apps", OnCopy::Complete).await;
    let file = dir.path().join("source.yaml");
    std::fs::write(
        &file,
        std::fs::read_to_string(data("volsync-docs-restic.yaml"))
            .unwrap()
            .replace("sourcePVC: mydata", "sourcePVC: data"),
    )
    .unwrap();
    ok(
        &server,
        &["-n", "apps", "apply", "-f", file.to_str().unwrap()],
    )
    .await;

    let journal = dir.path().join("journal");
    let j = journal.display();
    let quiesce = format!("echo \"quiesce $SNAPGATE_RUN_ID $SNAPGATE_PVC\" >> {j}");
    let unquiesce = format!("echo \"unquiesce $SNAPGATE_RUN_ID\" >> {j}");
    let run = tokio::time::timeout(
        Duration::from_secs(30),
        snapgate(
            &server,
            &[
                "quiesce-exec",
                "--namespace",
                "apps",
                "--pvc",
                "data",
                "--quiesce",
                &quiesce,
                "--unquiesce",
                &unquiesce,
                "--hold-limit",
                "30s",
                "--once",
            ],
        ),
    )
    .await
    .expect("quiesce-exec --once returns after the copy");
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(
        std::fs::read_to_string(&journal).unwrap(),
        "quiesce run-1 data\nunquiesce run-1\n"
    );
    agent.wait_for(DirectivePhase::Transfer).await;

    let runs: Value = serde_json::from_str(
        &ok(
            &server,
            &["-n", "apps", "runs", "mydata-backup", "-o", "json"],
        )
        .await,
    )
    .unwrap();
    let run1 = &runs["items"][0];
    assert_eq!(run1["id"], "run-1");
    assert_eq!(run1["releasedBy"], "rpc");
    assert!(
        run1["trigger"]
            .as_str()
            .unwrap()
            .starts_with("quiesce-exec-run-1-"),
        "{run1:#}"
    );
    let table = ok(&server, &["-n", "apps", "runs", "mydata-backup"]).await;
    assert!(table.starts_with("RUN  "), "{table}");
    assert!(table.contains("run-1") && table.contains("rpc"), "{table}");
    s.stop().await;
}

/// Starts `quiesce-exec` on `apps/data` as a long-running process.
fn quiesce_exec(server: &str, quiesce: &str, unquiesce: &str) -> tokio::process::Child {
    tokio::process::Command::new(env!("CARGO_BIN_EXE_snapgate"))
        .args([
            "--server",
            server,
            "quiesce-exec",
            "-n",
            "apps",
            "--pvc",
            "data",
        ])
        .args(["--quiesce", quiesce, "--unquiesce", unquiesce])
        .args(["--hold-limit", "20s", "--disconnect-grace", "5s"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap()
}

async fn terminate(child: tokio::process::Child) -> std::process::Output {
    let pid = child.id().unwrap().to_string();
    let status = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap();
    assert!(status.success());
    tokio::time::timeout(Duration::from_secs(20), child.wait_with_output())
        .await
        .expect("quiesce-exec exits on SIGTERM")
        .unwrap()
}

async fn journal_has(path: &Path, lines: usize) -> Vec<String> {
    tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            let text = std::fs::read_to_string(path).unwrap_or_default();
            let got: Vec<String> = text.lines().map(str::to_owned).collect();
            if got.len() >= lines {
                return got;
            }
            // The pause between two looks at the journal.
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .unwrap_or_else(|_| {
        panic!(
            "journal never reached {lines} lines: {:?}",
            std::fs::read_to_string(path)
        )
    })
}

/// The docs example on PVC `apps/data`, scheduled once a year so that only its initial run
/// (and SyncNow) runs during a test.
async fn apply_docs_example_on(server: &str, dir: &Path) {
    let file = dir.join("source.yaml");
    let yaml = std::fs::read_to_string(data("volsync-docs-restic.yaml"))
        .unwrap()
        .replace("sourcePVC: mydata", "sourcePVC: data")
        .replace("*/30 * * * *", "0 0 1 1 *");
    std::fs::write(&file, yaml).unwrap();
    ok(
        server,
        &["-n", "apps", "apply", "-f", file.to_str().unwrap()],
    )
    .await;
}

/// Starts a SyncNow run of the docs example once its run-1 has finished; returns its id.
async fn sync_now_once_run_1_finished(server: &str) -> String {
    let mut waited = 0;
    loop {
        let out = ok(
            server,
            &["-n", "apps", "sync-now", "mydata-backup", "-o", "json"],
        )
        .await;
        let v: Value = serde_json::from_str(&out).unwrap();
        if v["started"] == true {
            return v["runId"].as_str().unwrap().to_owned();
        }
        waited += 1;
        assert!(waited < 100, "run-1 never finished");
        // The pause between two SyncNow calls.
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quiesce_exec_survives_a_failed_quiesce_serves_every_copy_and_stops_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let s = Scheduler::start(dir.path(), 0).await;
    let server = s.endpoint();
    let _agent = Agent::start(&server, "apps", OnCopy::Complete).await;
    apply_docs_example_on(&server, dir.path()).await;

    let journal = dir.path().join("journal");
    let flag = dir.path().join("tried");
    let (j, f) = (journal.display(), flag.display());
    // The first quiesce fails (the application is busy); every later one works.
    let quiesce = format!(
        "if [ -f {f} ]; then echo \"quiesce $SNAPGATE_RUN_ID\" >> {j}; \
         else touch {f}; echo \"quiesce-failed $SNAPGATE_RUN_ID\" >> {j}; exit 3; fi"
    );
    let unquiesce = format!("echo \"unquiesce $SNAPGATE_RUN_ID\" >> {j}");
    let child = quiesce_exec(&server, &quiesce, &unquiesce);

    let first = journal_has(&journal, 4).await;
    assert_eq!(
        first,
        [
            "quiesce-failed run-1",
            "unquiesce run-1",
            "quiesce run-1",
            "unquiesce run-1"
        ]
    );
    // The next run of the source is served by the same loop.
    assert_eq!(sync_now_once_run_1_finished(&server).await, "run-2");
    let all = journal_has(&journal, 6).await;
    assert_eq!(&all[4..], ["quiesce run-2", "unquiesce run-2"]);

    let out = terminate(child).await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quiesce_exec_logs_a_run_released_by_another_client_as_not_inside_its_hold_and_serves_the_next_request()
 {
    let dir = tempfile::tempdir().unwrap();
    let s = Scheduler::start(dir.path(), 0).await;
    let server = s.endpoint();
    let _agent = Agent::start(&server, "apps", OnCopy::Complete).await;
    apply_docs_example_on(&server, dir.path()).await;

    let journal = dir.path().join("journal");
    let (go, released) = (dir.path().join("go"), dir.path().join("released"));
    let status = std::process::Command::new("mkfifo")
        .arg(&go)
        .status()
        .unwrap();
    assert!(status.success());
    let (j, g, r) = (journal.display(), go.display(), released.display());
    // The first quiesce holds until the test says go; once run-1 is released, none does.
    let child = quiesce_exec(
        &server,
        &format!("echo \"quiesce $SNAPGATE_RUN_ID\" >> {j}; [ -f {r} ] || read line < {g}"),
        &format!("echo \"unquiesce $SNAPGATE_RUN_ID\" >> {j}"),
    );
    assert_eq!(journal_has(&journal, 1).await, ["quiesce run-1"]);
    // While the sidecar's application is still quiescing, another client releases run-1.
    ok(
        &server,
        &["-n", "apps", "trigger", "--pvc", "data", "ops-1"],
    )
    .await;
    std::fs::write(&released, "").unwrap();
    tokio::task::spawn_blocking(move || std::fs::write(go, "go\n").unwrap())
        .await
        .unwrap();
    assert_eq!(
        journal_has(&journal, 2).await,
        ["quiesce run-1", "unquiesce run-1"]
    );
    // The loop goes on: the next run is quiesced for, triggered and completed as its own.
    assert_eq!(sync_now_once_run_1_finished(&server).await, "run-2");
    assert_eq!(
        &journal_has(&journal, 4).await[2..],
        ["quiesce run-2", "unquiesce run-2"]
    );
    // The sidecar unquiesces at the copy point: by then run-2 was released by its own value.
    let runs: Value = serde_json::from_str(
        &ok(
            &server,
            &["-n", "apps", "runs", "mydata-backup", "-o", "json"],
        )
        .await,
    )
    .unwrap();
    let by_id = |id: &str| {
        runs["items"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["id"] == id)
            .cloned()
            .unwrap()
    };
    assert_eq!(by_id("run-1")["trigger"], "ops-1");
    let run_2 = by_id("run-2");
    assert_eq!(run_2["releasedBy"], "rpc", "{run_2}");
    assert_ne!(run_2["trigger"], "ops-1", "{run_2}");

    let out = terminate(child).await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let lines: Vec<&str> = stderr.lines().collect();
    assert!(
        lines
            .iter()
            .any(|l| l.contains("copy not made inside this hold")
                && l.contains("\"run-1\"")
                && l.contains("ops-1")),
        "{stderr}"
    );
    assert!(
        !lines
            .iter()
            .any(|l| l.contains("copy completed") && l.contains("\"run-1\"")),
        "{stderr}"
    );
    // (Its "copy completed" line may come after the test's SIGTERM: not asserted.)
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quiesce_exec_unquiesces_before_exiting_on_sigterm_while_quiesced() {
    let dir = tempfile::tempdir().unwrap();
    let s = Scheduler::start(dir.path(), 0).await;
    let server = s.endpoint();
    let mut agent = Agent::start(&server, "apps", OnCopy::Hang).await;
    apply_docs_example_on(&server, dir.path()).await;

    let journal = dir.path().join("journal");
    let j = journal.display();
    let child = quiesce_exec(
        &server,
        &format!("echo \"quiesce $SNAPGATE_RUN_ID\" >> {j}"),
        &format!("echo \"unquiesce $SNAPGATE_RUN_ID\" >> {j}"),
    );
    // Quiesced and triggered; the copy never becomes ready.
    agent.wait_for(DirectivePhase::Copy).await;
    assert_eq!(journal_has(&journal, 1).await, ["quiesce run-1"]);

    let out = terminate(child).await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        std::fs::read_to_string(&journal).unwrap(),
        "quiesce run-1\nunquiesce run-1\n"
    );
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quiesce_exec_exits_non_zero_when_the_unquiesce_command_keeps_failing() {
    let dir = tempfile::tempdir().unwrap();
    let s = Scheduler::start(dir.path(), 0).await;
    let server = s.endpoint();
    let _agent = Agent::start(&server, "apps", OnCopy::Complete).await;
    apply_docs_example_on(&server, dir.path()).await;

    let journal = dir.path().join("journal");
    let j = journal.display();
    let child = quiesce_exec(
        &server,
        &format!("echo quiesce >> {j}"),
        &format!("echo unquiesce-failed >> {j}; exit 1"),
    );
    let out = tokio::time::timeout(Duration::from_secs(30), child.wait_with_output())
        .await
        .expect("quiesce-exec gives up")
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("may still be quiesced"), "{stderr}");
    assert_eq!(
        std::fs::read_to_string(&journal).unwrap(),
        "quiesce\nunquiesce-failed\nunquiesce-failed\nunquiesce-failed\n",
        "three attempts"
    );
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_follows_the_copy_status_and_trigger_releases_the_waiting_run() {
    let dir = tempfile::tempdir().unwrap();
    let s = Scheduler::start(dir.path(), 0).await;
    let server = s.endpoint();
    let mut agent = Agent::start(&server, "apps", OnCopy::Complete).await;
    let mut watch = tokio::process::Command::new(env!("CARGO_BIN_EXE_snapgate"))
        .args(["--server", &server, "-n", "apps", "watch", "--pvc", "data"])
        .env_remove("SNAPGATE_NAMESPACE")
        .env_remove("SNAPGATE_OUTPUT")
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    support::create(&s.client().await, "apps", "db", support::restic("data")).await;
    agent.wait_for(DirectivePhase::Wait).await;

    // The latest-copy-trigger rule holds for the CLI too; a new value releases the run.
    let refused = snapgate(&server, &["-n", "apps", "trigger", "--pvc", "data", ""]).await;
    assert_ne!(refused.code, 0, "an empty value is refused");
    let out = ok(
        &server,
        &["-n", "apps", "trigger", "--pvc", "data", "first"],
    )
    .await;
    assert!(out.contains("run-1"), "{out}");
    agent.wait_for(DirectivePhase::Cleanup).await;

    // The watch printed the whole handshake, in order, and is still running.
    let stdout = watch.stdout.take().unwrap();
    let mut lines = tokio::io::BufReader::new(stdout).lines();
    let mut seen = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while !seen.iter().any(|l: &String| l.contains("Completed")) {
        let line = tokio::time::timeout_at(deadline, lines.next_line())
            .await
            .expect("the watch printed Completed in time")
            .unwrap()
            .expect("the watch is still running");
        seen.push(line);
    }
    let at = |word: &str| {
        seen.iter()
            .position(|l| l.contains(word))
            .unwrap_or_else(|| panic!("{word} not in {seen:#?}"))
    };
    assert!(at("WaitingForTrigger") < at("Completed"), "{seen:#?}");
    assert!(
        watch.try_wait().unwrap().is_none(),
        "watch keeps following until interrupted"
    );
    s.stop().await;
}
