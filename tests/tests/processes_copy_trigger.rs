//! The copy-trigger invariant with the real binaries as separate processes: the scheduler on
//! its redb store, the agent reading a kubeconfig, the `snapgate` CLI (and
//! `snapgate quiesce-exec` as the application, journaling its hold with timestamps), against
//! kube-sim serving the Kubernetes REST API.
//!
//! > Every copy point of a gated run lies inside the hold of every application that took part
//! > in releasing it, and no trigger value releases more than one run.
//!
//! The first test needs a snapshot that is never cut. kube-sim scripts that per object (the
//! annotation `sim.snapgate.io/snapshot` on the VolumeSnapshot, or its Rust API), and the
//! agent makes the VolumeSnapshot without that annotation, so that test hosts the same
//! kube-sim server in the test process (served over loopback HTTP with its kubeconfig, as the
//! binary does) and scripts it there; the scheduler, the agent and the CLI are processes.

mod support;

use serde_json::Value;
use snapgate_contract::{
    COPY_TRIGGER as TRIGGER, LATEST_COPY_STATUS as STATUS, LATEST_COPY_TRIGGER as LATEST,
    LATEST_COPY_TRIGGER_WAITING_SINCE as SINCE,
};
use snapgate_kube_sim::SnapshotBehaviour;
use support::{Cluster, NS};

/// How long a recorded object may take to show the state a test waits for.
const WAIT: std::time::Duration = std::time::Duration::from_secs(15);

fn restic_source(name: &str, pvc: &str, tag: &str) -> String {
    format!(
        "apiVersion: volsync.backube/v1alpha1
kind: ReplicationSource
metadata: {{name: {name}, namespace: {NS}}}
spec:
  sourcePVC: {pvc}
  trigger: {{manual: {tag}}}
  restic: {{copyMethod: Snapshot, repository: restic-config}}
"
    )
}

fn rclone_source(name: &str, pvc: &str, tag: &str) -> String {
    format!(
        "apiVersion: volsync.backube/v1alpha1
kind: ReplicationSource
metadata: {{name: {name}, namespace: {NS}}}
spec:
  sourcePVC: {pvc}
  trigger: {{manual: {tag}}}
  rclone: {{copyMethod: Snapshot, rcloneConfig: rclone-secret, rcloneConfigSection: s3, rcloneDestPath: bucket/db}}
"
    )
}

/// The gated PVC `data`, a restic source `db` on it, and its run waiting for a trigger.
async fn db_waits_on_data(c: &Cluster) {
    c.create_pvc("data", true).await;
    c.apply(&restic_source("db", "data", "once")).await;
    c.wait_annotations("data", "the run waits", |a| {
        status_is(a, "WaitingForTrigger")
    })
    .await;
}

fn status_is(a: &std::collections::BTreeMap<String, String>, status: &str) -> bool {
    a.get(STATUS).map(String::as_str) == Some(status)
}

fn s(v: &Value) -> &str {
    v.as_str().unwrap_or("")
}

fn finished(r: &Value) -> bool {
    r["phase"] == "Finished"
}

