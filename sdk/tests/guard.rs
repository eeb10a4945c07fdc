//! The guarded copy against the real scheduler and a stand-in agent: unquiesce runs on every
//! way a copy can end.

mod support;

use std::{
    collections::HashSet,
    sync::Arc,
    time::{Duration, Instant},
};

use futures::StreamExt;

use snapgate_proto::v1::{self, CopyState, DirectivePhase, TimeoutPolicy};
use snapgate_sdk::{Client, CopyRequest, Error, GuardOptions, Outcome, default_trigger_value, pvc};
use support::{Agent, Journal, LossyProxy, OnCopy, Scheduler, create, restic};

/// Runs a guarded copy of `apps/data` whose quiesce and unquiesce write to `journal`, with the
/// copy state the scheduler shows at each step.
async fn guarded(
    client: &Client,
    journal: &Journal,
    options: GuardOptions,
) -> Result<snapgate_sdk::GuardedCopy, Error> {
    let (q, u) = (journal.clone(), journal.clone());
    let (qc, uc) = (client.clone(), client.clone());
    client
        .quiesced_copy(
            pvc("apps", "data"),
            move |request| async move {
                let state = qc.copy_status(&pvc("apps", "data")).await?.state;
                q.push(format!(
                    "quiesce {} {}",
                    request.run_id,
                    snapgate_sdk::json::copy_state(state)
                ));
                Ok::<_, Error>(())
            },
            move || async move {
                let state = uc.copy_status(&pvc("apps", "data")).await.map(|s| s.state);
                u.push(format!(
                    "unquiesce {}",
                    state.map_or("unreachable".into(), snapgate_sdk::json::copy_state)
                ));
                Ok::<_, Error>(())
            },
            options,
        )
        .await
}

#[tokio::test]
async fn the_guard_quiesces_triggers_and_unquiesces_when_the_copy_completes() {
    let dir = tempfile::tempdir().unwrap();
    let s = Scheduler::start(dir.path(), 0).await;
    let _agent = Agent::start(&s.endpoint(), "apps", OnCopy::Complete).await;
    let client = s.client().await;
    create(&client, "apps", "db", restic("data")).await;

    let journal = Journal::default();
    let copy = guarded(&client, &journal, GuardOptions::default())
        .await
        .unwrap();

    assert_eq!(copy.run_id, "run-1");
    assert_eq!(copy.source, "db");
    assert!(copy.trigger.starts_with("sdk-run-1-"), "{}", copy.trigger);
    assert_eq!(
        journal.entries(),
        ["quiesce run-1 WaitingForTrigger", "unquiesce Completed"]
    );
    let runs = client
        .sources()
        .list_runs(v1::ListRunsRequest {
            namespace: "apps".into(),
            name: "db".into(),
            limit: 5,
        })
        .await
        .unwrap()
        .into_inner()
        .runs;
    assert_eq!(runs[0].trigger, copy.trigger);
    assert_eq!(runs[0].released_by, "rpc");
    assert!(runs[0].copy_time.is_some());
    s.stop().await;
}

#[tokio::test]
async fn the_guard_unquiesces_and_reports_failed_when_the_agent_cannot_make_the_copy() {
    let dir = tempfile::tempdir().unwrap();
    let s = Scheduler::start(dir.path(), 0).await;
    let _agent = Agent::start(&s.endpoint(), "apps", OnCopy::Fail("SnapshotFailed")).await;
    let client = s.client().await;
    create(&client, "apps", "db", restic("data")).await;

    let journal = Journal::default();
    let err = guarded(&client, &journal, GuardOptions::default())
        .await
        .unwrap_err();

    let Error::CopyFailed {
        run_id,
        outcome,
        reason,
    } = &err
    else {
        panic!("expected CopyFailed, got {err:?}")
    };
    assert_eq!(run_id, "run-1");
    assert_eq!(*outcome, Outcome::Failed);
    assert!(reason.contains("SnapshotFailed"), "{reason}");
    assert_eq!(
        journal.entries(),
        ["quiesce run-1 WaitingForTrigger", "unquiesce Failed"]
    );
    s.stop().await;
}

