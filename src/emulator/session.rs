//! One client socket from `101` to its end: the `connected` message and webhook, the frame loop
//! (JSON protocols or raw frames), and what the end means — a final close (`disconnected`
//! webhook) or, for the reliable protocol, a drop that keeps the connection for recovery.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message, WebSocket};
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use bytes::Bytes;
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::sync::{mpsc, oneshot};

use super::conn::{json_data, Conn, Frame, Origin, Proto};
use super::Shared;
use crate::protocol::{Event, EventData};

/// Frames (and messages) over this size are refused with close 1009: the service's limit is 1 MB.
pub const MAX_FRAME: usize = 1024 * 1024;

/// How long a closing socket may take to answer our close frame or drain its writer.
const CLOSE_GRACE: Duration = Duration::from_secs(2);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Start {
    New,
    Recovered,
}

/// How a simple (no JSON subprotocol) client's frames are used.
#[derive(Debug, Clone)]
pub enum SimpleMode {
    /// Every frame is a `message` user event; the handler's reply comes back as a frame.
    SendEvent,
    /// `?webpubsub_mode=sendToGroup&group=g`: every frame is published to `g`.
    SendToGroup { group: String, no_echo: bool },
}

impl SimpleMode {
    pub fn from_query(q: &[(String, String)]) -> SimpleMode {
        let get = |k: &str| q.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
        match (get("webpubsub_mode"), get("group")) {
            (Some(m), Some(g)) if m.eq_ignore_ascii_case("sendToGroup") => {
                SimpleMode::SendToGroup {
                    group: g.to_string(),
                    no_echo: get("noEcho").is_some_and(|v| v.eq_ignore_ascii_case("true")),
                }
            }
            _ => SimpleMode::SendEvent,
        }
    }
}

/// Ends the session from inside the frame loop: close code and reason.
struct Stop {
    code: u16,
    reason: String,
}

fn stop(code: u16, reason: impl Into<String>) -> Stop {
    Stop {
        code,
        reason: reason.into(),
    }
}

enum End {
    /// The connection is over; the reason goes to the `disconnected` webhook.
    Final(String),
    /// The socket dropped; a reliable connection waits for its client to recover it.
    Dropped,
    /// A recovered socket replaced this one.
    Superseded,
}

