//! Where a tunnel connection dials, and the token it carries.

use serde::Serialize;

use super::TunnelError;
use crate::service::{sign_jwt, unix_now, AccessKey};

/// One connection's destination: the service endpoint (the connection string's, or the one a
/// `ConnectionReconnect` / `ConnectionRebalance` named) and its `target`, if any.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dial {
    pub endpoint: String,
    pub target: Option<String>,
}

/// `ws(s)://<endpoint>/server/tunnel?hub=H[&target=T]&access_token=<JWT>` (http → ws, anything
/// else → wss; the endpoint's path and query are kept). The JWT's `aud` is the URL before
/// `access_token`; `sub` is the tunnel's id. Minted anew on every call.
pub fn dial_url(
    dial: &Dial,
    hub: &str,
    key: &AccessKey,
    tunnel_id: &str,
) -> Result<String, TunnelError> {
    let bad = || TunnelError::Endpoint(dial.endpoint.clone());
    let with_scheme = if dial.endpoint.contains("://") {
        dial.endpoint.clone()
    } else {
        format!("https://{}", dial.endpoint)
    };
    let base = url::Url::parse(&with_scheme).map_err(|_| bad())?;
    let scheme = if base.scheme() == "http" || base.scheme() == "ws" {
        "ws"
    } else {
        "wss"
    };
    let host = base.host_str().ok_or_else(bad)?;
    let mut u = url::Url::parse(&format!("{scheme}://{host}")).map_err(|_| bad())?;
    u.set_port(base.port()).map_err(|_| bad())?;
    let path = base.path().trim_end_matches('/');
    u.set_path(&format!("{path}/server/tunnel"));
    u.set_query(base.query());
    {
        let mut q = u.query_pairs_mut();
        q.append_pair("hub", hub);
        if let Some(t) = &dial.target {
            q.append_pair("target", t);
        }
    }
    let aud = u.to_string();
    #[derive(Serialize)]
    struct Claims<'a> {
        aud: &'a str,
        sub: &'a str,
        iat: u64,
        exp: u64,
    }
    let iat = unix_now();
    let token = sign_jwt(
        key,
        &Claims {
            aud: &aud,
            sub: tunnel_id,
            iat,
            exp: iat + 3600,
        },
    );
    u.query_pairs_mut().append_pair("access_token", &token);
    Ok(u.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claims(url: &str) -> serde_json::Value {
        use base64::Engine as _;
        let token = url.split("access_token=").nth(1).unwrap();
        let payload = token.split('.').nth(1).unwrap();
        serde_json::from_slice(
            &base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(payload)
                .unwrap(),
        )
        .unwrap()
    }

    #[test]
    fn urls_and_audiences_as_the_reference_shows() {
        let key = AccessKey::new("k".repeat(44));
        let d = |endpoint: &str, target: Option<&str>| Dial {
            endpoint: endpoint.into(),
            target: target.map(String::from),
        };
        let u = dial_url(&d("http://127.0.0.1:18080", None), "myHub1", &key, "t-1").unwrap();
        assert!(u.starts_with("ws://127.0.0.1:18080/server/tunnel?hub=myHub1&access_token=ey"));
        let c = claims(&u);
        assert_eq!(c["aud"], "ws://127.0.0.1:18080/server/tunnel?hub=myHub1");
        assert_eq!(c["sub"], "t-1");
        assert_eq!(
            c["exp"].as_u64().unwrap() - c["iat"].as_u64().unwrap(),
            3600
        );
        let u = dial_url(
            &d("http://127.0.0.1:18080/", Some("instance-B")),
            "myHub1",
            &key,
            "t",
        )
        .unwrap();
        assert_eq!(
            claims(&u)["aud"],
            "ws://127.0.0.1:18080/server/tunnel?hub=myHub1&target=instance-B"
        );
        let u = dial_url(
            &d("https://x.webpubsub.azure.com:443", None),
            "h",
            &key,
            "t",
        )
        .unwrap();
        assert_eq!(
            claims(&u)["aud"],
            "wss://x.webpubsub.azure.com/server/tunnel?hub=h"
        );
        let u = dial_url(&d("https://h/abc?x=1", None), "h", &key, "t").unwrap();
        assert_eq!(claims(&u)["aud"], "wss://h/abc/server/tunnel?x=1&hub=h");
        assert!(dial_url(&d("http://", None), "h", &key, "t").is_err());
    }
}
