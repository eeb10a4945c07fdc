//! Who presents a bearer token: Kubernetes ServiceAccount tokens (or any OIDC-style JWT of a
//! configured issuer), validated offline against the issuer's key set.
//!
//! ```text
//!  token ─► header (kid, alg) ─► the issuer whose key set has that kid ─► signature, iss, aud,
//!           exp/nbf (60 s leeway) ─► Subject { name: sub, service account, cluster }
//!  key set: a file or a URL (the cluster's /openid/v1/jwks), loaded at start, refreshed every
//!           5 minutes and, at most every 10 s, when a token names a key it does not hold
//! ```
//!
//! One issuer today; [`Authenticator`] holds a list so that one scheduler can later accept
//! several clusters (the cluster name is part of every [`Subject`]).

use std::{
    collections::{HashMap, HashSet},
    path::PathBuf,
    sync::{Arc, Mutex, RwLock},
    time::{Duration, Instant},
};

use anyhow::Context as _;
use jsonwebtoken::{Algorithm, DecodingKey, Validation, jwk::JwkSet};
use rustls_pki_types::pem::PemObject as _;
use serde::Deserialize;
use sha2::Digest as _;
use tokio::sync::Notify;
use tracing::{info, warn};

/// How often the key sets are read again without being asked.
pub const JWKS_REFRESH_EVERY: Duration = Duration::from_secs(300);
/// The shortest time between two refreshes asked for by tokens naming an unknown key.
pub const JWKS_REFRESH_MIN_GAP: Duration = Duration::from_secs(10);
/// The clock skew allowed on `exp` and `nbf`.
pub const LEEWAY_SECONDS: u64 = 60;
/// The largest bearer token read.
pub const MAX_TOKEN_BYTES: usize = 16 * 1024;
/// The longest a key-set fetch may take, headers and body.
pub const JWKS_FETCH_TIMEOUT: Duration = Duration::from_secs(20);
/// The longest-lived token accepted (`exp` - `iat`): a leaked token is not valid for ever.
pub const MAX_TOKEN_LIFETIME_SECONDS: i64 = 24 * 3600;
/// The largest key set read.
const MAX_JWKS_BYTES: usize = 1024 * 1024;
/// How long a token whose signature was verified is taken on trust without verifying it
/// again (never past its `exp` and the leeway): a key dropped from the key set stops
/// admitting its tokens within this. Verifying a signature costs tens of microseconds, and
/// a client presents the same token on every call until it renews it.
pub const VERIFIED_TTL: Duration = Duration::from_secs(10);
/// The most verified tokens remembered (by their SHA-256, never the token itself).
pub const MAX_VERIFIED: usize = 10_000;

/// How long a token expiring at `exp` (Unix seconds) may be trusted from `now`: at most
/// [`VERIFIED_TTL`], never past `exp` plus the leeway.
fn trust_for(exp: i64, now: i64) -> Duration {
    let left = exp
        .saturating_add(LEEWAY_SECONDS as i64)
        .saturating_sub(now);
    Duration::from_secs(u64::try_from(left).unwrap_or(0)).min(VERIFIED_TTL)
}

/// Signature algorithms accepted (asymmetric only: a key set never verifies an HMAC).
const ALGORITHMS: [Algorithm; 7] = [
    Algorithm::RS256,
    Algorithm::RS384,
    Algorithm::RS512,
    Algorithm::PS256,
    Algorithm::PS384,
    Algorithm::ES256,
    Algorithm::ES384,
];

/// Where an issuer's key set comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum JwksSource {
    /// A JSON Web Key Set file (a mounted ConfigMap, say), read again on every refresh.
    File(PathBuf),
    /// A URL, e.g. `https://kubernetes.default.svc/openid/v1/jwks`.
    Url {
        /// The URL (`http://` or `https://`).
        url: String,
        /// A bearer token file sent with the request (the scheduler's own projected token).
        token_file: Option<PathBuf>,
        /// A CA bundle for `https://` (else the system roots).
        ca_file: Option<PathBuf>,
    },
}

impl JwksSource {
    /// A file path, or a URL when it starts with `http://` or `https://`.
    pub fn parse(value: &str, token_file: Option<PathBuf>, ca_file: Option<PathBuf>) -> Self {
        if value.starts_with("http://") || value.starts_with("https://") {
            Self::Url {
                url: value.to_owned(),
                token_file,
                ca_file,
            }
        } else {
            Self::File(PathBuf::from(value))
        }
    }
}

/// One trusted token issuer.
#[derive(Clone, Debug)]
pub struct IssuerConfig {
    /// The cluster this issuer speaks for ("" for the one cluster of today).
    pub cluster: String,
    /// The `iss` claim its tokens carry.
    pub issuer: String,
    /// The audience tokens must be made for (`aud`).
    pub audience: String,
    /// Where its keys are.
    pub jwks: JwksSource,
}

