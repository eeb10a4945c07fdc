//! Serving the simulator: an in-process tower service for `kube::Client`, a
//! plain-HTTP TCP listener for kubectl and other processes, and kubeconfig output.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::{HeaderValue, Request, Response, header};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;

use crate::SimState;
use crate::rest::{self, SimBody};

/// A tower service answering Kubernetes API requests in-process, as one identity.
#[derive(Clone)]
pub struct SimService {
    state: Arc<SimState>,
    token: Option<String>,
}

impl std::fmt::Debug for SimService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SimService")
            .field("token", &self.token.is_some())
            .finish()
    }
}

impl SimService {
    pub(crate) fn new(state: Arc<SimState>, token: Option<String>) -> Self {
        Self { state, token }
    }
}

impl<B> tower::Service<Request<B>> for SimService
where
    B: hyper::body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    type Response = Response<SimBody>;
    type Error = Box<dyn std::error::Error + Send + Sync>;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        let state = self.state.clone();
        if let Some(token) = &self.token
            && let Ok(v) = HeaderValue::from_str(&format!("Bearer {token}"))
        {
            req.headers_mut().insert(header::AUTHORIZATION, v);
        }
        Box::pin(async move {
            let req = rest::collect_body(req).await.map_err(Into::into)?;
            Ok(rest::handle(state, req).await)
        })
    }
}

/// Bind `addr` and serve HTTP/1 until the runtime shuts down. Returns the bound address.
pub(crate) async fn serve(state: Arc<SimState>, addr: &str) -> std::io::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            // As kube-apiserver's (Go sets TCP_NODELAY on every connection): a response's
            // small writes do not wait for the client's delayed ACK.
            if let Err(e) = stream.set_nodelay(true) {
                tracing::debug!("kube-sim: TCP_NODELAY not set: {e}");
            }
            let state = state.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |req: Request<hyper::body::Incoming>| {
                    let state = state.clone();
                    async move {
                        match rest::collect_body(req).await {
                            Ok(req) => Ok::<_, Infallible>(rest::handle(state, req).await),
                            Err(e) => Ok(rest::json_response(
                                400,
                                &crate::error::ApiError::bad_request(format!("reading body: {e}"))
                                    .to_status(),
                            )),
                        }
                    }
                });
                if let Err(e) = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await
                {
                    tracing::debug!("kube-sim connection ended: {e}");
                }
            });
        }
    });
    Ok(local)
}

/// A kubeconfig for `server` (e.g. `http://127.0.0.1:1234`) authenticating with `token`.
pub fn kubeconfig_yaml(server: &str, token: &str, namespace: &str) -> String {
    format!(
        "apiVersion: v1
kind: Config
clusters:
- name: kube-sim
  cluster:
    server: {server}
contexts:
- name: kube-sim
  context:
    cluster: kube-sim
    user: kube-sim
    namespace: {namespace}
current-context: kube-sim
preferences: {{}}
users:
- name: kube-sim
  user:
    token: {token}
"
    )
}

/// Write a kubeconfig file.
/// Writes the kubeconfig whole or not at all (a temporary file renamed over `path`): a reader
/// polling for it never reads half of one.
pub(crate) fn write_kubeconfig(path: &Path, server: &str, token: &str) -> std::io::Result<()> {
    let mut partial = path.as_os_str().to_owned();
    partial.push(".partial");
    std::fs::write(&partial, kubeconfig_yaml(server, token, "default"))?;
    std::fs::rename(&partial, path)
}
