//! ServiceAccount tokens: OIDC discovery and JWKS, the TokenRequest API, and the
//! simulator authenticating the tokens it signed.

use std::time::Duration;

use http::Request;
use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::{ConfigMap, ServiceAccount};
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use kube::api::{Api, DeleteParams, ListParams, PostParams};
use serde_json::{Value, json};
use snapgate_kube_sim::{DEFAULT_ISSUER, KubeSim, TokenSigner, Verb};
use tower::ServiceExt;

fn api_error(e: kube::Error) -> Box<kube::core::Status> {
    match e {
        kube::Error::Api(s) => s,
        other => panic!("expected an API error, got {other:?}"),
    }
}

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// A client with no `Authorization` header (`system:anonymous`).
fn anonymous(sim: &KubeSim) -> kube::Client {
    kube::Client::new(sim.service(None), "default")
}

async fn get_json(client: &kube::Client, path: &str) -> Result<Value, kube::Error> {
    client
        .request::<Value>(Request::get(path).body(Vec::new()).unwrap())
        .await
}

/// GET `path` in-process without a token: status, content type and body.
async fn get_raw(sim: &KubeSim, path: &str) -> (u16, String, Value) {
    let resp = sim
        .service(None)
        .oneshot(
            Request::get(path)
                .body(http_body_util::Full::new(bytes::Bytes::new()))
                .unwrap(),
        )
        .await
        .unwrap();
    let code = resp.status().as_u16();
    let ctype = resp.headers()["content-type"].to_str().unwrap().to_string();
    let body = http_body_util::BodyExt::collect(resp.into_body())
        .await
        .unwrap()
        .to_bytes();
    (code, ctype, serde_json::from_slice(&body).unwrap())
}

async fn create_sa(sim: &KubeSim, ns: &str, name: &str) -> ServiceAccount {
    sim.ensure_namespace(ns);
    let sa: ServiceAccount =
        serde_json::from_value(json!({"metadata": {"name": name, "namespace": ns}})).unwrap();
    Api::<ServiceAccount>::namespaced(sim.client(), ns)
        .create(&PostParams::default(), &sa)
        .await
        .unwrap()
}

fn token_request(audiences: &[&str], expiration: Option<i64>) -> TokenRequest {
    TokenRequest {
        spec: TokenRequestSpec {
            audiences: audiences.iter().map(|a| a.to_string()).collect(),
            expiration_seconds: expiration,
            ..Default::default()
        },
        ..Default::default()
    }
}

/// `spec.audiences` and `spec.expirationSeconds` of an answered TokenRequest.
fn spec_of(tr: &TokenRequest) -> (Vec<String>, Option<i64>) {
    (tr.spec.audiences.clone(), tr.spec.expiration_seconds)
}

/// `status.token` of an answered TokenRequest.
fn token_of(tr: TokenRequest) -> String {
    tr.status.map(|s| s.token).expect("status.token")
}

/// Verify `token` as an offline validator would: against the served JWKS, by `kid`,
/// with `iss`, `aud`, `exp` and `nbf` validation; the claims.
fn verify(
    jwks: &Value,
    token: &str,
    issuer: &str,
    audience: &str,
) -> jsonwebtoken::errors::Result<Value> {
    let set: JwkSet = serde_json::from_value(jwks.clone()).unwrap();
    let header = jsonwebtoken::decode_header(token)?;
    let kid = header.kid.expect("a kid in the header");
    let jwk = set.find(&kid).expect("the kid is in the JWKS");
    let key = DecodingKey::from_jwk(jwk)?;
    let mut v = Validation::new(Algorithm::ES256);
    v.set_issuer(&[issuer]);
    v.set_audience(&[audience]);
    v.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
    v.validate_nbf = true;
    jsonwebtoken::decode::<Value>(token, &key, &v).map(|d| d.claims)
}

/// A role in `ns` granting `rules`, bound to ServiceAccount `ns/sa`.
async fn grant(sim: &KubeSim, ns: &str, sa: &str, rules: Value) {
    let admin = sim.client();
    let role: Role = serde_json::from_value(json!({
        "metadata": {"name": sa, "namespace": ns},
        "rules": rules,
    }))
    .unwrap();
    Api::<Role>::namespaced(admin.clone(), ns)
        .create(&PostParams::default(), &role)
        .await
        .unwrap();
    let binding: RoleBinding = serde_json::from_value(json!({
        "metadata": {"name": sa, "namespace": ns},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": sa},
        "subjects": [{"kind": "ServiceAccount", "name": sa, "namespace": ns}],
    }))
    .unwrap();
    Api::<RoleBinding>::namespaced(admin, ns)
        .create(&PostParams::default(), &binding)
        .await
        .unwrap();
}

