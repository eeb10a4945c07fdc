//! The etcd client: KV, Lease and Watch calls over one lazily connected channel per endpoint.
//!
//! # Endpoints and failover
//!
//! Endpoints are tried **in order**, starting at the one that answered last: a call that gets
//! `Unavailable` or `Cancelled` (a closed connection), or no answer within the request timeout,
//! from one endpoint is sent to the next, each endpoint at most once per call. So a call takes
//! at most `endpoints × request_timeout`.
//! Every channel reconnects on its own (lazily), so an endpoint that comes back is used again.
//! A write retried on another endpoint may have been applied by the first: every write snapgate
//! makes is idempotent (a put of the same value, a delete, a fenced txn of both), and a lease
//! granted twice leaves one lease to expire unused.

use std::{
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{
    Code, Status, Streaming,
    transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity},
};

use crate::{
    EtcdError, EtcdOptions, EtcdTls,
    pb::{
        etcdserverpb::{
            DeleteRangeRequest, LeaseGrantRequest, LeaseKeepAliveRequest, LeaseKeepAliveResponse,
            LeaseRevokeRequest, PutRequest, RangeRequest, TxnRequest, TxnResponse, WatchRequest,
            WatchResponse, kv_client::KvClient, lease_client::LeaseClient,
            watch_client::WatchClient, watch_request::RequestUnion,
        },
        mvccpb::{Event, KeyValue},
    },
    prefix_end,
};

/// The largest response this client accepts (etcd's default `--max-request-bytes` is 1.5 MiB,
/// its responses are bounded by paging: see [`Client::range_prefix`]).
pub const MAX_RESPONSE_BYTES: usize = 64 * 1024 * 1024;

/// Keys per page of [`Client::range_prefix`]: a page of 1,000 records of a few KiB stays well
/// under etcd's and our message limits, and 200,000 keys take 200 round trips.
pub const DEFAULT_PAGE: i64 = 1000;

/// A client of one etcd cluster (cheap to clone: the channels are shared).
#[derive(Clone)]
pub struct Client {
    endpoints: Arc<[(String, Channel)]>,
    /// The endpoint that answered last: calls start there.
    current: Arc<AtomicUsize>,
    request_timeout: Duration,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field(
                "endpoints",
                &self.endpoints.iter().map(|(e, _)| e).collect::<Vec<_>>(),
            )
            .field("request_timeout", &self.request_timeout)
            .finish()
    }
}

/// Every key of a prefix, read at one revision.
#[derive(Debug, Default)]
pub struct Range {
    /// The revision every page was read at.
    pub revision: i64,
    /// The keys in key order.
    pub kvs: Vec<KeyValue>,
}

/// A granted lease.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LeaseGrant {
    /// The lease's id.
    pub id: i64,
    /// The time to live etcd granted (it may raise a short one to its minimum).
    pub ttl: Duration,
}

/// Whether a call that failed with `code` is sent to the next endpoint: the endpoint was
/// unreachable (`Unavailable`) or closed the connection (`Cancelled`).
fn fails_over(code: Code) -> bool {
    matches!(code, Code::Unavailable | Code::Cancelled)
}

/// Where the next page of a paginated range starts: just after the last key read (`last\0` is
/// the smallest key above it).
pub fn next_page_start(last_key: &[u8]) -> Vec<u8> {
    let mut k = last_key.to_vec();
    k.push(0);
    k
}

/// A lease's time to live as etcd states it (hostile seconds): `None` when the lease is gone
/// (zero or negative).
pub fn ttl_from_wire(ttl: i64) -> Option<Duration> {
    u64::try_from(ttl)
        .ok()
        .filter(|s| *s > 0)
        .map(Duration::from_secs)
}

