//! What the dev page knows of a tunnel to a real resource (`hubhook dev` with a resource's
//! connection string): the resource's endpoint and hub, the tunnel's connections, whether it is
//! connected or reconnecting, and the last [`LOG_CAPACITY`] changes — the drops and reconnects
//! awps-tunnel's web view never shows. The forwarded webhooks themselves go to the [`Feed`].

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex};

use serde::Serialize;
use tokio::sync::broadcast;

use super::Feed;
use crate::tunnel::{Observer, TunnelEvent};

/// Connection changes kept for the page.
pub const LOG_CAPACITY: usize = 200;

/// The tunnel's state; cheap to clone.
#[derive(Clone)]
pub struct TunnelStatus {
    inner: Arc<Mutex<Snapshot>>,
    live: broadcast::Sender<Snapshot>,
}

/// What `/ui/api/service` and the live stream's `tunnel` events carry.
#[derive(Debug, Clone, Serialize)]
pub struct Snapshot {
    /// The resource's endpoint (`https://host[:port]`, never the key).
    pub endpoint: String,
    pub hub: String,
    /// Where webhooks are forwarded (the local chat function).
    pub upstream: String,
    /// `connecting` (before the first connect), `connected`, `reconnecting` (no connection
    /// up, dialling again) or `closed` (the service closed the tunnel).
    pub state: &'static str,
    /// Drops and moves since the start.
    pub reconnects: u32,
    /// Connections up now: id → endpoint (and target).
    pub connections: BTreeMap<String, String>,
    /// Newest last.
    pub log: VecDeque<LogLine>,
}

#[derive(Debug, Clone, Serialize)]
pub struct LogLine {
    pub at: String,
    /// `connected`, `lost`, `retry`, `moved`, `added`, `closed`, `connecting`.
    pub kind: &'static str,
    pub text: String,
}

impl TunnelStatus {
    pub fn new(endpoint: &str, hub: &str, upstream: &str) -> TunnelStatus {
        TunnelStatus {
            inner: Arc::new(Mutex::new(Snapshot {
                endpoint: endpoint.to_string(),
                hub: hub.to_string(),
                upstream: upstream.to_string(),
                state: "connecting",
                reconnects: 0,
                connections: BTreeMap::new(),
                log: VecDeque::new(),
            })),
            live: broadcast::channel(64).0,
        }
    }

    /// The tunnel's observer: connection changes here, forwarded webhooks to `feed`.
    pub fn observer(&self, feed: Feed) -> Observer {
        let status = self.clone();
        Arc::new(move |event| match event {
            TunnelEvent::Forwarded(f) => {
                feed.record_tunnelled(&f);
            }
            other => status.apply(other),
        })
    }

    pub fn snapshot(&self) -> Snapshot {
        self.inner.lock().unwrap().clone()
    }

    pub fn subscribe(&self) -> broadcast::Receiver<Snapshot> {
        self.live.subscribe()
    }

    fn apply(&self, event: TunnelEvent) {
        let snapshot = {
            let mut s = self.inner.lock().unwrap();
            let Some((kind, text)) = s.change(event) else {
                return;
            };
            if s.log.len() == LOG_CAPACITY {
                s.log.pop_front();
            }
            s.log.push_back(LogLine {
                at: crate::protocol::now_rfc3339(),
                kind,
                text,
            });
            s.clone()
        };
        // No open page is not an error.
        let _ = self.live.send(snapshot);
    }
}

