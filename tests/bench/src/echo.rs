//! The references: a bare tonic server of `snapgate.v1.TriggerService` that answers from its
//! request alone (no store, no driver, no checks, no authentication), with the scheduler's
//! generated code and stream limit and tonic's own defaults otherwise (its accept loop with
//! `TCP_NODELAY`, its rustls TLS), run as a child process of this binary
//! (`snapgate-bench serve-echo`).
//!
//! - `Trigger` and `GetCopyStatus` answer at once (figures 1 and 3);
//! - `WatchCopy` on a PVC named `n<count>-<bytes>` streams `count` statuses of about `bytes`
//!   bytes each and ends (the reference of figure 2's directive fan-out).

use std::{path::Path, pin::Pin};

use anyhow::Context as _;
use futures::Stream;
use snapgate_proto::v1::{
    self,
    trigger_service_server::{TriggerService, TriggerServiceServer},
};
use snapgate_scheduler::limits;
use tonic::{
    Request, Response, Status,
    transport::{Identity, Server, ServerTlsConfig, server::TcpIncoming},
};

/// The echo service.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct Echo;

type Statuses = Pin<Box<dyn Stream<Item = Result<v1::CopyStatus, Status>> + Send>>;

/// `n<count>-<bytes>`: how many statuses, of about how many bytes.
pub(crate) fn stream_request(count: usize, bytes: usize) -> v1::WatchCopyRequest {
    v1::WatchCopyRequest {
        target: Some(v1::CopyTarget {
            namespace: "echo".into(),
            pvc: format!("n{count}-{bytes}"),
            source: String::new(),
        }),
    }
}

#[tonic::async_trait]
impl TriggerService for Echo {
    type WatchCopyStream = Statuses;

    async fn watch_copy(
        &self,
        req: Request<v1::WatchCopyRequest>,
    ) -> Result<Response<Self::WatchCopyStream>, Status> {
        let target = req.into_inner().target.unwrap_or_default();
        let (count, bytes) = target
            .pvc
            .strip_prefix('n')
            .and_then(|s| s.split_once('-'))
            .and_then(|(c, b)| Some((c.parse::<usize>().ok()?, b.parse::<usize>().ok()?)))
            .ok_or_else(|| Status::invalid_argument("pvc: n<count>-<bytes>"))?;
        let (tx, rx) = tokio::sync::mpsc::channel(1024);
        tokio::spawn(async move {
            for i in 0..count {
                let status = v1::CopyStatus {
                    namespace: target.namespace.clone(),
                    pvc: target.pvc.clone(),
                    run_id: format!("run-{i}"),
                    reason: "x".repeat(bytes),
                    ..Default::default()
                };
                if tx.send(Ok(status)).await.is_err() {
                    return;
                }
            }
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }

    async fn trigger(
        &self,
        req: Request<v1::TriggerRequest>,
    ) -> Result<Response<v1::TriggerResponse>, Status> {
        let req = req.into_inner();
        Ok(Response::new(v1::TriggerResponse {
            run_id: req.run_id,
            value: req.value,
            status: None,
            lease_deadline: None,
        }))
    }

    async fn get_copy_status(
        &self,
        req: Request<v1::GetCopyStatusRequest>,
    ) -> Result<Response<v1::CopyStatus>, Status> {
        let target = req.into_inner().target.unwrap_or_default();
        Ok(Response::new(v1::CopyStatus {
            namespace: target.namespace,
            pvc: target.pvc,
            state: v1::CopyState::Idle as i32,
            ..Default::default()
        }))
    }

    async fn end_hold(
        &self,
        _req: Request<v1::EndHoldRequest>,
    ) -> Result<Response<v1::EndHoldResponse>, Status> {
        Ok(Response::new(v1::EndHoldResponse { status: None }))
    }
}

/// Serves [`Echo`] on `listen` as a bare tonic server does (tonic's own accept loop with its
/// defaults, `TCP_NODELAY` on; tonic's own rustls TLS when a certificate is given) until
/// killed; prints `listening <addr>` first.
pub(crate) async fn serve(
    listen: &str,
    cert: Option<&Path>,
    key: Option<&Path>,
) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("listening on {listen}"))?;
    println!("listening {}", listener.local_addr()?);
    let incoming = TcpIncoming::from(listener).with_nodelay(Some(true));
    let mut server = Server::builder().max_concurrent_streams(limits::MAX_STREAMS_PER_CONNECTION);
    if let (Some(cert), Some(key)) = (cert, key) {
        let identity = Identity::from_pem(std::fs::read(cert)?, std::fs::read(key)?);
        server = server.tls_config(ServerTlsConfig::new().identity(identity))?;
    }
    server
        .add_service(TriggerServiceServer::new(Echo))
        .serve_with_incoming(incoming)
        .await?;
    Ok(())
}