fn tls_config(tls: &EtcdTls) -> Result<ClientTlsConfig, EtcdError> {
    let read = |path: &std::path::PathBuf| {
        std::fs::read(path).map_err(|source| EtcdError::TlsFile {
            path: path.clone(),
            source,
        })
    };
    let mut config = ClientTlsConfig::new();
    config = match &tls.ca {
        Some(ca) => config.ca_certificate(Certificate::from_pem(read(ca)?)),
        None => config.with_native_roots(),
    };
    match (&tls.cert, &tls.key) {
        (Some(cert), Some(key)) => {
            config = config.identity(Identity::from_pem(read(cert)?, read(key)?));
        }
        (None, None) => {}
        (Some(_), None) => return Err(EtcdError::Tls("a client certificate without a key".into())),
        (None, Some(_)) => return Err(EtcdError::Tls("a client key without a certificate".into())),
    }
    Ok(config)
}

impl Client {
    /// A client of `opts.endpoints`. Connects lazily: this fails only on unusable options (an
    /// endpoint that is no URL, TLS files that cannot be read); reachability shows on the
    /// first call.
    pub fn new(opts: &EtcdOptions) -> Result<Self, EtcdError> {
        if opts.endpoints.is_empty() {
            return Err(EtcdError::NoEndpoints);
        }
        let tls = opts.tls.as_ref().map(tls_config).transpose()?;
        let mut endpoints = Vec::with_capacity(opts.endpoints.len());
        for e in &opts.endpoints {
            let bad = |reason: String| EtcdError::Endpoint {
                endpoint: e.clone(),
                reason,
            };
            let mut ep = Endpoint::from_shared(e.clone())
                .map_err(|err| bad(err.to_string()))?
                .connect_timeout(opts.dial_timeout)
                .tcp_nodelay(true)
                // A dead peer is noticed on an idle connection too (a watch may be silent).
                .http2_keep_alive_interval(opts.request_timeout)
                .keep_alive_timeout(opts.request_timeout)
                .keep_alive_while_idle(true);
            if e.starts_with("https://") {
                let config = tls
                    .clone()
                    .unwrap_or_else(|| ClientTlsConfig::new().with_native_roots());
                ep = ep.tls_config(config).map_err(|err| bad(err.to_string()))?;
            } else if !e.starts_with("http://") {
                return Err(bad("must start with http:// or https://".into()));
            } else if tls.is_some() {
                return Err(bad("TLS files are given but the endpoint is http://".into()));
            }
            endpoints.push((e.clone(), ep.connect_lazy()));
        }
        Ok(Self {
            endpoints: endpoints.into(),
            current: Arc::new(AtomicUsize::new(0)),
            request_timeout: opts.request_timeout,
        })
    }

    /// The longest one request to one endpoint may take.
    pub fn request_timeout(&self) -> Duration {
        self.request_timeout
    }

