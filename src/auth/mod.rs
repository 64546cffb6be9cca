//! Who is calling the browser-facing routes (`/negotiate`, history, presence): verifying end-user
//! bearer tokens from an OpenID Connect provider ([`oidc`]: discovery, a JWKS cache). It knows
//! nothing of Web PubSub or stores: it answers "which user, which rooms" or a refusal.

pub mod oidc;

use http::{header, HeaderMap, StatusCode};

pub use oidc::{OidcConfig, OidcError, OidcVerifier};

/// How the browser-facing routes are guarded (`HUBHOOK_AUTH`).
pub enum Authenticator {
    /// Anyone may call them and name any `userId` (a loopback endpoint, or explicitly insecure).
    Open,
    /// The routes answer 404.
    Off,
    /// A bearer token from the issuer is required; the user comes from it.
    Oidc(Box<OidcVerifier>),
}

/// Who a request comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Caller {
    /// Open mode: no sign-in, every room.
    Anyone,
    /// A verified token.
    User(Identity),
}

impl Caller {
    /// Whether this caller may see or enter `room`.
    pub fn may_enter(&self, room: &str) -> bool {
        match self {
            Caller::Anyone => true,
            Caller::User(id) => id.may_enter(room),
        }
    }
}

/// What a verified token says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// From the configured user claim (`sub` by default).
    pub user_id: String,
    /// From the rooms claim when one is configured: `None` means every room.
    pub rooms: Option<Vec<String>>,
}

impl Identity {
    pub fn may_enter(&self, room: &str) -> bool {
        self.rooms
            .as_ref()
            .is_none_or(|rooms| rooms.iter().any(|r| r == room))
    }
}

/// Why a caller was refused. One status each; the text is the one-line reason the caller gets.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum AuthError {
    #[error(
        "negotiate, history and presence are off (HUBHOOK_AUTH=oidc enables them with sign-in)"
    )]
    Off,
    #[error("sign-in required: send Authorization: Bearer <token>")]
    MissingToken,
    #[error("token refused: {0}")]
    Refused(String),
    /// The issuer's keys cannot be fetched: not the caller's fault (503).
    #[error("cannot verify tokens now: {0}")]
    KeysUnavailable(String),
}

impl AuthError {
    pub fn status(&self) -> StatusCode {
        match self {
            AuthError::Off => StatusCode::NOT_FOUND,
            AuthError::MissingToken | AuthError::Refused(_) => StatusCode::UNAUTHORIZED,
            AuthError::KeysUnavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
        }
    }
}

impl Authenticator {
    /// The caller of a browser-facing request, from its `Authorization` header.
    pub async fn authenticate(&self, headers: &HeaderMap) -> Result<Caller, AuthError> {
        match self {
            Authenticator::Open => Ok(Caller::Anyone),
            Authenticator::Off => Err(AuthError::Off),
            Authenticator::Oidc(v) => {
                let token = bearer(headers).ok_or(AuthError::MissingToken)?;
                v.verify(token).await.map(Caller::User)
            }
        }
    }

    pub fn describe(&self) -> &'static str {
        match self {
            Authenticator::Open => "open",
            Authenticator::Off => "off",
            Authenticator::Oidc(_) => "oidc",
        }
    }
}

/// The token of `Authorization: Bearer <token>` (scheme case-insensitive).
fn bearer(headers: &HeaderMap) -> Option<&str> {
    let v = headers.get(header::AUTHORIZATION)?.to_str().ok()?.trim();
    let (scheme, token) = v.split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_header_and_rooms() {
        let mut h = HeaderMap::new();
        assert_eq!(bearer(&h), None);
        h.insert(header::AUTHORIZATION, "bearer abc.def.ghi".parse().unwrap());
        assert_eq!(bearer(&h), Some("abc.def.ghi"));
        h.insert(header::AUTHORIZATION, "Basic abc".parse().unwrap());
        assert_eq!(bearer(&h), None);
        h.insert(header::AUTHORIZATION, "Bearer ".parse().unwrap());
        assert_eq!(bearer(&h), None);
        let id = Identity {
            user_id: "u".into(),
            rooms: Some(vec!["a".into()]),
        };
        assert!(id.may_enter("a") && !id.may_enter("b"));
        assert!(Caller::Anyone.may_enter("b"));
    }
}
