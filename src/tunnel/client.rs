//! The tunnel's connections. The first one must connect (a clear error otherwise); after that
//! every connection reconnects after any drop — at once, then with a capped back-off, a fresh
//! token each attempt — until the service sends `ConnectionClose`. `ConnectionReconnect` moves a
//! connection, `ConnectionRebalance` adds one. Each line the user needs goes to the terminal.

use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::{Error as WsError, Message as WsMessage};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use super::dial::{dial_url, Dial};
use super::forward::forward_in_full;
use super::frame::{decode_frame, Connected, Message, Redirect};
use super::{Observer, TunnelConfig, TunnelError, TunnelEvent};

type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Our own pings, to notice a dead path; nothing heard for [`IDLE`] drops the connection.
const PING_EVERY: Duration = Duration::from_secs(15);
const IDLE: Duration = Duration::from_secs(45);
/// Retries after the immediate one: 1 s, 2 s, 4 s, … capped.
const BACKOFF_CAP: Duration = Duration::from_secs(10);

struct Shared {
    config: TunnelConfig,
    /// `sub` of every connection's token: one id per tunnel.
    tunnel_id: String,
    http: reqwest::Client,
    observer: Option<Observer>,
}

impl Shared {
    fn tell(&self, event: impl FnOnce() -> TunnelEvent) {
        if let Some(o) = &self.observer {
            o(event());
        }
    }
}

/// Runs the tunnel until the service closes every connection (an error) or the first connect
/// fails. Ctrl-C is the caller's to select on.
pub async fn run(config: TunnelConfig) -> Result<(), TunnelError> {
    start(config, None).await
}

/// [`run`], telling `observer` each connection change and each forwarded webhook in full.
pub async fn run_observed(config: TunnelConfig, observer: Observer) -> Result<(), TunnelError> {
    start(config, Some(observer)).await
}

async fn start(config: TunnelConfig, observer: Option<Observer>) -> Result<(), TunnelError> {
    let http = reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(5))
        .build()
        .map_err(|e| TunnelError::Connect {
            endpoint: config.upstream.to_string(),
            reason: e.to_string(),
        })?;
    let shared = Arc::new(Shared {
        tunnel_id: uuid::Uuid::new_v4().to_string(),
        config,
        http,
        observer,
    });
    let first = Dial {
        endpoint: shared.config.connection_string.origin().to_string(),
        target: None,
    };
    println!(
        "hubhook tunnel: connecting to {} (hub {:?}), upstream {}",
        first.endpoint,
        shared.config.hub,
        redact_query(&shared.config.upstream)
    );
    let (socket, connected) = connect_told(&shared, &first).await?;
    shared.tell(|| TunnelEvent::Connected {
        connection_id: connected.connection_id.clone(),
        endpoint: describe(&first),
    });
    println!(
        "hubhook tunnel: connected (connection {}); forwarding webhooks to {}",
        connected.connection_id,
        redact_query(&shared.config.upstream)
    );
    println!("requests (method, path, event, status, time):");
    let (spawn_tx, mut spawn_rx) = mpsc::unbounded_channel::<Dial>();
    let mut slots = JoinSet::new();
    slots.spawn(slot(
        shared.clone(),
        first,
        Some((socket, connected)),
        spawn_tx.clone(),
    ));
    let mut last_close = String::new();
    loop {
        tokio::select! {
            ended = slots.join_next() => match ended {
                Some(Ok(message)) => {
                    last_close = message;
                    if slots.is_empty() {
                        return Err(TunnelError::Closed(last_close));
                    }
                }
                Some(Err(e)) => tracing::error!("tunnel connection task failed: {e}"),
                None => return Err(TunnelError::Closed(last_close)),
            },
            Some(dial) = spawn_rx.recv() => {
                slots.spawn(slot(shared.clone(), dial, None, spawn_tx.clone()));
            }
        }
    }
}

/// `?…` of the upstream hidden: it may hold a function key.
fn redact_query(u: &url::Url) -> String {
    let mut u = u.clone();
    if u.query().is_some() {
        u.set_query(Some("…"));
    }
    u.to_string()
}