/// A caller whose token was valid.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Subject {
    /// The `sub` claim, e.g. `system:serviceaccount:apps:db`.
    pub name: String,
    /// The ServiceAccount (namespace, name), for a Kubernetes ServiceAccount token.
    pub service_account: Option<(String, String)>,
    /// The cluster of the issuer that vouched for it.
    pub cluster: String,
}

/// Why a token was refused (said to the caller: it is about the caller's own token).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AuthError {
    /// The token is not a JWT at all.
    #[error("the bearer token is not a JWT: {0}")]
    Malformed(String),
    /// No trusted issuer holds the key that signed it.
    #[error("the bearer token is signed by an unknown key {0:?}")]
    UnknownKey(String),
    /// Signature, issuer, audience or times are wrong.
    #[error("the bearer token is not valid: {0}")]
    Invalid(String),
    /// The token is larger than anything a cluster issues.
    #[error("the bearer token is over {MAX_TOKEN_BYTES} bytes")]
    TooLarge,
}

#[derive(Deserialize)]
struct Claims {
    sub: String,
    exp: i64,
    #[serde(default)]
    iat: Option<i64>,
    #[serde(rename = "kubernetes.io", default)]
    kubernetes: Option<KubernetesClaims>,
}

#[derive(Deserialize)]
struct KubernetesClaims {
    namespace: String,
    serviceaccount: Option<NameClaim>,
}

#[derive(Deserialize)]
struct NameClaim {
    name: String,
}

struct Issuer {
    config: IssuerConfig,
    keys: RwLock<Arc<JwkSet>>,
}

/// Validates bearer tokens against the configured issuers.
pub struct Authenticator {
    issuers: Vec<Issuer>,
    refresh: Notify,
    last_asked: Mutex<Option<Instant>>,
    /// Tokens verified lately, by SHA-256: who they are, and until when (tokio time).
    verified: Mutex<HashMap<[u8; 32], (Subject, tokio::time::Instant)>>,
}

impl Authenticator {
    /// Loads every issuer's keys. An issuer whose keys cannot be loaded yet starts with none
    /// (its tokens are refused until a refresh succeeds), and the reason is logged.
    pub async fn load(configs: Vec<IssuerConfig>) -> Arc<Self> {
        let mut issuers = Vec::new();
        for config in configs {
            let keys = match fetch(&config.jwks).await {
                Ok(k) => {
                    info!(
                        issuer = config.issuer,
                        keys = k.keys.len(),
                        "token keys loaded"
                    );
                    k
                }
                Err(e) => {
                    warn!(
                        issuer = config.issuer,
                        error = format!("{e:#}"),
                        "token keys not loaded; retrying"
                    );
                    JwkSet { keys: Vec::new() }
                }
            };
            issuers.push(Issuer {
                config,
                keys: RwLock::new(Arc::new(keys)),
            });
        }
        Arc::new(Self {
            issuers,
            refresh: Notify::new(),
            last_asked: Mutex::new(None),
            verified: Mutex::new(HashMap::new()),
        })
    }

