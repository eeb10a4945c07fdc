//! What goes wrong in a cluster, and how the agent answers: failed mover Jobs replaced with
//! back-off and every failure reported, missing Secrets and PVCs as a clear status, API
//! errors retried without a wrong annotation or a lost report, paused sources.

use std::time::Duration;

use snapgate_e2e::{eventually_async, *};
use snapgate_kube_sim::{FaultKind, FaultRule, JobBehaviour, SnapshotBehaviour, Verb};
use snapgate_proto::v1::{self, CopyMethod};

async fn condition_message(w: &mut World) -> String {
    let s = w.source(SOURCE).await;
    s.status
        .and_then(|st| {
            st.conditions
                .into_iter()
                .find(|c| c.r#type == "Synchronizing")
        })
        .map(|c| format!("{} {}", c.reason, c.message))
        .unwrap_or_default()
}

#[tokio::test]
async fn a_failed_mover_job_is_reported_with_its_log_and_replaced_after_a_back_off() {
    let mut w = World::start().await;
    w.sim
        .create(&secret("rclone-secret", &["rclone.conf"]))
        .unwrap();
    let job = "volsync-rclone-src-db";
    w.sim.job_behaviour(
        NS,
        job,
        JobBehaviour::fail(["Transferred: 0 B", "ERROR : bucket not found"]),
    );
    w.create_pvc(false);
    w.apply(SOURCE, rclone_spec(CopyMethod::Direct)).await;
    // The simulator reads a Job's script when it starts the Job: once the first Job's first
    // pod has failed (it is scripted to fail), every later Job is scripted to succeed.
    eventually("the first Job's first failed pod", || {
        w.jobs()
            .first()
            .and_then(|j| j.status.as_ref()?.failed)
            .filter(|f| *f >= 1)
            .map(|_| ())
    })
    .await;
    w.sim.job_behaviour(
        NS,
        job,
        JobBehaviour::succeed(["Transferred: 1.2 MiB", "Rclone completed in 1s"]),
    );
    let status = eventually_async!("the failure is reported", {
        let s = w.source(SOURCE).await;
        s.status
            .and_then(|st| st.latest_mover_status)
            .filter(|m| m.result == "Failed")
    });
    assert!(
        status.logs.contains("ERROR : bucket not found"),
        "the failure carries the log tail: {status:?}"
    );
    // The next Job succeeds; it is attempt 2, made after the back-off.
    let second = eventually("the replacement Job", || {
        w.jobs().into_iter().find(|j| {
            j.metadata
                .annotations
                .as_ref()
                .and_then(|a| a.get("snapgate.io/attempt"))
                .is_some_and(|v| v == "2")
        })
    })
    .await;
    assert_eq!(second.metadata.name.as_deref(), Some(job));
    let s = eventually_async!("the run succeeds on the second attempt", {
        let s = w.source(SOURCE).await;
        s.status
            .and_then(|st| st.latest_mover_status)
            .filter(|m| m.result == "Successful")
    });
    assert_eq!(s.logs, "Transferred: 1.2 MiB\nRclone completed in 1s");
    let runs = w.runs(SOURCE).await;
    let run = &runs[0];
    assert_eq!(run.result(), v1::RunResult::Successful);
    assert_eq!(run.mover_failures, 1, "each failure reported once: {run:?}");
    assert!(w.event_reasons().contains(&"TransferFailed".to_owned()));
    assert_eq!(
        w.sim.requests().count_verb(Verb::Create, "jobs"),
        2,
        "one Job per attempt"
    );
}

#[tokio::test]
async fn a_missing_secret_is_a_clear_status_and_the_run_goes_on_once_it_exists() {
    let mut w = World::start().await;
    w.create_pvc(false);
    w.apply(SOURCE, rclone_spec(CopyMethod::Direct)).await;
    let msg = eventually_async!("the missing Secret on the source", {
        let m = condition_message(&mut w).await;
        m.contains("SecretNotFound").then_some(m)
    });
    assert!(msg.contains("app/rclone-secret"), "names the Secret: {msg}");
    assert!(w.jobs().is_empty(), "no Job without its Secret");
    w.sim
        .create(&secret("rclone-secret", &["rclone.conf"]))
        .unwrap();
    w.wait_successful_runs(SOURCE, 1).await;
}

#[tokio::test]
async fn a_secret_without_a_key_its_mover_needs_is_named_and_the_run_goes_on_once_it_has_it() {
    let mut w = World::start().await;
    w.sim
        .create(&secret("rclone-secret", &["RCLONE_CONFIG_PASS"]))
        .unwrap();
    w.create_pvc(false);
    w.apply(SOURCE, rclone_spec(CopyMethod::Direct)).await;
    let msg = eventually_async!("the missing key on the source", {
        let m = condition_message(&mut w).await;
        m.contains("SecretKeyMissing").then_some(m)
    });
    assert!(
        msg.contains("Secret app/rclone-secret has no key \"rclone.conf\""),
        "names the Secret and the key: {msg}"
    );
    let run = w.runs(SOURCE).await.remove(0);
    assert!(run.message.contains("rclone.conf"), "{}", run.message);
    assert!(w.jobs().is_empty(), "no Job whose pod could not start");
    // Fixed: the agent reads the Secret again and the run goes on.
    w.sim
        .delete::<k8s_openapi::api::core::v1::Secret>(Some(NS), "rclone-secret")
        .unwrap();
    w.sim
        .create(&secret("rclone-secret", &["rclone.conf"]))
        .unwrap();
    w.wait_successful_runs(SOURCE, 1).await;
}

#[tokio::test]
async fn a_missing_source_pvc_is_a_clear_status_and_the_run_starts_once_it_exists() {
    let mut w = World::start().await;
    w.apply(
        SOURCE,
        restic_spec(CopyMethod::Snapshot, Duration::from_secs(600)),
    )
    .await;
    let msg = eventually_async!("the missing PVC on the source", {
        let m = condition_message(&mut w).await;
        m.contains("not found").then_some(m)
    });
    assert!(msg.contains(PVC), "{msg}");
    w.create_pvc(true);
    w.wait_copy_status("WaitingForTrigger").await;
}

#[tokio::test]
async fn a_snapshot_class_error_is_shown_on_the_source_and_the_pvc_stays_in_progress() {
    let mut w = World::start().await;
    w.sim.snapshot_behaviour(
        NS,
        "volsync-db-src",
        SnapshotBehaviour::Fail("volumesnapshotclass \"fast\" not found".into()),
    );
    w.create_pvc(true);
    w.apply(
        SOURCE,
        restic_spec(CopyMethod::Snapshot, Duration::from_secs(600)),
    )
    .await;
    w.wait_copy_status("WaitingForTrigger").await;
    w.annotate_trigger("first").await;
    let msg = eventually_async!("the snapshot error on the source", {
        let m = condition_message(&mut w).await;
        m.contains("SnapshotFailed").then_some(m)
    });
    assert!(
        msg.contains("volumesnapshotclass \"fast\" not found"),
        "{msg}"
    );
    assert_eq!(
        w.copy_annotations().get(STATUS).map(String::as_str),
        Some("InProgress"),
        "never Completed without a ready copy"
    );
}

#[tokio::test]
async fn api_errors_are_retried_without_a_wrong_annotation_or_a_lost_report() {
    let mut w = World::start().await;
    let faults = w.sim.faults();
    faults.fail(
        FaultRule::new(FaultKind::Status(500))
            .verb(Verb::Patch)
            .resource("persistentvolumeclaims")
            .times(2),
    );
    faults.fail(
        FaultRule::new(FaultKind::Status(409))
            .verb(Verb::Patch)
            .resource("persistentvolumeclaims")
            .times(1),
    );
    faults.fail(
        FaultRule::new(FaultKind::Status(429))
            .verb(Verb::Create)
            .resource("volumesnapshots")
            .times(2),
    );
    faults.fail(
        FaultRule::new(FaultKind::Status(503))
            .verb(Verb::Create)
            .resource("jobs")
            .times(1),
    );
    faults.fail(
        FaultRule::new(FaultKind::CloseWatch)
            .resource("persistentvolumeclaims")
            .times(1),
    );
    w.create_pvc(true);
    w.apply(
        SOURCE,
        restic_spec(CopyMethod::Snapshot, Duration::from_secs(600)),
    )
    .await;
    w.wait_copy_status("WaitingForTrigger").await;
    w.annotate_trigger("first").await;
    w.wait_successful_runs(SOURCE, 1).await;
    let a = w.copy_annotations();
    assert_eq!(a.get(STATUS).map(String::as_str), Some("Completed"));
    assert_eq!(a.get(LATEST).map(String::as_str), Some("first"));
    assert!(!a.contains_key(SINCE));
    assert_eq!(
        w.sim.requests().count(|r| r.verb == Some(Verb::Create)
            && r.resource == "volumesnapshots"
            && r.code < 300),
        1,
        "one snapshot despite the retries"
    );
    // Counted by verb, resource and class. (The 429 and 503 of Create are each one failed
    // call; the PVC patch's faults may meet a status patch too, so at least their count.)
    let metrics = w.agent_metrics.encode();
    let count = |labels: &str| {
        metrics
            .lines()
            .find(|l| l.starts_with(&format!("snapgate_agent_api_errors_total{{{labels}}}")))
            .and_then(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
            .unwrap_or(0)
    };
    assert_eq!(
        count(r#"verb="create",resource="volumesnapshots",class="transient""#),
        2,
        "{metrics}"
    );
    assert_eq!(
        count(r#"verb="create",resource="jobs",class="transient""#),
        1,
        "{metrics}"
    );
    assert!(
        count(r#"verb="patch",resource="persistentvolumeclaims",class="transient""#) >= 2
            && count(r#"verb="patch",resource="persistentvolumeclaims",class="conflict""#) >= 1,
        "{metrics}"
    );
    // Transient failures are retried in silence: nothing about them on the run.
    let run = w.runs(SOURCE).await.remove(0);
    assert!(!run.message.contains("Api"), "{}", run.message);
}

#[tokio::test]
async fn a_forbidden_or_invalid_api_call_is_said_on_the_run_and_the_run_goes_on_once_it_passes() {
    let mut w = World::start().await;
    w.sim
        .create(&secret("rclone-secret", &["rclone.conf"]))
        .unwrap();
    // The Job's create is refused: first as a missing RBAC verb would be, then as an invalid
    // object; each stays until the rule is used up, as until someone fixes it.
    w.sim.faults().fail(
        FaultRule::new(FaultKind::Status(403))
            .verb(Verb::Create)
            .resource("jobs")
            .times(3),
    );
    w.create_pvc(false);
    w.apply(SOURCE, rclone_spec(CopyMethod::Direct)).await;
    let msg = eventually_async!("the forbidden create on the source", {
        let m = condition_message(&mut w).await;
        m.contains("ApiForbidden").then_some(m)
    });
    assert!(
        msg.contains("create jobs \"volsync-rclone-src-db\" in namespace app failed")
            && msg.contains("grant the agent's Role create on jobs"),
        "{msg}"
    );
    let run = w.runs(SOURCE).await.remove(0);
    assert!(run.message.contains("ApiForbidden"), "{}", run.message);
    w.sim.faults().fail(
        FaultRule::new(FaultKind::Status(422))
            .verb(Verb::Create)
            .resource("jobs")
            .times(3),
    );
    eventually_async!("the invalid create on the source", {
        let m = condition_message(&mut w).await;
        m.contains("ApiInvalid").then_some(m)
    });
    w.wait_successful_runs(SOURCE, 1).await;
    let metrics = w.agent_metrics.encode();
    for class in ["forbidden", "invalid"] {
        assert!(
            metrics.contains(&format!(
                "snapgate_agent_api_errors_total{{verb=\"create\",resource=\"jobs\",class=\"{class}\"}} 3"
            )),
            "{metrics}"
        );
    }
}

#[tokio::test]
async fn pausing_a_source_scales_its_running_mover_job_to_zero() {
    let mut w = World::start().await;
    w.sim
        .create(&secret("rclone-secret", &["rclone.conf"]))
        .unwrap();
    w.sim
        .job_behaviour(NS, "volsync-rclone-src-db", JobBehaviour::hang());
    w.create_pvc(false);
    w.apply(SOURCE, rclone_spec(CopyMethod::Direct)).await;
    eventually("the Job runs", || {
        w.jobs()
            .into_iter()
            .find(|j| j.spec.as_ref().and_then(|s| s.parallelism) == Some(1))
    })
    .await;
    w.sources
        .pause_source(v1::PauseSourceRequest {
            namespace: NS.into(),
            name: SOURCE.into(),
            note: "maintenance".into(),
        })
        .await
        .unwrap();
    eventually("parallelism 0 while paused", || {
        w.jobs()
            .into_iter()
            .find(|j| j.spec.as_ref().and_then(|s| s.parallelism) == Some(0))
    })
    .await;
}
