//! A local Azure Web PubSub service for development and tests (`hubhook dev`, `hubhook
//! emulator`): client WebSockets (`json.webpubsub.azure.v1`, `json.reliable.webpubsub.azure.v1`,
//! plain), CloudEvents webhooks to the hubs' event handlers, and the REST data-plane API.
//!
//! | file | concept |
//! |---|---|
//! | `auth` | client access tokens and REST bearer tokens (JWT, HS256 with the access key) |
//! | `client` | the client endpoint's handshake: token, blocking `connect` webhook, `101`; recovery |
//! | `session` | one socket's life: `connected`, read and write loops, final close or drop (recovery) |
//! | `frame` | the JSON protocols' client frames (`ClientFrame`, a serde-tagged enum) and their data |
//! | `handle` | what each client frame does: acks, groups, user events, invocations; simple clients |
//! | `conn` | one logical connection: roles, state, ackIds, sequence ids and the reliable buffer |
//! | `queue` | one socket's outbound queue: never waits, bounded in bytes and messages |
//! | `hub` | connections and groups per hub |
//! | `upstream` | event-handler settings and the webhook calls (abuse protection, signing, timeouts), over HTTP or a tunnel |
//! | `tunnel` | the service side of the tunnel: `/server/tunnel`, `tunnel:///` handlers delivered through it |
//! | `rest` | the REST API 2024-12-01 (`RestOp`: route, then one function per operation), `filter` its OData filters |
//! | `lenient` | serde helpers for optional JSON fields read leniently (frames, REST bodies) |
//!
//! It builds webhooks with the same `protocol` module the handler parses them with; the tests
//! pin both sides with the official `@azure/web-pubsub-client` and `@azure/web-pubsub` packages.
//! Behaviour the service leaves open follows Microsoft's emulator (see the README).

mod auth;
mod client;
mod conn;
mod filter;
mod frame;
mod handle;
mod hub;
mod lenient;
mod queue;
mod rest;
mod session;
mod tunnel;
mod upstream;

use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::routing::{any, get};
use axum::Router;

pub use client::NOT_RECOVERABLE;
pub use conn::{
    BUFFER_FULL_CODE, JSON_RELIABLE_V1, JSON_V1, OUTBOUND_BUFFER_FULL, RELIABLE_BUFFER_FULL,
};
pub use filter::{Filter, FilterError};
pub use queue::{
    BufferLimit, DEFAULT_OUTBOUND_BYTES, DEFAULT_OUTBOUND_MESSAGES, DEFAULT_RELIABLE_BYTES,
    DEFAULT_RELIABLE_MESSAGES,
};
pub use session::MAX_FRAME;
pub use tunnel::{TunnelInfo, Tunnels};
pub use upstream::{
    HandlerSettings, InvalidHandlerSpec, WebhookLog, WebhookObserver, WebhookRequest,
    WebhookResponse,
};

/// Entry points for the fuzz targets (`fuzz/`) into the private client-frame parser and token
/// checks. Not API: thin wrappers with plain types, so `frame` and `auth` stay private.
#[doc(hidden)]
pub mod fuzzing {
    use super::frame::{self, ClientFrame};
    use super::{auth, AccessKey};

    /// `frame::parse`, then the data decoding the handler runs on a frame's payload. `Ok`: the
    /// `ackId` and the frame's `type`; `Err`: the close code.
    pub fn client_frame(payload: &[u8]) -> Result<(Option<u64>, &'static str), u16> {
        let (ack_id, frame) = frame::parse(payload).map_err(|e| e.code())?;
        let kind = frame.kind();
        match frame {
            ClientFrame::SendToGroup(m) => drop(m.payload.decode()),
            ClientFrame::Event(e) => drop(e.payload.decode()),
            ClientFrame::Invoke(i) => drop(i.payload.decode()),
            _ => {}
        }
        Ok((ack_id, kind))
    }

    /// `auth::verify_client_token`; the error as its text.
    // A plain `String` error: the fuzz targets only need pass/fail.
    pub fn verify_client_token(key: &str, token: &str, hub: &str) -> Result<auth::Claims, String> {
        auth::verify_client_token(&AccessKey::new(key), token, hub).map_err(|e| e.to_string())
    }

    /// `auth::verify_rest_token`; the error as its text.
    // A plain `String` error: the fuzz targets only need pass/fail.
    pub fn verify_rest_token(
        key: &str,
        authorization: Option<&str>,
        request_path: &str,
    ) -> Result<(), String> {
        auth::verify_rest_token(&AccessKey::new(key), authorization, request_path)
            .map_err(|e| e.to_string())
    }
}

