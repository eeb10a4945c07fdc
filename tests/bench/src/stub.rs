//! Stub agents: `AgentService.Connect` streams that note every directive they receive and,
//! when asked to, answer a GATE directive as an agent that found the PVC gated would, or carry
//! every run to its end as an agent whose cluster does each step at once would.

use std::{
    sync::{Arc, Mutex, PoisonError},
    time::SystemTime,
};

use snapgate_proto::v1::{
    self, agent_message, agent_service_client::AgentServiceClient, scheduler_message,
};
use tokio::sync::mpsc;
use tokio_stream::{StreamExt as _, wrappers::ReceiverStream};

/// A directive as a stub received it.
#[derive(Debug, Clone)]
pub(crate) struct Received {
    /// When it arrived (wall clock: compared with the scheduler's schedule times).
    pub(crate) at: SystemTime,
    /// The run.
    pub(crate) run_id: String,
    /// Its source.
    pub(crate) source: String,
    /// Its phase.
    pub(crate) phase: i32,
}

/// What the stubs of one test share.
#[derive(Debug, Default)]
pub(crate) struct Inbox {
    received: Mutex<Vec<Received>>,
    /// Links the scheduler dropped (each stub reconnects).
    pub(crate) dropped: std::sync::atomic::AtomicUsize,
    /// Why the last link ended.
    pub(crate) last_error: Mutex<Option<String>>,
}

impl Inbox {
    /// Everything received so far.
    pub(crate) fn received(&self) -> Vec<Received> {
        self.received
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// How many directives arrived.
    pub(crate) fn count(&self) -> usize {
        self.received
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }
}

/// How a stub answers the directives it receives.
#[derive(Debug, Clone)]
pub(crate) enum Answer {
    /// Not at all: it only notes them.
    Nothing,
    /// GATE with the PVC seen gated (`use-copy-trigger`), which makes the run wait for a
    /// trigger; nothing else.
    Gate,
    /// Every phase as an agent would once its step is done, the PVC not gated: GATE with the
    /// PVC seen, COPY with the copy made (at the wall time), TRANSFER with the mover
    /// succeeded, CLEANUP cleaned up. Each answer goes out this many milliseconds after its
    /// directive arrived (read when it arrives; 0: at once).
    Complete(Arc<std::sync::atomic::AtomicU64>),
}

/// The report that carries directive `d` on, under [`Answer::Complete`].
fn completion(d: &v1::Directive) -> Option<v1::report::Observation> {
    use v1::report::Observation;
    let phase = v1::DirectivePhase::try_from(d.phase).ok()?;
    Some(match phase {
        v1::DirectivePhase::Gate | v1::DirectivePhase::Wait => Observation::Pvc(v1::PvcObserved {
            exists: true,
            use_copy_trigger: false,
            ..Default::default()
        }),
        v1::DirectivePhase::Copy => Observation::CopyCompleted(v1::CopyCompleted {
            copy_name: format!("copy-{}", d.run_id),
            time: Some(prost_types::Timestamp::from(SystemTime::now())),
        }),
        v1::DirectivePhase::Transfer => Observation::MoverFinished(v1::MoverFinished {
            succeeded: true,
            logs: String::new(),
        }),
        v1::DirectivePhase::Cleanup => Observation::CleanedUp(v1::CleanedUp {}),
        v1::DirectivePhase::Unspecified => return None,
    })
}

/// Runs one stub agent for `namespaces` on `client` until the task is aborted, reconnecting
/// whenever the link ends, answering directives as `answer` says.
pub(crate) async fn run(
    client: snapgate_sdk::Client,
    agent_id: String,
    namespaces: Vec<String>,
    answer: Answer,
    inbox: Arc<Inbox>,
    connected: mpsc::Sender<()>,
) {
    run_failover(vec![client], agent_id, namespaces, answer, inbox, connected).await;
}

/// [`run`] over several schedulers (replicas), as a client that fails over itself: each
/// (re)connect tries the next of `clients` in turn (a follower refuses `Connect` with
/// `UNAVAILABLE`, a dead one does not answer), after a short back-off.
pub(crate) async fn run_failover(
    clients: Vec<snapgate_sdk::Client>,
    agent_id: String,
    namespaces: Vec<String>,
    answer: Answer,
    inbox: Arc<Inbox>,
    connected: mpsc::Sender<()>,
) {
    if clients.is_empty() {
        return;
    }
    let mut first = true;
    let mut attempt = 0usize;
    loop {
        let client = &clients[attempt % clients.len()];
        attempt = attempt.wrapping_add(1);
        let (tx, rx) = mpsc::channel(1024);
        let hello = v1::AgentMessage {
            message: Some(agent_message::Message::Hello(v1::AgentHello {
                agent_id: agent_id.clone(),
                namespaces: namespaces.clone(),
                version: "bench".into(),
                leases: true,
            })),
        };
        if tx.send(hello).await.is_err() {
            return;
        }
        let mut agents =
            AgentServiceClient::new(client.channel()).max_decoding_message_size(64 * 1024 * 1024);
        let mut inbound = match agents.connect(ReceiverStream::new(rx)).await {
            Ok(r) => r.into_inner(),
            Err(_) => {
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        if first {
            first = false;
            let _ = connected.send(()).await;
        }
        let ended = loop {
            let msg = match inbound.next().await {
                Some(Ok(msg)) => msg,
                Some(Err(status)) => break format!("{}: {}", status.code(), status.message()),
                None => break "the scheduler ended the stream".to_owned(),
            };
            let Some(scheduler_message::Message::Directive(d)) = msg.message else {
                continue;
            };
            inbox
                .received
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .push(Received {
                    at: SystemTime::now(),
                    run_id: d.run_id.clone(),
                    source: d
                        .source
                        .as_ref()
                        .map(|s| s.name.clone())
                        .unwrap_or_default(),
                    phase: d.phase,
                });
            let report = |observation| v1::AgentMessage {
                message: Some(agent_message::Message::Report(v1::Report {
                    run_id: d.run_id.clone(),
                    generation: d.generation,
                    observation: Some(observation),
                })),
            };
            match &answer {
                Answer::Nothing => {}
                Answer::Gate if d.phase == v1::DirectivePhase::Gate as i32 => {
                    let gated = report(v1::report::Observation::Pvc(v1::PvcObserved {
                        exists: true,
                        use_copy_trigger: true,
                        ..Default::default()
                    }));
                    if tx.send(gated).await.is_err() {
                        break "the stub stopped".to_owned();
                    }
                }
                Answer::Gate => {}
                Answer::Complete(delay) => {
                    let Some(observation) = completion(&d) else {
                        continue;
                    };
                    let message = report(observation);
                    let delay = delay.load(std::sync::atomic::Ordering::Relaxed);
                    if delay == 0 {
                        if tx.send(message).await.is_err() {
                            break "the stub stopped".to_owned();
                        }
                    } else {
                        // Later, without holding up the directives behind this one; lost
                        // with the link if it ends first (the scheduler resends on reconnect).
                        let tx = tx.clone();
                        tokio::spawn(async move {
                            tokio::time::sleep(std::time::Duration::from_millis(delay)).await;
                            let _ = tx.send(message).await;
                        });
                    }
                }
            }
        };
        *inbox
            .last_error
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some(ended);
        inbox
            .dropped
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}
