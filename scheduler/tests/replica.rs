//! A replica of a scheduler sharing its store with others: refused until elected, serving
//! once elected, out (with an error, so it restarts as a follower) when its tenure is lost,
//! and resigning on a clean stop. The election itself (etcd) is tested in `store::etcd` and
//! the failover suite; here it is a stand-in the test drives.

mod support;

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use futures::StreamExt as _;
use snapgate_proto::v1;
use snapgate_scheduler::{
    Storage,
    replica::{Elected, LEADER_METADATA, Replica},
    store::RedbStore,
};
use support::Running;
use tokio::sync::{oneshot, watch};
use tonic::Code;
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};

/// The test's side of a stand-in election.
struct Election {
    elect: oneshot::Sender<Elected>,
    leader: watch::Sender<Option<String>>,
    lost: watch::Sender<bool>,
    resigned: Arc<AtomicBool>,
}

fn replica(name: &str) -> (Replica, Election, watch::Receiver<bool>) {
    let (elect, elected) = oneshot::channel::<Elected>();
    let (leader, leader_rx) = watch::channel(None);
    let (lost, lost_rx) = watch::channel(false);
    let replica = Replica {
        name: name.into(),
        elected: Box::pin(async move {
            elected
                .await
                .map_err(|_| anyhow::anyhow!("the stand-in election was dropped"))
        }),
        leader: leader_rx,
        feed: None,
    };
    (
        replica,
        Election {
            elect,
            leader,
            lost,
            resigned: Arc::new(AtomicBool::new(false)),
        },
        lost_rx,
    )
}

impl Election {
    fn win(
        self,
        dir: &std::path::Path,
        lost: watch::Receiver<bool>,
    ) -> (watch::Sender<bool>, Arc<AtomicBool>) {
        let resigned = self.resigned.clone();
        let flag = resigned.clone();
        let elected = Elected {
            store: Box::new(RedbStore::open(dir).unwrap()),
            lost,
            resign: Box::pin(async move { flag.store(true, Ordering::SeqCst) }),
        };
        self.leader.send_replace(Some("this one".into()));
        assert!(self.elect.send(elected).is_ok(), "the replica campaigns");
        (self.lost, resigned)
    }
}

fn list() -> v1::ListSourcesRequest {
    v1::ListSourcesRequest {
        namespace: "apps".into(),
        ..Default::default()
    }
}

/// The statuses a health Watch of `service` reports, as a stream.
async fn health_of(
    s: &Running,
    service: &str,
) -> tonic::Streaming<tonic_health::pb::HealthCheckResponse> {
    HealthClient::new(s.channel.clone())
        .watch(HealthCheckRequest {
            service: service.into(),
        })
        .await
        .unwrap()
        .into_inner()
}

async fn next_status(watch: &mut tonic::Streaming<tonic_health::pb::HealthCheckResponse>) -> i32 {
    tokio::time::timeout(Duration::from_secs(10), watch.next())
        .await
        .expect("a health status")
        .unwrap()
        .unwrap()
        .status
}

/// A replica not yet elected, and the Watch of its readiness, which has said NOT_SERVING.
async fn follower() -> (
    Running,
    Election,
    watch::Receiver<bool>,
    tonic::Streaming<tonic_health::pb::HealthCheckResponse>,
) {
    let (replica, election, lost) = replica("replica-a");
    let s = Running::start_storage(Storage::Replica(replica)).await;
    let mut ready = health_of(&s, "snapgate.v1.SourceService").await;
    assert_eq!(
        next_status(&mut ready).await,
        ServingStatus::NotServing as i32
    );
    (s, election, lost, ready)
}

#[tokio::test]
async fn a_replica_refuses_until_elected_then_serves_then_exits_when_its_tenure_is_lost() {
    let dir = tempfile::tempdir().unwrap();
    // A follower: alive, not ready, every call refused naming the leader it saw.
    let (s, election, lost, mut ready) = follower().await;
    let mut alive = health_of(&s, "").await;
    assert_eq!(next_status(&mut alive).await, ServingStatus::Serving as i32);
    assert_eq!(s.gauge("snapgate_leader"), 0);
    let refused = s.sources().list_sources(list()).await.unwrap_err();
    assert_eq!(refused.code(), Code::Unavailable, "{refused:?}");
    assert!(
        refused.message().contains("no leader is elected yet"),
        "{refused:?}"
    );
    election
        .leader
        .send_replace(Some("replica-b (10.0.0.8:50051)".into()));
    let refused = s.sources().list_sources(list()).await.unwrap_err();
    assert_eq!(refused.code(), Code::Unavailable);
    assert!(
        refused
            .message()
            .contains("the leader is replica-b (10.0.0.8:50051)"),
        "{refused:?}"
    );
    assert_eq!(
        refused.metadata().get(LEADER_METADATA).unwrap(),
        "replica-b (10.0.0.8:50051)"
    );

    // Elected: it loads, reports ready, and serves.
    let (lose, resigned) = election.win(dir.path(), lost);
    assert_eq!(next_status(&mut ready).await, ServingStatus::Serving as i32);
    assert_eq!(s.gauge("snapgate_leader"), 1);
    s.sources().list_sources(list()).await.unwrap();

    // Lost: not ready, the metric says so, and serve ends with an error naming why.
    lose.send_replace(true);
    assert_eq!(
        next_status(&mut ready).await,
        ServingStatus::NotServing as i32
    );
    let exit = tokio::time::timeout(Duration::from_secs(10), s.task)
        .await
        .expect("serve returns once the tenure is lost")
        .unwrap();
    let err = exit.expect_err("an error, so the process restarts as a follower");
    assert!(err.to_string().contains("leadership lost"), "{err}");
    assert!(s.metrics.encode().contains("snapgate_leader 0"));
    assert!(
        !resigned.load(Ordering::SeqCst),
        "a lost tenure has nothing to resign"
    );
}

#[tokio::test]
async fn a_leader_that_stops_cleanly_resigns() {
    let dir = tempfile::tempdir().unwrap();
    let (s, election, lost, mut ready) = follower().await;
    let (_lose, resigned) = election.win(dir.path(), lost);
    assert_eq!(next_status(&mut ready).await, ServingStatus::Serving as i32);
    drop(ready);
    s.stop().await;
    assert!(
        resigned.load(Ordering::SeqCst),
        "a clean stop hands over at once"
    );
}

#[tokio::test]
async fn a_follower_stops_cleanly_without_being_elected() {
    let (s, election, _lost, ready) = follower().await;
    drop(ready);
    s.stop().await;
    drop(election);
}
