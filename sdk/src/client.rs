//! The connection to the scheduler: plain HTTP/2 or TLS (optionally presenting a client
//! certificate, for a scheduler with `--client-ca`), with an optional bearer token sent on every
//! call: a fixed one, or one read from a file and re-read whenever the file changes (projected
//! ServiceAccount tokens rotate).
//!
//! ```text
//!  Client ──(BearerToken interceptor: authorization: Bearer <token>)──► tonic Channel ──► scheduler
//!    ├─ triggers(): TriggerService (WatchCopy, Trigger, GetCopyStatus)
//!    └─ sources():  SourceService  (the CLI's apply, get, list, ...)
//! ```
//!
//! The channel reconnects by itself: a call made after the scheduler came back goes through.

use std::{
    fmt,
    path::{Path, PathBuf},
    sync::{Arc, Mutex, PoisonError},
    time::{Duration, SystemTime},
};

use snapgate_proto::v1::{
    self, CopyTarget, source_service_client::SourceServiceClient,
    trigger_service_client::TriggerServiceClient,
};
use tonic::{
    Request, Status,
    metadata::{Ascii, MetadataValue},
    service::{Interceptor, interceptor::InterceptedService},
    transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity},
};

use crate::{error::Error, tls};

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
pub struct BearerToken(Token);

#[derive(Clone, Default)]
enum Token {
    #[default]
    None,
    Fixed(MetadataValue<Ascii>),
    File(Arc<TokenFile>),
}

impl BearerToken {
    /// A token to send; `None` sends nothing.
    pub fn new(token: Option<&str>) -> Result<Self, Error> {
        match token {
            None => Ok(Self(Token::None)),
            Some(t) => Ok(Self(Token::Fixed(
                header_value(t).ok_or(Error::InvalidToken)?,
            ))),
        }
    }

    /// The token in `path`, read now and re-read on a later call whenever the file has
    /// changed (its size, modification time or inode: a projected ServiceAccount token is
    /// replaced in place). A changed file that cannot be read or holds no valid token is
    /// logged and the last good token kept.
    pub fn from_file(path: impl Into<PathBuf>) -> Result<Self, Error> {
        let path = path.into();
        let stamp = FileStamp::of(&path);
        let value = read_token(&path).map_err(|message| Error::TokenFile {
            path: path.clone(),
            message,
        })?;
        Ok(Self(Token::File(Arc::new(TokenFile {
            path,
            current: Mutex::new((stamp, value)),
        }))))
    }

    /// The header value to send now, if any.
    fn value(&self) -> Option<MetadataValue<Ascii>> {
        match &self.0 {
            Token::None => None,
            Token::Fixed(v) => Some(v.clone()),
            Token::File(f) => Some(f.current()),
        }
    }
}

/// `Bearer <token>` as a header value; `None` if the token cannot be one.
fn header_value(token: &str) -> Option<MetadataValue<Ascii>> {
    format!("Bearer {}", token.trim()).parse().ok()
}

/// A token file, read again when it changes.
struct TokenFile {
    path: PathBuf,
    /// The file as last read, and the token it held (or the one before, if it did not load).
    current: Mutex<(Option<FileStamp>, MetadataValue<Ascii>)>,
}

impl TokenFile {
    fn current(&self) -> MetadataValue<Ascii> {
        let mut current = self.current.lock().unwrap_or_else(PoisonError::into_inner);
        let stamp = FileStamp::of(&self.path);
        if stamp != current.0 {
            current.0 = stamp;
            match read_token(&self.path) {
                Ok(value) => current.1 = value,
                Err(message) => tracing::warn!(
                    path = %self.path.display(),
                    error = %message,
                    "the token file changed but holds no usable token; sending the previous one"
                ),
            }
        }
        current.1.clone()
    }
}

/// What identifies a version of a file without reading it: its size, modification time and
/// inode (following symlinks). A file replaced in place or renamed over (a projected volume, a
/// Secret or ConfigMap volume swapping its `..data` link) gets a new stamp. The token file is
/// re-read when its stamp changes; the agent does the same with its TLS files.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileStamp {
    len: u64,
    modified: Option<SystemTime>,
    inode: u64,
}

impl FileStamp {
    /// The stamp of the file at `path` now; `None` if it cannot be stat'ed.
    pub fn of(path: &Path) -> Option<Self> {
        // Follows symlinks: a projected volume swaps its `..data` link.
        let meta = std::fs::metadata(path).ok()?;
        #[cfg(unix)]
        let inode = std::os::unix::fs::MetadataExt::ino(&meta);
        #[cfg(not(unix))]
        let inode = 0;
        Some(Self {
            len: meta.len(),
            modified: meta.modified().ok(),
            inode,
        })
    }
}

/// Reads a token file; the error says why without quoting the token.
fn read_token(path: &Path) -> Result<MetadataValue<Ascii>, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read: {e}"))?;
    if text.trim().is_empty() {
        return Err("empty".into());
    }
    header_value(&text).ok_or_else(|| "not a valid header value (printable ASCII only)".into())
}

impl fmt::Debug for BearerToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.0 {
            Token::None => f.debug_tuple("BearerToken").field(&"none").finish(),
            Token::Fixed(_) => f.debug_tuple("BearerToken").field(&"<redacted>").finish(),
            Token::File(file) => f
                .debug_struct("BearerToken")
                .field("file", &file.path)
                .finish_non_exhaustive(),
        }
    }
}

