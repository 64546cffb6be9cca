//! The one axum [`Router`] every runtime serves: the event handler (`OPTIONS`/`POST`, with an
//! optional `/{event}` segment for URL templates), `/healthz`, and the browser-facing routes —
//! `/negotiate`, `/api/messages` (history) and `/api/rooms/{room}/presence` — which go through
//! one [`Authenticator`] (`HUBHOOK_AUTH`) and, when `HUBHOOK_CORS_ORIGINS` is set, a CORS layer
//! (the event handler never gets CORS headers).

mod health;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use axum::body::{Body, Bytes};
use axum::extract::{DefaultBodyLimit, Path, Query, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, Response, StatusCode};
use axum::response::IntoResponse;
use axum::routing::{any, get};
use axum::Router;
use serde::Deserialize;
use tracing::Instrument;

use crate::auth::{AuthError, Authenticator, Caller};
use crate::chat::{room_roles, validate_room, Chat, RoomError};
use crate::protocol::{
    validate_user_id, AllowedOrigins, ProtocolError, WebhookParser, MAX_USER_ID_BYTES,
};
use crate::service::{client_access, ClientTokenOptions, ConnectionString};
use crate::store::{now_ms, StoreError, MAX_PAGE};
pub use health::HealthCheck;

/// Webhook bodies larger than this are refused with 413 before they are read.
pub const MAX_BODY_BYTES: usize = 1024 * 1024;

pub struct AppState {
    pub parser: WebhookParser,
    pub origins: AllowedOrigins,
    pub chat: Chat,
    pub connection_string: ConnectionString,
    pub hub: String,
    /// Who may call negotiate, history and presence.
    pub auth: Authenticator,
    /// Exact origins for CORS on those routes (validated by `config`); empty: no CORS layer.
    pub cors_origins: Vec<String>,
    pub health: HealthCheck,
}

pub fn router(state: Arc<AppState>, event_path: &str) -> Router {
    let mut browser = Router::new()
        .route("/negotiate", get(negotiate))
        .route("/api/messages", get(messages))
        .route("/api/rooms/{room}/presence", get(presence));
    if let Some(cors) = cors_layer(&state.cors_origins) {
        browser = browser.layer(cors);
    }
    Router::new()
        .route(event_path, any(webhook))
        .route(&format!("{event_path}/{{event}}"), any(webhook))
        .merge(browser)
        .route("/healthz", get(healthz))
        .fallback(|| async { AppError::NoRoute })
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(state)
}

/// CORS for browsers on the app's own site: exact origins, `GET` with `Authorization`, no
/// credentials (the token travels in a header, never a cookie), preflight cached 10 minutes.
fn cors_layer(origins: &[String]) -> Option<tower_http::cors::CorsLayer> {
    use tower_http::cors::{AllowOrigin, CorsLayer};
    let origins: Vec<HeaderValue> = origins
        .iter()
        .filter_map(|o| HeaderValue::from_str(o).ok())
        .collect();
    (!origins.is_empty()).then(|| {
        CorsLayer::new()
            .allow_origin(AllowOrigin::list(origins))
            .allow_methods([Method::GET])
            .allow_headers([header::AUTHORIZATION, header::CONTENT_TYPE])
            .max_age(std::time::Duration::from_secs(600))
    })
}

/// Every refusal of this router: one status each, answered as a one-line plain-text reason.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error(transparent)]
    Protocol(#[from] ProtocolError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Room(#[from] RoomError),
    #[error("limit must be 1-{MAX_PAGE}")]
    Limit,
    #[error(
        "userId must be 1-{MAX_USER_ID_BYTES} printable ASCII characters (the rule of ce-userId)"
    )]
    UserId,
    #[error(transparent)]
    Auth(#[from] AuthError),
    #[error("the token does not allow room {0:?}")]
    RoomNotAllowed(String),
    #[error("no such route")]
    NoRoute,
}

impl AppError {
    pub fn status(&self) -> StatusCode {
        match self {
            AppError::Protocol(e) => e.status(),
            AppError::Store(e) => e.status(),
            AppError::Room(_) | AppError::Limit | AppError::UserId => StatusCode::BAD_REQUEST,
            AppError::Auth(e) => e.status(),
            AppError::RoomNotAllowed(_) => StatusCode::FORBIDDEN,
            AppError::NoRoute => StatusCode::NOT_FOUND,
        }
    }
}

impl IntoResponse for AppError {
    fn into_response(self) -> axum::response::Response {
        let status = self.status();
        match &self {
            // The verifier warns once when the issuer's keys cannot be fetched; a line per
            // request on top would flood the log for as long as the provider is down.
            AppError::Auth(AuthError::KeysUnavailable(_)) => {
                tracing::debug!(error = %self, "request refused for now")
            }
            _ if status == StatusCode::SERVICE_UNAVAILABLE => {
                tracing::warn!(error = %self, "request refused for now")
            }
            _ if status.is_server_error() => {
                tracing::error!(status = status.as_u16(), error = %self, "request failed")
            }
            _ => {}
        }
        let mut r = crate::protocol::failure(status, &self.to_string()).map(Body::from);
        if status == StatusCode::UNAUTHORIZED {
            r.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer error=\"invalid_token\""),
            );
        }
        r
    }
}

