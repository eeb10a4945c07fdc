//! ServiceAccount tokens, issued and checked as a real API server does.
//!
//! Each simulator holds one ECDSA P-256 signing key (a [`TokenSigner`]) and an
//! issuer string (default [`DEFAULT_ISSUER`]). It serves:
//!
//! * `GET /.well-known/openid-configuration` and `GET /openid/v1/jwks`, the OIDC
//!   discovery documents a real cluster serves to `system:service-account-issuer-discovery`
//!   (here to anyone, with or without a token);
//! * the TokenRequest API, `POST /api/v1/namespaces/{ns}/serviceaccounts/{name}/token`,
//!   which signs an ES256 JWT with the claims Kubernetes puts in a token;
//! * authentication of its own tokens as bearer tokens: a token it signed, with its
//!   current issuer, an audience including that issuer, inside `nbf`..`exp` (60 s of
//!   leeway, as go-jose allows), for a ServiceAccount that still exists with the
//!   token's uid, is the user `system:serviceaccount:<ns>:<name>`.
//!
//! Not simulated: tokens bound to a Pod, Secret or Node (`spec.boundObjectRef` is
//! refused with 400), `--service-account-max-token-expiration`, and key rotation.

use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use bytes::Bytes;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use ring::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair};
use serde_json::{Value, json};

use crate::SimState;
use crate::error::{ApiError, ErrorDetails, StatusCause};
use crate::resources;
use crate::store::{WriteOptions, new_uid};

/// The issuer a simulator signs with unless told otherwise (what real clusters commonly use).
pub const DEFAULT_ISSUER: &str = "https://kubernetes.default.svc.cluster.local";
/// `spec.expirationSeconds` of a TokenRequest that does not say (the API's default).
pub const DEFAULT_EXPIRATION_SECONDS: i64 = 3600;
/// The shortest `spec.expirationSeconds` the TokenRequest API accepts (10 minutes).
pub const MIN_EXPIRATION_SECONDS: i64 = 600;
/// The longest `spec.expirationSeconds` the TokenRequest API accepts (2^32 seconds).
pub const MAX_EXPIRATION_SECONDS: i64 = 1 << 32;
/// Path of the OIDC discovery document.
pub const OPENID_CONFIGURATION_PATH: &str = "/.well-known/openid-configuration";
/// Path of the JSON Web Key Set.
pub const JWKS_PATH: &str = "/openid/v1/jwks";

const TOKEN_REQUEST_GROUP: &str = "authentication.k8s.io";
const TOKEN_REQUEST_API_VERSION: &str = "authentication.k8s.io/v1";
const TOKEN_REQUEST_KIND: &str = "TokenRequest";

/// An ECDSA P-256 key signing ES256 JWTs, with its public half as a JWKS.
///
/// [`crate::KubeSim`] holds one; make another with [`TokenSigner::generate`] for "a
/// token signed by some other key".
#[derive(Clone)]
pub struct TokenSigner {
    key: EncodingKey,
    /// The uncompressed public point, `0x04 || x || y`.
    public: Vec<u8>,
    kid: String,
}

impl std::fmt::Debug for TokenSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenSigner")
            .field("kid", &self.kid)
            .finish_non_exhaustive()
    }
}