#[tokio::test]
async fn the_guard_unquiesces_and_reports_aborted_when_the_source_is_deleted_mid_copy() {
    let dir = tempfile::tempdir().unwrap();
    let s = Scheduler::start(dir.path(), 0).await;
    let mut agent = Agent::start(&s.endpoint(), "apps", OnCopy::Hang).await;
    let client = s.client().await;
    create(&client, "apps", "db", restic("data")).await;

    let journal = Journal::default();
    let guard = tokio::spawn({
        let (client, journal) = (client.clone(), journal.clone());
        async move { guarded(&client, &journal, GuardOptions::default()).await }
    });
    // The copy was released and the agent is making it: delete the source now.
    agent.wait_for(DirectivePhase::Copy).await;
    client
        .sources()
        .delete_source(v1::DeleteSourceRequest {
            namespace: "apps".into(),
            name: "db".into(),
            expected_version: 0,
        })
        .await
        .unwrap();

    let err = tokio::time::timeout(Duration::from_secs(20), guard)
        .await
        .unwrap()
        .unwrap()
        .unwrap_err();
    assert_eq!(err.outcome(), Some(Outcome::Aborted), "{err:?}");
    assert!(err.to_string().contains("source deleted"), "{err}");
    let entries = journal.entries();
    assert_eq!(entries.len(), 2, "{entries:?}");
    assert_eq!(entries[0], "quiesce run-1 WaitingForTrigger");
    assert!(entries[1].starts_with("unquiesce"), "{entries:?}");
    s.stop().await;
}

