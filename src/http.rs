//! The one axum [`Router`] every runtime serves: the event handler (`OPTIONS`/`POST`, with an
//! optional `/{event}` segment for URL templates), `/negotiate`, `/api/messages`, `/healthz`.

use std::sync::Arc;
use std::time::Instant;

use axum::body::{Body, Bytes};
use axum::extract::{Query, State};
use axum::http::{HeaderMap, HeaderValue, Method, Response, StatusCode};
use axum::response::IntoResponse;
use axum::routing::{any, get};
use axum::Router;
use serde::Deserialize;
use tower_http::limit::RequestBodyLimitLayer;
use tracing::Instrument;

use crate::chat::{validate_room, Chat};
use crate::protocol::{AllowedOrigins, ProtocolError, WebhookParser};
use crate::service::{client_access, ClientTokenOptions, ConnectionString};
use crate::store::{StoreError, MAX_PAGE};

/// Webhook bodies larger than this are refused with 413 before they are read.
pub const MAX_BODY_BYTES: usize = 1024 * 1024;

pub struct AppState {
    pub parser: WebhookParser,
    pub origins: AllowedOrigins,
    pub chat: Chat,
    pub connection_string: ConnectionString,
    pub hub: String,
    pub negotiate_open: bool,
}

pub fn router(state: Arc<AppState>, event_path: &str) -> Router {
    Router::new()
        .route(event_path, any(webhook))
        .route(&format!("{event_path}/{{event}}"), any(webhook))
        .route("/negotiate", get(negotiate))
        .route("/api/messages", get(messages))
        .route("/healthz", get(healthz))
        .fallback(|| async { text(StatusCode::NOT_FOUND, "no such route") })
        .layer(RequestBodyLimitLayer::new(MAX_BODY_BYTES))
        .with_state(state)
}

fn text(status: StatusCode, reason: &str) -> Response<Body> {
    let mut r = Response::new(Body::from(format!("{reason}\n")));
    *r.status_mut() = status;
    r.headers_mut().insert(
        "content-type",
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

fn protocol_error(e: &ProtocolError) -> Response<Body> {
    text(e.status(), &e.to_string())
}

async fn webhook(
    State(app): State<Arc<AppState>>,
    method: Method,
    headers: HeaderMap,
    body: Bytes,
) -> Response<Body> {
    match method {
        Method::OPTIONS => {
            let origin = headers
                .get("webhook-request-origin")
                .and_then(|v| v.to_str().ok());
            match app.origins.check(origin) {
                Ok(allowed) => {
                    tracing::info!(
                        origin = origin.unwrap_or_default(),
                        "abuse-protection handshake accepted"
                    );
                    let mut r = Response::new(Body::empty());
                    r.headers_mut().insert(
                        "webhook-allowed-origin",
                        HeaderValue::from_str(&allowed).unwrap_or(HeaderValue::from_static("*")),
                    );
                    r
                }
                Err(e) => {
                    tracing::warn!(error = %e, "abuse-protection handshake refused");
                    protocol_error(&e)
                }
            }
        }
        Method::POST => handle_event(&app, &headers, body).await,
        m => protocol_error(&ProtocolError::MethodNotAllowed(m.to_string())),
    }
}

async fn handle_event(app: &AppState, headers: &HeaderMap, body: Bytes) -> Response<Body> {
    let started = Instant::now();
    let hook = match app.parser.parse(headers, body) {
        Ok(h) => h,
        Err(e) => {
            tracing::warn!(status = e.status().as_u16(), error = %e, "webhook rejected");
            return protocol_error(&e);
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
            ms = started.elapsed().as_secs_f64() * 1000.0,
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

/// Open negotiate trusts the caller's `userId`: fine on a laptop, never in production, where the
/// app's own auth must sit in front (hence `off` unless the endpoint is loopback).
async fn negotiate(
    State(app): State<Arc<AppState>>,
    Query(q): Query<NegotiateQuery>,
) -> Response<Body> {
    if !app.negotiate_open {
        return text(
            StatusCode::NOT_FOUND,
            "negotiate is off (HUBHOOK_NEGOTIATE=open enables it; put your own auth in front)",
        );
    }
    let room = q
        .room
        .unwrap_or_else(|| app.chat.config().default_room.clone());
    if let Err(e) = validate_room(&room) {
        return text(StatusCode::BAD_REQUEST, &e.to_string());
    }
    let user_id = match q.user_id.filter(|u| !u.is_empty()) {
        Some(u) if u.len() <= 128 && !u.chars().any(char::is_control) => u,
        Some(_) => {
            return text(
                StatusCode::BAD_REQUEST,
                "userId must be 1-128 printable characters",
            )
        }
        None => format!("guest-{}", &uuid::Uuid::new_v4().simple().to_string()[..8]),
    };
    let opts = ClientTokenOptions {
        user_id: Some(user_id),
        roles: vec![
            format!("webpubsub.joinLeaveGroup.{room}"),
            format!("webpubsub.sendToGroup.{room}"),
        ],
        ..Default::default()
    };
    let mut access = client_access(&app.connection_string, &app.hub, &opts);
    // The connect handler reads the room from the WebSocket URL's query.
    access.url.push_str(&format!("&room={room}"));
    axum::Json(access).into_response()
}

#[derive(Deserialize)]
struct HistoryQuery {
    room: Option<String>,
    limit: Option<String>,
    before: Option<String>,
}

async fn messages(
    State(app): State<Arc<AppState>>,
    Query(q): Query<HistoryQuery>,
) -> Response<Body> {
    let room = q
        .room
        .unwrap_or_else(|| app.chat.config().default_room.clone());
    if let Err(e) = validate_room(&room) {
        return text(StatusCode::BAD_REQUEST, &e.to_string());
    }
    let limit = match q.limit.as_deref().map(str::parse::<usize>) {
        None => 50,
        Some(Ok(n)) if (1..=MAX_PAGE).contains(&n) => n,
        Some(_) => {
            return text(
                StatusCode::BAD_REQUEST,
                &format!("limit must be 1-{MAX_PAGE}"),
            )
        }
    };
    match app
        .chat
        .store()
        .history(&room, limit, q.before.as_deref().filter(|b| !b.is_empty()))
        .await
    {
        Ok(page) => axum::Json(page).into_response(),
        Err(e) => store_error(&e),
    }
}

async fn healthz(State(app): State<Arc<AppState>>) -> Response<Body> {
    match app.chat.store().health().await {
        Ok(()) => text(StatusCode::OK, "ok"),
        Err(e) => store_error(&e),
    }
}

fn store_error(e: &StoreError) -> Response<Body> {
    let status = match e {
        StoreError::BadCursor => StatusCode::BAD_REQUEST,
        StoreError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
        StoreError::Failed(_) => StatusCode::INTERNAL_SERVER_ERROR,
    };
    if status.is_server_error() {
        tracing::error!(error = %e, "store failure");
    }
    text(status, &e.to_string())
}