pub async fn run(
    s: Arc<Shared>,
    conn: Arc<Conn>,
    socket: WebSocket,
    mode: SimpleMode,
    start: Start,
) {
    let (tx, rx) = mpsc::unbounded_channel();
    // `connected` goes first, before any replay and before any client frame is read.
    if conn.proto != Proto::Simple {
        let mut connected = json!({"type": "system", "event": "connected", "userId": conn.user_id, "connectionId": conn.id});
        if conn.proto == Proto::Reliable {
            connected["reconnectionToken"] = conn.reconnection_token.clone().into();
        }
        let _ = tx.send(Frame::Text(connected.to_string()));
    }
    let generation = conn.attach(tx.clone());
    if start == Start::New {
        let (s2, c2) = (s.clone(), conn.clone());
        conn.set_connected_hook(tokio::spawn(async move {
            if s2.upstream.handles_system(&c2.hub, "connected") {
                let ctx = s2.conn_context(&c2, "connected");
                let _ = s2
                    .upstream
                    .call(&ctx, &Event::Connected, c2.state().as_deref(), 3)
                    .await;
            }
        }));
    }

    let (sink, mut stream) = socket.split();
    let (closed_tx, mut closed_by_server) = oneshot::channel();
    let mut writer = tokio::spawn(write_loop(sink, rx, closed_tx));
    let end = read_loop(&s, &conn, &tx, &mut stream, &mut closed_by_server, &mode).await;
    drop(tx);
    // Finish the close handshake either way: reading once more sends tungstenite's reply to a
    // client close, or receives the client's reply to ours (bounded).
    let drain = async move {
        let _ = tokio::time::timeout(CLOSE_GRACE, async {
            while let Some(Ok(_)) = stream.next().await {}
        })
        .await;
    };

    let end = match end {
        End::Dropped | End::Superseded if conn.is_closed() => {
            End::Final(conn.closed_reason().unwrap_or_default())
        }
        other => other,
    };
    match end {
        End::Final(reason) => {
            conn.close_with(&reason);
            conn.detach(generation);
            finish_writer(&mut writer).await;
            drain.await;
            s.finish(&conn, &reason).await;
        }
        End::Dropped => {
            let kept = conn.detach(generation);
            finish_writer(&mut writer).await;
            drain.await;
            if kept {
                tracing::info!(target: "hubhook::emulator", conn = %conn.id, "socket dropped; kept {:?} for recovery", s.recovery_window);
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
        End::Superseded => {
            finish_writer(&mut writer).await;
            drain.await;
        }
    }
}

async fn finish_writer(writer: &mut tokio::task::JoinHandle<()>) {
    if tokio::time::timeout(CLOSE_GRACE, &mut *writer)
        .await
        .is_err()
    {
        writer.abort();
    }
}

async fn write_loop(
    mut sink: SplitSink<WebSocket, Message>,
    mut rx: mpsc::UnboundedReceiver<Frame>,
    closed: oneshot::Sender<()>,
) {
    while let Some(f) = rx.recv().await {
        let msg = match f {
            Frame::Text(t) => Message::Text(t.into()),
            Frame::Binary(b) => Message::Binary(b),
            Frame::Close(code, reason) => {
                let reason: String = reason.chars().take(100).collect();
                let _ = sink
                    .send(Message::Close(Some(CloseFrame {
                        code,
                        reason: reason.into(),
                    })))
                    .await;
                let _ = closed.send(());
                return;
            }
        };
        if sink.send(msg).await.is_err() {
            return;
        }
    }
}

async fn read_loop(
    s: &Arc<Shared>,
    conn: &Arc<Conn>,
    tx: &mpsc::UnboundedSender<Frame>,
    stream: &mut SplitStream<WebSocket>,
    closed_by_server: &mut oneshot::Receiver<()>,
    mode: &SimpleMode,
) -> End {
    let reliable = conn.proto == Proto::Reliable;
    loop {
        let msg = tokio::select! {
            m = stream.next() => m,
            _ = &mut *closed_by_server => {
                // We sent a close frame (server close, superseded): let the client answer it.
                let _ = tokio::time::timeout(CLOSE_GRACE, async {
                    while let Some(Ok(m)) = stream.next().await {
                        if matches!(m, Message::Close(_)) { break; }
                    }
                }).await;
                return if conn.is_closed() {
                    End::Final(conn.closed_reason().unwrap_or_default())
                } else {
                    End::Superseded
                };
            }
        };
        let msg = match msg {
            None => {
                return if reliable {
                    End::Dropped
                } else {
                    End::Final("The connection was dropped.".into())
                }
            }
            Some(Err(e)) => {
                let text = e.to_string();
                let dropped = ["IO error", "without closing handshake", "closed connection"]
                    .iter()
                    .any(|p| text.contains(p));
                if dropped {
                    return if reliable {
                        End::Dropped
                    } else {
                        End::Final("The connection was dropped.".into())
                    };
                }
                let st = if text.contains("Space limit") || text.contains("too long") {
                    stop(
                        1009,
                        format!("Frame too large (the limit is {MAX_FRAME} bytes)."),
                    )
                } else {
                    stop(1002, format!("Invalid WebSocket frame: {text}"))
                };
                return protocol_stop(conn, tx, st);
            }
            Some(Ok(m)) => m,
        };
        let size = match &msg {
            Message::Text(t) => t.len(),
            Message::Binary(b) => b.len(),
            _ => 0,
        };
        if size > MAX_FRAME {
            let st = stop(
                1009,
                format!("Frame too large ({size} bytes; the limit is {MAX_FRAME})."),
            );
            return protocol_stop(conn, tx, st);
        }
        let result = match msg {
            Message::Text(t) => {
                on_frame(s, conn, Bytes::copy_from_slice(t.as_bytes()), true, mode).await
            }
            Message::Binary(b) => on_frame(s, conn, b, false, mode).await,
            Message::Close(frame) => {
                // A client close with 1000 is final; any other may be recovered (reliable). The
                // close reply goes out when the stream is read once more (`drain`).
                let code = frame.as_ref().map(|f| f.code);
                return if !reliable || code == Some(1000) || s.close_frame_is_final {
                    End::Final("Connection closed by the client.".into())
                } else {
                    End::Dropped
                };
            }
            Message::Ping(_) | Message::Pong(_) => Ok(()),
        };
        if let Err(st) = result {
            return protocol_stop(conn, tx, st);
        }
    }
}

/// Tells a JSON client why (`disconnected`), then closes with the code; the connection is over.
fn protocol_stop(conn: &Conn, tx: &mpsc::UnboundedSender<Frame>, st: Stop) -> End {
    tracing::info!(target: "hubhook::emulator", conn = %conn.id, code = st.code, "closing client: {}", st.reason);
    if conn.proto != Proto::Simple {
        let msg = json!({"type": "system", "event": "disconnected", "message": st.reason});
        let _ = tx.send(Frame::Text(msg.to_string()));
    }
    let _ = tx.send(Frame::Close(st.code, st.reason.clone()));
    End::Final(st.reason)
}

async fn on_frame(
    s: &Arc<Shared>,
    conn: &Arc<Conn>,
    payload: Bytes,
    text: bool,
    mode: &SimpleMode,
) -> Result<(), Stop> {
    if conn.proto == Proto::Simple {
        return on_simple_frame(s, conn, payload, text, mode).await;
    }
    if !text {
        return Err(stop(1003, "The JSON subprotocols take text frames only."));
    }
    let frame: Value = serde_json::from_slice(&payload)
        .ok()
        .filter(Value::is_object)
        .ok_or_else(|| stop(1002, "Invalid frame: not a JSON object."))?;
    let kind = frame
        .get("type")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string();
    let ack_id = match frame.get("ackId") {
        None | Some(Value::Null) => None,
        Some(v) => Some(
            v.as_u64()
                .ok_or_else(|| stop(1002, "Invalid frame: ackId must be an unsigned integer."))?,
        ),
    };
    match kind.as_str() {
        "ping" => {
            conn.send_control(json!({"type": "pong"}));
            Ok(())
        }
        "sequenceAck" => {
            let id = frame
                .get("sequenceId")
                .and_then(Value::as_u64)
                .ok_or_else(|| stop(1002, "Invalid frame: sequenceAck needs a sequenceId."))?;
            conn.sequence_ack(id);
            Ok(())
        }
        "joinGroup" | "leaveGroup" | "sendToGroup" | "event" => {
            if let Some(id) = ack_id {
                if !conn.begin_ack(id) {
                    send_ack(
                        conn,
                        id,
                        Err(AckError::new(
                            "Duplicate",
                            format!("Message with ackId: {id} has been processed."),
                        )),
                    );
                    return Ok(());
                }
            }
            let outcome = match kind.as_str() {
                "event" => on_event(s, conn, &frame).await,
                "sendToGroup" => on_send_to_group(s, conn, &frame),
                _ => on_join_leave(s, conn, &frame, kind == "joinGroup"),
            };
            let outcome = match outcome {
                Ok(r) => r,
                Err(st) => return Err(st),
            };
            if let Some(id) = ack_id {
                conn.end_ack(id, outcome.is_ok());
                send_ack(conn, id, outcome);
            } else if let Err(e) = outcome {
                tracing::info!(target: "hubhook::emulator", conn = %conn.id, "{kind} failed (no ackId to report it): {}", e.message);
            }
            Ok(())
        }
        "invoke" => on_invoke(s, conn, &frame).await,
        // The client sends it after a failed or abandoned invoke; nothing to cancel here.
        "cancelInvocation" => Ok(()),
        "" => Err(stop(1002, "Invalid frame: missing \"type\".")),
        other => Err(stop(
            1002,
            format!("Invalid frame: unknown type {other:?}."),
        )),
    }
}

struct AckError {
    name: &'static str,
    message: String,
}

impl AckError {
    fn new(name: &'static str, message: impl Into<String>) -> AckError {
        AckError {
            name,
            message: message.into(),
        }
    }
}

type Outcome = Result<(), AckError>;

fn send_ack(conn: &Conn, id: u64, outcome: Outcome) {
    let mut a = json!({"type": "ack", "ackId": id, "success": outcome.is_ok()});
    if let Err(e) = outcome {
        a["error"] = json!({"name": e.name, "message": e.message});
    }
    conn.send_control(a);
}

fn group_of(frame: &Value) -> Result<String, AckError> {
    frame
        .get("group")
        .and_then(Value::as_str)
        .filter(|g| !g.trim().is_empty() && g.len() <= 1024)
        .map(String::from)
        .ok_or_else(|| AckError::new("BadRequest", "\"group\" must be a non-blank string."))
}

/// The frame's group, if the connection holds `role` for it (`what` names the action in the error).
fn permitted_group(conn: &Conn, frame: &Value, role: &str, what: &str) -> Result<String, AckError> {
    let group = group_of(frame)?;
    if !conn.has_role(role, &group) {
        return Err(AckError::new(
            "Forbidden",
            format!("The connection has no permission to {what} group {group}."),
        ));
    }
    Ok(group)
}

fn on_join_leave(s: &Shared, conn: &Conn, frame: &Value, join: bool) -> Result<Outcome, Stop> {
    let group = match permitted_group(conn, frame, "joinLeaveGroup", "join or leave") {
        Ok(g) => g,
        Err(e) => return Ok(Err(e)),
    };
    s.registry.with(&conn.hub, |h| {
        if join {
            h.join(&group, &conn.id)
        } else {
            h.leave(&group, &conn.id)
        }
    });
    Ok(Ok(()))
}

fn on_send_to_group(s: &Arc<Shared>, conn: &Conn, frame: &Value) -> Result<Outcome, Stop> {
    let group = match permitted_group(conn, frame, "sendToGroup", "send to") {
        Ok(g) => g,
        Err(e) => return Ok(Err(e)),
    };
    let data = match decode_data(frame) {
        Ok(d) => d,
        Err(e) => return Ok(Err(AckError::new("BadRequest", e))),
    };
    let no_echo = frame
        .get("noEcho")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    let exclude = if no_echo {
        vec![conn.id.clone()]
    } else {
        vec![]
    };
    let origin = Origin::Group {
        group: group.clone(),
        from_user: conn.user_id.clone(),
    };
    s.send_to_group(&conn.hub, &group, &origin, &data, &exclude);
    Ok(Ok(()))
}

/// `event`: the user-event webhook; its reply is relayed as a server message before the ack. A
/// failed handler gives an `InternalServerError` ack and the connection stays.
async fn on_event(s: &Arc<Shared>, conn: &Arc<Conn>, frame: &Value) -> Result<Outcome, Stop> {
    let Some(name) = frame
        .get("event")
        .and_then(Value::as_str)
        .filter(|e| !e.is_empty())
    else {
        return Ok(Err(AckError::new("BadRequest", "\"event\" is required.")));
    };
    let data = match decode_data(frame) {
        Ok(d) => d,
        Err(e) => return Ok(Err(AckError::new("BadRequest", e))),
    };
    match s.user_event(conn, name, data).await {
        Ok(Some(reply)) => {
            if conn.send_data(&Origin::Server, &reply).is_err() {
                return Err(stop(1008, super::BUFFER_FULL));
            }
            Ok(Ok(()))
        }
        Ok(None) => Ok(Ok(())),
        Err(reason) => Ok(Err(AckError::new("InternalServerError", reason))),
    }
}

/// `invoke` (client 1.0.4 `invokeEvent`): the same webhook, answered with `invokeResponse`.
async fn on_invoke(s: &Arc<Shared>, conn: &Arc<Conn>, frame: &Value) -> Result<(), Stop> {
    let Some(id) = frame.get("invocationId").filter(|v| !v.is_null()).cloned() else {
        return Err(stop(1002, "Invalid frame: invoke needs an invocationId."));
    };
    let respond = |r: Result<Option<EventData>, AckError>| {
        let mut m = json!({"type": "invokeResponse", "invocationId": id, "success": r.is_ok()});
        match r {
            Ok(Some(d)) => {
                let (t, v) = json_data(&d);
                m["dataType"] = t.into();
                m["data"] = v;
            }
            Ok(None) => {}
            Err(e) => m["error"] = json!({"name": e.name, "message": e.message}),
        }
        conn.send_control(m);
    };
    let target = frame
        .get("target")
        .and_then(Value::as_str)
        .unwrap_or("event");
    let name = frame
        .get("event")
        .and_then(Value::as_str)
        .unwrap_or_default();
    if target != "event" || name.is_empty() {
        respond(Err(AckError::new(
            "BadRequest",
            "invoke supports target \"event\" with an \"event\" name.",
        )));
        return Ok(());
    }
    match decode_data(frame) {
        Err(e) => respond(Err(AckError::new("BadRequest", e))),
        Ok(data) => respond(
            s.user_event(conn, name, data)
                .await
                .map_err(|e| AckError::new("InternalServerError", e)),
        ),
    }
    Ok(())
}

async fn on_simple_frame(
    s: &Arc<Shared>,
    conn: &Arc<Conn>,
    payload: Bytes,
    text: bool,
    mode: &SimpleMode,
) -> Result<(), Stop> {
    let data = if text {
        EventData::Text(String::from_utf8_lossy(&payload).into_owned())
    } else {
        EventData::Binary(payload)
    };
    match mode {
        SimpleMode::SendToGroup { group, no_echo } => {
            if !conn.has_role("sendToGroup", group) {
                return Err(stop(
                    1008,
                    format!("No permission to send to group {group}."),
                ));
            }
            let exclude = if *no_echo {
                vec![conn.id.clone()]
            } else {
                vec![]
            };
            let origin = Origin::Group {
                group: group.clone(),
                from_user: conn.user_id.clone(),
            };
            s.send_to_group(&conn.hub, group, &origin, &data, &exclude);
            Ok(())
        }
        // A failed (or missing) handler closes a simple client: it has no acks to say so.
        SimpleMode::SendEvent => match s.user_event(conn, "message", data).await {
            Ok(Some(reply)) => {
                let _ = conn.send_data(&Origin::Server, &reply);
                Ok(())
            }
            Ok(None) => Ok(()),
            Err(reason) => Err(stop(1011, reason)),
        },
    }
}

/// The `data` of a client frame by its `dataType` (default `json`); binary and protobuf are base64.
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn data_types() {
        let f = json!({"dataType": "binary", "data": "AQI="});
        assert_eq!(
            decode_data(&f),
            Ok(EventData::Binary(Bytes::from_static(b"\x01\x02")))
        );
        assert_eq!(
            decode_data(&json!({"data": {"a": 1}})),
            Ok(EventData::Json(json!({"a": 1})))
        );
        assert!(decode_data(&json!({"dataType": "text", "data": 1})).is_err());
        assert!(decode_data(&json!({"dataType": "xml", "data": ""})).is_err());
    }

    #[test]
    fn simple_modes() {
        let q = |pairs: &[(&str, &str)]| -> Vec<(String, String)> {
            pairs
                .iter()
                .map(|(a, b)| (a.to_string(), b.to_string()))
                .collect()
        };
        assert!(matches!(
            SimpleMode::from_query(&q(&[("webpubsub_mode", "sendToGroup"), ("group", "g"), ("noEcho", "true")])),
            SimpleMode::SendToGroup { group, no_echo: true } if group == "g"
        ));
        assert!(matches!(
            SimpleMode::from_query(&q(&[("webpubsub_mode", "sendToGroup")])),
            SimpleMode::SendEvent
        ));
    }
}
