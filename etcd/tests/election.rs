//! The client and the election against a real etcd (see `snapgate_etcd::testing`).

use std::time::Duration;

use snapgate_etcd::{
    Client, Elector,
    pb::etcdserverpb::{PutRequest, RequestOp, TxnRequest, request_op::Request},
    testing::EtcdServer,
};

/// etcd's smallest lease (it raises shorter ones to about 2 s with its default timings).
const TTL: Duration = Duration::from_secs(2);

/// The longest any awaited event may take here: several ttls.
const EVENT_WITHIN: Duration = Duration::from_secs(20);

async fn within<T>(what: &str, f: impl Future<Output = T>) -> T {
    tokio::time::timeout(EVENT_WITHIN, f)
        .await
        .unwrap_or_else(|_| panic!("{what} did not happen within {EVENT_WITHIN:?}"))
}

#[tokio::test]
async fn a_prefix_of_many_keys_is_read_in_pages_in_key_order() {
    let etcd = EtcdServer::start().await;
    let client = Client::new(&etcd.options("/p")).unwrap();
    for i in 0..2_500u32 {
        client
            .put(format!("/p/k/{i:05}").as_bytes(), b"v", 0)
            .await
            .unwrap();
    }
    client.put(b"/p/l", b"outside", 0).await.unwrap();
    let range = client.range_prefix(b"/p/k/", 1000).await.unwrap();
    assert_eq!(range.kvs.len(), 2_500);
    assert!(range.kvs.windows(2).all(|w| w[0].key < w[1].key));
    assert!(range.revision > 0);
    // A page size that divides the count exactly ends on an empty last page.
    assert_eq!(
        client.range_prefix(b"/p/k/", 500).await.unwrap().kvs.len(),
        2_500
    );
    assert!(
        client
            .range_prefix(b"/p/none/", 10)
            .await
            .unwrap()
            .kvs
            .is_empty()
    );
}

#[tokio::test]
async fn one_of_two_electors_wins_and_the_other_only_after_it_resigns() {
    let etcd = EtcdServer::start().await;
    let opts = etcd.options("/snapgate");
    let a = Elector::connect(&opts, "a".into(), TTL).await.unwrap();
    let b = Elector::connect(&opts, "b".into(), TTL).await.unwrap();
    let lead_a = within("a's campaign", a.campaign()).await.unwrap();
    assert_eq!(lead_a.fence.key, "/snapgate/leader");
    let mut seen = b.leader();
    within(
        "b seeing a lead",
        seen.wait_for(|l| l.as_deref() == Some("a")),
    )
    .await
    .unwrap();

    let mut b_campaign = Box::pin(b.campaign());
    // A non-event: b must not win while a holds the key and refreshes its lease. Waiting
    // longer than two ttls shows the lease is kept alive.
    assert!(
        tokio::time::timeout(TTL * 2 + TTL / 2, &mut b_campaign)
            .await
            .is_err(),
        "b won while a led"
    );
    assert!(!*lead_a.lost().borrow(), "a still leads");
    let a_fence = lead_a.fence.clone();
    lead_a.resign().await.unwrap();
    let lead_b = within("b's campaign after a resigned", b_campaign)
        .await
        .unwrap();
    assert!(lead_b.fence.revision > a_fence.revision);
    within(
        "a seeing b lead",
        a.leader().wait_for(|l| l.as_deref() == Some("b")),
    )
    .await
    .unwrap();

    // a's fence no longer passes: a write guarded by it is refused.
    let client = Client::new(&opts).unwrap();
    let resp = client
        .txn(TxnRequest {
            compare: vec![a_fence.compare()],
            success: vec![RequestOp {
                request: Some(Request::RequestPut(PutRequest {
                    key: b"/snapgate/meta/next_run".to_vec(),
                    value: b"7".to_vec(),
                    ..Default::default()
                })),
            }],
            failure: vec![],
        })
        .await
        .unwrap();
    assert!(!resp.succeeded);
    assert!(
        client
            .get(b"/snapgate/meta/next_run")
            .await
            .unwrap()
            .0
            .is_none()
    );
}

#[tokio::test]
async fn a_leader_whose_lease_expires_is_replaced() {
    let etcd = EtcdServer::start().await;
    let opts = etcd.options("/snapgate");
    let a = Elector::connect(&opts, "a".into(), TTL).await.unwrap();
    let b = Elector::connect(&opts, "b".into(), TTL).await.unwrap();
    let lead_a = within("a's campaign", a.campaign()).await.unwrap();
    // a's process stops refreshing (its tenure task ends with it); the key goes with the lease.
    drop(lead_a);
    let lead_b = within("b's campaign after a's lease expired", b.campaign())
        .await
        .unwrap();
    assert!(!*lead_b.lost().borrow());
}

