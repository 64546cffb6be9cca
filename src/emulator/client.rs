//! The client endpoint: token check, the blocking `connect` webhook before the `101`, then one
//! task per socket speaking the JSON (plain or reliable) protocol or raw frames.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use axum::extract::ws::rejection::WebSocketUpgradeRejection as WsRejection;
use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::sync::mpsc;

use super::hub::{Conn, Frame, Origin, Proto, JSON_RELIABLE_V1, JSON_V1};
use super::upstream::UpstreamReply;
use super::Shared;
use crate::protocol::{
    ConnectRequest, ConnectionState, DisconnectedRequest, Event, EventContext, EventData, UserEvent,
};

/// Frames over this size are refused (the service's limit is 1 MB).
pub const MAX_FRAME: usize = 1024 * 1024;

fn reject(status: StatusCode, reason: &str) -> Response {
    (status, format!("{reason}\n")).into_response()
}

pub async fn hub_path(
    State(s): State<Arc<Shared>>,
    Path(hub): Path<String>,
    Query(q): Query<Vec<(String, String)>>,
    headers: HeaderMap,
    ws: Result<WebSocketUpgrade, WsRejection>,
) -> Response {
    endpoint(s, hub, q, headers, ws).await
}

pub async fn hub_query(
    State(s): State<Arc<Shared>>,
    Query(q): Query<Vec<(String, String)>>,
    headers: HeaderMap,
    ws: Result<WebSocketUpgrade, WsRejection>,
) -> Response {
    let Some(hub) = q.iter().find(|(k, _)| k == "hub").map(|(_, v)| v.clone()) else {
        return reject(StatusCode::BAD_REQUEST, "missing hub");
    };
    endpoint(s, hub, q, headers, ws).await
}

fn first<'a>(q: &'a [(String, String)], k: &str) -> Option<&'a str> {
    q.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str())
}

