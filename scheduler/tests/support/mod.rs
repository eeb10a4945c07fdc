//! The scheduler served on loopback for the integration tests: start on a store, clients,
//! metrics, a clean stop.

#![allow(dead_code, unreachable_pub)]

use std::{path::Path, sync::Arc, time::Duration};

use snapgate_proto::{
    clock::{Clock, TokioClock},
    v1::{
        source_service_client::SourceServiceClient, trigger_service_client::TriggerServiceClient,
    },
};
use snapgate_scheduler::{
    Config, Storage,
    identity::Authorizer,
    metrics::Metrics,
    store::{RedbStore, Store},
};
use tokio::{net::TcpListener, task::JoinHandle};
use tonic::transport::Channel;

pub struct Running {
    pub channel: Channel,
    pub addr: std::net::SocketAddr,
    pub metrics: Metrics,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    pub task: JoinHandle<anyhow::Result<()>>,
}

impl Running {
    pub async fn start(store: Box<dyn Store>) -> Self {
        Self::start_with(store, Authorizer::default(), None, false, (0, 0)).await
    }

    /// A scheduler that authenticates with `authenticator` and decides with `authorizer`;
    /// with `tls`, it serves TLS only (the test certificate for `localhost`) and the channel
    /// trusts the test CA.
    pub async fn start_with(
        store: Box<dyn Store>,
        authorizer: Authorizer,
        authenticator: Option<Arc<snapgate_scheduler::auth::Authenticator>>,
        tls: bool,
        rate: (u32, u32),
    ) -> Self {
        Self::start_full(
            Storage::Single(store),
            authorizer,
            authenticator,
            tls,
            rate,
            Arc::new(TokioClock::starting_now()),
        )
        .await
    }

    /// As [`Running::start`], reading the time from `clock`.
    pub async fn start_clocked(store: Box<dyn Store>, clock: Arc<dyn Clock>) -> Self {
        Self::start_full(
            Storage::Single(store),
            Authorizer::default(),
            None,
            false,
            (0, 0),
            clock,
        )
        .await
    }

    /// A scheduler on `storage`: its own store, or a replica's election.
    pub async fn start_storage(storage: Storage) -> Self {
        Self::start_full(
            storage,
            Authorizer::default(),
            None,
            false,
            (0, 0),
            Arc::new(TokioClock::starting_now()),
        )
        .await
    }

    async fn start_full(
        store: Storage,
        authorizer: Authorizer,
        authenticator: Option<Arc<snapgate_scheduler::auth::Authenticator>>,
        tls: bool,
        rate: (u32, u32),
        clock: Arc<dyn Clock>,
    ) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let metrics = Metrics::new();
        let config = Config {
            store,
            clock,
            metrics: metrics.clone(),
            authorizer,
            authenticator,
            rate,
            lease_policy: Default::default(),
        };
        let data = Path::new(env!("CARGO_MANIFEST_DIR")).join("../sdk/tests/data/tls");
        let listening = snapgate_scheduler::Listening {
            tls: tls.then(|| {
                snapgate_scheduler::tls::ServerTls::load(
                    &data.join("server.pem"),
                    &data.join("server.key"),
                    None,
                )
                .unwrap()
            }),
            health: None,
            driver_thread: false,
        };
        let task = tokio::spawn(snapgate_scheduler::serve_with(
            config,
            listener,
            listening,
            async {
                let _ = stopped.await;
            },
        ));
        let channel = if tls {
            let ca = std::fs::read(data.join("ca.pem")).unwrap();
            tonic::transport::Endpoint::from_shared(format!("https://localhost:{}", addr.port()))
                .unwrap()
                .tls_config(
                    tonic::transport::ClientTlsConfig::new()
                        .ca_certificate(tonic::transport::Certificate::from_pem(ca))
                        .domain_name("localhost"),
                )
                .unwrap()
                .connect()
                .await
                .unwrap()
        } else {
            tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
                .unwrap()
                .connect()
                .await
                .unwrap()
        };
        Self {
            channel,
            addr,
            metrics,
            stop: Some(stop),
            task,
        }
    }

    pub async fn open(dir: &Path) -> Self {
        Self::start(Box::new(RedbStore::open(dir).unwrap())).await
    }

    pub fn sources(&self) -> SourceServiceClient<Channel> {
        SourceServiceClient::new(self.channel.clone())
    }

    pub fn triggers(&self) -> TriggerServiceClient<Channel> {
        TriggerServiceClient::new(self.channel.clone())
    }

    /// The value of a metric without labels, from the exposition.
    pub fn gauge(&self, name: &str) -> i64 {
        self.metrics
            .encode()
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{name} ")))
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no {name} in the metrics"))
    }

    /// Waits (bounded) until a metric reaches a value: the event, not a sleep.
    pub async fn until_gauge(&self, name: &str, want: i64) {
        tokio::time::timeout(Duration::from_secs(10), async {
            while self.gauge(name) != want {
                // The pause between two looks at the metric.
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
        .await
        .unwrap_or_else(|_| panic!("{name} stayed at {} (want {want})", self.gauge(name)));
    }

    pub async fn stop(mut self) {
        let _ = self.stop.take().unwrap().send(());
        drop(self.channel);
        tokio::time::timeout(Duration::from_secs(10), self.task)
            .await
            .expect("the scheduler stops")
            .unwrap()
            .unwrap();
    }
}