#[tokio::test]
async fn leadership_is_lost_when_etcd_is_gone_longer_than_the_ttl() {
    let mut etcd = EtcdServer::start().await;
    let opts = etcd.options("/snapgate");
    let a = Elector::connect(&opts, "a".into(), TTL).await.unwrap();
    let lead = within("a's campaign", a.campaign()).await.unwrap();
    let mut lost = lead.lost();
    assert!(!*lost.borrow());
    let killed = tokio::time::Instant::now();
    etcd.kill();
    within("lost after etcd was killed", lost.wait_for(|l| *l))
        .await
        .unwrap();
    // Before the lease could have expired at etcd (ttl after the last refresh, which was sent
    // at most ttl/3 before the kill).
    assert!(
        killed.elapsed() < TTL,
        "lost only after {:?}",
        killed.elapsed()
    );
}

#[tokio::test]
async fn calls_fail_over_to_the_next_endpoint_when_one_is_unreachable() {
    let etcd = EtcdServer::start().await;
    // A loopback port nothing listens on: connections are refused at once.
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dead_endpoint = format!("http://{}", dead.local_addr().unwrap());
    drop(dead);
    let mut opts = etcd.options("/p");
    opts.endpoints = vec![dead_endpoint, etcd.endpoint()];
    let client = Client::new(&opts).unwrap();
    client.put(b"/p/k", b"v", 0).await.unwrap();
    assert_eq!(client.get(b"/p/k").await.unwrap().0.unwrap().value, b"v");
    let mut watch = client.watch_key(b"/p/", true, 0).await.unwrap();
    client.put(b"/p/w", b"1", 0).await.unwrap();
    let (events, _) = within("the watched put", watch.next()).await.unwrap();
    assert_eq!(events[0].kv.as_ref().unwrap().key, b"/p/w");
}

#[test]
fn without_an_etcd_binary_the_tests_fail_saying_how_to_build_one() {
    let err = snapgate_etcd::testing::locate_etcd(None, None, None).unwrap_err();
    assert!(err.contains("./scripts/cluster build-etcd"), "{err}");
    let err = snapgate_etcd::testing::locate_etcd(Some("/nonexistent/etcd".into()), None, None)
        .unwrap_err();
    assert!(err.contains("SNAPGATE_ETCD=/nonexistent/etcd"), "{err}");
}

#[tokio::test]
async fn leadership_is_lost_when_someone_else_deletes_or_overwrites_the_key() {
    let etcd = EtcdServer::start().await;
    let opts = etcd.options("/snapgate");
    let client = Client::new(&opts).unwrap();
    let a = Elector::connect(&opts, "a".into(), TTL).await.unwrap();

    let lead = within("a's campaign", a.campaign()).await.unwrap();
    client.delete_prefix(b"/snapgate/leader").await.unwrap();
    within(
        "lost after the key's deletion",
        lead.lost().wait_for(|l| *l),
    )
    .await
    .unwrap();
    drop(lead);

    let lead = within("a's second campaign", a.campaign()).await.unwrap();
    client
        .put(b"/snapgate/leader", b"intruder", 0)
        .await
        .unwrap();
    within(
        "lost after the key's overwrite",
        lead.lost().wait_for(|l| *l),
    )
    .await
    .unwrap();
}

#[tokio::test]
async fn a_client_reaches_etcd_over_mutual_tls_and_without_its_certificate_is_refused() {
    // The repository's test-only TLS material (sdk/tests/data/tls/README.md).
    let data = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../sdk/tests/data/tls");
    let client_tls = snapgate_etcd::EtcdTls {
        ca: Some(data.join("ca.pem")),
        cert: Some(data.join("client.pem")),
        key: Some(data.join("client.key")),
    };
    let etcd = EtcdServer::start_with(Some(snapgate_etcd::testing::EtcdServerTls {
        cert: data.join("server.pem"),
        key: data.join("server.key"),
        client_ca: Some(data.join("client-ca.pem")),
        client: client_tls.clone(),
    }))
    .await;
    let opts = etcd.options("/p");
    assert!(opts.endpoints[0].starts_with("https://"));
    let client = Client::new(&opts).unwrap();
    client.put(b"/p/k", b"v", 0).await.unwrap();
    let a = Elector::connect(&opts, "a".into(), TTL).await.unwrap();
    within("a's campaign over TLS", a.campaign()).await.unwrap();

    let mut no_cert = opts.clone();
    no_cert.tls = Some(snapgate_etcd::EtcdTls {
        cert: None,
        key: None,
        ..client_tls
    });
    let err = Client::new(&no_cert)
        .unwrap()
        .get(b"/p/k")
        .await
        .unwrap_err();
    eprintln!("without a client certificate: {err}");
    // etcd closes the connection during the handshake: the call fails with its status.
    assert!(err.status().is_some(), "{err}");
    let mut http = opts.clone();
    http.endpoints = vec![etcd.endpoint().replace("https://", "http://")];
    assert!(matches!(
        Client::new(&http),
        Err(snapgate_etcd::EtcdError::Endpoint { .. })
    ));
}
