//! Leader election on a lease.
//!
//! ```text
//!   campaign:  grant lease L ─▶ Txn { if create_revision(<prefix>/leader) == 0
//!                                     then put <prefix>/leader = name (lease L)
//!                                     else get <prefix>/leader }
//!              won  ─▶ Leadership { fence: (key, the put's revision) } + tenure task
//!              lost ─▶ revoke L, watch the key until it is deleted, campaign again
//!   tenure:    every ttl/3 a keepalive; `lost` once no confirmation arrived by
//!              (sent time of the last confirmed keepalive + ttl − margin), or the key was
//!              deleted or changed (watch), or the lease is gone
//! ```
//!
//! # Why a deposed leader cannot write
//!
//! The [`Fence`] is the election key's `create_revision` when this replica created it. Every
//! store write is a Txn comparing the key's current `create_revision` with the fence, and etcd
//! applies txns one at a time through raft. The key is re-created (at a higher revision) only
//! after it was deleted (resign) or its lease expired, so once another replica has won, no txn
//! of the old leader passes its compare: it writes nothing, whatever it still believes.
//!
//! `lost` is the fast path: the lease cannot expire at etcd before `ttl` after etcd processed
//! the last refresh, which is after this replica *sent* it; `lost` fires `margin` (ttl / 5)
//! before `sent + ttl`, so a leader that can no longer refresh its lease knows it before any
//! other replica can win, and stops instead of having its writes refused.

use std::time::Duration;

use tokio::{sync::watch, task::JoinHandle, time::Instant};

use crate::{
    Client, EtcdError, EtcdOptions,
    client::KeepAlive,
    pb::{
        etcdserverpb::{
            Compare, DeleteRangeRequest, PutRequest, RangeRequest, RequestOp, TxnRequest,
            compare::{CompareResult, CompareTarget, TargetUnion},
            request_op::Request,
        },
        mvccpb::event::EventType,
    },
};

/// Identifies one leader's tenure: the election key's create_revision when it won.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fence {
    /// The election key, `<prefix>/leader`.
    pub key: String,
    /// Its create_revision when this tenure's replica created it.
    pub revision: i64,
}

impl Fence {
    /// The compare every fenced txn carries: the election key was created at this revision.
    pub fn compare(&self) -> Compare {
        Compare {
            result: CompareResult::Equal as i32,
            target: CompareTarget::Create as i32,
            key: self.key.as_bytes().to_vec(),
            range_end: vec![],
            target_union: Some(TargetUnion::CreateRevision(self.revision)),
        }
    }
}

/// The part of the ttl before the lease's earliest expiry at which a leader counts itself lost.
pub fn safety_margin(ttl: Duration) -> Duration {
    ttl / 5
}

/// When a lease refreshed by a keepalive *sent* at `sent`, for `ttl`, can no longer be trusted:
/// `sent + ttl − margin`; `sent` itself when the arithmetic does not fit (never trusted).
pub fn trusted_until(sent: Instant, ttl: Duration, margin: Duration) -> Instant {
    ttl.checked_sub(margin)
        .and_then(|d| sent.checked_add(d))
        .unwrap_or(sent)
}

/// Aborts a task when dropped.
#[derive(Debug)]
struct Task(JoinHandle<()>);

impl Drop for Task {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// One replica's part in the election.
#[derive(Debug)]
pub struct Elector {
    client: Client,
    key: String,
    name: String,
    ttl: Duration,
    leader: watch::Receiver<Option<String>>,
    _observer: Task,
}

/// The delay before trying again after etcd was unreachable.
fn retry_delay(ttl: Duration) -> Duration {
    (ttl / 3).max(Duration::from_millis(100))
}

impl Elector {
    /// Connects to etcd (checked with one read of the election key) and starts observing the
    /// leader. `name` is what this replica writes as the leader's value; `ttl` its lease's
    /// time to live (etcd may raise it to its minimum, about 2 s by default).
    pub async fn connect(
        opts: &EtcdOptions,
        name: String,
        ttl: Duration,
    ) -> Result<Self, EtcdError> {
        let client = Client::new(opts)?;
        let key = opts.leader_key();
        let (current, revision) = client.get(key.as_bytes()).await?;
        let (tx, leader) = watch::channel(current.map(|kv| value_name(&kv.value)));
        let observer = Task(tokio::spawn(observe_leader(
            client.clone(),
            key.clone(),
            revision,
            tx,
            retry_delay(ttl),
        )));
        Ok(Self {
            client,
            key,
            name,
            ttl,
            leader,
            _observer: observer,
        })
    }