#[tokio::test]
async fn oidc_discovery_and_jwks_are_served_without_a_token() {
    let sim = KubeSim::new();
    let anon = anonymous(&sim);
    sim.enforce_rbac(true);

    let config = get_json(&anon, "/.well-known/openid-configuration")
        .await
        .unwrap();
    assert_eq!(sim.issuer(), DEFAULT_ISSUER);
    assert_eq!(
        config,
        json!({
            "issuer": "https://kubernetes.default.svc.cluster.local",
            "jwks_uri": "https://kubernetes.default.svc.cluster.local/openid/v1/jwks",
            "response_types_supported": ["id_token"],
            "subject_types_supported": ["public"],
            "id_token_signing_alg_values_supported": ["ES256"],
        }),
        "before serving, the JWKS is under the issuer"
    );

    let (code, ctype, jwks) = get_raw(&sim, "/openid/v1/jwks").await;
    assert_eq!((code, ctype.as_str()), (200, "application/jwk-set+json"));
    assert_eq!(jwks, sim.jwks());
    let keys = jwks["keys"].as_array().unwrap();
    assert_eq!(keys.len(), 1);
    let key = &keys[0];
    assert_eq!(
        (&key["kty"], &key["crv"], &key["alg"], &key["use"]),
        (
            &json!("EC"),
            &json!("P-256"),
            &json!("ES256"),
            &json!("sig")
        )
    );
    assert_eq!(key["kid"], sim.token_signer().kid());
    for c in ["x", "y"] {
        let s = key[c].as_str().unwrap();
        assert_eq!(s.len(), 43, "{c}: 32 bytes, base64url without padding");
        assert!(!s.contains(['=', '+', '/']), "{c}: {s}");
    }
    let set: JwkSet = serde_json::from_value(jwks.clone()).unwrap();
    DecodingKey::from_jwk(&set.keys[0]).expect("a usable EC key");

    // over TCP, with no credentials at all, the jwks_uri is the served URL
    let addr = sim.serve("127.0.0.1:0").await.unwrap();
    let url = sim.server_url().unwrap();
    assert_eq!(url, format!("http://{addr}"));
    let http: kube::Client = kube::Config::new(url.parse().unwrap()).try_into().unwrap();
    let config = get_json(&http, "/.well-known/openid-configuration")
        .await
        .unwrap();
    assert_eq!(config["jwks_uri"], format!("{url}/openid/v1/jwks"));
    assert_eq!(config["issuer"], DEFAULT_ISSUER);
    assert_eq!(get_json(&http, "/openid/v1/jwks").await.unwrap(), jwks);
    let anon_requests = sim
        .requests()
        .filter(|r| r.user == "system:anonymous" && r.code == 200);
    assert_eq!(anon_requests.len(), 4, "{anon_requests:?}");
}

