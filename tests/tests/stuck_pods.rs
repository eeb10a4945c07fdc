//! Mover pods that cannot start (issue 11 item 1), with the real agent against the simulated
//! API server, which shows them only as a cluster does: pods and Events the agent watches.
//!
//! For ImagePullBackOff, CreateContainerConfigError, FailedMount and a Job that cannot create
//! its pod (FailedCreate): the run's message and the source's condition say Kubernetes' reason
//! and the pod at once; past the agent's `mover_stuck_after` (2 s here) the attempt fails (its
//! Job deleted, the failure counted and reported with the reason), and the next attempt comes
//! after the back-off; once the pods can start, the run completes. A pod that recovers before
//! the limit clears the message, and the run completes with no failure.

use std::time::Duration;

use chrono::{DateTime, Utc};
use k8s_openapi::api::{batch::v1::Job, core::v1::Pod};
use snapgate_agent_core::plan::PlanConfig;
use snapgate_e2e::*;
use snapgate_kube_sim::JobBehaviour;
use snapgate_proto::{
    time::to_datetime,
    v1::{self, CopyMethod},
};

const JOB: &str = "volsync-src-db";
const STUCK_AFTER: Duration = Duration::from_secs(2);

/// A world whose agent fails a stuck attempt after [`STUCK_AFTER`] (back-off 0.5 s, as in
/// every world), its restic source `db` on the ungated PVC `data` (copy method Clone), the
/// mover Job's pods behaving as `pods`.
async fn stuck_world(pods: JobBehaviour, spec: impl FnOnce(&mut v1::SourceSpec)) -> World {
    let mut w = World::start_planning(PlanConfig {
        mover_stuck_after: STUCK_AFTER,
        ..plan_config()
    })
    .await;
    w.sim.job_behaviour(NS, JOB, pods);
    w.create_pvc(false);
    let mut s = restic_spec(CopyMethod::Clone, Duration::from_secs(600));
    spec(&mut s);
    w.apply(SOURCE, s).await;
    w
}

fn attempt(job: &Job) -> Option<&str> {
    job.metadata
        .annotations
        .as_ref()?
        .get("snapgate.io/attempt")
        .map(String::as_str)
}

/// The mover pods the API server has, by name.
fn pods(w: &World) -> Vec<String> {
    w.sim
        .list::<Pod>(Some(NS))
        .unwrap()
        .into_iter()
        .filter_map(|p| p.metadata.name)
        .filter(|n| n.starts_with(JOB))
        .collect()
}

fn synchronizing(source: &v1::Source) -> (String, String) {
    source
        .status
        .as_ref()
        .and_then(|s| s.conditions.iter().find(|c| c.r#type == "Synchronizing"))
        .map(|c| (c.reason.clone(), c.message.clone()))
        .unwrap_or_default()
}

fn entry<'r>(run: &'r v1::Run, event: &str) -> Option<&'r v1::TimelineEntry> {
    run.timeline.iter().find(|t| t.event == event)
}

fn time(t: Option<&prost_types::Timestamp>) -> DateTime<Utc> {
    to_datetime(t.expect("a time"))
}