    /// Refreshes the key sets every [`JWKS_REFRESH_EVERY`], and when a token names a key no
    /// issuer holds (a rotation), until the returned task is aborted.
    pub fn spawn_refresh(self: &Arc<Self>) -> tokio::task::JoinHandle<()> {
        let me = Arc::clone(self);
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    () = tokio::time::sleep(JWKS_REFRESH_EVERY) => {}
                    () = me.refresh.notified() => {}
                }
                me.refresh_now().await;
            }
        })
    }

    /// Reads every issuer's keys again; a failure keeps the keys held.
    pub async fn refresh_now(&self) {
        for issuer in &self.issuers {
            match fetch(&issuer.config.jwks).await {
                Ok(keys) => {
                    if let Ok(mut held) = issuer.keys.write() {
                        *held = Arc::new(keys);
                    }
                }
                Err(e) => warn!(
                    issuer = issuer.config.issuer,
                    error = format!("{e:#}"),
                    "token keys not refreshed; keeping the ones held"
                ),
            }
        }
    }

    /// Validates `token`: its signature by a key of a trusted issuer, that issuer, the
    /// audience, and its times. A token verified within [`VERIFIED_TTL`] is not verified
    /// again.
    pub fn authenticate(&self, token: &str) -> Result<Subject, AuthError> {
        if token.len() > MAX_TOKEN_BYTES {
            return Err(AuthError::TooLarge);
        }
        let digest: [u8; 32] = sha2::Sha256::digest(token.as_bytes()).into();
        let now = tokio::time::Instant::now();
        if let Ok(verified) = self.verified.lock()
            && let Some((subject, until)) = verified.get(&digest)
            && now < *until
        {
            return Ok(subject.clone());
        }
        let (subject, exp) = self.verify_signed(token)?;
        if let Ok(mut verified) = self.verified.lock() {
            if verified.len() >= MAX_VERIFIED {
                verified.retain(|_, (_, until)| now < *until);
            }
            if verified.len() >= MAX_VERIFIED {
                verified.clear();
            }
            let trust = trust_for(exp, chrono::Utc::now().timestamp());
            verified.insert(digest, (subject.clone(), now + trust));
        }
        Ok(subject)
    }

    /// [`Self::authenticate`] without the memory of verified tokens: the subject and `exp`.
    fn verify_signed(&self, token: &str) -> Result<(Subject, i64), AuthError> {
        let header =
            jsonwebtoken::decode_header(token).map_err(|e| AuthError::Malformed(e.to_string()))?;
        if !ALGORITHMS.contains(&header.alg) {
            return Err(AuthError::Invalid(format!(
                "algorithm {:?} is not accepted",
                header.alg
            )));
        }
        let kid = header.kid.clone().unwrap_or_default();
        let mut unknown = true;
        let mut last_error = None;
        for issuer in &self.issuers {
            let keys = match issuer.keys.read() {
                Ok(k) => Arc::clone(&k),
                Err(_) => continue,
            };
            let candidates: Vec<&jsonwebtoken::jwk::Jwk> = keys
                .keys
                .iter()
                .filter(|k| k.common.key_id.as_deref().unwrap_or_default() == kid)
                .collect();
            for jwk in candidates {
                unknown = false;
                match verify(token, header.alg, jwk, &issuer.config) {
                    Ok(subject) => return Ok(subject),
                    Err(e) => last_error = Some(e),
                }
            }
        }
        if unknown {
            self.ask_refresh();
            return Err(AuthError::UnknownKey(kid));
        }
        Err(last_error.unwrap_or(AuthError::UnknownKey(kid)))
    }

    /// Wakes the refresh task, at most every [`JWKS_REFRESH_MIN_GAP`].
    fn ask_refresh(&self) {
        let Ok(mut last) = self.last_asked.lock() else {
            return;
        };
        if last.is_some_and(|t| t.elapsed() < JWKS_REFRESH_MIN_GAP) {
            return;
        }
        *last = Some(Instant::now());
        self.refresh.notify_one();
    }
}

fn verify(
    token: &str,
    alg: Algorithm,
    jwk: &jsonwebtoken::jwk::Jwk,
    config: &IssuerConfig,
) -> Result<(Subject, i64), AuthError> {
    if let Some(key_alg) = jwk.common.key_algorithm
        && jsonwebtoken::jwk::KeyAlgorithm::from(alg) != key_alg
    {
        return Err(AuthError::Invalid(format!(
            "the token's algorithm {alg:?} is not its key's ({key_alg:?})"
        )));
    }
    let key = DecodingKey::from_jwk(jwk).map_err(|e| AuthError::Invalid(e.to_string()))?;
    let mut validation = Validation::new(alg);
    validation.leeway = LEEWAY_SECONDS;
    validation.validate_nbf = true;
    validation.set_issuer(&[&config.issuer]);
    validation.set_audience(&[&config.audience]);
    validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
    let data = jsonwebtoken::decode::<Claims>(token, &key, &validation).map_err(|e| {
        use jsonwebtoken::errors::ErrorKind as K;
        AuthError::Invalid(match e.kind() {
            K::ExpiredSignature => "expired".to_owned(),
            K::ImmatureSignature => "not valid yet (nbf)".to_owned(),
            K::InvalidAudience => format!("not made for the audience {:?}", config.audience),
            K::InvalidIssuer => "not issued by a trusted issuer".to_owned(),
            K::InvalidSignature => "bad signature".to_owned(),
            K::MissingRequiredClaim(c) => format!("no {c} claim"),
            _ => e.to_string(),
        })
    })?;
    let claims = data.claims;
    let issued = claims.iat.unwrap_or_else(|| chrono::Utc::now().timestamp());
    if claims.exp.saturating_sub(issued) > MAX_TOKEN_LIFETIME_SECONDS {
        return Err(AuthError::Invalid(format!(
            "it lives longer than {} hours; ask for a shorter expirationSeconds",
            MAX_TOKEN_LIFETIME_SECONDS / 3600
        )));
    }
    let service_account = claims.kubernetes.and_then(|k| {
        let name = k.serviceaccount?.name;
        // The subject must be the ServiceAccount the claims name.
        (claims.sub == format!("system:serviceaccount:{}:{name}", k.namespace))
            .then_some((k.namespace, name))
    });
    Ok((
        Subject {
            name: claims.sub,
            service_account,
            cluster: config.cluster.clone(),
        },
        claims.exp,
    ))
}

