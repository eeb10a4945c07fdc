//! A TCP proxy on loopback in front of the scheduler, that a test can cut: the network fault
//! between a client (the agent, an application's SDK) and the scheduler, with no process
//! killed.
//!
//! ```text
//!  client ──► proxy ──► scheduler      cut(): every open connection ends at once (both
//!               │                      sides closed); every connection attempt is accepted
//!               └─ refusing            and closed at once (refused) until restore()
//! ```
//!
//! [`Proxy::stall`] makes it a black hole instead (a partition that drops packets): nothing
//! passes and nothing is closed.
//!
//! [`Proxy::service`] is a Kubernetes Service in front of scheduler replicas instead: each
//! connection goes to a replica that is ready (its health says `snapgate.v1.SourceService` is
//! SERVING, as the deployed readiness probe asks: the leader), and is closed when none is.

use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
};

use tokio::{
    net::{TcpListener, TcpStream},
    sync::watch,
    task::JoinHandle,
};

/// How many connections the proxy has seen.
#[derive(Debug, Default)]
struct Counts {
    /// Connections passed on to the scheduler.
    passed: AtomicUsize,
    /// Connection attempts closed at once while refusing.
    refused: AtomicUsize,
    /// Whether connection attempts are refused.
    refusing: AtomicBool,
    /// Whether the proxy is a black hole: connections stay open and pass nothing.
    stalled: AtomicBool,
    /// Connections open now.
    open: AtomicUsize,
}

/// The proxy, serving until dropped.
pub(crate) struct Proxy {
    addr: SocketAddr,
    counts: Arc<Counts>,
    /// Bumped by [`Proxy::cut`]: every connection open ends when it changes.
    cuts: watch::Sender<u64>,
    /// Whether the proxy passes nothing ([`Proxy::stall`]).
    stalls: watch::Sender<bool>,
    accept: JoinHandle<()>,
}

impl Proxy {
    /// A proxy on a free loopback port passing connections to `upstream` (`host:port`).
    pub(crate) async fn start(upstream: &str) -> Self {
        Self::to(Upstream::One(upstream.to_owned())).await
    }

    /// A Service in front of `replicas` (`host:port` each): each connection goes to the first
    /// that is ready when it is made (see the module docs).
    pub(crate) async fn service(replicas: Vec<String>) -> Self {
        Self::to(Upstream::Ready(Arc::new(replicas))).await
    }

    async fn to(upstream: Upstream) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let counts = Arc::new(Counts::default());
        let (cuts, _) = watch::channel(0);
        let (stalls, _) = watch::channel(false);
        let accept = tokio::spawn({
            let (counts, cuts, stalls) = (counts.clone(), cuts.clone(), stalls.clone());
            async move {
                while let Ok((client, _)) = listener.accept().await {
                    if counts.refusing.load(Ordering::SeqCst) {
                        counts.refused.fetch_add(1, Ordering::SeqCst);
                        drop(client);
                        continue;
                    }
                    counts.passed.fetch_add(1, Ordering::SeqCst);
                    tokio::spawn(pass(
                        client,
                        upstream.clone(),
                        counts.clone(),
                        cuts.subscribe(),
                        stalls.subscribe(),
                    ));
                }
            }
        });
        Self {
            addr,
            counts,
            cuts,
            stalls,
            accept,
        }
    }

    /// The proxy's address, `host:port`.
    pub(crate) fn addr(&self) -> String {
        self.addr.to_string()
    }

    /// `http://<the proxy's address>`, for a client's `--scheduler` or `--server`.
    pub(crate) fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Ends every connection open now and refuses every connection attempt until
    /// [`Proxy::restore`]; returns how many connections it ended.
    pub(crate) fn cut(&self) -> usize {
        self.counts.refusing.store(true, Ordering::SeqCst);
        let open = self.counts.open.load(Ordering::SeqCst);
        self.cuts.send_modify(|n| *n += 1);
        open
    }

    /// Passes connections again.
    pub(crate) fn restore(&self) {
        self.counts.refusing.store(false, Ordering::SeqCst);
        self.stalls.send_replace(false);
    }

    /// Makes the proxy a black hole, as a network partition that drops packets is: every
    /// connection open and every new one stays open and passes nothing (no reset, no close),
    /// until [`Proxy::restore`]; the connections stalled stay dead after it.
    pub(crate) fn stall(&self) {
        self.stalls.send_replace(true);
    }

    /// Connection attempts refused so far.
    pub(crate) fn refused(&self) -> usize {
        self.counts.refused.load(Ordering::SeqCst)
    }

    /// Connections passed to the scheduler so far.
    pub(crate) fn passed(&self) -> usize {
        self.counts.passed.load(Ordering::SeqCst)
    }

    /// Whether it refuses connection attempts (cut, not restored).
    pub(crate) fn refusing(&self) -> bool {
        self.counts.refusing.load(Ordering::SeqCst)
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.accept.abort();
        self.cuts.send_modify(|n| *n += 1);
    }
}

/// Where a proxy passes connections.
#[derive(Clone)]
enum Upstream {
    /// One server.
    One(String),
    /// The first of these replicas that is ready.
    Ready(Arc<Vec<String>>),
}

impl Upstream {
    /// The address for a new connection, `None` when no replica is ready.
    async fn pick(&self) -> Option<String> {
        match self {
            Self::One(addr) => Some(addr.clone()),
            Self::Ready(replicas) => {
                for addr in replicas.iter() {
                    if ready(addr).await {
                        return Some(addr.clone());
                    }
                }
                None
            }
        }
    }
}

/// Whether the replica at `addr` says `snapgate.v1.SourceService` is SERVING (the readiness
/// probe of deploy/scheduler-ha), asked with a short deadline.
async fn ready(addr: &str) -> bool {
    let check = async {
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
            .ok()?
            .connect()
            .await
            .ok()?;
        let status = tonic_health::pb::health_client::HealthClient::new(channel)
            .check(tonic_health::pb::HealthCheckRequest {
                service: "snapgate.v1.SourceService".into(),
            })
            .await
            .ok()?
            .into_inner()
            .status;
        Some(status == tonic_health::pb::health_check_response::ServingStatus::Serving as i32)
    };
    tokio::time::timeout(std::time::Duration::from_secs(1), check)
        .await
        .ok()
        .flatten()
        .unwrap_or(false)
}

/// Copies both ways between `client` and a new connection to `upstream` until either side
/// ends or the proxy is cut; then closes both.
async fn pass(
    mut client: TcpStream,
    upstream: Upstream,
    counts: Arc<Counts>,
    mut cut: watch::Receiver<u64>,
    mut stalled: watch::Receiver<bool>,
) {
    let stalled_now = *stalled.borrow();
    if stalled_now {
        // A black hole: the connection is held, answered by nothing.
        let _ = cut.changed().await;
        return;
    }
    let Some(upstream) = upstream.pick().await else {
        return;
    };
    let Ok(mut server) = TcpStream::connect(&upstream).await else {
        return;
    };
    counts.open.fetch_add(1, Ordering::SeqCst);
    tokio::select! {
        _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
        _ = cut.changed() => {}
        () = async { drop(stalled.wait_for(|s| *s).await) } => {
            // Both sockets stay open and unread until the proxy is cut or dropped.
            let _ = cut.changed().await;
        }
    }
    counts.open.fetch_sub(1, Ordering::SeqCst);
}