    /// Sends one call, failing over to the next endpoint on `Unavailable` or a timeout.
    async fn call<T, F, Fut>(&self, op: &'static str, f: F) -> Result<T, EtcdError>
    where
        F: Fn(Channel) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, Status>>,
    {
        let n = self.endpoints.len();
        let start = self.current.load(Ordering::Relaxed);
        let mut last = EtcdError::NoEndpoints;
        for i in 0..n {
            // n > 0 (checked in `new`), and start < n, so neither overflows nor divides by 0.
            let idx = start.wrapping_add(i).checked_rem(n).unwrap_or(0);
            let Some((endpoint, channel)) = self.endpoints.get(idx) else {
                continue;
            };
            match tokio::time::timeout(self.request_timeout, f(channel.clone())).await {
                Ok(Ok(r)) => {
                    self.current.store(idx, Ordering::Relaxed);
                    return Ok(r.into_inner());
                }
                Ok(Err(status)) => {
                    let (error, next) = self.attempt_failed(op, endpoint, Some(status));
                    last = error;
                    if !next {
                        return Err(last);
                    }
                }
                Err(_) => last = self.attempt_failed(op, endpoint, None).0,
            }
            tracing::debug!(op, endpoint, error = %last, "etcd endpoint failed; trying the next");
        }
        Err(last)
    }

    /// What an attempt on `endpoint` that failed with `status` (`None`: it timed out) is, and
    /// whether the next endpoint may be tried.
    fn attempt_failed(
        &self,
        op: &'static str,
        endpoint: &str,
        status: Option<Status>,
    ) -> (EtcdError, bool) {
        match status {
            Some(status) => {
                let next = fails_over(status.code());
                let error = EtcdError::Rpc {
                    op,
                    endpoint: endpoint.to_owned(),
                    status: Box::new(status),
                };
                (error, next)
            }
            None => {
                let error = EtcdError::Timeout {
                    op,
                    endpoint: endpoint.to_owned(),
                    after: self.request_timeout,
                };
                (error, true)
            }
        }
    }

    fn kv(channel: Channel) -> KvClient<Channel> {
        KvClient::new(channel).max_decoding_message_size(MAX_RESPONSE_BYTES)
    }

    /// Every key starting with `prefix`, read in pages of `page` keys at the revision of the
    /// first page, so the result is one consistent view however many pages it takes.
    pub async fn range_prefix(&self, prefix: &[u8], page: i64) -> Result<Range, EtcdError> {
        self.range_prefix_at(prefix, page, 0).await
    }

    /// [`Client::range_prefix`] at `revision` (0: the newest), e.g. to read several prefixes
    /// at one revision.
    pub async fn range_prefix_at(
        &self,
        prefix: &[u8],
        page: i64,
        revision: i64,
    ) -> Result<Range, EtcdError> {
        const OP: &str = "range";
        let page = page.max(1);
        let end = prefix_end(prefix);
        let mut out = Range {
            revision: revision.max(0),
            kvs: Vec::new(),
        };
        let mut key = prefix.to_vec();
        loop {
            let req = RangeRequest {
                key: key.clone(),
                range_end: end.clone(),
                limit: page,
                // 0 (the first page): the newest revision, which the later pages then use.
                revision: out.revision,
                ..Default::default()
            };
            let resp = self
                .call(OP, |c| {
                    let req = req.clone();
                    async move { Self::kv(c).range(req).await }
                })
                .await?;
            if out.revision == 0 {
                out.revision = resp.header.map(|h| h.revision).unwrap_or(0);
                if out.revision <= 0 {
                    return Err(EtcdError::Protocol {
                        op: OP,
                        reason: format!("a range answered revision {}", out.revision),
                    });
                }
            }
            let more = resp.more;
            let Some(last) = resp.kvs.last() else {
                if more {
                    return Err(EtcdError::Protocol {
                        op: OP,
                        reason: "an empty page says more keys follow".into(),
                    });
                }
                return Ok(out);
            };
            let next = next_page_start(&last.key);
            if next <= key {
                return Err(EtcdError::Protocol {
                    op: OP,
                    reason: "a page did not advance past its start key".into(),
                });
            }
            key = next;
            out.kvs.extend(resp.kvs);
            if !more {
                return Ok(out);
            }
        }
    }

    /// One key, and the revision it was read at.
    pub async fn get(&self, key: &[u8]) -> Result<(Option<KeyValue>, i64), EtcdError> {
        let req = RangeRequest {
            key: key.to_vec(),
            ..Default::default()
        };
        let resp = self
            .call("get", |c| {
                let req = req.clone();
                async move { Self::kv(c).range(req).await }
            })
            .await?;
        let revision = resp.header.map(|h| h.revision).unwrap_or(0);
        Ok((resp.kvs.into_iter().next(), revision))
    }

    /// Puts one key (attached to `lease` unless 0).
    pub async fn put(&self, key: &[u8], value: &[u8], lease: i64) -> Result<(), EtcdError> {
        let req = PutRequest {
            key: key.to_vec(),
            value: value.to_vec(),
            lease,
            ..Default::default()
        };
        self.call("put", |c| {
            let req = req.clone();
            async move { Self::kv(c).put(req).await }
        })
        .await
        .map(drop)
    }

    /// Deletes every key starting with `prefix`; returns how many.
    pub async fn delete_prefix(&self, prefix: &[u8]) -> Result<i64, EtcdError> {
        let req = DeleteRangeRequest {
            key: prefix.to_vec(),
            range_end: prefix_end(prefix),
            ..Default::default()
        };
        self.call("delete", |c| {
            let req = req.clone();
            async move { Self::kv(c).delete_range(req).await }
        })
        .await
        .map(|r| r.deleted)
    }

    /// One transaction: etcd answers it once raft has committed it.
    pub async fn txn(&self, req: TxnRequest) -> Result<TxnResponse, EtcdError> {
        self.call("txn", |c| {
            let req = req.clone();
            async move { Self::kv(c).txn(req).await }
        })
        .await
    }

    /// Grants a lease of `ttl` (whole seconds, at least one).
    pub async fn lease_grant(&self, ttl: Duration) -> Result<LeaseGrant, EtcdError> {
        const OP: &str = "lease grant";
        let secs = i64::try_from(ttl.as_secs()).unwrap_or(i64::MAX).max(1);
        let req = LeaseGrantRequest { ttl: secs, id: 0 };
        let resp = self
            .call(
                OP,
                |c| async move { LeaseClient::new(c).lease_grant(req).await },
            )
            .await?;
        if !resp.error.is_empty() {
            return Err(EtcdError::Protocol {
                op: OP,
                reason: resp.error,
            });
        }
        let ttl = ttl_from_wire(resp.ttl).ok_or_else(|| EtcdError::Protocol {
            op: OP,
            reason: format!("granted a ttl of {} s", resp.ttl),
        })?;
        Ok(LeaseGrant { id: resp.id, ttl })
    }

    /// Revokes a lease: every key attached to it is deleted.
    pub async fn lease_revoke(&self, id: i64) -> Result<(), EtcdError> {
        let req = LeaseRevokeRequest { id };
        self.call("lease revoke", |c| async move {
            LeaseClient::new(c).lease_revoke(req).await
        })
        .await
        .map(drop)
    }

    /// A keepalive stream for lease `id` (opened with its first [`KeepAlive::keep_alive`]).
    pub fn lease_keepalive(&self, id: i64) -> KeepAlive {
        KeepAlive {
            client: self.clone(),
            id,
            stream: None,
        }
    }

    /// Watches `key` (every key starting with it when `prefix`) from `start_revision`
    /// (0: from now). Returns once etcd has created the watch.
    pub async fn watch_key(
        &self,
        key: &[u8],
        prefix: bool,
        start_revision: i64,
    ) -> Result<WatchStream, EtcdError> {
        const OP: &str = "watch";
        let create = crate::pb::etcdserverpb::WatchCreateRequest {
            key: key.to_vec(),
            range_end: if prefix { prefix_end(key) } else { vec![] },
            start_revision,
            ..Default::default()
        };
        let mut last = EtcdError::NoEndpoints;
        // Open on each endpoint in turn, as `call` does.
        let n = self.endpoints.len();
        let start = self.current.load(Ordering::Relaxed);
        for i in 0..n {
            let idx = start.wrapping_add(i).checked_rem(n).unwrap_or(0);
            let Some((endpoint, channel)) = self.endpoints.get(idx) else {
                continue;
            };
            let (tx, rx) = mpsc::channel(4);
            // etcd sends the response headers with its first message, the "created" answer to
            // this request: it is queued before the call so the call can complete.
            let first = WatchRequest {
                request_union: Some(RequestUnion::CreateRequest(create.clone())),
            };
            if tx.send(first).await.is_err() {
                return Err(EtcdError::StreamEnded { op: OP });
            }
            let open = async {
                let mut stream = WatchClient::new(channel.clone())
                    .max_decoding_message_size(MAX_RESPONSE_BYTES)
                    .watch(ReceiverStream::new(rx))
                    .await?
                    .into_inner();
                let created = stream.message().await?;
                Ok::<_, Status>((stream, created))
            };
            match tokio::time::timeout(self.request_timeout, open).await {
                Ok(Ok((stream, Some(created)))) => {
                    if !created.created || created.canceled {
                        return Err(EtcdError::Protocol {
                            op: OP,
                            reason: format!("the watch was not created: {}", created.cancel_reason),
                        });
                    }
                    self.current.store(idx, Ordering::Relaxed);
                    return Ok(WatchStream {
                        requests: tx,
                        stream,
                    });
                }
                Ok(Ok((_, None))) => last = EtcdError::StreamEnded { op: OP },
                Ok(Err(status)) => {
                    let (error, next) = self.attempt_failed(OP, endpoint, Some(status));
                    last = error;
                    if !next {
                        return Err(last);
                    }
                }
                Err(_) => last = self.attempt_failed(OP, endpoint, None).0,
            }
        }
        Err(last)
    }
}

/// A created watch: its events, batch by batch.
#[derive(Debug)]
pub struct WatchStream {
    /// The request side of the stream: kept open while the watch is read, and where progress
    /// requests go.
    requests: mpsc::Sender<WatchRequest>,
    stream: Streaming<WatchResponse>,
}

impl WatchStream {
    /// The next events and the revision they bring the watch to. Waits as long as etcd sends
    /// nothing (the channel's HTTP/2 keepalive notices a dead peer). A canceled watch (e.g.
    /// its start revision was compacted) is an error naming etcd's reason.
    pub async fn next(&mut self) -> Result<(Vec<Event>, i64), EtcdError> {
        loop {
            let (events, revision) = self.next_message().await?;
            if !events.is_empty() {
                return Ok((events, revision));
            }
        }
    }