/// A run released by a value whose snapshot is never cut, then its source deleted, spends that
/// value: another source applied on the same PVC waits for a new one and makes no snapshot
/// until it comes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_value_consumed_by_a_deleted_sources_uncut_run_never_releases_the_next_sources_run() {
    let c = Cluster::start_hosted(|sim| {
        sim.snapshot_behaviour(NS, "volsync-a-src", SnapshotBehaviour::NeverReady);
    })
    .await;
    let snapshots = c.record_snapshots().await;
    c.create_pvc("data", true).await;
    c.apply(&restic_source("a", "data", "once")).await;
    c.wait_annotations("data", "a's run waits", |a| {
        status_is(a, "WaitingForTrigger")
    })
    .await;

    c.cli_ok(&["trigger", "--pvc", "data", "value-a"]).await;
    c.wait_annotations("data", "a's run released", |a| status_is(a, "InProgress"))
        .await;
    snapshots
        .wait(
            "volsync-a-src",
            "a's VolumeSnapshot (never cut)",
            WAIT,
            |_| true,
        )
        .await;
    c.wait_run("a", "a's run released by value-a", |r| {
        r["trigger"] == "value-a" && r["phase"] == "Copying"
    })
    .await;

    c.cli_ok(&["delete", "a"]).await;
    // a's cleanup hands value-a back as spent before it lets the PVC go.
    let a = c
        .wait_annotations("data", "value-a recorded as spent, InProgress gone", |a| {
            a.get(LATEST).map(String::as_str) == Some("value-a") && !a.contains_key(STATUS)
        })
        .await;
    assert_eq!(a.get(TRIGGER).map(String::as_str), Some("value-a"));

    c.apply(&restic_source("b", "data", "once")).await;
    let a = c
        .wait_annotations("data", "b's run waits (not released by value-a)", |a| {
            a.contains_key(STATUS)
        })
        .await;
    assert_eq!(
        a.get(STATUS).map(String::as_str),
        Some("WaitingForTrigger"),
        "b's run was released by a's spent value: {a:?}"
    );
    assert_eq!(a.get(LATEST).map(String::as_str), Some("value-a"), "{a:?}");
    assert!(a.contains_key(SINCE), "{a:?}");
    let run = c
        .wait_run("b", "b's run waiting", |r| {
            r["phase"] == "WaitingForTrigger"
        })
        .await;
    assert_eq!(s(&run["trigger"]), "", "{run:#}");
    assert!(
        snapshots.versions("volsync-b-src").is_empty(),
        "b made a VolumeSnapshot before any new value: {:?}",
        snapshots.versions("volsync-b-src")
    );

    // A new value releases b, once.
    c.write_copy_trigger("data", "value-b").await;
    let run = c.wait_run("b", "b's run finished", finished).await;
    assert_eq!(run["result"], "Successful", "{run:#}");
    assert_eq!(run["trigger"], "value-b", "{run:#}");
    let first_b = snapshots
        .wait("volsync-b-src", "b's VolumeSnapshot", WAIT, |_| true)
        .await;
    assert_eq!(
        first_b["spec"]["source"]["persistentVolumeClaimName"], "data",
        "{first_b:#}"
    );
    let a = c.annotations("data").await;
    assert_eq!(
        a.get(STATUS).map(String::as_str),
        Some("Completed"),
        "{a:?}"
    );
    assert_eq!(a.get(LATEST).map(String::as_str), Some("value-b"), "{a:?}");
    let runs = c.runs("b").await;
    assert_eq!(runs.len(), 1, "{runs:#?}");
}

/// A journal line's timestamp (`<event> <unix seconds>.<nanos>`), the first with `event`.
fn journal_time(journal: &str, event: &str) -> f64 {
    journal
        .lines()
        .find_map(|l| {
            l.strip_prefix(event)?
                .strip_prefix(' ')?
                .trim()
                .parse()
                .ok()
        })
        .unwrap_or_else(|| panic!("no {event} line in the journal:\n{journal}"))
}

/// An RFC 3339 time from the API server, in unix seconds.
fn kube_time(v: &Value) -> f64 {
    let t = chrono::DateTime::parse_from_rfc3339(s(v))
        .unwrap_or_else(|e| panic!("not an RFC 3339 time ({e}): {v}"));
    t.timestamp() as f64 + f64::from(t.timestamp_subsec_nanos()) / 1e9
}

/// `sh -c` steps that append `<event> <date +%s.%N>` lines to `journal`.
fn journaled(journal: &std::path::Path, steps: &[&str]) -> String {
    let j = journal.display();
    steps
        .iter()
        .map(|step| match step.strip_prefix('!') {
            Some(command) => command.to_owned(),
            None => format!("echo \"{step} $(date +%s.%N)\" >> {j}"),
        })
        .collect::<Vec<_>>()
        .join("; ")
}

/// Waits (bounded) for a `quiesce-exec --once` to exit: its exit code and its log.
async fn exit(p: &mut support::Proc, log: &std::path::Path) -> (Option<i32>, String) {
    let status = tokio::time::timeout(std::time::Duration::from_secs(15), p.0.wait())
        .await
        .unwrap_or_else(|_| {
            panic!(
                "quiesce-exec did not exit: {}",
                std::fs::read_to_string(log).unwrap_or_default()
            )
        })
        .unwrap();
    (status.code(), std::fs::read_to_string(log).unwrap())
}

