//! A small etcd v3 client and leader election on a lease, for schedulers on etcd.
//!
//! ```text
//!   Elector ──campaign──▶ Leadership { fence } ──lost()──▶ watch::Receiver<bool>
//!      │                      │ keepalive task (every ttl/3) + watch of the election key
//!      └──leader()──▶ watch::Receiver<Option<String>>
//!   Client: KV (range_prefix, get, txn), Lease (grant, keepalive, revoke), Watch (watch_key)
//! ```
//!
//! The gRPC code is generated from trimmed copies of etcd v3.7.3's own `rpc.proto` and
//! `kv.proto` (package and field numbers unchanged, so the wire is a real etcd's).
//!
//! # Safety of leadership
//!
//! A deposed leader can never write: every write of a store built on this crate is a Txn whose
//! compare is `create_revision(<prefix>/leader) == fence.revision`, and etcd serialises txns
//! through raft. Once another replica holds the election key (created at a higher revision, after
//! the old key was deleted or its lease expired), the old leader's txns fail their compare and
//! write nothing. [`Leadership::lost`] is only the fast path for stopping: it tells the old leader
//! to stop before its lease can have expired at etcd, so it rarely even tries.

pub mod client;
pub mod election;
#[cfg(feature = "testing")]
pub mod testing;

use std::{path::PathBuf, time::Duration};

pub use client::{Client, KeepAlive, LeaseGrant, Range, WatchStream};
pub use election::{Elector, Fence, Leadership};

/// The generated etcd v3 messages and clients.
pub mod pb {
    /// etcd's `mvccpb`: keys and watch events.
    #[allow(missing_docs, unreachable_pub, clippy::all)]
    pub mod mvccpb {
        tonic::include_proto!("mvccpb");
    }
    /// etcd's `etcdserverpb`: the KV, Watch and Lease services.
    #[allow(missing_docs, unreachable_pub, clippy::all)]
    pub mod etcdserverpb {
        tonic::include_proto!("etcdserverpb");
    }
}

/// The default key prefix.
pub const DEFAULT_PREFIX: &str = "/snapgate";

/// How to reach etcd, and where under it snapgate keeps its keys.
#[derive(Debug, Clone)]
pub struct EtcdOptions {
    /// `http://host:port` or `https://host:port`, tried in order (see [`Client`]).
    pub endpoints: Vec<String>,
    /// The prefix of every key, e.g. `/snapgate` (a trailing `/` is ignored).
    pub prefix: String,
    /// TLS for `https://` endpoints; `None` uses the system's roots and no client certificate.
    pub tls: Option<EtcdTls>,
    /// The longest a connection attempt to one endpoint may take.
    pub dial_timeout: Duration,
    /// The longest one request to one endpoint may take.
    pub request_timeout: Duration,
}

impl EtcdOptions {
    /// The prefix without a trailing `/`.
    pub fn key_prefix(&self) -> &str {
        self.prefix.trim_end_matches('/')
    }

    /// The election key: `<prefix>/leader`.
    pub fn leader_key(&self) -> String {
        format!("{}/leader", self.key_prefix())
    }
}

/// TLS files for etcd's client port.
#[derive(Debug, Clone, Default)]
pub struct EtcdTls {
    /// The CA that signed etcd's server certificate (PEM); `None` uses the system's roots.
    pub ca: Option<PathBuf>,
    /// This client's certificate (PEM), for etcd's `--client-cert-auth`; needs `key`.
    pub cert: Option<PathBuf>,
    /// This client's private key (PEM); needs `cert`.
    pub key: Option<PathBuf>,
}

