//! Authentication and authorisation, end to end over loopback: every RPC against every kind of
//! caller, with the code each must get; the forged-report attack; the audit trail.
//!
//! Tokens are real JWTs (ES256) signed here with a key whose JWKS the scheduler reads from a
//! file, exactly as it reads a cluster's; every call goes over real TLS on loopback.

mod support;

use std::time::Duration;

use base64::Engine as _;
use futures::StreamExt as _;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use ring::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair as _};
use serde_json::{Value, json};
use snapgate_proto::v1::{
    self, agent_message, agent_service_client::AgentServiceClient,
    scheduler_message::Message as ToAgent, source_service_client::SourceServiceClient,
    trigger_service_client::TriggerServiceClient,
};
use snapgate_scheduler::{
    audit::Audit,
    auth::{Authenticator, IssuerConfig, JwksSource},
    identity::{Authorizer, Policy},
    store::RedbStore,
};
use support::Running;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Code, Request, metadata::MetadataValue, transport::Channel};

const ISSUER: &str = "https://kubernetes.default.svc.cluster.local";
const AUDIENCE: &str = "snapgate";
const NS: &str = "apps";

struct Signer {
    kid: String,
    key: EncodingKey,
    jwk: Value,
}

impl Signer {
    fn generate(kid: &str) -> Self {
        let rng = ring::rand::SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).unwrap();
        let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref(), &rng)
            .unwrap();
        let point = pair.public_key().as_ref();
        let b64 = |b: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b);
        Self {
            kid: kid.to_owned(),
            key: EncodingKey::from_ec_der(pkcs8.as_ref()),
            jwk: json!({
                "kty": "EC", "crv": "P-256", "alg": "ES256", "use": "sig", "kid": kid,
                "x": b64(&point[1..33]), "y": b64(&point[33..65]),
            }),
        }
    }

    fn sign(&self, claims: &Value) -> String {
        let mut header = Header::new(Algorithm::ES256);
        header.kid = Some(self.kid.clone());
        jsonwebtoken::encode(&header, claims, &self.key).unwrap()
    }
}

fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

/// The claims of a ServiceAccount token, as Kubernetes issues them.
fn sa_claims(ns: &str, name: &str) -> Value {
    json!({
        "iss": ISSUER,
        "aud": [AUDIENCE],
        "sub": format!("system:serviceaccount:{ns}:{name}"),
        "iat": now(), "nbf": now(), "exp": now() + 600,
        "kubernetes.io": {"namespace": ns, "serviceaccount": {"name": name, "uid": "u"}},
    })
}

/// Who calls, and with what token (`None`: no credentials).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Who {
    Nobody,
    OtherKey,
    Expired,
    WrongAudience,
    WrongIssuer,
    AppOfOtherNamespace,
    App,
    AppNotAllowed,
    Agent,
    AgentOfOtherNamespace,
    NamespaceAdmin,
    Admin,
}

const EVERYONE: [Who; 12] = [
    Who::Nobody,
    Who::OtherKey,
    Who::Expired,
    Who::WrongAudience,
    Who::WrongIssuer,
    Who::AppOfOtherNamespace,
    Who::App,
    Who::AppNotAllowed,
    Who::Agent,
    Who::AgentOfOtherNamespace,
    Who::NamespaceAdmin,
    Who::Admin,
];

struct Tokens {
    key: Signer,
}

impl Tokens {
    fn token(&self, who: Who) -> Option<String> {
        let sa = |ns, name| self.key.sign(&sa_claims(ns, name));
        Some(match who {
            Who::Nobody => return None,
            // Another key that claims the trusted key's id, for an admin's identity.
            Who::OtherKey => Signer::generate(&self.key.kid).sign(&sa_claims("snapgate", "admin")),
            Who::Expired => {
                let mut c = sa_claims(NS, "db-app");
                c["exp"] = json!(now() - 3600);
                c["nbf"] = json!(now() - 7200);
                self.key.sign(&c)
            }
            Who::WrongAudience => {
                let mut c = sa_claims(NS, "db-app");
                c["aud"] = json!(["https://kubernetes.default.svc"]);
                self.key.sign(&c)
            }
            Who::WrongIssuer => {
                let mut c = sa_claims(NS, "db-app");
                c["iss"] = json!("https://elsewhere.example");
                self.key.sign(&c)
            }
            Who::AppOfOtherNamespace => sa("web", "db-app"),
            Who::App => sa(NS, "db-app"),
            Who::AppNotAllowed => sa(NS, "cron"),
            Who::Agent => sa(NS, "snapgate-agent"),
            Who::AgentOfOtherNamespace => sa("web", "snapgate-agent"),
            Who::NamespaceAdmin => sa("ops", "team-apps"),
            Who::Admin => sa("snapgate", "admin"),
        })
    }
}

