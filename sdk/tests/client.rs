//! The client's connection behaviour: the watch across a scheduler restart, the bearer token on
//! the wire, errors the caller can act on, and the pieces of the handshake used separately.

mod support;

use std::time::Duration;

use futures::StreamExt;
use snapgate_proto::v1::{self, CopyState};
use snapgate_sdk::{Backoff, Client, Error, Outcome, pvc, source};
use support::{Agent, EchoServer, OnCopy, Scheduler, create, restic};
use tokio::net::TcpListener;
use tonic::Code;

fn state(s: &v1::CopyStatus) -> CopyState {
    CopyState::try_from(s.state).unwrap()
}

/// Polls a watch on its own task, as an application would, handing the statuses over.
fn forward(
    mut watch: snapgate_sdk::CopyWatch,
) -> tokio::sync::mpsc::UnboundedReceiver<Result<v1::CopyStatus, Error>> {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Some(item) = watch.next().await {
            if tx.send(item).is_err() {
                return;
            }
        }
    });
    rx
}

async fn next(
    watch: &mut tokio::sync::mpsc::UnboundedReceiver<Result<v1::CopyStatus, Error>>,
) -> v1::CopyStatus {
    tokio::time::timeout(Duration::from_secs(20), watch.recv())
        .await
        .expect("a status within 20s")
        .expect("the watch goes on")
        .expect("no error")
}

#[tokio::test]
async fn the_watch_reconnects_after_a_scheduler_restart_on_the_same_port_and_skips_duplicates() {
    let dir = tempfile::tempdir().unwrap();
    let s = Scheduler::start(dir.path(), 0).await;
    let port = s.port;
    let agent = Agent::start(&s.endpoint(), "apps", OnCopy::Complete).await;
    let client = Client::builder(s.endpoint()).connect_lazy().unwrap();
    let backoff = Backoff {
        max: Duration::from_millis(200),
        ..Backoff::default()
    };
    // The application polls its watch all along (a stream only reconnects while polled).
    let mut watch = forward(client.watch_copy_with(pvc("apps", "data"), backoff));
    assert_eq!(state(&next(&mut watch).await), CopyState::Idle);
    create(&client, "apps", "db", restic("data")).await;

    let mut seen = Vec::new();
    loop {
        let status = next(&mut watch).await;
        seen.push(state(&status));
        if state(&status) == CopyState::WaitingForTrigger {
            break;
        }
    }

    // The scheduler goes away and comes back on the same port with the same store.
    drop(agent);
    s.stop().await;
    let s = Scheduler::start(dir.path(), port).await;
    let _agent = Agent::start(&s.endpoint(), "apps", OnCopy::Complete).await;
    // The watch (retrying every 200 ms at most) reconnects to the new scheduler, which sends it
    // WaitingForTrigger again, before the run is triggered.
    tokio::time::timeout(Duration::from_secs(20), async {
        while !s.metrics.encode().contains("snapgate_watch_streams 1\n") {
            // The pause between two looks at the scheduler's metrics.
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("the watch reconnects");

    // The run waits still; the watch reconnected and did not repeat WaitingForTrigger.
    let response = tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            match client
                .trigger(&pvc("apps", "data"), Some("run-1"), "after-restart")
                .await
            {
                Ok(r) => return r,
                // The pause before the call is tried again.
                Err(e) if e.is_transient() => tokio::time::sleep(Duration::from_millis(100)).await,
                Err(e) => panic!("{e}"),
            }
        }
    })
    .await
    .unwrap();
    assert_eq!(response.run_id, "run-1");
    loop {
        let status = next(&mut watch).await;
        seen.push(state(&status));
        if state(&status) == CopyState::Completed {
            assert_eq!(status.trigger, "after-restart");
            break;
        }
    }
    // Every change once: the reconnect's first status (WaitingForTrigger again) was skipped.
    assert_eq!(
        seen,
        [
            CopyState::Pending,
            CopyState::WaitingForTrigger,
            CopyState::InProgress,
            CopyState::Completed
        ]
    );
    s.stop().await;
}

#[tokio::test]
async fn a_watch_that_may_give_up_ends_with_unavailable_when_no_scheduler_answers() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    let client = Client::builder(format!("http://{addr}"))
        .connect_lazy()
        .unwrap();
    let backoff = Backoff {
        give_up_after: Some(Duration::from_millis(500)),
        ..Backoff::default()
    };
    let mut watch = client.watch_copy_with(pvc("apps", "data"), backoff);
    let err = tokio::time::timeout(Duration::from_secs(10), watch.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap_err();
    assert!(matches!(err, Error::Unavailable { .. }), "{err:?}");
    assert!(
        watch.next().await.is_none(),
        "the watch ends after giving up"
    );
}

#[tokio::test]
async fn refusals_carry_the_grpc_code_and_an_unreachable_scheduler_is_unavailable() {
    let dir = tempfile::tempdir().unwrap();
    let s = Scheduler::start(dir.path(), 0).await;
    let client = s.client().await;

    let err = client
        .trigger(&pvc("apps", "data"), None, "v1")
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(Code::FailedPrecondition), "{err:?}");
    assert!(!err.is_transient());
    let err = client
        .trigger(&pvc("apps", "data"), None, "")
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(Code::InvalidArgument), "{err:?}");
    let mut watch = client.watch_copy(source("apps", "ghost"));
    let err = watch.next().await.unwrap().unwrap_err();
    assert_eq!(err.code(), Some(Code::NotFound), "{err:?}");
    s.stop().await;

    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    let err = Client::connect(format!("http://{addr}")).await.unwrap_err();
    assert!(matches!(err, Error::Unavailable { .. }), "{err:?}");
    let err = Client::connect("ftp://example.invalid").await.unwrap_err();
    assert!(matches!(err, Error::InvalidEndpoint { .. }), "{err:?}");
    let err = Client::builder("http://127.0.0.1:1")
        .token("bad\ntoken")
        .connect_lazy()
        .unwrap_err();
    assert!(matches!(err, Error::InvalidToken), "{err:?}");
}

