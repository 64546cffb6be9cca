//! The service side of the tunnel: `GET /server/tunnel` (what `hubhook tunnel` and awps-tunnel
//! dial) and delivering webhooks of hubs whose handler template starts with `tunnel:///` through
//! one of that hub's tunnel connections, round-robin.
//!
//! It never does what breaks the official client (reference §8): `ConnectionConnected` first,
//! `"Type"` always in the JSON, only binary frames, one message per frame, the body as `bin`,
//! no `Host` header. Answers are matched by `AckId`; `NotCompleted` chunks are joined; a closed
//! connection fails its pending requests at once.
//!
//! Keepalive (reference §7.2, §7.5): every [`EmulatorConfig::tunnel_keepalive`] each connection
//! gets a WebSocket ping — the real service pings its WebSockets; whether on tunnels too and how
//! often is unverified, hence the setting — and every second interval a `ServiceStatus`, which
//! clients ignore but which keeps tools beta.12–14 (whose SDK drops a connection after 120 s
//! without a *message*) from cycling; at the default 30 s that is once a minute, as §7.5 asks. A
//! connection from which nothing (pong, ping or frame) is heard for [`SILENT_INTERVALS`]
//! intervals is closed, so webhooks are not routed into a dead path.
//!
//! [`EmulatorConfig::tunnel_keepalive`]: super::EmulatorConfig::tunnel_keepalive

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::ws::rejection::WebSocketUpgradeRejection as WsRejection;
use axum::extract::ws::{Message as WsMessage, WebSocket, WebSocketUpgrade};
use axum::extract::{Query, State};
use axum::response::Response;
use bytes::{Bytes, BytesMut};
use futures_util::{SinkExt, StreamExt};
use tokio::sync::{mpsc, oneshot};

use super::auth::verify_tunnel_token;
use super::client::HandshakeError;
use super::upstream::UpstreamError;
use super::Shared;
use crate::tunnel::frame::{
    decode_frame, Connected, Headers, HttpRequest, HttpResponse, Message, Redirect,
};

/// One tunnel connection as a test (or the emulator's user) sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TunnelInfo {
    pub connection_id: String,
    pub hub: String,
    /// `target=` of the dial (after a reconnect or rebalance).
    pub target: Option<String>,
    /// The token's `sub`: the tunnel's id.
    pub tunnel_id: Option<String>,
}

struct TunnelConn {
    info: TunnelInfo,
    out: mpsc::UnboundedSender<Vec<u8>>,
    pending: Mutex<HashMap<u64, Pending>>,
}

struct Pending {
    reply: oneshot::Sender<HttpResponse>,
    body: BytesMut,
}

/// A tunnel connection silent (no pong, ping or frame) for this many keepalive intervals is
/// closed.
pub const SILENT_INTERVALS: u32 = 3;

/// Every hub's tunnel connections.
#[derive(Default)]
pub struct Tunnels {
    conns: Mutex<Vec<Arc<TunnelConn>>>,
    next: AtomicUsize,
    ack: AtomicU64,
    ids: AtomicU64,
    /// Ping interval (zero: no keepalive, as by `Default`).
    keepalive: Duration,
}

impl Tunnels {
    /// Tunnels kept alive every `keepalive` (see the module's documentation; zero: never).
    pub fn with_keepalive(keepalive: Duration) -> Self {
        Tunnels {
            keepalive,
            ..Default::default()
        }
    }

    /// The connections of `hub` (case-insensitive), oldest first.
    pub fn connections(&self, hub: &str) -> Vec<TunnelInfo> {
        self.of(hub).iter().map(|c| c.info.clone()).collect()
    }

    fn of(&self, hub: &str) -> Vec<Arc<TunnelConn>> {
        self.conns
            .lock()
            .unwrap()
            .iter()
            .filter(|c| c.info.hub.eq_ignore_ascii_case(hub))
            .cloned()
            .collect()
    }

    /// Sends a control message (reconnect, rebalance, close, status) to one connection;
    /// false if it is gone. A test hook: the real service decides these itself.
    pub fn send_control(&self, connection_id: &str, message: &Message) -> bool {
        let conn = self
            .conns
            .lock()
            .unwrap()
            .iter()
            .find(|c| c.info.connection_id == connection_id)
            .cloned();
        conn.is_some_and(|c| c.out.send(message.encode()).is_ok())
    }

    /// `ConnectionRebalance` to the hub's first connection: the client adds one with `target`.
    pub fn rebalance(&self, hub: &str, endpoint: &str, target: &str) -> bool {
        self.redirect(hub, endpoint, target, false)
    }

    /// `ConnectionReconnect` to the hub's first connection: the client replaces it.
    pub fn reconnect(&self, hub: &str, endpoint: &str, target: &str) -> bool {
        self.redirect(hub, endpoint, target, true)
    }

