//! No confused deputy: whoever manages sources through the scheduler gains, through the agent,
//! nothing Kubernetes does not let them do. The world runs with authentication on and RBAC
//! enforced in the simulator; the agent (as the cluster admin here, so that its own rights are
//! not what is tested) reviews each run's author with a LocalSubjectAccessReview before it
//! acts, and only the author's Kubernetes rights decide.

use std::time::Duration;

use k8s_openapi::api::batch::v1::Job;
use snapgate_e2e::*;
use snapgate_proto::v1::{self, CopyMethod, RunPhase, RunResult};
use snapgate_sdk::client::AuthChannel;
use v1::source_service_client::SourceServiceClient;

const WAIT: Duration = Duration::from_secs(600);

async fn apply_as(
    sources: &mut SourceServiceClient<AuthChannel>,
    spec: v1::SourceSpec,
    expected_version: u64,
) -> v1::Source {
    sources
        .apply_source(v1::ApplySourceRequest {
            namespace: NS.into(),
            name: SOURCE.into(),
            spec: Some(spec),
            expected_version,
        })
        .await
        .unwrap()
        .into_inner()
}

fn with_manual(mut spec: v1::SourceSpec, tag: &str) -> v1::SourceSpec {
    spec.trigger = Some(v1::ReplicationSourceTrigger {
        schedule: None,
        manual: Some(tag.into()),
    });
    spec
}

fn finished(r: &v1::Run) -> bool {
    r.phase == RunPhase::Finished as i32
}

/// The LocalSubjectAccessReviews the agent posted, as "method code".
fn reviews(w: &World) -> Vec<String> {
    w.sim
        .requests()
        .filter(|r| r.resource == "localsubjectaccessreviews")
        .iter()
        .map(|r| format!("{} {}", r.method, r.code))
        .collect()
}

#[tokio::test]
async fn a_namespace_admin_without_the_right_to_create_jobs_gets_no_copy_and_no_mover() {
    let mut w = World::start_secured_after(None, |sim| sim.enforce_rbac(true)).await;
    w.create_pvc(true);
    let mut ops = w.sources_as(OPS).await;

    // The scheduler lets ops manage the namespace's sources; Kubernetes lets it create no Job.
    let source = apply_as(&mut ops, restic_spec(CopyMethod::Snapshot, WAIT), 0).await;
    assert_eq!(
        source.author.as_ref().map(|a| a.user.as_str()),
        Some("system:serviceaccount:app:ops")
    );
    let run = w.run_when(SOURCE, "failed", finished).await;
    assert_eq!(run.result, RunResult::Failed as i32, "{run:#?}");
    assert!(
        run.message
            .contains("\"system:serviceaccount:app:ops\" may not create jobs.batch"),
        "{}",
        run.message
    );
    assert_eq!(
        run.author.as_ref().map(|a| a.user.as_str()),
        Some("system:serviceaccount:app:ops")
    );
    // Refused before anything was done: the application was never asked to quiesce, no copy
    // and no Job were made; the PVC's Events say why.
    let annotations = w.annotations();
    assert!(
        !annotations.contains_key(STATUS),
        "the PVC was marked: {annotations:?}"
    );
    assert!(w.snapshots().is_empty());
    assert!(w.jobs().is_empty());
    assert!(
        w.event_reasons().iter().any(|r| r == "AuthorForbidden"),
        "{:?}",
        w.event_reasons()
    );
    assert_eq!(reviews(&w), ["POST 201"], "one review, answered");

    // Once Kubernetes lets ops create Jobs there, its next run goes through.
    grant_author(&w.sim, OPS, None);
    let version = w.source(SOURCE).await.version;
    apply_as(
        &mut ops,
        with_manual(restic_spec(CopyMethod::Snapshot, WAIT), "m2"),
        version,
    )
    .await;
    w.wait_copy_status("WaitingForTrigger").await;
    w.annotate_trigger("released").await;
    let source = w.wait_successful_runs(SOURCE, 1).await;
    assert_eq!(source.status.unwrap().last_manual_sync, "m2");
}

#[tokio::test]
async fn a_mover_service_account_is_used_only_by_an_author_kubernetes_lets_impersonate_it() {
    let mut w = World::start_secured_after(None, |sim| {
        // ops may create Jobs, but not run them as backup-mover; the admin may do both.
        grant_author(sim, OPS, None);
        grant_author(sim, ADMIN, Some("backup-mover"));
        sim.enforce_rbac(true);
    })
    .await;
    w.create_pvc(true);
    let mut spec = restic_spec(CopyMethod::Snapshot, WAIT);
    if let Some(r) = spec.restic.as_mut() {
        r.mover_service_account = Some("backup-mover".into());
    }

    let mut ops = w.sources_as(OPS).await;
    apply_as(&mut ops, spec.clone(), 0).await;
    let run = w.run_when(SOURCE, "failed", finished).await;
    assert_eq!(run.result, RunResult::Failed as i32, "{run:#?}");
    assert!(
        run.message
            .contains("may not impersonate serviceaccounts \"backup-mover\""),
        "{}",
        run.message
    );
    assert!(!w.annotations().contains_key(STATUS));
    assert!(w.jobs().is_empty());

    // The admin applies the same spec: the source is the admin's now, and its mover runs as
    // backup-mover.
    let version = w.source(SOURCE).await.version;
    let mut admin = w.sources.clone();
    apply_as(&mut admin, with_manual(spec, "m2"), version).await;
    w.wait_copy_status("WaitingForTrigger").await;
    w.annotate_trigger("released").await;
    let job: Job = eventually("the mover Job", || {
        w.jobs()
            .into_iter()
            .find(|j| j.metadata.name.as_deref() == Some(MoverKind::Restic.job()))
    })
    .await;
    let pod = job.spec.unwrap().template.spec.unwrap();
    assert_eq!(pod.service_account_name.as_deref(), Some("backup-mover"));
    w.wait_successful_runs(SOURCE, 1).await;
}