fn describe(dial: &Dial) -> String {
    match &dial.target {
        Some(t) => format!("{} (target {t})", dial.endpoint),
        None => dial.endpoint.clone(),
    }
}

/// One connection's life, reconnects included; returns the service's close message.
async fn slot(
    shared: Arc<Shared>,
    mut dial: Dial,
    mut socket: Option<(Socket, Connected)>,
    spawn: mpsc::UnboundedSender<Dial>,
) -> String {
    let mut failures: u32 = 0;
    loop {
        let (ws, connected) = match socket.take() {
            Some(s) => s,
            None => match reconnect(&shared, &dial, &mut failures).await {
                Some(s) => s,
                None => continue,
            },
        };
        match serve(&shared, ws, &spawn).await {
            End::Dropped(why) => {
                println!(
                    "hubhook tunnel: connection {} lost ({why}); reconnecting",
                    connected.connection_id
                );
                shared.tell(|| TunnelEvent::Lost {
                    connection_id: connected.connection_id.clone(),
                    reason: why,
                });
                if failures > 0 {
                    tokio::time::sleep(backoff(failures)).await;
                }
                failures = failures.saturating_add(1);
            }
            End::Reconnect(r) => {
                println!(
                    "hubhook tunnel: service asked connection {} to reconnect to {}{}",
                    connected.connection_id,
                    describe(&redirect_dial(&dial, &r)),
                    reason(&r.message)
                );
                dial = redirect_dial(&dial, &r);
                shared.tell(|| TunnelEvent::Moved {
                    connection_id: connected.connection_id.clone(),
                    endpoint: describe(&dial),
                });
                failures = 0;
            }
            End::Close(message) => {
                println!(
                    "hubhook tunnel: service closed connection {}{}",
                    connected.connection_id,
                    reason(&message)
                );
                shared.tell(|| TunnelEvent::Closed {
                    connection_id: connected.connection_id.clone(),
                    message: message.clone(),
                });
                return message;
            }
        }
    }
}

/// One reconnect attempt, told to the terminal and the observer. `None`: it failed, and the
/// back-off has been waited.
async fn reconnect(
    shared: &Shared,
    dial: &Dial,
    failures: &mut u32,
) -> Option<(Socket, Connected)> {
    match connect_told(shared, dial).await {
        Ok((ws, c)) => {
            println!(
                "hubhook tunnel: connected to {} (connection {})",
                describe(dial),
                c.connection_id
            );
            shared.tell(|| TunnelEvent::Connected {
                connection_id: c.connection_id.clone(),
                endpoint: describe(dial),
            });
            *failures = 0;
            Some((ws, c))
        }
        Err(e) => {
            let wait = backoff(*failures);
            *failures = failures.saturating_add(1);
            println!(
                "hubhook tunnel: reconnect failed: {e}; retrying in {:.0} s",
                wait.as_secs_f64().max(1.0)
            );
            shared.tell(|| TunnelEvent::RetryFailed {
                error: e.to_string(),
                retry_in: wait.max(Duration::from_secs(1)),
            });
            tokio::time::sleep(wait.max(Duration::from_secs(1))).await;
            None
        }
    }
}

fn reason(m: &str) -> String {
    if m.is_empty() {
        String::new()
    } else {
        format!(": {m}")
    }
}

fn redirect_dial(current: &Dial, r: &Redirect) -> Dial {
    Dial {
        endpoint: if r.endpoint.is_empty() {
            current.endpoint.clone()
        } else {
            r.endpoint.clone()
        },
        target: (!r.target_id.is_empty()).then(|| r.target_id.clone()),
    }
}

/// 0 (the first retry is immediate), then 1 s, 2 s, 4 s, … up to [`BACKOFF_CAP`].
fn backoff(failures: u32) -> Duration {
    if failures == 0 {
        return Duration::ZERO;
    }
    Duration::from_secs(1u64 << (failures - 1).min(6)).min(BACKOFF_CAP)
}