fn with<T>(token: Option<&str>, msg: T) -> Request<T> {
    let mut req = Request::new(msg);
    if let Some(t) = token {
        req.metadata_mut().insert(
            "authorization",
            MetadataValue::try_from(format!("Bearer {t}")).unwrap(),
        );
    }
    req
}

struct Secured {
    running: Running,
    tokens: Tokens,
    audit_log: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

async fn secured() -> Secured {
    secured_at((100, 200)).await
}

/// [`secured`] with `rate` requests per second and burst per identity.
async fn secured_at(rate: (u32, u32)) -> Secured {
    let dir = tempfile::tempdir().unwrap();
    let tokens = Tokens {
        key: Signer::generate("cluster-key-1"),
    };
    let jwks = dir.path().join("jwks.json");
    std::fs::write(&jwks, json!({"keys": [tokens.key.jwk]}).to_string()).unwrap();
    let authenticator = Authenticator::load(vec![IssuerConfig {
        cluster: String::new(),
        issuer: ISSUER.into(),
        audience: AUDIENCE.into(),
        jwks: JwksSource::File(jwks),
    }])
    .await;
    let policy = Policy {
        admins: ["system:serviceaccount:snapgate:admin".to_owned()].into(),
        namespace_admins: [(
            "system:serviceaccount:ops:team-apps".to_owned(),
            [NS.to_owned()].into(),
        )]
        .into(),
        agent_service_account: "snapgate-agent".into(),
        agent_namespaces: [(
            "system:serviceaccount:snapgate:central".to_owned(),
            [NS.to_owned(), "web".to_owned()].into(),
        )]
        .into(),
    };
    let audit_log = dir.path().join("audit.jsonl");
    let authorizer = Authorizer::with_policy(policy, Audit::to_file(&audit_log).unwrap());
    let running = Running::start_with(
        Box::new(RedbStore::open(&dir.path().join("data")).unwrap()),
        authorizer,
        Some(authenticator),
        true,
        rate,
    )
    .await;
    let s = Secured {
        running,
        tokens,
        audit_log,
        _dir: dir,
    };
    // The admin sets up a source whose PVC only db-app may trigger.
    let admin = s.tokens.token(Who::Admin);
    s.sources()
        .apply_source(with(admin.as_deref(), apply_request("db")))
        .await
        .unwrap();
    s
}

fn apply_request(name: &str) -> v1::ApplySourceRequest {
    v1::ApplySourceRequest {
        namespace: NS.into(),
        name: name.into(),
        spec: Some(v1::SourceSpec {
            source_pvc: "data".into(),
            trigger: Some(v1::ReplicationSourceTrigger {
                schedule: None,
                manual: Some("once".into()),
            }),
            restic: Some(v1::ReplicationSourceResticSpec {
                copy_method: v1::CopyMethod::Snapshot as i32,
                repository: "restic-config".into(),
                ..Default::default()
            }),
            copy_trigger: Some(v1::CopyTriggerOptions {
                allowed_service_accounts: vec!["db-app".into()],
                ..Default::default()
            }),
            ..Default::default()
        }),
        expected_version: 0,
    }
}

impl Secured {
    fn sources(&self) -> SourceServiceClient<Channel> {
        self.running.sources()
    }
    fn triggers(&self) -> TriggerServiceClient<Channel> {
        self.running.triggers()
    }
    fn audit(&self) -> Vec<Value> {
        std::fs::read_to_string(&self.audit_log)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }
}

/// What a call must end with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Want {
    /// Not refused by authentication or authorisation (any other code: the call itself ran).
    Allowed,
    Unauthenticated,
    Denied,
}

fn pvc_target() -> Option<v1::CopyTarget> {
    Some(v1::CopyTarget {
        namespace: NS.into(),
        pvc: "data".into(),
        source: String::new(),
    })
}

