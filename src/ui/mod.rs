//! The dev page `hubhook dev` serves beside the function: a chat client, a live webhook
//! inspector and the emulator's connections, from assets compiled into the binary (no CDN, no
//! build step), behind a per-run token and a `Host`/`Origin` check ([`guard`]).
//!
//! | route | what |
//! |---|---|
//! | `GET /` , `/ui/app.js`, `/ui/app.css` | the page (static; the token lives in the URL fragment) |
//! | `GET /ui/api/info` | hub, default room: the page's token check at start |
//! | `GET`/`DELETE /ui/api/webhooks` | the last [`feed::CAPACITY`] webhooks, newest first / clear |
//! | `GET /ui/api/webhooks/live` | new webhooks as server-sent events (`?token=`) |
//! | `POST /ui/api/webhooks/{id}/replay` | the same request again, re-signed, to the same URL |
//! | `GET /ui/api/service`, `POST /ui/api/service/send` | connections and groups (or the tunnel's state); send to a room (REST API) |
//!
//! Knows nothing of stores or clouds: it is handed the webhooks ([`Feed::record`], or
//! [`Feed::record_tunnelled`] through [`TunnelStatus::observer`]), a REST client and either a view
//! of the local emulator's connections or, against a real resource, the tunnel's state.

mod feed;
mod guard;
mod tunnel;

use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::middleware::from_fn_with_state;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use futures_util::{Stream, StreamExt};
use serde::Deserialize;
use serde_json::json;
use tokio::sync::broadcast::error::RecvError;

use crate::emulator::{EmulatorView, WebhookLog, WebhookRequest, WebhookResponse};
use crate::protocol::{now_rfc3339, sign, EventData};
use crate::service::{SendOptions, ServiceClient};
pub use feed::{Feed, Record, CAPACITY};
pub use guard::TOKEN_HEADER;
pub use tunnel::{Snapshot as TunnelSnapshot, TunnelStatus};

const INDEX_HTML: &str = include_str!("assets/index.html");
const APP_JS: &str = include_str!("assets/app.js");
const APP_CSS: &str = include_str!("assets/app.css");

/// The page, before its backends exist: the feed must be handed to the emulator first.
pub struct DevPage {
    feed: Feed,
    guard: guard::Guard,
    key: String,
    port: u16,
}

/// What the page's API talks to.
pub struct Backends {
    pub hub: String,
    pub default_room: String,
    /// The service's REST API ("send to room").
    pub service: ServiceClient,
    /// The local emulator's connections; `None` against a real resource.
    pub emulator: Option<EmulatorView>,
    /// The tunnel to a real resource; `None` with the local emulator.
    pub tunnel: Option<TunnelStatus>,
}

struct PageState {
    feed: Feed,
    key: String,
    backends: Backends,
    http: reqwest::Client,
}

impl DevPage {
    /// For the page served on loopback `port`; `key` signs replays and checks signatures.
    pub fn new(port: u16, key: &str) -> DevPage {
        let token = format!(
            "{}{}",
            uuid::Uuid::new_v4().simple(),
            uuid::Uuid::new_v4().simple()
        );
        DevPage {
            feed: Feed::new([key]),
            guard: guard::Guard::new(token, port),
            key: key.to_string(),
            port,
        }
    }

    /// Record every webhook here (the emulator's observer).
    pub fn feed(&self) -> Feed {
        self.feed.clone()
    }

    /// The one URL to open: the token is in the fragment, which the browser never sends.
    pub fn url(&self) -> String {
        format!(
            "http://127.0.0.1:{}/#token={}",
            self.port,
            self.guard.token()
        )
    }