async fn endpoint(
    s: Arc<Shared>,
    hub: String,
    q: Vec<(String, String)>,
    headers: HeaderMap,
    ws: Result<WebSocketUpgrade, WsRejection>,
) -> Response {
    let Ok(ws) = ws else {
        return reject(StatusCode::BAD_REQUEST, "expected a WebSocket upgrade");
    };
    let ws = ws.max_message_size(MAX_FRAME).max_frame_size(MAX_FRAME);
    let offered: Vec<String> = headers
        .get_all("sec-websocket-protocol")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(',').map(|p| p.trim().to_string()))
        .filter(|p| !p.is_empty())
        .collect();

    if let (Some(id), Some(token)) = (
        first(&q, "awps_connection_id"),
        first(&q, "awps_reconnection_token"),
    ) {
        return recover(s, hub, id.to_string(), token.to_string(), offered, ws);
    }

    let bearer = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    let Some(token) = first(&q, "access_token").or(bearer) else {
        return reject(StatusCode::UNAUTHORIZED, "missing access_token");
    };
    let claims = match s.verify_client_token(token, &hub) {
        Ok(c) => c,
        Err(reason) => return reject(StatusCode::UNAUTHORIZED, &reason),
    };
    let mut user_id = claims.get("sub").and_then(|v| v.first()).cloned();
    let mut roles: HashSet<String> = claims
        .get("role")
        .cloned()
        .unwrap_or_default()
        .into_iter()
        .collect();
    let mut groups: Vec<String> = claims.get("webpubsub.group").cloned().unwrap_or_default();

    let connection_id = uuid::Uuid::new_v4().simple().to_string();
    let mut state = ConnectionState::default();
    let mut chosen: Option<String> = None;

    if s.upstream.handles_system("connect") {
        let mut query: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for (k, v) in q.iter().filter(|(k, _)| k != "access_token") {
            query.entry(k.clone()).or_default().push(v.clone());
        }
        let mut hs: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for (k, v) in &headers {
            if let Ok(v) = v.to_str() {
                hs.entry(k.as_str().to_string())
                    .or_default()
                    .push(v.to_string());
            }
        }
        let req = ConnectRequest {
            claims: claims.clone(),
            query,
            headers: hs,
            subprotocols: offered.clone(),
            ..Default::default()
        };
        let ctx = s.context(
            &hub,
            &connection_id,
            user_id.as_deref(),
            "connect",
            None,
            &ConnectionState::default(),
        );
        match s.upstream.call(&ctx, &Event::Connect(req), 1).await {
            Ok(reply) if reply.status.is_success() => {
                if let Some(st) = reply.state.clone() {
                    state = st;
                }
                if !reply.body.is_empty() {
                    let Ok(body) = serde_json::from_slice::<Value>(&reply.body) else {
                        return reject(
                            StatusCode::INTERNAL_SERVER_ERROR,
                            "connect handler returned invalid JSON",
                        );
                    };
                    if let Some(u) = body.get("userId").and_then(Value::as_str) {
                        user_id = Some(u.to_string());
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
                    groups.extend(strings("groups"));
                    roles.extend(strings("roles"));
                    let sp = body
                        .get("subprotocol")
                        .or_else(|| body.get("subProtocol"))
                        .and_then(Value::as_str);
                    if let Some(sp) = sp.filter(|p| !p.is_empty()) {
                        if !offered.iter().any(|o| o == sp) {
                            return reject(
                                StatusCode::INTERNAL_SERVER_ERROR,
                                "connect handler chose a subprotocol the client did not offer",
                            );
                        }
                        chosen = Some(sp.to_string());
                    }
                }
            }
            Ok(reply) => {
                let status = if reply.status.is_client_error() {
                    reply.status
                } else {
                    StatusCode::INTERNAL_SERVER_ERROR
                };
                let body = String::from_utf8_lossy(&reply.body).into_owned();
                return reject(
                    status,
                    if body.is_empty() {
                        "connect rejected by the event handler"
                    } else {
                        body.trim()
                    },
                );
            }
            Err(e) => return reject(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
        }
    }
    if chosen.is_none()
        && offered.len() == 1
        && (offered[0] == JSON_V1 || offered[0] == JSON_RELIABLE_V1)
    {
        chosen = offered.first().cloned();
    }
    let proto = match chosen.as_deref() {
        Some(JSON_RELIABLE_V1) => Proto::Reliable,
        Some(JSON_V1) => Proto::Json,
        _ => Proto::Simple,
    };
    let simple_mode = SimpleMode::from_query(&q);
    let conn = Arc::new(Conn::new(
        connection_id.clone(),
        hub.clone(),
        user_id,
        proto,
        chosen.clone(),
        roles,
        state,
    ));
    s.registry.with(&hub, |h| {
        h.conns.insert(connection_id.clone(), conn.clone());
        for g in &groups {
            h.join(g, &connection_id);
        }
    });
    let ws = match &chosen {
        Some(p) => ws.protocols([p.clone()]),
        None => ws,
    };
    ws.on_upgrade(move |socket| async move {
        let generation = start_session(&s, &conn, socket, simple_mode);
        if conn.proto != Proto::Simple {
            let mut connected = json!({"type": "system", "event": "connected", "userId": conn.user_id, "connectionId": conn.id});
            if conn.proto == Proto::Reliable {
                connected["reconnectionToken"] = conn.reconnection_token.clone().into();
            }
            conn.send_control(connected);
        }
        let s2 = s.clone();
        let c2 = conn.clone();
        tokio::spawn(async move {
            if s2.upstream.handles_system("connected") {
                let ctx = s2.conn_context(&c2, "connected");
                let _ = s2.upstream.call(&ctx, &Event::Connected, 3).await;
            }
        });
        generation.await;
    })
}

fn recover(
    s: Arc<Shared>,
    hub: String,
    id: String,
    token: String,
    offered: Vec<String>,
    ws: WebSocketUpgrade,
) -> Response {
    let conn = s.registry.with(&hub, |h| h.conns.get(&id).cloned());
    let ok = conn.as_ref().filter(|c| {
        c.proto == Proto::Reliable
            && c.reconnection_token == token
            && c.hub.eq_ignore_ascii_case(&hub)
    });
    let proto = ok
        .and_then(|c| c.subprotocol.clone())
        .or_else(|| offered.first().cloned());
    let ws = match proto {
        Some(p) => ws.protocols([p]),
        None => ws,
    };
    match ok.cloned() {
        Some(conn) => ws.on_upgrade(move |socket| async move {
            let done = start_session(&s, &conn, socket, SimpleMode::SendEvent);
            conn.send_control(json!({"type": "system", "event": "connected", "userId": conn.user_id, "connectionId": conn.id, "reconnectionToken": conn.reconnection_token}));
            done.await;
        }),
        None => ws.on_upgrade(|mut socket| async move {
            let msg = json!({"type": "system", "event": "disconnected", "message": "The connection could not be recovered."});
            let _ = socket.send(Message::Text(msg.to_string().into())).await;
            let _ = socket.send(Message::Close(Some(CloseFrame { code: 1008, reason: "The connection could not be recovered.".into() }))).await;
        }),
    }
}

#[derive(Debug, Clone)]
enum SimpleMode {
    SendEvent,
    SendToGroup { group: String, no_echo: bool },
}

impl SimpleMode {
    fn from_query(q: &[(String, String)]) -> SimpleMode {
        match (first(q, "webpubsub_mode"), first(q, "group")) {
            (Some("sendToGroup"), Some(g)) => SimpleMode::SendToGroup {
                group: g.to_string(),
                no_echo: first(q, "noEcho") == Some("true"),
            },
            _ => SimpleMode::SendEvent,
        }
    }
}

/// Attaches the socket and returns the future that runs it to the end.
fn start_session(
    s: &Arc<Shared>,
    conn: &Arc<Conn>,
    socket: WebSocket,
    mode: SimpleMode,
) -> impl std::future::Future<Output = ()> + Send + 'static {
    let (tx, rx) = mpsc::unbounded_channel();
    let generation = conn.attach(tx.clone());
    let (s, conn) = (s.clone(), conn.clone());
    async move {
        let (mut sink, mut stream) = socket.split();
        let writer = tokio::spawn(async move {
            let mut rx = rx;
            while let Some(f) = rx.recv().await {
                let (msg, last) = match f {
                    Frame::Text(t) => (Message::Text(t.into()), false),
                    Frame::Binary(b) => (Message::Binary(b), false),
                    Frame::Close(code, reason) => (
                        Message::Close(Some(CloseFrame {
                            code,
                            reason: reason.into(),
                        })),
                        true,
                    ),
                };
                if sink.send(msg).await.is_err() || last {
                    break;
                }
            }
        });
        let mut final_close = conn.proto != Proto::Reliable;
        while let Some(msg) = stream.next().await {
            let msg = match msg {
                Ok(m) => m,
                Err(e) => {
                    // Oversize frames and protocol violations end up here.
                    tracing::info!(target: "hubhook::emulator", conn = %conn.id, error = %e, "client socket error");
                    let _ = tx.send(Frame::Close(1009, "frame too large or invalid".into()));
                    break;
                }
            };
            let keep_going = match msg {
                Message::Text(t) => {
                    on_frame(
                        &s,
                        &conn,
                        &tx,
                        Bytes::copy_from_slice(t.as_bytes()),
                        true,
                        &mode,
                    )
                    .await
                }
                Message::Binary(b) => on_frame(&s, &conn, &tx, b, false, &mode).await,
                Message::Close(frame) => {
                    // A client close with 1000 is final; anything else may be recovered (reliable).
                    if frame.as_ref().is_some_and(|f| f.code == 1000) {
                        final_close = true;
                    }
                    let _ = tx.send(Frame::Close(frame.map_or(1000, |f| f.code), String::new()));
                    false
                }
                Message::Ping(_) | Message::Pong(_) => true,
            };
            if !keep_going {
                break;
            }
        }
        drop(tx);
        let _ = tokio::time::timeout(std::time::Duration::from_secs(2), writer).await;
        if final_close || s.closing(&conn) {
            s.finish(&conn, "Connection closed by the client.").await;
        } else if conn.detach(generation) {
            let window = s.recovery_window;
            tokio::spawn(async move {
                tokio::time::sleep(window).await;
                if conn.is_detached_since(generation) {
                    s.finish(&conn, "The connection was not recovered in time.")
                        .await;
                }
            });
        }
    }
}

