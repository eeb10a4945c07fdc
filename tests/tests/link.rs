//! The agent's executor on its link, driven message by message as the scheduler would send
//! them, against the simulated API server: a resent directive is answered, not redone; a run
//! the scheduler does not resend after a reconnect (its Forget was lost) is dropped, never
//! acted on again.
//!
//! On paused tokio time: the executor, the simulated API server and its controllers run in
//! this test's runtime, so time moves only when all of them are idle.

use std::{sync::Arc, time::Duration};

use snapgate_agent::{
    cluster::Cluster,
    executor::{Change, Executor},
    link::LinkEvent,
    metrics::Metrics,
    spawn_watches,
};
use snapgate_e2e::*;
use snapgate_kube_sim::{KubeSim, Verb};
use snapgate_proto::{
    clock::TokioClock,
    v1::{self, DirectivePhase, agent_message::Message, report::Observation},
};
use tokio::sync::mpsc;

fn directive(run_id: &str, source: &str, phase: DirectivePhase) -> Box<v1::Directive> {
    Box::new(v1::Directive {
        run_id: run_id.into(),
        source: Some(v1::SourceRef {
            namespace: NS.into(),
            name: source.into(),
        }),
        spec: Some(restic_spec(
            v1::CopyMethod::Snapshot,
            Duration::from_secs(600),
        )),
        phase: phase as i32,
        generation: 1,
        waiting_since: Some(prost_types::Timestamp {
            seconds: 1_790_000_000,
            nanos: 0,
        }),
        ..Default::default()
    })
}

/// A (re)connection on which the scheduler resends one directive.
async fn connect(
    link: &mpsc::Sender<LinkEvent>,
    directive: Box<v1::Directive>,
) -> mpsc::Receiver<Message> {
    let (outbox, rx) = mpsc::channel(64);
    link.send(LinkEvent::Connected {
        active_runs: 1,
        outbox,
    })
    .await
    .unwrap();
    link.send(LinkEvent::Directive(directive)).await.unwrap();
    rx
}

async fn next_message(rx: &mut mpsc::Receiver<Message>) -> Message {
    tokio::time::timeout(Duration::from_secs(10), rx.recv())
        .await
        .expect("a message in time")
        .expect("the link's outbox is open")
}

async fn next_report(rx: &mut mpsc::Receiver<Message>) -> v1::Report {
    match next_message(rx).await {
        Message::Report(r) => r,
        other => panic!("expected a report, got {other:?}"),
    }
}

fn pvc_patches(sim: &KubeSim) -> usize {
    sim.requests().count(|r| {
        r.verb == Some(Verb::Patch)
            && r.resource == "persistentvolumeclaims"
            && r.user != snapgate_kube_sim::ADMIN_USER
    })
}

#[tokio::test(start_paused = true)]
async fn a_resent_directive_is_answered_not_redone_and_a_run_not_resent_is_dropped() {
    let sim = KubeSim::new();
    sim.add_token("agent", AGENT_USER);
    sim.ensure_namespace(NS);
    let (change_tx, change_rx) = mpsc::channel::<Change>(64);
    let client = sim.client_as("agent");
    let _watches = spawn_watches(&client, &[NS.to_owned()], &change_tx);
    let (link_tx, link_rx) = mpsc::channel::<LinkEvent>(64);
    let executor = Executor::new(
        Cluster::new(client),
        plan_config(),
        Metrics::new(),
        Duration::from_millis(200),
        Arc::new(TokioClock::starting_now()),
    );
    let _executor = tokio::spawn(executor.run(link_rx, change_rx));
    sim.create(&source_pvc(true)).unwrap();

    // First connection: run-1 waits.
    let mut rx = connect(&link_tx, directive("run-1", "db", DirectivePhase::Wait)).await;
    let r = next_report(&mut rx).await;
    assert_eq!(r.run_id, "run-1");
    let Some(Observation::Pvc(p)) = r.observation else {
        panic!("{r:?}")
    };
    assert_eq!(p.latest_copy_status, "WaitingForTrigger");
    assert_eq!(pvc_patches(&sim), 1);

    // Reconnect: the scheduler resends run-1 as it was. It is reported again, not re-marked.
    link_tx.send(LinkEvent::Disconnected).await.unwrap();
    let mut rx = connect(&link_tx, directive("run-1", "db", DirectivePhase::Wait)).await;
    let r = next_report(&mut rx).await;
    assert_eq!(r.run_id, "run-1", "re-reported after the reconnect");
    assert_eq!(pvc_patches(&sim), 1, "answered, not redone");

    // Reconnect again: run-1 ended meanwhile (its Forget was lost); only run-2 is resent.
    link_tx.send(LinkEvent::Disconnected).await.unwrap();
    let mut rx = connect(&link_tx, directive("run-2", "other", DirectivePhase::Gate)).await;
    let r = next_report(&mut rx).await;
    assert_eq!(r.run_id, "run-2");
    // A change of the PVC replans every held run: only run-2 answers.
    annotate_pvc(&sim, serde_json::json!({ TRIGGER: "x" })).await;
    let r = next_report(&mut rx).await;
    assert_eq!(r.run_id, "run-2", "run-1 was dropped: {r:?}");
    // A held run-1 would have been planned with run-2 (and before it); and every held run is
    // planned again on the executor's resync, once a minute. Two minutes of paused time pass
    // only once the executor has nothing left to do: all it would report, it has reported.
    let extra = tokio::time::timeout(Duration::from_secs(120), rx.recv()).await;
    assert!(
        extra.is_err(),
        "nothing reported for the dropped run: {extra:?}"
    );
}