/// Calls `rpc` as `token`; the code it ended with (`Ok` included).
async fn call(s: &Secured, rpc: &str, token: Option<&str>) -> Code {
    let (mut src, mut trg) = (s.sources(), s.triggers());
    let code = |r: Result<(), tonic::Status>| r.err().map_or(Code::Ok, |e| e.code());
    match rpc {
        "ApplySource" => code(
            src.apply_source(with(token, apply_request("new")))
                .await
                .map(drop),
        ),
        "GetSource" => code(
            src.get_source(with(
                token,
                v1::GetSourceRequest {
                    namespace: NS.into(),
                    name: "db".into(),
                },
            ))
            .await
            .map(drop),
        ),
        "ListSources" => code(
            src.list_sources(with(
                token,
                v1::ListSourcesRequest {
                    namespace: NS.into(),
                    ..Default::default()
                },
            ))
            .await
            .map(drop),
        ),
        "ListSources(all)" => code(
            src.list_sources(with(token, v1::ListSourcesRequest::default()))
                .await
                .map(drop),
        ),
        "DeleteSource" => code(
            src.delete_source(with(
                token,
                v1::DeleteSourceRequest {
                    namespace: NS.into(),
                    name: "absent".into(),
                    expected_version: 0,
                },
            ))
            .await
            .map(drop),
        ),
        "SyncNow" => code(
            src.sync_now(with(
                token,
                v1::SyncNowRequest {
                    namespace: NS.into(),
                    name: "absent".into(),
                    request_id: "r".into(),
                },
            ))
            .await
            .map(drop),
        ),
        "PauseSource" => code(
            src.pause_source(with(
                token,
                v1::PauseSourceRequest {
                    namespace: NS.into(),
                    name: "absent".into(),
                    note: String::new(),
                },
            ))
            .await
            .map(drop),
        ),
        "ResumeSource" => code(
            src.resume_source(with(
                token,
                v1::ResumeSourceRequest {
                    namespace: NS.into(),
                    name: "absent".into(),
                    note: String::new(),
                },
            ))
            .await
            .map(drop),
        ),
        "ListRuns" => code(
            src.list_runs(with(
                token,
                v1::ListRunsRequest {
                    namespace: NS.into(),
                    name: "db".into(),
                    limit: 0,
                },
            ))
            .await
            .map(drop),
        ),
        "PreviewSchedule" => code(
            src.preview_schedule(with(
                token,
                v1::PreviewScheduleRequest {
                    namespace: NS.into(),
                    name: "db".into(),
                    ..Default::default()
                },
            ))
            .await
            .map(drop),
        ),
        "ListQuarantined" => code(
            src.list_quarantined(with(token, v1::ListQuarantinedRequest {}))
                .await
                .map(drop),
        ),
        "WatchCopy" => code(
            trg.watch_copy(with(
                token,
                v1::WatchCopyRequest {
                    target: pvc_target(),
                },
            ))
            .await
            .map(drop),
        ),
        "Trigger" => code(
            trg.trigger(with(
                token,
                v1::TriggerRequest {
                    target: pvc_target(),
                    value: "v1".into(),
                    ..Default::default()
                },
            ))
            .await
            .map(drop),
        ),
        "EndHold" => code(
            trg.end_hold(with(
                token,
                v1::EndHoldRequest {
                    target: pvc_target(),
                    run_id: "run-1".into(),
                    value: "v1".into(),
                },
            ))
            .await
            .map(drop),
        ),
        "GetCopyStatus" => code(
            trg.get_copy_status(with(
                token,
                v1::GetCopyStatusRequest {
                    target: pvc_target(),
                },
            ))
            .await
            .map(drop),
        ),
        "Connect" => {
            let (tx, rx) = mpsc::channel(4);
            tx.send(v1::AgentMessage {
                message: Some(agent_message::Message::Hello(v1::AgentHello {
                    agent_id: "a".into(),
                    namespaces: vec![NS.into()],
                    version: "test".into(),
                    leases: true,
                })),
            })
            .await
            .unwrap();
            let r = AgentServiceClient::new(s.running.channel.clone())
                .connect(with(token, ReceiverStream::new(rx)))
                .await;
            code(r.map(drop))
        }
        other => panic!("no such RPC {other}"),
    }
}

fn expected(rpc: &str, who: Who) -> Want {
    use Who::*;
    match who {
        Nobody | OtherKey | Expired | WrongAudience | WrongIssuer => return Want::Unauthenticated,
        Admin => return Want::Allowed,
        _ => {}
    }
    let allowed = match rpc {
        "ApplySource" | "GetSource" | "ListSources" | "DeleteSource" | "SyncNow"
        | "PauseSource" | "ResumeSource" | "ListRuns" | "PreviewSchedule" => who == NamespaceAdmin,
        "ListSources(all)" | "ListQuarantined" => false,
        "WatchCopy" | "Trigger" | "EndHold" | "GetCopyStatus" => {
            matches!(who, App | NamespaceAdmin)
        }
        "Connect" => who == Agent,
        other => panic!("no such RPC {other}"),
    };
    if allowed { Want::Allowed } else { Want::Denied }
}

const RPCS: [&str; 16] = [
    "ApplySource",
    "GetSource",
    "ListSources",
    "ListSources(all)",
    "DeleteSource",
    "SyncNow",
    "PauseSource",
    "ResumeSource",
    "ListRuns",
    "PreviewSchedule",
    "ListQuarantined",
    "WatchCopy",
    "Trigger",
    "EndHold",
    "GetCopyStatus",
    "Connect",
];

