//! The client endpoint's handshake, in the service's order: token (401) → the blocking `connect`
//! webhook (its rejection status) → `101` with the chosen subprotocol → session. And the reliable
//! protocol's recovery handshake (`awps_connection_id` + `awps_reconnection_token`).

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;

use axum::extract::ws::rejection::WebSocketUpgradeRejection as WsRejection;
use axum::extract::ws::{CloseFrame, Message, WebSocketUpgrade};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{json, Value};

use super::auth::{verify_client_token, Claims, TokenError};
use super::conn::{Conn, JSON_RELIABLE_V1, JSON_V1};
use super::handle::SimpleMode;
use super::session::{self, MAX_FRAME};
use super::upstream::UpstreamError;
use super::Shared;
use crate::protocol::{ConnectRequest, Event};

/// The reason a reliable client gets (before close 1008) when its connection is gone.
pub const NOT_RECOVERABLE: &str = "The connection could not be recovered.";

/// Why the handshake refuses a client: an HTTP status and a one-line text body.
#[derive(Debug, thiserror::Error)]
pub enum HandshakeError {
    #[error("expected a WebSocket upgrade: {0}")]
    NotUpgrade(#[from] WsRejection),
    #[error("missing hub")]
    MissingHub,
    #[error("invalid hub name {0:?}")]
    InvalidHub(String),
    #[error("missing access_token")]
    MissingToken,
    #[error(transparent)]
    Token(#[from] TokenError),
    #[error("connect event failed: {0}")]
    Upstream(#[from] UpstreamError),
    /// The handler's own answer: its 4xx (a 5xx becomes 500) and its body or a default reason.
    #[error("{reason}")]
    Refused { status: StatusCode, reason: String },
    #[error("the connect handler answered 200 with a body that is not JSON")]
    NotJson,
    #[error("the connect handler chose subprotocol {0:?}, which the client did not offer")]
    NotOffered(String),
}

impl HandshakeError {
    pub fn status(&self) -> StatusCode {
        match self {
            HandshakeError::NotUpgrade(_)
            | HandshakeError::MissingHub
            | HandshakeError::InvalidHub(_) => StatusCode::BAD_REQUEST,
            HandshakeError::MissingToken | HandshakeError::Token(_) => StatusCode::UNAUTHORIZED,
            HandshakeError::Refused { status, .. } => *status,
            HandshakeError::Upstream(_)
            | HandshakeError::NotJson
            | HandshakeError::NotOffered(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

impl IntoResponse for HandshakeError {
    fn into_response(self) -> Response {
        let status = self.status();
        tracing::info!(target: "hubhook::emulator", status = status.as_u16(), "client handshake refused: {self}");
        (status, format!("{self}\n")).into_response()
    }
}

/// `GET /client/hubs/{hub}`
pub async fn hub_path(
    State(s): State<Arc<Shared>>,
    Path(hub): Path<String>,
    Query(q): Query<Vec<(String, String)>>,
    headers: HeaderMap,
    ws: Result<WebSocketUpgrade, WsRejection>,
) -> Result<Response, HandshakeError> {
    endpoint(s, hub, q, headers, ws).await
}

/// `GET /client/?hub={hub}`
pub async fn hub_query(
    State(s): State<Arc<Shared>>,
    Query(q): Query<Vec<(String, String)>>,
    headers: HeaderMap,
    ws: Result<WebSocketUpgrade, WsRejection>,
) -> Result<Response, HandshakeError> {
    let hub = first(&q, "hub")
        .ok_or(HandshakeError::MissingHub)?
        .to_string();
    endpoint(s, hub, q, headers, ws).await
}

fn first<'a>(q: &'a [(String, String)], k: &str) -> Option<&'a str> {
    q.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str())
}

fn valid_hub(hub: &str) -> bool {
    crate::protocol::validate_hub(hub).is_ok()
}

/// What the `connect` webhook decided.
struct Accepted {
    user_id: Option<String>,
    groups: Vec<String>,
    roles: HashSet<String>,
    subprotocol: Option<String>,
    state: Option<String>,
}

impl Accepted {
    /// What the token grants before any handler has a say.
    fn from_claims(claims: &Claims) -> Accepted {
        Accepted {
            user_id: claims.get("sub").and_then(|v| v.first()).cloned(),
            groups: claims.get("webpubsub.group").cloned().unwrap_or_default(),
            roles: claims
                .get("role")
                .cloned()
                .unwrap_or_default()
                .into_iter()
                .collect(),
            subprotocol: None,
            state: None,
        }
    }
}

async fn endpoint(
    s: Arc<Shared>,
    hub: String,
    q: Vec<(String, String)>,
    headers: HeaderMap,
    ws: Result<WebSocketUpgrade, WsRejection>,
) -> Result<Response, HandshakeError> {
    // Read up to 4× the limit and refuse with 1009 ourselves: refusing inside tungstenite would
    // leave the rest of the frame unread, and closing then resets the TCP connection before the
    // client sees the close frame.
    let ws = ws?
        .max_message_size(MAX_FRAME * 4)
        .max_frame_size(MAX_FRAME * 4);
    if !valid_hub(&hub) {
        return Err(HandshakeError::InvalidHub(hub));
    }
    let offered: Vec<String> = headers
        .get_all("sec-websocket-protocol")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(',').map(|p| p.trim().to_string()))
        .filter(|p| !p.is_empty())
        .collect();

    // Recovery ignores access_token (the client keeps its original URL, whose token may have
    // expired by now) and checks only the reconnection token.
    if let Some(id) = first(&q, "awps_connection_id") {
        let token = first(&q, "awps_reconnection_token").unwrap_or_default();
        return Ok(recover(s, &hub, id, token, &offered, ws));
    }

    let bearer = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    let token = first(&q, "access_token")
        .or(bearer)
        .ok_or(HandshakeError::MissingToken)?;
    let claims = verify_client_token(&s.key, token, &hub)?;
    let connection_id = uuid::Uuid::new_v4().simple().to_string();
    let mut accepted = Accepted::from_claims(&claims);
    if s.upstream.handles_system(&hub, "connect") {
        let req =
            ConnectRequest {
                claims,
                query: multimap(q.iter().filter(|(k, _)| k != "access_token").cloned()),
                headers: multimap(headers.iter().filter_map(|(k, v)| {
                    Some((k.as_str().to_string(), v.to_str().ok()?.to_string()))
                })),
                subprotocols: offered.clone(),
                ..Default::default()
            };
        call_connect(&s, &hub, &connection_id, req, &offered, &mut accepted).await?;
    }
    // Without a handler's choice, the first JSON protocol offered (as Microsoft's emulator).
    let subprotocol = accepted.subprotocol.clone().or_else(|| {
        offered
            .iter()
            .find(|p| *p == JSON_V1 || *p == JSON_RELIABLE_V1)
            .cloned()
    });
    let simple_mode = SimpleMode::from_query(&q);
    let conn = Arc::new(Conn::new(
        connection_id,
        hub,
        accepted.user_id,
        subprotocol.clone(),
        accepted.roles,
        accepted.state,
        s.reliable_limit,
    ));
    Ok(start(
        s,
        conn,
        accepted.groups,
        subprotocol,
        simple_mode,
        ws,
    ))
}

/// Answers `101` and runs the new connection's session.
fn start(
    s: Arc<Shared>,
    conn: Arc<Conn>,
    groups: Vec<String>,
    subprotocol: Option<String>,
    simple_mode: SimpleMode,
    ws: WebSocketUpgrade,
) -> Response {
    let ws = match subprotocol {
        Some(p) => ws.protocols([p]),
        None => ws,
    };
    // Visible (REST, groups) before the `101` goes out, as in the service: a client that sends
    // nothing but waits for `open` and then asks the server to message it must be reached.
    s.registry.with(&conn.hub, |h| {
        h.conns.insert(conn.id.clone(), conn.clone());
        for g in &groups {
            h.join(g, &conn.id);
        }
    });
    let attached = session::attach(&s, &conn);
    let (s2, conn2) = (s.clone(), conn.clone());
    ws.on_failed_upgrade(move |e| {
        tracing::debug!(target: "hubhook::emulator", conn = %conn2.id, "upgrade failed: {e}");
        tokio::spawn(async move { s2.finish(&conn2, "the WebSocket upgrade failed").await });
    })
    .on_upgrade(move |socket| async move {
        session::run(s, conn, socket, simple_mode, session::Start::New, attached).await;
    })
}

fn multimap(pairs: impl Iterator<Item = (String, String)>) -> BTreeMap<String, Vec<String>> {
    let mut m: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (k, v) in pairs {
        m.entry(k).or_default().push(v);
    }
    m
}

/// The blocking `connect` event. Err is the answer for the client: the handler's 4xx, or 500 for
/// a 5xx, a timeout, an unreachable handler or an invalid answer.
async fn call_connect(
    s: &Shared,
    hub: &str,
    connection_id: &str,
    req: ConnectRequest,
    offered: &[String],
    accepted: &mut Accepted,
) -> Result<(), HandshakeError> {
    let ctx = s.context(
        hub,
        connection_id,
        accepted.user_id.as_deref(),
        "connect",
        None,
    );
    let reply = s.upstream.call(&ctx, &Event::Connect(req), None, 1).await?;
    if !reply.status.is_success() {
        let status = if reply.status.is_client_error() {
            reply.status
        } else {
            StatusCode::INTERNAL_SERVER_ERROR
        };
        let body = String::from_utf8_lossy(&reply.body);
        let reason = if body.trim().is_empty() {
            format!("connect rejected by the event handler ({})", reply.status)
        } else {
            body.trim().to_string()
        };
        return Err(HandshakeError::Refused { status, reason });
    }
    accepted.state = reply.state.clone().filter(|s| !s.is_empty());
    if reply.body.iter().all(u8::is_ascii_whitespace) {
        return Ok(());
    }
    let body: Value = serde_json::from_slice(&reply.body).map_err(|_| HandshakeError::NotJson)?;
    if let Some(u) = body.get("userId").and_then(Value::as_str) {
        accepted.user_id = Some(u.to_string());
    }
    let strings = |k: &str| -> Vec<String> {
        body.get(k)
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(|v| v.as_str().map(String::from))
                    .collect()
            })
            .unwrap_or_default()
    };
    accepted.groups.extend(strings("groups"));
    accepted.roles.extend(strings("roles"));
    let chosen = body
        .get("subprotocol")
        .or_else(|| body.get("subProtocol"))
        .and_then(Value::as_str)
        .filter(|p| !p.is_empty());
    if let Some(p) = chosen {
        if !offered.iter().any(|o| o == p) {
            return Err(HandshakeError::NotOffered(p.to_string()));
        }
        accepted.subprotocol = Some(p.to_string());
    }
    Ok(())
}

/// Resumes a reliable connection kept since its socket dropped, or answers `101`, a
/// `disconnected` message and close 1008 (which stops the client's recovery loop at once; an
/// HTTP error would make it retry for 30 s).
fn recover(
    s: Arc<Shared>,
    hub: &str,
    id: &str,
    token: &str,
    offered: &[String],
    ws: WebSocketUpgrade,
) -> Response {
    let conn = s.registry.with(hub, |h| h.get(id)).filter(|c| {
        c.proto == super::conn::Proto::Reliable
            && !c.is_closed()
            && !token.is_empty()
            && c.reconnection_token == token
    });
    match conn {
        Some(conn) => {
            let ws = match conn.subprotocol.clone() {
                Some(p) => ws.protocols([p]),
                None => ws,
            };
            tracing::info!(target: "hubhook::emulator", conn = %conn.id, "reliable connection recovered");
            ws.on_upgrade(move |socket| async move {
                // A failed recovery upgrade leaves the old socket's state as it was.
                let attached = session::attach(&s, &conn);
                session::run(
                    s,
                    conn,
                    socket,
                    SimpleMode::SendEvent,
                    session::Start::Recovered,
                    attached,
                )
                .await;
            })
        }
        None => {
            let ws = match offered.first() {
                Some(p) => ws.protocols([p.clone()]),
                None => ws,
            };
            tracing::info!(target: "hubhook::emulator", conn = %id, "recovery refused");
            ws.on_upgrade(|mut socket| async move {
                let msg =
                    json!({"type": "system", "event": "disconnected", "message": NOT_RECOVERABLE});
                let _ = socket.send(Message::Text(msg.to_string().into())).await;
                let _ = socket
                    .send(Message::Close(Some(CloseFrame {
                        code: 1008,
                        reason: NOT_RECOVERABLE.into(),
                    })))
                    .await;
                // Let the client's close reply arrive (bounded), then drop the socket.
                let _ = tokio::time::timeout(std::time::Duration::from_secs(2), async {
                    use futures_util::StreamExt;
                    while let Some(Ok(_)) = socket.next().await {}
                })
                .await;
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::valid_hub;

    #[test]
    fn hub_names_follow_the_service_pattern() {
        assert!(valid_hub("chat"));
        assert!(valid_hub("Chat_1.x"));
        assert!(!valid_hub("1chat"));
        assert!(!valid_hub(""));
        assert!(!valid_hub("a/b"));
        assert!(!valid_hub(&"a".repeat(129)));
    }
}