#[tokio::test]
async fn wait_for_copy_request_and_wait_for_outcome_work_on_their_own() {
    let dir = tempfile::tempdir().unwrap();
    let s = Scheduler::start(dir.path(), 0).await;
    let _agent = Agent::start(&s.endpoint(), "apps", OnCopy::Complete).await;
    let client = s.client().await;
    create(&client, "apps", "db", restic("data")).await;

    let request = tokio::time::timeout(
        Duration::from_secs(20),
        client.wait_for_copy_request(&pvc("apps", "data")),
    )
    .await
    .unwrap()
    .unwrap();
    assert_eq!(request.run_id, "run-1");
    assert_eq!(request.source, "db");
    assert!(request.status.gated);
    assert!(request.status.waiting_since.is_some());

    client
        .trigger(&pvc("apps", "data"), Some(&request.run_id), "by-hand")
        .await
        .unwrap();
    let outcome = client
        .wait_for_outcome(&source("apps", "db"), &request.run_id)
        .await
        .unwrap();
    assert_eq!(outcome.outcome, Outcome::Completed);
    assert_eq!(outcome.trigger, "by-hand");

    // Asked again once the run is over and the PVC shows a newer run: read from the history.
    tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            let db = client
                .sources()
                .get_source(v1::GetSourceRequest {
                    namespace: "apps".into(),
                    name: "db".into(),
                })
                .await
                .unwrap()
                .into_inner();
            if db.status.unwrap().current_run_id.is_empty() {
                return;
            }
            // The pause between two looks at the source.
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .expect("run-1 finishes");
    client
        .sources()
        .sync_now(v1::SyncNowRequest {
            namespace: "apps".into(),
            name: "db".into(),
            request_id: "again".into(),
        })
        .await
        .unwrap();
    let next = client
        .wait_for_copy_request(&pvc("apps", "data"))
        .await
        .unwrap();
    assert_eq!(next.run_id, "run-2");
    let old = client
        .wait_for_outcome(&pvc("apps", "data"), "run-1")
        .await
        .unwrap();
    assert_eq!(old.outcome, Outcome::Completed);
    assert_eq!(old.trigger, "by-hand");
    s.stop().await;
}

#[tokio::test]
async fn every_call_carries_the_bearer_token_and_none_without_one() {
    let server = EchoServer::start().await;
    let with = Client::builder(&server.url)
        .token("s3cr3t")
        .connect()
        .await
        .unwrap();
    let seen = with.copy_status(&pvc("apps", "data")).await.unwrap();
    assert_eq!(seen.reason, "Bearer s3cr3t");
    let seen = with.copy_status(&pvc("apps", "data")).await.unwrap();
    assert_eq!(seen.reason, "Bearer s3cr3t", "on every call");
    assert!(
        !format!("{with:?}").contains("s3cr3t"),
        "the token is never logged"
    );

    let without = Client::connect(&server.url).await.unwrap();
    let seen = without.copy_status(&pvc("apps", "data")).await.unwrap();
    assert_eq!(seen.reason, "");
    server.stop().await;
}

#[tokio::test]
async fn a_tls_endpoint_is_verified_against_the_given_ca_and_still_carries_the_token() {
    let tls = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/tls");
    let read = |f: &str| std::fs::read(tls.join(f)).unwrap();
    let identity = tonic::transport::Identity::from_pem(read("server.pem"), read("server.key"));
    let server = EchoServer::start_with(Some(identity)).await;
    let port = server.port;

    let client = Client::builder(format!("https://localhost:{port}"))
        .ca_certificate_pem(read("ca.pem"))
        .token("over-tls")
        .connect()
        .await
        .unwrap();
    let seen = client.copy_status(&pvc("apps", "data")).await.unwrap();
    assert_eq!(seen.reason, "Bearer over-tls");

    // By IP, naming the certificate's host explicitly.
    let by_ip = Client::builder(format!("https://127.0.0.1:{port}"))
        .ca_certificate_pem(read("ca.pem"))
        .tls_domain("localhost")
        .connect()
        .await
        .unwrap();
    assert_eq!(
        by_ip
            .copy_status(&pvc("apps", "data"))
            .await
            .unwrap()
            .reason,
        ""
    );

    // Without the CA the server is not trusted: nothing is sent.
    let untrusted = Client::builder(format!("https://localhost:{port}"))
        .token("secret")
        .connect()
        .await;
    let err = match untrusted {
        Err(e) => e,
        Ok(c) => c.copy_status(&pvc("apps", "data")).await.unwrap_err(),
    };
    assert!(matches!(err, Error::Unavailable { .. }), "{err:?}");
    assert!(err.to_string().contains("certificate"), "{err}");

    // TLS settings on a plain endpoint are a mistake, said at once.
    let err = Client::builder(format!("http://localhost:{port}"))
        .ca_certificate_pem(read("ca.pem"))
        .connect_lazy()
        .unwrap_err();
    assert!(matches!(err, Error::InvalidEndpoint { .. }), "{err:?}");
    server.stop().await;
}