/// Two `quiesce-exec --once` applications on one PVC: the second quiesces slowly (until the
/// first has its copy), the first triggers once the second is quiescing. Only the first counts
/// the copy; the second says the copy was not inside its hold and unquiesces; the cut lies
/// inside the first one's hold.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn of_two_applications_quiescing_one_pvc_only_the_one_whose_trigger_released_the_run_counts_the_copy()
 {
    let c = Cluster::start().await;
    let snapshots = c.record_snapshots().await;
    db_waits_on_data(&c).await;
    let (j1, j2) = (c.path("journal-1"), c.path("journal-2"));
    let (e1, e2) = (c.path("app-1.log"), c.path("app-2.log"));
    // The first application triggers only once the second has started quiescing; the second
    // finishes quiescing (and triggers) only once the first has its copy and unquiesces. (The
    // shell's `sleep 0.02` is the pause between two looks at the other's journal.)
    let wait_for_second = format!(
        "!until grep -q quiesce-start {} 2>/dev/null; do sleep 0.02; done",
        j2.display()
    );
    let wait_for_first = format!(
        "!until grep -q unquiesce-start {} 2>/dev/null; do sleep 0.02; done",
        j1.display()
    );
    let app = |prefix: &str, journal: &std::path::Path, quiesce: &[&str], log: &std::path::Path| {
        support::spawn(
            c.cli_command(&[
                "quiesce-exec",
                "--pvc",
                "data",
                "--once",
                "--trigger-prefix",
                prefix,
                "--quiesce",
                &journaled(journal, quiesce),
                "--unquiesce",
                &journaled(journal, &["unquiesce-start", "unquiesce-done"]),
            ])
            .env("SNAPGATE_LOG", "info"),
            log,
        )
    };
    let mut first = app(
        "app1",
        &j1,
        &["quiesce-start", &wait_for_second, "quiesce-done"],
        &e1,
    );
    let mut second = app(
        "app2",
        &j2,
        &["quiesce-start", &wait_for_first, "quiesce-done"],
        &e2,
    );

    let (code1, log1) = exit(&mut first, &e1).await;
    let (code2, log2) = exit(&mut second, &e2).await;
    let (journal1, journal2) = (
        std::fs::read_to_string(&j1).unwrap(),
        std::fs::read_to_string(&j2).unwrap(),
    );

    // Exactly one consistent copy: the first application's.
    assert_eq!(code1, Some(0), "{log1}\n{}", c.logs());
    assert!(log1.contains("copy completed"), "{log1}");
    assert_eq!(code2, Some(1), "{log2}");
    assert!(!log2.contains("copy completed"), "{log2}");
    assert!(
        log2.contains("the copy was not made inside this application's hold"),
        "{log2}"
    );
    for (journal, name) in [(&journal1, "first"), (&journal2, "second")] {
        assert!(
            journal_time(journal, "unquiesce-done") >= journal_time(journal, "quiesce-done"),
            "the {name} application did not unquiesce after its hold:\n{journal}"
        );
    }

    // One run, released by the first application's value through the RPC, once.
    let runs = c.runs("db").await;
    assert_eq!(runs.len(), 1, "{runs:#?}");
    let run = &runs[0];
    assert!(s(&run["trigger"]).starts_with("app1-"), "{run:#}");
    assert_eq!(run["releasedBy"], "rpc", "{run:#}");
    let a = c.annotations("data").await;
    assert_eq!(a.get(LATEST), a.get(TRIGGER), "{a:?}");
    assert_eq!(a.get(LATEST).map(String::as_str), Some(s(&run["trigger"])));

    // The cut lies inside the first application's hold (the API server's times are whole
    // seconds: the cut's second is not before the second of quiesce-done).
    let snap = snapshots
        .wait(
            "volsync-db-src",
            "the run's VolumeSnapshot, cut",
            WAIT,
            |o| !o["status"]["creationTime"].is_null(),
        )
        .await;
    let (done, unquiesce) = (
        journal_time(&journal1, "quiesce-done"),
        journal_time(&journal1, "unquiesce-start"),
    );
    for field in [
        &snap["metadata"]["creationTimestamp"],
        &snap["status"]["creationTime"],
    ] {
        let cut = kube_time(field);
        assert!(
            done.floor() <= cut && cut <= unquiesce,
            "the snapshot ({field}) is not inside the hold {done}..{unquiesce}:\n{journal1}"
        );
    }
}

