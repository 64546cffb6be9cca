//! One logical client connection: identity, roles, connection state, the ackIds it has used, and
//! its outbound queue — for the reliable protocol with sequence ids and the unacked buffer that
//! survives a dropped socket until the client recovers it.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Mutex;
use std::time::Instant;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use bytes::Bytes;
use serde_json::{json, Value};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::protocol::EventData;

pub const JSON_V1: &str = "json.webpubsub.azure.v1";
pub const JSON_RELIABLE_V1: &str = "json.reliable.webpubsub.azure.v1";

/// The reliable buffer's limits (client-protocol §6): overflow closes the connection for good.
const MAX_UNACKED: usize = 1000;
const MAX_UNACKED_BYTES: usize = 16 * 1024 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Proto {
    Json,
    Reliable,
    /// No (or a custom) subprotocol: raw frames, every frame a `message` event.
    Simple,
}

impl Proto {
    /// The protocol for a negotiated subprotocol (anything but the two JSON ones is "simple").
    pub fn of(subprotocol: Option<&str>) -> Proto {
        match subprotocol {
            Some(JSON_RELIABLE_V1) => Proto::Reliable,
            Some(JSON_V1) => Proto::Json,
            _ => Proto::Simple,
        }
    }
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

/// Why a data message was not queued: the caller closes the connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BufferFull;

struct Outbox {
    tx: Option<mpsc::UnboundedSender<Frame>>,
    next_seq: u64,
    unacked: VecDeque<(u64, String)>,
    unacked_bytes: usize,
    /// Bumped on every attach, so a stale session (or recovery timer) can tell it lost the race.
    generation: u64,
    detached_at: Option<Instant>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum AckState {
    InFlight,
    Done,
}

pub struct Conn {
    pub id: String,
    pub hub: String,
    pub user_id: Option<String>,
    pub proto: Proto,
    pub subprotocol: Option<String>,
    pub reconnection_token: String,
    pub roles: Mutex<HashSet<String>>,
    /// `ce-connectionState` exactly as the event handler set it: an opaque string.
    state: Mutex<Option<String>>,
    acks: Mutex<HashMap<u64, AckState>>,
    out: Mutex<Outbox>,
    /// Set (with the reason) once the connection is over: server close, protocol error, final
    /// client close. A closed connection cannot be recovered.
    closed: Mutex<Option<String>>,
    /// The `connected` webhook in flight, so `disconnected` never overtakes it.
    connected_hook: Mutex<Option<JoinHandle<()>>>,
}

impl Conn {
    pub fn new(
        id: String,
        hub: String,
        user_id: Option<String>,
        subprotocol: Option<String>,
        roles: HashSet<String>,
        state: Option<String>,
    ) -> Conn {
        Conn {
            id,
            hub,
            user_id,
            proto: Proto::of(subprotocol.as_deref()),
            subprotocol,
            reconnection_token: uuid::Uuid::new_v4().simple().to_string(),
            roles: Mutex::new(roles),
            state: Mutex::new(state),
            acks: Mutex::new(HashMap::new()),
            out: Mutex::new(Outbox {
                tx: None,
                next_seq: 1,
                unacked: VecDeque::new(),
                unacked_bytes: 0,
                generation: 0,
                detached_at: None,
            }),
            closed: Mutex::new(None),
            connected_hook: Mutex::new(None),
        }
    }

    pub fn state(&self) -> Option<String> {
        self.state.lock().unwrap().clone()
    }

    /// Applies a blocking event's `ce-connectionState` answer (an empty value clears it).
    pub fn set_state(&self, header: Option<String>) {
        if let Some(v) = header {
            *self.state.lock().unwrap() = Some(v).filter(|v| !v.is_empty());
        }
    }

    /// Attaches a socket (a new one, or a recovering one): the reliable protocol first replays
    /// what the client has not acked. A socket still attached is told to go away.
    pub fn attach(&self, tx: mpsc::UnboundedSender<Frame>) -> u64 {
        let mut out = self.out.lock().unwrap();
        if let Some(old) = out.tx.take() {
            let _ = old.send(Frame::Close(
                1000,
                "Superseded by a recovered socket.".into(),
            ));
        }
        for (_, frame) in &out.unacked {
            let _ = tx.send(Frame::Text(frame.clone()));
        }
        out.tx = Some(tx);
        out.generation += 1;
        out.detached_at = None;
        out.generation
    }

