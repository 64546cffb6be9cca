//! What the emulator does with a client's frames: the JSON protocols' [`ClientFrame`]s (groups,
//! user events, invocations, acks, sequence acks) and a simple client's raw frames
//! ([`SimpleMode`]). A frame either succeeds, fails with an ack error (the connection stays), or
//! ends the connection ([`Stop`]).

use std::future::Future;
use std::sync::Arc;

use bytes::Bytes;
use serde_json::json;

use super::conn::{json_data, Conn, Origin, Proto};
use super::frame::{self, ClientFrame, FrameError, GroupMessage, Invocation, UserEvent};
use super::Shared;
use crate::protocol::EventData;

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

/// Ends the connection: close code and reason (a JSON client is told the reason first).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stop {
    pub code: u16,
    pub reason: String,
}

impl Stop {
    pub fn new(code: u16, reason: impl Into<String>) -> Stop {
        Stop {
            code,
            reason: reason.into(),
        }
    }
}

impl From<FrameError> for Stop {
    fn from(e: FrameError) -> Stop {
        Stop::new(e.code(), e.to_string())
    }
}

/// The `error` of a failed ack or `invokeResponse`.
#[derive(Debug, Clone, PartialEq, Eq)]
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

    fn bad_request(message: impl ToString) -> AckError {
        AckError::new("BadRequest", message.to_string())
    }
}

/// Why an ack-able frame failed: the client is told in the ack, or the connection ends.
#[derive(Debug)]
enum Failure {
    Ack(AckError),
    Stop(Stop),
}

impl From<AckError> for Failure {
    fn from(e: AckError) -> Failure {
        Failure::Ack(e)
    }
}

impl From<Stop> for Failure {
    fn from(s: Stop) -> Failure {
        Failure::Stop(s)
    }
}

/// One frame from the client (text or binary), in the connection's protocol.
pub async fn on_frame(
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
        return Err(FrameError::Binary.into());
    }
    let (ack_id, frame) = frame::parse(&payload)?;
    let kind = frame.kind();
    match frame {
        ClientFrame::Ping => {
            conn.send_control(json!({"type": "pong"}));
            Ok(())
        }
        ClientFrame::SequenceAck { sequence_id } => {
            conn.sequence_ack(sequence_id);
            Ok(())
        }
        ClientFrame::JoinGroup { group } => {
            acked(conn, ack_id, kind, async {
                join_leave(s, conn, group, true)
            })
            .await
        }
        ClientFrame::LeaveGroup { group } => {
            acked(conn, ack_id, kind, async {
                join_leave(s, conn, group, false)
            })
            .await
        }
        ClientFrame::SendToGroup(m) => {
            acked(conn, ack_id, kind, async { send_to_group(s, conn, m) }).await
        }
        ClientFrame::Event(e) => acked(conn, ack_id, kind, on_event(s, conn, e)).await,
        ClientFrame::Invoke(i) => {
            on_invoke(s, conn, i).await;
            Ok(())
        }
        // Nothing to cancel: an invoke is answered once, whatever the client decided since.
        ClientFrame::CancelInvocation => Ok(()),
    }
}

/// Does `work` once per ackId and answers with an ack; without an ackId a failure is only logged.
async fn acked(
    conn: &Conn,
    ack_id: Option<u64>,
    kind: &str,
    work: impl Future<Output = Result<(), Failure>>,
) -> Result<(), Stop> {
    if let Some(id) = ack_id {
        if !conn.begin_ack(id) {
            let message = format!("Message with ackId: {id} has been processed.");
            send_ack(conn, id, Err(AckError::new("Duplicate", message)));
            return Ok(());
        }
    }
    let outcome = match work.await {
        Ok(()) => Ok(()),
        Err(Failure::Ack(e)) => Err(e),
        Err(Failure::Stop(stop)) => return Err(stop),
    };
    if let Some(id) = ack_id {
        conn.end_ack(id, outcome.is_ok());
        send_ack(conn, id, outcome);
    } else if let Err(e) = outcome {
        tracing::info!(target: "hubhook::emulator", conn = %conn.id, "{kind} failed (no ackId to report it): {}", e.message);
    }
    Ok(())
}

fn send_ack(conn: &Conn, id: u64, outcome: Result<(), AckError>) {
    let mut a = json!({"type": "ack", "ackId": id, "success": outcome.is_ok()});
    if let Err(e) = outcome {
        a["error"] = json!({"name": e.name, "message": e.message});
    }
    conn.send_control(a);
}

/// The frame's group, if the connection holds `role` for it (`what` names the action in the error).
fn permitted_group(
    conn: &Conn,
    group: Option<String>,
    role: &str,
    what: &str,
) -> Result<String, AckError> {
    let group = group
        .filter(|g| !g.trim().is_empty() && g.len() <= 1024)
        .ok_or_else(|| AckError::bad_request("\"group\" must be a non-blank string."))?;
    if !conn.has_role(role, &group) {
        return Err(AckError::new(
            "Forbidden",
            format!("The connection has no permission to {what} group {group}."),
        ));
    }
    Ok(group)
}

