//! W1 peer for `bench/`: the smallest event handler built on hubhook's `protocol` module, the
//! fair counterpart of the `@azure/web-pubsub-express` quickstart (`bench/node-echo.mjs`).
//!
//! Every `POST` is parsed by [`WebhookParser`] **with signature verification on** (the express
//! peer does not verify), a user event is answered with its own data, `connect` is accepted and
//! `connected`/`disconnected` are acknowledged. No store, no broadcast, no logging.
//!
//! The request is taken whole (headers borrowed, body read once with the 1 MiB webhook limit,
//! as `hubhook serve` does) and a user event is answered with the very bytes it came with: the
//! parser has checked them (UTF-8 text, valid JSON), so serialising its parsed copy again would
//! only cost time. A JSON echo is the same JSON, byte for byte as the client sent it.
//!
//! ```text
//! WEBPUBSUB_CONNECTION_STRING='Endpoint=http://127.0.0.1:1;AccessKey=...;Version=1.0;' \
//! PORT=8090 cargo run --release --example echo
//! ```
//! Env: `PORT` (8080), `HUBHOOK_BIND` (127.0.0.1), `WEBPUBSUB_HUB` (chat),
//! `WEBPUBSUB_CONNECTION_STRING` (its access key verifies `ce-signature`), `HUBHOOK_EVENT_PATH`
//! (`/eventhandler`).

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{header, HeaderValue, Method, Response, StatusCode};
use axum::routing::any;
use axum::Router;
use hubhook::http::{read_body, MAX_BODY_BYTES};
use hubhook::protocol::{
    failure, notification_ack, AllowedOrigins, ConnectResponse, Event, EventData, ProtocolError,
    SignatureVerifier, WebhookParser,
};
use hubhook::service::ConnectionString;

struct Echo {
    parser: WebhookParser,
    origins: AllowedOrigins,
}

/// A user event's own body back, with the content type its data was read as.
fn echo(data: &EventData, body: Bytes) -> Response<Bytes> {
    let content_type = match data {
        EventData::Text(_) => "text/plain; charset=utf-8",
        EventData::Json(_) => "application/json; charset=utf-8",
        EventData::Binary(_) => "application/octet-stream",
    };
    let mut r = Response::new(body);
    *r.status_mut() = StatusCode::OK;
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    r
}

async fn webhook(State(app): State<Arc<Echo>>, request: Request) -> Response<Body> {
    let (parts, body) = request.into_parts();
    let headers = &parts.headers;
    let response = match parts.method {
        Method::POST => match read_body(headers, body, MAX_BODY_BYTES).await {
            // `Bytes` clones share the buffer: the parser gets one, the reply the other.
            Ok(body) => match app.parser.parse(headers, body.clone()) {
                Ok(hook) => match &hook.event {
                    Event::User(u) => echo(&u.data, body),
                    Event::Connect(_) => ConnectResponse::default().into_response(None),
                    Event::Connected | Event::Disconnected(_) => notification_ack(),
                },
                Err(e) => failure(e.status(), &e.to_string()),
            },
            Err(e) => failure(e.status(), &e.to_string()),
        },
        Method::OPTIONS => {
            let origin = headers
                .get("webhook-request-origin")
                .and_then(|v| v.to_str().ok());
            match app.origins.check(origin) {
                Ok(allowed) => {
                    let mut r = Response::new(Bytes::new());
                    if let Ok(v) = HeaderValue::from_str(&allowed) {
                        r.headers_mut().insert("webhook-allowed-origin", v);
                    }
                    r
                }
                Err(e) => failure(e.status(), &e.to_string()),
            }
        }
        m => {
            let e = ProtocolError::MethodNotAllowed(m.to_string());
            failure(e.status(), &e.to_string())
        }
    };
    response.map(Body::from)
}

fn env_or(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.to_string())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cs = std::env::var("WEBPUBSUB_CONNECTION_STRING")
        .map_err(|_| anyhow::anyhow!("WEBPUBSUB_CONNECTION_STRING is required"))?;
    let cs = ConnectionString::parse(&cs)?;
    let hub = env_or("WEBPUBSUB_HUB", "chat");
    let path = env_or("HUBHOOK_EVENT_PATH", "/eventhandler");
    let port: u16 = env_or("PORT", "8080").parse()?;
    let bind: IpAddr = env_or("HUBHOOK_BIND", "127.0.0.1").parse()?;
    let app = Arc::new(Echo {
        parser: WebhookParser::new(hub, Some(SignatureVerifier::new([cs.access_key.expose()]))),
        origins: AllowedOrigins::Any,
    });
    let router = Router::new()
        .route(&path, any(webhook))
        .route(&format!("{path}/{{event}}"), any(webhook))
        .with_state(app);
    let listener = tokio::net::TcpListener::bind(SocketAddr::new(bind, port)).await?;
    eprintln!(
        "echo example listening on http://{}{path}",
        listener.local_addr()?
    );
    axum::serve(listener, router).await?;
    Ok(())
}
