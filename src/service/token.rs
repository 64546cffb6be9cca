//! HS256 JWTs for the REST API and for clients, claim for claim as `@azure/web-pubsub` mints them.
//!
//! Signing is hand-rolled rather than `jsonwebtoken::encode`: that crate serialises the header as
//! `{"typ":..,"alg":..}` while the official SDKs emit `{"alg":"HS256","typ":"JWT"}`; writing the
//! few lines here makes our tokens byte-identical to theirs (the reference's worked tokens are
//! unit tests). Verification (emulator side) uses `jsonwebtoken`.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use hmac::{Hmac, KeyInit, Mac};
use serde::Serialize;
use serde_json::{Map, Value};
use sha2::Sha256;

use super::{AccessKey, ConnectionString};

const HEADER_B64: &str = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9"; // {"alg":"HS256","typ":"JWT"}

pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Signs `claims` (serialised in field order) with the access key string's bytes.
pub fn sign_jwt<T: Serialize>(key: &AccessKey, claims: &T) -> String {
    let payload = URL_SAFE_NO_PAD.encode(serde_json::to_vec(claims).expect("claims serialise"));
    let mut mac =
        Hmac::<Sha256>::new_from_slice(key.expose().as_bytes()).expect("hmac takes any key length");
    mac.update(HEADER_B64.as_bytes());
    mac.update(b".");
    mac.update(payload.as_bytes());
    let sig = URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes());
    format!("{HEADER_B64}.{payload}.{sig}")
}

/// A REST token's lifetime (`exp - iat`), as the SDKs mint it.
pub const REST_TOKEN_TTL_SECS: u64 = 3600;

/// The bearer token for one REST request: `aud` is the full request URL including the query.
pub fn rest_token(key: &AccessKey, url: &str, iat: u64) -> String {
    #[derive(Serialize)]
    struct Claims<'a> {
        iat: u64,
        exp: u64,
        aud: &'a str,
    }
    sign_jwt(
        key,
        &Claims {
            iat,
            exp: iat + REST_TOKEN_TTL_SECS,
            aud: url,
        },
    )
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClientTokenOptions {
    pub user_id: Option<String>,
    pub roles: Vec<String>,
    pub groups: Vec<String>,
    /// Default one hour, as the SDKs.
    pub expires_in: Option<Duration>,
}

/// A client access token, claims in the SDK's order (`role`, `webpubsub.group`, `iat`, `exp`,
/// `aud`, `sub`); empty `role`/`webpubsub.group` and a missing user are omitted.
pub fn client_token(
    cs: &ConnectionString,
    hub: &str,
    opts: &ClientTokenOptions,
    iat: u64,
) -> String {
    let mut claims = Map::new();
    if !opts.roles.is_empty() {
        claims.insert("role".into(), Value::from(opts.roles.clone()));
    }
    if !opts.groups.is_empty() {
        claims.insert("webpubsub.group".into(), Value::from(opts.groups.clone()));
    }
    let ttl = opts
        .expires_in
        .unwrap_or(Duration::from_secs(3600))
        .as_secs();
    claims.insert("iat".into(), iat.into());
    claims.insert("exp".into(), iat.saturating_add(ttl).into());
    claims.insert("aud".into(), cs.client_audience(hub).into());
    if let Some(u) = &opts.user_id {
        claims.insert("sub".into(), u.clone().into());
    }
    sign_jwt(&cs.access_key, &claims)
}

/// What `/negotiate` returns, as `getClientAccessToken` does.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ClientAccess {
    pub url: String,
    #[serde(rename = "baseUrl")]
    pub base_url: String,
    pub token: String,
}