/// The request taken whole, not through `HeaderMap` + `Bytes` extractors: those clone every
/// header (an allocation and a reference count per header) and collect the body through a
/// frame list. Here the headers are borrowed from the request and the body is read once.
async fn webhook(
    State(app): State<Arc<AppState>>,
    request: Request,
) -> Result<Response<Body>, AppError> {
    let (parts, body) = request.into_parts();
    match parts.method {
        Method::OPTIONS => handshake(&app, &parts.headers),
        Method::POST => {
            let body = read_body(&parts.headers, body, MAX_BODY_BYTES).await?;
            Ok(handle_event(&app, &parts.headers, body).await)
        }
        m => Err(ProtocolError::MethodNotAllowed(m.to_string()).into()),
    }
}

/// A webhook's body, or 413 for one over `limit`: refused by its `content-length` before a byte
/// is read, or as soon as a chunked body passes the limit. A body that arrives in one piece (the
/// usual case) is returned as it is, without a copy.
pub async fn read_body(
    headers: &HeaderMap,
    body: Body,
    limit: usize,
) -> Result<Bytes, ProtocolError> {
    use futures_util::StreamExt;
    let too_large = || ProtocolError::TooLarge { limit };
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(too_large());
    }
    let failed = |e: axum::Error| ProtocolError::InvalidBody {
        event: "webhook",
        reason: format!("failed to read the request body: {e}"),
    };
    let mut chunks = body.into_data_stream();
    let mut first = Bytes::new();
    let mut joined: Option<bytes::BytesMut> = None;
    while let Some(chunk) = chunks.next().await {
        let chunk = chunk.map_err(failed)?;
        let so_far = joined.as_ref().map_or(first.len(), |j| j.len());
        if so_far + chunk.len() > limit {
            return Err(too_large());
        }
        match &mut joined {
            Some(j) => j.extend_from_slice(&chunk),
            None if first.is_empty() => first = chunk,
            None => {
                let mut j = bytes::BytesMut::with_capacity(first.len() + chunk.len());
                j.extend_from_slice(&first);
                j.extend_from_slice(&chunk);
                joined = Some(j);
            }
        }
    }
    Ok(joined.map_or(first, bytes::BytesMut::freeze))
}

fn handshake(app: &AppState, headers: &HeaderMap) -> Result<Response<Body>, AppError> {
    let origin = headers
        .get("webhook-request-origin")
        .and_then(|v| v.to_str().ok());
    let allowed = app.origins.check(origin).inspect_err(|e| {
        tracing::warn!(error = %e, "abuse-protection handshake refused");
    })?;
    tracing::info!(
        origin = origin.unwrap_or_default(),
        "abuse-protection handshake accepted"
    );
    let mut r = Response::new(Body::empty());
    r.headers_mut().insert(
        "webhook-allowed-origin",
        HeaderValue::from_str(&allowed).unwrap_or(HeaderValue::from_static("*")),
    );
    Ok(r)
}

async fn handle_event(app: &AppState, headers: &HeaderMap, body: Bytes) -> Response<Body> {
    let started = Instant::now();
    let hook = match app.parser.parse(headers, body) {
        Ok(h) => h,
        Err(e) => {
            tracing::warn!(status = e.status().as_u16(), error = %e, "webhook rejected");
            return AppError::from(e).into_response();
        }
    };
    let span = tracing::info_span!(
        "webhook",
        hub = %hook.context.hub,
        event = %hook.context.event_name,
        connection_id = %hook.context.connection_id,
        ce_id = %hook.context.ce_id,
    );
    async move {
        let response = app.chat.handle(hook).await;
        tracing::info!(
            status = response.status().as_u16(),
            ms = started.elapsed().as_micros() as f64 / 1000.0,
            "webhook handled"
        );
        response.map(Body::from)
    }
    .instrument(span)
    .await
}

#[derive(Deserialize)]
struct NegotiateQuery {
    #[serde(rename = "userId")]
    user_id: Option<String>,
    room: Option<String>,
}

/// The caller (per `HUBHOOK_AUTH`) and the room they asked for, if they may enter it.
async fn caller_in_room(
    app: &AppState,
    headers: &HeaderMap,
    room: Option<String>,
) -> Result<(Caller, String), AppError> {
    let caller = app.auth.authenticate(headers).await?;
    let room = room.unwrap_or_else(|| app.chat.config().default_room.clone());
    validate_room(&room)?;
    if !caller.may_enter(&room) {
        return Err(AppError::RoomNotAllowed(room));
    }
    Ok((caller, room))
}