#[tokio::test]
async fn every_rpc_answers_every_kind_of_caller_with_the_code_its_rights_give() {
    let s = secured().await;
    let mut failures = Vec::new();
    let mut table = Vec::new();
    for rpc in RPCS {
        for who in EVERYONE {
            let token = s.tokens.token(who);
            let got = call(&s, rpc, token.as_deref()).await;
            let want = expected(rpc, who);
            let ok = match want {
                Want::Allowed => !matches!(got, Code::Unauthenticated | Code::PermissionDenied),
                Want::Unauthenticated => got == Code::Unauthenticated,
                Want::Denied => got == Code::PermissionDenied,
            };
            table.push(format!("{rpc:18} {who:22?} {got:?}"));
            if !ok {
                failures.push(format!("{rpc} as {who:?}: got {got:?}, want {want:?}"));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{}\n\nthe whole table:\n{}",
        failures.join("\n"),
        table.join("\n")
    );
    s.running.stop().await;
}

#[tokio::test]
async fn a_denial_says_nothing_about_what_exists_in_another_namespace() {
    let s = secured().await;
    let app = s.tokens.token(Who::App);
    let mut src = s.sources();
    for name in ["db", "no-such-source"] {
        let e = src
            .get_source(with(
                app.as_deref(),
                v1::GetSourceRequest {
                    namespace: NS.into(),
                    name: name.into(),
                },
            ))
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::PermissionDenied);
        assert_eq!(
            e.message(),
            "system:serviceaccount:apps:db-app may not read sources in namespace apps",
            "the same answer whether {name} exists or not"
        );
    }
    let other = s.tokens.token(Who::AppOfOtherNamespace);
    for ns in ["apps", "no-such-namespace"] {
        let e = s
            .triggers()
            .get_copy_status(with(
                other.as_deref(),
                v1::GetCopyStatusRequest {
                    target: Some(v1::CopyTarget {
                        namespace: ns.into(),
                        pvc: "data".into(),
                        source: String::new(),
                    }),
                },
            ))
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::PermissionDenied);
        assert!(!e.message().contains("data"), "{}", e.message());
    }
    s.running.stop().await;
}