impl Interceptor for BearerToken {
    fn call(&mut self, mut req: Request<()>) -> Result<Request<()>, Status> {
        if let Some(value) = self.value() {
            req.metadata_mut().insert("authorization", value);
        }
        Ok(req)
    }
}

/// How to reach the scheduler. Start with [`Client::builder`].
#[derive(Clone)]
pub struct ClientBuilder {
    endpoint: String,
    token: Option<String>,
    token_file: Option<PathBuf>,
    ca_pem: Option<Vec<u8>>,
    /// The client certificate chain and its key (PEM).
    identity: Option<(Vec<u8>, Vec<u8>)>,
    domain: Option<String>,
    connect_timeout: Duration,
}

impl fmt::Debug for ClientBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientBuilder")
            .field("endpoint", &self.endpoint)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .field("token_file", &self.token_file)
            .field("ca_pem", &self.ca_pem.is_some())
            .field("client_identity", &self.identity.is_some())
            .field("domain", &self.domain)
            .field("connect_timeout", &self.connect_timeout)
            .finish()
    }
}

impl ClientBuilder {
    /// Sends `authorization: Bearer <token>` on every call (replacing any [`Self::token_file`]).
    pub fn token(mut self, token: impl Into<String>) -> Self {
        self.token = Some(token.into());
        self.token_file = None;
        self
    }

    /// Sends the token held in `path` on every call, re-reading the file whenever it changes
    /// (replacing any [`Self::token`]). Connecting fails with [`Error::TokenFile`] if the file
    /// cannot be read or is empty; a later change that does not load keeps the last token.
    pub fn token_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.token_file = Some(path.into());
        self.token = None;
        self
    }

    fn auth(&self) -> Result<BearerToken, Error> {
        match &self.token_file {
            Some(path) => BearerToken::from_file(path.clone()),
            None => BearerToken::new(self.token.as_deref()),
        }
    }

    /// Trusts this PEM CA (in addition to the system roots) for an `https://` endpoint.
    /// Connecting fails with [`Error::InvalidEndpoint`] if it holds no usable certificate
    /// (see [`tls::check_ca`]).
    pub fn ca_certificate_pem(mut self, pem: impl Into<Vec<u8>>) -> Self {
        self.ca_pem = Some(pem.into());
        self
    }

    /// Presents this client certificate to an `https://` scheduler that asks for one (mutual
    /// TLS: the scheduler's `--client-ca`). `cert_pem` is the PEM certificate chain, leaf first;
    /// `key_pem` its PEM private key (PKCS#8, PKCS#1 or SEC1). Connecting fails with
    /// [`Error::InvalidEndpoint`] naming the client certificate or the client key when either
    /// cannot be used or the key is not the certificate's (see [`tls::check_client_identity`]).
    /// The pair is read as given: a program that wants a rotated pair builds a new client.
    pub fn client_identity(
        mut self,
        cert_pem: impl Into<Vec<u8>>,
        key_pem: impl Into<Vec<u8>>,
    ) -> Self {
        self.identity = Some((cert_pem.into(), key_pem.into()));
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
                if self.ca_pem.is_some() || self.identity.is_some() || self.domain.is_some() {
                    return Err(invalid("TLS settings need an https:// endpoint".into()));
                }
            }
            Some("https") => {
                let mut tls = ClientTlsConfig::new().with_native_roots();
                if let Some(pem) = &self.ca_pem {
                    tls::check_ca(pem).map_err(|e| invalid(e.to_string()))?;
                    tls = tls.ca_certificate(Certificate::from_pem(pem));
                }
                if let Some((cert, key)) = &self.identity {
                    tls::check_client_identity(cert, key).map_err(|e| invalid(e.to_string()))?;
                    tls = tls.identity(Identity::from_pem(cert, key));
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
        let auth = self.auth()?;
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

    /// A client on `channel`, a connection the caller made, instead of one to the endpoint:
    /// for an embedding that carries the connection itself (the deterministic simulation hands
    /// out in-memory duplex streams through [`Endpoint::connect_with_connector_lazy`]). The
    /// token settings apply as with [`ClientBuilder::connect`]; the endpoint is only a name
    /// (for [`Client::endpoint`]) and the TLS settings are not used.
    pub fn with_channel(self, channel: Channel) -> Result<Client, Error> {
        let auth = self.auth()?;
        Ok(Client {
            channel,
            auth,
            endpoint: self.endpoint,
        })
    }

    /// Connects on the first call (and reconnects after any failure); never fails on a
    /// scheduler that is not up yet.
    pub fn connect_lazy(self) -> Result<Client, Error> {
        let auth = self.auth()?;
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
            token_file: None,
            ca_pem: None,
            identity: None,
            domain: None,
            connect_timeout: Duration::from_secs(5),
        }
    }

    /// The endpoint this client talks to.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// The connection with its bearer token, for a generated client of another snapgate.v1
    /// service (the agent's `AgentServiceClient`).
    pub fn channel(&self) -> AuthChannel {
        InterceptedService::new(self.channel.clone(), self.auth.clone())
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
    /// value is spent. The answer is the copy status after it (COMPLETED: the copy point was
    /// reached inside the hold). A call that fails or is not answered proves nothing: the
    /// hold lease may still be running, so the caller must stay quiesced until its end (the
    /// guard waits for its hold limit).
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