    fn redirect(&self, hub: &str, endpoint: &str, target: &str, replace: bool) -> bool {
        let Some(first) = self.of(hub).into_iter().next() else {
            return false;
        };
        let r = Redirect {
            target_id: target.into(),
            endpoint: endpoint.into(),
            message: "test hook".into(),
        };
        let m = if replace {
            Message::ConnectionReconnect(r)
        } else {
            Message::ConnectionRebalance(r)
        };
        self.send_control(&first.info.connection_id, &m)
    }

    /// One webhook through a tunnel connection of `hub` (round-robin), under `timeout`.
    pub(crate) async fn call(
        &self,
        hub: &str,
        method: &str,
        url: &str,
        headers: &http::HeaderMap,
        body: Bytes,
        timeout: Duration,
    ) -> Result<HttpResponse, UpstreamError> {
        let conns = self.of(hub);
        if conns.is_empty() {
            return Err(UpstreamError::Unreachable(format!(
                "no tunnel connection for hub {hub:?} (start `hubhook tunnel`)"
            )));
        }
        let conn = &conns[self.next.fetch_add(1, Ordering::Relaxed) % conns.len()];
        let ack_id = self.ack.fetch_add(1, Ordering::Relaxed) + 1;
        let mut h: Headers = Vec::new();
        for (name, value) in headers {
            if name == http::header::HOST {
                continue;
            }
            let v = String::from_utf8_lossy(value.as_bytes()).into_owned();
            match h
                .iter_mut()
                .find(|(n, _)| n.eq_ignore_ascii_case(name.as_str()))
            {
                Some((_, vs)) => vs.push(v),
                None => h.push((name.as_str().to_string(), vec![v])),
            }
        }
        let (tx, rx) = oneshot::channel();
        conn.pending.lock().unwrap().insert(
            ack_id,
            Pending {
                reply: tx,
                body: BytesMut::new(),
            },
        );
        let frame = Message::HttpRequest(HttpRequest {
            ack_id,
            local_routing: false,
            channel_name: format!("hubhook-{}", conn.info.connection_id),
            http_method: method.to_string(),
            url: url.to_string(),
            headers: h,
            body,
        })
        .encode();
        let gone = || {
            UpstreamError::Unreachable(format!(
                "tunnel connection {} closed before answering",
                conn.info.connection_id
            ))
        };
        if conn.out.send(frame).is_err() {
            conn.pending.lock().unwrap().remove(&ack_id);
            return Err(gone());
        }
        match tokio::time::timeout(timeout, rx).await {
            Ok(Ok(resp)) => Ok(resp),
            Ok(Err(_)) => Err(gone()),
            Err(_) => {
                conn.pending.lock().unwrap().remove(&ack_id);
                Err(UpstreamError::Timeout(timeout))
            }
        }
    }

    fn remove(&self, id: &str) {
        self.conns
            .lock()
            .unwrap()
            .retain(|c| c.info.connection_id != id);
    }
}

impl TunnelConn {
    /// A binary frame from the client: its answers are matched, anything else is skipped.
    fn receive(&self, data: &[u8]) {
        for m in decode_frame(data) {
            match m {
                Ok(Message::HttpResponse(r)) => self.answer(r),
                Ok(other) => {
                    tracing::debug!(target: "hubhook::emulator", "tunnel: type {} from the client ignored", other.type_id())
                }
                Err(e) => {
                    tracing::info!(target: "hubhook::emulator", "tunnel: malformed frame skipped: {e}")
                }
            }
        }
    }

    /// An `HttpResponse` frame: chunks joined until `NotCompleted` is false.
    fn answer(&self, r: HttpResponse) {
        let mut pending = self.pending.lock().unwrap();
        let Some(p) = pending.get_mut(&r.ack_id) else {
            tracing::debug!(target: "hubhook::emulator", ack_id = r.ack_id, "tunnel answer for no pending request");
            return;
        };
        p.body.extend_from_slice(&r.body);
        if r.not_completed {
            return;
        }
        let p = pending.remove(&r.ack_id).expect("present");
        let _ = p.reply.send(HttpResponse {
            body: p.body.freeze(),
            ..r
        });
    }
}