/// The forged-report attack: an agent of another namespace connects for this one and reports
/// a run's copy as made. It is refused, and the application never sees Completed.
#[tokio::test]
async fn a_rogue_agent_of_another_namespace_cannot_connect_or_complete_a_copy() {
    let s = secured().await;
    let app = s.tokens.token(Who::App);
    let mut watch = s
        .triggers()
        .watch_copy(with(
            app.as_deref(),
            v1::WatchCopyRequest {
                target: pvc_target(),
            },
        ))
        .await
        .unwrap()
        .into_inner();

    // The real agent gates the run; it waits for a trigger.
    let agent = s.tokens.token(Who::Agent);
    let (tx, rx) = mpsc::channel(16);
    tx.send(hello()).await.unwrap();
    let mut inbound = AgentServiceClient::new(s.running.channel.clone())
        .connect(with(agent.as_deref(), ReceiverStream::new(rx)))
        .await
        .unwrap()
        .into_inner();
    let run = loop {
        if let Some(ToAgent::Directive(d)) = inbound.next().await.unwrap().unwrap().message {
            if d.phase() == v1::DirectivePhase::Gate {
                tx.send(report(&d, gated_pvc())).await.unwrap();
            }
            if d.phase() == v1::DirectivePhase::Wait {
                break d;
            }
        }
    };

    // The rogue: another namespace's agent, and no token at all.
    for token in [s.tokens.token(Who::AgentOfOtherNamespace), None] {
        let (rtx, rrx) = mpsc::channel(16);
        rtx.send(hello()).await.unwrap();
        rtx.send(report(
            &run,
            v1::report::Observation::CopyCompleted(v1::CopyCompleted {
                copy_name: "forged".into(),
                time: None,
            }),
        ))
        .await
        .unwrap();
        let e = AgentServiceClient::new(s.running.channel.clone())
            .connect(with(token.as_deref(), ReceiverStream::new(rrx)))
            .await
            .unwrap_err();
        assert!(
            matches!(e.code(), Code::PermissionDenied | Code::Unauthenticated),
            "{e:?}"
        );
    }
    // The application's view: pending, then waiting; never Completed.
    let mut seen = Vec::new();
    while let Ok(Some(Ok(status))) =
        tokio::time::timeout(Duration::from_millis(300), watch.next()).await
    {
        seen.push(status.state());
    }
    assert!(seen.contains(&v1::CopyState::WaitingForTrigger), "{seen:?}");
    assert!(!seen.contains(&v1::CopyState::Completed), "{seen:?}");
    let status = s
        .triggers()
        .get_copy_status(with(
            app.as_deref(),
            v1::GetCopyStatusRequest {
                target: pvc_target(),
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(status.state(), v1::CopyState::WaitingForTrigger);
    drop((tx, inbound, watch));
    s.running.stop().await;
}

#[tokio::test]
async fn mutating_calls_triggers_and_denials_are_audited_without_tokens() {
    let s = secured().await;
    let app = s.tokens.token(Who::App);
    // A denial, a mutating call, a Trigger, an unauthenticated call.
    assert_eq!(
        call(&s, "DeleteSource", app.as_deref()).await,
        Code::PermissionDenied
    );
    let admin = s.tokens.token(Who::Admin);
    assert_eq!(
        call(&s, "PauseSource", admin.as_deref()).await,
        Code::NotFound
    );
    assert_eq!(
        call(&s, "Trigger", app.as_deref()).await,
        Code::FailedPrecondition
    );
    assert_eq!(call(&s, "GetSource", None).await, Code::Unauthenticated);
    let records = s.audit();
    let find = |rpc: &str, code: &str| {
        records
            .iter()
            .find(|r| r["rpc"] == rpc && r["code"] == code)
            .unwrap_or_else(|| panic!("no {rpc} {code} record in {records:#?}"))
            .clone()
    };
    let setup = find("snapgate.v1.SourceService/ApplySource", "Ok");
    assert_eq!(setup["identity"], "system:serviceaccount:snapgate:admin");
    assert_eq!(setup["namespace"], NS);
    assert_eq!(setup["source"], "db");
    let denied = find("snapgate.v1.SourceService/DeleteSource", "PermissionDenied");
    assert_eq!(denied["identity"], "system:serviceaccount:apps:db-app");
    find("snapgate.v1.SourceService/PauseSource", "NotFound");
    let trigger = find("snapgate.v1.TriggerService/Trigger", "FailedPrecondition");
    assert_eq!(trigger["identity"], "system:serviceaccount:apps:db-app");
    find("snapgate.v1.SourceService/GetSource", "Unauthenticated");
    assert!(
        records
            .iter()
            .all(|r| r["time"].as_str().is_some_and(|t| t.ends_with('Z'))),
        "{records:#?}"
    );
    // Reads that were allowed are not audited; no record holds a token.
    let raw = std::fs::read_to_string(&s.audit_log).unwrap();
    assert!(
        !raw.contains("eyJ"),
        "a JWT leaked into the audit log:\n{raw}"
    );
    assert!(!raw.contains("ListRuns"), "{raw}");
    s.running.stop().await;
}

#[tokio::test]
async fn a_second_agent_for_a_namespace_replaces_the_first() {
    let s = secured().await;
    let agent = s.tokens.token(Who::Agent);
    let connect = || async {
        let (tx, rx) = mpsc::channel(4);
        tx.send(hello()).await.unwrap();
        let inbound = AgentServiceClient::new(s.running.channel.clone())
            .connect(with(agent.as_deref(), ReceiverStream::new(rx)))
            .await
            .unwrap()
            .into_inner();
        (tx, inbound)
    };
    let (_tx1, mut first) = connect().await;
    assert!(matches!(
        first.next().await.unwrap().unwrap().message,
        Some(ToAgent::Welcome(_))
    ));
    let (_tx2, mut second) = connect().await;
    assert!(matches!(
        second.next().await.unwrap().unwrap().message,
        Some(ToAgent::Welcome(_))
    ));
    // The first link is ended by the scheduler: its stream closes.
    let ended = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match first.next().await {
                None | Some(Err(_)) => return,
                Some(Ok(_)) => {}
            }
        }
    })
    .await;
    assert!(ended.is_ok(), "the replaced link stayed open");
    drop((_tx1, _tx2, first, second));
    s.running.stop().await;
}

fn hello() -> v1::AgentMessage {
    v1::AgentMessage {
        message: Some(agent_message::Message::Hello(v1::AgentHello {
            agent_id: "agent".into(),
            namespaces: vec![NS.into()],
            version: "test".into(),
            leases: true,
        })),
    }
}

fn report(d: &v1::Directive, o: v1::report::Observation) -> v1::AgentMessage {
    v1::AgentMessage {
        message: Some(agent_message::Message::Report(v1::Report {
            run_id: d.run_id.clone(),
            generation: d.generation,
            observation: Some(o),
        })),
    }
}

fn gated_pvc() -> v1::report::Observation {
    v1::report::Observation::Pvc(v1::PvcObserved {
        exists: true,
        use_copy_trigger: true,
        ..Default::default()
    })
}

/// An authenticator of the cluster's issuer whose key set is the file `jwks`.
async fn authenticator_over(jwks: &std::path::Path) -> std::sync::Arc<Authenticator> {
    Authenticator::load(vec![IssuerConfig {
        cluster: String::new(),
        issuer: ISSUER.into(),
        audience: AUDIENCE.into(),
        jwks: JwksSource::File(jwks.to_owned()),
    }])
    .await
}

