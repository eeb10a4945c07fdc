//! The connection to the scheduler: plain HTTP/2 or TLS, with an optional bearer token sent on
//! every call.
//!
//! ```text
//!  Client ──(BearerToken interceptor: authorization: Bearer <token>)──► tonic Channel ──► scheduler
//!    ├─ triggers(): TriggerService (WatchCopy, Trigger, GetCopyStatus)
//!    └─ sources():  SourceService  (the CLI's apply, get, list, ...)
//! ```
//!
//! The channel reconnects by itself: a call made after the scheduler came back goes through.

use std::{fmt, time::Duration};

use snapgate_proto::v1::{
    self, CopyTarget, source_service_client::SourceServiceClient,
    trigger_service_client::TriggerServiceClient,
};
use tonic::{
    Request, Status,
    metadata::{Ascii, MetadataValue},
    service::{Interceptor, interceptor::InterceptedService},
    transport::{Certificate, Channel, ClientTlsConfig, Endpoint},
};

use crate::error::Error;

/// The channel every generated client of this crate runs on.
pub type AuthChannel = InterceptedService<Channel, BearerToken>;

/// A copy target naming a PVC: the run currently gating that PVC, whichever source it is of.
pub fn pvc(namespace: &str, pvc: &str) -> CopyTarget {
    CopyTarget {
        namespace: namespace.to_owned(),
        pvc: pvc.to_owned(),
        source: String::new(),
    }
}

/// A copy target naming one source (and so its PVC).
pub fn source(namespace: &str, name: &str) -> CopyTarget {
    CopyTarget {
        namespace: namespace.to_owned(),
        pvc: String::new(),
        source: name.to_owned(),
    }
}

/// Adds `authorization: Bearer <token>` to every request when a token is set.
#[derive(Clone, Default)]
pub struct BearerToken(Option<MetadataValue<Ascii>>);

impl BearerToken {
    /// A token to send; `None` sends nothing.
    pub fn new(token: Option<&str>) -> Result<Self, Error> {
        match token {
            None => Ok(Self(None)),
            Some(t) => {
                let value = format!("Bearer {}", t.trim())
                    .parse::<MetadataValue<Ascii>>()
                    .map_err(|_| Error::InvalidToken)?;
                Ok(Self(Some(value)))
            }
        }
    }
}

impl fmt::Debug for BearerToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let shown = if self.0.is_some() {
            "<redacted>"
        } else {
            "none"
        };
        f.debug_tuple("BearerToken").field(&shown).finish()
    }
}

impl Interceptor for BearerToken {
    fn call(&mut self, mut req: Request<()>) -> Result<Request<()>, Status> {
        if let Some(value) = &self.0 {
            req.metadata_mut().insert("authorization", value.clone());
        }
        Ok(req)
    }
}

/// How to reach the scheduler. Start with [`Client::builder`].
#[derive(Clone, Debug)]
pub struct ClientBuilder {
    endpoint: String,
    token: Option<String>,
    ca_pem: Option<Vec<u8>>,
    domain: Option<String>,
    connect_timeout: Duration,
}

impl ClientBuilder {
    /// Sends `authorization: Bearer <token>` on every call.
    pub fn token(mut self, token: impl Into<String>) -> Self {
        self.token = Some(token.into());
        self
    }

    /// Trusts this PEM CA (in addition to the system roots) for an `https://` endpoint.
    pub fn ca_certificate_pem(mut self, pem: impl Into<Vec<u8>>) -> Self {
        self.ca_pem = Some(pem.into());
        self
    }

    /// The name to verify the server certificate against, when it differs from the host.
    pub fn tls_domain(mut self, domain: impl Into<String>) -> Self {
        self.domain = Some(domain.into());
        self
    }

    /// How long one connection attempt may take (default 5 s).
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    fn endpoint(&self) -> Result<Endpoint, Error> {
        let invalid = |message: String| Error::InvalidEndpoint {
            endpoint: self.endpoint.clone(),
            message,
        };
        let mut endpoint = Endpoint::from_shared(self.endpoint.clone())
            .map_err(|e| invalid(error_chain(&e)))?
            .connect_timeout(self.connect_timeout)
            .tcp_keepalive(Some(Duration::from_secs(30)))
            .http2_keep_alive_interval(Duration::from_secs(15))
            .keep_alive_timeout(Duration::from_secs(10))
            .keep_alive_while_idle(true);
        match endpoint.uri().scheme_str() {
            Some("http") => {
                if self.ca_pem.is_some() || self.domain.is_some() {
                    return Err(invalid("TLS settings need an https:// endpoint".into()));
                }
            }
            Some("https") => {
                let mut tls = ClientTlsConfig::new().with_native_roots();
                if let Some(pem) = &self.ca_pem {
                    tls = tls.ca_certificate(Certificate::from_pem(pem));
                }
                if let Some(domain) = &self.domain {
                    tls = tls.domain_name(domain.clone());
                }
                endpoint = endpoint
                    .tls_config(tls)
                    .map_err(|e| invalid(error_chain(&e)))?;
            }
            other => {
                return Err(invalid(format!(
                    "scheme {:?}: use http:// or https://",
                    other.unwrap_or("")
                )));
            }
        }
        Ok(endpoint)
    }

    /// Connects now; fails with [`Error::Unavailable`] when the scheduler cannot be reached.
    pub async fn connect(self) -> Result<Client, Error> {
        let auth = BearerToken::new(self.token.as_deref())?;
        let channel = self
            .endpoint()?
            .connect()
            .await
            .map_err(|e| Error::Unavailable {
                message: format!("{}: {}", self.endpoint, error_chain(&e)),
            })?;
        Ok(Client {
            channel,
            auth,
            endpoint: self.endpoint,
        })
    }