/// Handles one client frame; false ends the session.
async fn on_frame(
    s: &Arc<Shared>,
    conn: &Arc<Conn>,
    tx: &mpsc::UnboundedSender<Frame>,
    payload: Bytes,
    text: bool,
    mode: &SimpleMode,
) -> bool {
    if conn.proto == Proto::Simple {
        return on_simple_frame(s, conn, payload, text, mode).await;
    }
    let protocol_error = |reason: &str| {
        conn.send_control(json!({"type": "system", "event": "disconnected", "message": reason}));
        let _ = tx.send(Frame::Close(1008, reason.chars().take(100).collect()));
        false
    };
    if !text {
        return protocol_error("Invalid frame: the JSON protocols take text frames only.");
    }
    let Ok(frame) = serde_json::from_slice::<Value>(&payload) else {
        return protocol_error("Invalid frame: not a JSON object.");
    };
    let ack_id = frame.get("ackId").and_then(Value::as_u64);
    let ack = |ok: Result<(), (&str, String)>| {
        if let Some(id) = ack_id {
            let mut a = json!({"type": "ack", "ackId": id, "success": ok.is_ok()});
            if let Err((name, message)) = ok {
                a["error"] = json!({"name": name, "message": message});
            }
            conn.send_control(a);
        }
    };
    let kind = frame
        .get("type")
        .and_then(Value::as_str)
        .unwrap_or_default();
    if matches!(kind, "joinGroup" | "leaveGroup" | "sendToGroup" | "event") {
        if let Some(id) = ack_id {
            if !conn.first_ack(id) {
                ack(Err((
                    "Duplicate",
                    format!("Message with ackId: {id} has been processed"),
                )));
                return true;
            }
        }
    }
    let str_field = |k: &str| frame.get(k).and_then(Value::as_str).map(str::to_string);
    match kind {
        "ping" => conn.send_control(json!({"type": "pong"})),
        "sequenceAck" => match frame.get("sequenceId").and_then(Value::as_u64) {
            Some(id) => conn.sequence_ack(id),
            None => return protocol_error("Invalid frame: sequenceAck needs a sequenceId."),
        },
        "joinGroup" | "leaveGroup" => {
            let Some(group) = str_field("group").filter(|g| !g.trim().is_empty()) else {
                ack(Err(("BadRequest", "group is required".into())));
                return true;
            };
            if !conn.has_role("joinLeaveGroup", &group) {
                ack(Err((
                    "Forbidden",
                    format!("No permission to join or leave group {group}"),
                )));
                return true;
            }
            s.registry.with(&conn.hub, |h| {
                if kind == "joinGroup" {
                    h.join(&group, &conn.id)
                } else {
                    h.leave(&group, &conn.id)
                }
            });
            ack(Ok(()));
        }
        "sendToGroup" => {
            let Some(group) = str_field("group").filter(|g| !g.trim().is_empty()) else {
                ack(Err(("BadRequest", "group is required".into())));
                return true;
            };
            if !conn.has_role("sendToGroup", &group) {
                ack(Err((
                    "Forbidden",
                    format!("No permission to send to group {group}"),
                )));
                return true;
            }
            let data = match decode_data(&frame) {
                Ok(d) => d,
                Err(e) => {
                    ack(Err(("BadRequest", e)));
                    return true;
                }
            };
            let no_echo = frame
                .get("noEcho")
                .and_then(Value::as_bool)
                .unwrap_or(false);
            let exclude: Vec<String> = if no_echo {
                vec![conn.id.clone()]
            } else {
                vec![]
            };
            let origin = Origin::Group {
                group: group.clone(),
                from_user: conn.user_id.clone(),
            };
            s.send_to_group(&conn.hub, &group, &origin, &data, &exclude);
            ack(Ok(()));
        }
        "event" => {
            let Some(name) = str_field("event").filter(|e| !e.is_empty()) else {
                ack(Err(("BadRequest", "event is required".into())));
                return true;
            };
            let data = match decode_data(&frame) {
                Ok(d) => d,
                Err(e) => {
                    ack(Err(("BadRequest", e)));
                    return true;
                }
            };
            match s.user_event(conn, &name, data).await {
                Ok(reply) => {
                    if let Some(d) = reply {
                        if !conn.send_data(&Origin::Server, &d) {
                            return protocol_error("The reliable message buffer is full.");
                        }
                    }
                    ack(Ok(()));
                }
                Err(reason) => ack(Err(("InternalServerError", reason))),
            }
        }
        other => {
            tracing::info!(target: "hubhook::emulator", conn = %conn.id, "ignored frame of unknown type {other:?}");
            ack(Err((
                "BadRequest",
                format!("unknown message type {other:?}"),
            )));
        }
    }
    true
}

