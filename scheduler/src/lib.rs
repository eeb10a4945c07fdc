//! The snapgate scheduler: the IO shell around `snapgate-scheduler-core`.
//!
//! ```text
//!  grpcurl / CLI ──SourceService──┐
//!  SDK ───────────TriggerService──┤  identify ─► handlers ─► DriverHandle ─► Driver task ─► Store
//!  agents ────────AgentService────┘  (interceptor)  (validate)   (mpsc)      (owns the core)  (redb)
//!                                                                   │
//!                   directives to agents · copy status to watchers · metrics  ◄┘ (after commit)
//! ```
//!
//! One task owns the core; gRPC handlers only validate, convert and ask it. Every change is
//! committed to the store before its request is answered or its directive sent.

pub mod args;
pub mod audit;
pub mod auth;
mod driver;
pub mod follower;
pub mod grpc;
pub mod handshake;
pub mod identity;
pub mod limits;
pub mod metrics;
mod reads;
pub mod replica;
mod status;
pub mod store;
pub mod tls;
pub mod wire;

use std::{future::Future, net::SocketAddr, sync::Arc};

use anyhow::Context as _;
use futures::StreamExt as _;
use snapgate_proto::{
    clock::Clock,
    v1::{
        agent_service_server::AgentServiceServer, source_service_server::SourceServiceServer,
        trigger_service_server::TriggerServiceServer,
    },
};
use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;
use tracing::{error, info};

pub use driver::{DriverError, DriverHandle};
pub use snapgate_scheduler_core::LeasePolicy;

use crate::{
    grpc::{Agents, Sources, Triggers},
    identity::{Authorizer, Identify, RpcName},
    metrics::Metrics,
    replica::{Elected, Gate, Replica},
    store::Store,
};

/// Where a scheduler keeps its state.
pub enum Storage {
    /// A store of its own (the embedded store): the scheduler is the only one and leads.
    Single(Box<dyn Store>),
    /// A store shared by replicas: the one elected leads, with the store its election gives.
    Replica(Replica),
}

impl<S: Store> From<S> for Storage {
    fn from(store: S) -> Self {
        Self::Single(Box::new(store))
    }
}

/// What a scheduler runs on.
pub struct Config {
    /// The durable store, or the election that gives it.
    pub store: Storage,
    /// Where "now" comes from.
    pub clock: Arc<dyn Clock>,
    /// The metrics registry.
    pub metrics: Metrics,
    /// Who may do what (and the audit trail).
    pub authorizer: Authorizer,
    /// Who is calling: `None` when authentication is off (every caller anonymous).
    pub authenticator: Option<Arc<auth::Authenticator>>,
    /// Requests per second and burst per identity, with authentication on (0: no limit).
    pub rate: (u32, u32),
    /// The bounds of a Trigger's hold lease.
    pub lease_policy: LeasePolicy,
}

/// Aborts a background task when dropped (the key-set refresh ends with the server).
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// How long a connection in-flight requests may take to drain once the driver has died.
const DRAIN_AFTER_DRIVER_DIED: std::time::Duration = std::time::Duration::from_secs(2);

/// How [`serve_with`] listens, beyond the gRPC listener itself.
#[derive(Debug, Default)]
pub struct Listening {
    /// TLS on the gRPC listener (only TLS is then accepted there); `None`: plaintext.
    pub tls: Option<tls::ServerTls>,
    /// A second, plaintext listener serving only `grpc.health.v1.Health` (for kubelet's gRPC
    /// probes, which speak no TLS), with the same statuses as the main one.
    pub health: Option<TcpListener>,
    /// Run the driver (the store's load, the core, every commit) on a thread of its own, with a
    /// runtime of its own, instead of as a task of the caller's runtime: the binary does. The
    /// state rebuilt at start is then allocated on the thread that later frees it (glibc keeps
    /// memory freed into another thread's heap: see BENCHMARKS.md, figure 8), and a blocking
    /// commit holds none of the runtime's workers. Tests on paused time leave it off: the
    /// driver's timers must follow their runtime's clock.
    pub driver_thread: bool,
}

/// Serves snapgate.v1, health and reflection on `listener` (plaintext) until `shutdown`
/// resolves: [`serve_with`] with no TLS and no separate health listener.
pub async fn serve(
    config: Config,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    serve_with(config, listener, Listening::default(), shutdown).await
}