impl TokenSigner {
    /// A fresh random key. Its key id is the base64url (unpadded) of the first 8 bytes
    /// of the SHA-256 of the uncompressed public point.
    ///
    /// # Panics
    ///
    /// If the system random number generator fails.
    pub fn generate() -> Self {
        let rng = ring::rand::SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng)
            .expect("generating an ECDSA P-256 key");
        let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref(), &rng)
            .expect("a key ring generated parses");
        let public = pair.public_key().as_ref().to_vec();
        let digest = ring::digest::digest(&ring::digest::SHA256, &public);
        let kid = URL_SAFE_NO_PAD.encode(&digest.as_ref()[..8]);
        Self {
            key: EncodingKey::from_ec_der(pkcs8.as_ref()),
            public,
            kid,
        }
    }

    /// The key id (`kid`) in every token's header and in the JWK.
    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// Sign `claims` (any JSON object) as an ES256 JWT with header `{"alg":"ES256","kid":..}`.
    ///
    /// # Panics
    ///
    /// Never for a key made by [`TokenSigner::generate`]; signing cannot otherwise fail.
    pub fn sign(&self, claims: &Value) -> String {
        self.try_sign(claims).expect("signing with a generated key")
    }

    pub(crate) fn try_sign(&self, claims: &Value) -> Result<String, jsonwebtoken::errors::Error> {
        let mut header = Header::new(Algorithm::ES256);
        header.typ = None;
        header.kid = Some(self.kid.clone());
        jsonwebtoken::encode(&header, claims, &self.key)
    }

    /// The public key as a JWK: `{"kty":"EC","crv":"P-256","x","y","kid","alg":"ES256","use":"sig"}`.
    pub fn jwk(&self) -> Value {
        let (x, y) = self.public[1..].split_at(32);
        json!({
            "use": "sig",
            "kty": "EC",
            "kid": self.kid,
            "crv": "P-256",
            "alg": "ES256",
            "x": URL_SAFE_NO_PAD.encode(x),
            "y": URL_SAFE_NO_PAD.encode(y),
        })
    }

    /// The JSON Web Key Set `{"keys":[<jwk>]}`, as served at [`JWKS_PATH`].
    pub fn jwks(&self) -> Value {
        json!({"keys": [self.jwk()]})
    }

    /// Verify a token's signature, `exp`/`nbf` (60 s leeway), `iss` and that `aud`
    /// includes `audience`; the claims on success.
    pub(crate) fn verify(
        &self,
        token: &str,
        issuer: &str,
        audience: &str,
    ) -> Result<Value, jsonwebtoken::errors::Error> {
        let mut v = Validation::new(Algorithm::ES256);
        v.set_issuer(&[issuer]);
        v.set_audience(&[audience]);
        v.set_required_spec_claims(&["exp", "iss", "aud"]);
        v.validate_nbf = true;
        let key = DecodingKey::from_ec_der(&self.public);
        jsonwebtoken::decode::<Value>(token, &key, &v).map(|d| d.claims)
    }
}

/// The claims Kubernetes puts in a ServiceAccount token (not bound to any object).
pub(crate) fn service_account_claims(
    issuer: &str,
    ns: &str,
    name: &str,
    uid: &str,
    audiences: &[String],
    now: i64,
    ttl_seconds: i64,
) -> Value {
    json!({
        "aud": audiences,
        "exp": now.saturating_add(ttl_seconds),
        "iat": now,
        "iss": issuer,
        "jti": new_uid(),
        "kubernetes.io": {
            "namespace": ns,
            "serviceaccount": {"name": name, "uid": uid},
        },
        "nbf": now,
        "sub": format!("system:serviceaccount:{ns}:{name}"),
    })
}

/// Now, in seconds since the Unix epoch (wall clock, as tokens need).
pub(crate) fn unix_now() -> i64 {
    chrono::Utc::now().timestamp()
}

/// A duration in whole seconds, saturating.
pub(crate) fn ttl_seconds(ttl: Duration) -> i64 {
    i64::try_from(ttl.as_secs()).unwrap_or(i64::MAX)
}

fn rfc3339(secs: i64) -> String {
    chrono::DateTime::from_timestamp(secs, 0)
        .unwrap_or_default()
        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

fn service_accounts() -> Result<&'static resources::ResourceDef, ApiError> {
    resources::find_plural("", "serviceaccounts")
        .ok_or_else(|| ApiError::new(500, "InternalError", "serviceaccounts are not simulated"))
}

