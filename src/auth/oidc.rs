//! Verifying OpenID Connect bearer tokens: the issuer's discovery document
//! (`{issuer}/.well-known/openid-configuration` → `jwks_uri`) and its key set, fetched lazily on
//! the first request that needs them (a cold start does not wait for the provider), cached, and
//! refreshed when a token names an unknown `kid` — at most once per [`OidcConfig::refresh_every`],
//! so forged key ids cannot make us hammer the provider.
//!
//! Only RS256, PS256 and ES256 (P-256) are accepted, and a key's algorithms come from its JWK
//! (`alg`, or its key type), never from the token header alone: `alg: none` and HS256 (the key
//! confusion attack, a token "signed" with the public key as an HMAC secret) are refused.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, KeyAlgorithm, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::Value;

use super::{AuthError, Identity};

/// The algorithms a token may be signed with.
pub const ACCEPTED: &str = "RS256, PS256, ES256";
/// The largest discovery document or key set read.
const MAX_DOCUMENT_BYTES: usize = 512 * 1024;
/// After a failed fetch with no keys cached, requests are answered 503 for this long without a
/// new fetch.
const FAILURE_BACKOFF: Duration = Duration::from_secs(1);

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OidcConfig {
    /// The `iss` of the tokens, exactly; discovery is read from below it.
    pub issuer: String,
    /// The `aud` the tokens must carry (the app's client id for ID tokens).
    pub audience: String,
    /// The claim holding the user id (`sub` by default).
    pub user_claim: String,
    /// A claim listing the rooms the user may enter (array of strings or a space-separated
    /// string); `None`: every room.
    pub rooms_claim: Option<String>,
    /// Clock skew allowed on `exp` and `nbf`.
    pub leeway: Duration,
    /// Shortest time between two key refreshes caused by an unknown `kid`.
    pub refresh_every: Duration,
    /// Bounds each fetch of the discovery document or the key set.
    pub fetch_timeout: Duration,
}

impl OidcConfig {
    pub fn new(issuer: &str, audience: &str) -> Self {
        OidcConfig {
            issuer: issuer.to_string(),
            audience: audience.to_string(),
            user_claim: "sub".into(),
            rooms_claim: None,
            leeway: Duration::from_secs(30),
            refresh_every: Duration::from_secs(60),
            fetch_timeout: Duration::from_secs(5),
        }
    }

    fn discovery_url(&self) -> String {
        format!(
            "{}/.well-known/openid-configuration",
            self.issuer.trim_end_matches('/')
        )
    }
}

/// A verification key and the algorithms its JWK allows.
struct Key {
    decoding: DecodingKey,
    algorithms: Vec<Algorithm>,
}

#[derive(Default)]
struct KeyCache {
    jwks_uri: Option<String>,
    /// By `kid` (`""` for a key without one); `None` until the first successful fetch.
    keys: Option<HashMap<String, Arc<Key>>>,
    /// The last refresh caused by an unknown `kid`.
    unknown_refresh_at: Option<Instant>,
    /// The last failed fetch and why, while no keys are cached.
    failed: Option<(Instant, String)>,
}

impl KeyCache {
    fn find(&self, kid: Option<&str>) -> Option<Arc<Key>> {
        let keys = self.keys.as_ref()?;
        match kid {
            Some(kid) => keys.get(kid).cloned(),
            // A token without `kid` is accepted only when the issuer has a single key.
            None if keys.len() == 1 => keys.values().next().cloned(),
            None => None,
        }
    }
}

pub struct OidcVerifier {
    config: OidcConfig,
    http: reqwest::Client,
    cache: tokio::sync::Mutex<KeyCache>,
    /// A fetch failure is logged once, until a fetch succeeds again.
    warned: AtomicBool,
}

/// Why a verifier could not be built (the process does not start).
#[derive(Debug, thiserror::Error)]
pub enum OidcError {
    #[error("cannot build the HTTP client: {0}")]
    HttpClient(#[source] reqwest::Error),
}

fn refused(reason: impl Into<String>) -> AuthError {
    AuthError::Refused(reason.into())
}

impl OidcVerifier {
    pub fn new(config: OidcConfig) -> Result<Self, OidcError> {
        let http = reqwest::Client::builder()
            .connect_timeout(config.fetch_timeout.min(Duration::from_secs(2)))
            .timeout(config.fetch_timeout)
            .build()
            .map_err(OidcError::HttpClient)?;
        Ok(OidcVerifier {
            config,
            http,
            cache: Default::default(),
            warned: AtomicBool::new(false),
        })
    }

    pub fn config(&self) -> &OidcConfig {
        &self.config
    }