#[tokio::test]
async fn a_token_request_for_an_existing_service_account_returns_a_token_that_verifies_against_the_served_jwks()
 {
    let sim = KubeSim::new();
    let sa = create_sa(&sim, "ns", "agent").await;
    let uid = sa.metadata.uid.clone().unwrap();
    let sas: Api<ServiceAccount> = Api::namespaced(sim.client(), "ns");

    let before = now();
    let tr = sas
        .create_token_request(
            "agent",
            &PostParams::default(),
            &token_request(&["snapgate-scheduler"], Some(1200)),
        )
        .await
        .unwrap();
    let after = now();
    assert_eq!(tr.metadata.name.as_deref(), Some("agent"));
    assert_eq!(tr.metadata.namespace.as_deref(), Some("ns"));
    assert_eq!(
        spec_of(&tr),
        (vec!["snapgate-scheduler".to_string()], Some(1200))
    );
    let status = tr.status.expect("a status");
    let token = status.token;
    let expiration = status.expiration_timestamp;

    let header = jsonwebtoken::decode_header(&token).unwrap();
    assert_eq!(header.alg, Algorithm::ES256);
    assert_eq!(header.kid.as_deref(), Some(sim.token_signer().kid()));

    let jwks = get_json(&anonymous(&sim), "/openid/v1/jwks").await.unwrap();
    let claims = verify(&jwks, &token, DEFAULT_ISSUER, "snapgate-scheduler").unwrap();
    assert_eq!(claims["iss"], DEFAULT_ISSUER);
    assert_eq!(claims["sub"], "system:serviceaccount:ns:agent");
    assert_eq!(claims["aud"], json!(["snapgate-scheduler"]));
    assert_eq!(
        claims["kubernetes.io"],
        json!({"namespace": "ns", "serviceaccount": {"name": "agent", "uid": uid}})
    );
    let (iat, nbf, exp) = (
        claims["iat"].as_i64().unwrap(),
        claims["nbf"].as_i64().unwrap(),
        claims["exp"].as_i64().unwrap(),
    );
    assert!(
        (before..=after).contains(&iat),
        "{before} <= {iat} <= {after}"
    );
    assert_eq!(nbf, iat);
    assert_eq!(exp, iat + 1200);
    assert_eq!(expiration.0.as_second(), exp);
    let jti = claims["jti"].as_str().unwrap();
    assert_eq!(jti.len(), 36, "a UUID: {jti}");

    // a second token has another jti
    let again = sas
        .create_token_request(
            "agent",
            &PostParams::default(),
            &token_request(&["snapgate-scheduler"], Some(1200)),
        )
        .await
        .unwrap();
    let claims2 = verify(
        &jwks,
        &token_of(again),
        DEFAULT_ISSUER,
        "snapgate-scheduler",
    )
    .unwrap();
    assert_ne!(claims2["jti"], claims["jti"]);

    // the offline checks refuse the wrong audience, issuer, or key
    let wrong_aud = verify(&jwks, &token, DEFAULT_ISSUER, "someone-else").unwrap_err();
    assert_eq!(
        wrong_aud.kind(),
        &jsonwebtoken::errors::ErrorKind::InvalidAudience
    );
    let wrong_iss = verify(&jwks, &token, "https://elsewhere", "snapgate-scheduler").unwrap_err();
    assert_eq!(
        wrong_iss.kind(),
        &jsonwebtoken::errors::ErrorKind::InvalidIssuer
    );
    let other = TokenSigner::generate();
    let mut foreign = other.jwks();
    foreign["keys"][0]["kid"] = json!(sim.token_signer().kid());
    let wrong_key = verify(&foreign, &token, DEFAULT_ISSUER, "snapgate-scheduler").unwrap_err();
    assert_eq!(
        wrong_key.kind(),
        &jsonwebtoken::errors::ErrorKind::InvalidSignature
    );
    assert_eq!(
        sim.requests().count(|r| r.verb == Some(Verb::Create)
            && r.resource == "serviceaccounts"
            && r.subresource.as_deref() == Some("token")
            && r.code == 201),
        2
    );
}

#[tokio::test]
async fn a_token_request_without_audiences_or_expiration_is_for_the_issuer_for_one_hour() {
    let sim = KubeSim::new();
    create_sa(&sim, "ns", "agent").await;
    let tr = Api::<ServiceAccount>::namespaced(sim.client(), "ns")
        .create_token_request("agent", &PostParams::default(), &token_request(&[], None))
        .await
        .unwrap();
    assert_eq!(spec_of(&tr), (vec![DEFAULT_ISSUER.to_string()], Some(3600)));
    let claims = verify(&sim.jwks(), &token_of(tr), DEFAULT_ISSUER, DEFAULT_ISSUER).unwrap();
    assert_eq!(claims["aud"], json!([DEFAULT_ISSUER]));
    assert_eq!(
        claims["exp"].as_i64().unwrap() - claims["iat"].as_i64().unwrap(),
        3600
    );
}

#[tokio::test]
async fn a_token_request_for_a_missing_service_account_is_404_not_found() {
    let sim = KubeSim::new();
    sim.ensure_namespace("ns");
    let e = api_error(
        Api::<ServiceAccount>::namespaced(sim.client(), "ns")
            .create_token_request(
                "ghost",
                &PostParams::default(),
                &token_request(&["a"], Some(3600)),
            )
            .await
            .unwrap_err(),
    );
    assert_eq!((e.code, e.reason.as_str()), (404, "NotFound"));
    assert_eq!(e.message, "serviceaccounts \"ghost\" not found");
}