#[tokio::test]
async fn the_guard_unquiesces_and_reports_timed_out_when_the_wait_expires_under_the_skip_policy() {
    let dir = tempfile::tempdir().unwrap();
    let s = Scheduler::start(dir.path(), 0).await;
    let _agent = Agent::start(&s.endpoint(), "apps", OnCopy::Complete).await;
    let client = s.client().await;
    let mut spec = restic("data");
    spec.copy_trigger = Some(v1::CopyTriggerOptions {
        wait_timeout: Some(prost_types::Duration {
            seconds: 1,
            nanos: 0,
        }),
        on_timeout: TimeoutPolicy::Skip as i32,
        holders: Vec::new(),
        allowed_service_accounts: Vec::new(),
    });
    create(&client, "apps", "db", spec).await;

    // The application takes longer to quiesce than the source waits for a trigger: it is
    // done only once the run has timed out.
    let journal = Journal::default();
    let (q, u) = (journal.clone(), journal.clone());
    let runs = client.sources();
    let err = client
        .quiesced_copy(
            pvc("apps", "data"),
            move |request| async move {
                q.push(format!("quiesce {}", request.run_id));
                tokio::time::timeout(Duration::from_secs(20), async {
                    loop {
                        let run = runs
                            .clone()
                            .list_runs(v1::ListRunsRequest {
                                namespace: "apps".into(),
                                name: "db".into(),
                                limit: 1,
                            })
                            .await
                            .unwrap()
                            .into_inner()
                            .runs
                            .remove(0);
                        if run.result() == v1::RunResult::TimedOut {
                            return;
                        }
                        // The pause between two looks at the run.
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                })
                .await
                .expect("the run times out");
                Ok::<_, Error>(())
            },
            move || async move {
                u.push("unquiesce");
                Ok::<_, Error>(())
            },
            GuardOptions::default(),
        )
        .await
        .unwrap_err();

    let Error::CopyFailed {
        outcome, reason, ..
    } = &err
    else {
        panic!("expected CopyFailed, got {err:?}")
    };
    assert_eq!(*outcome, Outcome::TimedOut);
    assert!(
        reason.contains(&snapgate_contract::timeout_message("data")),
        "{reason}"
    );
    assert_eq!(journal.entries(), ["quiesce run-1", "unquiesce"]);
    s.stop().await;
}

/// The hold lease: the guard's Trigger asks for what is left of its hold limit (less the
/// transit allowance), so a copy that is not cut in time is never counted, and the guard learns
/// it before its limit.
#[tokio::test]
async fn a_copy_not_cut_within_the_guards_hold_is_not_counted_and_the_run_waits_again() {
    let dir = tempfile::tempdir().unwrap();
    let s = Scheduler::start(dir.path(), 0).await;
    let _agent = Agent::start(&s.endpoint(), "apps", OnCopy::Hang).await;
    let client = s.client().await;
    create(&client, "apps", "db", restic("data")).await;

    let journal = Journal::default();
    let started = Instant::now();
    let limit = Duration::from_secs(5);
    let err = guarded(&client, &journal, GuardOptions::default().hold_limit(limit))
        .await
        .unwrap_err();

    let Error::LeaseExpired { run_id, value } = &err else {
        panic!("expected LeaseExpired, got {err:?}")
    };
    assert_eq!(run_id, "run-1");
    assert!(value.starts_with("sdk-run-1-"), "{value}");
    assert!(
        started.elapsed() < limit,
        "unquiesced when the lease ran out, before the hold limit: {:?}",
        started.elapsed()
    );
    assert_eq!(
        journal.entries(),
        [
            "quiesce run-1 WaitingForTrigger",
            "unquiesce WaitingForTrigger"
        ]
    );
    // The run waits for a new trigger; the guard's value is spent.
    let runs = client
        .sources()
        .list_runs(v1::ListRunsRequest {
            namespace: "apps".into(),
            name: "db".into(),
            limit: 1,
        })
        .await
        .unwrap()
        .into_inner()
        .runs;
    assert_eq!(runs[0].id, "run-1");
    assert_eq!(runs[0].phase(), v1::RunPhase::WaitingForTrigger);
    assert_eq!(runs[0].spent_triggers, std::slice::from_ref(value));
    assert!(runs[0].copy_time.is_none());
    s.stop().await;
}

#[tokio::test]
async fn the_guard_unquiesces_when_the_hold_limit_expires_before_the_trigger() {
    let dir = tempfile::tempdir().unwrap();
    let s = Scheduler::start(dir.path(), 0).await;
    let _agent = Agent::start(&s.endpoint(), "apps", OnCopy::Hang).await;
    let client = s.client().await;
    create(&client, "apps", "db", restic("data")).await;

    let (q, u) = (Journal::default(), Journal::default());
    let limit = Duration::from_millis(300);
    let err = client
        .quiesced_copy(
            pvc("apps", "data"),
            move |request| async move {
                q.push(request.run_id);
                // Quiescing takes longer than the whole hold: it never ends.
                std::future::pending::<()>().await;
                Ok::<_, Error>(())
            },
            {
                let u = u.clone();
                move || async move {
                    u.push("unquiesce");
                    Ok::<_, Error>(())
                }
            },
            GuardOptions::default().hold_limit(limit),
        )
        .await
        .unwrap_err();
    let Error::HoldLimitExceeded {
        limit: l,
        run_id,
        triggered,
    } = &err
    else {
        panic!("expected HoldLimitExceeded, got {err:?}")
    };
    assert_eq!((*l, run_id.as_str(), *triggered), (limit, "run-1", false));
    assert_eq!(u.entries(), ["unquiesce"]);
    let status = client.copy_status(&pvc("apps", "data")).await.unwrap();
    assert_eq!(
        status.state(),
        CopyState::WaitingForTrigger,
        "nothing released"
    );
    s.stop().await;
}

/// The scheduler goes away after it accepted the guard's Trigger: the guard gives up after its
/// disconnect grace, but cannot end its hold (EndHold cannot reach the scheduler), so a lease
/// of its hold may still be running and a copy cut under it would count. It stays quiesced
/// until its hold limit, where every lease it asked for has ended, then unquiesces.
#[tokio::test]
async fn the_guard_holds_to_its_limit_when_the_scheduler_goes_away_after_its_trigger() {
    let dir = tempfile::tempdir().unwrap();
    let s = Scheduler::start(dir.path(), 0).await;
    let mut agent = Agent::start(&s.endpoint(), "apps", OnCopy::Hang).await;
    let client = s.client().await;
    create(&client, "apps", "db", restic("data")).await;

    let journal = Journal::default();
    let limit = Duration::from_secs(6);
    let started = Instant::now();
    let guard = tokio::spawn({
        let (client, journal) = (client.clone(), journal.clone());
        async move {
            guarded(
                &client,
                &journal,
                GuardOptions::default()
                    .hold_limit(limit)
                    .disconnect_grace(Duration::from_secs(1)),
            )
            .await
        }
    });
    agent.wait_for(DirectivePhase::Copy).await;
    drop(agent);
    s.stop().await;

    let err = tokio::time::timeout(Duration::from_secs(30), guard)
        .await
        .unwrap()
        .unwrap()
        .unwrap_err();
    assert!(matches!(err, Error::Unavailable { .. }), "{err:?}");
    assert!(err.is_transient());
    let held = started.elapsed();
    assert!(
        held >= limit,
        "unquiesced after {held:?}, before the {limit:?} hold limit, with a lease possibly running"
    );
    assert_eq!(
        journal.entries(),
        ["quiesce run-1 WaitingForTrigger", "unquiesce unreachable"]
    );
}

#[tokio::test]
async fn a_failed_quiesce_is_unquiesced_and_leaves_the_run_waiting() {
    let dir = tempfile::tempdir().unwrap();
    let s = Scheduler::start(dir.path(), 0).await;
    let _agent = Agent::start(&s.endpoint(), "apps", OnCopy::Complete).await;
    let client = s.client().await;
    create(&client, "apps", "db", restic("data")).await;

    let journal = Journal::default();
    let u = journal.clone();
    let err = client
        .quiesced_copy(
            pvc("apps", "data"),
            |_| async { Err::<(), _>("fsfreeze: device busy") },
            move || async move {
                u.push("unquiesce");
                Ok::<_, Error>(())
            },
            GuardOptions::default(),
        )
        .await
        .unwrap_err();

    assert!(
        matches!(&err, Error::QuiesceFailed { run_id, .. } if run_id == "run-1"),
        "{err:?}"
    );
    assert!(err.to_string().contains("device busy"), "{err}");
    assert_eq!(journal.entries(), ["unquiesce"]);
    let status = client.copy_status(&pvc("apps", "data")).await.unwrap();
    assert_eq!(status.state, CopyState::WaitingForTrigger as i32);
    assert_eq!(status.run_id, "run-1");
    s.stop().await;
}

#[tokio::test]
async fn a_guard_dropped_while_quiesced_still_unquiesces() {
    let dir = tempfile::tempdir().unwrap();
    let s = Scheduler::start(dir.path(), 0).await;
    let _agent = Agent::start(&s.endpoint(), "apps", OnCopy::Hang).await;
    let client = s.client().await;
    create(&client, "apps", "db", restic("data")).await;

    let (quiesced_tx, quiesced) = tokio::sync::oneshot::channel();
    let (unquiesced_tx, unquiesced) = tokio::sync::oneshot::channel();
    let guard = client.quiesced_copy(
        pvc("apps", "data"),
        move |_| async move {
            let _ = quiesced_tx.send(());
            Ok::<_, Error>(())
        },
        move || async move {
            let _ = unquiesced_tx.send(());
            Ok::<_, Error>(())
        },
        GuardOptions::default(),
    );
    // The application gives up on the copy (say it is shutting down) once quiesced.
    tokio::select! {
        _ = guard => panic!("the copy cannot complete: the agent never makes it"),
        _ = quiesced => {}
    }
    tokio::time::timeout(Duration::from_secs(5), unquiesced)
        .await
        .expect("unquiesce ran after the guard was dropped")
        .unwrap();
    s.stop().await;
}

/// A guard dropped once its Trigger released the run (the copy not cut yet) ends its hold
/// before the application unquiesces: the run goes back to waiting, its value spent, so no copy
/// cut after the unquiesce is counted.
#[tokio::test]
async fn a_guard_dropped_after_its_trigger_ends_its_hold_before_it_unquiesces() {
    let dir = tempfile::tempdir().unwrap();
    let s = Scheduler::start(dir.path(), 0).await;
    let mut agent = Agent::start(&s.endpoint(), "apps", OnCopy::Hang).await;
    let client = s.client().await;
    create(&client, "apps", "db", restic("data")).await;

    let (unquiesced_tx, unquiesced) = tokio::sync::oneshot::channel();
    let guard = client.quiesced_copy(
        pvc("apps", "data"),
        |_| async { Ok::<_, Error>(()) },
        move || async move {
            let _ = unquiesced_tx.send(());
            Ok::<_, Error>(())
        },
        GuardOptions::default(),
    );
    // The application gives up on the copy (say it is shutting down) once its Trigger
    // released the run: the agent is told to copy (and never does).
    tokio::select! {
        _ = guard => panic!("the copy cannot complete: the agent never makes it"),
        _ = agent.wait_for(DirectivePhase::Copy) => {}
    }
    tokio::time::timeout(Duration::from_secs(5), unquiesced)
        .await
        .expect("unquiesce ran after the guard was dropped")
        .unwrap();
    let run = runs_of_db(&client).await.remove(0);
    assert_eq!(
        run.spent_triggers.len(),
        1,
        "the released value is spent when the hold ended: {run:?}"
    );
    assert!(run.copy_time.is_none(), "no copy point counted: {run:?}");
    assert!(
        run.timeline.iter().any(|e| e.event == "HoldEnded"),
        "the hold ended before the unquiesce: {run:?}"
    );
    s.stop().await;
}

/// The runs of source `apps/db`, newest first.
async fn runs_of_db(client: &Client) -> Vec<v1::Run> {
    client
        .sources()
        .list_runs(v1::ListRunsRequest {
            namespace: "apps".into(),
            name: "db".into(),
            limit: 5,
        })
        .await
        .unwrap()
        .into_inner()
        .runs
}

#[tokio::test]
async fn a_run_released_by_the_annotation_while_the_application_quiesces_is_not_reported_as_its_copy()
 {
    let dir = tempfile::tempdir().unwrap();
    let s = Scheduler::start(dir.path(), 0).await;
    let agent = Agent::start(&s.endpoint(), "apps", OnCopy::Complete).await;
    let client = s.client().await;
    create(&client, "apps", "db", restic("data")).await;

    let journal = Journal::default();
    let (q, u) = (journal.clone(), journal.clone());
    let (agent, watcher) = (&agent, client.clone());
    let err = client
        .quiesced_copy(
            pvc("apps", "data"),
            move |request| async move {
                q.push(format!("quiesce {}", request.run_id));
                // While the application quiesces, an operator writes copy-trigger on the PVC.
                agent.write_copy_trigger("ops-1");
                let mut watch = watcher.watch_copy(pvc("apps", "data"));
                tokio::time::timeout(Duration::from_secs(20), async {
                    while watch.next().await.unwrap()?.trigger != "ops-1" {}
                    Ok::<_, Error>(())
                })
                .await
                .expect("the annotation releases the run")
            },
            move || async move {
                u.push("unquiesce");
                Ok::<_, Error>(())
            },
            GuardOptions::default(),
        )
        .await
        .unwrap_err();

    let Error::ReleasedByAnother {
        run_id,
        value,
        released_by,
    } = &err
    else {
        panic!("expected ReleasedByAnother, got {err:?}")
    };
    assert_eq!(
        (run_id.as_str(), value.as_str(), released_by.as_str()),
        ("run-1", "ops-1", "annotation")
    );
    assert!(
        err.to_string()
            .contains("not made inside this application's hold"),
        "{err}"
    );
    assert_eq!(journal.entries(), ["quiesce run-1", "unquiesce"]);
    let runs = runs_of_db(&client).await;
    assert_eq!(
        (runs[0].trigger.as_str(), runs[0].released_by.as_str()),
        ("ops-1", "annotation")
    );
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn of_two_guards_on_one_pvc_both_unquiesce_and_only_the_one_whose_trigger_released_the_run_reports_a_copy()
 {
    let dir = tempfile::tempdir().unwrap();
    let s = Scheduler::start(dir.path(), 0).await;
    let _agent = Agent::start(&s.endpoint(), "apps", OnCopy::Complete).await;
    let client = s.client().await;
    create(&client, "apps", "db", restic("data")).await;

    // Both applications are quiesced before either triggers.
    let both_quiesced = Arc::new(tokio::sync::Barrier::new(2));
    let journal = Journal::default();
    let app = |name: &'static str, client: Client| {
        let (q, u, barrier) = (journal.clone(), journal.clone(), both_quiesced.clone());
        async move {
            client
                .quiesced_copy(
                    pvc("apps", "data"),
                    move |request| async move {
                        q.push(format!("{name} quiesce {}", request.run_id));
                        barrier.wait().await;
                        Ok::<_, Error>(())
                    },
                    move || async move {
                        u.push(format!("{name} unquiesce"));
                        Ok::<_, Error>(())
                    },
                    GuardOptions::default(),
                )
                .await
        }
    };
    let (a, b) = tokio::time::timeout(
        Duration::from_secs(30),
        futures::future::join(app("a", s.client().await), app("b", s.client().await)),
    )
    .await
    .expect("both guards return");

    let (copy, err) = match (a, b) {
        (Ok(copy), Err(err)) | (Err(err), Ok(copy)) => (copy, err),
        other => panic!("expected exactly one copy, got {other:?}"),
    };
    let Error::ReleasedByAnother {
        run_id,
        value,
        released_by,
    } = &err
    else {
        panic!("expected ReleasedByAnother, got {err:?}")
    };
    assert_eq!(run_id, "run-1");
    assert_eq!(value, &copy.trigger, "released by the winner's value");
    assert_eq!(released_by, "rpc");
    let mut entries = journal.entries();
    entries.sort();
    assert_eq!(
        entries,
        [
            "a quiesce run-1",
            "a unquiesce",
            "b quiesce run-1",
            "b unquiesce"
        ]
    );
    assert_eq!(runs_of_db(&client).await[0].trigger, copy.trigger);
    s.stop().await;
}

#[tokio::test]
async fn a_trigger_whose_answer_was_lost_still_counts_as_the_applications_own_copy() {
    let dir = tempfile::tempdir().unwrap();
    let s = Scheduler::start(dir.path(), 0).await;
    let _agent = Agent::start(&s.endpoint(), "apps", OnCopy::Complete).await;
    let client = s.client().await;
    create(&client, "apps", "db", restic("data")).await;
    // The application reaches the scheduler through a connection that drops the answer to its
    // first Trigger after the scheduler accepted it.
    let proxy = LossyProxy::start(&s.endpoint()).await;
    proxy.lose_trigger_answers(1);
    let app = Client::connect(proxy.endpoint()).await.unwrap();

    let journal = Journal::default();
    let copy = guarded(&app, &journal, GuardOptions::default())
        .await
        .unwrap();

    assert_eq!(
        proxy.triggers(),
        2,
        "the lost trigger was sent again and answered as a repeat"
    );
    assert_eq!(copy.run_id, "run-1");
    assert_eq!(
        journal.entries(),
        ["quiesce run-1 WaitingForTrigger", "unquiesce Completed"]
    );
    let runs = runs_of_db(&client).await;
    assert_eq!(
        (runs[0].trigger.as_str(), runs[0].released_by.as_str()),
        (copy.trigger.as_str(), "rpc")
    );
    s.stop().await;
}

#[test]
fn default_trigger_values_for_one_run_all_differ_even_within_one_millisecond() {
    // Two applications guarding one PVC must never send the same value: the scheduler takes a
    // value already bound to the run for a repeat of the caller's own trigger.
    let request = CopyRequest {
        run_id: "run-1".into(),
        source: "db".into(),
        status: Default::default(),
    };
    let values: HashSet<String> = (0..1000).map(|_| default_trigger_value(&request)).collect();
    assert_eq!(values.len(), 1000);
    assert!(
        values
            .iter()
            .all(|v| v.starts_with("sdk-run-1-") && v.len() <= 253)
    );
}