    /// The identity of a valid token, or why it is refused (401) or cannot be checked now (503).
    pub async fn verify(&self, token: &str) -> Result<Identity, AuthError> {
        let alg = header_algorithm(token)?;
        let header =
            jsonwebtoken::decode_header(token).map_err(|_| refused("malformed token header"))?;
        let key = self.key_for(header.kid.as_deref()).await?;
        if !key.algorithms.contains(&alg) {
            return Err(refused(format!(
                "algorithm {alg:?} does not match the issuer's key"
            )));
        }
        let mut v = Validation::new(alg);
        v.algorithms = key.algorithms.clone();
        v.set_issuer(&[&self.config.issuer]);
        v.set_audience(&[&self.config.audience]);
        v.set_required_spec_claims(&["exp", "iss", "aud"]);
        v.validate_nbf = true;
        v.leeway = self.config.leeway.as_secs();
        let data = jsonwebtoken::decode::<Value>(token, &key.decoding, &v).map_err(|e| {
            refused(match e.kind() {
                ErrorKind::ExpiredSignature => "expired".to_string(),
                ErrorKind::ImmatureSignature => "not yet valid (nbf)".into(),
                ErrorKind::InvalidIssuer => "wrong issuer (iss)".into(),
                ErrorKind::InvalidAudience => "wrong audience (aud)".into(),
                ErrorKind::InvalidSignature => "bad signature".into(),
                ErrorKind::InvalidAlgorithm => "algorithm does not match the key".into(),
                ErrorKind::MissingRequiredClaim(c) => format!("no {c} claim"),
                ErrorKind::InvalidClaimFormat(c) => format!("malformed {c} claim"),
                _ => "invalid token".into(),
            })
        })?;
        self.identity(&data.claims)
    }

    fn identity(&self, claims: &Value) -> Result<Identity, AuthError> {
        let claim = &self.config.user_claim;
        let user_id = match claims.get(claim) {
            Some(Value::String(s)) if !s.is_empty() => s.clone(),
            Some(Value::Number(n)) => n.to_string(),
            _ => return Err(refused(format!("no {claim} claim (the user id)"))),
        };
        let rooms = self
            .config
            .rooms_claim
            .as_ref()
            .map(|c| match claims.get(c) {
                Some(Value::Array(a)) => a
                    .iter()
                    .filter_map(|r| r.as_str().map(String::from))
                    .collect(),
                Some(Value::String(s)) => s.split_whitespace().map(String::from).collect(),
                // Configured but absent: no room at all (never "every room" by accident).
                _ => Vec::new(),
            });
        Ok(Identity { user_id, rooms })
    }

    /// The key for `kid`: from the cache, fetching the key set on first use, and refreshing it
    /// for an unknown `kid` at most once per `refresh_every`.
    async fn key_for(&self, kid: Option<&str>) -> Result<Arc<Key>, AuthError> {
        let mut cache = self.cache.lock().await;
        let mut fetched = false;
        if cache.keys.is_none() {
            if let Some((at, reason)) = &cache.failed {
                if at.elapsed() < FAILURE_BACKOFF {
                    return Err(AuthError::KeysUnavailable(reason.clone()));
                }
            }
            self.refresh(&mut cache).await?;
            fetched = true;
        }
        if let Some(k) = cache.find(kid) {
            return Ok(k);
        }
        let may_refresh = !fetched
            && cache
                .unknown_refresh_at
                .is_none_or(|t| t.elapsed() >= self.config.refresh_every);
        if may_refresh {
            cache.unknown_refresh_at = Some(Instant::now());
            self.refresh(&mut cache).await?;
            if let Some(k) = cache.find(kid) {
                return Ok(k);
            }
        }
        Err(refused(match kid {
            Some(kid) => format!("unknown key id {kid:?}"),
            None => "no key id (kid) and the issuer has several keys".into(),
        }))
    }

    async fn refresh(&self, cache: &mut KeyCache) -> Result<(), AuthError> {
        match self.fetch(cache.jwks_uri.clone()).await {
            Ok((uri, keys)) => {
                tracing::info!(issuer = %self.config.issuer, keys = keys.len(), "fetched the issuer's signing keys");
                cache.jwks_uri = Some(uri);
                cache.keys = Some(keys);
                cache.failed = None;
                self.warned.store(false, Ordering::Relaxed);
                Ok(())
            }
            Err(reason) => {
                if !self.warned.swap(true, Ordering::Relaxed) {
                    tracing::warn!(issuer = %self.config.issuer, %reason, "cannot fetch the issuer's signing keys: sign-in answers 503 until they can be fetched");
                }
                // Discover again next time: the provider may have moved its keys.
                cache.jwks_uri = None;
                cache.failed = Some((Instant::now(), reason.clone()));
                Err(AuthError::KeysUnavailable(reason))
            }
        }
    }

    // The reason is a `String` because it is kept in the cache and handed to every caller in
    // `AuthError::KeysUnavailable` until a fetch succeeds; nothing branches on its kind.
    async fn fetch(
        &self,
        jwks_uri: Option<String>,
    ) -> Result<(String, HashMap<String, Arc<Key>>), String> {
        let uri = match jwks_uri {
            Some(u) => u,
            None => {
                let doc = self.get_json(&self.config.discovery_url()).await?;
                doc.get("jwks_uri")
                    .and_then(Value::as_str)
                    .ok_or("the discovery document has no jwks_uri")?
                    .to_string()
            }
        };
        let set = self.get_json(&uri).await?;
        let keys = set
            .get("keys")
            .and_then(Value::as_array)
            .ok_or("the key set has no \"keys\" array")?;
        let keys: HashMap<String, Arc<Key>> = keys
            .iter()
            .filter_map(|k| serde_json::from_value::<Jwk>(k.clone()).ok())
            .filter_map(|jwk| {
                let key = key_of(&jwk)?;
                Some((jwk.common.key_id.unwrap_or_default(), Arc::new(key)))
            })
            .collect();
        if keys.is_empty() {
            return Err("the key set has no RS256, PS256 or ES256 signing key".into());
        }
        Ok((uri, keys))
    }