pub fn client_access(cs: &ConnectionString, hub: &str, opts: &ClientTokenOptions) -> ClientAccess {
    let token = client_token(cs, hub, opts, unix_now());
    let base_url = cs.client_base_url(hub);
    ClientAccess {
        url: format!("{base_url}?access_token={token}"),
        base_url,
        token,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789ABCDEFGH";

    #[test]
    fn a_huge_lifetime_saturates_instead_of_overflowing() {
        let cs = ConnectionString::local(8080, KEY);
        let opts = ClientTokenOptions {
            expires_in: Some(Duration::from_secs(u64::MAX)),
            ..Default::default()
        };
        let token = client_token(&cs, "chat", &opts, 1_700_000_000);
        let claims = token.split('.').nth(1).unwrap();
        let claims: Value =
            serde_json::from_slice(&URL_SAFE_NO_PAD.decode(claims).unwrap()).unwrap();
        assert_eq!(claims["exp"], u64::MAX);
    }

    #[test]
    fn rest_token_matches_the_reference_byte_for_byte() {
        let t = rest_token(
            &AccessKey::new(KEY),
            "https://contoso.webpubsub.azure.com/api/hubs/chat/:send?api-version=2024-12-01",
            1_700_000_000,
        );
        assert_eq!(t, "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJpYXQiOjE3MDAwMDAwMDAsImV4cCI6MTcwMDAwMzYwMCwiYXVkIjoiaHR0cHM6Ly9jb250b3NvLndlYnB1YnN1Yi5henVyZS5jb20vYXBpL2h1YnMvY2hhdC86c2VuZD9hcGktdmVyc2lvbj0yMDI0LTEyLTAxIn0._9wGm5179z1nfkhwPN0yIRomW3Vamk8cuAjrDqaRQgE");
    }

    #[test]
    fn client_token_matches_the_reference_byte_for_byte() {
        let cs = ConnectionString::parse(&format!(
            "Endpoint=https://contoso.webpubsub.azure.com;AccessKey={KEY};Version=1.0;"
        ))
        .unwrap();
        let opts = ClientTokenOptions {
            user_id: Some("alice".into()),
            roles: vec![
                "webpubsub.joinLeaveGroup.lobby".into(),
                "webpubsub.sendToGroup.lobby".into(),
            ],
            groups: vec!["lobby".into()],
            expires_in: None,
        };
        assert_eq!(client_token(&cs, "chat", &opts, 1_700_000_000), "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJyb2xlIjpbIndlYnB1YnN1Yi5qb2luTGVhdmVHcm91cC5sb2JieSIsIndlYnB1YnN1Yi5zZW5kVG9Hcm91cC5sb2JieSJdLCJ3ZWJwdWJzdWIuZ3JvdXAiOlsibG9iYnkiXSwiaWF0IjoxNzAwMDAwMDAwLCJleHAiOjE3MDAwMDM2MDAsImF1ZCI6Imh0dHBzOi8vY29udG9zby53ZWJwdWJzdWIuYXp1cmUuY29tL2NsaWVudC9odWJzL2NoYXQiLCJzdWIiOiJhbGljZSJ9.q9Wbm4Z96L11zrbD_DjyTNa5wkxIQWoYsisWBxF_v_Q");
        let access = client_access(&cs, "chat", &opts);
        assert_eq!(
            access.base_url,
            "wss://contoso.webpubsub.azure.com/client/hubs/chat"
        );
        assert_eq!(
            access.url,
            format!("{}?access_token={}", access.base_url, access.token)
        );
    }

    #[test]
    fn tokens_verify_with_jsonwebtoken() {
        let cs = ConnectionString::parse(&format!(
            "Endpoint=http://localhost;Port=8080;AccessKey={KEY}"
        ))
        .unwrap();
        let t = client_token(&cs, "chat", &ClientTokenOptions::default(), unix_now());
        let mut v = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::HS256);
        v.set_audience(&["http://localhost:8080/client/hubs/chat"]);
        let data = jsonwebtoken::decode::<Value>(
            &t,
            &jsonwebtoken::DecodingKey::from_secret(KEY.as_bytes()),
            &v,
        )
        .unwrap();
        assert!(data.claims.get("sub").is_none() && data.claims.get("role").is_none());
    }
}