/// The whole story of a stuck mover: `reason` on the run and the source at once (naming the
/// pod when there is one, `expect` in the message), the attempt failed no sooner than
/// [`STUCK_AFTER`] after it was stuck, its Job deleted, the next attempt made after the
/// back-off and shown stuck in turn; once the pods can start, the run completes and the
/// message is gone.
async fn stuck_then_failed_and_retried(w: &mut World, reason: &str, expect: &str) {
    let first = w
        .run_when(SOURCE, &format!("{reason} on the run"), |r| {
            r.message.starts_with(&format!("{reason}: "))
        })
        .await;
    let stuck = first
        .mover_stuck
        .clone()
        .expect("the stuck mover, recorded");
    assert_eq!(
        (stuck.reason.as_str(), stuck.job.as_str(), stuck.attempt),
        (reason, JOB, 1)
    );
    assert!(first.message.contains(expect), "{}", first.message);
    let jobs = w.jobs();
    let job = jobs
        .iter()
        .find(|j| attempt(j) == Some("1"))
        .expect("Job 1");
    if reason == "FailedCreate" {
        assert_eq!(stuck.pod, "", "no pod was made");
        assert!(pods(w).is_empty());
        assert!(
            first.message.contains(&format!(
                "mover Job {JOB} (attempt 1) cannot create its pod"
            )),
            "{}",
            first.message
        );
    } else {
        // The pod named is the Job's own, as the API server has it.
        assert_eq!(pods(w), std::slice::from_ref(&stuck.pod));
        assert!(
            first
                .message
                .contains(&format!("mover pod {} (Job {JOB}, attempt 1)", stuck.pod)),
            "{}",
            first.message
        );
    }
    let source = w.source(SOURCE).await;
    assert_eq!(
        synchronizing(&source),
        ("MoverStuck".to_owned(), first.message.clone()),
        "the source's condition says the same"
    );
    let (since, deadline) = (time(stuck.since.as_ref()), time(stuck.deadline.as_ref()));
    assert_eq!(
        (deadline - since).to_std().unwrap(),
        STUCK_AFTER,
        "the attempt fails once stuck for --mover-stuck-after"
    );

    // Past the limit: the attempt fails, its Job goes, and the next attempt is made.
    let failed = w
        .run_when(SOURCE, "attempt 1 failed", |r| r.mover_failures >= 1)
        .await;
    let at = entry(&failed, "MoverFailed").expect("the failure on the timeline");
    assert_eq!(
        at.message,
        format!("mover attempt 1 failed (stuck: {reason}); retrying")
    );
    assert!(
        time(at.time.as_ref()) >= deadline,
        "failed at {:?}, before its deadline {deadline}",
        at.time
    );
    let logs = w
        .source(SOURCE)
        .await
        .status
        .unwrap()
        .latest_mover_status
        .unwrap();
    assert_eq!(logs.result, "Failed");
    assert!(
        logs.logs.starts_with(&format!("{reason}: ")) && logs.logs.contains("the attempt failed"),
        "{}",
        logs.logs
    );
    let next = eventually("attempt 2's Job", || {
        w.jobs().into_iter().find(|j| attempt(j) == Some("2"))
    })
    .await;
    assert_ne!(next.metadata.uid, job.metadata.uid, "a new Job");
    assert!(
        w.jobs().iter().all(|j| j.metadata.uid != job.metadata.uid),
        "attempt 1's Job is deleted"
    );
    assert!(
        w.event_reasons().iter().any(|r| r == "TransferFailed"),
        "a Warning Event on the PVC"
    );
    let second = w
        .run_when(SOURCE, "attempt 2 shown stuck", |r| {
            r.mover_stuck.as_ref().is_some_and(|s| s.attempt == 2)
        })
        .await;
    assert!(
        second.message.starts_with(&format!("{reason}: ")),
        "{}",
        second.message
    );

    // The cause is fixed: attempt 2's pods start, the run completes, nothing is stuck.
    w.sim
        .job_behaviour(NS, JOB, JobBehaviour::succeed(RESTIC_LOG));
    w.wait_successful_runs(SOURCE, 1).await;
    let done = w.runs(SOURCE).await.remove(0);
    assert_eq!(done.result(), v1::RunResult::Successful);
    assert_eq!(done.message, "");
    assert_eq!(done.mover_stuck, None);
    assert!(done.mover_failures >= 1);
}

#[tokio::test]
async fn an_image_that_cannot_be_pulled_is_named_at_once_and_fails_the_attempt_past_the_limit() {
    let mut w = stuck_world(JobBehaviour::stuck("ImagePullBackOff"), |_| {}).await;
    stuck_then_failed_and_retried(
        &mut w,
        "ImagePullBackOff",
        "Back-off pulling image \"quay.io/backube/volsync:0.14.0\"",
    )
    .await;
}

#[tokio::test]
async fn a_secret_key_the_container_cannot_find_is_named_at_once_and_fails_the_attempt() {
    let mut w = stuck_world(JobBehaviour::stuck("CreateContainerConfigError"), |_| {}).await;
    stuck_then_failed_and_retried(
        &mut w,
        "CreateContainerConfigError",
        "couldn't find key RESTIC_REPOSITORY in Secret app/restic-config",
    )
    .await;
}