/// Serves snapgate.v1, health and reflection on `listener` until `shutdown` resolves, over TLS
/// when `listening.tls` is set, and health alone on `listening.health` when set (that server
/// stops with the main one).
///
/// Supervised: if the driver task ever stops while serving (a panic), every service turns
/// `NOT_SERVING`, the server drains briefly and this returns an error, so the process exits
/// non-zero and is restarted rather than answering `UNAVAILABLE` while looking healthy.
pub async fn serve_with(
    config: Config,
    listener: TcpListener,
    listening: Listening,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let edges = Edges {
        on: Some((listener.local_addr()?, listening.tls.is_some())),
        health: listening.health,
        driver_thread: listening.driver_thread,
    };
    match listening.tls {
        None => serve_on(config, plaintext(listener), edges, shutdown).await,
        Some(tls) => {
            let incoming = tls.incoming(listener, config.metrics.clone());
            serve_on(config, incoming, edges, shutdown).await
        }
    }
}

/// What [`serve_on`] needs besides the connections: the TCP address and whether it is TLS,
/// for the log (`None`: caller-supplied connections), the plaintext health listener, and
/// where the driver runs (see [`Listening`]).
struct Edges {
    on: Option<(SocketAddr, bool)>,
    health: Option<TcpListener>,
    driver_thread: bool,
}

/// A connection the gRPC server can serve: a TCP or TLS stream, or an in-memory one.
pub trait Connection:
    tokio::io::AsyncRead
    + tokio::io::AsyncWrite
    + tonic::transport::server::Connected
    + Unpin
    + Send
    + 'static
{
}

impl<T> Connection for T where
    T: tokio::io::AsyncRead
        + tokio::io::AsyncWrite
        + tonic::transport::server::Connected
        + Unpin
        + Send
        + 'static
{
}