/// `GET /server/tunnel?hub=…[&target=…]&access_token=…`: 401 before the upgrade unless the token
/// is signed with the key, unexpired and for `/server/tunnel`.
pub async fn endpoint(
    State(s): State<Arc<Shared>>,
    Query(q): Query<Vec<(String, String)>>,
    ws: Result<WebSocketUpgrade, WsRejection>,
) -> Result<Response, HandshakeError> {
    let get = |k: &str| q.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
    let hub = get("hub").ok_or(HandshakeError::MissingHub)?;
    if crate::protocol::validate_hub(&hub).is_err() {
        return Err(HandshakeError::InvalidHub(hub));
    }
    let token = get("access_token").ok_or(HandshakeError::MissingToken)?;
    let tunnel_id = verify_tunnel_token(&s.key, &token)?;
    let ws = ws?;
    let n = s.tunnels.ids.fetch_add(1, Ordering::Relaxed) + 1;
    let info = TunnelInfo {
        connection_id: format!("tunnel-{n}-{}", uuid::Uuid::new_v4().simple()),
        hub,
        target: get("target"),
        tunnel_id,
    };
    Ok(ws
        .max_message_size(64 << 20)
        .on_upgrade(move |socket| session(s, info, socket)))
}

async fn session(s: Arc<Shared>, info: TunnelInfo, socket: WebSocket) {
    let (mut sink, mut stream) = socket.split();
    let connected = Message::ConnectionConnected(Connected {
        connection_id: info.connection_id.clone(),
        user_id: info.tunnel_id.clone(),
        reconnection_token: None,
    });
    if sink
        .send(WsMessage::Binary(connected.encode().into()))
        .await
        .is_err()
    {
        return;
    }
    let (tx, mut rx) = mpsc::unbounded_channel::<Vec<u8>>();
    let conn = Arc::new(TunnelConn {
        info: info.clone(),
        out: tx,
        pending: Mutex::new(HashMap::new()),
    });
    s.tunnels.conns.lock().unwrap().push(conn.clone());
    tracing::info!(target: "hubhook::emulator", hub = %info.hub, id = %info.connection_id, target = ?info.target, "tunnel connected");
    let every = s.tunnels.keepalive;
    let mut keepalive = keepalive_timer(every);
    let mut ticks: u64 = 0;
    let mut heard = tokio::time::Instant::now();
    loop {
        tokio::select! {
            _ = keepalive.tick(), if !every.is_zero() => {
                if heard.elapsed() >= every * SILENT_INTERVALS {
                    tracing::info!(target: "hubhook::emulator", id = %info.connection_id, "tunnel silent for {SILENT_INTERVALS} keepalive intervals: closed");
                    break;
                }
                ticks += 1;
                if !send_keepalive(&mut sink, every, ticks).await {
                    break;
                }
            }
            out = rx.recv() => {
                let Some(frame) = out else { break };
                // A close order is sent, then the connection ends (the client stops for good).
                let closing = matches!(crate::tunnel::frame::decode(&frame), Ok(Message::ConnectionClose { .. }));
                if sink.send(WsMessage::Binary(frame.into())).await.is_err() || closing {
                    break;
                }
            }
            inbound = stream.next() => match inbound {
                Some(Ok(WsMessage::Binary(data))) => {
                    heard = tokio::time::Instant::now();
                    conn.receive(&data);
                }
                Some(Ok(WsMessage::Close(_))) | None | Some(Err(_)) => break,
                // Pongs (and the client's own pings, answered by axum): it is alive.
                Some(Ok(_)) => heard = tokio::time::Instant::now(),
            }
        }
    }
    s.tunnels.remove(&info.connection_id);
    // Pending requests fail now (their senders drop with the map).
    conn.pending.lock().unwrap().clear();
    let _ = sink.close().await;
    tracing::info!(target: "hubhook::emulator", id = %info.connection_id, "tunnel disconnected");
}

/// Ticks every `every`, the first one `every` from now.
fn keepalive_timer(every: Duration) -> tokio::time::Interval {
    // Without keepalive the timer never fires (a day at a time).
    let period = if every.is_zero() {
        Duration::from_secs(86_400)
    } else {
        every
    };
    let mut keepalive = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
    keepalive.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    keepalive
}

/// The `ticks`-th keepalive: a ping, and a `ServiceStatus` every second time. `false`: the
/// socket did not take them in time.
async fn send_keepalive(
    sink: &mut futures_util::stream::SplitSink<WebSocket, WsMessage>,
    every: Duration,
    ticks: u64,
) -> bool {
    let mut out = vec![WsMessage::Ping(Bytes::from_static(b"hubhook"))];
    if ticks % 2 == 0 {
        let m = Message::ServiceStatus {
            message: "keepalive".into(),
        };
        out.push(WsMessage::Binary(m.encode().into()));
    }
    // A peer that stopped reading long ago may not take even a ping: bounded.
    let sent = tokio::time::timeout(every * SILENT_INTERVALS, async {
        for m in out {
            sink.send(m).await?;
        }
        Ok::<(), axum::Error>(())
    })
    .await;
    matches!(sent, Ok(Ok(())))
}
