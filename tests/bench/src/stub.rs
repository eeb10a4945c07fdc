//! Stub agents: `AgentService.Connect` streams that note every directive they receive and,
//! when asked to, answer a GATE directive as an agent that found the PVC gated would.

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

/// Runs one stub agent for `namespaces` on `client` until the task is aborted, reconnecting
/// whenever the link ends. With `gate`, each GATE directive is answered with the PVC seen
/// gated (`use-copy-trigger`), which makes its run wait for a trigger.
pub(crate) async fn run(
    client: snapgate_sdk::Client,
    agent_id: String,
    namespaces: Vec<String>,
    gate: bool,
    inbox: Arc<Inbox>,
    connected: mpsc::Sender<()>,
) {
    let mut first = true;
    loop {
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
            if gate && d.phase == v1::DirectivePhase::Gate as i32 {
                let report = v1::AgentMessage {
                    message: Some(agent_message::Message::Report(v1::Report {
                        run_id: d.run_id,
                        generation: d.generation,
                        observation: Some(v1::report::Observation::Pvc(v1::PvcObserved {
                            exists: true,
                            use_copy_trigger: true,
                            ..Default::default()
                        })),
                    })),
                };
                if tx.send(report).await.is_err() {
                    break "the stub stopped".to_owned();
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
