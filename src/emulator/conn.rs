//! One logical client connection: identity, roles, connection state, the ackIds it has used, and
//! its outbound side — the attached socket's bounded queue (`queue`) and, for the reliable
//! protocol, sequence ids and the bounded unacked buffer that survives a dropped socket until the
//! client recovers it. Either bound overflowing ends the connection (`Overflow`).

use std::cell::OnceCell;
use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Mutex;
use std::time::Instant;

use axum::extract::ws::Utf8Bytes;
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use serde_json::{json, Value};
use tokio::task::JoinHandle;

pub use super::queue::Frame;
use super::queue::{BufferLimit, Outq};
use crate::protocol::EventData;

pub const JSON_V1: &str = "json.webpubsub.azure.v1";
pub const JSON_RELIABLE_V1: &str = "json.reliable.webpubsub.azure.v1";

/// Close code for a client over a buffer bound: 1008 (PolicyViolation), as Microsoft's emulator
/// closes on a full reliable buffer (client-protocol §6, `emu` LogicalConnection.cs `SendData`).
/// It also stops the JS client's recovery loop, which is right: the messages are gone.
pub const BUFFER_FULL_CODE: u16 = 1008;
/// The reliable buffer of unacked messages is full: Microsoft's emulator's reason (§6).
pub const RELIABLE_BUFFER_FULL: &str = "The reliable message buffer is full.";
/// The socket's outbound queue is full (a client that does not read). UNVERIFIED: the reference
/// documents no slow-consumer close for the non-reliable protocols; this copies the closest
/// documented behaviour, the reliable buffer's (code 1008 and a reason in the same words).
pub const OUTBOUND_BUFFER_FULL: &str = "The outbound message buffer is full.";

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

/// Where a data message came from, as the JSON protocols tell the client.
#[derive(Debug, Clone)]
pub enum Origin {
    Server,
    Group {
        group: String,
        from_user: Option<String>,
    },
}

/// A bound overflowed: the connection is closed (its buffers freed, an attached socket cut with
/// a `disconnected` message and close 1008). With no socket attached, the caller must finish it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Overflow {
    pub reason: &'static str,
}

