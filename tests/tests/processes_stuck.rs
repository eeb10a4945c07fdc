//! A stuck mover pod with the real binaries as separate processes (issue 11 item 1's
//! acceptance): `snapgate-kube-sim --mover-pods ImagePullBackOff` (every mover pod waits in
//! ImagePullBackOff for ever, its Job active), the scheduler, `snapgate-agent
//! --mover-stuck-after 5s`, and a gated source released by writing `copy-trigger` on its PVC
//! as `kubectl annotate` does. `snapgate runs` shows the reason and the pod within seconds;
//! the attempt fails 5 s after the pod was stuck, and the next one is made.

mod support;

use chrono::{DateTime, Utc};
use serde_json::Value;
use support::Cluster;

fn time(v: &Value) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(v.as_str().unwrap_or_default())
        .unwrap_or_else(|e| panic!("{v}: {e}"))
        .with_timezone(&Utc)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_image_pull_backoff_is_shown_by_snapgate_runs_at_once_and_fails_the_attempt_after_5s() {
    let c = Cluster::start_with_args(
        &["--mover-pods", "ImagePullBackOff"],
        &["--mover-stuck-after", "5s"],
    )
    .await;
    c.gated_db_source_waiting("").await;
    c.write_copy_trigger("data", "quiesced-1").await;
    let released = std::time::Instant::now();

    // `snapgate runs` (the table) names the reason and the pod within seconds.
    let shown = snapgate_e2e::poll_until(
        "snapgate runs shows ImagePullBackOff",
        std::time::Duration::from_secs(15),
        || async {
            let out = c.cli_ok(&["runs", "db"]).await;
            if out
                .stdout
                .contains("ImagePullBackOff: mover pod volsync-src-db-")
            {
                Ok(out.stdout)
            } else {
                Err(format!("{}\n{}", out.stdout, c.logs()))
            }
        },
    )
    .await;
    let within = released.elapsed();
    assert!(
        shown.contains("(Job volsync-src-db, attempt 1): Back-off pulling image"),
        "{shown}"
    );
    let run = c
        .wait_run("db", "the stuck pod recorded", |r| {
            r["moverStuck"]["attempt"] == 1
        })
        .await;
    let stuck = &run["moverStuck"];
    assert_eq!(stuck["reason"], "ImagePullBackOff");
    let pod = stuck["pod"].as_str().unwrap().to_owned();
    assert!(shown.contains(&pod), "{shown}");
    let (since, deadline) = (time(&stuck["since"]), time(&stuck["deadline"]));
    assert_eq!(
        (deadline - since).num_seconds(),
        5,
        "--mover-stuck-after 5s"
    );
    // The source's state says so too (`snapgate get`).
    let get = c.cli_ok(&["get", "db"]).await;
    assert!(get.stdout.contains("MoverStuck"), "{}", get.stdout);

    // 5 s after it was stuck, the attempt fails: its Job goes and attempt 2 follows.
    let failed = c
        .wait_run("db", "attempt 1 failed", |r| r["moverFailures"] == 1)
        .await;
    let entry = failed["timeline"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["event"] == "MoverFailed")
        .cloned()
        .unwrap();
    assert_eq!(
        entry["message"],
        "mover attempt 1 failed (stuck: ImagePullBackOff); retrying"
    );
    let at = time(&entry["time"]);
    assert!(
        at >= deadline,
        "failed at {at}, stuck since {since}: before its 5 s were up"
    );
    let next = c
        .wait_run("db", "attempt 2 stuck in turn", |r| {
            r["moverStuck"]["attempt"] == 2
        })
        .await;
    assert_ne!(next["moverStuck"]["pod"].as_str(), Some(pod.as_str()));
    println!("shown {within:?} after the trigger; attempt 1 stuck since {since}, failed at {at}");
}
