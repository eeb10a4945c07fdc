//! Bearer tokens read from a file (projected ServiceAccount tokens rotate): the SDK re-reads
//! the file when it changes, keeps the last good token when a change does not load, never
//! shows it; the CLI's `--token-file` sends it and refuses to be combined with `--token`.

mod support;

use std::path::Path;

use snapgate_sdk::{Client, Error, pvc};
use support::EchoServer;

/// Rewrites a token file the way kubelet does: a new file renamed over the old.
fn rotate(path: &Path, token: &str) {
    let tmp = path.with_extension("new");
    std::fs::write(&tmp, token).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

#[tokio::test]
async fn a_token_file_is_sent_on_every_call_and_re_read_when_it_changes() {
    let server = EchoServer::start().await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("token");
    std::fs::write(&file, "first-token\n").unwrap();
    let client = Client::builder(&server.url)
        .token_file(&file)
        .connect()
        .await
        .unwrap();
    let seen = |c: &Client| {
        let c = c.clone();
        async move { c.copy_status(&pvc("apps", "data")).await.unwrap().reason }
    };
    assert_eq!(seen(&client).await, "Bearer first-token");
    assert_eq!(seen(&client).await, "Bearer first-token");

    rotate(&file, "second-token");
    assert_eq!(
        seen(&client).await,
        "Bearer second-token",
        "the new token, no reconnect"
    );
    // Rewritten in place, too.
    std::fs::write(&file, "third-token-longer").unwrap();
    assert_eq!(seen(&client).await, "Bearer third-token-longer");

    // A change that does not load keeps the last good token.
    rotate(&file, "   \n");
    assert_eq!(seen(&client).await, "Bearer third-token-longer");
    std::fs::remove_file(&file).unwrap();
    assert_eq!(seen(&client).await, "Bearer third-token-longer");

    let shown = format!(
        "{client:?} {:?}",
        Client::builder(&server.url).token("secret-x")
    );
    assert!(!shown.contains("token-longer"), "{shown}");
    assert!(!shown.contains("secret-x"), "{shown}");
    server.stop().await;
}

#[tokio::test]
async fn a_token_file_that_cannot_be_read_or_is_empty_fails_the_connect_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing");
    let empty = dir.path().join("empty");
    std::fs::write(&empty, "\n").unwrap();
    for (path, says) in [(&missing, "cannot read"), (&empty, "empty")] {
        let err = Client::builder("http://127.0.0.1:1")
            .token_file(path)
            .connect_lazy()
            .unwrap_err();
        assert!(matches!(err, Error::TokenFile { .. }), "{err:?}");
        let text = err.to_string();
        assert!(
            text.contains(&path.display().to_string()) && text.contains(says),
            "{text}"
        );
    }
}

async fn snapgate(server: &str, args: &[&str]) -> std::process::Output {
    tokio::process::Command::new(env!("CARGO_BIN_EXE_snapgate"))
        .args(["--server", server])
        .args(args)
        .env_remove("SNAPGATE_TOKEN")
        .env_remove("SNAPGATE_TOKEN_FILE")
        .env_remove("SNAPGATE_NAMESPACE")
        .output()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_sends_the_token_of_token_file_and_refuses_it_with_token() {
    let server = EchoServer::start().await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("token");
    std::fs::write(&file, "from-the-file\n").unwrap();
    let path = file.display().to_string();

    let out = snapgate(
        &server.url,
        &["--token-file", &path, "trigger", "--pvc", "data", "v1"],
    )
    .await;
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(stderr.contains("saw [Bearer from-the-file]"), "{stderr}");

    let out = snapgate(
        &server.url,
        &[
            "--token",
            "other",
            "--token-file",
            &path,
            "trigger",
            "--pvc",
            "data",
            "v1",
        ],
    )
    .await;
    assert_ne!(out.status.code(), Some(0));
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(
        stderr.contains("--token <TOKEN>") && stderr.contains("cannot be used with"),
        "{stderr}"
    );
    assert!(!stderr.contains("saw ["), "nothing was sent: {stderr}");

    let missing = dir.path().join("missing").display().to_string();
    let out = snapgate(&server.url, &["--token-file", &missing, "get", "x"]).await;
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(
        stderr.contains(&format!("token file {missing}: cannot read")),
        "{stderr}"
    );
    server.stop().await;
}