#[tokio::test]
async fn a_volume_that_cannot_be_mounted_is_named_at_once_and_fails_the_attempt() {
    let mut w = stuck_world(JobBehaviour::stuck("FailedMount"), |_| {}).await;
    stuck_then_failed_and_retried(&mut w, "FailedMount", "Unable to attach or mount volumes").await;
}

#[tokio::test]
async fn a_job_that_cannot_create_its_pod_is_named_at_once_and_fails_the_attempt() {
    let mut w = stuck_world(JobBehaviour::failed_create(), |s| {
        s.restic.as_mut().unwrap().mover_service_account = Some("mover".into());
    })
    .await;
    stuck_then_failed_and_retried(
        &mut w,
        "FailedCreate",
        "error looking up service account app/mover: serviceaccount \"mover\" not found",
    )
    .await;
}

#[tokio::test]
async fn a_pod_that_recovers_before_the_limit_clears_the_message_and_the_run_completes() {
    let mut w = World::start_planning(PlanConfig {
        // Far away: the pod recovers first.
        mover_stuck_after: Duration::from_secs(3600),
        ..plan_config()
    })
    .await;
    w.sim
        .job_behaviour(NS, JOB, JobBehaviour::stuck("ErrImagePull"));
    w.create_pvc(false);
    w.apply(
        SOURCE,
        restic_spec(CopyMethod::Clone, Duration::from_secs(600)),
    )
    .await;
    let stuck = w
        .run_when(SOURCE, "ErrImagePull on the run", |r| {
            r.message
                .starts_with("ErrImagePull: mover pod volsync-src-db-")
        })
        .await;
    assert_eq!(
        synchronizing(&w.source(SOURCE).await).0,
        "MoverStuck",
        "and on the source"
    );
    // The registry is back: the same pod pulls its image and runs.
    w.sim
        .job_behaviour(NS, JOB, JobBehaviour::succeed(RESTIC_LOG));
    let recovered = w
        .run_when(SOURCE, "the message cleared", |r| {
            r.mover_stuck.is_none() && !r.message.contains("ErrImagePull")
        })
        .await;
    let pod = stuck.mover_stuck.unwrap().pod;
    assert_eq!(
        entry(&recovered, "MoverRunning").map(|t| t.message.as_str()),
        Some(
            format!("mover attempt 1 is no longer stuck (ErrImagePull of {pod} is over)").as_str()
        )
    );
    w.wait_successful_runs(SOURCE, 1).await;
    let done = w.runs(SOURCE).await.remove(0);
    assert_eq!((done.mover_failures, done.message.as_str()), (0, ""));
    assert_eq!(
        w.source(SOURCE)
            .await
            .status
            .unwrap()
            .latest_mover_status
            .unwrap()
            .result,
        "Successful"
    );
    eventually("the cleanup", || w.jobs().is_empty().then_some(())).await;
}

/// The stuck-since time is the cluster's record (the pod's condition), not the agent's first
/// sight: a new agent process reports the same since and deadline, so a restart does not put
/// off the attempt's end.
#[tokio::test]
async fn a_restarted_agent_reports_the_same_stuck_since_and_deadline() {
    let mut w = World::start_planning(PlanConfig {
        mover_stuck_after: Duration::from_secs(3600),
        ..plan_config()
    })
    .await;
    w.start_probe().await;
    w.sim
        .job_behaviour(NS, JOB, JobBehaviour::stuck("ImagePullBackOff"));
    w.create_pvc(false);
    w.apply(
        SOURCE,
        restic_spec(CopyMethod::Clone, Duration::from_secs(600)),
    )
    .await;
    let before = w
        .run_when(SOURCE, "stuck", |r| r.mover_stuck.is_some())
        .await
        .mover_stuck
        .unwrap();
    w.stop_agent().await;
    w.start_agent();
    eventually("the new agent reports the stuck pod", || {
        w.agent_metrics
            .encode()
            .contains("snapgate_agent_reports_total{kind=\"MoverStuck\"} 1")
            .then_some(())
    })
    .await;
    // Reports are applied in order: once the probe's is, the stuck report before it is too.
    w.round_trip().await;
    let run = w.runs(SOURCE).await.remove(0);
    assert_eq!(run.mover_stuck, Some(before), "the same since and deadline");
    assert_eq!(
        run.timeline
            .iter()
            .filter(|t| t.event == "MoverStuck")
            .count(),
        1
    );
}