/// A waiting restic run on data2 keeps its PVC and mover when the source is edited to data3
/// with rclone; released by naming the source, it copies data2 with restic; the next run is
/// on data3 with rclone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_edit_does_not_move_a_waiting_run_to_the_new_pvc_or_mover() {
    let c = Cluster::start().await;
    let snapshots = c.record_snapshots().await;
    let jobs = c.record_jobs().await;
    c.create_pvc("data2", true).await;
    c.create_pvc("data3", true).await;
    c.apply(&restic_source("db", "data2", "one")).await;
    c.wait_annotations("data2", "the run waits on data2", |a| {
        status_is(a, "WaitingForTrigger")
    })
    .await;
    let first = c
        .wait_run("db", "the first run waiting", |r| {
            r["phase"] == "WaitingForTrigger"
        })
        .await;
    let first_id = s(&first["id"]).to_owned();

    c.apply(&rclone_source("db", "data3", "two")).await;
    c.cli_ok(&["trigger", "--source", "db", "v1"]).await;
    let run = eventually_run(&c, "db", &first_id, finished).await;
    assert_eq!(run["result"], "Successful", "{run:#}");
    assert_eq!(run["trigger"], "v1", "{run:#}");
    assert_eq!(run["pvc"], "data2", "{run:#}");
    let a = c.annotations("data2").await;
    assert_eq!(a.get(LATEST).map(String::as_str), Some("v1"), "{a:?}");

    let of_run = |objects: &support::Recorder, name: &str, id: &str| -> Vec<Value> {
        objects
            .versions(name)
            .into_iter()
            .filter(|o| o["metadata"]["labels"]["snapgate.io/run"] == id)
            .collect()
    };
    let snap = of_run(&snapshots, "volsync-db-src", &first_id);
    assert!(
        !snap.is_empty(),
        "no snapshot of the first run: {:?}",
        snapshots.names()
    );
    assert_eq!(
        snap[0]["spec"]["source"]["persistentVolumeClaimName"], "data2",
        "{:#}",
        snap[0]
    );
    let restic = of_run(&jobs, "volsync-src-db", &first_id);
    assert!(
        !restic.is_empty(),
        "no restic Job of the first run: {:?}",
        jobs.names()
    );
    let container =
        serde_json::to_string(&restic[0]["spec"]["template"]["spec"]["containers"]).unwrap();
    assert!(
        container.contains("restic") && !container.contains("rclone"),
        "{container}"
    );
    assert!(
        of_run(&jobs, "volsync-rclone-src-db", &first_id).is_empty(),
        "the first run ran rclone: {:?}",
        jobs.names()
    );

    // The edit applies from the next run: data3, rclone.
    let second = c
        .wait_run("db", "the next run waiting on data3", |r| {
            r["id"] != first_id.as_str() && r["phase"] == "WaitingForTrigger"
        })
        .await;
    assert_eq!(second["pvc"], "data3", "{second:#}");
    let second_id = s(&second["id"]).to_owned();
    c.wait_annotations("data3", "the next run waits on data3", |a| {
        status_is(a, "WaitingForTrigger")
    })
    .await;
    c.cli_ok(&["trigger", "--source", "db", "v2"]).await;
    let run = eventually_run(&c, "db", &second_id, finished).await;
    assert_eq!(run["result"], "Successful", "{run:#}");
    let snap = of_run(&snapshots, "volsync-db-src", &second_id);
    assert!(!snap.is_empty(), "no snapshot of the next run");
    assert_eq!(
        snap[0]["spec"]["source"]["persistentVolumeClaimName"],
        "data3"
    );
    assert!(
        !of_run(&jobs, "volsync-rclone-src-db", &second_id).is_empty(),
        "no rclone Job of the next run: {:?}",
        jobs.names()
    );
    assert_eq!(
        c.annotations("data2").await.get(LATEST).map(String::as_str),
        Some("v1"),
        "v2 reached data2"
    );
}