#[tokio::test]
async fn a_key_added_to_the_key_set_is_picked_up_when_a_token_names_it() {
    let dir = tempfile::tempdir().unwrap();
    let (k1, k2) = (Signer::generate("k1"), Signer::generate("k2"));
    let jwks = dir.path().join("jwks.json");
    std::fs::write(&jwks, json!({"keys": [k1.jwk]}).to_string()).unwrap();
    let auth = authenticator_over(&jwks).await;
    let refresh = auth.spawn_refresh();
    let token = k2.sign(&sa_claims(NS, "db-app"));
    assert_eq!(
        auth.authenticate(&token).unwrap_err().to_string(),
        "the bearer token is signed by an unknown key \"k2\""
    );
    // The cluster rotates: the key set now holds k2 too. The refused token asked for a
    // refresh; the next attempt after it succeeds.
    std::fs::write(&jwks, json!({"keys": [k1.jwk, k2.jwk]}).to_string()).unwrap();
    auth.refresh_now().await;
    let subject = auth.authenticate(&token).unwrap();
    assert_eq!(subject.name, "system:serviceaccount:apps:db-app");
    assert_eq!(
        subject.service_account,
        Some(("apps".to_owned(), "db-app".to_owned()))
    );
    refresh.abort();
}

/// A verified token is not verified again for `VERIFIED_TTL`: a key dropped from the key set
/// still admits the tokens verified with it that long, and no longer.
#[tokio::test(start_paused = true)]
async fn a_token_signed_by_a_dropped_key_is_refused_once_its_verification_is_older_than_the_ttl() {
    let dir = tempfile::tempdir().unwrap();
    let (k1, k2) = (Signer::generate("k1"), Signer::generate("k2"));
    let jwks = dir.path().join("jwks.json");
    std::fs::write(&jwks, json!({"keys": [k1.jwk, k2.jwk]}).to_string()).unwrap();
    let auth = authenticator_over(&jwks).await;
    let (old, new) = (
        k1.sign(&sa_claims(NS, "db-app")),
        k2.sign(&sa_claims(NS, "db-app")),
    );
    assert!(auth.authenticate(&old).is_ok());
    // The cluster drops k1.
    std::fs::write(&jwks, json!({"keys": [k2.jwk]}).to_string()).unwrap();
    auth.refresh_now().await;
    tokio::time::advance(snapgate_scheduler::auth::VERIFIED_TTL - Duration::from_millis(1)).await;
    assert!(auth.authenticate(&old).is_ok(), "verified within the TTL");
    tokio::time::advance(Duration::from_millis(1)).await;
    assert_eq!(
        auth.authenticate(&old).unwrap_err().to_string(),
        "the bearer token is signed by an unknown key \"k1\""
    );
    assert!(auth.authenticate(&new).is_ok());
}

#[tokio::test]
async fn tokens_signed_with_a_shared_secret_or_claiming_another_subject_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let k1 = Signer::generate("k1");
    let jwks = dir.path().join("jwks.json");
    std::fs::write(&jwks, json!({"keys": [k1.jwk]}).to_string()).unwrap();
    let auth = Authenticator::load(vec![IssuerConfig {
        cluster: String::new(),
        issuer: ISSUER.into(),
        audience: AUDIENCE.into(),
        jwks: JwksSource::File(jwks),
    }])
    .await;
    // HS256 "signed" with the public key's bytes: the classic algorithm confusion.
    let mut header = Header::new(Algorithm::HS256);
    header.kid = Some("k1".into());
    let hs = jsonwebtoken::encode(
        &header,
        &sa_claims(NS, "db-app"),
        &EncodingKey::from_secret(k1.jwk.to_string().as_bytes()).unwrap(),
    )
    .unwrap();
    let e = auth.authenticate(&hs).unwrap_err().to_string();
    assert!(e.contains("HS256") && e.contains("not accepted"), "{e}");
    // A subject that is not the ServiceAccount the claims name is no ServiceAccount.
    let mut c = sa_claims(NS, "db-app");
    c["sub"] = json!("system:serviceaccount:kube-system:admin");
    let subject = auth.authenticate(&k1.sign(&c)).unwrap();
    assert_eq!(subject.service_account, None);
    // Garbage and oversized tokens.
    assert!(auth.authenticate("not-a-jwt").is_err());
    assert!(auth.authenticate(&"a".repeat(20_000)).is_err());
}

async fn agent_link(
    s: &Secured,
    token: Option<&str>,
    namespaces: &[&str],
) -> Result<
    (
        mpsc::Sender<v1::AgentMessage>,
        tonic::Streaming<v1::SchedulerMessage>,
    ),
    tonic::Status,
> {
    let (tx, rx) = mpsc::channel(4);
    tx.send(v1::AgentMessage {
        message: Some(agent_message::Message::Hello(v1::AgentHello {
            agent_id: "agent".into(),
            namespaces: namespaces.iter().map(|n| (*n).to_owned()).collect(),
            version: "test".into(),
            leases: true,
        })),
    })
    .await
    .unwrap();
    let inbound = AgentServiceClient::new(s.running.channel.clone())
        .connect(with(token, ReceiverStream::new(rx)))
        .await?
        .into_inner();
    Ok((tx, inbound))
}