/// The uid of ServiceAccount `ns/name`, creating it (and its namespace) if missing.
pub(crate) fn ensure_service_account(state: &SimState, ns: &str, name: &str) -> String {
    let Ok(sa) = service_accounts() else {
        return String::new();
    };
    if let Some(nsdef) = resources::find_plural("", "namespaces")
        && state.store.get(nsdef, None, ns).is_err()
    {
        let _ = state.store.create(
            nsdef,
            None,
            json!({"metadata": {"name": ns}}),
            &WriteOptions::default(),
        );
    }
    let obj = match state.store.get(sa, Some(ns), name) {
        Ok(obj) => Ok(obj),
        Err(_) => state.store.create(
            sa,
            Some(ns),
            json!({"metadata": {"name": name, "namespace": ns}}),
            &WriteOptions::default(),
        ),
    };
    obj.ok()
        .and_then(|o| o["metadata"]["uid"].as_str().map(str::to_string))
        .unwrap_or_default()
}

/// A 422 Invalid for a TokenRequest, worded as the real server words it.
fn invalid(name: &str, field: &str, value: &str, message: &str) -> ApiError {
    let detail = format!("Invalid value: {value}: {message}");
    let mut e = ApiError::new(
        422,
        "Invalid",
        format!(
            "{TOKEN_REQUEST_KIND}.{TOKEN_REQUEST_GROUP} \"{name}\" is invalid: {field}: {detail}"
        ),
    );
    e.details = Some(Box::new(ErrorDetails {
        name: (!name.is_empty()).then(|| name.to_string()),
        group: Some(TOKEN_REQUEST_GROUP.into()),
        kind: Some(TOKEN_REQUEST_KIND.into()),
        causes: vec![StatusCause {
            reason: "FieldValueInvalid".into(),
            message: detail,
            field: field.into(),
        }],
        empty: false,
    }));
    e
}

