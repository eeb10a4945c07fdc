//! What the SDK's tests run against: the real scheduler on loopback (redb in a temp dir) and a
//! stand-in agent on the real agent link that plays the cluster.

#![allow(dead_code, unreachable_pub)]

use std::{sync::Arc, time::Duration};

use futures::StreamExt;
use snapgate_proto::clock::TokioClock;
use snapgate_proto::v1::trigger_service_server::{TriggerService, TriggerServiceServer};
use snapgate_proto::v1::{
    self, CopyMethod, DirectivePhase, agent_message, agent_service_client::AgentServiceClient,
    report::Observation, scheduler_message::Message as ToAgent,
};
use snapgate_scheduler::{Config, identity::Authorizer, metrics::Metrics, serve, store::RedbStore};
use tokio::{net::TcpListener, sync::mpsc, task::JoinHandle};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

/// A scheduler serving on 127.0.0.1.
pub struct Scheduler {
    pub port: u16,
    /// Its metrics, to wait for what it counts.
    pub metrics: Metrics,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: JoinHandle<anyhow::Result<()>>,
}

impl Scheduler {
    /// Starts on `port` (0: any free port) with its store in `dir`.
    pub async fn start(dir: &std::path::Path, port: u16) -> Self {
        let listener = TcpListener::bind(("127.0.0.1", port)).await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let metrics = Metrics::new();
        let config = Config {
            store: RedbStore::open(dir).unwrap().into(),
            clock: Arc::new(TokioClock::starting_now()),
            metrics: metrics.clone(),
            authorizer: Authorizer::default(),
            authenticator: None,
            rate: (0, 0),
            lease_policy: Default::default(),
        };
        let task = tokio::spawn(serve(config, listener, async {
            let _ = stopped.await;
        }));
        Self {
            port,
            metrics,
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
    writes: mpsc::UnboundedSender<String>,
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
                leases: true,
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
        let (writes, mut written) = mpsc::unbounded_channel::<String>();
        let task = tokio::spawn(async move {
            let mut latest = String::new();
            // The run whose PVC is being read (its last Gate or Wait directive), if any.
            let mut gating: Option<(String, u64)> = None;
            // A lease-gated COPY directive waiting for its lease.
            let mut leasing: Option<v1::Directive> = None;
            loop {
                let msg = tokio::select! {
                    msg = inbound.next() => match msg {
                        Some(Ok(msg)) => msg,
                        _ => return,
                    },
                    Some(value) = written.recv() => {
                        // Someone wrote copy-trigger on the PVC: report what the watch sees.
                        let Some((run_id, generation)) = gating.clone() else {
                            continue;
                        };
                        let report = v1::AgentMessage {
                            message: Some(agent_message::Message::Report(v1::Report {
                                run_id,
                                generation,
                                observation: Some(Observation::Pvc(v1::PvcObserved {
                                    exists: true,
                                    use_copy_trigger: true,
                                    copy_trigger: value,
                                    latest_copy_trigger: latest.clone(),
                                    ..Default::default()
                                })),
                            })),
                        };
                        if tx.send(report).await.is_err() {
                            return;
                        }
                        continue;
                    }
                };
                let (d, leased) = match msg.message {
                    Some(ToAgent::Directive(d)) => (d, false),
                    // The lease arrived: the copy is made (or not) now. A refused lease (it ran
                    // out) makes nothing: the scheduler sends the run back to WAIT.
                    Some(ToAgent::Lease(grant)) => match leasing.take() {
                        Some(d) if grant.refused.is_empty() && grant.run_id == d.run_id => {
                            (d, true)
                        }
                        _ => continue,
                    },
                    _ => continue,
                };
                let phase = DirectivePhase::try_from(d.phase).unwrap();
                if d.lease && phase == DirectivePhase::Copy && !leased {
                    let _ = seen_tx.send((d.run_id.clone(), phase));
                    let ask = v1::AgentMessage {
                        message: Some(agent_message::Message::LeaseRequest(v1::LeaseRequest {
                            run_id: d.run_id.clone(),
                            generation: d.generation,
                            request_id: d.generation,
                        })),
                    };
                    leasing = Some(d);
                    if tx.send(ask).await.is_err() {
                        return;
                    }
                    continue;
                }
                if !leased {
                    let _ = seen_tx.send((d.run_id.clone(), phase));
                }
                gating = matches!(phase, DirectivePhase::Gate | DirectivePhase::Wait)
                    .then(|| (d.run_id.clone(), d.generation));
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
        Self { seen, writes, task }
    }

    /// An operator (or another tool) writes `value` to the PVC's copy-trigger annotation: the
    /// agent reports it for the run whose PVC it last read. The release it causes is
    /// asynchronous; watch the copy status to know when it happened.
    pub fn write_copy_trigger(&self, value: &str) {
        self.writes.send(value.to_owned()).expect("agent running");
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

/// A gRPC proxy in front of a scheduler that can lose the answer to a Trigger call: the call
/// reaches the scheduler, which acts on it, and the caller gets UNAVAILABLE as if the
/// connection had dropped just before the answer arrived. Everything else passes through.
pub struct LossyProxy {
    pub port: u16,
    state: Arc<ProxyState>,
    task: JoinHandle<()>,
}

#[derive(Default)]
struct ProxyState {
    /// How many Trigger answers are still to be lost.
    lose: std::sync::atomic::AtomicUsize,
    /// Trigger calls that reached the scheduler.
    triggers: std::sync::atomic::AtomicUsize,
}

impl LossyProxy {
    /// Listens on 127.0.0.1 and forwards to `upstream`.
    pub async fn start(upstream: &str) -> Self {
        let channel = tonic::transport::Endpoint::from_shared(upstream.to_owned())
            .unwrap()
            .connect()
            .await
            .unwrap();
        let listener = TcpListener::bind(("127.0.0.1", 0)).await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let state = Arc::new(ProxyState::default());
        let triggers = Forward::<true> {
            upstream: channel.clone(),
            state: state.clone(),
        };
        let sources = Forward::<false> {
            upstream: channel,
            state: state.clone(),
        };
        let task = tokio::spawn(async move {
            tonic::transport::Server::builder()
                .add_service(triggers)
                .add_service(sources)
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener))
                .await
                .unwrap();
        });
        Self { port, state, task }
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The answers to the next `n` Trigger calls are lost.
    pub fn lose_trigger_answers(&self, n: usize) {
        self.state
            .lose
            .store(n, std::sync::atomic::Ordering::SeqCst);
    }

    /// How many Trigger calls reached the scheduler.
    pub fn triggers(&self) -> usize {
        self.state
            .triggers
            .load(std::sync::atomic::Ordering::SeqCst)
    }
}

impl Drop for LossyProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Forwards one service's calls (`TRIGGERS`: TriggerService, else SourceService).
#[derive(Clone)]
struct Forward<const TRIGGERS: bool> {
    upstream: tonic::transport::Channel,
    state: Arc<ProxyState>,
}

impl tonic::server::NamedService for Forward<true> {
    const NAME: &'static str = "snapgate.v1.TriggerService";
}

impl tonic::server::NamedService for Forward<false> {
    const NAME: &'static str = "snapgate.v1.SourceService";
}

impl<const TRIGGERS: bool> tonic::codegen::Service<tonic::codegen::http::Request<tonic::body::Body>>
    for Forward<TRIGGERS>
{
    type Response = tonic::codegen::http::Response<tonic::body::Body>;
    type Error = std::convert::Infallible;
    type Future = tonic::codegen::BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: tonic::codegen::http::Request<tonic::body::Body>) -> Self::Future {
        use std::sync::atomic::Ordering::SeqCst;

        let mut upstream = self.upstream.clone();
        let state = self.state.clone();
        Box::pin(async move {
            let trigger = request.uri().path() == "/snapgate.v1.TriggerService/Trigger";
            let unavailable = |e: &dyn std::fmt::Display| {
                Ok(tonic::Status::unavailable(format!("proxy: {e}")).into_http())
            };
            if let Err(e) = futures::future::poll_fn(|cx| upstream.poll_ready(cx)).await {
                return unavailable(&e);
            }
            // A unary answer's headers come once the scheduler's handler has returned: by
            // then the Trigger was accepted or refused.
            let response = match upstream.call(request).await {
                Ok(response) => response,
                Err(e) => return unavailable(&e),
            };
            if trigger {
                state.triggers.fetch_add(1, SeqCst);
                let lost = state
                    .lose
                    .fetch_update(SeqCst, SeqCst, |n| n.checked_sub(1))
                    .is_ok();
                if lost {
                    drop(response);
                    return unavailable(&"the connection dropped before the answer arrived");
                }
            }
            Ok(response)
        })
    }
}

// ------------------------------------------------------------------ a stand-in TriggerService

/// Answers GetCopyStatus with the authorization header it received (in `reason`), and
/// refuses Trigger quoting it (for the CLI, which prints refusals).
pub struct Echo;

fn auth<T>(req: &Request<T>) -> String {
    req.metadata()
        .get("authorization")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default()
}

#[tonic::async_trait]
impl TriggerService for Echo {
    type WatchCopyStream =
        std::pin::Pin<Box<dyn futures::Stream<Item = Result<v1::CopyStatus, Status>> + Send>>;

    async fn watch_copy(
        &self,
        _: Request<v1::WatchCopyRequest>,
    ) -> Result<Response<Self::WatchCopyStream>, Status> {
        Err(Status::unimplemented("echo"))
    }

    async fn trigger(
        &self,
        req: Request<v1::TriggerRequest>,
    ) -> Result<Response<v1::TriggerResponse>, Status> {
        Err(Status::permission_denied(format!("saw [{}]", auth(&req))))
    }

    async fn end_hold(
        &self,
        _: Request<v1::EndHoldRequest>,
    ) -> Result<Response<v1::EndHoldResponse>, Status> {
        Err(Status::unimplemented("echo"))
    }

    async fn get_copy_status(
        &self,
        req: Request<v1::GetCopyStatusRequest>,
    ) -> Result<Response<v1::CopyStatus>, Status> {
        Ok(Response::new(v1::CopyStatus {
            reason: auth(&req),
            ..Default::default()
        }))
    }
}

/// An [`Echo`] server on loopback.
pub struct EchoServer {
    pub url: String,
    pub port: u16,
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<Result<(), tonic::transport::Error>>,
}

impl EchoServer {
    /// Plain HTTP/2 on 127.0.0.1.
    pub async fn start() -> Self {
        Self::start_with(None).await
    }

    /// TLS with `identity` (`url` then names `localhost`) or plain HTTP/2.
    pub async fn start_with(identity: Option<tonic::transport::Identity>) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let url = match identity {
            Some(_) => format!("https://localhost:{port}"),
            None => format!("http://127.0.0.1:{port}"),
        };
        let mut builder = tonic::transport::Server::builder();
        if let Some(identity) = identity {
            builder = builder
                .tls_config(tonic::transport::ServerTlsConfig::new().identity(identity))
                .unwrap();
        }
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(
            builder
                .add_service(TriggerServiceServer::new(Echo))
                .serve_with_incoming_shutdown(
                    tokio_stream::wrappers::TcpListenerStream::new(listener),
                    async {
                        let _ = stopped.await;
                    },
                ),
        );
        Self {
            url,
            port,
            stop,
            task,
        }
    }

    pub async fn stop(self) {
        let _ = self.stop.send(());
        self.task.await.unwrap().unwrap();
    }
}