use crate::protocol::{DisconnectedRequest, Event, EventContext, EventData, UserEvent};
use crate::runtime::listener::Limits;
use crate::service::{AccessKey, ConnectionString};
use conn::{Conn, Frame, Origin, Proto};
use upstream::UpstreamReply;

#[derive(Clone)]
pub struct EmulatorConfig {
    pub bind: SocketAddr,
    /// Binding a non-loopback address needs this: the default key is public.
    pub allow_public: bool,
    pub access_key: String,
    /// Event handlers, per hub (`HandlerSettings::hub`, `*` = every hub); the first match wins.
    pub handlers: Vec<HandlerSettings>,
    /// Per webhook attempt. A `connect` handler that takes longer refuses the client (500); a
    /// user-event handler that takes longer gives an `InternalServerError` ack.
    pub upstream_timeout: Duration,
    /// How long a dropped reliable connection waits for its client to recover it.
    pub recovery_window: Duration,
    /// A client close frame without code 1000 (what `client.stop()` sends) ends a reliable
    /// connection at once instead of keeping it for recovery (Microsoft's emulator keeps it).
    pub close_frame_is_final: bool,
    /// Per socket: what may wait to be sent to a client that reads slower than it is sent to
    /// (or not at all). Over it, the client is closed (1008, [`OUTBOUND_BUFFER_FULL`]); senders
    /// never wait on it. Default [`BufferLimit::OUTBOUND`]: 16 MiB / 10,000 messages.
    pub outbound_limit: BufferLimit,
    /// Per reliable connection: messages sent and not yet acked, kept for recovery. Over it,
    /// the client is closed (1008, [`RELIABLE_BUFFER_FULL`]). Default the service's
    /// [`BufferLimit::RELIABLE`]: 16 MiB / 1000 messages.
    pub reliable_limit: BufferLimit,
    /// `WebHook-Request-Origin` sent to event handlers.
    pub origin: String,
    /// Told about every webhook call (`hubhook dev` prints one line each).
    pub on_webhook: Option<WebhookObserver>,
    /// Tunnel connections get a WebSocket ping this often and a `ServiceStatus` every second
    /// time; one silent for three intervals is closed (see `tunnel`). Zero: none. Default 30 s.
    pub tunnel_keepalive: Duration,
    /// The listener's timeouts and connection cap (upgraded WebSockets count against the cap).
    /// Default [`Limits::default`]; `hubhook emulator` and `dev` set them from the same
    /// variables as `serve`'s listener.
    pub limits: Limits,
}

impl fmt::Debug for EmulatorConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EmulatorConfig")
            .field("bind", &self.bind)
            .field("allow_public", &self.allow_public)
            .field("handlers", &self.handlers)
            .field("upstream_timeout", &self.upstream_timeout)
            .field("recovery_window", &self.recovery_window)
            .field("close_frame_is_final", &self.close_frame_is_final)
            .field("outbound_limit", &self.outbound_limit)
            .field("reliable_limit", &self.reliable_limit)
            .field("limits", &self.limits)
            .field("origin", &self.origin)
            .finish_non_exhaustive()
    }
}

impl EmulatorConfig {
    /// Loopback on `port` (0: any free port), the public local key, these handlers.
    pub fn local(port: u16, handlers: Vec<HandlerSettings>) -> Self {
        EmulatorConfig {
            bind: SocketAddr::from(([127, 0, 0, 1], port)),
            allow_public: false,
            access_key: crate::config::LOCAL_ACCESS_KEY.to_string(),
            handlers,
            upstream_timeout: Duration::from_secs(10),
            recovery_window: Duration::from_secs(30),
            close_frame_is_final: false,
            outbound_limit: BufferLimit::OUTBOUND,
            reliable_limit: BufferLimit::RELIABLE,
            origin: "localhost".into(),
            on_webhook: None,
            tunnel_keepalive: Duration::from_secs(30),
            limits: Limits::default(),
        }
    }
}

/// Event-handler settings that send every hub's events to `url` (connect, connected,
/// disconnected, every user event).
pub fn handler_for_all(url: &str) -> HandlerSettings {
    HandlerSettings::all_events("*", url)
}

/// The connection string for an emulator listening on `addr` with `key` (`localhost` for a
/// loopback or unspecified address).
pub fn connection_string(addr: SocketAddr, key: &str) -> String {
    if addr.ip().is_unspecified() || addr.ip().is_loopback() {
        ConnectionString::local(addr.port(), key).to_secret_string()
    } else {
        literal_connection_string(addr, key)
    }
}