    /// The leader as last observed (its `name`), updated from a watch on the election key;
    /// None when none.
    pub fn leader(&self) -> watch::Receiver<Option<String>> {
        self.leader.clone()
    }

    /// Resolves once this replica holds the election key (campaigns until then: put-if-absent
    /// `<prefix>/leader` = name, attached to its own lease, in a Txn comparing create_revision
    /// == 0; if another holds it, waits (watch) for its deletion and tries again). Transient
    /// etcd failures are logged and retried after ttl/3; other errors are returned.
    pub async fn campaign(&self) -> Result<Leadership, EtcdError> {
        loop {
            match self.try_once().await {
                Ok(Some(leadership)) => return Ok(leadership),
                Ok(None) => {}
                Err(e) if e.is_transient() => {
                    tracing::warn!(error = %e, "etcd unreachable while campaigning; trying again");
                    tokio::time::sleep(retry_delay(self.ttl)).await;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// One attempt: wins, or waits until the holder's key is gone (then `None`).
    async fn try_once(&self) -> Result<Option<Leadership>, EtcdError> {
        let sent = Instant::now();
        let lease = self.client.lease_grant(self.ttl).await?;
        let key = self.key.as_bytes().to_vec();
        let txn = TxnRequest {
            compare: vec![Compare {
                result: CompareResult::Equal as i32,
                target: CompareTarget::Create as i32,
                key: key.clone(),
                range_end: vec![],
                target_union: Some(TargetUnion::CreateRevision(0)),
            }],
            success: vec![RequestOp {
                request: Some(Request::RequestPut(PutRequest {
                    key: key.clone(),
                    value: self.name.as_bytes().to_vec(),
                    lease: lease.id,
                    ..Default::default()
                })),
            }],
            failure: vec![RequestOp {
                request: Some(Request::RequestRange(RangeRequest {
                    key: key.clone(),
                    ..Default::default()
                })),
            }],
        };
        let resp = match self.client.txn(txn).await {
            Ok(r) => r,
            Err(e) => {
                self.revoke_quietly(lease.id).await;
                return Err(e);
            }
        };
        let revision = resp.header.map(|h| h.revision).unwrap_or(0);
        if resp.succeeded {
            if revision <= 0 {
                self.revoke_quietly(lease.id).await;
                return Err(EtcdError::Protocol {
                    op: "campaign",
                    reason: format!("the winning txn answered revision {revision}"),
                });
            }
            let fence = Fence {
                key: self.key.clone(),
                revision,
            };
            tracing::info!(name = %self.name, revision, "won the election");
            return Ok(Some(Leadership::start(
                self.client.clone(),
                fence,
                lease.id,
                lease.ttl,
                sent,
            )));
        }
        self.revoke_quietly(lease.id).await;
        // Someone holds the key: wait for its deletion, watching from just after the txn (a
        // deletion in between is among the watch's first events).
        let deleted = async {
            let mut watch = self
                .client
                .watch_key(&key, false, revision.saturating_add(1))
                .await?;
            loop {
                let (events, _) = watch.next().await?;
                if events.iter().any(|e| e.r#type == EventType::Delete as i32) {
                    return Ok::<(), EtcdError>(());
                }
            }
        };
        if let Err(e) = deleted.await {
            // The watch broke (etcd restarting, the revision compacted): the key's fate is
            // unknown, so campaign again after a pause; the txn tells.
            tracing::warn!(error = %e, "watch of the leader key failed; campaigning again");
            tokio::time::sleep(retry_delay(self.ttl)).await;
        }
        Ok(None)
    }

    async fn revoke_quietly(&self, lease: i64) {
        if let Err(e) = self.client.lease_revoke(lease).await {
            tracing::debug!(lease, error = %e, "could not revoke an unused lease; it expires");
        }
    }
}

fn value_name(value: &[u8]) -> String {
    String::from_utf8_lossy(value).into_owned()
}

/// Keeps `tx` at the election key's value: read, then watch from the read's revision; after an
/// error, read again.
async fn observe_leader(
    client: Client,
    key: String,
    mut revision: i64,
    tx: watch::Sender<Option<String>>,
    retry: Duration,
) {
    loop {
        let result: Result<std::convert::Infallible, EtcdError> = async {
            let mut watch = client
                .watch_key(key.as_bytes(), false, revision.saturating_add(1))
                .await?;
            loop {
                let (events, rev) = watch.next().await?;
                revision = rev.max(revision);
                for e in events {
                    let leader = match EventType::try_from(e.r#type) {
                        Ok(EventType::Put) => e.kv.map(|kv| value_name(&kv.value)),
                        _ => None,
                    };
                    tx.send_replace(leader);
                }
            }
        }
        .await;
        let Err(e) = result;
        tracing::debug!(error = %e, "leader watch failed; reading the key again");
        tokio::time::sleep(retry).await;
        match client.get(key.as_bytes()).await {
            Ok((kv, rev)) => {
                revision = rev;
                tx.send_replace(kv.map(|kv| value_name(&kv.value)));
            }
            Err(e) => tracing::debug!(error = %e, "could not read the leader key"),
        }
    }
}

/// This replica's tenure as leader. Dropping it stops the keepalive: the election key then goes
/// with the lease, up to ttl later; [`Leadership::resign`] hands over at once.
#[derive(Debug)]
pub struct Leadership {
    /// Identifies this tenure; every store write is fenced by it.
    pub fence: Fence,
    client: Client,
    lease: i64,
    lost: watch::Receiver<bool>,
    lost_tx: watch::Sender<bool>,
    _tenure: Task,
}

impl Leadership {
    fn start(client: Client, fence: Fence, lease: i64, ttl: Duration, sent: Instant) -> Self {
        let (lost_tx, lost) = watch::channel(false);
        let tenure = Task(tokio::spawn(tenure(
            client.clone(),
            fence.clone(),
            client.lease_keepalive(lease),
            ttl,
            sent,
            lost_tx.clone(),
        )));
        Self {
            fence,
            client,
            lease,
            lost,
            lost_tx,
            _tenure: tenure,
        }
    }

    /// Becomes true once leadership is lost or can no longer be trusted: the lease's keepalive
    /// was not confirmed within `ttl` measured from the last confirmation's *sent time* minus a
    /// safety margin (ttl / 5; so the old leader knows it lost before the lease can have expired
    /// at etcd), the key was deleted or changed (watch), or the lease is gone. Only the fast
    /// path: the fence is what keeps a deposed leader from writing.
    pub fn lost(&self) -> watch::Receiver<bool> {
        self.lost.clone()
    }

    /// Deletes the key (guarded by the fence) and revokes the lease: a clean handover.
    pub async fn resign(self) -> Result<(), EtcdError> {
        self.lost_tx.send_replace(true);
        let key = self.fence.key.as_bytes().to_vec();
        self.client
            .txn(TxnRequest {
                compare: vec![self.fence.compare()],
                success: vec![RequestOp {
                    request: Some(Request::RequestDeleteRange(DeleteRangeRequest {
                        key,
                        ..Default::default()
                    })),
                }],
                failure: vec![],
            })
            .await?;
        self.client.lease_revoke(self.lease).await
    }
}

/// Keeps the lease alive every ttl/3 and watches the election key; sets `lost` when either
/// says this tenure is over, then ends.
async fn tenure(
    client: Client,
    fence: Fence,
    mut keepalive: KeepAlive,
    ttl: Duration,
    sent: Instant,
    lost: watch::Sender<bool>,
) {
    let margin = safety_margin(ttl);
    let mut deadline = trusted_until(sent, ttl, margin);
    let mut tick = tokio::time::interval((ttl / 3).max(Duration::from_millis(100)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let key = fence.key.as_bytes().to_vec();
    // Events after the key's creation: a deletion or re-creation ends the tenure.
    let mut watched = fence.revision;
    let mut watch = client
        .watch_key(&key, false, watched.saturating_add(1))
        .await
        .ok();
    let reason = loop {
        tokio::select! {
            _ = tokio::time::sleep_until(deadline) => {
                break "the lease was not refreshed in time";
            }
            _ = tick.tick() => {
                let sent = Instant::now();
                // A refresh later than the deadline cannot extend trust already gone.
                match tokio::time::timeout_at(deadline, keepalive.keep_alive()).await {
                    Ok(Ok(Some(granted))) => {
                        deadline = deadline.max(trusted_until(sent, granted.min(ttl), margin));
                    }
                    Ok(Ok(None)) => break "the lease is gone at etcd",
                    Ok(Err(e)) => tracing::warn!(error = %e, "lease keepalive failed"),
                    Err(_) => break "the lease was not refreshed in time",
                }
                if watch.is_none() {
                    // Bounded by the deadline too: the loop must be free to see it pass.
                    let reopen = client.watch_key(&key, false, watched.saturating_add(1));
                    watch = tokio::time::timeout_at(deadline, reopen).await.ok().and_then(Result::ok);
                }
            }
            event = async {
                match watch.as_mut() {
                    Some(w) => w.next().await,
                    None => std::future::pending().await,
                }
            } => match event {
                Ok((events, revision)) => {
                    watched = watched.max(revision);
                    // The watch starts after this tenure's own put, and a tenure never writes
                    // its key again: any event is someone else deleting, re-creating or
                    // overwriting it (an overwrite may detach it from the lease).
                    if let Some(e) = events.first() {
                        tracing::warn!(kind = e.r#type, "the election key changed under this leader");
                        break "the election key was deleted or changed";
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "election key watch failed; reopening");
                    // A compacted start revision cannot be watched again: the key's fate
                    // in between is unknown.
                    if matches!(e, EtcdError::Protocol { .. }) {
                        break "the election key's watch was canceled";
                    }
                    watch = None;
                }
            }
        }
    };
    tracing::warn!(revision = fence.revision, reason, "leadership lost");
    lost.send_replace(true);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The scheduler spawns these: they must be `Send` (a compile-time check).
    #[allow(dead_code)]
    fn campaign_and_resign_can_be_spawned(e: &'static Elector, l: Leadership) {
        fn send<T: Send + Sync>(_: &T) {}
        send(e);
        send(&l);
        drop(tokio::spawn(e.campaign()));
        drop(tokio::spawn(l.resign()));
    }

    #[test]
    fn trust_ends_a_margin_before_the_earliest_expiry() {
        let sent = Instant::now();
        let ttl = Duration::from_secs(10);
        assert_eq!(
            trusted_until(sent, ttl, safety_margin(ttl)),
            sent + Duration::from_secs(8)
        );
        // A margin larger than the ttl: never trusted past the send.
        assert_eq!(trusted_until(sent, ttl, Duration::from_secs(11)), sent);
        // A ttl that overflows the clock: never trusted past the send.
        assert_eq!(trusted_until(sent, Duration::MAX, Duration::ZERO), sent);
    }

    #[test]
    fn a_fence_compares_the_election_keys_create_revision() {
        let f = Fence {
            key: "/p/leader".into(),
            revision: 42,
        };
        let c = f.compare();
        assert_eq!(c.key, b"/p/leader");
        assert_eq!(c.target, CompareTarget::Create as i32);
        assert_eq!(c.result, CompareResult::Equal as i32);
        assert_eq!(c.target_union, Some(TargetUnion::CreateRevision(42)));
    }
}