/// Reads a key set.
async fn fetch(source: &JwksSource) -> anyhow::Result<JwkSet> {
    let bytes = match source {
        // Small files, read now and then: blocking reads are fine.
        JwksSource::File(path) => std::fs::read(path)
            .with_context(|| format!("reading the key set {}", path.display()))?,
        // The whole exchange, body included, is bounded: a server that stalls after its
        // headers must not hang the start or the refresh task.
        JwksSource::Url {
            url,
            token_file,
            ca_file,
        } => tokio::time::timeout(
            JWKS_FETCH_TIMEOUT,
            get(url, token_file.as_ref(), ca_file.as_ref()),
        )
        .await
        .map_err(|_| anyhow::anyhow!("GET {url}: not done within {JWKS_FETCH_TIMEOUT:?}"))??,
    };
    if bytes.len() > MAX_JWKS_BYTES {
        anyhow::bail!("the key set is over {MAX_JWKS_BYTES} bytes");
    }
    let set: JwkSet = serde_json::from_slice(&bytes).context("the key set is not a JWK Set")?;
    let mut seen = HashSet::new();
    for k in &set.keys {
        let kid = k.common.key_id.clone().unwrap_or_default();
        if !seen.insert(kid.clone()) {
            anyhow::bail!("the key set holds two keys with the id {kid:?}");
        }
    }
    Ok(set)
}

/// `GET url` with an optional bearer token file and CA bundle.
async fn get(
    url: &str,
    token_file: Option<&PathBuf>,
    ca_file: Option<&PathBuf>,
) -> anyhow::Result<Vec<u8>> {
    use http_body_util::{BodyExt as _, Empty, Limited};
    use hyper_util::{client::legacy::Client, rt::TokioExecutor};

    let uri: http::Uri = url.parse().with_context(|| format!("{url}: not a URL"))?;
    // kube-apiserver serves its key set only as application/jwk-set+json (406 otherwise).
    let mut request = http::Request::get(uri)
        .header("accept", "application/jwk-set+json, application/json;q=0.9");
    if let Some(path) = token_file {
        let token = std::fs::read_to_string(path)
            .with_context(|| format!("reading the token {}", path.display()))?;
        request = request.header("authorization", format!("Bearer {}", token.trim()));
    }
    let request = request.body(Empty::<bytes::Bytes>::new())?;
    let mut roots = rustls::RootCertStore::empty();
    match ca_file {
        Some(path) => {
            let pem = std::fs::read(path)
                .with_context(|| format!("reading the CA {}", path.display()))?;
            for cert in rustls_pki_types::CertificateDer::pem_slice_iter(&pem) {
                roots.add(cert.context("a certificate in the CA file")?)?;
            }
        }
        None => {
            for cert in rustls_native_certs::load_native_certs().certs {
                let _ = roots.add(cert);
            }
        }
    }
    let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_root_certificates(roots)
    .with_no_client_auth();
    let connector = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http()
        .enable_http1()
        .build();
    let client = Client::builder(TokioExecutor::new()).build(connector);
    let response = tokio::time::timeout(Duration::from_secs(10), client.request(request))
        .await
        .with_context(|| format!("GET {url}: no answer within 10 s"))?
        .with_context(|| format!("GET {url}"))?;
    let status = response.status();
    let body = Limited::new(response.into_body(), MAX_JWKS_BYTES)
        .collect()
        .await
        .map_err(|e| anyhow::anyhow!("GET {url}: reading the body: {e}"))?
        .to_bytes();
    if !status.is_success() {
        anyhow::bail!(
            "GET {url}: {status}: {}",
            String::from_utf8_lossy(&body[..body.len().min(200)])
        );
    }
    Ok(body.to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_verified_token_is_trusted_for_the_ttl_and_never_past_its_expiry_and_leeway() {
        let now = 1_800_000_000;
        assert_eq!(trust_for(now + 3600, now), VERIFIED_TTL);
        assert_eq!(trust_for(now - 55, now), Duration::from_secs(5));
        assert_eq!(trust_for(now - 60, now), Duration::ZERO);
        assert_eq!(trust_for(now - 3600, now), Duration::ZERO);
        assert_eq!(trust_for(i64::MAX, i64::MIN), VERIFIED_TTL);
        assert_eq!(trust_for(i64::MIN, i64::MAX), Duration::ZERO);
    }
}