/// Waits until the run `id` of `source` satisfies `ok`.
async fn eventually_run(c: &Cluster, source: &str, id: &str, ok: impl Fn(&Value) -> bool) -> Value {
    c.wait_run_where(&format!("run {id} of {source}"), source, |runs| {
        runs.iter().find(|r| r["id"] == id && ok(r)).cloned()
    })
    .await
}

/// Pausing a source whose run waits removes the waiting marks, refuses a Trigger and leaves a
/// value written meanwhile unused (another PVC's later value is copied first); on resume that
/// value releases the run, which completes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pause_takes_back_a_waiting_run_and_resume_releases_it_with_the_value_written_meanwhile() {
    let c = Cluster::start().await;
    let snapshots = c.record_snapshots().await;
    c.create_pvc("data", true).await;
    c.create_pvc("other", true).await;
    c.apply(&restic_source("db", "data", "once")).await;
    c.apply(&restic_source("probe", "other", "once")).await;
    for pvc in ["data", "other"] {
        c.wait_annotations(pvc, "a run waits", |a| status_is(a, "WaitingForTrigger"))
            .await;
    }

    c.cli_ok(&["pause", "db"]).await;
    c.wait_annotations("data", "WaitingForTrigger and waiting-since removed", |a| {
        !a.contains_key(STATUS) && !a.contains_key(SINCE)
    })
    .await;
    let refused = c.cli(&["trigger", "--pvc", "data", "v0"]).await;
    assert_eq!(refused.code, 1, "{refused:?}");
    assert!(
        refused.stderr.contains("FailedPrecondition") && refused.stderr.contains("paused"),
        "{refused:?}"
    );

    // Written during the pause; then, later on the same watch, a value for another PVC.
    c.write_copy_trigger("data", "v1").await;
    c.write_copy_trigger("other", "p1").await;
    let probe = c.wait_run("probe", "probe's run finished", finished).await;
    assert_eq!(probe["trigger"], "p1", "{probe:#}");
    assert!(
        !snapshots.versions("volsync-probe-src").is_empty(),
        "{:?}",
        snapshots.names()
    );
    assert!(
        snapshots.versions("volsync-db-src").is_empty(),
        "a paused source's run was cut: {:?}",
        snapshots.versions("volsync-db-src")
    );
    let a = c.annotations("data").await;
    assert!(!a.contains_key(STATUS), "{a:?}");
    assert_eq!(a.get(LATEST), None, "{a:?}");
    let run = c.runs("db").await[0].clone();
    assert_eq!(s(&run["trigger"]), "", "{run:#}");
    assert_ne!(run["phase"], "Copying", "{run:#}");

    c.cli_ok(&["resume", "db"]).await;
    let run = c.wait_run("db", "db's run finished", finished).await;
    assert_eq!(run["result"], "Successful", "{run:#}");
    assert_eq!(run["trigger"], "v1", "{run:#}");
    let a = c.annotations("data").await;
    assert_eq!(
        a.get(STATUS).map(String::as_str),
        Some("Completed"),
        "{a:?}"
    );
    assert_eq!(a.get(LATEST).map(String::as_str), Some("v1"), "{a:?}");
    assert_eq!(c.runs("db").await.len(), 1);
}