/// `POST .../namespaces/{ns}/serviceaccounts/{name}/token`: the TokenRequest echoed,
/// with `status.token` and `status.expirationTimestamp`, in the order of checks of the
/// real `TokenREST.Create`.
pub(crate) fn token_request(
    state: &SimState,
    ns: &str,
    name: &str,
    body: &Bytes,
) -> Result<Value, ApiError> {
    let mut req: Value = serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("invalid JSON body: {e}")))?;
    if !req.is_object() {
        return Err(ApiError::bad_request(
            "the body of a TokenRequest must be a JSON object",
        ));
    }
    if let Some(v) = req.get("apiVersion").and_then(Value::as_str)
        && v != TOKEN_REQUEST_API_VERSION
    {
        return Err(ApiError::bad_request(format!(
            "the API version in the data ({v}) does not match the expected API version ({TOKEN_REQUEST_API_VERSION})"
        )));
    }
    if let Some(k) = req.get("kind").and_then(Value::as_str)
        && k != TOKEN_REQUEST_KIND
    {
        return Err(ApiError::bad_request(format!(
            "the kind in the data ({k}) does not match the expected kind ({TOKEN_REQUEST_KIND})"
        )));
    }
    let spec = req.get("spec").cloned().unwrap_or_else(|| json!({}));
    if !spec.is_object() && !spec.is_null() {
        return Err(ApiError::bad_request("spec must be an object"));
    }
    let expiration = match spec.get("expirationSeconds") {
        None | Some(Value::Null) => DEFAULT_EXPIRATION_SECONDS,
        Some(v) => v.as_i64().ok_or_else(|| {
            ApiError::bad_request(format!(
                "spec.expirationSeconds must be an integer, got {v}"
            ))
        })?,
    };
    let audiences: Vec<String> = match spec.get("audiences") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(a)) => a
            .iter()
            .map(|v| {
                v.as_str().map(str::to_string).ok_or_else(|| {
                    ApiError::bad_request("spec.audiences must be a list of strings")
                })
            })
            .collect::<Result<_, _>>()?,
        Some(_) => {
            return Err(ApiError::bad_request(
                "spec.audiences must be a list of strings",
            ));
        }
    };
    if spec.get("boundObjectRef").is_some_and(|b| !b.is_null()) {
        return Err(ApiError::bad_request(
            "kube-sim does not simulate tokens bound to an object (spec.boundObjectRef)",
        ));
    }
    let meta = req.get("metadata").cloned().unwrap_or_else(|| json!({}));
    if let Some(n) = meta.get("name").and_then(Value::as_str)
        && !n.is_empty()
        && n != name
    {
        return Err(invalid(
            name,
            "metadata.name",
            &format!("{n:?}"),
            "must match the service account name if specified",
        ));
    }
    if let Some(n) = meta.get("namespace").and_then(Value::as_str)
        && !n.is_empty()
        && n != ns
    {
        return Err(invalid(
            name,
            "metadata.namespace",
            &format!("{n:?}"),
            "must match the service account namespace if specified",
        ));
    }
    let sa = state.store.get(service_accounts()?, Some(ns), name)?;
    let uid = sa["metadata"]["uid"].as_str().unwrap_or("");
    let issuer = state.issuer();
    let audiences = if audiences.is_empty() {
        vec![issuer.clone()]
    } else {
        audiences
    };
    let now = unix_now();
    if expiration < MIN_EXPIRATION_SECONDS {
        return Err(invalid(
            "",
            "spec.expirationSeconds",
            &expiration.to_string(),
            "may not specify a duration less than 10 minutes",
        ));
    }
    if expiration > MAX_EXPIRATION_SECONDS {
        return Err(invalid(
            "",
            "spec.expirationSeconds",
            &expiration.to_string(),
            "may not specify a duration larger than 2^32 seconds",
        ));
    }
    let claims = service_account_claims(&issuer, ns, name, uid, &audiences, now, expiration);
    let token = state
        .signer
        .try_sign(&claims)
        .map_err(|e| ApiError::new(500, "InternalError", format!("signing the token: {e}")))?;
    req["apiVersion"] = json!(TOKEN_REQUEST_API_VERSION);
    req["kind"] = json!(TOKEN_REQUEST_KIND);
    req["metadata"] = json!({
        "name": name,
        "namespace": ns,
        "creationTimestamp": rfc3339(now),
    });
    req["spec"] = json!({
        "audiences": audiences,
        "expirationSeconds": expiration,
        "boundObjectRef": null,
    });
    req["status"] = json!({
        "token": token,
        "expirationTimestamp": rfc3339(now.saturating_add(expiration)),
    });
    Ok(req)
}

/// The user a bearer token signed by this simulator stands for, if it is valid now.
pub(crate) fn authenticate(state: &SimState, token: &str) -> Option<String> {
    // a cheap filter before any crypto: three dot-separated parts
    if token.split('.').count() != 3 {
        return None;
    }
    let issuer = state.issuer();
    let claims = state.signer.verify(token, &issuer, &issuer).ok()?;
    let k = &claims["kubernetes.io"];
    let ns = k["namespace"].as_str().filter(|s| !s.is_empty())?;
    let name = k["serviceaccount"]["name"]
        .as_str()
        .filter(|s| !s.is_empty())?;
    let uid = k["serviceaccount"]["uid"].as_str()?;
    // the real authenticator looks the ServiceAccount up: deleted, recreated
    // (another uid) or being deleted, its tokens no longer authenticate
    let sa = state
        .store
        .get(service_accounts().ok()?, Some(ns), name)
        .ok()?;
    if sa["metadata"]["uid"].as_str() != Some(uid)
        || sa["metadata"]
            .get("deletionTimestamp")
            .is_some_and(|d| !d.is_null())
    {
        return None;
    }
    Some(format!("system:serviceaccount:{ns}:{name}"))
}

/// `/.well-known/openid-configuration`.
pub(crate) fn openid_configuration(state: &SimState) -> Value {
    json!({
        "issuer": state.issuer(),
        "jwks_uri": state.jwks_uri(),
        "response_types_supported": ["id_token"],
        "subject_types_supported": ["public"],
        "id_token_signing_alg_values_supported": ["ES256"],
    })
}
