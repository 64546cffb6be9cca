//! What the service keeps per hub: connections, groups, roles, and each connection's outbound
//! queue (with the reliable protocol's sequence ids and unacked buffer).

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use bytes::Bytes;
use serde_json::{json, Value};
use tokio::sync::mpsc;

use crate::protocol::{ConnectionState, EventData};

pub const JSON_V1: &str = "json.webpubsub.azure.v1";
pub const JSON_RELIABLE_V1: &str = "json.reliable.webpubsub.azure.v1";

/// The reliable buffer's limits (client-protocol §6): overflow closes the connection for good.
const MAX_UNACKED: usize = 1000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Proto {
    Json,
    Reliable,
    /// No (or a custom) subprotocol: raw frames, every frame a `message` event.
    Simple,
}

/// One frame for a client's socket.
#[derive(Debug, Clone)]
pub enum Frame {
    Text(String),
    Binary(Bytes),
    Close(u16, String),
}

/// Where a data message came from, as the JSON protocols tell the client.
#[derive(Debug, Clone)]
pub enum Origin {
    Server,
    Group {
        group: String,
        from_user: Option<String>,
    },
}

struct Outbox {
    tx: Option<mpsc::UnboundedSender<Frame>>,
    next_seq: u64,
    unacked: VecDeque<(u64, String)>,
    /// Bumped on every attach, so a stale detach timer can tell it lost the race.
    generation: u64,
    detached_at: Option<Instant>,
}

pub struct Conn {
    pub id: String,
    pub hub: String,
    pub user_id: Option<String>,
    pub proto: Proto,
    pub subprotocol: Option<String>,
    pub reconnection_token: String,
    pub roles: Mutex<HashSet<String>>,
    pub state: Mutex<ConnectionState>,
    acks: Mutex<HashSet<u64>>,
    out: Mutex<Outbox>,
}

impl Conn {
    pub fn new(
        id: String,
        hub: String,
        user_id: Option<String>,
        proto: Proto,
        subprotocol: Option<String>,
        roles: HashSet<String>,
        state: ConnectionState,
    ) -> Conn {
        Conn {
            id,
            hub,
            user_id,
            proto,
            subprotocol,
            reconnection_token: uuid::Uuid::new_v4().simple().to_string(),
            roles: Mutex::new(roles),
            state: Mutex::new(state),
            acks: Mutex::new(HashSet::new()),
            out: Mutex::new(Outbox {
                tx: None,
                next_seq: 1,
                unacked: VecDeque::new(),
                generation: 0,
                detached_at: None,
            }),
        }
    }

    /// Attaches a socket; for the reliable protocol, replays what the client has not acked.
    pub fn attach(&self, tx: mpsc::UnboundedSender<Frame>) -> u64 {
        let mut out = self.out.lock().unwrap();
        for (_, frame) in &out.unacked {
            let _ = tx.send(Frame::Text(frame.clone()));
        }
        out.tx = Some(tx);
        out.generation += 1;
        out.detached_at = None;
        out.generation
    }

    /// The socket went away without a final close: keep the connection for recovery.
    pub fn detach(&self, generation: u64) -> bool {
        let mut out = self.out.lock().unwrap();
        if out.generation != generation {
            return false;
        }
        out.tx = None;
        out.detached_at = Some(Instant::now());
        true
    }

    pub fn is_detached_since(&self, generation: u64) -> bool {
        let out = self.out.lock().unwrap();
        out.generation == generation && out.tx.is_none()
    }

    /// A control frame (connected, ack, pong, disconnected): never sequenced or buffered.
    pub fn send_control(&self, v: Value) {
        self.send_frame(Frame::Text(v.to_string()));
    }

    pub fn send_frame(&self, f: Frame) {
        if let Some(tx) = &self.out.lock().unwrap().tx {
            let _ = tx.send(f);
        }
    }