/// The same with the literal address: no `localhost` resolution (IPv6 first) in tests.
fn literal_connection_string(addr: SocketAddr, key: &str) -> String {
    ConnectionString::new(
        &format!("http://{addr}"),
        AccessKey::new(key),
        Some(addr.port()),
    )
    .expect("an http endpoint with a socket address is valid")
    .to_secret_string()
}

/// Why an emulator could not start.
#[derive(Debug, thiserror::Error)]
pub enum EmulatorError {
    #[error(
        "the emulator's access key is public: binding {0} (not loopback) needs --allow-public"
    )]
    PublicBind(SocketAddr),
    #[error("the emulator's access key must be at least 32 characters, without ';'")]
    AccessKey,
    #[error("emulator cannot listen on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

pub(crate) struct Shared {
    registry: hub::Registry,
    tunnels: Arc<Tunnels>,
    upstream: upstream::Upstream,
    key: AccessKey,
    recovery_window: Duration,
    close_frame_is_final: bool,
    upstream_timeout: Duration,
    outbound_limit: BufferLimit,
    reliable_limit: BufferLimit,
}

pub struct Emulator {
    listener: tokio::net::TcpListener,
    router: Router,
    key: String,
    tunnels: Arc<Tunnels>,
    shared: Arc<Shared>,
    limits: Limits,
}

/// A read-only look at a running emulator's state (the dev page's Service view).
#[derive(Clone)]
pub struct EmulatorView(Arc<Shared>);

/// One live connection, as [`EmulatorView::connections`] lists it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ConnectionInfo {
    pub hub: String,
    #[serde(rename = "connectionId")]
    pub connection_id: String,
    #[serde(rename = "userId")]
    pub user_id: Option<String>,
    pub subprotocol: Option<String>,
    pub groups: Vec<String>,
}

impl EmulatorView {
    /// Every connection of every hub, sorted by hub then connection id.
    pub fn connections(&self) -> Vec<ConnectionInfo> {
        let mut all = self.0.registry.list(|hub| {
            hub.conns
                .values()
                .map(|c| {
                    let mut groups = hub.groups_of(&c.id);
                    groups.sort();
                    ConnectionInfo {
                        hub: c.hub.clone(),
                        connection_id: c.id.clone(),
                        user_id: c.user_id.clone(),
                        subprotocol: c.subprotocol.clone(),
                        groups,
                    }
                })
                .collect::<Vec<_>>()
        });
        all.sort_by(|a, b| (&a.hub, &a.connection_id).cmp(&(&b.hub, &b.connection_id)));
        all
    }
}

impl Emulator {
    /// Binds `config.bind` (refusing a non-loopback address unless `allow_public`).
    pub async fn bind(config: EmulatorConfig) -> Result<Emulator, EmulatorError> {
        check_bind(&config, config.bind)?;
        let listener = tokio::net::TcpListener::bind(config.bind)
            .await
            .map_err(|source| EmulatorError::Listen {
                addr: config.bind,
                source,
            })?;
        Emulator::with_listener(listener, config)
    }

    /// Serves on a listener bound beforehand (its address wins over `config.bind`): lets a
    /// caller know the emulator's port before building what its handlers point at.
    pub fn with_listener(
        listener: tokio::net::TcpListener,
        config: EmulatorConfig,
    ) -> Result<Emulator, EmulatorError> {
        let addr = listener
            .local_addr()
            .map_err(|source| EmulatorError::Listen {
                addr: config.bind,
                source,
            })?;
        check_bind(&config, addr)?;
        let tunnels = Arc::new(Tunnels::with_keepalive(config.tunnel_keepalive));
        let shared = Arc::new(Shared {
            registry: hub::Registry::default(),
            upstream: upstream::Upstream::new(
                &config.access_key,
                config.handlers.clone(),
                config.upstream_timeout,
                config.origin.clone(),
                config.on_webhook.clone(),
                tunnels.clone(),
            ),
            tunnels: tunnels.clone(),
            key: AccessKey::new(config.access_key.clone()),
            recovery_window: config.recovery_window,
            close_frame_is_final: config.close_frame_is_final,
            upstream_timeout: config.upstream_timeout,
            outbound_limit: config.outbound_limit,
            reliable_limit: config.reliable_limit,
        });
        let router = Router::new()
            .route("/client/hubs/{hub}", get(client::hub_path))
            .route("/client", get(client::hub_query))
            .route("/client/", get(client::hub_query))
            .route("/api/{*rest}", any(rest::api))
            .route("/server/tunnel", get(tunnel::endpoint))
            .with_state(shared.clone());
        Ok(Emulator {
            listener,
            router,
            key: config.access_key,
            tunnels,
            shared,
            limits: config.limits,
        })
    }

