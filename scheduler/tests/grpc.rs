//! The scheduler over real gRPC on loopback: every service, the agent link, the store's
//! durability and its faults.

mod support;

use std::{sync::atomic::Ordering, time::Duration};

use futures::StreamExt;
use snapgate_proto::v1::{
    self, CopyMethod, CopyState, DirectivePhase, agent_message,
    agent_service_client::AgentServiceClient, report::Observation,
    scheduler_message::Message as ToAgent,
};
use snapgate_scheduler::store::{FaultyStore, RedbStore};
use support::Running;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Code, transport::Channel};

fn restic(pvc: &str, schedule: &str) -> v1::SourceSpec {
    v1::SourceSpec {
        source_pvc: pvc.into(),
        trigger: Some(v1::ReplicationSourceTrigger {
            schedule: Some(schedule.into()),
            manual: None,
        }),
        restic: Some(v1::ReplicationSourceResticSpec {
            copy_method: CopyMethod::Snapshot as i32,
            repository: "restic-config".into(),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn apply(ns: &str, name: &str, spec: v1::SourceSpec, version: u64) -> v1::ApplySourceRequest {
    v1::ApplySourceRequest {
        namespace: ns.into(),
        name: name.into(),
        spec: Some(spec),
        expected_version: version,
    }
}

fn get(ns: &str, name: &str) -> v1::GetSourceRequest {
    v1::GetSourceRequest {
        namespace: ns.into(),
        name: name.into(),
    }
}

#[tokio::test]
async fn health_answers_serving_for_every_service() {
    let dir = tempfile::tempdir().unwrap();
    let s = Running::open(dir.path()).await;
    let mut health = tonic_health::pb::health_client::HealthClient::new(s.channel.clone());
    for service in [
        "",
        "snapgate.v1.SourceService",
        "snapgate.v1.TriggerService",
        "snapgate.v1.AgentService",
    ] {
        let r = health
            .check(tonic_health::pb::HealthCheckRequest {
                service: service.into(),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(
            r.status,
            tonic_health::pb::health_check_response::ServingStatus::Serving as i32,
            "{service:?}"
        );
    }
    s.stop().await;
}

#[tokio::test]
async fn reflection_v1_and_v1alpha_both_list_the_snapgate_services() {
    use tonic_reflection::pb::{v1 as r1, v1alpha as r1a};
    let dir = tempfile::tempdir().unwrap();
    let s = Running::open(dir.path()).await;
    let want = [
        "snapgate.v1.SourceService",
        "snapgate.v1.TriggerService",
        "snapgate.v1.AgentService",
        "grpc.health.v1.Health",
    ];

    let mut c1 = r1::server_reflection_client::ServerReflectionClient::new(s.channel.clone());
    let req = r1::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(r1::server_reflection_request::MessageRequest::ListServices(
            String::new(),
        )),
    };
    let mut out = c1
        .server_reflection_info(tokio_stream::iter([req]))
        .await
        .unwrap()
        .into_inner();
    let Some(r1::server_reflection_response::MessageResponse::ListServicesResponse(list)) =
        out.next().await.unwrap().unwrap().message_response
    else {
        panic!("v1: not a service list")
    };
    let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    for w in want {
        assert!(names.iter().any(|n| n == w), "v1 lacks {w}: {names:?}");
    }

    let mut c2 = r1a::server_reflection_client::ServerReflectionClient::new(s.channel.clone());
    let req = r1a::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(
            r1a::server_reflection_request::MessageRequest::ListServices(String::new()),
        ),
    };
    let mut out = c2
        .server_reflection_info(tokio_stream::iter([req]))
        .await
        .unwrap()
        .into_inner();
    let Some(r1a::server_reflection_response::MessageResponse::ListServicesResponse(list)) =
        out.next().await.unwrap().unwrap().message_response
    else {
        panic!("v1alpha: not a service list")
    };
    let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    for w in want {
        assert!(names.iter().any(|n| n == w), "v1alpha lacks {w}: {names:?}");
    }
    s.stop().await;
}

#[tokio::test]
async fn bad_input_is_refused_with_the_right_code_naming_the_field() {
    let dir = tempfile::tempdir().unwrap();
    let s = Running::open(dir.path()).await;
    let mut c = s.sources();
    let cases: Vec<(v1::ApplySourceRequest, Code, &str)> = vec![
        (
            apply("apps", "db", restic("data", "not a cron"), 0),
            Code::InvalidArgument,
            "schedule",
        ),
        (
            apply(
                "apps",
                "db",
                v1::SourceSpec {
                    time_zone: "Atlantis/Capital".into(),
                    ..restic("data", "@daily")
                },
                0,
            ),
            Code::InvalidArgument,
            "spec.timeZone",
        ),
        (
            apply("Apps", "db", restic("data", "@daily"), 0),
            Code::InvalidArgument,
            "namespace",
        ),
        (
            apply("apps", "db", restic("x".repeat(300).as_str(), "@daily"), 0),
            Code::InvalidArgument,
            "spec.sourcePVC",
        ),
        (
            v1::ApplySourceRequest {
                spec: None,
                ..apply("apps", "db", restic("d", "@daily"), 0)
            },
            Code::InvalidArgument,
            "spec",
        ),
        (
            apply("apps", "ghost", restic("data", "@daily"), 4),
            Code::NotFound,
            "apps/ghost",
        ),
    ];
    for (req, code, field) in cases {
        let err = c.apply_source(req.clone()).await.unwrap_err();
        assert_eq!(err.code(), code, "{req:?}: {err:?}");
        assert!(
            err.message().contains(field),
            "{field} not named in {:?}",
            err.message()
        );
    }
    // Nothing of it was stored.
    let list = c
        .list_sources(v1::ListSourcesRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert!(list.sources.is_empty());

    c.apply_source(apply("apps", "db", restic("data", "@daily"), 0))
        .await
        .unwrap();
    let dup = c
        .apply_source(apply("apps", "db", restic("data", "@daily"), 0))
        .await
        .unwrap_err();
    assert_eq!(dup.code(), Code::AlreadyExists);
    let stale = c
        .apply_source(apply("apps", "db", restic("data", "@hourly"), 9))
        .await
        .unwrap_err();
    assert_eq!(stale.code(), Code::Aborted, "{stale:?}");
    let v2 = c
        .apply_source(apply("apps", "db", restic("data", "@hourly"), 1))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(v2.version, 2);
    let missing = c.get_source(get("apps", "nope")).await.unwrap_err();
    assert_eq!(missing.code(), Code::NotFound);
    let bad_page = c
        .list_sources(v1::ListSourcesRequest {
            page_token: "garbage".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(bad_page.code(), Code::InvalidArgument);
    let too_many = c
        .list_runs(v1::ListRunsRequest {
            namespace: "apps".into(),
            name: "db".into(),
            limit: 1000,
        })
        .await
        .unwrap_err();
    assert!(too_many.message().contains("limit"), "{too_many:?}");
    s.stop().await;
}

#[tokio::test]
async fn list_sources_pages_through_every_source_once() {
    let dir = tempfile::tempdir().unwrap();
    let s = Running::open(dir.path()).await;
    let mut c = s.sources();
    for i in 0..7 {
        let mut spec = restic("data", "@daily");
        spec.skip_initial_run = true;
        c.apply_source(apply("apps", &format!("s{i}"), spec, 0))
            .await
            .unwrap();
    }
    let mut seen = Vec::new();
    let mut token = String::new();
    loop {
        let page = c
            .list_sources(v1::ListSourcesRequest {
                namespace: "apps".into(),
                page_size: 3,
                page_token: token,
            })
            .await
            .unwrap()
            .into_inner();
        seen.extend(page.sources.into_iter().map(|s| s.name));
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    assert_eq!(seen, (0..7).map(|i| format!("s{i}")).collect::<Vec<_>>());
    s.stop().await;
}

/// A stand-in agent on the real link: the PVC is gated and the copy is ready at once.
async fn gated_agent(
    channel: Channel,
    namespace: &str,
) -> (
    mpsc::Sender<v1::AgentMessage>,
    tonic::Streaming<v1::SchedulerMessage>,
) {
    agent_link(channel, namespace, true).await
}

/// An agent link; `leases`: whether it says it honours hold leases.
async fn agent_link(
    channel: Channel,
    namespace: &str,
    leases: bool,
) -> (
    mpsc::Sender<v1::AgentMessage>,
    tonic::Streaming<v1::SchedulerMessage>,
) {
    let (tx, rx) = mpsc::channel(64);
    tx.send(v1::AgentMessage {
        message: Some(agent_message::Message::Hello(v1::AgentHello {
            agent_id: "test-agent".into(),
            namespaces: vec![namespace.into()],
            version: "test".into(),
            leases,
        })),
    })
    .await
    .unwrap();
    let inbound = AgentServiceClient::new(channel)
        .connect(ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    (tx, inbound)
}

fn answer(d: &v1::Directive, latest: &str) -> Option<v1::AgentMessage> {
    let observation = match DirectivePhase::try_from(d.phase).unwrap() {
        DirectivePhase::Gate | DirectivePhase::Wait => Observation::Pvc(v1::PvcObserved {
            exists: true,
            use_copy_trigger: true,
            latest_copy_trigger: latest.into(),
            copy_trigger: latest.into(),
            ..Default::default()
        }),
        DirectivePhase::Copy => Observation::CopyCompleted(v1::CopyCompleted {
            copy_name: "snap".into(),
            time: None,
        }),
        DirectivePhase::Transfer => Observation::MoverFinished(v1::MoverFinished {
            succeeded: true,
            logs: "ok".into(),
        }),
        DirectivePhase::Cleanup => Observation::CleanedUp(v1::CleanedUp {}),
        DirectivePhase::Unspecified => return None,
    };
    Some(v1::AgentMessage {
        message: Some(agent_message::Message::Report(v1::Report {
            run_id: d.run_id.clone(),
            generation: d.generation,
            observation: Some(observation),
        })),
    })
}

#[tokio::test]
async fn a_run_goes_from_waiting_to_completed_over_the_agent_link_and_the_trigger_rpc() {
    let dir = tempfile::tempdir().unwrap();
    let s = Running::open(dir.path()).await;
    let (agent_tx, mut inbound) = gated_agent(s.channel.clone(), "apps").await;
    let first = inbound.next().await.unwrap().unwrap();
    assert!(matches!(
        first.message,
        Some(ToAgent::Welcome(v1::Welcome { active_runs: 0 }))
    ));

    let target = v1::CopyTarget {
        namespace: "apps".into(),
        pvc: "data".into(),
        source: String::new(),
    };
    let mut watch = s
        .triggers()
        .watch_copy(v1::WatchCopyRequest {
            target: Some(target.clone()),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        watch.next().await.unwrap().unwrap().state,
        CopyState::Idle as i32
    );

    s.sources()
        .apply_source(apply("apps", "db", restic("data", "@daily"), 0))
        .await
        .unwrap();

    // The agent answers every directive (a lease-gated copy once it holds the lease); the
    // test plays the application through the SDK path.
    let agent = tokio::spawn(async move {
        let mut phases = Vec::new();
        let mut leased = None;
        while let Some(Ok(msg)) = inbound.next().await {
            match msg.message {
                Some(ToAgent::Directive(d)) => {
                    phases.push(DirectivePhase::try_from(d.phase).unwrap());
                    if d.lease {
                        let ask = v1::LeaseRequest {
                            run_id: d.run_id.clone(),
                            generation: d.generation,
                            request_id: 1,
                        };
                        agent_tx
                            .send(v1::AgentMessage {
                                message: Some(agent_message::Message::LeaseRequest(ask)),
                            })
                            .await
                            .unwrap();
                        leased = Some(d);
                        continue;
                    }
                    if let Some(reply) = answer(&d, "") {
                        agent_tx.send(reply).await.unwrap();
                    }
                }
                Some(ToAgent::Lease(grant)) => {
                    assert_eq!(grant.refused, "", "{grant:?}");
                    assert_eq!(grant.request_id, 1);
                    let left = grant.remaining.unwrap();
                    assert!(left.seconds > 0 && left.seconds <= 60, "{left:?}");
                    let d = leased.take().expect("a lease answers a request");
                    agent_tx.send(answer(&d, "").unwrap()).await.unwrap();
                }
                Some(ToAgent::Forget(_)) => return phases,
                _ => {}
            }
        }
        phases
    });

    let mut states = Vec::new();
    let mut run_id = String::new();
    while let Some(Ok(status)) = watch.next().await {
        let state = CopyState::try_from(status.state).unwrap();
        states.push(state);
        if state == CopyState::WaitingForTrigger {
            run_id = status.run_id.clone();
            let resp = s
                .triggers()
                .trigger(v1::TriggerRequest {
                    target: Some(target.clone()),
                    value: "quiesced-1".into(),
                    run_id: run_id.clone(),
                    hold: Some(prost_types::Duration {
                        seconds: 60,
                        nanos: 0,
                    }),
                    holder: String::new(),
                })
                .await
                .unwrap()
                .into_inner();
            assert_eq!(resp.run_id, run_id);
            // Again: idempotent.
            let again = s
                .triggers()
                .trigger(v1::TriggerRequest {
                    target: Some(target.clone()),
                    value: "quiesced-1".into(),
                    run_id: run_id.clone(),
                    hold: Some(prost_types::Duration {
                        seconds: 60,
                        nanos: 0,
                    }),
                    holder: String::new(),
                })
                .await
                .unwrap()
                .into_inner();
            assert_eq!(again.run_id, run_id);
        }
        if state == CopyState::Completed {
            assert_eq!(status.trigger, "quiesced-1");
            assert_eq!(status.latest_trigger, "quiesced-1");
            break;
        }
    }
    assert_eq!(
        states,
        [
            CopyState::Pending,
            CopyState::WaitingForTrigger,
            CopyState::InProgress,
            CopyState::Completed
        ]
    );
    let phases = tokio::time::timeout(Duration::from_secs(10), agent)
        .await
        .unwrap()
        .unwrap();
    use DirectivePhase::*;
    assert_eq!(phases, [Gate, Wait, Copy, Transfer, Cleanup]);

    let runs = s
        .sources()
        .list_runs(v1::ListRunsRequest {
            namespace: "apps".into(),
            name: "db".into(),
            limit: 0,
        })
        .await
        .unwrap()
        .into_inner()
        .runs;
    assert_eq!(runs.len(), 1);
    assert_eq!(runs[0].id, run_id);
    assert_eq!(runs[0].result, v1::RunResult::Successful as i32);
    assert_eq!(runs[0].released_by, "rpc");
    let status = s
        .sources()
        .get_source(get("apps", "db"))
        .await
        .unwrap()
        .into_inner()
        .status
        .unwrap();
    assert_eq!(status.latest_mover_status.unwrap().result, "Successful");
    assert!(status.last_sync_time.is_some());
    s.stop().await;
}

#[tokio::test]
async fn a_reconnecting_agent_is_handed_every_run_in_flight_again() {
    let dir = tempfile::tempdir().unwrap();
    let s = Running::open(dir.path()).await;
    s.sources()
        .apply_source(apply("apps", "db", restic("data", "@daily"), 0))
        .await
        .unwrap();
    for attempt in 0..2 {
        let (_tx, mut inbound) = gated_agent(s.channel.clone(), "apps").await;
        let welcome = inbound.next().await.unwrap().unwrap();
        assert!(
            matches!(
                welcome.message,
                Some(ToAgent::Welcome(v1::Welcome { active_runs: 1 }))
            ),
            "attempt {attempt}"
        );
        let Some(ToAgent::Directive(d)) = inbound.next().await.unwrap().unwrap().message else {
            panic!("a directive follows the welcome")
        };
        assert_eq!(d.run_id, "run-1");
        assert_eq!(d.phase, DirectivePhase::Gate as i32);
        assert_eq!(d.spec.unwrap().source_pvc, "data");
    }
    s.stop().await;
}

#[tokio::test]
async fn an_agent_must_say_hello_with_valid_namespaces() {
    let dir = tempfile::tempdir().unwrap();
    let s = Running::open(dir.path()).await;
    let (tx, rx) = mpsc::channel(4);
    tx.send(v1::AgentMessage {
        message: Some(agent_message::Message::Hello(v1::AgentHello {
            agent_id: "a".into(),
            namespaces: vec!["Not_A_Namespace".into()],
            version: String::new(),
            leases: true,
        })),
    })
    .await
    .unwrap();
    let err = AgentServiceClient::new(s.channel.clone())
        .connect(ReceiverStream::new(rx))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("hello.namespaces"), "{err:?}");
    s.stop().await;
}

#[tokio::test]
async fn a_failed_store_commit_refuses_the_request_and_leaves_nothing_behind() {
    let dir = tempfile::tempdir().unwrap();
    let (store, fail) = FaultyStore::new(RedbStore::open(dir.path()).unwrap());
    let s = Running::start(Box::new(store)).await;
    let mut c = s.sources();
    fail.store(1, Ordering::SeqCst);
    let err = c
        .apply_source(apply("apps", "db", restic("data", "@daily"), 0))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");
    assert!(err.message().contains("nothing was applied"));
    assert_eq!(
        c.get_source(get("apps", "db")).await.unwrap_err().code(),
        Code::NotFound
    );
    // The same request succeeds once the store does.
    let ok = c
        .apply_source(apply("apps", "db", restic("data", "@daily"), 0))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(ok.version, 1);
    s.stop().await;
}

#[tokio::test]
async fn sources_and_waiting_runs_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let s = Running::open(dir.path()).await;
    s.sources()
        .apply_source(apply("apps", "db", restic("data", "@daily"), 0))
        .await
        .unwrap();
    let (agent_tx, mut inbound) = gated_agent(s.channel.clone(), "apps").await;
    // Answer Gate only, so the run waits for a trigger.
    loop {
        if let Some(ToAgent::Directive(d)) = inbound.next().await.unwrap().unwrap().message {
            if d.phase == DirectivePhase::Gate as i32 {
                agent_tx.send(answer(&d, "").unwrap()).await.unwrap();
            }
            if d.phase == DirectivePhase::Wait as i32 {
                break;
            }
        }
    }
    let before = s
        .triggers()
        .get_copy_status(v1::GetCopyStatusRequest {
            target: Some(v1::CopyTarget {
                namespace: "apps".into(),
                pvc: String::new(),
                source: "db".into(),
            }),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(before.state, CopyState::WaitingForTrigger as i32);
    drop((agent_tx, inbound));
    s.stop().await;

    let s = Running::open(dir.path()).await;
    let after = s
        .triggers()
        .get_copy_status(v1::GetCopyStatusRequest {
            target: Some(v1::CopyTarget {
                namespace: "apps".into(),
                pvc: "data".into(),
                source: String::new(),
            }),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(after.state, CopyState::WaitingForTrigger as i32);
    assert_eq!(after.run_id, before.run_id);
    assert_eq!(after.waiting_since, before.waiting_since);
    let src = s
        .sources()
        .get_source(get("apps", "db"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(src.status.unwrap().current_run_id, before.run_id);
    s.stop().await;
}

#[tokio::test]
async fn sync_now_is_idempotent_per_request_id_and_preview_lists_times() {
    let dir = tempfile::tempdir().unwrap();
    let s = Running::open(dir.path()).await;
    let mut spec = restic("data", "0 6 * * *");
    spec.skip_initial_run = true;
    spec.time_zone = "Europe/Paris".into();
    s.sources()
        .apply_source(apply("apps", "db", spec, 0))
        .await
        .unwrap();
    let req = v1::SyncNowRequest {
        namespace: "apps".into(),
        name: "db".into(),
        request_id: "r-1".into(),
    };
    let a = s
        .sources()
        .sync_now(req.clone())
        .await
        .unwrap()
        .into_inner();
    let b = s.sources().sync_now(req).await.unwrap().into_inner();
    assert!(a.started);
    assert!(!b.started);
    assert_eq!(a.run_id, b.run_id);
    let p = s
        .sources()
        .preview_schedule(v1::PreviewScheduleRequest {
            namespace: "apps".into(),
            name: "db".into(),
            count: 3,
            after: None,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(p.times.len(), 3);
    assert!(
        p.local_times
            .iter()
            .all(|t| t.contains("T06:00:00+01:00") || t.contains("T06:00:00+02:00")),
        "{:?}",
        p.local_times
    );
    s.stop().await;
}

#[tokio::test]
async fn a_lease_gated_copy_is_never_sent_to_an_agent_that_does_not_honour_leases() {
    let dir = tempfile::tempdir().unwrap();
    let s = Running::open(dir.path()).await;
    s.sources()
        .apply_source(apply("apps", "db", restic("data", "@daily"), 0))
        .await
        .unwrap();
    let (agent_tx, mut inbound) = agent_link(s.channel.clone(), "apps", false).await;
    // Gate and wait are sent to it as to any agent.
    loop {
        if let Some(ToAgent::Directive(d)) = inbound.next().await.unwrap().unwrap().message {
            if d.phase == DirectivePhase::Gate as i32 {
                agent_tx.send(answer(&d, "").unwrap()).await.unwrap();
            }
            if d.phase == DirectivePhase::Wait as i32 {
                break;
            }
        }
    }
    let target = v1::CopyTarget {
        namespace: "apps".into(),
        pvc: "data".into(),
        source: String::new(),
    };
    s.triggers()
        .trigger(v1::TriggerRequest {
            target: Some(target),
            value: "v1".into(),
            run_id: "run-1".into(),
            hold: None,
            holder: String::new(),
        })
        .await
        .unwrap();
    // A fresh link of the same old agent is handed nothing: its only run copies under a lease.
    let (old_tx, mut old) = agent_link(s.channel.clone(), "apps", false).await;
    assert!(matches!(
        old.next().await.unwrap().unwrap().message,
        Some(ToAgent::Welcome(v1::Welcome { active_runs: 0 }))
    ));
    // An agent that honours leases is handed the copy, marked as lease-gated.
    let (new_tx, mut new) = agent_link(s.channel.clone(), "apps", true).await;
    assert!(matches!(
        new.next().await.unwrap().unwrap().message,
        Some(ToAgent::Welcome(v1::Welcome { active_runs: 1 }))
    ));
    let Some(ToAgent::Directive(d)) = new.next().await.unwrap().unwrap().message else {
        panic!("the copy directive follows the welcome")
    };
    assert_eq!(d.phase(), DirectivePhase::Copy);
    assert!(d.lease);
    drop((agent_tx, inbound, old_tx, old, new_tx, new));
    s.stop().await;
}

/// A clock the test sets: the driver reads it on every command.
#[derive(Debug)]
struct SetClock(std::sync::Mutex<chrono::DateTime<chrono::Utc>>);

impl snapgate_proto::clock::Clock for SetClock {
    fn now(&self) -> chrono::DateTime<chrono::Utc> {
        *self.0.lock().unwrap()
    }
}

impl SetClock {
    fn advance(&self, by: chrono::Duration) {
        let mut t = self.0.lock().unwrap();
        *t += by;
    }
}

fn no_agent(source: &v1::Source) -> Option<String> {
    source
        .status
        .as_ref()?
        .conditions
        .iter()
        .find(|c| c.r#type == "Synchronizing" && c.reason == "NoAgent")
        .map(|c| c.message.clone())
}

/// The value of `snapgate_sources_without_agent` for `namespace`.
fn without_agent(s: &Running, namespace: &str) -> Option<i64> {
    let line = format!("snapgate_sources_without_agent{{namespace=\"{namespace}\"}} ");
    s.metrics
        .encode()
        .lines()
        .find_map(|l| l.strip_prefix(&line)?.parse().ok())
}

#[tokio::test]
async fn a_source_whose_namespace_no_agent_serves_says_so_since_when_and_the_last_agent_seen() {
    let dir = tempfile::tempdir().unwrap();
    let start = chrono::DateTime::parse_from_rfc3339("2026-03-02T10:00:00Z")
        .unwrap()
        .with_timezone(&chrono::Utc);
    let clock = std::sync::Arc::new(SetClock(std::sync::Mutex::new(start)));
    let s = Running::start_clocked(
        Box::new(RedbStore::open(dir.path()).unwrap()),
        clock.clone(),
    )
    .await;
    let get = || async {
        s.sources()
            .get_source(v1::GetSourceRequest {
                namespace: "apps".into(),
                name: "db".into(),
            })
            .await
            .unwrap()
            .into_inner()
    };
    let run_message = || async {
        s.sources()
            .list_runs(v1::ListRunsRequest {
                namespace: "apps".into(),
                name: "db".into(),
                limit: 1,
            })
            .await
            .unwrap()
            .into_inner()
            .runs
            .remove(0)
            .message
    };

    // Applied with no agent anywhere: the answer says so at once (the CLI warns with it).
    let applied = s
        .sources()
        .apply_source(v1::ApplySourceRequest {
            namespace: "apps".into(),
            name: "db".into(),
            spec: Some(restic("data", "@daily")),
            expected_version: 0,
        })
        .await
        .unwrap()
        .into_inner();
    let said = no_agent(&applied).expect("the apply answer names the missing agent");
    assert!(
        said.starts_with("no agent serves namespace apps since 2026-03-02T10:00:00Z (none has connected since the scheduler started)"),
        "{said}"
    );
    assert_eq!(without_agent(&s, "apps"), Some(1));
    // Reads wait out the grace (an agent reconnecting after a restart is not reported)...
    assert_eq!(no_agent(&get().await), None);
    assert!(run_message().await.is_empty());
    // ...and then say it, on the source and on the run in flight.
    clock.advance(chrono::Duration::seconds(30));
    assert!(no_agent(&get().await).is_some());
    assert!(
        run_message()
            .await
            .starts_with("no agent serves namespace apps")
    );

    // An agent connects: nothing is said any more, the count is 0.
    let (tx, inbound) = agent_link(s.channel.clone(), "apps", true).await;
    assert_eq!(no_agent(&get().await), None);
    assert!(!run_message().await.contains("no agent"));
    assert_eq!(without_agent(&s, "apps"), Some(0));

    // It goes away: after the grace the source names it and when it left.
    drop((tx, inbound));
    s.until_gauge("snapgate_agents_connected", 0).await;
    assert_eq!(without_agent(&s, "apps"), Some(1));
    clock.advance(chrono::Duration::seconds(29));
    assert_eq!(no_agent(&get().await), None, "within the grace");
    clock.advance(chrono::Duration::seconds(1));
    let said = no_agent(&get().await).unwrap();
    assert!(
        said.contains("since 2026-03-02T10:00:30Z (the last one, \"test-agent\", left at 2026-03-02T10:00:30Z)"),
        "{said}"
    );
    let listed = s
        .sources()
        .list_sources(v1::ListSourcesRequest {
            namespace: "apps".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(no_agent(&listed.sources[0]).is_some());
    s.stop().await;
}