/// One namespace's agent cannot cut off an agent of another identity that serves it (and
/// others): the newer link of another identity is refused, the first one keeps serving.
#[tokio::test]
async fn an_agent_of_another_identity_cannot_take_over_a_namespace_already_served() {
    let s = secured().await;
    let central = s.tokens.key.sign(&sa_claims("snapgate", "central"));
    let (ctx, mut central_link) = agent_link(&s, Some(&central), &[NS, "web"]).await.unwrap();
    assert!(matches!(
        central_link.next().await.unwrap().unwrap().message,
        Some(ToAgent::Welcome(_))
    ));
    let local = s.tokens.token(Who::Agent);
    let e = agent_link(&s, local.as_deref(), &[NS]).await.unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");
    assert!(
        e.message().contains("another agent identity"),
        "{}",
        e.message()
    );
    assert!(
        !e.message().contains("central"),
        "names no identity: {}",
        e.message()
    );
    // The central link still serves: a new run in web reaches it.
    let admin = s.tokens.token(Who::Admin);
    let mut req = apply_request("w");
    req.namespace = "web".into();
    s.sources()
        .apply_source(with(admin.as_deref(), req))
        .await
        .unwrap();
    let got = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            if let Some(ToAgent::Directive(d)) = central_link.next().await.unwrap().unwrap().message
                && d.source.as_ref().is_some_and(|x| x.namespace == "web")
            {
                return d;
            }
        }
    })
    .await
    .expect("the central agent still gets web's directives");
    assert_eq!(got.phase(), v1::DirectivePhase::Gate);
    drop((ctx, central_link));
    s.running.stop().await;
}