/// Open negotiate trusts the caller's `userId`: fine on a laptop, never in production (hence
/// `open` only on a loopback endpoint). Under `oidc` the user comes from the verified token and
/// a `userId` in the query is ignored.
async fn negotiate(
    State(app): State<Arc<AppState>>,
    headers: HeaderMap,
    Query(q): Query<NegotiateQuery>,
) -> Result<Response<Body>, AppError> {
    let (caller, room) = caller_in_room(&app, &headers, q.room).await?;
    let user_id = match caller {
        Caller::User(id) if validate_user_id(&id.user_id).is_ok() => id.user_id,
        Caller::User(_) => return Err(AppError::UserId),
        Caller::Anyone => match q.user_id.filter(|u| !u.is_empty()) {
            Some(u) if validate_user_id(&u).is_ok() => u,
            Some(_) => return Err(AppError::UserId),
            None => format!("guest-{}", &uuid::Uuid::new_v4().simple().to_string()[..8]),
        },
    };
    let opts = ClientTokenOptions {
        user_id: Some(user_id),
        roles: room_roles(&room),
        ..Default::default()
    };
    let mut access = client_access(&app.connection_string, &app.hub, &opts);
    // The connect handler reads the room from the WebSocket URL's query.
    access.url.push_str(&format!("&room={room}"));
    Ok(axum::Json(access).into_response())
}

#[derive(Deserialize)]
struct HistoryQuery {
    room: Option<String>,
    limit: Option<String>,
    before: Option<String>,
}

async fn messages(
    State(app): State<Arc<AppState>>,
    headers: HeaderMap,
    Query(q): Query<HistoryQuery>,
) -> Result<Response<Body>, AppError> {
    let (_, room) = caller_in_room(&app, &headers, q.room).await?;
    let limit = match q.limit.as_deref().map(str::parse::<usize>) {
        None => 50,
        Some(Ok(n)) if (1..=MAX_PAGE).contains(&n) => n,
        Some(_) => return Err(AppError::Limit),
    };
    let page = app
        .chat
        .store()
        .history(&room, limit, q.before.as_deref().filter(|b| !b.is_empty()))
        .await?;
    Ok(axum::Json(page).into_response())
}

/// The users present in a room: `{"room", "online", "users": [{"userId", "connections", "since"}]}`.
async fn presence(
    State(app): State<Arc<AppState>>,
    headers: HeaderMap,
    Path(room): Path<String>,
) -> Result<Response<Body>, AppError> {
    let (_, room) = caller_in_room(&app, &headers, Some(room)).await?;
    let users = app.chat.store().presence(&room, now_ms()).await?;
    let body = serde_json::json!({ "room": room, "online": users.len(), "users": users });
    Ok(axum::Json(body).into_response())
}

/// `ok` (200) or the reason (503); `?verbose` answers JSON with the store and outbox figures.
async fn healthz(
    State(app): State<Arc<AppState>>,
    Query(q): Query<HashMap<String, String>>,
) -> Response<Body> {
    let report = app.health.report(&app.chat).await;
    if report.status.is_server_error() {
        tracing::warn!(reason = %report.reason, "health check failed");
    }
    if q.contains_key("verbose") {
        return (report.status, axum::Json(&report)).into_response();
    }
    crate::protocol::failure(report.status, &report.reason).map(Body::from)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunked(parts: &[&'static [u8]]) -> Body {
        let chunks: Vec<Result<Bytes, std::io::Error>> =
            parts.iter().map(|p| Ok(Bytes::from_static(p))).collect();
        Body::from_stream(futures_util::stream::iter(chunks))
    }

    #[tokio::test]
    async fn read_body_keeps_one_piece_and_joins_several() {
        let none = HeaderMap::new();
        let one = Bytes::from_static(b"hello");
        let got = read_body(&none, Body::from(one.clone()), 10).await.unwrap();
        assert_eq!(
            got.as_ptr(),
            one.as_ptr(),
            "one piece is returned without a copy"
        );
        let got = read_body(&none, chunked(&[b"he", b"", b"ll", b"o"]), 10)
            .await
            .unwrap();
        assert_eq!(got.as_ref(), b"hello");
        let got = read_body(&none, chunked(&[]), 10).await.unwrap();
        assert!(got.is_empty());
    }

    #[tokio::test]
    async fn read_body_refuses_over_the_limit_declared_or_streamed() {
        let mut declared = HeaderMap::new();
        declared.insert(header::CONTENT_LENGTH, HeaderValue::from_static("11"));
        // Refused on the header alone: the body is never polled.
        let never =
            Body::from_stream(futures_util::stream::pending::<Result<Bytes, std::io::Error>>());
        assert_eq!(
            read_body(&declared, never, 10).await,
            Err(ProtocolError::TooLarge { limit: 10 })
        );
        let none = HeaderMap::new();
        assert_eq!(
            read_body(&none, chunked(&[b"123456", b"78901"]), 10).await,
            Err(ProtocolError::TooLarge { limit: 10 })
        );
        assert_eq!(
            read_body(&none, chunked(&[b"12345", b"67890"]), 10)
                .await
                .unwrap()
                .as_ref(),
            b"1234567890"
        );
    }
}