    // A `String` reason for the same cause as `fetch`, whose `?` passes it on.
    async fn get_json(&self, url: &str) -> Result<Value, String> {
        let what = url.split('?').next().unwrap_or(url);
        let r = self
            .http
            .get(url)
            .header(http::header::ACCEPT, "application/json")
            .send()
            .await
            .map_err(|e| {
                let kind = if e.is_timeout() {
                    "timed out"
                } else if e.is_connect() {
                    "cannot connect"
                } else {
                    "request failed"
                };
                format!("GET {what}: {kind}")
            })?;
        if !r.status().is_success() {
            return Err(format!("GET {what}: status {}", r.status().as_u16()));
        }
        if r.content_length()
            .is_some_and(|n| n > MAX_DOCUMENT_BYTES as u64)
        {
            return Err(format!(
                "GET {what}: larger than {MAX_DOCUMENT_BYTES} bytes"
            ));
        }
        let body = r
            .bytes()
            .await
            .map_err(|_| format!("GET {what}: body not read"))?;
        if body.len() > MAX_DOCUMENT_BYTES {
            return Err(format!(
                "GET {what}: larger than {MAX_DOCUMENT_BYTES} bytes"
            ));
        }
        serde_json::from_slice(&body).map_err(|_| format!("GET {what}: not JSON"))
    }
}

/// A signing key we accept and its algorithms: an RSA key for RS256/PS256 (the one its `alg`
/// names, or both), a P-256 key for ES256. Encryption keys and anything else are skipped.
fn key_of(jwk: &Jwk) -> Option<Key> {
    if matches!(
        jwk.common.public_key_use,
        Some(PublicKeyUse::Encryption) | Some(PublicKeyUse::Other(_))
    ) {
        return None;
    }
    let algorithms = match (&jwk.algorithm, jwk.common.key_algorithm) {
        (AlgorithmParameters::RSA(_), None) => vec![Algorithm::RS256, Algorithm::PS256],
        (AlgorithmParameters::RSA(_), Some(KeyAlgorithm::RS256)) => vec![Algorithm::RS256],
        (AlgorithmParameters::RSA(_), Some(KeyAlgorithm::PS256)) => vec![Algorithm::PS256],
        (AlgorithmParameters::EllipticCurve(p), None | Some(KeyAlgorithm::ES256))
            if p.curve == EllipticCurve::P256 =>
        {
            vec![Algorithm::ES256]
        }
        _ => return None,
    };
    let decoding = DecodingKey::from_jwk(jwk).ok()?;
    Some(Key {
        decoding,
        algorithms,
    })
}

/// The header's `alg`, refused unless it is one we accept (read from the raw header so that
/// `none` gets its own reason).
fn header_algorithm(token: &str) -> Result<Algorithm, AuthError> {
    let mut parts = token.split('.');
    let (Some(header), Some(_), Some(_), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(refused("not a JWT (header.payload.signature)"));
    };
    let header: Value = URL_SAFE_NO_PAD
        .decode(header.trim_end_matches('='))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .ok_or_else(|| refused("malformed token header"))?;
    match header.get("alg").and_then(Value::as_str) {
        Some("RS256") => Ok(Algorithm::RS256),
        Some("PS256") => Ok(Algorithm::PS256),
        Some("ES256") => Ok(Algorithm::ES256),
        Some(other) => Err(refused(format!(
            "algorithm {:?} is not accepted ({ACCEPTED})",
            other.chars().take(16).collect::<String>()
        ))),
        None => Err(refused("the token header has no alg")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token_with_header(h: &str) -> String {
        format!("{}.e30.c2ln", URL_SAFE_NO_PAD.encode(h))
    }

    #[test]
    fn header_algorithms() {
        for (h, ok) in [
            (r#"{"alg":"RS256"}"#, true),
            (r#"{"alg":"ES256"}"#, true),
            (r#"{"alg":"PS256"}"#, true),
            (r#"{"alg":"none"}"#, false),
            (r#"{"alg":"HS256"}"#, false),
            (r#"{"typ":"JWT"}"#, false),
        ] {
            assert_eq!(header_algorithm(&token_with_header(h)).is_ok(), ok, "{h}");
        }
        let e = header_algorithm(&token_with_header(r#"{"alg":"none"}"#)).unwrap_err();
        assert_eq!(
            e.to_string(),
            "token refused: algorithm \"none\" is not accepted (RS256, PS256, ES256)"
        );
        assert!(header_algorithm("a.b").is_err());
        assert!(header_algorithm("a.b.c.d").is_err());
    }
}