    /// The page and its API; merge it into the function's router.
    pub fn router(self, backends: Backends) -> Router {
        let state = Arc::new(PageState {
            feed: self.feed,
            key: self.key,
            backends,
            http: reqwest::Client::builder()
                .connect_timeout(Duration::from_secs(2))
                .timeout(Duration::from_secs(10))
                .build()
                .expect("http client"),
        });
        let api = Router::new()
            .route("/ui/api/info", get(info))
            .route("/ui/api/webhooks", get(list).delete(clear))
            .route("/ui/api/webhooks/live", get(live))
            .route("/ui/api/webhooks/{id}/replay", post(replay))
            .route("/ui/api/service", get(service))
            .route("/ui/api/service/send", post(send_to_room))
            .route_layer(from_fn_with_state(self.guard.clone(), guard::token))
            .with_state(state);
        Router::new()
            .route(
                "/",
                get(|| async { asset("text/html; charset=utf-8", INDEX_HTML) }),
            )
            .route(
                "/ui/app.js",
                get(|| async { asset("text/javascript; charset=utf-8", APP_JS) }),
            )
            .route(
                "/ui/app.css",
                get(|| async { asset("text/css; charset=utf-8", APP_CSS) }),
            )
            .merge(api)
            .route_layer(from_fn_with_state(self.guard, guard::origin))
    }
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    let headers = [
        (header::CONTENT_TYPE, content_type),
        (header::CACHE_CONTROL, "no-store"),
        (
            header::CONTENT_SECURITY_POLICY,
            "default-src 'self'; connect-src 'self' ws: wss:; img-src 'self' data:; \
             frame-ancestors 'none'; base-uri 'none'; form-action 'none'",
        ),
        (header::REFERRER_POLICY, "no-referrer"),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
    ];
    (headers, body).into_response()
}

/// A refusal of the page's API: status and one line.
#[derive(Debug, thiserror::Error)]
enum UiError {
    #[error("no webhook {0} (cleared, or older than the last {CAPACITY})")]
    NoWebhook(u64),
    #[error("webhook {0} has no request to replay (its handshake failed)")]
    NoRequest(u64),
    #[error("room must be 1 to 128 characters")]
    Room,
    #[error("text must not be empty")]
    Text,
    #[error("the service refused: {0}")]
    Service(String),
    #[error("no service view: neither an emulator nor a tunnel")]
    NoEmulator,
}

impl IntoResponse for UiError {
    fn into_response(self) -> Response {
        let status = match self {
            UiError::NoWebhook(_) => StatusCode::NOT_FOUND,
            UiError::NoRequest(_) | UiError::Room | UiError::Text => StatusCode::BAD_REQUEST,
            UiError::Service(_) => StatusCode::BAD_GATEWAY,
            UiError::NoEmulator => StatusCode::NOT_IMPLEMENTED,
        };
        (status, format!("{self}\n")).into_response()
    }
}

type Page = State<Arc<PageState>>;

async fn info(State(p): Page) -> Json<serde_json::Value> {
    let mode = if p.backends.emulator.is_some() {
        "emulator"
    } else if p.backends.tunnel.is_some() {
        "tunnel"
    } else {
        "none"
    };
    Json(json!({
        "hub": p.backends.hub,
        "room": p.backends.default_room,
        "mode": mode,
        "emulator": p.backends.emulator.is_some(),
        "tunnel": p.backends.tunnel.as_ref().map(TunnelStatus::snapshot),
        "capacity": CAPACITY,
    }))
}

async fn list(State(p): Page) -> Json<Vec<Arc<Record>>> {
    Json(p.feed.list())
}

async fn clear(State(p): Page) -> StatusCode {
    p.feed.clear();
    StatusCode::NO_CONTENT
}

/// Each new webhook as an SSE `webhook` event; `lagged` when this page fell behind (it reloads
/// the list). With a tunnel, each change of its state as a `tunnel` event (the whole state).
async fn live(State(p): Page) -> Sse<impl Stream<Item = Result<SseEvent, Infallible>>> {
    let rx = p.feed.subscribe();
    let tunnel = p.backends.tunnel.as_ref().map(TunnelStatus::subscribe);
    // Ends at once without a tunnel; `select` goes on with the webhooks.
    let tunnel = futures_util::stream::unfold(tunnel, |rx| async move {
        let mut rx = rx?;
        loop {
            match rx.recv().await {
                Ok(s) => {
                    let event = SseEvent::default()
                        .event("tunnel")
                        .json_data(&s)
                        .unwrap_or_default();
                    return Some((Ok(event), Some(rx)));
                }
                // Each event is the whole state: the next one is as good.
                Err(RecvError::Lagged(_)) => continue,
                Err(RecvError::Closed) => return None,
            }
        }
    });
    let webhooks = futures_util::stream::unfold(rx, |mut rx| async move {
        let event = match rx.recv().await {
            Ok(r) => SseEvent::default()
                .event("webhook")
                .json_data(&*r)
                .unwrap_or_default(),
            Err(RecvError::Lagged(n)) => SseEvent::default().event("lagged").data(n.to_string()),
            Err(RecvError::Closed) => return None,
        };
        Some((Ok(event), rx))
    });
    let stream = futures_util::stream::select(webhooks, tunnel);
    // Ends at Ctrl-C / SIGTERM, so an open page does not hold up the listener's drain.
    let stream = stream.take_until(crate::runtime::shutdown_signal());
    Sse::new(stream).keep_alive(KeepAlive::default())
}