/// Scenario 1 of the hold lease: the application triggers with a 3 s hold while the agent is
/// stalled (SIGSTOP) and the scheduler is then killed (SIGKILL) and restarted. By the time the
/// agent runs again the hold is over: no VolumeSnapshot is ever made for that release, the run
/// waits again with the value spent (recorded on the PVC), and only a new trigger copies.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_release_that_outlives_the_hold_is_never_copied_across_a_stalled_agent_and_a_restart() {
    let mut c = Cluster::start().await;
    let snapshots = c.record_snapshots().await;
    db_waits_on_data(&c).await;

    c.freeze_agent();
    let out = c
        .cli_ok(&["trigger", "--pvc", "data", "--hold", "3s", "held-3s"])
        .await;
    assert!(out.stdout.contains("hold until"), "{out:?}");
    c.restart_scheduler().await;
    // The lease ends 3 s after the Trigger; the restarted scheduler sends the run back.
    let run = c
        .wait_run("db", "waiting again after the lease ran out", |r| {
            r["phase"] == "WaitingForTrigger"
                && r["spentTriggers"].as_array().is_some_and(|v| v.len() == 1)
        })
        .await;
    assert_eq!(run["spentTriggers"][0], "held-3s", "{run:#}");
    assert!(run["copyTime"].is_null(), "{run:#}");
    assert!(
        run["timeline"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["event"] == "LeaseExpired"),
        "{run:#}"
    );

    c.thaw_agent();
    let a = c
        .wait_annotations("data", "the spent value recorded, waiting again", |a| {
            a.get(LATEST).map(String::as_str) == Some("held-3s")
                && status_is(a, "WaitingForTrigger")
        })
        .await;
    assert!(a.contains_key(SINCE), "{a:?}");
    assert!(
        snapshots.names().is_empty(),
        "a VolumeSnapshot was made for a release whose hold was over: {:?}",
        snapshots.names()
    );
    // The spent value is refused; a new one, held long enough, copies once.
    let refused = c
        .cli(&["trigger", "--pvc", "data", "--hold", "60s", "held-3s"])
        .await;
    assert_ne!(refused.code, 0, "{refused:?}");
    assert!(refused.stderr.contains("value"), "{refused:?}");
    c.cli_ok(&["trigger", "--pvc", "data", "--hold", "60s", "held-60s"])
        .await;
    let run = c.wait_run("db", "finished", finished).await;
    assert_eq!(run["result"], "Successful", "{run:#}\n{}", c.logs());
    assert_eq!(run["trigger"], "held-60s", "{run:#}");
    assert_eq!(snapshots.names(), ["volsync-db-src"]);
}

/// Slow readiness beyond the lease: the snapshot is never cut, so the application's hold (3 s)
/// ends first. quiesce-exec reports no copy (the lease ran out), the run waits again with the
/// value spent, and the uncut snapshot is deleted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_not_cut_within_the_hold_is_never_reported_as_a_consistent_copy() {
    let c = Cluster::start_hosted(|sim| {
        sim.snapshot_behaviour(NS, "volsync-db-src", SnapshotBehaviour::NeverReady);
    })
    .await;
    let snapshots = c.record_snapshots().await;
    db_waits_on_data(&c).await;
    let (journal, log) = (c.path("journal"), c.path("app.log"));
    let mut app = support::spawn(
        c.cli_command(&[
            "quiesce-exec",
            "--pvc",
            "data",
            "--once",
            "--hold-limit",
            "3s",
            "--trigger-prefix",
            "app",
            "--quiesce",
            &journaled(&journal, &["quiesce-start", "quiesce-done"]),
            "--unquiesce",
            &journaled(&journal, &["unquiesce-start", "unquiesce-done"]),
        ])
        .env("SNAPGATE_LOG", "info"),
        &log,
    );
    let (code, log) = exit(&mut app, &log).await;
    assert_eq!(code, Some(1), "{log}\n{}", c.logs());
    assert!(!log.contains("copy completed"), "{log}");
    assert!(log.contains("ran out before the copy point"), "{log}");
    let journal = std::fs::read_to_string(&journal).unwrap();
    let held = journal_time(&journal, "unquiesce-start") - journal_time(&journal, "quiesce-done");
    assert!(
        held < 3.0,
        "unquiesced within the hold limit: {held}s\n{journal}"
    );

    let run = c
        .wait_run("db", "waiting again with the value spent", |r| {
            r["phase"] == "WaitingForTrigger" && r["spentTriggers"].is_array()
        })
        .await;
    let spent = s(&run["spentTriggers"][0]);
    assert!(spent.starts_with("app-"), "{run:#}");
    assert!(run["copyTime"].is_null(), "{run:#}");
    c.wait_annotations("data", "the spent value recorded", |a| {
        a.get(LATEST).map(String::as_str) == Some(spent) && status_is(a, "WaitingForTrigger")
    })
    .await;
    // The snapshot made under the lease (never cut) is deleted before the run waits again.
    let versions = snapshots.versions("volsync-db-src");
    assert!(
        !versions.is_empty(),
        "the copy was attempted under the lease"
    );
    assert!(
        versions
            .iter()
            .all(|v| v["status"]["creationTime"].is_null()),
        "never cut: {versions:#?}"
    );
    let snaps: kube::Api<kube::api::DynamicObject> = kube::Api::namespaced_with(
        c.client.clone(),
        NS,
        &kube::api::ApiResource::from_gvk_with_plural(
            &kube::api::GroupVersionKind::gvk("snapshot.storage.k8s.io", "v1", "VolumeSnapshot"),
            "volumesnapshots",
        ),
    );
    assert!(
        snaps.get_opt("volsync-db-src").await.unwrap().is_none(),
        "the uncut snapshot is gone"
    );
}