    /// A read-only view of this emulator's connections, valid while it runs.
    pub fn view(&self) -> EmulatorView {
        EmulatorView(self.shared.clone())
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.listener.local_addr().expect("bound")
    }

    /// `Endpoint=http://…;Port=…;AccessKey=…;Version=1.0;` for this emulator.
    pub fn connection_string(&self) -> String {
        connection_string(self.local_addr(), &self.key)
    }

    /// Until SIGTERM / Ctrl-C, on the hardened listener (timeouts, connection cap, nodelay).
    pub async fn run(self) -> std::io::Result<()> {
        self.run_until(crate::runtime::shutdown_signal()).await
    }

    pub async fn run_until(
        self,
        shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        crate::runtime::listener::serve(self.listener, self.router, self.limits, shutdown).await
    }

    /// Binds and serves in the background (tests, embedding); stops when the handle is dropped.
    pub async fn start(config: EmulatorConfig) -> Result<EmulatorHandle, EmulatorError> {
        Ok(Emulator::bind(config).await?.spawn())
    }

    /// Serves in the background; stops when the handle is dropped.
    pub fn spawn(self) -> EmulatorHandle {
        let emulator = self;
        let local_addr = emulator.local_addr();
        let connection_string = literal_connection_string(local_addr, &emulator.key);
        let tunnels = emulator.tunnels.clone();
        let task = tokio::spawn(async move {
            if let Err(e) = emulator.run_until(std::future::pending()).await {
                tracing::error!("emulator stopped: {e}");
            }
        });
        EmulatorHandle {
            local_addr,
            connection_string,
            task,
            tunnels,
        }
    }
}

fn check_bind(config: &EmulatorConfig, addr: SocketAddr) -> Result<(), EmulatorError> {
    if !addr.ip().is_loopback() {
        if !config.allow_public {
            return Err(EmulatorError::PublicBind(addr));
        }
        let warning = format!(
            "WARNING: the Web PubSub emulator listens on {addr} with a PUBLIC access key: anyone who can reach it can connect, send and manage connections"
        );
        eprintln!("{warning}");
        tracing::warn!("{warning}");
    }
    if config.access_key.len() < 32 || config.access_key.contains(';') {
        return Err(EmulatorError::AccessKey);
    }
    Ok(())
}

/// A running emulator; dropping it stops the listener.
pub struct EmulatorHandle {
    pub local_addr: SocketAddr,
    connection_string: String,
    task: tokio::task::JoinHandle<()>,
    tunnels: Arc<Tunnels>,
}

impl EmulatorHandle {
    pub fn connection_string(&self) -> &str {
        &self.connection_string
    }

    /// `http://ip:port`
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.local_addr)
    }

    /// The tunnel connections (`/server/tunnel`), and test hooks to rebalance, reconnect and
    /// close them.
    pub fn tunnels(&self) -> &Tunnels {
        &self.tunnels
    }
}

impl Drop for EmulatorHandle {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Shared {
    pub(crate) fn context(
        &self,
        hub: &str,
        id: &str,
        user: Option<&str>,
        event: &str,
        subprotocol: Option<&str>,
    ) -> EventContext {
        // The state is sent verbatim by `Upstream::call`: the service treats it as opaque.
        EventContext::new(hub, event, id, self.registry.next_ce_id())
            .with_user_id(user)
            .with_subprotocol(subprotocol)
            .with_origin(self.upstream.origin())
    }

    pub(crate) fn conn_context(&self, conn: &Conn, event: &str) -> EventContext {
        self.context(
            &conn.hub,
            &conn.id,
            conn.user_id.as_deref(),
            event,
            conn.subprotocol.as_deref(),
        )
    }

    /// Sends a user event upstream; Ok is the reply to relay (None: nothing).
    pub(crate) async fn user_event(
        &self,
        conn: &Conn,
        name: &str,
        data: EventData,
    ) -> Result<Option<EventData>, UserEventError> {
        let event = Event::User(UserEvent {
            name: name.into(),
            data,
        });
        if !self.upstream.handles(&conn.hub, &event, name) {
            return Err(UserEventError::NoHandler(name.to_string()));
        }
        let ctx = self.conn_context(conn, name);
        let reply = self
            .upstream
            .call(&ctx, &event, conn.state().as_deref(), 1)
            .await?;
        if !reply.status.is_success() {
            return Err(UserEventError::Status(reply.status));
        }
        conn.set_state(reply.state.clone());
        reply_data(&reply)
    }

