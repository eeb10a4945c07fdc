//! Authentication with the real binaries, as on a cluster: the simulated API server issues
//! ServiceAccount tokens and serves its key set; the scheduler checks every caller against it;
//! the agent, the CLI and `quiesce-exec` present projected-token files.

mod support;

use support::{Cluster, NS};

/// A whole gated copy with authentication on: the agent serves its namespace with its own
/// token, an operator applies the source, the application releases and counts the copy with
/// its token. Without a token, or with another namespace's token, nothing is allowed, and
/// every step is in the audit trail.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gated_copy_with_every_caller_authenticated_by_a_service_account_token() {
    let c = Cluster::start_secured().await;
    // The agent (authenticated as app's snapgate-agent) gates the run.
    c.gated_db_source_waiting("").await;

    // No token, and another namespace's application: refused, naming nothing of the source.
    let anonymous = c.cli_command_as(None, &["list"]).output().await.unwrap();
    assert_eq!(anonymous.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&anonymous.stderr);
    assert!(stderr.contains("Unauthenticated"), "{stderr}");
    let other = c.path("token-web-db-app");
    let out = c
        .cli_command_as(Some(&other), &["trigger", "--pvc", "data", "v1"])
        .output()
        .await
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("PermissionDenied"), "{stderr}");

    // The application: quiesce-exec with its own ServiceAccount token.
    let app = c.path("token-app-db-app");
    let log = c.path("app.log");
    let mut p = support::spawn(
        c.cli_command_as(
            Some(&app),
            &[
                "quiesce-exec",
                "--pvc",
                "data",
                "--once",
                "--quiesce",
                "true",
                "--unquiesce",
                "true",
            ],
        )
        .env("SNAPGATE_LOG", "info"),
        &log,
    );
    let status = tokio::time::timeout(std::time::Duration::from_secs(20), p.0.wait())
        .await
        .unwrap_or_else(|_| panic!("{}", std::fs::read_to_string(&log).unwrap_or_default()))
        .unwrap();
    let log = std::fs::read_to_string(&log).unwrap();
    assert!(status.success(), "{log}\n{}", c.logs());
    assert!(log.contains("copy completed"), "{log}");
    let run = c
        .wait_run("db", "finished", |r| r["phase"] == "Finished")
        .await;
    assert_eq!(run["result"], "Successful", "{run:#}");
    assert_eq!(run["releasedBy"], "rpc", "{run:#}");

    // The audit trail names who did what.
    let audit: Vec<serde_json::Value> = std::fs::read_to_string(c.path("scheduler.log"))
        .unwrap()
        .lines()
        .filter(|l| l.contains("snapgate::audit"))
        .filter_map(|l| l.find('{').and_then(|i| serde_json::from_str(&l[i..]).ok()))
        .collect();
    let has = |identity: &str, rpc: &str, code: &str| {
        audit.iter().any(|r| {
            r["identity"] == identity
                && r["rpc"].as_str().is_some_and(|x| x.ends_with(rpc))
                && r["code"] == code
        })
    };
    assert!(
        has("system:serviceaccount:snapgate:admin", "ApplySource", "Ok"),
        "{audit:#?}"
    );
    assert!(
        has("system:serviceaccount:app:snapgate-agent", "Connect", "Ok"),
        "{audit:#?}"
    );
    assert!(
        has("system:serviceaccount:app:db-app", "Trigger", "Ok"),
        "{audit:#?}"
    );
    assert!(
        has(
            "system:serviceaccount:web:db-app",
            "Trigger",
            "PermissionDenied"
        ),
        "{audit:#?}"
    );
    assert!(
        has("unauthenticated", "ListSources", "Unauthenticated"),
        "{audit:#?}"
    );
    let raw = std::fs::read_to_string(c.path("scheduler.log")).unwrap();
    assert!(!raw.contains("eyJ"), "a token reached the scheduler's log");

    // The agent binary reviews authors by default: before acting it asked the API server
    // whether the admin who applied the source may create Jobs in the namespace.
    let support::Sim::Hosted(sim) = &c.sim else {
        unreachable!("a secured cluster hosts its API server")
    };
    let reviews = sim
        .requests()
        .filter(|r| r.resource == "localsubjectaccessreviews" && r.code == 201);
    assert!(
        reviews.iter().all(|r| r.namespace.as_deref() == Some(NS)) && !reviews.is_empty(),
        "{reviews:#?}\n{}",
        c.logs()
    );
    let agent_log = std::fs::read_to_string(c.path("agent.log")).unwrap();
    assert!(
        agent_log.contains("author allowed")
            && agent_log.contains("system:serviceaccount:snapgate:admin"),
        "{agent_log}"
    );
}
