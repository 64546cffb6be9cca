//! The application rules: who may connect and to which room, what is stored, what is broadcast.
//!
//! A connection's room is chosen once, at `connect`, and carried in the connection state, so
//! later events need no lookup. Messages are stored before they are broadcast: a store failure
//! fails the event (the sender sees it) and broadcasts nothing; a broadcast failure after the
//! write is logged and reported in the reply, and the message stays stored.

mod notice;
mod room;

use std::sync::Arc;

use bytes::Bytes;
use http::{Response, StatusCode};
use serde_json::{json, Value};

use crate::protocol::{
    self, ConnectRequest, ConnectResponse, ConnectionState, EventContext, EventData, Webhook,
};
use crate::service::{SendOptions, ServiceClient};
use crate::store::{NewMessage, SharedStore, StoreError};
pub use notice::Notice;
pub use room::{validate_room, RoomError};

/// State keys (express format, so the state stays readable by other handlers).
const STATE_ROOM: &str = "room";
/// Rooms beyond the home room this connection may send to; `"*"` for any.
const STATE_SEND_ROOMS: &str = "sendRooms";

const KNOWN_SUBPROTOCOLS: [&str; 4] = [
    "json.reliable.webpubsub.azure.v1",
    "json.webpubsub.azure.v1",
    "protobuf.reliable.webpubsub.azure.v1",
    "protobuf.webpubsub.azure.v1",
];

#[derive(Debug, Clone)]
pub struct ChatConfig {
    pub allow_anonymous: bool,
    pub max_message_bytes: usize,
    pub default_room: String,
    /// User events besides `message` that are relayed to the room without being stored.
    pub relay_events: Vec<String>,
}

impl Default for ChatConfig {
    fn default() -> Self {
        ChatConfig {
            allow_anonymous: false,
            max_message_bytes: 64 * 1024,
            default_room: "lobby".into(),
            relay_events: Vec::new(),
        }
    }
}

#[derive(Clone)]
pub struct Chat {
    inner: Arc<Inner>,
}

struct Inner {
    store: SharedStore,
    service: ServiceClient,
    config: ChatConfig,
}

impl Chat {
    pub fn new(store: SharedStore, service: ServiceClient, config: ChatConfig) -> Self {
        Chat {
            inner: Arc::new(Inner {
                store,
                service,
                config,
            }),
        }
    }

    pub fn store(&self) -> &SharedStore {
        &self.inner.store
    }

    pub fn config(&self) -> &ChatConfig {
        &self.inner.config
    }

    pub async fn handle(&self, hook: Webhook) -> Response<Bytes> {
        let ctx = &hook.context;
        match hook.event {
            protocol::Event::Connect(req) => self.connect(ctx, &req),
            protocol::Event::Connected => self.notice(ctx, Notice::Joined).await,
            protocol::Event::Disconnected(_) => self.notice(ctx, Notice::Left).await,
            protocol::Event::User(ev) if ev.name == "message" => self.message(ctx, &ev.data).await,
            protocol::Event::User(ev) if self.inner.config.relay_events.contains(&ev.name) => {
                self.relay(ctx, &ev.name, &ev.data).await
            }
            protocol::Event::User(ev) => protocol::failure(
                StatusCode::BAD_REQUEST,
                &format!(
                    "unsupported event {:?} (set HUBHOOK_RELAY_EVENTS to relay it)",
                    ev.name
                ),
            ),
        }
    }

    fn connect(&self, ctx: &EventContext, req: &ConnectRequest) -> Response<Bytes> {
        let reject =
            |status, reason: &str| protocol::connect_rejection(status, reason, mqtt_of(ctx, req));
        // ce-userId is what the service took from the verified token; the query is the client's.
        let user = ctx.user_id.clone();
        if user.is_none() && !self.inner.config.allow_anonymous {
            return reject(
                StatusCode::UNAUTHORIZED,
                "anonymous connections are not allowed",
            );
        }
        let room = req
            .first_query("room")
            .unwrap_or(&self.inner.config.default_room);
        if let Err(e) = validate_room(room) {
            return reject(StatusCode::BAD_REQUEST, &e.to_string());
        }
        let mut state = ctx.state.clone();
        state.set(STATE_ROOM, room);
        let send_rooms = token_send_rooms(req);
        if !send_rooms.is_null() {
            state.set(STATE_SEND_ROOMS, send_rooms);
        }
        let subprotocol = req
            .subprotocols
            .iter()
            .find(|p| KNOWN_SUBPROTOCOLS.contains(&p.as_str()))
            .or(if req.subprotocols.len() == 1 {
                req.subprotocols.first()
            } else {
                None
            })
            .cloned();
        ConnectResponse {
            user_id: user,
            groups: vec![room.to_string()],
            roles: vec![
                format!("webpubsub.joinLeaveGroup.{room}"),
                format!("webpubsub.sendToGroup.{room}"),
            ],
            subprotocol,
        }
        .into_response(Some(&state))
    }