    /// Removes a connection for good and tells the event handler (once, after `connected`).
    pub(crate) async fn finish(&self, conn: &Arc<Conn>, reason: &str) {
        conn.close_with(reason);
        let removed = self.registry.with(&conn.hub, |h| {
            let was = h.conns.remove(&conn.id).is_some();
            h.leave_all(&conn.id);
            was
        });
        if !removed {
            return;
        }
        if let Some(hook) = conn.take_connected_hook() {
            let _ = tokio::time::timeout(self.upstream_timeout * 4, hook).await;
        }
        if self.upstream.handles_system(&conn.hub, "disconnected") {
            let ctx = self.conn_context(conn, "disconnected");
            let ev = Event::Disconnected(DisconnectedRequest {
                reason: Some(reason.to_string()),
                mqtt: None,
            });
            let _ = self
                .upstream
                .call(&ctx, &ev, conn.state().as_deref(), 3)
                .await;
        }
    }

    /// Server-initiated close: a `disconnected` message, then close 1008 (the client does not
    /// try to recover). A connection without a socket ends at once.
    pub(crate) fn close(self: &Arc<Self>, conn: &Arc<Conn>, reason: &str) {
        if !conn.close_with(reason) {
            return;
        }
        let mut goodbye = Vec::new();
        if conn.proto != Proto::Simple {
            let msg =
                serde_json::json!({"type": "system", "event": "disconnected", "message": reason});
            goodbye.push(Frame::text(msg.to_string()));
        }
        goodbye.push(Frame::Close(1008, reason.to_string()));
        conn.send_goodbye(goodbye);
        if !conn.is_attached() {
            let (s, c, r) = (self.clone(), conn.clone(), reason.to_string());
            tokio::spawn(async move { s.finish(&c, &r).await });
        }
    }

    pub(crate) fn send_to_group(
        self: &Arc<Self>,
        hub: &str,
        group: &str,
        origin: &Origin,
        data: &EventData,
        exclude: &[String],
    ) {
        let members = self.registry.with(hub, |h| h.members(group));
        self.deliver(members, origin, data, exclude);
    }

    /// Queues `data` for each connection; never waits, so one client that does not read
    /// neither blocks nor slows the others: over its bound it is closed instead.
    pub(crate) fn deliver(
        self: &Arc<Self>,
        conns: Vec<Arc<Conn>>,
        origin: &Origin,
        data: &EventData,
        exclude: &[String],
    ) {
        let msg = conn::Outgoing::new(origin, data);
        for c in conns.into_iter().filter(|c| !exclude.contains(&c.id)) {
            if let Err(full) = c.send(&msg) {
                self.overflowed(&c, full);
            }
        }
    }

    /// A connection closed by an overflow: an attached socket was cut and its session finishes
    /// the connection; a detached one (reliable, awaiting recovery) is finished here.
    pub(crate) fn overflowed(self: &Arc<Self>, conn: &Arc<Conn>, full: conn::Overflow) {
        if !conn.is_attached() {
            let (s, c) = (self.clone(), conn.clone());
            tokio::spawn(async move { s.finish(&c, full.reason).await });
        }
    }
}

/// Why a user event got no usable answer: the client's ack or `invokeResponse` error message
/// (a simple client's close reason).
#[derive(Debug, thiserror::Error)]
pub(crate) enum UserEventError {
    #[error("No event handler for user event {0:?}.")]
    NoHandler(String),
    #[error(transparent)]
    Upstream(#[from] upstream::UpstreamError),
    #[error("The event handler answered {0}.")]
    Status(http::StatusCode),
    #[error("The event handler returned invalid JSON: {0}")]
    InvalidJson(serde_json::Error),
    #[error("The event handler returned unsupported content type {0:?}.")]
    UnsupportedType(String),
}

/// A user-event handler's 2xx answer as data for the client (text, JSON, binary by media type).
fn reply_data(reply: &UpstreamReply) -> Result<Option<EventData>, UserEventError> {
    if reply.status == http::StatusCode::NO_CONTENT || reply.body.is_empty() {
        return Ok(None);
    }
    let media = crate::protocol::media_type(
        reply
            .content_type
            .as_deref()
            .unwrap_or("application/octet-stream"),
    );
    match media.as_str() {
        "text/plain" => Ok(Some(EventData::Text(
            String::from_utf8_lossy(&reply.body).into(),
        ))),
        "application/json" => serde_json::from_slice(&reply.body)
            .map(|v| Some(EventData::Json(v)))
            .map_err(UserEventError::InvalidJson),
        "application/octet-stream" => Ok(Some(EventData::Binary(reply.body.clone()))),
        other => Err(UserEventError::UnsupportedType(other.to_string())),
    }
}
