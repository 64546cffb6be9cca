//! The application rules: who may connect and to which room, what is stored, what is broadcast.
//!
//! A connection's room is chosen once, at `connect`, and carried in the connection state, so
//! later events need no lookup. Messages are stored before they are broadcast: a store failure
//! fails the event (the sender sees it) and broadcasts nothing; a broadcast failure after the
//! write is logged and reported in the reply, and the message stays stored.

mod error;
mod notice;
mod outbox;
mod rate;
mod room;

use std::sync::Arc;

use bytes::Bytes;
use http::Response;
use serde_json::{json, Value};

use crate::protocol::{
    self, ConnectRequest, ConnectResponse, ConnectionState, EventContext, EventData, Webhook,
};
use crate::service::{SendOptions, ServiceClient};
use crate::store::{now_ms, Broadcast, BroadcastKind, NewMessage, Online, SharedStore};
pub use error::{BroadcastError, ChatError, MessageError};
pub use notice::Notice;
pub use outbox::{Outbox, OutboxConfig, SweepReport};
pub use rate::{MessageRate, RateLimiter, RateParseError};
pub use room::{room_roles, validate_room, RoomError};

/// The room of a connection that names none, and of history and negotiate calls without `room`.
pub const DEFAULT_ROOM: &str = "lobby";
/// The largest chat message accepted unless `HUBHOOK_MAX_MESSAGE_BYTES` says otherwise.
pub const DEFAULT_MAX_MESSAGE_BYTES: usize = 64 * 1024;
/// How long a connection counts as present without its `disconnected` (`HUBHOOK_PRESENCE_TTL`).
pub const DEFAULT_PRESENCE_TTL: std::time::Duration = std::time::Duration::from_secs(24 * 3600);

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
    pub outbox: OutboxConfig,
    /// Per-user limit on `message` events, in this instance; `None`: unlimited.
    pub message_rate: Option<MessageRate>,
    /// How long a presence entry lasts without its `disconnected`.
    pub presence_ttl: std::time::Duration,
    /// Refuse a connect whose `?room=` its client token does not grant (set when sign-in limits
    /// rooms: `HUBHOOK_AUTH=oidc` with `HUBHOOK_AUTH_ROOMS_CLAIM`).
    pub room_must_be_granted: bool,
}