async fn on_simple_frame(
    s: &Arc<Shared>,
    conn: &Arc<Conn>,
    payload: Bytes,
    text: bool,
    mode: &SimpleMode,
) -> bool {
    let data = if text {
        EventData::Text(String::from_utf8_lossy(&payload).into_owned())
    } else {
        EventData::Binary(payload)
    };
    match mode {
        SimpleMode::SendToGroup { group, no_echo } => {
            if !conn.has_role("sendToGroup", group) {
                conn.send_frame(Frame::Close(
                    1008,
                    format!("no permission to send to group {group}"),
                ));
                return false;
            }
            let exclude = if *no_echo {
                vec![conn.id.clone()]
            } else {
                vec![]
            };
            s.send_to_group(
                &conn.hub,
                group,
                &Origin::Group {
                    group: group.clone(),
                    from_user: conn.user_id.clone(),
                },
                &data,
                &exclude,
            );
            true
        }
        SimpleMode::SendEvent => match s.user_event(conn, "message", data).await {
            Ok(reply) => {
                if let Some(d) = reply {
                    conn.send_data(&Origin::Server, &d);
                }
                true
            }
            Err(reason) => {
                conn.send_frame(Frame::Close(1011, reason.chars().take(100).collect()));
                false
            }
        },
    }
}

