//! The in-memory network between the scheduler and its clients: no sockets.
//!
//! ```text
//!  client (agent, app, operator) ──duplex── relay task ──duplex──► scheduler's incoming
//!                                             ▲
//!                      cut: the relay is aborted, both ends see the connection end
//! ```
//!
//! Every connection is a pair of [`tokio::io::duplex`] streams joined by a relay task, tagged
//! with its owner, so the simulation can drop one owner's connections (an agent's crash) or all
//! of them (a network fault, a scheduler crash). While the scheduler is down, dialing fails as a
//! refused connection does.

use std::{
    collections::BTreeMap,
    io,
    sync::{Arc, Mutex, PoisonError},
    time::Duration,
};

use futures::future::BoxFuture;
use hyper_util::rt::TokioIo;
use tokio::{io::DuplexStream, sync::mpsc, task::AbortHandle};
use tonic::transport::{Channel, Endpoint};

/// How many bytes a duplex pipe buffers in each direction.
const PIPE: usize = 64 * 1024;

/// The in-memory network. Cheap to clone; clones share it.
#[derive(Clone, Default)]
pub struct Net {
    inner: Arc<Mutex<Inner>>,
}

#[derive(Default)]
struct Inner {
    /// The scheduler's incoming connections, while it is up.
    listener: Option<mpsc::UnboundedSender<io::Result<DuplexStream>>>,
    /// The relays of open connections, by owner.
    relays: BTreeMap<String, Vec<AbortHandle>>,
}

impl Net {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The scheduler starts listening: the connections it accepts from now on.
    pub fn listen(&self) -> impl futures::Stream<Item = io::Result<DuplexStream>> + Send + 'static {
        let (tx, rx) = mpsc::unbounded_channel();
        self.lock().listener = Some(tx);
        futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|c| (c, rx)) })
    }

    /// The scheduler is gone: no more connections are accepted, and every open one ends.
    pub fn down(&self) {
        self.lock().listener = None;
        self.cut_all();
    }

    /// Ends every open connection.
    pub fn cut_all(&self) {
        let relays = std::mem::take(&mut self.lock().relays);
        for handle in relays.into_values().flatten() {
            handle.abort();
        }
    }

    /// Ends `owner`'s open connections.
    pub fn cut(&self, owner: &str) {
        let relays = self.lock().relays.remove(owner).unwrap_or_default();
        for handle in relays {
            handle.abort();
        }
    }

    /// A new connection to the scheduler for `owner`, or a refused one while it is down.
    pub fn dial(&self, owner: &str) -> io::Result<DuplexStream> {
        let mut inner = self.lock();
        let Some(listener) = inner.listener.clone() else {
            return Err(io::Error::new(
                io::ErrorKind::ConnectionRefused,
                "scheduler down",
            ));
        };
        let (client, mut relay_client) = tokio::io::duplex(PIPE);
        let (mut relay_server, server) = tokio::io::duplex(PIPE);
        if listener.send(Ok(server)).is_err() {
            inner.listener = None;
            return Err(io::Error::new(
                io::ErrorKind::ConnectionRefused,
                "scheduler down",
            ));
        }
        let relay = tokio::spawn(async move {
            let _ = tokio::io::copy_bidirectional(&mut relay_client, &mut relay_server).await;
        });
        let relays = inner.relays.entry(owner.to_owned()).or_default();
        relays.retain(|r| !r.is_finished());
        relays.push(relay.abort_handle());
        Ok(client)
    }

    /// A tonic channel to the scheduler for `owner` that dials through this network, lazily and
    /// again after every lost connection.
    pub fn channel(&self, owner: &str) -> Channel {
        let net = self.clone();
        let owner = owner.to_owned();
        let connector = tower::service_fn(move |_: http_uri::Uri| {
            let dialed = net.dial(&owner).map(TokioIo::new);
            async move { dialed }
        });
        Endpoint::from_static("http://scheduler.sim.invalid")
            .connect_timeout(Duration::from_secs(5))
            .connect_with_connector_lazy(connector)
    }

    /// The agent's dialer for [`snapgate_agent::Connector::dialing`].
    pub fn agent_dial(&self, owner: &str) -> snapgate_agent::access::Dial {
        let net = self.clone();
        let owner = owner.to_owned();
        Arc::new(move || -> BoxFuture<'static, anyhow::Result<_>> {
            let channel = net.channel(&owner);
            Box::pin(async move {
                let client = snapgate_sdk::Client::builder("http://scheduler.sim.invalid")
                    .with_channel(channel)?;
                Ok(client.channel())
            })
        })
    }
}

/// The URI type tonic hands a connector.
mod http_uri {
    pub(crate) use tonic::codegen::http::Uri;
}