    /// The socket of `generation` went away. Returns false if a newer socket took over.
    pub fn detach(&self, generation: u64) -> bool {
        let mut out = self.out.lock().unwrap();
        if out.generation != generation {
            return false;
        }
        out.tx = None;
        out.detached_at = Some(Instant::now());
        true
    }

    /// Still waiting for a recovery since the socket of `generation` dropped.
    pub fn is_detached_since(&self, generation: u64) -> bool {
        let out = self.out.lock().unwrap();
        out.generation == generation && out.tx.is_none()
    }

    pub fn is_attached(&self) -> bool {
        self.out.lock().unwrap().tx.is_some()
    }

    /// Marks the connection over; false if it already was (the first reason stays).
    pub fn close_with(&self, reason: &str) -> bool {
        let mut closed = self.closed.lock().unwrap();
        if closed.is_some() {
            return false;
        }
        *closed = Some(reason.to_string());
        true
    }

    pub fn is_closed(&self) -> bool {
        self.closed.lock().unwrap().is_some()
    }

    pub fn closed_reason(&self) -> Option<String> {
        self.closed.lock().unwrap().clone()
    }

    pub fn set_connected_hook(&self, task: JoinHandle<()>) {
        *self.connected_hook.lock().unwrap() = Some(task);
    }