/// The `data` of a client frame by its `dataType` (default `json`); binary is base64.
fn decode_data(frame: &Value) -> Result<EventData, String> {
    let data = frame.get("data").cloned().unwrap_or(Value::Null);
    match frame
        .get("dataType")
        .and_then(Value::as_str)
        .unwrap_or("json")
    {
        "json" => Ok(EventData::Json(data)),
        "text" => data
            .as_str()
            .map(|s| EventData::Text(s.to_string()))
            .ok_or_else(|| "text data must be a string".to_string()),
        "binary" | "protobuf" => data
            .as_str()
            .and_then(|s| B64.decode(s).ok())
            .map(|b| EventData::Binary(b.into()))
            .ok_or_else(|| "binary data must be base64".to_string()),
        other => Err(format!("unsupported dataType {other:?}")),
    }
}

impl Shared {
    /// Sends a user event upstream and turns the reply into the data to relay (None: nothing).
    pub(crate) async fn user_event(
        &self,
        conn: &Arc<Conn>,
        name: &str,
        data: EventData,
    ) -> Result<Option<EventData>, String> {
        let event = Event::User(UserEvent {
            name: name.to_string(),
            data,
        });
        if !self.upstream.handles(&event, name) {
            return Err(format!("no event handler for user event {name:?}"));
        }
        let ctx = self.conn_context(conn, name);
        let reply = self
            .upstream
            .call(&ctx, &event, 1)
            .await
            .map_err(|e| e.to_string())?;
        if !reply.status.is_success() {
            return Err(format!("event handler answered {}", reply.status));
        }
        if let Some(st) = reply.state.clone() {
            *conn.state.lock().unwrap() = st;
        }
        reply_data(&reply)
    }

    pub(crate) fn conn_context(&self, conn: &Conn, event: &str) -> EventContext {
        let state = conn.state.lock().unwrap().clone();
        self.context(
            &conn.hub,
            &conn.id,
            conn.user_id.as_deref(),
            event,
            conn.subprotocol.as_deref(),
            &state,
        )
    }