fn join_leave(s: &Shared, conn: &Conn, group: Option<String>, join: bool) -> Result<(), Failure> {
    let group = permitted_group(conn, group, "joinLeaveGroup", "join or leave")?;
    s.registry.with(&conn.hub, |h| {
        if join {
            h.join(&group, &conn.id)
        } else {
            h.leave(&group, &conn.id)
        }
    });
    Ok(())
}

fn send_to_group(s: &Arc<Shared>, conn: &Conn, m: GroupMessage) -> Result<(), Failure> {
    let group = permitted_group(conn, m.group, "sendToGroup", "send to")?;
    let data = m.payload.decode().map_err(AckError::bad_request)?;
    publish(s, conn, &group, &data, m.no_echo);
    Ok(())
}

/// `event`: the user-event webhook; its reply is relayed as a server message before the ack. A
/// failed handler gives an `InternalServerError` ack and the connection stays.
async fn on_event(s: &Arc<Shared>, conn: &Arc<Conn>, e: UserEvent) -> Result<(), Failure> {
    let name = e
        .event
        .filter(|n| !n.is_empty())
        .ok_or_else(|| AckError::bad_request("\"event\" is required."))?;
    let data = e.payload.decode().map_err(AckError::bad_request)?;
    let reply = s
        .user_event(conn, &name, data)
        .await
        .map_err(|e| AckError::new("InternalServerError", e.to_string()))?;
    if let Some(reply) = reply {
        if let Err(full) = conn.send_data(&Origin::Server, &reply) {
            s.overflowed(conn, full);
        }
    }
    Ok(())
}

/// `invoke`: the same webhook, answered with `invokeResponse` (success or error, never a close).
async fn on_invoke(s: &Arc<Shared>, conn: &Arc<Conn>, i: Invocation) {
    let result = invoke(s, conn, i.target, i.event, i.payload).await;
    let mut m = json!({"type": "invokeResponse", "invocationId": i.invocation_id, "success": result.is_ok()});
    match result {
        Ok(Some(d)) => {
            let (t, v) = json_data(&d);
            m["dataType"] = t.into();
            m["data"] = v;
        }
        Ok(None) => {}
        Err(e) => m["error"] = json!({"name": e.name, "message": e.message}),
    }
    conn.send_control(m);
}

async fn invoke(
    s: &Arc<Shared>,
    conn: &Arc<Conn>,
    target: Option<String>,
    event: Option<String>,
    payload: frame::Payload,
) -> Result<Option<EventData>, AckError> {
    let name = event.unwrap_or_default();
    if target.as_deref().unwrap_or("event") != "event" || name.is_empty() {
        return Err(AckError::bad_request(
            "invoke supports target \"event\" with an \"event\" name.",
        ));
    }
    let data = payload.decode().map_err(AckError::bad_request)?;
    s.user_event(conn, &name, data)
        .await
        .map_err(|e| AckError::new("InternalServerError", e.to_string()))
}

/// A client's message to a group, from it, without itself when it asked for `noEcho`.
fn publish(s: &Arc<Shared>, conn: &Conn, group: &str, data: &EventData, no_echo: bool) {
    let exclude = if no_echo {
        vec![conn.id.clone()]
    } else {
        vec![]
    };
    let origin = Origin::Group {
        group: group.to_string(),
        from_user: conn.user_id.clone(),
    };
    s.send_to_group(&conn.hub, group, &origin, data, &exclude);
}

async fn on_simple_frame(
    s: &Arc<Shared>,
    conn: &Arc<Conn>,
    payload: Bytes,
    text: bool,
    mode: &SimpleMode,
) -> Result<(), Stop> {
    let data = if text {
        EventData::Text(String::from_utf8_lossy(&payload).into())
    } else {
        EventData::Binary(payload)
    };
    match mode {
        SimpleMode::SendToGroup { group, no_echo } => {
            if !conn.has_role("sendToGroup", group) {
                return Err(Stop::new(
                    1008,
                    format!("No permission to send to group {group}."),
                ));
            }
            publish(s, conn, group, &data, *no_echo);
            Ok(())
        }
        // A failed (or missing) handler closes a simple client: it has no acks to say so.
        SimpleMode::SendEvent => match s.user_event(conn, "message", data).await {
            Ok(Some(reply)) => {
                if let Err(full) = conn.send_data(&Origin::Server, &reply) {
                    s.overflowed(conn, full);
                }
                Ok(())
            }
            Ok(None) => Ok(()),
            Err(e) => Err(Stop::new(1011, e.to_string())),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