/// Why an etcd call failed.
#[derive(Debug, thiserror::Error)]
pub enum EtcdError {
    /// No endpoint was given.
    #[error("no etcd endpoints given")]
    NoEndpoints,
    /// An endpoint is not a usable URL.
    #[error("etcd endpoint {endpoint:?}: {reason}")]
    Endpoint {
        /// The endpoint as given.
        endpoint: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A TLS file could not be read.
    #[error("etcd TLS file {}: {source}", path.display())]
    TlsFile {
        /// The file.
        path: PathBuf,
        /// Why it could not be read.
        #[source]
        source: std::io::Error,
    },
    /// The TLS options do not fit together.
    #[error("etcd TLS: {0}")]
    Tls(String),
    /// etcd (or the transport to it) answered with a gRPC error.
    #[error("etcd {op} at {endpoint}: {status}")]
    Rpc {
        /// The call.
        op: &'static str,
        /// The endpoint that answered.
        endpoint: String,
        /// etcd's status, kept whole (code, message, details).
        #[source]
        status: Box<tonic::Status>,
    },
    /// A call got no answer within the request timeout.
    #[error("etcd {op} at {endpoint}: no answer within {after:?}")]
    Timeout {
        /// The call.
        op: &'static str,
        /// The endpoint that did not answer.
        endpoint: String,
        /// The timeout.
        after: Duration,
    },
    /// etcd answered something this client cannot use.
    #[error("etcd {op}: {reason}")]
    Protocol {
        /// The call.
        op: &'static str,
        /// What was wrong with the answer.
        reason: String,
    },
    /// A stream (watch, keepalive) ended.
    #[error("etcd {op}: the stream ended")]
    StreamEnded {
        /// The stream's call.
        op: &'static str,
    },
}

impl EtcdError {
    /// Whether trying again later may succeed: the endpoint was unreachable, slow or
    /// restarting, or a stream ended.
    pub fn is_transient(&self) -> bool {
        match self {
            EtcdError::Rpc { status, .. } => matches!(
                status.code(),
                tonic::Code::Unavailable
                    | tonic::Code::Cancelled
                    | tonic::Code::DeadlineExceeded
                    | tonic::Code::Unknown
                    | tonic::Code::Aborted
                    | tonic::Code::ResourceExhausted
            ),
            EtcdError::Timeout { .. } | EtcdError::StreamEnded { .. } => true,
            _ => false,
        }
    }

    /// The gRPC status etcd answered, if it answered one.
    pub fn status(&self) -> Option<&tonic::Status> {
        match self {
            EtcdError::Rpc { status, .. } => Some(status),
            _ => None,
        }
    }
}

/// The end of the range of every key starting with `prefix` (etcd's `range_end`): `prefix`
/// with its last byte below 0xff incremented and what follows dropped; `\0` (every key) when
/// the prefix is empty or all 0xff.
pub fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if let Some(next) = last.checked_add(1) {
            end.push(next);
            return end;
        }
    }
    vec![0]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_prefix_ends_at_its_last_byte_incremented() {
        assert_eq!(prefix_end(b"/snapgate/runs/"), b"/snapgate/runs0".to_vec());
        assert_eq!(prefix_end(b"a\xff"), b"b".to_vec());
        assert_eq!(prefix_end(b"\xff\xff"), vec![0]);
        assert_eq!(prefix_end(b""), vec![0]);
    }

    #[test]
    fn the_leader_key_ignores_a_trailing_slash() {
        let mut o = EtcdOptions {
            endpoints: vec![],
            prefix: "/snapgate/".into(),
            tls: None,
            dial_timeout: Duration::from_secs(1),
            request_timeout: Duration::from_secs(1),
        };
        assert_eq!(o.leader_key(), "/snapgate/leader");
        o.prefix = "/snapgate".into();
        assert_eq!(o.leader_key(), "/snapgate/leader");
    }

    #[test]
    fn unavailable_and_timeouts_are_transient_and_permission_is_not() {
        let rpc = |code| EtcdError::Rpc {
            op: "txn",
            endpoint: "http://e".into(),
            status: Box::new(tonic::Status::new(code, "x")),
        };
        assert!(rpc(tonic::Code::Unavailable).is_transient());
        assert!(!rpc(tonic::Code::PermissionDenied).is_transient());
        assert!(
            EtcdError::Timeout {
                op: "range",
                endpoint: "http://e".into(),
                after: Duration::from_secs(1)
            }
            .is_transient()
        );
    }
}