impl Default for ChatConfig {
    fn default() -> Self {
        ChatConfig {
            allow_anonymous: false,
            max_message_bytes: DEFAULT_MAX_MESSAGE_BYTES,
            default_room: DEFAULT_ROOM.into(),
            relay_events: Vec::new(),
            outbox: OutboxConfig::default(),
            message_rate: None,
            presence_ttl: DEFAULT_PRESENCE_TTL,
            room_must_be_granted: false,
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
    outbox: Outbox,
    limiter: Option<RateLimiter>,
    config: ChatConfig,
}

impl Chat {
    pub fn new(store: SharedStore, service: ServiceClient, config: ChatConfig) -> Self {
        Chat {
            inner: Arc::new(Inner {
                outbox: Outbox::new(store.clone(), service.clone()),
                limiter: config.message_rate.map(RateLimiter::new),
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

    pub fn outbox(&self) -> &Outbox {
        &self.inner.outbox
    }

    /// Starts the background sweeper that sends what a crash or an outage left in the outbox.
    pub fn spawn_sweeper(&self) -> tokio::task::JoinHandle<()> {
        self.inner
            .outbox
            .spawn_sweeper(self.inner.config.outbox.clone())
    }

    pub async fn handle(&self, hook: Webhook) -> Response<Bytes> {
        let ctx = &hook.context;
        match &hook.event {
            protocol::Event::Connect(req) => self.connect(ctx, req),
            event => self
                .on_event(ctx, event)
                .await
                .unwrap_or_else(|e| e.into_response(None)),
        }
    }

    /// A connect refusal is a rejection the client sees (with a CONNACK code for MQTT).
    fn connect(&self, ctx: &EventContext, req: &ConnectRequest) -> Response<Bytes> {
        self.try_connect(ctx, req)
            .unwrap_or_else(|e| e.into_response(mqtt_of(ctx, req)))
    }

    async fn on_event(
        &self,
        ctx: &EventContext,
        event: &protocol::Event,
    ) -> Result<Response<Bytes>, ChatError> {
        match event {
            protocol::Event::Connect(_) => unreachable!("connect is answered by Chat::connect"),
            protocol::Event::Connected => self.notice(ctx, Notice::Joined).await,
            protocol::Event::Disconnected(_) => self.notice(ctx, Notice::Left).await,
            protocol::Event::User(ev) if ev.name == "message" => self.message(ctx, &ev.data).await,
            protocol::Event::User(ev)
                if self.inner.config.relay_events.iter().any(|e| *e == ev.name) =>
            {
                self.relay(ctx, &ev.name, &ev.data).await
            }
            protocol::Event::User(ev) => Err(ChatError::UnsupportedEvent(ev.name.to_string())),
        }
    }

    fn try_connect(
        &self,
        ctx: &EventContext,
        req: &ConnectRequest,
    ) -> Result<Response<Bytes>, ChatError> {
        // ce-userId is what the service took from the verified token; the query is the client's.
        let user = ctx.user_id.as_deref().map(String::from);
        if user.is_none() && !self.inner.config.allow_anonymous {
            return Err(ChatError::Anonymous);
        }
        let room = req
            .first_query("room")
            .unwrap_or(&self.inner.config.default_room);
        validate_room(room)?;
        if self.inner.config.room_must_be_granted && !token_allows_room(req, room) {
            return Err(ChatError::RoomNotGranted(room.to_string()));
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
        Ok(ConnectResponse {
            user_id: user,
            groups: vec![room.to_string()],
            roles: room_roles(room),
            subprotocol,
        }
        .into_response(Some(&state)))
    }

    /// The room chosen at `connect`, from the connection state. The state comes back from the
    /// service, so it is checked by the same rule as a room from the query.
    fn home_room<'a>(&'a self, ctx: &'a EventContext) -> Result<&'a str, RoomError> {
        let room = ctx
            .state
            .get_str(STATE_ROOM)
            .unwrap_or(&self.inner.config.default_room);
        validate_room(room)?;
        Ok(room)
    }

    /// A join or leave notice: presence updated, the notice recorded with its pending
    /// broadcast, then sent. A 502 means the notice is still in the outbox, so the service's
    /// retry (or the sweeper) will send it.
    ///
    /// Presence is written on every delivery, retries included, and before the notice is
    /// recorded: both writes are idempotent (an upsert keyed by room + connection id that keeps
    /// the first `since`, and a delete), so a retry repairs a first delivery that died between
    /// them instead of skipping it as `recorded.inserted == false` would. The one cost: a
    /// `connected` retried after its `disconnected` re-adds the entry until its TTL.
    async fn notice(&self, ctx: &EventContext, kind: Notice) -> Result<Response<Bytes>, ChatError> {
        let room = self.home_room(ctx)?;
        let at_ms = event_time_ms(ctx);
        let online = self.update_presence(ctx, room, kind).await?;
        let id = Broadcast::notice_id(&ctx.connection_id, &ctx.ce_id, at_ms);
        let payload = kind.payload(&id, room, ctx, &crate::store::format_ms(at_ms), online);
        let recorded = self
            .inner
            .store
            .record_notice(self.pending(BroadcastKind::Notice, id, room, ctx, payload))
            .await?;
        let Some(pending) = recorded.pending else {
            tracing::info!(ce_id = %ctx.ce_id, "retried {} event: notice already sent", kind.event());
            return Ok(protocol::notification_ack());
        };
        if !recorded.inserted {
            tracing::info!(ce_id = %ctx.ce_id, "retried {} event: sending its unsent notice", kind.event());
        }
        self.inner.outbox.deliver(pending).await.map_err(|source| {
            ChatError::NoticeNotDelivered {
                event: kind.event(),
                source,
            }
        })?;
        Ok(protocol::notification_ack())
    }

    /// Records the connection joining or leaving `room`; answers the room's online count (users).
    async fn update_presence(
        &self,
        ctx: &EventContext,
        room: &str,
        kind: Notice,
    ) -> Result<usize, ChatError> {
        let store = &self.inner.store;
        let now = now_ms();
        match (kind, &ctx.user_id) {
            (Notice::Joined, Some(user)) => {
                let ttl = self.inner.config.presence_ttl.as_millis() as i64;
                store
                    .presence_online(&Online {
                        room: room.to_string(),
                        connection_id: ctx.connection_id.to_string(),
                        user_id: user.to_string(),
                        since_ms: now,
                        expires_ms: now.saturating_add(ttl),
                    })
                    .await?
            }
            // Anonymous connections are not listed (presence lists users).
            (Notice::Joined, None) => {}
            (Notice::Left, _) => store.presence_offline(room, &ctx.connection_id).await?,
        }
        Ok(store.presence(room, now).await?.len())
    }

    /// A broadcast for the outbox, due for the sweeper only after the webhook had its chance.
    fn pending(
        &self,
        kind: BroadcastKind,
        id: String,
        room: &str,
        ctx: &EventContext,
        payload: Value,
    ) -> Broadcast {
        self.pending_text(kind, id, room, ctx, payload.to_string())
    }

    /// [`Chat::pending`] with the payload already serialised.
    fn pending_text(
        &self,
        kind: BroadcastKind,
        id: String,
        room: &str,
        ctx: &EventContext,
        payload: String,
    ) -> Broadcast {
        let now = now_ms();
        Broadcast {
            id,
            kind,
            room: room.to_string(),
            payload,
            connection_id: ctx.connection_id.to_string(),
            ce_id: ctx.ce_id.to_string(),
            created_ms: now,
            due_ms: now.saturating_add(self.inner.config.outbox.grace.as_millis() as i64),
            attempts: 0,
        }
    }

    async fn message(
        &self,
        ctx: &EventContext,
        data: &EventData,
    ) -> Result<Response<Bytes>, ChatError> {
        let (text, room) = self.parse_message(ctx, data)?;
        if let Some(limiter) = &self.inner.limiter {
            let sender = ctx.user_id.as_deref().unwrap_or(&ctx.connection_id);
            if !limiter.allow(sender) {
                tracing::info!(ce_id = %ctx.ce_id, "message refused: over the rate limit");
                return Err(ChatError::RateLimited(limiter.rate()));
            }
        }
        let new = NewMessage {
            room: room.clone(),
            connection_id: ctx.connection_id.to_string(),
            ce_id: ctx.ce_id.to_string(),
            user_id: ctx.user_id.as_deref().map(String::from),
            text,
            at_ms: event_time_ms(ctx),
        };
        let stored = crate::store::StoredMessage::from_new(&new);
        // Serialised straight from borrowed fields: the same bytes `json!({..}).to_string()`
        // gave (keys in this order), without building a `Value` tree first.
        let payload = serde_json::to_string(&MessagePayload {
            kind: "message",
            room: &stored.room,
            id: &stored.id,
            from: stored.from.as_deref(),
            text: &stored.text,
            at: &stored.at,
        })
        .expect("a message payload serialises");
        let broadcast = self.pending_text(BroadcastKind::Message, stored.id, &room, ctx, payload);
        let appended = self.inner.store.append(new, broadcast).await?;
        let m = &appended.message;
        let mut reply = StoredReply {
            kind: "stored",
            id: &m.id,
            room: &m.room,
            stored: true,
            duplicate: (!appended.inserted).then_some(true),
            broadcast: None,
            error: None,
        };
        match appended.pending {
            None => {
                tracing::info!(ce_id = %ctx.ce_id, id = %m.id, "retried message event: already stored and broadcast");
            }
            Some(pending) => {
                if !appended.inserted {
                    tracing::info!(ce_id = %ctx.ce_id, id = %m.id, "retried message event: sending its unsent broadcast");
                }
                let sent = self.inner.outbox.deliver(pending).await;
                reply.broadcast = Some(sent.is_ok());
                if let Err(e) = sent {
                    tracing::error!(ce_id = %ctx.ce_id, id = %m.id, error = %e, "message stored, broadcast queued for retry");
                    reply.error = Some(format!(
                        "broadcast failed: {e} (queued: it will be retried)"
                    ));
                }
            }
        }
        let body = serde_json::to_vec(&reply).expect("a reply serialises");
        Ok(protocol::json_reply(body.into()))
    }

    async fn relay(
        &self,
        ctx: &EventContext,
        event: &str,
        data: &EventData,
    ) -> Result<Response<Bytes>, ChatError> {
        if data.len() > self.inner.config.max_message_bytes {
            return Err(self.too_large().into());
        }
        let data = match data {
            EventData::Text(s) => Value::from(s.as_str()),
            EventData::Json(v) => v.clone(),
            EventData::Binary(_) => return Err(MessageError::BinaryRelay.into()),
        };
        let room = self.home_room(ctx)?;
        let payload = json!({ "type": event, "room": room, "from": ctx.user_id, "data": data, "at": event_time(ctx) });
        self.broadcast(room, payload, &ctx.connection_id, true)
            .await
            .map_err(ChatError::RelayFailed)?;
        Ok(protocol::user_event_reply(None, None))
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
    ) -> Result<(), BroadcastError> {
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
        .await??;
        Ok(())
    }

    fn too_large(&self) -> MessageError {
        MessageError::TooLarge {
            limit: self.inner.config.max_message_bytes,
        }
    }

    /// Text from a text frame, a JSON string, or `{"text": .., "room"?: ..}`.
    fn parse_message(
        &self,
        ctx: &EventContext,
        data: &EventData,
    ) -> Result<(String, String), MessageError> {
        let home = self.home_room(ctx)?;
        let (text, room) = match data {
            EventData::Text(s) => (s.to_string(), None),
            EventData::Json(Value::String(s)) => (s.clone(), None),
            EventData::Json(Value::Object(o)) => {
                let text = match o.get("text") {
                    Some(Value::String(s)) => s.clone(),
                    Some(_) => return Err(MessageError::TextNotString),
                    None => return Err(MessageError::NoText),
                };
                let room = match o.get("room") {
                    None | Some(Value::Null) => None,
                    Some(Value::String(r)) => Some(r.clone()),
                    Some(_) => return Err(MessageError::RoomNotString),
                };
                (text, room)
            }
            EventData::Json(_) => return Err(MessageError::NotTextOrObject),
            EventData::Binary(_) => return Err(MessageError::Binary),
        };
        if text.trim().is_empty() {
            return Err(MessageError::Empty);
        }
        if text.len() > self.inner.config.max_message_bytes {
            return Err(self.too_large());
        }
        let room = match room {
            None => home.to_string(),
            Some(r) if r == home => r,
            Some(r) => {
                validate_room(&r)?;
                if !may_send_to(&ctx.state, &r) {
                    return Err(MessageError::NoPermission(r));
                }
                r
            }
        };
        Ok((text, room))
    }
}

/// A stored message as broadcast to its room (`{"type":"message",...}`).
#[derive(serde::Serialize)]
struct MessagePayload<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    room: &'a str,
    id: &'a str,
    from: Option<&'a str>,
    text: &'a str,
    at: &'a str,
}

/// The reply to a `message` event (`{"type":"stored",...}`); keys in the order they were
/// always sent, the optional ones only when set.
#[derive(serde::Serialize)]
struct StoredReply<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    id: &'a str,
    room: &'a str,
    stored: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    duplicate: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    broadcast: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
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

/// With [`ChatConfig::room_must_be_granted`], a client token that names rooms
/// (`webpubsub.joinLeaveGroup.<room>`, as `/negotiate` issues for the room it was asked for, after
/// checking the caller's rooms claim) limits `?room=` to those: editing the URL cannot move a user
/// into another room. A token without such roles, or with the
/// unscoped `webpubsub.joinLeaveGroup`, leaves the room free.
fn token_allows_room(req: &ConnectRequest, room: &str) -> bool {
    let roles = req
        .claims
        .get("role")
        .map(Vec::as_slice)
        .unwrap_or_default();
    if roles.iter().any(|r| r == "webpubsub.joinLeaveGroup") {
        return true;
    }
    let mut scoped = roles
        .iter()
        .filter_map(|r| r.strip_prefix("webpubsub.joinLeaveGroup."))
        .peekable();
    scoped.peek().is_none() || scoped.any(|r| r == room)
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