/// Several holders, explicitly: a source listing `app1` and `app2` is released only once both
/// `quiesce-exec --holder` applications have triggered; both count the copy, and the cut lies
/// inside both holds. The second application takes a second longer to quiesce than the first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_source_with_two_holders_is_copied_inside_both_holds_and_both_count_it() {
    let c = Cluster::start().await;
    let snapshots = c.record_snapshots().await;
    c.gated_db_source_waiting("  copyTrigger: {holders: [app1, app2]}\n")
        .await;
    let app = |holder: &str, quiesce: &[&str]| {
        let journal = c.path(&format!("journal-{holder}"));
        let log = c.path(&format!("{holder}.log"));
        let p = support::spawn(
            c.cli_command(&[
                "quiesce-exec",
                "--pvc",
                "data",
                "--once",
                "--holder",
                holder,
                "--trigger-prefix",
                holder,
                "--quiesce",
                &journaled(&journal, quiesce),
                "--unquiesce",
                &journaled(&journal, &["unquiesce-start", "unquiesce-done"]),
            ])
            .env("SNAPGATE_LOG", "info"),
            &log,
        );
        (p, journal, log)
    };
    let (mut first, j1, l1) = app("app1", &["quiesce-start", "quiesce-done"]);
    // `sleep 1`: the second application's slow quiesce, the scenario itself: its trigger
    // comes about a second after the first's, so the run is released by it, the last holder
    // (were it first, the check of who released the run would fail, not pass).
    let (mut second, j2, l2) = app("app2", &["quiesce-start", "!sleep 1", "quiesce-done"]);
    let (code1, log1) = exit(&mut first, &l1).await;
    let (code2, log2) = exit(&mut second, &l2).await;
    assert_eq!(code1, Some(0), "{log1}\n{}", c.logs());
    assert_eq!(code2, Some(0), "{log2}\n{}", c.logs());
    assert!(log1.contains("copy completed"), "{log1}");
    assert!(log2.contains("copy completed"), "{log2}");

    let runs = c.runs("db").await;
    assert_eq!(runs.len(), 1, "{runs:#?}");
    let run = &runs[0];
    assert!(
        s(&run["trigger"]).starts_with("app2-"),
        "the last holder released it: {run:#}"
    );
    let snap = snapshots
        .wait(
            "volsync-db-src",
            "the run's VolumeSnapshot, cut",
            WAIT,
            |o| !o["status"]["creationTime"].is_null(),
        )
        .await;
    let cut = kube_time(&snap["status"]["creationTime"]);
    for journal in [&j1, &j2] {
        let journal = std::fs::read_to_string(journal).unwrap();
        let (done, unquiesce) = (
            journal_time(&journal, "quiesce-done"),
            journal_time(&journal, "unquiesce-start"),
        );
        // The API server's times are whole seconds.
        assert!(
            done.floor() <= cut && cut <= unquiesce,
            "the cut {cut} is not inside the hold {done}..{unquiesce}:\n{journal}"
        );
    }
}