#[tokio::test]
async fn a_token_request_shorter_than_ten_minutes_or_longer_than_2_32_seconds_is_422_invalid() {
    let sim = KubeSim::new();
    create_sa(&sim, "ns", "agent").await;
    let sas: Api<ServiceAccount> = Api::namespaced(sim.client(), "ns");
    let e = api_error(
        sas.create_token_request(
            "agent",
            &PostParams::default(),
            &token_request(&[], Some(599)),
        )
        .await
        .unwrap_err(),
    );
    assert_eq!((e.code, e.reason.as_str()), (422, "Invalid"));
    assert_eq!(
        e.message,
        "TokenRequest.authentication.k8s.io \"\" is invalid: spec.expirationSeconds: Invalid value: 599: may not specify a duration less than 10 minutes"
    );
    let details = e.details.expect("details");
    assert_eq!(
        (
            details.group.as_str(),
            details.kind.as_str(),
            details.name.as_str()
        ),
        ("authentication.k8s.io", "TokenRequest", "")
    );
    assert_eq!(details.causes.len(), 1);
    assert_eq!(details.causes[0].field, "spec.expirationSeconds");
    assert_eq!(details.causes[0].reason, "FieldValueInvalid");

    let e = api_error(
        sas.create_token_request(
            "agent",
            &PostParams::default(),
            &token_request(&[], Some((1 << 32) + 1)),
        )
        .await
        .unwrap_err(),
    );
    assert_eq!((e.code, e.reason.as_str()), (422, "Invalid"));
    assert!(
        e.message
            .ends_with("may not specify a duration larger than 2^32 seconds"),
        "{}",
        e.message
    );

    let tr = sas
        .create_token_request(
            "agent",
            &PostParams::default(),
            &token_request(&[], Some(600)),
        )
        .await
        .expect("ten minutes is the minimum, allowed");
    assert_eq!(spec_of(&tr).1, Some(600));
}

#[tokio::test]
async fn token_requests_need_create_on_serviceaccounts_token_under_rbac() {
    let sim = KubeSim::new();
    create_sa(&sim, "ns", "agent").await;
    sim.add_token("reader-token", "system:serviceaccount:ns:reader");
    sim.add_token("minter-token", "system:serviceaccount:ns:minter");
    grant(
        &sim,
        "ns",
        "reader",
        json!([{"apiGroups": [""], "resources": ["serviceaccounts"], "verbs": ["*"]}]),
    )
    .await;
    grant(
        &sim,
        "ns",
        "minter",
        json!([{"apiGroups": [""], "resources": ["serviceaccounts/token"], "verbs": ["create"]}]),
    )
    .await;
    sim.enforce_rbac(true);

    let reader: Api<ServiceAccount> = Api::namespaced(sim.client_as("reader-token"), "ns");
    reader.get("agent").await.expect("the reader reads SAs");
    let e = api_error(
        reader
            .create_token_request("agent", &PostParams::default(), &token_request(&[], None))
            .await
            .unwrap_err(),
    );
    assert_eq!((e.code, e.reason.as_str()), (403, "Forbidden"));
    assert_eq!(
        e.message,
        "serviceaccounts \"agent\" is forbidden: User \"system:serviceaccount:ns:reader\" cannot create resource \"serviceaccounts/token\" in API group \"\" in the namespace \"ns\""
    );

    let minter: Api<ServiceAccount> = Api::namespaced(sim.client_as("minter-token"), "ns");
    let tr = minter
        .create_token_request("agent", &PostParams::default(), &token_request(&[], None))
        .await
        .expect("create on serviceaccounts/token is enough");
    assert!(!token_of(tr).is_empty());
    assert_eq!(
        api_error(minter.get("agent").await.unwrap_err()).code,
        403,
        "serviceaccounts/token does not grant serviceaccounts"
    );
    let denied = sim.requests().count(|r| {
        r.user == "system:serviceaccount:ns:reader"
            && r.subresource.as_deref() == Some("token")
            && r.code == 403
    });
    assert_eq!(denied, 1);
}