    /// The next message: its events and revision. A progress answer (see
    /// [`WatchStream::request_progress`]) has no events: every change up to its revision has
    /// been sent.
    pub async fn next_message(&mut self) -> Result<(Vec<Event>, i64), EtcdError> {
        const OP: &str = "watch";
        let resp = next_on(&mut self.stream, OP, "the watch's endpoint").await?;
        if resp.canceled {
            return Err(EtcdError::Protocol {
                op: OP,
                reason: format!(
                    "canceled by etcd (compact revision {}): {}",
                    resp.compact_revision, resp.cancel_reason
                ),
            });
        }
        let revision = resp.header.map(|h| h.revision).unwrap_or(0);
        Ok((resp.events, revision))
    }

    /// Asks etcd for a progress answer on this watch: a message with the current revision
    /// and no events once every change before it has been sent.
    pub async fn request_progress(&self) -> Result<(), EtcdError> {
        self.requests
            .send(WatchRequest {
                request_union: Some(RequestUnion::ProgressRequest(
                    crate::pb::etcdserverpb::WatchProgressRequest {},
                )),
            })
            .await
            .map_err(|_| EtcdError::StreamEnded { op: "watch" })
    }
}

/// The next message of a response stream of `op`: an error when the stream fails or ends.
async fn next_on<T>(
    stream: &mut Streaming<T>,
    op: &'static str,
    endpoint: &str,
) -> Result<T, EtcdError> {
    stream
        .message()
        .await
        .map_err(|status| EtcdError::Rpc {
            op,
            endpoint: endpoint.to_owned(),
            status: Box::new(status),
        })?
        .ok_or(EtcdError::StreamEnded { op })
}

/// A lease's keepalive stream.
#[derive(Debug)]
pub struct KeepAlive {
    client: Client,
    id: i64,
    stream: Option<(
        mpsc::Sender<LeaseKeepAliveRequest>,
        Streaming<LeaseKeepAliveResponse>,
    )>,
}

impl KeepAlive {
    /// Refreshes the lease once and returns its time to live as etcd confirmed it: `None` when
    /// the lease is gone (expired or revoked). Opens the stream (again) when it is not open;
    /// bounded by the request timeout. After an error the next call opens a new stream.
    pub async fn keep_alive(&mut self) -> Result<Option<Duration>, EtcdError> {
        const OP: &str = "lease keepalive";
        let timeout = self.client.request_timeout;
        let result = tokio::time::timeout(timeout, self.exchange()).await;
        let result = match result {
            Ok(r) => r,
            Err(_) => Err(EtcdError::Timeout {
                op: OP,
                endpoint: "the keepalive's endpoint".into(),
                after: timeout,
            }),
        };
        if result.is_err() {
            self.stream = None;
        }
        result
    }

