//! Nothing left behind: deleting a source removes everything snapgate made for it, its
//! restic cache PVC (unless `restic.keepCache`) and its mover ServiceAccount, through the
//! scheduler's Retire and the agent's Retired; an agent that was away does it when it is back;
//! and an object of the same name that snapgate did not make is never taken over or deleted.

use std::time::Duration;

use k8s_openapi::{
    api::core::v1::{PersistentVolumeClaim, ServiceAccount},
    apimachinery::pkg::apis::meta::v1::ObjectMeta,
};
use snapgate_e2e::{eventually_async, *};
use snapgate_proto::v1::{self, CopyMethod};

const CACHE: &str = "volsync-src-db-cache";
const ACCOUNT: &str = "volsync-src-db";

fn exists<K>(w: &World, name: &str) -> bool
where
    K: kube::Resource<DynamicType = ()> + serde::de::DeserializeOwned,
{
    w.sim.get::<K>(Some(NS), name).is_ok()
}

/// A restic source of `PVC`, one ungated run done: its cache PVC and mover ServiceAccount are
/// there.
async fn one_run(keep_cache: bool) -> World {
    let mut w = World::start().await;
    w.create_pvc(false);
    let mut spec = restic_spec(CopyMethod::Clone, Duration::from_secs(60));
    spec.restic.as_mut().unwrap().keep_cache = keep_cache;
    w.apply(SOURCE, spec).await;
    w.wait_successful_runs(SOURCE, 1).await;
    assert!(exists::<PersistentVolumeClaim>(&w, CACHE));
    assert!(exists::<ServiceAccount>(&w, ACCOUNT));
    w
}

#[tokio::test]
async fn deleting_a_source_removes_its_cache_and_its_mover_account() {
    let mut w = one_run(false).await;
    w.delete_source(SOURCE).await;
    eventually(
        "the cache PVC and the mover ServiceAccount are deleted",
        || {
            (!exists::<PersistentVolumeClaim>(&w, CACHE) && !exists::<ServiceAccount>(&w, ACCOUNT))
                .then_some(())
        },
    )
    .await;
    assert!(
        exists::<PersistentVolumeClaim>(&w, PVC),
        "the source PVC stays"
    );
    // The scheduler forgot the source once the agent answered: it can be made anew.
    let status = w
        .sources
        .get_source(v1::GetSourceRequest {
            namespace: NS.into(),
            name: SOURCE.into(),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::NotFound);
}

#[tokio::test]
async fn a_source_that_keeps_its_cache_leaves_only_the_cache() {
    let mut w = one_run(true).await;
    w.delete_source(SOURCE).await;
    eventually("the mover ServiceAccount is deleted", || {
        (!exists::<ServiceAccount>(&w, ACCOUNT)).then_some(())
    })
    .await;
    assert!(
        exists::<PersistentVolumeClaim>(&w, CACHE),
        "keepCache: the cache stays"
    );
}

#[tokio::test]
async fn a_source_deleted_while_its_agent_is_away_is_cleaned_up_when_it_is_back() {
    let mut w = one_run(false).await;
    w.stop_agent().await;
    w.delete_source(SOURCE).await;
    // Nobody acts while the agent is away: the objects are there until it is back.
    assert!(exists::<PersistentVolumeClaim>(&w, CACHE));
    assert!(exists::<ServiceAccount>(&w, ACCOUNT));
    w.start_agent();
    eventually("the returning agent removes them", || {
        (!exists::<PersistentVolumeClaim>(&w, CACHE) && !exists::<ServiceAccount>(&w, ACCOUNT))
            .then_some(())
    })
    .await;
}

#[tokio::test]
async fn a_same_named_service_account_snapgate_did_not_make_is_neither_used_nor_deleted() {
    let mut w = World::start().await;
    // VolSync's, say, during a migration.
    w.sim
        .create(&ServiceAccount {
            metadata: ObjectMeta {
                name: Some(ACCOUNT.into()),
                namespace: Some(NS.into()),
                ..Default::default()
            },
            ..Default::default()
        })
        .unwrap();
    w.create_pvc(false);
    w.apply(
        SOURCE,
        restic_spec(CopyMethod::Clone, Duration::from_secs(60)),
    )
    .await;
    let run = w
        .run_when(SOURCE, "says the account is taken", |r| {
            r.message.starts_with("MoverAccountTaken: ")
        })
        .await;
    assert!(run.message.contains(ACCOUNT), "{}", run.message);
    assert!(
        w.jobs().is_empty(),
        "no mover Job runs as someone else's account"
    );
    let sa: ServiceAccount = w.sim.get(Some(NS), ACCOUNT).unwrap();
    assert!(sa.metadata.labels.is_none(), "not taken over: {sa:?}");
    // Deleting the source leaves it alone too.
    w.delete_source(SOURCE).await;
    eventually("the source is retired", || {
        (!exists::<PersistentVolumeClaim>(&w, CACHE)).then_some(())
    })
    .await;
    assert!(exists::<ServiceAccount>(&w, ACCOUNT));
}

#[tokio::test]
async fn the_sources_of_a_deleted_namespace_are_deleted_with_it_not_left_waiting() {
    let mut w = World::start().await;
    w.create_pvc(true);
    w.apply(
        SOURCE,
        restic_spec(CopyMethod::Snapshot, Duration::from_secs(600)),
    )
    .await;
    w.wait_copy_status("WaitingForTrigger").await;
    // As `kubectl delete namespace app` does (the simulator removes what it holds at once).
    w.sim
        .delete::<k8s_openapi::api::core::v1::Namespace>(None, NS)
        .unwrap();
    let gone = eventually_async!("the source is deleted with its namespace", {
        match w
            .sources
            .get_source(v1::GetSourceRequest {
                namespace: NS.into(),
                name: SOURCE.into(),
            })
            .await
        {
            Err(status) if status.code() == tonic::Code::NotFound => Some(status),
            _ => None,
        }
    });
    assert!(gone.message().contains(SOURCE), "{gone:?}");
    let listed = w
        .sources
        .list_sources(v1::ListSourcesRequest {
            namespace: NS.into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(listed.sources.is_empty(), "{listed:?}");
}