#[tokio::test]
async fn a_simulator_token_authenticates_to_the_simulator_as_its_service_account() {
    let sim = KubeSim::new();
    create_sa(&sim, "ns", "agent").await;
    grant(
        &sim,
        "ns",
        "agent",
        json!([{"apiGroups": [""], "resources": ["configmaps"], "verbs": ["get"]}]),
    )
    .await;
    let mut cm = ConfigMap::default();
    cm.metadata.name = Some("settings".into());
    Api::<ConfigMap>::namespaced(sim.client(), "ns")
        .create(&PostParams::default(), &cm)
        .await
        .unwrap();
    sim.enforce_rbac(true);

    // through the TokenRequest API, with the default audience (the issuer)
    let tr = Api::<ServiceAccount>::namespaced(sim.client(), "ns")
        .create_token_request("agent", &PostParams::default(), &token_request(&[], None))
        .await
        .unwrap();
    let token = token_of(tr);
    let cms: Api<ConfigMap> = Api::namespaced(sim.client_as(&token), "ns");
    cms.get("settings").await.expect("the role grants get");
    let e = api_error(cms.list(&ListParams::default()).await.unwrap_err());
    assert_eq!(e.code, 403, "authenticated, but not allowed to list");
    assert!(
        e.message
            .contains("User \"system:serviceaccount:ns:agent\" cannot list"),
        "{}",
        e.message
    );
    let records = sim.requests().filter(|r| r.resource == "configmaps");
    let users: Vec<(&str, u16)> = records.iter().map(|r| (r.user.as_str(), r.code)).collect();
    assert_eq!(
        users,
        [
            ("kube-sim:admin", 201),
            ("system:serviceaccount:ns:agent", 200),
            ("system:serviceaccount:ns:agent", 403),
        ]
    );

    // through the test API, and over TCP too
    let issued = sim.issue_token("ns", "agent", &[], Duration::from_secs(60));
    Api::<ConfigMap>::namespaced(sim.client_as(&issued), "ns")
        .get("settings")
        .await
        .expect("issue_token's token authenticates");
    sim.serve("127.0.0.1:0").await.unwrap();
    let mut config = kube::Config::new(sim.server_url().unwrap().parse().unwrap());
    config.default_namespace = "ns".into();
    config.auth_info.token = Some(issued.into());
    let http: kube::Client = config.try_into().unwrap();
    Api::<ConfigMap>::namespaced(http, "ns")
        .get("settings")
        .await
        .expect("the token works over HTTP");
    assert_eq!(
        sim.requests().count_user("system:serviceaccount:ns:agent"),
        4
    );
}

#[tokio::test]
async fn tokens_that_are_expired_not_for_the_issuer_from_another_key_or_for_a_gone_service_account_are_401()
 {
    let sim = KubeSim::new();
    let hour = Duration::from_secs(3600);
    let as_user = |token: &str| {
        let sim = sim.clone();
        let token = token.to_string();
        async move {
            Api::<ConfigMap>::namespaced(sim.client_as(&token), "ns")
                .list(&ListParams::default())
                .await
        }
    };
    let good = sim.issue_token("ns", "agent", &[], hour);
    as_user(&good).await.expect("a good token authenticates");

    let base = sim.service_account_claims("ns", "agent", &[], hour);
    let odd = |edit: &dyn Fn(&mut Value)| {
        let mut c = base.clone();
        edit(&mut c);
        sim.sign_claims(c)
    };
    let cases: Vec<(&str, String)> = vec![
        (
            "expired",
            odd(&|c| {
                c["exp"] = json!(now() - 120);
                c["iat"] = json!(now() - 3600);
                c["nbf"] = json!(now() - 3600);
            }),
        ),
        ("not yet valid", odd(&|c| c["nbf"] = json!(now() + 600))),
        ("another audience", odd(&|c| c["aud"] = json!(["snapgate"]))),
        (
            "another issuer",
            odd(&|c| c["iss"] = json!("https://elsewhere")),
        ),
        (
            "no exp",
            odd(&|c| {
                c.as_object_mut().unwrap().remove("exp");
            }),
        ),
        (
            "another uid",
            odd(&|c| c["kubernetes.io"]["serviceaccount"]["uid"] = json!("0000")),
        ),
        (
            "no kubernetes.io claim",
            odd(&|c| {
                c.as_object_mut().unwrap().remove("kubernetes.io");
            }),
        ),
        ("another key", TokenSigner::generate().sign(&base)),
        ("not a JWT", "a.b.c".to_string()),
    ];
    for (why, token) in &cases {
        match as_user(token).await.unwrap_err() {
            kube::Error::Api(s) => {
                assert_eq!((s.code, s.reason.as_str()), (401, "Unauthorized"), "{why}")
            }
            other => panic!("{why}: {other:?}"),
        }
    }
    let edited = odd(&|c| c["aud"] = json!(["snapgate", DEFAULT_ISSUER]));
    as_user(&edited)
        .await
        .expect("an audience list including the issuer is accepted");

    // deleting the ServiceAccount invalidates its tokens, recreating it does not revive them
    Api::<ServiceAccount>::namespaced(sim.client(), "ns")
        .delete("agent", &DeleteParams::default())
        .await
        .unwrap();
    assert_eq!(api_error(as_user(&good).await.unwrap_err()).code, 401);
    create_sa(&sim, "ns", "agent").await;
    assert_eq!(api_error(as_user(&good).await.unwrap_err()).code, 401);
    let fresh = sim.issue_token("ns", "agent", &[], hour);
    as_user(&fresh).await.expect("a token for the new uid");

    // static tokens keep working next to signed ones
    sim.add_token("static", "someone");
    as_user("static").await.expect("static tokens");
}