/// With authentication an application holds as its own ServiceAccount; a source narrowed to
/// other ServiceAccounts while an application watches ends that watch; a token that lives
/// longer than a day is refused.
#[tokio::test]
async fn holders_are_service_accounts_narrowing_ends_open_watches_and_long_lived_tokens_are_refused()
 {
    let s = secured().await;
    let app = s.tokens.token(Who::App);
    let e = s
        .triggers()
        .trigger(with(
            app.as_deref(),
            v1::TriggerRequest {
                target: pvc_target(),
                value: "v1".into(),
                holder: "cache".into(),
                ..Default::default()
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied);
    assert!(
        e.message().contains("only as holder db-app"),
        "{}",
        e.message()
    );

    // cron is not among data's allowedServiceAccounts: refused, and audited.
    let e = s
        .triggers()
        .get_copy_status(with(
            s.tokens.token(Who::AppNotAllowed).as_deref(),
            v1::GetCopyStatusRequest {
                target: pvc_target(),
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied);
    assert!(
        s.audit()
            .iter()
            .any(|r| r["rpc"] == "snapgate.v1.TriggerService/GetCopyStatus"
                && r["code"] == "PermissionDenied"
                && r["identity"] == "system:serviceaccount:apps:cron"),
        "{:#?}",
        s.audit()
    );

    // cron may watch pvc other (no source restricts it) until one does.
    let cron = s.tokens.token(Who::AppNotAllowed);
    let other = Some(v1::CopyTarget {
        namespace: NS.into(),
        pvc: "other".into(),
        source: String::new(),
    });
    let mut watch = s
        .triggers()
        .watch_copy(with(
            cron.as_deref(),
            v1::WatchCopyRequest { target: other },
        ))
        .await
        .unwrap()
        .into_inner();
    assert!(
        watch.next().await.unwrap().is_ok(),
        "the current status first"
    );
    let admin = s.tokens.token(Who::Admin);
    let mut narrowed = apply_request("narrow");
    narrowed.spec.as_mut().unwrap().source_pvc = "other".into();
    s.sources()
        .apply_source(with(admin.as_deref(), narrowed))
        .await
        .unwrap();
    let ended = tokio::time::timeout(Duration::from_secs(5), watch.next())
        .await
        .expect("the watch ends")
        .expect("with a status");
    assert_eq!(ended.unwrap_err().code(), Code::PermissionDenied);
    let audited = s.audit().into_iter().any(|r| {
        r["rpc"] == "snapgate.v1.TriggerService/Trigger"
            && r["code"] == "PermissionDenied"
            && r["identity"] == "system:serviceaccount:apps:db-app"
    });
    assert!(audited, "{:#?}", s.audit());

    let mut long = sa_claims(NS, "db-app");
    long["exp"] = json!(now() + 48 * 3600);
    let e = s
        .sources()
        .list_sources(with(
            Some(&s.tokens.key.sign(&long)),
            v1::ListSourcesRequest::default(),
        ))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated);
    assert!(
        e.message().contains("longer than 24 hours"),
        "{}",
        e.message()
    );
    drop(watch);
    s.running.stop().await;
}

/// One caller over its rate is refused with RESOURCE_EXHAUSTED while others go on; a flood of
/// bad credentials is refused by address and not audited line by line; an identity holds at
/// most 64 WatchCopy streams.
#[tokio::test]
async fn an_abusive_caller_is_held_to_its_rate_and_streams_without_starving_others() {
    // The setup's ApplySource spends one of the admin's three.
    let s = secured_at((1, 3)).await;
    let app = s.tokens.token(Who::App);
    let status = |token: Option<String>| {
        let mut t = s.triggers();
        async move {
            t.get_copy_status(with(
                token.as_deref(),
                v1::GetCopyStatusRequest {
                    target: pvc_target(),
                },
            ))
            .await
            .map(drop)
            .map_err(|e| e.code())
        }
    };
    let mut codes = Vec::new();
    for _ in 0..5 {
        codes.push(status(app.clone()).await);
    }
    assert_eq!(&codes[..3], [Ok(()), Ok(()), Ok(())], "{codes:?}");
    assert_eq!(codes[4], Err(Code::ResourceExhausted), "{codes:?}");
    // Another identity is untouched.
    assert_eq!(status(s.tokens.token(Who::NamespaceAdmin)).await, Ok(()));
    // Bad credentials: counted by address; past the burst refused and not audited.
    let mut bad = Vec::new();
    for _ in 0..6 {
        bad.push(status(Some("not-a-token".into())).await);
    }
    assert_eq!(bad[0], Err(Code::Unauthenticated));
    assert_eq!(bad[5], Err(Code::ResourceExhausted), "{bad:?}");
    let unauthenticated = s
        .audit()
        .iter()
        .filter(|r| r["identity"] == "unauthenticated")
        .count();
    assert!(
        unauthenticated <= 4,
        "{unauthenticated} lines for one flood"
    );
    s.running.stop().await;

    // Streams: 64 per identity.
    let s = secured().await;
    let app = s.tokens.token(Who::App);
    let mut open = Vec::new();
    for _ in 0..64 {
        let w = s
            .triggers()
            .watch_copy(with(
                app.as_deref(),
                v1::WatchCopyRequest {
                    target: Some(v1::CopyTarget {
                        namespace: NS.into(),
                        pvc: format!("pvc-{}", open.len()),
                        source: String::new(),
                    }),
                },
            ))
            .await
            .unwrap();
        open.push(w);
    }
    let e = s
        .triggers()
        .watch_copy(with(
            app.as_deref(),
            v1::WatchCopyRequest {
                target: pvc_target(),
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::ResourceExhausted);
    assert!(e.message().contains("at most 64"), "{}", e.message());
    let admin = s.tokens.token(Who::NamespaceAdmin);
    s.triggers()
        .watch_copy(with(
            admin.as_deref(),
            v1::WatchCopyRequest {
                target: pvc_target(),
            },
        ))
        .await
        .expect("another identity may still watch");
    drop(open);
    s.running.stop().await;
}

#[tokio::test]
async fn the_watch_streams_on_one_pvc_are_bounded_whoever_opens_them() {
    let s = secured().await;
    let (app, admin) = (
        s.tokens.token(Who::App),
        s.tokens.token(Who::NamespaceAdmin),
    );
    let watch = |token: Option<String>, pvc: &'static str| {
        let mut triggers = s.triggers();
        async move {
            triggers
                .watch_copy(with(
                    token.as_deref(),
                    v1::WatchCopyRequest {
                        target: Some(v1::CopyTarget {
                            namespace: NS.into(),
                            pvc: pvc.into(),
                            source: String::new(),
                        }),
                    },
                ))
                .await
        }
    };
    // Two identities, each under its own bound of 64, fill the PVC's 64 together.
    let mut open = Vec::new();
    for i in 0..64 {
        let who = if i < 40 { app.clone() } else { admin.clone() };
        open.push(watch(who, "data").await.expect("under every bound"));
    }
    for who in [app.clone(), admin.clone()] {
        let e = watch(who, "data").await.unwrap_err();
        assert_eq!(e.code(), Code::ResourceExhausted);
        assert!(
            e.message().contains("64 on pvc apps/data, at most 64"),
            "{}",
            e.message()
        );
    }
    // Another PVC is not affected.
    let other = watch(admin.clone(), "other").await.unwrap();
    s.running.until_gauge("snapgate_watch_streams", 65).await;
    // A stream that ends gives its place back, to any identity.
    drop(open.pop());
    s.running.until_gauge("snapgate_watch_streams", 64).await;
    watch(app.clone(), "data").await.unwrap();
    drop((open, other));
    s.running.stop().await;
}
