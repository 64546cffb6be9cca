//! Checking the JWTs the SDKs sign with the access key: client access tokens on the WebSocket
//! endpoint, and REST bearer tokens whose audience is the request URL.
//!
//! Hosts are not compared: the same emulator is reached as `localhost`, `127.0.0.1` or through a
//! proxy, and the connection string the SDKs sign with names only one of them. Scheme, path,
//! signature and expiry are checked.

use std::collections::{BTreeMap, HashMap};

use percent_encoding::percent_decode_str;
use serde_json::Value;

use crate::service::AccessKey;

/// Token claims as the connect event carries them: every value a list of strings.
pub type Claims = BTreeMap<String, Vec<String>>;

const LEEWAY_SECS: u64 = 5;

/// Why a token is refused (401); the text is the one-line reason the caller gets.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("missing Authorization: Bearer <token>")]
    MissingBearer,
    #[error("the access token has expired")]
    Expired,
    #[error("the access token is not signed with this emulator's access key")]
    WrongKey,
    #[error("invalid access token: {0}")]
    Invalid(jsonwebtoken::errors::Error),
    #[error("the access token has no audience")]
    NoAudience,
    #[error("token audience {0:?} is not a URL")]
    AudienceNotUrl(String),
    #[error("token audience {aud:?} has an unexpected scheme (want {want})")]
    AudienceScheme { aud: String, want: String },
    #[error("the access token is for {path:?}, not /client/hubs/{hub}")]
    OtherHub { path: String, hub: String },
    #[error("the token's audience is {path:?}, not this request ({request})")]
    OtherRequest { path: String, request: String },
}

fn decode(key: &AccessKey, token: &str) -> Result<HashMap<String, Value>, TokenError> {
    let mut v = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::HS256);
    v.validate_aud = false;
    v.required_spec_claims = ["exp".to_string()].into_iter().collect();
    v.leeway = LEEWAY_SECS;
    v.validate_nbf = true;
    jsonwebtoken::decode::<HashMap<String, Value>>(
        token,
        &jsonwebtoken::DecodingKey::from_secret(key.expose().as_bytes()),
        &v,
    )
    .map(|d| d.claims)
    .map_err(|e| match e.kind() {
        jsonwebtoken::errors::ErrorKind::ExpiredSignature => TokenError::Expired,
        jsonwebtoken::errors::ErrorKind::InvalidSignature => TokenError::WrongKey,
        _ => TokenError::Invalid(e),
    })
}

fn audience_path(claims: &HashMap<String, Value>, schemes: &[&str]) -> Result<String, TokenError> {
    let aud = match claims.get("aud") {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Array(a)) => a
            .first()
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string(),
        _ => return Err(TokenError::NoAudience),
    };
    let Ok(url) = url::Url::parse(&aud) else {
        return Err(TokenError::AudienceNotUrl(aud));
    };
    if !schemes.contains(&url.scheme()) {
        return Err(TokenError::AudienceScheme {
            aud,
            want: schemes.join("/"),
        });
    }
    let path = percent_decode_str(url.path()).decode_utf8_lossy();
    Ok(path.trim_end_matches('/').to_string())
}

/// A client access token for `hub`: HS256 with the key, `exp` in the future, `aud` =
/// `http(s)|ws(s)://host[:port]/client/hubs/{hub}` (the portal once issued `wss` audiences).
pub fn verify_client_token(key: &AccessKey, token: &str, hub: &str) -> Result<Claims, TokenError> {
    let claims = decode(key, token)?;
    let path = audience_path(&claims, &["http", "https", "ws", "wss"])?;
    if !path.eq_ignore_ascii_case(&format!("/client/hubs/{hub}")) {
        return Err(TokenError::OtherHub {
            path,
            hub: hub.to_string(),
        });
    }
    Ok(claims_of(&claims))
}

/// A tunnel token (`/server/tunnel`): HS256 with the key, `exp` in the future, `aud` any URL
/// (ws/wss/http/https, any host and query) whose path ends in `/server/tunnel`, as the reference
/// advises for a check the real service leaves unverified. Returns `sub`, the tunnel's id.
pub fn verify_tunnel_token(key: &AccessKey, token: &str) -> Result<Option<String>, TokenError> {
    let claims = decode(key, token)?;
    let path = audience_path(&claims, &["http", "https", "ws", "wss"])?;
    if !path.ends_with("/server/tunnel") {
        return Err(TokenError::OtherRequest {
            path,
            request: "/server/tunnel".into(),
        });
    }
    Ok(claims.get("sub").and_then(Value::as_str).map(String::from))
}

