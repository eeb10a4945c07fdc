//! One leader among replicas.
//!
//! A scheduler on the embedded store is the only one and always leads. Schedulers sharing an
//! etcd store elect one leader (see `store::etcd` and the `snapgate-etcd` crate): until this
//! replica is elected it fires nothing and writes nothing. It serves reads from a copy of the
//! leader's commits (see `follower`) and refuses every other `snapgate.v1` call with
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

use crate::{follower::Feed, store::Store};

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
    /// Where this replica reads the leader's commits while it follows, to serve reads;
    /// `None`: it serves none.
    pub feed: Option<Box<dyn Feed>>,
}

/// The calls a follower serves from its copy of the leader's commits.
pub const FOLLOWER_READS: [&str; 6] = [
    "snapgate.v1.SourceService/GetSource",
    "snapgate.v1.SourceService/ListSources",
    "snapgate.v1.SourceService/ListRuns",
    "snapgate.v1.SourceService/PreviewSchedule",
    "snapgate.v1.SourceService/ListQuarantined",
    "snapgate.v1.TriggerService/GetCopyStatus",
];

/// Whether the services of this process may serve: checked by the interceptor of every
/// `snapgate.v1` call before it reaches the driver.
#[derive(Clone)]
pub struct Gate {
    leading: Arc<AtomicBool>,
    /// A follower has a copy of the leader's commits to read from.
    reads: Arc<AtomicBool>,
    leader: Option<watch::Receiver<Option<String>>>,
}

impl Gate {
    /// The gate of a scheduler that is the only one: always open.
    pub fn single() -> Self {
        Self {
            leading: Arc::new(AtomicBool::new(true)),
            reads: Arc::new(AtomicBool::new(false)),
            leader: None,
        }
    }

    /// The gate of a replica: closed until [`Gate::open`].
    pub(crate) fn follower(leader: watch::Receiver<Option<String>>) -> Self {
        Self {
            leading: Arc::new(AtomicBool::new(false)),
            reads: Arc::new(AtomicBool::new(false)),
            leader: Some(leader),
        }
    }

    /// Opens the gate: this replica leads and its driver is running.
    pub(crate) fn open(&self) {
        self.leading.store(true, Ordering::SeqCst);
    }

    /// Closes the gate: the tenure is over (or the driver died), and no read is served either:
    /// the process is on its way out.
    pub(crate) fn close(&self) {
        self.leading.store(false, Ordering::SeqCst);
        self.reads.store(false, Ordering::SeqCst);
    }

    /// Lets a follower's reads through (`true`: it has a copy to serve them from) or not.
    pub(crate) fn set_reads(&self, serving: bool) {
        self.reads.store(serving, Ordering::SeqCst);
    }

    /// `Ok` when this process leads, or when `rpc` (`package.Service/Method`, as `identity::RpcName` has it) is one of
    /// [`FOLLOWER_READS`] and this follower has a copy to serve it from; else `UNAVAILABLE`
    /// naming the leader it last saw.
    pub fn check(&self, rpc: &str) -> Result<(), Status> {
        if self.leading.load(Ordering::SeqCst)
            || (self.reads.load(Ordering::SeqCst) && FOLLOWER_READS.contains(&rpc))
        {
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
pub(crate) fn not_leader(leader: Option<&str>) -> Status {
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

    const APPLY: &str = "snapgate.v1.SourceService/ApplySource";

    #[test]
    fn a_single_scheduler_always_serves() {
        assert!(Gate::single().check(APPLY).is_ok());
    }

    #[test]
    fn a_follower_refuses_with_unavailable_naming_the_leader_until_it_is_opened() {
        let (tx, rx) = watch::channel(None);
        let gate = Gate::follower(rx);
        let refused = gate.check(APPLY).unwrap_err();
        assert_eq!(refused.code(), Code::Unavailable);
        assert!(refused.message().contains("no leader is elected yet"));
        assert!(refused.metadata().get(LEADER_METADATA).is_none());

        tx.send_replace(Some("scheduler-1 (10.0.0.7:50051)".into()));
        let refused = gate.check(APPLY).unwrap_err();
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
        assert!(gate.check(APPLY).is_ok());
        gate.set_reads(true);
        gate.close();
        assert_eq!(gate.check(APPLY).unwrap_err().code(), Code::Unavailable);
        assert_eq!(
            gate.check(FOLLOWER_READS[0]).unwrap_err().code(),
            Code::Unavailable,
            "a closed gate serves no read either"
        );
    }

    #[test]
    fn a_follower_with_a_copy_lets_the_reads_through_and_refuses_the_rest() {
        let (_tx, rx) = watch::channel(Some("scheduler-1".to_owned()));
        let gate = Gate::follower(rx);
        let get = "snapgate.v1.SourceService/GetSource";
        assert_eq!(gate.check(get).unwrap_err().code(), Code::Unavailable);
        gate.set_reads(true);
        for read in FOLLOWER_READS {
            assert!(gate.check(read).is_ok(), "{read}");
        }
        for other in [
            APPLY,
            "snapgate.v1.TriggerService/Trigger",
            "snapgate.v1.TriggerService/WatchCopy",
            "snapgate.v1.AgentService/Connect",
            "",
        ] {
            let refused = gate.check(other).unwrap_err();
            assert_eq!(refused.code(), Code::Unavailable, "{other}");
            assert!(refused.message().contains("the leader is scheduler-1"));
        }
        gate.set_reads(false);
        assert_eq!(gate.check(get).unwrap_err().code(), Code::Unavailable);
    }
}
