//! What the SDK's tests run against: the real scheduler on loopback (redb in a temp dir) and a
//! stand-in agent on the real agent link that plays the cluster.

#![allow(dead_code, unreachable_pub)]

use std::{sync::Arc, time::Duration};

use futures::StreamExt;
use snapgate_proto::v1::{
    self, CopyMethod, DirectivePhase, agent_message, agent_service_client::AgentServiceClient,
    report::Observation, scheduler_message::Message as ToAgent,
};
use snapgate_scheduler::{
    Config, clock::SystemClock, identity::Authorizer, metrics::Metrics, serve, store::RedbStore,
};
use tokio::{net::TcpListener, sync::mpsc, task::JoinHandle};
use tokio_stream::wrappers::ReceiverStream;

/// A scheduler serving on 127.0.0.1.
pub struct Scheduler {
    pub port: u16,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: JoinHandle<anyhow::Result<()>>,
}

impl Scheduler {
    /// Starts on `port` (0: any free port) with its store in `dir`.
    pub async fn start(dir: &std::path::Path, port: u16) -> Self {
        let listener = TcpListener::bind(("127.0.0.1", port)).await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let config = Config {
            store: Box::new(RedbStore::open(dir).unwrap()),
            clock: Arc::new(SystemClock),
            metrics: Metrics::new(),
            authorizer: Authorizer,
        };
        let task = tokio::spawn(serve(config, listener, async {
            let _ = stopped.await;
        }));
        Self {
            port,
            stop: Some(stop),
            task,
        }
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub async fn client(&self) -> snapgate_sdk::Client {
        snapgate_sdk::Client::connect(self.endpoint())
            .await
            .unwrap()
    }

    /// Stops serving and waits until the store is closed.
    pub async fn stop(mut self) {
        let _ = self.stop.take().unwrap().send(());
        tokio::time::timeout(Duration::from_secs(20), self.task)
            .await
            .expect("the scheduler stops")
            .unwrap()
            .unwrap();
    }
}

/// What the stand-in agent answers to a COPY directive.
#[derive(Clone, Debug)]
pub enum OnCopy {
    /// The snapshot is ready at once.
    Complete,
    /// A non-retryable AgentError with this reason: the run fails.
    Fail(&'static str),
    /// Nothing: the copy never becomes ready.
    Hang,
}

/// A stand-in agent for one namespace: the PVC carries use-copy-trigger; directives are
/// answered as a cluster would (Gate/Wait: PvcObserved, Copy: per `OnCopy`, Transfer: the mover
/// succeeds, Cleanup: cleaned up). Every directive received is sent on `seen`.
pub struct Agent {
    pub seen: mpsc::UnboundedReceiver<(String, DirectivePhase)>,
    task: JoinHandle<()>,
}

impl Agent {
    pub async fn start(endpoint: &str, namespace: &str, on_copy: OnCopy) -> Self {
        let channel = tonic::transport::Endpoint::from_shared(endpoint.to_owned())
            .unwrap()
            .connect()
            .await
            .unwrap();
        let (tx, rx) = mpsc::channel(64);
        tx.send(v1::AgentMessage {
            message: Some(agent_message::Message::Hello(v1::AgentHello {
                agent_id: "sdk-test-agent".into(),
                namespaces: vec![namespace.into()],
                version: "test".into(),
            })),
        })
        .await
        .unwrap();
        let mut inbound = AgentServiceClient::new(channel)
            .connect(ReceiverStream::new(rx))
            .await
            .unwrap()
            .into_inner();
        let (seen_tx, seen) = mpsc::unbounded_channel();
        let task = tokio::spawn(async move {
            let mut latest = String::new();
            while let Some(Ok(msg)) = inbound.next().await {
                let Some(ToAgent::Directive(d)) = msg.message else {
                    continue;
                };
                let phase = DirectivePhase::try_from(d.phase).unwrap();
                let _ = seen_tx.send((d.run_id.clone(), phase));
                let observation = match phase {
                    DirectivePhase::Gate | DirectivePhase::Wait => {
                        Observation::Pvc(v1::PvcObserved {
                            exists: true,
                            use_copy_trigger: true,
                            copy_trigger: latest.clone(),
                            latest_copy_trigger: latest.clone(),
                            ..Default::default()
                        })
                    }
                    DirectivePhase::Copy => match &on_copy {
                        OnCopy::Complete => {
                            latest = d.trigger.clone();
                            Observation::CopyCompleted(v1::CopyCompleted {
                                copy_name: format!("snap-{}", d.run_id),
                                time: None,
                            })
                        }
                        OnCopy::Fail(reason) => Observation::Error(v1::AgentError {
                            reason: (*reason).into(),
                            message: "the CSI driver refused the snapshot".into(),
                            retryable: false,
                        }),
                        OnCopy::Hang => continue,
                    },
                    DirectivePhase::Transfer => Observation::MoverFinished(v1::MoverFinished {
                        succeeded: true,
                        logs: "restic: snapshot saved".into(),
                    }),
                    DirectivePhase::Cleanup => Observation::CleanedUp(v1::CleanedUp {}),
                    DirectivePhase::Unspecified => continue,
                };
                let report = v1::AgentMessage {
                    message: Some(agent_message::Message::Report(v1::Report {
                        run_id: d.run_id.clone(),
                        generation: d.generation,
                        observation: Some(observation),
                    })),
                };
                if tx.send(report).await.is_err() {
                    return;
                }
            }
        });
        Self { seen, task }
    }

    /// Waits until a directive of `phase` arrives, returning its run id.
    pub async fn wait_for(&mut self, phase: DirectivePhase) -> String {
        tokio::time::timeout(Duration::from_secs(20), async {
            loop {
                let (run, p) = self.seen.recv().await.expect("agent link open");
                if p == phase {
                    return run;
                }
            }
        })
        .await
        .unwrap_or_else(|_| panic!("no {phase:?} directive within 20s"))
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A restic source with copyMethod Snapshot, a daily schedule and an immediate first run.
pub fn restic(pvc: &str) -> v1::SourceSpec {
    v1::SourceSpec {
        source_pvc: pvc.into(),
        trigger: Some(v1::ReplicationSourceTrigger {
            schedule: Some("@daily".into()),
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

/// Creates a source.
pub async fn create(client: &snapgate_sdk::Client, ns: &str, name: &str, spec: v1::SourceSpec) {
    client
        .sources()
        .apply_source(v1::ApplySourceRequest {
            namespace: ns.into(),
            name: name.into(),
            spec: Some(spec),
            expected_version: 0,
        })
        .await
        .unwrap();
}

/// What the application did, in order.
#[derive(Clone, Default)]
pub struct Journal(Arc<std::sync::Mutex<Vec<String>>>);

impl Journal {
    pub fn push(&self, s: impl Into<String>) {
        self.0.lock().unwrap().push(s.into());
    }
    pub fn entries(&self) -> Vec<String> {
        self.0.lock().unwrap().clone()
    }
}