/// A REST bearer token: `aud` is the request URL (with or without its query; scheme and host
/// may differ), signed with the key, not expired.
pub fn verify_rest_token(
    key: &AccessKey,
    authorization: Option<&str>,
    request_path: &str,
) -> Result<(), TokenError> {
    let token = authorization
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        })
        .ok_or(TokenError::MissingBearer)?;
    let claims = decode(key, token.trim())?;
    let path = audience_path(&claims, &["http", "https"])?;
    let request = percent_decode_str(request_path).decode_utf8_lossy();
    if path != request.trim_end_matches('/') {
        return Err(TokenError::OtherRequest {
            path,
            request: request.into_owned(),
        });
    }
    Ok(())
}

/// Every claim as a list of strings (numbers and booleans stringified).
fn claims_of(v: &HashMap<String, Value>) -> Claims {
    v.iter()
        .map(|(k, v)| {
            let scalar = |x: &Value| {
                x.as_str()
                    .map(String::from)
                    .unwrap_or_else(|| x.to_string())
            };
            let vals = match v {
                Value::Array(a) => a.iter().map(scalar).collect(),
                other => vec![scalar(other)],
            };
            (k.clone(), vals)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::service::{rest_token, sign_jwt, unix_now};
    use serde_json::json;

    const KEY: &str = "ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789ABCDEFGH";

    fn key() -> AccessKey {
        AccessKey::new(KEY)
    }

    fn token(claims: Value) -> String {
        sign_jwt(&key(), &claims)
    }

    #[test]
    fn client_token_audience_any_scheme_any_host_exact_hub() {
        let exp = unix_now() + 60;
        for aud in [
            "http://localhost:8080/client/hubs/chat",
            "https://contoso.webpubsub.azure.com/client/hubs/Chat",
            "wss://127.0.0.1/client/hubs/chat/",
        ] {
            let t = token(json!({"aud": aud, "exp": exp, "sub": "alice", "role": ["r1", "r2"]}));
            let c =
                verify_client_token(&key(), &t, "chat").unwrap_or_else(|e| panic!("{aud}: {e}"));
            assert_eq!(c["sub"], ["alice"]);
            assert_eq!(c["role"], ["r1", "r2"]);
        }
        for aud in [
            "http://localhost/client/hubs/lobby",
            "ftp://localhost/client/hubs/chat",
            "http://localhost/api/hubs/chat",
        ] {
            let t = token(json!({"aud": aud, "exp": exp}));
            assert!(verify_client_token(&key(), &t, "chat").is_err(), "{aud}");
        }
    }

    #[test]
    fn client_token_expiry_signature_and_exp_required() {
        let aud = "http://localhost/client/hubs/chat";
        let expired = token(json!({"aud": aud, "exp": unix_now() - 60}));
        let e = verify_client_token(&key(), &expired, "chat").unwrap_err();
        assert!(matches!(e, TokenError::Expired) && e.to_string().contains("expired"));
        let no_exp = token(json!({"aud": aud}));
        assert!(verify_client_token(&key(), &no_exp, "chat").is_err());
        let other = sign_jwt(
            &AccessKey::new("abcdefghijklmnopqrstuvwxyz0123456789abcdefgh"),
            &json!({"aud": aud, "exp": unix_now() + 60}),
        );
        let e = verify_client_token(&key(), &other, "chat").unwrap_err();
        assert!(matches!(e, TokenError::WrongKey) && e.to_string().contains("not signed"));
        assert!(verify_client_token(&key(), "garbage", "chat").is_err());
    }

    #[test]
    fn rest_token_audience_is_the_request_url_with_or_without_query() {
        let path = "/api/hubs/chat/groups/a b/:send";
        for url in [
            "http://localhost:8080/api/hubs/chat/groups/a%20b/:send?api-version=2024-12-01",
            "http://127.0.0.1/api/hubs/chat/groups/a%20b/:send",
        ] {
            let t = rest_token(&key(), url, unix_now());
            verify_rest_token(&key(), Some(&format!("Bearer {t}")), path)
                .unwrap_or_else(|e| panic!("{url}: {e}"));
        }
        let t = rest_token(&key(), "http://localhost/api/hubs/chat/:send", unix_now());
        assert!(verify_rest_token(&key(), Some(&format!("Bearer {t}")), path).is_err());
        assert!(verify_rest_token(&key(), None, path).is_err());
    }
}