    fn home_room<'a>(&'a self, ctx: &'a EventContext) -> &'a str {
        ctx.state
            .get_str(STATE_ROOM)
            .unwrap_or(&self.inner.config.default_room)
    }

    async fn notice(&self, ctx: &EventContext, kind: Notice) -> Response<Bytes> {
        let room = self.home_room(ctx);
        match self
            .inner
            .store
            .claim_delivery(&ctx.connection_id, &ctx.ce_id)
            .await
        {
            Ok(true) => {}
            Ok(false) => {
                tracing::info!(ce_id = %ctx.ce_id, "retried {} event: notice already sent", kind.event());
                return protocol::notification_ack();
            }
            Err(e) => return store_failure(&e),
        }
        let payload = kind.payload(room, ctx, &event_time(ctx));
        match self
            .broadcast(room, payload, &ctx.connection_id, false)
            .await
        {
            Ok(()) => protocol::notification_ack(),
            Err(e) => {
                tracing::error!(ce_id = %ctx.ce_id, error = %e, "{} notice not delivered", kind.event());
                protocol::failure(
                    StatusCode::BAD_GATEWAY,
                    &format!("{} notice not delivered: {e}", kind.event()),
                )
            }
        }
    }

    async fn message(&self, ctx: &EventContext, data: &EventData) -> Response<Bytes> {
        let (text, room) = match self.parse_message(ctx, data) {
            Ok(v) => v,
            Err(reason) => return protocol::failure(StatusCode::BAD_REQUEST, &reason),
        };
        let new = NewMessage {
            room: room.clone(),
            connection_id: ctx.connection_id.clone(),
            ce_id: ctx.ce_id.clone(),
            user_id: ctx.user_id.clone(),
            text,
            at_ms: event_time_ms(ctx),
        };
        let appended = match self.inner.store.append(new).await {
            Ok(a) => a,
            Err(e) => return store_failure(&e),
        };
        let m = &appended.message;
        let mut reply = json!({ "type": "stored", "id": m.id, "room": m.room, "stored": true });
        if !appended.inserted {
            tracing::info!(ce_id = %ctx.ce_id, id = %m.id, "retried message event: already stored, not broadcast again");
            reply["duplicate"] = true.into();
        } else {
            let payload = json!({
                "type": "message", "room": m.room, "id": m.id, "from": m.from, "text": m.text, "at": m.at,
            });
            let sent = self
                .broadcast(&m.room, payload, &ctx.connection_id, false)
                .await;
            reply["broadcast"] = sent.is_ok().into();
            if let Err(e) = sent {
                tracing::error!(ce_id = %ctx.ce_id, id = %m.id, error = %e, "message stored but broadcast failed");
                reply["error"] = format!("broadcast failed: {e}").into();
            }
        }
        protocol::user_event_reply(Some(&EventData::Json(reply)), None)
    }

    async fn relay(&self, ctx: &EventContext, event: &str, data: &EventData) -> Response<Bytes> {
        if data.len() > self.inner.config.max_message_bytes {
            return protocol::failure(StatusCode::BAD_REQUEST, &self.too_large());
        }
        let data = match data {
            EventData::Text(s) => Value::from(s.as_str()),
            EventData::Json(v) => v.clone(),
            EventData::Binary(_) => {
                return protocol::failure(StatusCode::BAD_REQUEST, "binary data is not relayed")
            }
        };
        let room = self.home_room(ctx);
        let payload = json!({ "type": event, "room": room, "from": ctx.user_id, "data": data, "at": event_time(ctx) });
        match self
            .broadcast(room, payload, &ctx.connection_id, true)
            .await
        {
            Ok(()) => protocol::user_event_reply(None, None),
            Err(e) => protocol::failure(StatusCode::BAD_GATEWAY, &format!("relay failed: {e}")),
        }
    }

