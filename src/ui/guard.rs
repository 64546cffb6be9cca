//! Who may use the dev page: the per-run token (`x-hubhook-token` header, or `?token=` where a
//! browser cannot set headers: `EventSource`), and `Host` / `Origin` naming this loopback port
//! only, so a page on another origin, or a DNS-rebound name, gets nothing.

use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use subtle::ConstantTimeEq;

pub const TOKEN_HEADER: &str = "x-hubhook-token";

#[derive(Clone)]
pub struct Guard {
    token: String,
    port: u16,
}

/// A refusal: status and a one-line reason.
#[derive(Debug, thiserror::Error)]
pub enum Refused {
    #[error("Host {0:?} is not this dev page's (127.0.0.1 or localhost, same port)")]
    Host(String),
    #[error("Origin {0:?} may not use the dev page")]
    Origin(String),
    #[error("missing or wrong dev-page token: open the URL `hubhook dev` printed")]
    Token,
}

impl IntoResponse for Refused {
    fn into_response(self) -> Response {
        let status = match self {
            Refused::Token => StatusCode::UNAUTHORIZED,
            _ => StatusCode::FORBIDDEN,
        };
        (status, format!("{self}\n")).into_response()
    }
}

impl Guard {
    pub fn new(token: String, port: u16) -> Guard {
        Guard { token, port }
    }

    pub fn token(&self) -> &str {
        &self.token
    }

    fn local(&self, authority: &str) -> bool {
        let port = self.port.to_string();
        ["127.0.0.1", "localhost", "[::1]"]
            .iter()
            .any(|h| authority.eq_ignore_ascii_case(&format!("{h}:{port}")))
    }

    /// `Host` (and `Origin`, when sent) name this port on loopback.
    pub fn check_origin(&self, headers: &HeaderMap) -> Result<(), Refused> {
        let host = headers
            .get(header::HOST)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        if !self.local(host) {
            return Err(Refused::Host(host.chars().take(100).collect()));
        }
        if let Some(origin) = headers.get(header::ORIGIN) {
            let o = origin.to_str().unwrap_or("");
            let ok = o
                .strip_prefix("http://")
                .is_some_and(|authority| self.local(authority));
            if !ok {
                return Err(Refused::Origin(o.chars().take(100).collect()));
            }
        }
        Ok(())
    }

    /// The token, from the header or the query, compared in constant time.
    pub fn check_token(&self, headers: &HeaderMap, query: Option<&str>) -> Result<(), Refused> {
        let from_query = query.and_then(|q| {
            url::form_urlencoded::parse(q.as_bytes())
                .find(|(k, _)| k == "token")
                .map(|(_, v)| v.into_owned())
        });
        let offered = headers
            .get(TOKEN_HEADER)
            .and_then(|v| v.to_str().ok())
            .map(String::from)
            .or(from_query)
            .unwrap_or_default();
        if bool::from(offered.as_bytes().ct_eq(self.token.as_bytes())) {
            Ok(())
        } else {
            Err(Refused::Token)
        }
    }
}

/// Every dev-page route: `Host` and `Origin`.
pub async fn origin(State(g): State<Guard>, req: Request, next: Next) -> Response {
    match g.check_origin(req.headers()) {
        Ok(()) => next.run(req).await,
        Err(e) => e.into_response(),
    }
}

/// The page's API: the token as well.
pub async fn token(State(g): State<Guard>, req: Request, next: Next) -> Response {
    match g.check_token(req.headers(), req.uri().query()) {
        Ok(()) => next.run(req).await,
        Err(e) => e.into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        pairs
            .iter()
            .map(|(k, v)| (k.parse().unwrap(), v.parse().unwrap()))
            .collect()
    }

    #[test]
    fn host_origin_and_token() {
        let g = Guard::new("s3cret".into(), 8081);
        assert!(g
            .check_origin(&headers(&[("host", "127.0.0.1:8081")]))
            .is_ok());
        assert!(g
            .check_origin(&headers(&[
                ("host", "localhost:8081"),
                ("origin", "http://localhost:8081")
            ]))
            .is_ok());
        let rebound = g.check_origin(&headers(&[("host", "evil.example:8081")]));
        assert!(matches!(rebound, Err(Refused::Host(_))));
        let other = g.check_origin(&headers(&[
            ("host", "127.0.0.1:8081"),
            ("origin", "http://127.0.0.1:3000"),
        ]));
        assert!(matches!(other, Err(Refused::Origin(_))));
        assert!(g
            .check_token(&headers(&[(TOKEN_HEADER, "s3cret")]), None)
            .is_ok());
        assert!(g
            .check_token(&HeaderMap::new(), Some("a=1&token=s3cret"))
            .is_ok());
        assert!(g
            .check_token(&HeaderMap::new(), Some("token=s3cre"))
            .is_err());
        assert!(g.check_token(&HeaderMap::new(), None).is_err());
    }
}