/// [`connect`], telling the observer it dials.
async fn connect_told(shared: &Shared, dial: &Dial) -> Result<(Socket, Connected), TunnelError> {
    shared.tell(|| TunnelEvent::Connecting {
        endpoint: describe(dial),
    });
    connect(shared, dial).await
}

/// Dials and waits for `ConnectionConnected`, both under the connect timeout.
async fn connect(shared: &Shared, dial: &Dial) -> Result<(Socket, Connected), TunnelError> {
    let c = &shared.config;
    let url = dial_url(
        dial,
        &c.hub,
        &c.connection_string.access_key,
        &shared.tunnel_id,
    )?;
    let endpoint = describe(dial);
    let request = url
        .into_client_request()
        .map_err(|_| TunnelError::Endpoint(dial.endpoint.clone()))?;
    let attempt = async {
        // Nagle off: each answer is one small frame the service waits on; with Nagle a
        // reply sits until the previous one is acked (~3× the requests/s with it off here).
        let (mut ws, _) = tokio_tungstenite::connect_async_with_config(request, None, true)
            .await
            .map_err(|e| refused_or(e, &endpoint))?;
        let connected = loop {
            match ws.next().await {
                Some(Ok(WsMessage::Binary(data))) => {
                    for m in decode_frame(&data) {
                        match m {
                            Ok(Message::ConnectionConnected(c)) => return Ok((ws, c)),
                            Ok(other) => tracing::info!(
                                "tunnel: type {} before ConnectionConnected, skipped",
                                other.type_id()
                            ),
                            Err(e) => tracing::warn!("tunnel: malformed frame skipped: {e}"),
                        }
                    }
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => break Err(refused_or(e, &endpoint)),
                None => {
                    break Err(TunnelError::Connect {
                        endpoint: endpoint.clone(),
                        reason: "closed before ConnectionConnected".into(),
                    })
                }
            }
        };
        connected
    };
    match tokio::time::timeout(c.connect_timeout, attempt).await {
        Ok(r) => r,
        Err(_) => Err(TunnelError::NoConnected {
            endpoint,
            timeout: c.connect_timeout,
        }),
    }
}

/// The error without the URL (it carries the token).
fn refused_or(e: WsError, endpoint: &str) -> TunnelError {
    match e {
        WsError::Http(resp) => {
            let status = resp.status().as_u16();
            TunnelError::Refused {
                status,
                hint: match status {
                    401 | 403 => " (check the connection string's access key)",
                    404 => " (is this a Web PubSub endpoint?)",
                    _ => "",
                },
            }
        }
        WsError::Io(io) => TunnelError::Connect {
            endpoint: endpoint.to_string(),
            reason: io.to_string(),
        },
        WsError::Tls(t) => TunnelError::Connect {
            endpoint: endpoint.to_string(),
            reason: format!("TLS: {t}"),
        },
        other => TunnelError::Connect {
            endpoint: endpoint.to_string(),
            reason: match other {
                WsError::Url(_) => "invalid URL".to_string(),
                o => o.to_string(),
            },
        },
    }
}

enum End {
    Dropped(String),
    Reconnect(Redirect),
    Close(String),
}

/// Reads frames until the connection ends; each `HttpRequest` is forwarded on its own task and
/// answered on this connection.
async fn serve(shared: &Arc<Shared>, ws: Socket, spawn: &mpsc::UnboundedSender<Dial>) -> End {
    let (sink, mut stream) = ws.split();
    let (tx, rx) = mpsc::unbounded_channel::<WsMessage>();
    let writer = tokio::spawn(write(sink, rx));
    let end = loop {
        let next = match tokio::time::timeout(IDLE, stream.next()).await {
            Ok(n) => n,
            Err(_) => break End::Dropped(format!("nothing heard for {IDLE:?}")),
        };
        let data = match next {
            Some(Ok(WsMessage::Binary(data))) => data,
            Some(Ok(WsMessage::Text(_))) => {
                tracing::warn!("tunnel: text frame skipped (frames are binary)");
                continue;
            }
            Some(Ok(WsMessage::Close(c))) => {
                break End::Dropped(match c {
                    Some(c) => format!("closed by the service: {} {}", c.code, c.reason),
                    None => "closed by the service".into(),
                })
            }
            Some(Ok(_)) => continue,
            Some(Err(e)) => break End::Dropped(e.to_string()),
            None => break End::Dropped("connection closed".into()),
        };
        let mut end = None;
        for m in decode_frame(&data) {
            if let Some(e) = on_message(shared, m, &tx, spawn) {
                end = Some(e);
            }
        }
        if let Some(end) = end {
            break end;
        }
    };
    drop(tx);
    // Answers still in flight are lost with the connection; the writer closes the socket.
    let _ = tokio::time::timeout(Duration::from_secs(1), writer).await;
    end
}

/// Sends what the reader queues, and a ping every [`PING_EVERY`]; closes the socket when the
/// reader lets go of its sender.
async fn write(
    mut sink: futures_util::stream::SplitSink<Socket, WsMessage>,
    mut rx: mpsc::UnboundedReceiver<WsMessage>,
) {
    let mut ping = tokio::time::interval(PING_EVERY);
    ping.tick().await;
    loop {
        let msg = tokio::select! {
            m = rx.recv() => match m { Some(m) => m, None => break },
            _ = ping.tick() => WsMessage::Ping(Default::default()),
        };
        if sink.send(msg).await.is_err() {
            break;
        }
    }
    let _ = sink.close().await;
}

/// One message from the service; `Some` when it ends this connection.
fn on_message(
    shared: &Arc<Shared>,
    m: Result<Message, super::frame::FrameError>,
    tx: &mpsc::UnboundedSender<WsMessage>,
    spawn: &mpsc::UnboundedSender<Dial>,
) -> Option<End> {
    match m {
        Ok(Message::HttpRequest(req)) => {
            let (s, tx) = (shared.clone(), tx.clone());
            tokio::spawn(async move {
                let c = &s.config;
                let (resp, forwarded) =
                    forward_in_full(&s.http, &c.upstream, c.upstream_timeout, req).await;
                println!("  {}", forwarded.log);
                // Before the answer goes: whatever the answer sets off (a `connected`
                // after this `connect`) is recorded after it. Recording is quick.
                s.tell(|| TunnelEvent::Forwarded(Arc::new(forwarded)));
                let _ = tx.send(WsMessage::Binary(
                    Message::HttpResponse(resp).encode().into(),
                ));
            });
        }
        Ok(Message::ServiceStatus { message }) => {
            tracing::info!("tunnel: service status: {message}")
        }
        Ok(Message::ConnectionRebalance(r)) => {
            let dial = Dial {
                endpoint: r.endpoint.clone(),
                target: (!r.target_id.is_empty()).then(|| r.target_id.clone()),
            };
            println!(
                "hubhook tunnel: service asked for another connection to {}{}",
                describe(&dial),
                reason(&r.message)
            );
            shared.tell(|| TunnelEvent::Added {
                endpoint: describe(&dial),
            });
            let _ = spawn.send(dial);
        }
        Ok(Message::ConnectionReconnect(r)) => return Some(End::Reconnect(r)),
        Ok(Message::ConnectionClose { message }) => return Some(End::Close(message)),
        Ok(Message::ConnectionConnected(c)) => {
            tracing::info!("tunnel: repeated ConnectionConnected {}", c.connection_id)
        }
        Ok(Message::HttpResponse(r)) => tracing::warn!(
            "tunnel: HttpResponse {} from the service skipped (no request sent)",
            r.ack_id
        ),
        Err(e) => {
            println!("hubhook tunnel: malformed frame skipped: {e}")
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_is_immediate_then_capped() {
        let b: Vec<u64> = (0..8).map(|n| backoff(n).as_secs()).collect();
        assert_eq!(b, [0, 1, 2, 4, 8, 10, 10, 10]);
    }
}