    async fn exchange(&mut self) -> Result<Option<Duration>, EtcdError> {
        const OP: &str = "lease keepalive";
        let req = LeaseKeepAliveRequest { id: self.id };
        if self.stream.is_none() {
            let stream = self
                .client
                .call(OP, |c| async move {
                    let (tx, rx) = mpsc::channel(4);
                    // etcd sends the response headers with its first answer: the request is
                    // queued before the call so the call can complete.
                    tx.send(req).await.map_err(|_| {
                        Status::unavailable("the keepalive's request stream closed")
                    })?;
                    let stream = LeaseClient::new(c)
                        .lease_keep_alive(ReceiverStream::new(rx))
                        .await?
                        .into_inner();
                    Ok(tonic::Response::new((tx, stream)))
                })
                .await?;
            self.stream = Some(stream);
        } else if let Some((tx, _)) = &self.stream {
            tx.send(req)
                .await
                .map_err(|_| EtcdError::StreamEnded { op: OP })?;
        }
        let Some((_, stream)) = self.stream.as_mut() else {
            return Err(EtcdError::StreamEnded { op: OP });
        };
        let resp = next_on(stream, OP, "the keepalive's endpoint").await?;
        if resp.id != self.id {
            return Err(EtcdError::Protocol {
                op: OP,
                reason: format!("answered for lease {} instead of {}", resp.id, self.id),
            });
        }
        Ok(ttl_from_wire(resp.ttl))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unreachable_and_closed_endpoints_fail_over_and_refusals_do_not() {
        assert!(fails_over(Code::Unavailable));
        assert!(fails_over(Code::Cancelled));
        assert!(!fails_over(Code::PermissionDenied));
        assert!(!fails_over(Code::InvalidArgument));
    }

    #[test]
    fn the_next_page_starts_just_after_the_last_key() {
        assert_eq!(
            next_page_start(b"/p/runs/run-9"),
            b"/p/runs/run-9\0".to_vec()
        );
        assert!(next_page_start(b"a").as_slice() > b"a".as_slice());
        assert!(next_page_start(b"a").as_slice() < b"a\x01".as_slice());
    }

    #[test]
    fn a_ttl_from_the_wire_is_none_unless_positive() {
        assert_eq!(ttl_from_wire(5), Some(Duration::from_secs(5)));
        assert_eq!(ttl_from_wire(0), None);
        assert_eq!(ttl_from_wire(-1), None);
        assert_eq!(ttl_from_wire(i64::MIN), None);
    }

    #[test]
    fn options_that_cannot_work_are_refused_before_any_call() {
        let opts = |endpoints: Vec<&str>, tls| EtcdOptions {
            endpoints: endpoints.into_iter().map(String::from).collect(),
            prefix: "/p".into(),
            tls,
            dial_timeout: Duration::from_secs(1),
            request_timeout: Duration::from_secs(1),
        };
        assert!(matches!(
            Client::new(&opts(vec![], None)),
            Err(EtcdError::NoEndpoints)
        ));
        assert!(matches!(
            Client::new(&opts(vec!["127.0.0.1:2379"], None)),
            Err(EtcdError::Endpoint { .. })
        ));
        let cert_only = EtcdTls {
            ca: None,
            cert: Some("/nonexistent/cert.pem".into()),
            key: None,
        };
        assert!(matches!(
            Client::new(&opts(vec!["https://127.0.0.1:2379"], Some(cert_only))),
            Err(EtcdError::TlsFile { .. }) | Err(EtcdError::Tls(_))
        ));
    }
}