struct Outbox {
    tx: Option<Outq>,
    next_seq: u64,
    /// Reliable only: sent and not yet acked, shared with the socket queue (no copy).
    unacked: VecDeque<(u64, Utf8Bytes)>,
    unacked_bytes: usize,
    reliable_limit: BufferLimit,
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
        reliable_limit: BufferLimit,
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
                reliable_limit,
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
    /// what the client has not acked (bounded by the reliable buffer, so queued whatever the
    /// socket's own bound). A socket still attached is told to go away.
    pub fn attach(&self, tx: Outq) -> u64 {
        let mut out = self.out.lock().unwrap();
        if let Some(old) = out.tx.take() {
            old.push_anyway(Frame::Close(
                1000,
                "Superseded by a recovered socket.".into(),
            ));
        }
        for (_, frame) in &out.unacked {
            tx.push_anyway(Frame::Text(frame.clone()));
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

    /// A control frame (ack, pong, invokeResponse): never sequenced or retained, but counted
    /// against the socket's bound like any other (a client may ping without ever reading).
    pub fn send_control(&self, v: Value) {
        let mut out = self.out.lock().unwrap();
        // An overflow cuts the attached socket; its session finishes the connection.
        let _ = self.queue(&mut out, Frame::text(v.to_string()));
    }

    /// The frames a server close ends a socket with (`disconnected`, close): queued after what
    /// is already there, whatever the bound.
    pub fn send_goodbye(&self, frames: Vec<Frame>) {
        if let Some(tx) = &self.out.lock().unwrap().tx {
            for f in frames {
                tx.push_anyway(f);
            }
        }
    }

    /// Delivers a data message in this connection's protocol: raw frames for simple clients, a
    /// `message` envelope for the JSON ones (with the next `sequenceId`, kept until acked, for
    /// the reliable one). Messages for a detached non-reliable connection, or a closed one, are
    /// dropped. Never waits: over a bound, the connection is closed instead (Err).
    pub fn send_data(&self, origin: &Origin, data: &EventData) -> Result<(), Overflow> {
        self.send(&Outgoing::new(origin, data))
    }

    /// [`Conn::send_data`] with the frame prepared once for every receiver of a broadcast.
    pub fn send(&self, msg: &Outgoing) -> Result<(), Overflow> {
        if self.is_closed() {
            return Ok(());
        }
        let frame = match self.proto {
            Proto::Simple => msg.simple(),
            Proto::Json => Frame::Text(msg.envelope().clone()),
            Proto::Reliable => {
                let mut out = self.out.lock().unwrap();
                let seq = out.next_seq;
                let text = with_sequence_id(msg.envelope().as_str(), seq);
                let (n, bytes) = (out.unacked.len(), out.unacked_bytes);
                if !out.reliable_limit.admits(n, bytes, text.len()) {
                    return Err(self.overflow(&mut out, RELIABLE_BUFFER_FULL));
                }
                out.next_seq += 1;
                out.unacked_bytes += text.len();
                out.unacked.push_back((seq, text.clone()));
                return self.queue(&mut out, Frame::Text(text));
            }
        };
        let mut out = self.out.lock().unwrap();
        self.queue(&mut out, frame)
    }

    /// Queues `f` on the attached socket (none: dropped); over the socket's bound, closes.
    fn queue(&self, out: &mut Outbox, f: Frame) -> Result<(), Overflow> {
        match &out.tx {
            Some(tx) if tx.push(f).is_err() => Err(self.overflow(out, OUTBOUND_BUFFER_FULL)),
            _ => Ok(()),
        }
    }

    /// A bound overflowed: the connection is over. What it buffered is freed now: the unacked
    /// messages here, the socket's backlog by its writer, which sends the goodbye instead (the
    /// `disconnected` message and close 1008 that a server close sends) and ends the session.
    fn overflow(&self, out: &mut Outbox, reason: &'static str) -> Overflow {
        if self.close_with(reason) {
            tracing::info!(target: "hubhook::emulator", conn = %self.id, "closing client: {reason}");
        }
        out.unacked = VecDeque::new();
        out.unacked_bytes = 0;
        if let Some(tx) = &out.tx {
            let mut goodbye = Vec::new();
            if self.proto != Proto::Simple {
                let msg = json!({"type": "system", "event": "disconnected", "message": reason});
                goodbye.push(Frame::text(msg.to_string()));
            }
            goodbye.push(Frame::Close(BUFFER_FULL_CODE, reason.to_string()));
            tx.cut(goodbye);
        }
        Overflow { reason }
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

/// One data message for one or many connections, each form built once, when first needed: the
/// JSON protocols' envelope (shared by every JSON receiver; the reliable protocol appends its
/// `sequenceId` to a copy) and a simple client's raw frame. A broadcast to N connections
/// serialises its payload once, not N times.
pub struct Outgoing<'a> {
    origin: &'a Origin,
    data: &'a EventData,
    envelope: OnceCell<Utf8Bytes>,
    simple: OnceCell<Frame>,
}

impl<'a> Outgoing<'a> {
    pub fn new(origin: &'a Origin, data: &'a EventData) -> Outgoing<'a> {
        Outgoing {
            origin,
            data,
            envelope: OnceCell::new(),
            simple: OnceCell::new(),
        }
    }

    fn envelope(&self) -> &Utf8Bytes {
        self.envelope
            .get_or_init(|| Utf8Bytes::from(envelope(self.origin, self.data).to_string()))
    }

    fn simple(&self) -> Frame {
        self.simple
            .get_or_init(|| match self.data {
                EventData::Text(s) => Frame::text(s.as_str()),
                EventData::Json(v) => Frame::text(v.to_string()),
                EventData::Binary(b) => Frame::Binary(b.clone()),
            })
            .clone()
    }
}

/// The envelope with `"sequenceId":seq` as its last member: the bytes `serde_json` writes for
/// the envelope with that member added (insertion order is kept), without serialising again.
fn with_sequence_id(envelope: &str, seq: u64) -> Utf8Bytes {
    let body = envelope.strip_suffix('}').unwrap_or(envelope);
    let mut s = String::with_capacity(envelope.len() + 32);
    s.push_str(body);
    s.push_str(",\"sequenceId\":");
    s.push_str(&seq.to_string());
    s.push('}');
    Utf8Bytes::from(s)
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
    use crate::emulator::queue::{queue, Frames, DEFAULT_RELIABLE_MESSAGES};
    use bytes::Bytes;

    fn conn(proto: &str) -> Conn {
        Conn::new(
            "c1".into(),
            "chat".into(),
            Some("alice".into()),
            Some(proto.into()),
            HashSet::new(),
            None,
            BufferLimit::RELIABLE,
        )
    }

    fn socket() -> (Outq, Frames) {
        let (q, frames, _cut) = queue(BufferLimit::OUTBOUND);
        (q, frames)
    }

    fn drain(rx: &mut Frames) -> Vec<Value> {
        let mut v = Vec::new();
        while let Some(Frame::Text(t)) = rx.try_recv() {
            v.push(serde_json::from_str(&t).unwrap());
        }
        v
    }

    #[test]
    fn reliable_sequence_ids_start_at_one_and_unacked_are_replayed() {
        let c = conn(JSON_RELIABLE_V1);
        let (tx, mut rx) = socket();
        let g = c.attach(tx);
        for i in 0..3 {
            c.send_data(&Origin::Server, &EventData::Text(format!("m{i}").into()))
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
        let (tx2, mut rx2) = socket();
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
    fn a_prepared_broadcast_is_byte_for_byte_what_each_receiver_got_before() {
        let origin = Origin::Group {
            group: "g".into(),
            from_user: Some("alice".into()),
        };
        let data = EventData::Json(json!({"type": "message", "text": "hi \"there\"", "n": 1}));
        let msg = Outgoing::new(&origin, &data);
        for seq in [1, 42, u64::MAX] {
            let mut want = envelope(&origin, &data);
            want["sequenceId"] = seq.into();
            assert_eq!(
                with_sequence_id(msg.envelope().as_str(), seq).as_str(),
                want.to_string()
            );
        }
        assert_eq!(
            msg.envelope().as_str(),
            envelope(&origin, &data).to_string()
        );
        let (a, b) = (conn(JSON_RELIABLE_V1), conn(JSON_V1));
        let (ta, mut ra) = socket();
        let (tb, mut rb) = socket();
        a.attach(ta);
        b.attach(tb);
        a.send(&msg).unwrap();
        a.send(&msg).unwrap();
        b.send(&msg).unwrap();
        let seqs: Vec<u64> = drain(&mut ra)
            .iter()
            .map(|m| m["sequenceId"].as_u64().unwrap())
            .collect();
        assert_eq!(seqs, [1, 2], "each receiver's own sequence");
        assert_eq!(drain(&mut rb), [envelope(&origin, &data)]);
    }

    #[test]
    fn json_protocol_has_no_sequence_ids_and_simple_gets_raw_frames() {
        let c = conn(JSON_V1);
        let (tx, mut rx) = socket();
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
        let (tx, mut rx) = socket();
        s.attach(tx);
        s.send_data(&origin, &EventData::Binary(Bytes::from_static(b"\x01")))
            .unwrap();
        assert!(matches!(rx.try_recv(), Some(Frame::Binary(b)) if b.as_ref() == b"\x01"));
    }

    #[test]
    fn reliable_buffer_overflow_closes_and_frees_it() {
        let c = conn(JSON_RELIABLE_V1);
        for _ in 0..DEFAULT_RELIABLE_MESSAGES {
            c.send_data(&Origin::Server, &EventData::Text("x".into()))
                .unwrap();
        }
        assert_eq!(
            c.send_data(&Origin::Server, &EventData::Text("x".into())),
            Err(Overflow {
                reason: RELIABLE_BUFFER_FULL
            })
        );
        assert_eq!(c.closed_reason().as_deref(), Some(RELIABLE_BUFFER_FULL));
        let out = c.out.lock().unwrap();
        assert_eq!((out.unacked.len(), out.unacked_bytes), (0, 0));
        drop(out);
        assert_eq!(
            c.send_data(&Origin::Server, &EventData::Text("x".into())),
            Ok(()),
            "a closed connection drops data"
        );
    }

    #[test]
    fn a_socket_over_its_bound_is_cut_with_disconnected_and_1008() {
        // 300 bytes of data: a raw frame of 300, a JSON envelope of ~360; the bound is 1000.
        for (proto, fits, frames) in [(JSON_V1, 2, 2), ("custom", 3, 1)] {
            let c = conn(proto);
            let (q, _frames, mut cut) = queue(BufferLimit {
                bytes: 1000,
                messages: 100,
            });
            c.attach(q);
            let big = EventData::Text("x".repeat(300).into());
            let sent = (0..10)
                .take_while(|_| c.send_data(&Origin::Server, &big).is_ok())
                .count();
            assert_eq!(sent, fits, "{proto}");
            assert!(c.is_closed());
            let goodbye = cut.try_recv().expect("cut");
            assert_eq!(goodbye.len(), frames, "{proto}");
            assert!(
                matches!(goodbye.last(), Some(Frame::Close(1008, r)) if r == OUTBOUND_BUFFER_FULL)
            );
            if let [Frame::Text(t), _] = &goodbye[..] {
                let v: Value = serde_json::from_str(t).unwrap();
                assert_eq!(
                    v,
                    json!({"type": "system", "event": "disconnected", "message": OUTBOUND_BUFFER_FULL})
                );
            }
        }
        // Control frames count too: a client that pings and never reads is cut as well.
        let c = conn(JSON_V1);
        let (q, _frames, mut cut) = queue(BufferLimit {
            bytes: 1 << 20,
            messages: 5,
        });
        c.attach(q);
        for _ in 0..6 {
            c.send_control(json!({"type": "pong"}));
        }
        assert!(c.is_closed() && cut.try_recv().is_ok());
    }

    #[test]
    fn reliable_buffer_bound_is_the_configured_one() {
        let c = Conn::new(
            "c1".into(),
            "chat".into(),
            None,
            Some(JSON_RELIABLE_V1.into()),
            HashSet::new(),
            None,
            BufferLimit {
                bytes: 1 << 20,
                messages: 2,
            },
        );
        let (q, mut rx) = socket();
        c.attach(q);
        let m = EventData::Text("m".into());
        c.send_data(&Origin::Server, &m).unwrap();
        c.send_data(&Origin::Server, &m).unwrap();
        assert_eq!(drain(&mut rx).len(), 2, "read by the client, not yet acked");
        c.sequence_ack(1);
        c.send_data(&Origin::Server, &m).unwrap();
        assert_eq!(
            c.send_data(&Origin::Server, &m).map_err(|o| o.reason),
            Err(RELIABLE_BUFFER_FULL)
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