#[tokio::test]
async fn changing_the_issuer_changes_discovery_and_new_tokens_and_refuses_old_ones() {
    let sim = KubeSim::new();
    let old = sim.issue_token("ns", "agent", &[], Duration::from_secs(3600));
    sim.serve("127.0.0.1:0").await.unwrap();
    let url = sim.server_url().unwrap();
    sim.set_issuer(&url);
    assert_eq!(sim.issuer(), url);
    let config = get_json(&anonymous(&sim), "/.well-known/openid-configuration")
        .await
        .unwrap();
    assert_eq!(config["issuer"], url);
    assert_eq!(config["jwks_uri"], format!("{url}/openid/v1/jwks"));

    let cms = |t: &str| Api::<ConfigMap>::namespaced(sim.client_as(t), "ns");
    assert_eq!(
        api_error(cms(&old).list(&ListParams::default()).await.unwrap_err()).code,
        401,
        "the old issuer is no longer accepted"
    );
    let tr = Api::<ServiceAccount>::namespaced(sim.client(), "ns")
        .create_token_request("agent", &PostParams::default(), &token_request(&[], None))
        .await
        .unwrap();
    assert_eq!(spec_of(&tr).0, vec![url.clone()]);
    let token = token_of(tr);
    let claims = verify(&sim.jwks(), &token, &url, &url).unwrap();
    assert_eq!(claims["iss"], url);
    cms(&token)
        .list(&ListParams::default())
        .await
        .expect("a token of the new issuer authenticates");
}

#[tokio::test]
async fn a_token_signer_signs_what_its_own_jwks_verifies_and_no_other() {
    let a = TokenSigner::generate();
    let b = TokenSigner::generate();
    assert_ne!(a.kid(), b.kid());
    assert_eq!(a.kid().len(), 11, "8 bytes, base64url without padding");
    let claims = json!({"iss": "i", "aud": ["x"], "sub": "s", "exp": now() + 600});
    let token = a.sign(&claims);
    assert_eq!(verify(&a.jwks(), &token, "i", "x").unwrap(), claims);
    let mut b_as_a = b.jwks();
    b_as_a["keys"][0]["kid"] = json!(a.kid());
    assert_eq!(
        verify(&b_as_a, &token, "i", "x").unwrap_err().kind(),
        &jsonwebtoken::errors::ErrorKind::InvalidSignature
    );
}

#[tokio::test]
async fn discovery_lists_the_token_subresource_which_only_takes_post() {
    let sim = KubeSim::new();
    let list = get_json(&sim.client(), "/api/v1").await.unwrap();
    let entry = list["resources"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["name"] == "serviceaccounts/token")
        .expect("serviceaccounts/token is discovered")
        .clone();
    assert_eq!(entry["kind"], "TokenRequest");
    assert_eq!(entry["group"], "authentication.k8s.io");
    assert_eq!(entry["version"], "v1");
    assert_eq!(entry["verbs"], json!(["create"]));
    assert_eq!(entry["namespaced"], true);

    create_sa(&sim, "ns", "agent").await;
    let e = get_json(
        &sim.client(),
        "/api/v1/namespaces/ns/serviceaccounts/agent/token",
    )
    .await
    .unwrap_err();
    assert_eq!(api_error(e).code, 405);
}