    /// Broadcasts on a task of its own: once a write is committed, its broadcast must happen even
    /// if the service gives up on this webhook and the HTTP future is dropped (a retry would find
    /// the message stored and, rightly, not broadcast it again).
    async fn broadcast(
        &self,
        room: &str,
        payload: Value,
        sender: &str,
        exclude_sender: bool,
    ) -> Result<(), crate::service::ServiceError> {
        let opts = SendOptions {
            excluded: if exclude_sender {
                vec![sender.to_string()]
            } else {
                vec![]
            },
            ..Default::default()
        };
        let service = self.inner.service.clone();
        let room = room.to_string();
        tokio::spawn(async move {
            service
                .send_to_group(&room, &EventData::Json(payload), &opts)
                .await
        })
        .await
        .unwrap_or_else(|e| {
            Err(crate::service::ServiceError::Network {
                op: "sendToGroup",
                reason: format!("broadcast task failed: {e}"),
            })
        })
    }

    fn too_large(&self) -> String {
        format!(
            "message exceeds {} bytes",
            self.inner.config.max_message_bytes
        )
    }

    /// Text from a text frame, a JSON string, or `{"text": .., "room"?: ..}`.
    fn parse_message(
        &self,
        ctx: &EventContext,
        data: &EventData,
    ) -> Result<(String, String), String> {
        let home = self.home_room(ctx);
        let (text, room) = match data {
            EventData::Text(s) => (s.clone(), None),
            EventData::Json(Value::String(s)) => (s.clone(), None),
            EventData::Json(Value::Object(o)) => {
                let text = match o.get("text") {
                    Some(Value::String(s)) => s.clone(),
                    Some(_) => return Err("\"text\" must be a string".into()),
                    None => return Err("JSON message needs a \"text\" field".into()),
                };
                let room = match o.get("room") {
                    None | Some(Value::Null) => None,
                    Some(Value::String(r)) => Some(r.clone()),
                    Some(_) => return Err("\"room\" must be a string".into()),
                };
                (text, room)
            }
            EventData::Json(_) => {
                return Err("JSON message must be a string or an object with \"text\"".into())
            }
            EventData::Binary(_) => {
                return Err("binary messages are not supported; send text or JSON".into())
            }
        };
        if text.trim().is_empty() {
            return Err("empty message".into());
        }
        if text.len() > self.inner.config.max_message_bytes {
            return Err(self.too_large());
        }
        let room = match room {
            None => home.to_string(),
            Some(r) if r == home => r,
            Some(r) => {
                validate_room(&r).map_err(|e| e.to_string())?;
                if !may_send_to(&ctx.state, &r) {
                    return Err(format!("no permission to send to room {r:?}"));
                }
                r
            }
        };
        Ok((text, room))
    }
}

fn store_failure(e: &StoreError) -> Response<Bytes> {
    let status = match e {
        StoreError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    };
    tracing::error!(error = %e, "store failure");
    protocol::failure(status, &e.to_string())
}

fn mqtt_of<'a>(
    ctx: &'a EventContext,
    req: &ConnectRequest,
) -> Option<(&'a protocol::MqttContext, u8)> {
    ctx.mqtt
        .as_ref()
        .map(|m| (m, req.mqtt.as_ref().map_or(4, |p| p.protocol_version)))
}

/// Rooms the client's token lets it publish to (`webpubsub.sendToGroup[.room]` role claims).
fn token_send_rooms(req: &ConnectRequest) -> Value {
    let roles = req
        .claims
        .get("role")
        .map(Vec::as_slice)
        .unwrap_or_default();
    if roles.iter().any(|r| r == "webpubsub.sendToGroup") {
        return Value::from("*");
    }
    let rooms: Vec<&str> = roles
        .iter()
        .filter_map(|r| r.strip_prefix("webpubsub.sendToGroup."))
        .filter(|r| validate_room(r).is_ok())
        .collect();
    if rooms.is_empty() {
        Value::Null
    } else {
        rooms.into()
    }
}

fn may_send_to(state: &ConnectionState, room: &str) -> bool {
    match state.get(STATE_SEND_ROOMS) {
        Some(Value::String(s)) => s == "*",
        Some(Value::Array(a)) => a.iter().any(|r| r.as_str() == Some(room)),
        _ => false,
    }
}

fn event_time_ms(ctx: &EventContext) -> i64 {
    let parsed = ctx.ce_time.as_deref().and_then(|t| {
        time::OffsetDateTime::parse(t, &time::format_description::well_known::Rfc3339).ok()
    });
    let t = parsed.unwrap_or_else(time::OffsetDateTime::now_utc);
    (t.unix_timestamp_nanos() / 1_000_000) as i64
}

fn event_time(ctx: &EventContext) -> String {
    crate::store::format_ms(event_time_ms(ctx))
}

#[cfg(test)]
mod tests;