    pub(crate) fn context(
        &self,
        hub: &str,
        id: &str,
        user: Option<&str>,
        event: &str,
        subprotocol: Option<&str>,
        state: &ConnectionState,
    ) -> EventContext {
        EventContext {
            hub: hub.to_string(),
            connection_id: id.to_string(),
            user_id: user.map(String::from),
            event_name: event.to_string(),
            ce_id: self.registry.next_ce_id(),
            ce_time: None,
            subprotocol: subprotocol.map(String::from),
            state: state.clone(),
            origin: Some(self.upstream.origin().to_string()),
            mqtt: None,
        }
    }

    /// Removes a connection for good and tells the event handler.
    pub(crate) async fn finish(&self, conn: &Arc<Conn>, reason: &str) {
        let removed = self.registry.with(&conn.hub, |h| {
            let was = h.conns.remove(&conn.id).is_some();
            h.leave_all(&conn.id);
            was
        });
        if removed && self.upstream.handles_system("disconnected") {
            let ctx = self.conn_context(conn, "disconnected");
            let ev = Event::Disconnected(DisconnectedRequest {
                reason: Some(reason.to_string()),
                mqtt: None,
            });
            let _ = self.upstream.call(&ctx, &ev, 3).await;
        }
    }

    /// Server-initiated close: `disconnected` frame, then close 1008 (no recovery).
    pub(crate) fn close(&self, conn: &Arc<Conn>, reason: &str) {
        self.closing.lock().unwrap().insert(conn.id.clone());
        if conn.proto != Proto::Simple {
            conn.send_control(
                json!({"type": "system", "event": "disconnected", "message": reason}),
            );
        }
        conn.send_frame(Frame::Close(1008, reason.chars().take(100).collect()));
    }

    fn closing(&self, conn: &Conn) -> bool {
        self.closing.lock().unwrap().remove(&conn.id)
    }

    pub(crate) fn send_to_group(
        &self,
        hub: &str,
        group: &str,
        origin: &Origin,
        data: &EventData,
        exclude: &[String],
    ) {
        let members = self.registry.with(hub, |h| h.members(group));
        self.deliver(members, origin, data, exclude);
    }

    pub(crate) fn deliver(
        &self,
        conns: Vec<Arc<Conn>>,
        origin: &Origin,
        data: &EventData,
        exclude: &[String],
    ) {
        for c in conns.into_iter().filter(|c| !exclude.contains(&c.id)) {
            if !c.send_data(origin, data) {
                self.close(&c, "The reliable message buffer is full.");
            }
        }
    }
}

fn reply_data(reply: &UpstreamReply) -> Result<Option<EventData>, String> {
    if reply.status == StatusCode::NO_CONTENT || reply.body.is_empty() {
        return Ok(None);
    }
    let media = reply
        .content_type
        .as_deref()
        .unwrap_or("application/octet-stream")
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    match media.as_str() {
        "text/plain" => Ok(Some(EventData::Text(
            String::from_utf8_lossy(&reply.body).into_owned(),
        ))),
        "application/json" => serde_json::from_slice(&reply.body)
            .map(|v| Some(EventData::Json(v)))
            .map_err(|e| format!("event handler returned invalid JSON: {e}")),
        "application/octet-stream" => Ok(Some(EventData::Binary(reply.body.clone()))),
        other => Err(format!(
            "event handler returned unsupported content type {other:?}"
        )),
    }
}

pub(crate) type Claims = BTreeMap<String, Vec<String>>;

/// Token claims as the connect event carries them: every value a list of strings.
pub(crate) fn claims_of(v: &HashMap<String, Value>) -> Claims {
    v.iter()
        .map(|(k, v)| {
            let vals = match v {
                Value::Array(a) => a
                    .iter()
                    .map(|x| {
                        x.as_str()
                            .map(String::from)
                            .unwrap_or_else(|| x.to_string())
                    })
                    .collect(),
                Value::String(s) => vec![s.clone()],
                other => vec![other.to_string()],
            };
            (k.clone(), vals)
        })
        .collect()
}