impl Snapshot {
    /// Applies a connection change; its log line's kind and text (`None` for a forwarded
    /// webhook, which the feed records).
    fn change(&mut self, event: TunnelEvent) -> Option<(&'static str, String)> {
        Some(match event {
            TunnelEvent::Connecting { endpoint } => {
                if self.connections.is_empty() && self.state != "connecting" {
                    self.state = "reconnecting";
                }
                ("connecting", format!("dialling {endpoint}"))
            }
            TunnelEvent::Connected {
                connection_id,
                endpoint,
            } => {
                let text = format!("connection {connection_id} up ({endpoint})");
                self.connections.insert(connection_id, endpoint);
                self.state = "connected";
                ("connected", text)
            }
            TunnelEvent::Lost {
                connection_id,
                reason,
            } => {
                self.going(&connection_id);
                (
                    "lost",
                    format!("connection {connection_id} lost ({reason}); reconnecting"),
                )
            }
            TunnelEvent::RetryFailed { error, retry_in } => (
                "retry",
                format!(
                    "reconnect failed: {error}; next attempt in {:.0} s",
                    retry_in.as_secs_f64()
                ),
            ),
            TunnelEvent::Moved {
                connection_id,
                endpoint,
            } => {
                self.going(&connection_id);
                (
                    "moved",
                    format!(
                        "the service moved connection {connection_id} to {endpoint}; reconnecting"
                    ),
                )
            }
            TunnelEvent::Added { endpoint } => (
                "added",
                format!("the service asked for another connection to {endpoint}"),
            ),
            TunnelEvent::Closed {
                connection_id,
                message,
            } => {
                self.connections.remove(&connection_id);
                if self.connections.is_empty() {
                    self.state = "closed";
                }
                let why = if message.is_empty() {
                    String::new()
                } else {
                    format!(": {message}")
                };
                (
                    "closed",
                    format!("the service closed connection {connection_id}{why}"),
                )
            }
            TunnelEvent::Forwarded(_) => return None,
        })
    }

    /// A connection dropped or moved: it will be dialled again.
    fn going(&mut self, connection_id: &str) {
        self.connections.remove(connection_id);
        self.reconnects += 1;
        if self.connections.is_empty() {
            self.state = "reconnecting";
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn connected_lost_reconnected_moved_closed() {
        let t = TunnelStatus::new("http://127.0.0.1:1", "chat", "http://127.0.0.1:2");
        let mut rx = t.subscribe();
        let ev = |e| t.apply(e);
        ev(TunnelEvent::Connecting {
            endpoint: "e".into(),
        });
        assert_eq!(t.snapshot().state, "connecting");
        ev(TunnelEvent::Connected {
            connection_id: "c1".into(),
            endpoint: "e".into(),
        });
        assert_eq!(t.snapshot().state, "connected");
        ev(TunnelEvent::Lost {
            connection_id: "c1".into(),
            reason: "reset".into(),
        });
        ev(TunnelEvent::Connecting {
            endpoint: "e".into(),
        });
        ev(TunnelEvent::RetryFailed {
            error: "refused".into(),
            retry_in: Duration::from_secs(2),
        });
        let s = t.snapshot();
        assert_eq!((s.state, s.reconnects), ("reconnecting", 1));
        assert!(s.connections.is_empty());
        ev(TunnelEvent::Connected {
            connection_id: "c2".into(),
            endpoint: "e".into(),
        });
        ev(TunnelEvent::Moved {
            connection_id: "c2".into(),
            endpoint: "e (target b)".into(),
        });
        ev(TunnelEvent::Connected {
            connection_id: "c3".into(),
            endpoint: "e (target b)".into(),
        });
        let s = t.snapshot();
        assert_eq!((s.state, s.reconnects), ("connected", 2));
        assert_eq!(s.connections.keys().collect::<Vec<_>>(), ["c3"]);
        let kinds: Vec<_> = s.log.iter().map(|l| l.kind).collect();
        assert_eq!(
            kinds,
            [
                "connecting",
                "connected",
                "lost",
                "connecting",
                "retry",
                "connected",
                "moved",
                "connected"
            ]
        );
        ev(TunnelEvent::Closed {
            connection_id: "c3".into(),
            message: "bye".into(),
        });
        assert_eq!(t.snapshot().state, "closed");
        assert_eq!(rx.try_recv().unwrap().state, "connecting");
    }
}