/// Sends a recorded request again to the same handler URL, with `ce-signature` computed afresh
/// (with the emulator's key, or the resource's when tunnelled): what the service's retry does.
/// The answer is recorded like any webhook (`replayOf`).
async fn replay(State(p): Page, Path(id): Path<u64>) -> Result<Json<Arc<Record>>, UiError> {
    let rec = p.feed.get(id).ok_or(UiError::NoWebhook(id))?;
    let orig = rec.request.as_ref().ok_or(UiError::NoRequest(id))?;
    let mut headers = HeaderMap::new();
    for (k, v) in &orig.headers {
        if let (Ok(k), Ok(v)) = (HeaderName::try_from(k), HeaderValue::try_from(v)) {
            headers.append(k, v);
        }
    }
    let method = match &orig.method {
        Some(m) => reqwest::Method::from_bytes(m.as_bytes()).unwrap_or(reqwest::Method::POST),
        None => reqwest::Method::POST,
    };
    // The abuse-protection probe (`OPTIONS`) is not signed.
    if method == reqwest::Method::POST {
        if let Ok(sig) = HeaderValue::try_from(sign([p.key.as_str()], &rec.connection_id)) {
            headers.insert("ce-signature", sig);
        }
    }
    let url = orig.url.clone().unwrap_or_default();
    let request = Arc::new(WebhookRequest {
        url: url.clone(),
        headers: headers.clone(),
        body: orig.body.clone().into(),
    });
    let started = Instant::now();
    let sent = p
        .http
        .request(method.clone(), &url)
        .headers(headers)
        .body(request.body.clone())
        .send()
        .await;
    let (status, error, response) = match sent {
        Ok(resp) => {
            let status = resp.status().as_u16();
            let headers = resp.headers().clone();
            match resp.bytes().await {
                Ok(body) => (Some(status), None, Some(WebhookResponse { headers, body })),
                Err(e) => (Some(status), Some(e.to_string()), None),
            }
        }
        Err(e) => (None, Some(e.to_string()), None),
    };
    let log = WebhookLog {
        hub: rec.hub.clone(),
        event: rec.event.clone(),
        connection_id: rec.connection_id.clone(),
        status,
        error,
        elapsed: started.elapsed(),
        attempt: 1,
        request: Some(request),
        response,
    };
    Ok(Json(p.feed.record(&log, Some(id))))
}

/// The emulator's connections and groups; against a real resource, the tunnel's state (the
/// service's own connections are not listed by its REST API).
async fn service(State(p): Page) -> Result<Json<serde_json::Value>, UiError> {
    let Some(view) = p.backends.emulator.as_ref() else {
        let tunnel = p.backends.tunnel.as_ref().ok_or(UiError::NoEmulator)?;
        return Ok(Json(json!({
            "mode": "tunnel",
            "hub": p.backends.hub,
            "tunnel": tunnel.snapshot(),
        })));
    };
    let connections = view.connections();
    let mut groups = std::collections::BTreeMap::<String, Vec<String>>::new();
    for c in &connections {
        for g in &c.groups {
            groups
                .entry(g.clone())
                .or_default()
                .push(c.connection_id.clone());
        }
    }
    let mut users: Vec<&str> = connections
        .iter()
        .filter_map(|c| c.user_id.as_deref())
        .collect();
    users.sort_unstable();
    users.dedup();
    Ok(Json(json!({
        "mode": "emulator",
        "hub": p.backends.hub,
        "connections": connections,
        "users": users,
        "groups": groups,
    })))
}

#[derive(Deserialize)]
struct SendBody {
    room: String,
    text: String,
}

/// Through the REST API (`POST /api/hubs/{hub}/groups/{room}/:send`), as a server would.
async fn send_to_room(State(p): Page, Json(b): Json<SendBody>) -> Result<StatusCode, UiError> {
    if b.room.is_empty() || b.room.chars().count() > 128 {
        return Err(UiError::Room);
    }
    if b.text.trim().is_empty() {
        return Err(UiError::Text);
    }
    let data = EventData::Json(json!({
        "type": "server", "room": b.room, "text": b.text, "at": now_rfc3339(),
    }));
    p.backends
        .service
        .send_to_group(&b.room, &data, &SendOptions::default())
        .await
        .map_err(|e| UiError::Service(e.to_string()))?;
    Ok(StatusCode::ACCEPTED)
}