    /// Connects on the first call (and reconnects after any failure); never fails on a
    /// scheduler that is not up yet.
    pub fn connect_lazy(self) -> Result<Client, Error> {
        let auth = BearerToken::new(self.token.as_deref())?;
        let channel = self.endpoint()?.connect_lazy();
        Ok(Client {
            channel,
            auth,
            endpoint: self.endpoint,
        })
    }
}

/// A connection to the scheduler. Cheap to clone; clones share the connection.
#[derive(Clone, Debug)]
pub struct Client {
    channel: Channel,
    auth: BearerToken,
    endpoint: String,
}

impl Client {
    /// Connects to `endpoint` (`http://host:port` or `https://host:port`) without a token.
    pub async fn connect(endpoint: impl Into<String>) -> Result<Self, Error> {
        Self::builder(endpoint).connect().await
    }

    /// Starts configuring a connection to `endpoint`.
    pub fn builder(endpoint: impl Into<String>) -> ClientBuilder {
        ClientBuilder {
            endpoint: endpoint.into(),
            token: None,
            ca_pem: None,
            domain: None,
            connect_timeout: Duration::from_secs(5),
        }
    }

    /// The endpoint this client talks to.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// The generated TriggerService client on this connection.
    pub fn triggers(&self) -> TriggerServiceClient<AuthChannel> {
        TriggerServiceClient::with_interceptor(self.channel.clone(), self.auth.clone())
    }

    /// The generated SourceService client on this connection.
    pub fn sources(&self) -> SourceServiceClient<AuthChannel> {
        SourceServiceClient::with_interceptor(self.channel.clone(), self.auth.clone())
    }

    /// The current copy status of a target.
    pub async fn copy_status(&self, target: &CopyTarget) -> Result<v1::CopyStatus, Error> {
        let status = self
            .triggers()
            .get_copy_status(v1::GetCopyStatusRequest {
                target: Some(target.clone()),
            })
            .await?
            .into_inner();
        Ok(status)
    }

    /// Every source of `namespace` (every namespace when it is empty), all pages.
    pub async fn list_sources(&self, namespace: &str) -> Result<Vec<v1::Source>, Error> {
        let mut sources = Vec::new();
        let mut page_token = String::new();
        loop {
            let page = self
                .sources()
                .list_sources(v1::ListSourcesRequest {
                    namespace: namespace.to_owned(),
                    page_size: 1000,
                    page_token,
                })
                .await?
                .into_inner();
            sources.extend(page.sources);
            if page.next_page_token.is_empty() {
                return Ok(sources);
            }
            page_token = page.next_page_token;
        }
    }

    /// Releases the run waiting on `target` with `value` (1-253 printable characters, not the
    /// PVC's `latest-copy-trigger`). With a `run_id`, only that run is released: any other
    /// answers [`Error::Refused`] with `FAILED_PRECONDITION`. Repeating an accepted trigger is
    /// idempotent.
    ///
    /// The run's copy point must be reached within the scheduler's default hold (10 minutes
    /// unless configured otherwise); see [`Client::trigger_held`] to say how long you hold.
    pub async fn trigger(
        &self,
        target: &CopyTarget,
        run_id: Option<&str>,
        value: &str,
    ) -> Result<v1::TriggerResponse, Error> {
        self.trigger_held(target, run_id, value, None, None).await
    }

    /// [`Client::trigger`], saying how long the caller holds its quiesce from now (`None`: the
    /// scheduler's default). That is the run's hold lease: a copy point not reached within it
    /// is not counted, and the run waits for a new trigger (the response's `lease_deadline`).
    /// A hold longer than the scheduler's maximum is cut to it; a zero hold is refused.
    ///
    /// `holder` names the caller when the source lists holders (`spec.copyTrigger.holders`):
    /// the run is released once every holder has triggered (until then the response shows it
    /// waiting, with the holders still to come in `holders_pending`).
    pub async fn trigger_held(
        &self,
        target: &CopyTarget,
        run_id: Option<&str>,
        value: &str,
        hold: Option<Duration>,
        holder: Option<&str>,
    ) -> Result<v1::TriggerResponse, Error> {
        let hold = hold.map(|h| prost_types::Duration {
            seconds: i64::try_from(h.as_secs()).unwrap_or(i64::MAX),
            nanos: i32::try_from(h.subsec_nanos()).unwrap_or(0),
        });
        let response = self
            .triggers()
            .trigger(v1::TriggerRequest {
                target: Some(target.clone()),
                value: value.to_owned(),
                run_id: run_id.unwrap_or_default().to_owned(),
                hold,
                holder: holder.unwrap_or_default().to_owned(),
            })
            .await?
            .into_inner();
        Ok(response)
    }

    /// Tells the scheduler this caller no longer holds its quiesce for the run it released
    /// with `value`: if the copy point is not reached yet, the run goes back to waiting and the
    /// value is spent. Best effort by nature (the hold lease is the guarantee); the answer is
    /// the copy status after it (COMPLETED: the copy point was reached inside the hold).
    pub async fn end_hold(
        &self,
        target: &CopyTarget,
        run_id: &str,
        value: &str,
    ) -> Result<v1::CopyStatus, Error> {
        let response = self
            .triggers()
            .end_hold(v1::EndHoldRequest {
                target: Some(target.clone()),
                run_id: run_id.to_owned(),
                value: value.to_owned(),
            })
            .await?
            .into_inner();
        Ok(response.status.unwrap_or_default())
    }
}

/// An error and its sources on one line (tonic's transport errors say little at the top).
pub(crate) fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut next = e.source();
    while let Some(s) = next {
        let text = s.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        next = s.source();
    }
    out
}