/// Serves snapgate.v1, health and reflection on the connections `incoming` yields (plaintext,
/// each bound to send its HTTP/2 preface within [`handshake::HANDSHAKE_TIMEOUT`]) until
/// `shutdown` resolves; supervised as [`serve_with`].
///
/// For an embedding that carries connections itself instead of a TCP listener: the
/// deterministic simulation (`tests/sim`) hands it one end of an in-memory
/// [`tokio::io::duplex`] pair per connection.
pub async fn serve_incoming<S, IO>(
    config: Config,
    incoming: S,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()>
where
    S: futures::Stream<Item = std::io::Result<IO>> + Send + 'static,
    IO: Connection,
{
    let incoming = incoming.map(|conn| conn.map(handshake::HandshakeDeadline::new));
    let edges = Edges {
        on: None,
        health: None,
        driver_thread: false,
    };
    serve_on(config, incoming, edges, shutdown).await
}

/// What [`serve_with`] and [`serve_incoming`] share: the driver, the services and their
/// supervision, on the connections of `incoming` (already wrapped as each path needs).
async fn serve_on<S, IO>(
    config: Config,
    incoming: S,
    edges: Edges,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()>
where
    S: futures::Stream<Item = std::io::Result<IO>> + Send + 'static,
    IO: Connection,
{
    let Edges {
        on,
        health: health_listener,
        driver_thread,
    } = edges;
    let (handle, commands) = driver::channel();
    let (health, health_service) = tonic_health::server::health_reporter();
    let (stopping_tx, stopping) = tokio::sync::watch::channel(false);
    // Ends the driver when this function returns, however it does (see `spawn_driver`).
    let (halt, halted) = tokio::sync::watch::channel(false);
    let _halt = Halt(halt);
    let (gate, mut driver_task) = match config.store {
        Storage::Single(store) => {
            // The only scheduler: it loads now, and fails to start if it cannot.
            let (clock, metrics, lease_policy) =
                (config.clock, config.metrics.clone(), config.lease_policy);
            let (loaded, task) = spawn_driver(
                driver_thread,
                move || driver::Driver::start_on(store, clock, metrics, lease_policy, commands),
                halted,
            );
            loaded.await.context("loading the store")?;
            config.metrics.leader.set(1);
            serving(health.clone()).await;
            (Gate::single(), task)
        }
        Storage::Replica(replica) => {
            info!(name = replica.name, "a replica: campaigning for leadership");
            let gate = Gate::follower(replica.leader.clone());
            config.metrics.leader.set(0);
            // A follower is alive ("" serves) but not ready: its services report NOT_SERVING
            // until it is elected, so that a readiness probe on one of them keeps it out of
            // the Service in front of the replicas.
            not_serving(health.clone(), false).await;
            let tenure = Tenure {
                gate: gate.clone(),
                clock: config.clock,
                metrics: config.metrics.clone(),
                lease_policy: config.lease_policy,
                health: health.clone(),
                driver_thread,
                halted,
            };
            let task = tokio::spawn(tenure.lead(replica, commands, stopping));
            (gate, task)
        }
    };

    let identify = Identify::new(
        config.authenticator.clone(),
        config.authorizer.audit().clone(),
        Arc::new(limits::RateLimits::new(config.rate.0, config.rate.1)),
    )
    .gated(gate.clone());
    let _refresh = config
        .authenticator
        .as_ref()
        .map(|a| AbortOnDrop(a.spawn_refresh()));
    let sources = SourceServiceServer::with_interceptor(
        Sources::new(handle.clone(), config.authorizer.clone()),
        identify.clone(),
    );
    let triggers = TriggerServiceServer::with_interceptor(
        Triggers::new(handle.clone(), config.authorizer.clone()),
        identify.clone(),
    );
    let agents = AgentServiceServer::with_interceptor(
        Agents::new(handle.clone(), config.authorizer.clone()),
        identify.clone(),
    );
    let reflection = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(snapgate_proto::v1::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
    };
    let reflection_v1 = reflection().build_v1().context("building reflection v1")?;
    let reflection_v1alpha = reflection()
        .build_v1alpha()
        .context("building reflection v1alpha")?;

    match on {
        Some((addr, tls)) => info!(%addr, tls, "serving snapgate.v1"),
        None => info!("serving snapgate.v1 on caller-supplied connections"),
    }
    let shutdown_health = health.clone();
    let stop_requested = stopping_tx.subscribe();
    let closer = handle.clone();
    let (died_tx, died_rx) = tokio::sync::oneshot::channel::<()>();
    let (health_stop, health_stopped) = tokio::sync::oneshot::channel::<()>();
    let health_server = match health_listener {
        None => None,
        Some(health_listener) => {
            info!(addr = %health_listener.local_addr()?, "serving grpc.health.v1 (plaintext)");
            Some(tokio::spawn(
                tonic::transport::Server::builder()
                    .max_concurrent_streams(limits::MAX_STREAMS_PER_CONNECTION)
                    .add_service(health_service.clone())
                    .serve_with_incoming_shutdown(plaintext(health_listener), async {
                        let _ = health_stopped.await;
                    }),
            ))
        }
    };
    let router = tonic::transport::Server::builder()
        .max_concurrent_streams(limits::MAX_STREAMS_PER_CONNECTION)
        // Every request carries its RPC's name, for the identity check and the audit trail.
        .layer(tower::util::MapRequestLayer::new(RpcName::tag))
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(sources)
        .add_service(triggers)
        .add_service(agents);
    let stop = async move {
        tokio::select! {
            () = shutdown => info!("shutting down"),
            _ = died_rx => {}
        }
        let _ = stopping_tx.send(true);
        not_serving(shutdown_health, true).await;
        closer.tell(driver::Command::CloseStreams).await;
    };
    // Every connection must send its HTTP/2 preface (after its TLS handshake, if any) within
    // the handshake timeout: `incoming` is wrapped so by its caller.
    let mut server = std::pin::pin!(router.serve_with_incoming_shutdown(incoming, stop));
    let result = tokio::select! {
        served = &mut server => {
            match served.context("gRPC server") {
                Ok(()) => {
                    drop(handle);
                    // Streams still open hold handles; give the driver a moment to finish.
                    let _ = tokio::time::timeout(std::time::Duration::from_secs(5), driver_task)
                        .await;
                    Ok(())
                }
                Err(e) => Err(e),
            }
        }
        joined = &mut driver_task => {
            if matches!(joined, Ok(Ok(()))) && *stop_requested.borrow() {
                // A follower stopping before it was elected: nothing ran, nothing to drain.
                return finish(server.await.context("gRPC server"), health_server, health_stop).await;
            }
            let why = match joined {
                Err(e) if e.is_panic() => "the scheduler's driver task panicked".to_owned(),
                Ok(Err(e)) => format!("{e:#}"),
                _ => "the scheduler's driver task stopped".to_owned(),
            };
            error!(why, "{why}; reporting NOT_SERVING and exiting");
            gate.close();
            not_serving(health, true).await;
            let _ = died_tx.send(());
            let _ = tokio::time::timeout(DRAIN_AFTER_DRIVER_DIED, &mut server).await;
            Err(anyhow::anyhow!("{why}; exiting so that it is restarted"))
        }
    };
    finish(result, health_server, health_stop).await
}

/// Stops the plaintext health server, if any, and returns the gRPC server's result.
async fn finish(
    result: anyhow::Result<()>,
    health_server: Option<tokio::task::JoinHandle<Result<(), tonic::transport::Error>>>,
    health_stop: tokio::sync::oneshot::Sender<()>,
) -> anyhow::Result<()> {
    if let Some(mut task) = health_server {
        let _ = health_stop.send(());
        // A probe's Check is over at once; a Watch would hold a graceful stop for ever.
        match tokio::time::timeout(std::time::Duration::from_secs(2), &mut task).await {
            Ok(Ok(Err(e))) => error!(error = %e, "the health server failed"),
            Ok(_) => {}
            Err(_) => task.abort(),
        }
    }
    result
}

/// Reports the three `snapgate.v1` services SERVING.
async fn serving(health: tonic_health::server::HealthReporter) {
    health.set_serving::<SourceServiceServer<Sources>>().await;
    health.set_serving::<TriggerServiceServer<Triggers>>().await;
    health.set_serving::<AgentServiceServer<Agents>>().await;
}

/// Reports the three `snapgate.v1` services NOT_SERVING, and the process (`""`) too when it
/// is stopping.
async fn not_serving(health: tonic_health::server::HealthReporter, process_too: bool) {
    let process = process_too.then_some("");
    for name in process.into_iter().chain([
        "snapgate.v1.SourceService",
        "snapgate.v1.TriggerService",
        "snapgate.v1.AgentService",
    ]) {
        health
            .set_service_status(name, tonic_health::ServingStatus::NotServing)
            .await;
    }
}

/// What a replica's tenure needs besides its election.
struct Tenure {
    gate: Gate,
    clock: Arc<dyn Clock>,
    metrics: Metrics,
    lease_policy: LeasePolicy,
    health: tonic_health::server::HealthReporter,
    /// See [`Listening::driver_thread`].
    driver_thread: bool,
    /// Turns true when the serve path returns.
    halted: tokio::sync::watch::Receiver<bool>,
}

impl Tenure {
    /// Campaigns; once elected loads the store and runs the driver until the tenure ends.
    /// `Ok` when the process stops (before or after being elected, resigning if it was);
    /// an error when the election failed, the store could not be loaded, or the tenure was
    /// lost: the process must then stop, to start again as a follower.
    async fn lead(
        self,
        replica: Replica,
        mut commands: tokio::sync::mpsc::Receiver<driver::Command>,
        mut stopping: tokio::sync::watch::Receiver<bool>,
    ) -> anyhow::Result<()> {
        // Until elected, a follower: reads from its copy of the leader's commits.
        let following = follower::Following {
            gate: self.gate.clone(),
            clock: self.clock.clone(),
            metrics: self.metrics.clone(),
            leader: replica.leader.clone(),
        };
        let elected = tokio::select! {
            elected = replica.elected => elected.context("campaigning for leadership")?,
            () = follower::follow(replica.feed, &mut commands, following) => return Ok(()),
            () = async { drop(stopping.wait_for(|s| *s).await) } => return Ok(()),
        };
        // Reads wait for the driver now: the copy is gone, and the driver answers in order.
        self.metrics.follower_revision.set(0);
        let Elected {
            store,
            mut lost,
            resign,
        } = elected;
        info!(name = replica.name, "elected leader: loading the store");
        // The load blocks (a whole store read from etcd, seconds for a large one): see
        // `spawn_driver` for where it runs.
        let (clock, metrics, lease_policy) = (self.clock, self.metrics.clone(), self.lease_policy);
        let start = move || driver::Driver::start_on(store, clock, metrics, lease_policy, commands);
        let (loaded, mut run) = spawn_driver(self.driver_thread, start, self.halted);
        loaded
            .await
            .context("loading the store after being elected")?;
        self.gate.open();
        self.metrics.leader.set(1);
        serving(self.health).await;
        info!(name = replica.name, "leading: serving snapgate.v1");
        tokio::select! {
            joined = &mut run => {
                self.gate.close();
                self.metrics.leader.set(0);
                resign.await;
                info!(name = replica.name, "resigned the leadership");
                match joined {
                    Err(e) if e.is_panic() => {
                        Err(anyhow::anyhow!("the scheduler's driver task panicked"))
                    }
                    Ok(Err(e)) => Err(e),
                    _ => Ok(()),
                }
            }
            // A dropped sender is a lost tenure too: nothing keeps the lease any more.
            () = async { drop(lost.wait_for(|l| *l).await) } => {
                self.gate.close();
                self.metrics.leader.set(0);
                // A driver on its own thread ends when the serve path returns (its halt), just
                // after this: until then the gate refuses every call and the fence every write.
                run.abort();
                error!(name = replica.name, "leadership lost");
                Err(anyhow::anyhow!(
                    "leadership lost (the lease could not be kept or the election key changed)"
                ))
            }
        }
    }
}

/// Signals the driver to end when dropped (see [`spawn_driver`]).
struct Halt(tokio::sync::watch::Sender<bool>);

impl Drop for Halt {
    fn drop(&mut self) {
        self.0.send_replace(true);
    }
}

/// Starts the driver: `start` loads the store and rebuilds the core, then the driver runs
/// until every handle is gone or `halted` turns true. As a task of the caller's runtime (the
/// load holding one of its workers: the simulation's single thread runs nothing else
/// meanwhile, which keeps its seeds replayable), or (`own_thread`) on a blocking-pool thread
/// with a current-thread runtime of its own (see [`Listening::driver_thread`]; what the
/// binary does, and what replicas on etcd want: the workers that keep the lease alive never
/// wait on the load). Returns the load's outcome and the task; a panic of the driver is the
/// task's panic either way.
fn spawn_driver<F>(
    own_thread: bool,
    start: F,
    mut halted: tokio::sync::watch::Receiver<bool>,
) -> (
    impl Future<Output = anyhow::Result<()>>,
    tokio::task::JoinHandle<anyhow::Result<()>>,
)
where
    F: FnOnce() -> anyhow::Result<driver::Driver> + Send + 'static,
{
    let (loaded_tx, loaded_rx) = tokio::sync::oneshot::channel::<anyhow::Result<()>>();
    let body = async move {
        let driver = match start() {
            Ok(driver) => {
                let _ = loaded_tx.send(Ok(()));
                driver
            }
            Err(e) => {
                // The caller reports the load's error.
                let _ = loaded_tx.send(Err(e));
                return Ok(());
            }
        };
        tokio::select! {
            () = driver.run() => {}
            () = async { drop(halted.wait_for(|h| *h).await) } => {}
        }
        Ok(())
    };
    let task = if own_thread {
        tokio::task::spawn_blocking(move || {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .context("building the driver's runtime")?
                .block_on(body)
        })
    } else {
        tokio::spawn(body)
    };
    let loaded = async move {
        loaded_rx
            .await
            .unwrap_or_else(|_| Err(anyhow::anyhow!("the driver ended while loading the store")))
    };
    (loaded, task)
}

/// A plaintext listener's connections, each bound to send its HTTP/2 preface in time.
fn plaintext(
    listener: TcpListener,
) -> impl futures::Stream<Item = std::io::Result<handshake::HandshakeDeadline<tokio::net::TcpStream>>>
+ Send
+ 'static {
    TcpListenerStream::new(listener).map(|conn| {
        conn.map(|tcp| {
            no_delay(&tcp);
            handshake::HandshakeDeadline::new(tcp)
        })
    })
}

/// Turns Nagle's algorithm off on an accepted connection. gRPC writes a response's HEADERS,
/// DATA and trailers as separate small writes; with Nagle on, a write waits for the peer's
/// delayed ACK of the previous one (some 40 ms on Linux), which was most of a unary call's
/// latency. A failure costs only latency, so it is logged and the connection kept.
pub(crate) fn no_delay(tcp: &tokio::net::TcpStream) {
    if let Err(e) = tcp.set_nodelay(true) {
        tracing::debug!(error = %e, "TCP_NODELAY not set on an accepted connection");
    }
}

/// Serves `/metrics` in the Prometheus text format until `shutdown` resolves.
pub async fn serve_metrics(
    metrics: Metrics,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let app = axum::Router::new().route(
        "/metrics",
        axum::routing::get(move || {
            let m = metrics.clone();
            async move {
                (
                    [(
                        http::header::CONTENT_TYPE,
                        "application/openmetrics-text; version=1.0.0; charset=utf-8",
                    )],
                    m.encode(),
                )
            }
        }),
    );
    info!(addr = %listener.local_addr()?, "serving metrics");
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
        .context("metrics server")
}

/// Binds a TCP listener with a message that names the flag.
pub async fn bind(addr: SocketAddr, flag: &str) -> anyhow::Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {addr} (--{flag})"))
}