    pub fn take_connected_hook(&self) -> Option<JoinHandle<()>> {
        self.connected_hook.lock().unwrap().take()
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

    /// Delivers a data message in this connection's protocol: raw frames for simple clients, a
    /// `message` envelope for the JSON ones (with the next `sequenceId`, kept until acked, for
    /// the reliable one). Messages for a detached non-reliable connection are dropped.
    pub fn send_data(&self, origin: &Origin, data: &EventData) -> Result<(), BufferFull> {
        if self.proto == Proto::Simple {
            let frame = match data {
                EventData::Text(s) => Frame::Text(s.clone()),
                EventData::Json(v) => Frame::Text(v.to_string()),
                EventData::Binary(b) => Frame::Binary(b.clone()),
            };
            self.send_frame(frame);
            return Ok(());
        }
        let mut msg = envelope(origin, data);
        let mut out = self.out.lock().unwrap();
        if self.proto == Proto::Reliable {
            let seq = out.next_seq;
            msg["sequenceId"] = seq.into();
            let text = msg.to_string();
            if out.unacked.len() >= MAX_UNACKED
                || out.unacked_bytes + text.len() > MAX_UNACKED_BYTES
            {
                return Err(BufferFull);
            }
            out.next_seq += 1;
            out.unacked_bytes += text.len();
            out.unacked.push_back((seq, text.clone()));
            if let Some(tx) = &out.tx {
                let _ = tx.send(Frame::Text(text));
            }
        } else if let Some(tx) = &out.tx {
            let _ = tx.send(Frame::Text(msg.to_string()));
        }
        Ok(())
    }

    /// The client has every message up to `upto` (cumulative).
    pub fn sequence_ack(&self, upto: u64) {
        let mut out = self.out.lock().unwrap();
        while let Some((seq, text)) = out.unacked.front() {
            if *seq > upto {
                break;
            }
            let len = text.len();
            out.unacked.pop_front();
            out.unacked_bytes -= len;
        }
    }

    /// Starts work on `ack_id`; false means it was already used (→ a `Duplicate` ack).
    pub fn begin_ack(&self, ack_id: u64) -> bool {
        let mut acks = self.acks.lock().unwrap();
        if acks.contains_key(&ack_id) {
            return false;
        }
        acks.insert(ack_id, AckState::InFlight);
        true
    }

    /// Ends work on `ack_id`: a success is remembered (repeats are duplicates); a failure is
    /// forgotten, so the client may retry with the same id.
    pub fn end_ack(&self, ack_id: u64, success: bool) {
        let mut acks = self.acks.lock().unwrap();
        if success {
            acks.insert(ack_id, AckState::Done);
        } else {
            acks.remove(&ack_id);
        }
    }

    /// `webpubsub.{permission}` (any group) or `webpubsub.{permission}.{group}`.
    pub fn has_role(&self, permission: &str, group: &str) -> bool {
        let roles = self.roles.lock().unwrap();
        roles.contains(&format!("webpubsub.{permission}"))
            || roles.contains(&format!("webpubsub.{permission}.{group}"))
    }
}

/// `{"type":"message","from":…,"dataType":…,"data":…}` as the JSON protocols send it.
fn envelope(origin: &Origin, data: &EventData) -> Value {
    let (data_type, data) = json_data(data);
    match origin {
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
    }
}

/// `dataType` and `data` of a payload in the JSON protocols (binary as base64).
pub fn json_data(data: &EventData) -> (&'static str, Value) {
    match data {
        EventData::Text(s) => ("text", Value::from(s.as_str())),
        EventData::Json(v) => ("json", v.clone()),
        EventData::Binary(b) => ("binary", Value::from(B64.encode(b))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conn(proto: &str) -> Conn {
        Conn::new(
            "c1".into(),
            "chat".into(),
            Some("alice".into()),
            Some(proto.into()),
            HashSet::new(),
            None,
        )
    }

    fn drain(rx: &mut mpsc::UnboundedReceiver<Frame>) -> Vec<Value> {
        let mut v = Vec::new();
        while let Ok(Frame::Text(t)) = rx.try_recv() {
            v.push(serde_json::from_str(&t).unwrap());
        }
        v
    }

    #[test]
    fn reliable_sequence_ids_start_at_one_and_unacked_are_replayed() {
        let c = conn(JSON_RELIABLE_V1);
        let (tx, mut rx) = mpsc::unbounded_channel();
        let g = c.attach(tx);
        for i in 0..3 {
            c.send_data(&Origin::Server, &EventData::Text(format!("m{i}")))
                .unwrap();
        }
        let seqs: Vec<u64> = drain(&mut rx)
            .iter()
            .map(|m| m["sequenceId"].as_u64().unwrap())
            .collect();
        assert_eq!(seqs, [1, 2, 3]);
        c.sequence_ack(2);
        assert!(c.detach(g));
        c.send_data(&Origin::Server, &EventData::Text("while away".into()))
            .unwrap();
        let (tx2, mut rx2) = mpsc::unbounded_channel();
        c.attach(tx2);
        let replay: Vec<(u64, String)> = drain(&mut rx2)
            .iter()
            .map(|m| {
                (
                    m["sequenceId"].as_u64().unwrap(),
                    m["data"].as_str().unwrap().to_string(),
                )
            })
            .collect();
        assert_eq!(replay, [(3, "m2".into()), (4, "while away".into())]);
        assert!(
            !c.detach(g),
            "a stale generation cannot detach the new socket"
        );
    }

    #[test]
    fn json_protocol_has_no_sequence_ids_and_simple_gets_raw_frames() {
        let c = conn(JSON_V1);
        let (tx, mut rx) = mpsc::unbounded_channel();
        c.attach(tx);
        let origin = Origin::Group {
            group: "g".into(),
            from_user: None,
        };
        c.send_data(&origin, &EventData::Json(json!({"a": 1})))
            .unwrap();
        assert_eq!(
            drain(&mut rx),
            [json!({"type":"message","from":"group","group":"g","dataType":"json","data":{"a":1}})]
        );
        let s = conn("custom");
        assert_eq!(s.proto, Proto::Simple);
        let (tx, mut rx) = mpsc::unbounded_channel();
        s.attach(tx);
        s.send_data(&origin, &EventData::Binary(Bytes::from_static(b"\x01")))
            .unwrap();
        assert!(matches!(rx.try_recv(), Ok(Frame::Binary(b)) if b.as_ref() == b"\x01"));
    }

    #[test]
    fn reliable_buffer_overflow_is_reported() {
        let c = conn(JSON_RELIABLE_V1);
        for _ in 0..MAX_UNACKED {
            c.send_data(&Origin::Server, &EventData::Text("x".into()))
                .unwrap();
        }
        assert_eq!(
            c.send_data(&Origin::Server, &EventData::Text("x".into())),
            Err(BufferFull)
        );
    }

    #[test]
    fn failed_acks_may_be_retried_successful_ones_are_duplicates() {
        let c = conn(JSON_V1);
        assert!(c.begin_ack(1));
        assert!(!c.begin_ack(1), "in flight");
        c.end_ack(1, false);
        assert!(c.begin_ack(1), "a failed ackId can be retried");
        c.end_ack(1, true);
        assert!(!c.begin_ack(1), "a successful ackId is a duplicate");
    }
}
