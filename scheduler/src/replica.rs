//! One leader among replicas.
//!
//! A scheduler on the embedded store is the only one and always leads. Schedulers sharing an
//! etcd store elect one leader (see `store::etcd` and the `snapgate-etcd` crate): until this
//! replica is elected it loads nothing, fires nothing and refuses every `snapgate.v1` call with
//! `UNAVAILABLE`, naming the leader it last saw; its health reports the three services
//! `NOT_SERVING`, so a Kubernetes Service whose readiness probe asks for one of them sends
//! traffic to the leader only. Once elected it loads the store, fenced by its tenure (every
//! write compares the election key's revision, so a deposed leader's writes fail), and serves.
//! When the tenure is lost the process stops with an error so that it is restarted as a
//! follower: nothing of the old tenure's memory survives into the next.

use std::{
    future::Future,
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
};

use tokio::sync::watch;
use tonic::Status;

use crate::store::Store;

/// What an elected replica gets: the store fenced by its tenure, and the signal of its end.
pub struct Elected {
    /// The store, every write of which is guarded by this tenure.
    pub store: Box<dyn Store>,
    /// Turns true when the tenure is lost (or can no longer be trusted).
    pub lost: watch::Receiver<bool>,
    /// Ends the tenure on a clean stop, so that a follower takes over at once rather than
    /// when the lease runs out.
    pub resign: Pin<Box<dyn Future<Output = ()> + Send>>,
}

/// A replica's part in an election, as the serve path needs it.
pub struct Replica {
    /// This replica's advertised name (in the log and in followers' refusals).
    pub name: String,
    /// Resolves once this replica is elected.
    pub elected: Pin<Box<dyn Future<Output = anyhow::Result<Elected>> + Send>>,
    /// The leader as last observed: its advertised name, `None` while there is none.
    pub leader: watch::Receiver<Option<String>>,
}

/// Whether the services of this process may serve: checked by the interceptor of every
/// `snapgate.v1` call before it reaches the driver.
#[derive(Clone)]
pub struct Gate {
    leading: Arc<AtomicBool>,
    leader: Option<watch::Receiver<Option<String>>>,
}

impl Gate {
    /// The gate of a scheduler that is the only one: always open.
    pub fn single() -> Self {
        Self {
            leading: Arc::new(AtomicBool::new(true)),
            leader: None,
        }
    }

    /// The gate of a replica: closed until [`Gate::open`].
    pub(crate) fn follower(leader: watch::Receiver<Option<String>>) -> Self {
        Self {
            leading: Arc::new(AtomicBool::new(false)),
            leader: Some(leader),
        }
    }

    /// Opens the gate: this replica leads and its driver is running.
    pub(crate) fn open(&self) {
        self.leading.store(true, Ordering::SeqCst);
    }

    /// Closes the gate: the tenure is over.
    pub(crate) fn close(&self) {
        self.leading.store(false, Ordering::SeqCst);
    }

    /// `Ok` when this process leads, else `UNAVAILABLE` naming the leader it last saw.
    pub fn check(&self) -> Result<(), Status> {
        if self.leading.load(Ordering::SeqCst) {
            return Ok(());
        }
        let leader = self.leader.as_ref().and_then(|rx| rx.borrow().clone());
        Err(not_leader(leader.as_deref()))
    }
}

/// Metadata key of a follower's refusal that names the leader (absent when none is known).
pub const LEADER_METADATA: &str = "snapgate-leader";

/// The refusal of a follower: `UNAVAILABLE` (retry: the caller reaches the leader through the
/// Service, or this replica once it is elected), naming the leader it last saw.
fn not_leader(leader: Option<&str>) -> Status {
    let mut status = match leader {
        Some(name) => Status::unavailable(format!(
            "this scheduler replica is not the leader; the leader is {name}: retry (through the \
             Service in front of the replicas, which routes to the leader)"
        )),
        None => Status::unavailable(
            "this scheduler replica is not the leader and no leader is elected yet: retry shortly",
        ),
    };
    if let Some(value) = leader.and_then(|n| n.parse().ok()) {
        status.metadata_mut().insert(LEADER_METADATA, value);
    }
    status
}

#[cfg(test)]
mod tests {
    use tonic::Code;

    use super::*;

    #[test]
    fn a_single_scheduler_always_serves() {
        assert!(Gate::single().check().is_ok());
    }

    #[test]
    fn a_follower_refuses_with_unavailable_naming_the_leader_until_it_is_opened() {
        let (tx, rx) = watch::channel(None);
        let gate = Gate::follower(rx);
        let refused = gate.check().unwrap_err();
        assert_eq!(refused.code(), Code::Unavailable);
        assert!(refused.message().contains("no leader is elected yet"));
        assert!(refused.metadata().get(LEADER_METADATA).is_none());

        tx.send_replace(Some("scheduler-1 (10.0.0.7:50051)".into()));
        let refused = gate.check().unwrap_err();
        assert_eq!(refused.code(), Code::Unavailable);
        assert!(
            refused
                .message()
                .contains("the leader is scheduler-1 (10.0.0.7:50051)"),
            "{}",
            refused.message()
        );
        assert_eq!(
            refused.metadata().get(LEADER_METADATA).unwrap(),
            "scheduler-1 (10.0.0.7:50051)"
        );

        gate.open();
        assert!(gate.check().is_ok());
        gate.close();
        assert_eq!(gate.check().unwrap_err().code(), Code::Unavailable);
    }
}