    /// Delivers a data message in this connection's protocol. Returns false when the reliable
    /// buffer overflowed (the caller closes the connection).
    pub fn send_data(&self, origin: &Origin, data: &EventData) -> bool {
        if self.proto == Proto::Simple {
            let frame = match data {
                EventData::Text(s) => Frame::Text(s.clone()),
                EventData::Json(v) => Frame::Text(v.to_string()),
                EventData::Binary(b) => Frame::Binary(b.clone()),
            };
            self.send_frame(frame);
            return true;
        }
        let (data_type, data) = match data {
            EventData::Text(s) => ("text", Value::from(s.as_str())),
            EventData::Json(v) => ("json", v.clone()),
            EventData::Binary(b) => ("binary", Value::from(B64.encode(b))),
        };
        let mut msg = match origin {
            Origin::Server => {
                json!({"type": "message", "from": "server", "dataType": data_type, "data": data})
            }
            Origin::Group { group, from_user } => {
                let mut m = json!({"type": "message", "from": "group", "group": group, "dataType": data_type, "data": data});
                if let Some(u) = from_user {
                    m["fromUserId"] = u.clone().into();
                }
                m
            }
        };
        let mut out = self.out.lock().unwrap();
        if self.proto == Proto::Reliable {
            if out.unacked.len() >= MAX_UNACKED {
                return false;
            }
            let seq = out.next_seq;
            out.next_seq += 1;
            msg["sequenceId"] = seq.into();
            let text = msg.to_string();
            out.unacked.push_back((seq, text.clone()));
            if let Some(tx) = &out.tx {
                let _ = tx.send(Frame::Text(text));
            }
        } else if let Some(tx) = &out.tx {
            let _ = tx.send(Frame::Text(msg.to_string()));
        }
        true
    }

    pub fn sequence_ack(&self, upto: u64) {
        let mut out = self.out.lock().unwrap();
        while out.unacked.front().is_some_and(|(s, _)| *s <= upto) {
            out.unacked.pop_front();
        }
    }

    /// True the first time an ackId is seen on this connection.
    pub fn first_ack(&self, ack_id: u64) -> bool {
        self.acks.lock().unwrap().insert(ack_id)
    }

    pub fn has_role(&self, permission: &str, group: &str) -> bool {
        let roles = self.roles.lock().unwrap();
        roles.contains(&format!("webpubsub.{permission}"))
            || roles.contains(&format!("webpubsub.{permission}.{group}"))
    }
}

#[derive(Default)]
pub struct HubState {
    pub conns: HashMap<String, Arc<Conn>>,
    pub groups: HashMap<String, HashSet<String>>,
}

impl HubState {
    pub fn join(&mut self, group: &str, conn: &str) {
        self.groups
            .entry(group.to_string())
            .or_default()
            .insert(conn.to_string());
    }

    pub fn leave(&mut self, group: &str, conn: &str) {
        if let Some(members) = self.groups.get_mut(group) {
            members.remove(conn);
            if members.is_empty() {
                self.groups.remove(group);
            }
        }
    }

    pub fn leave_all(&mut self, conn: &str) {
        self.groups.retain(|_, m| {
            m.remove(conn);
            !m.is_empty()
        });
    }

    pub fn groups_of(&self, conn: &str) -> Vec<String> {
        self.groups
            .iter()
            .filter(|(_, m)| m.contains(conn))
            .map(|(g, _)| g.clone())
            .collect()
    }

    pub fn members(&self, group: &str) -> Vec<Arc<Conn>> {
        self.groups
            .get(group)
            .map(|m| {
                m.iter()
                    .filter_map(|c| self.conns.get(c).cloned())
                    .collect()
            })
            .unwrap_or_default()
    }

    pub fn of_user(&self, user: &str) -> Vec<Arc<Conn>> {
        self.conns
            .values()
            .filter(|c| c.user_id.as_deref() == Some(user))
            .cloned()
            .collect()
    }
}

/// Every hub of the emulator.
#[derive(Default)]
pub struct Registry {
    hubs: Mutex<HashMap<String, HubState>>,
    ce_ids: AtomicU64,
}

impl Registry {
    /// Runs `f` on the hub (hub names are case-insensitive in the service).
    pub fn with<R>(&self, hub: &str, f: impl FnOnce(&mut HubState) -> R) -> R {
        let mut hubs = self.hubs.lock().unwrap();
        f(hubs.entry(hub.to_ascii_lowercase()).or_default())
    }

    pub fn next_ce_id(&self) -> String {
        (self.ce_ids.fetch_add(1, Ordering::Relaxed) + 1).to_string()
    }
}
