//! One socket's outbound queue. Senders (a REST send, a group broadcast, an ack) never wait: the
//! channel underneath is unbounded. What it holds is counted instead, in bytes and messages, and
//! a push over the limit is refused, so a client that stops reading is cut off (`cut`) at the
//! limit rather than growing the process without bound.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use axum::extract::ws::Utf8Bytes;
use bytes::Bytes;
use tokio::sync::{mpsc, oneshot};

/// Default bound on one socket's unsent bytes: the service's reliable buffer (client-protocol
/// §6) and its upstream-reply limit are both 16 MiB; it holds 16 messages of the 1 MB maximum.
pub const DEFAULT_OUTBOUND_BYTES: usize = 16 * 1024 * 1024;
/// Default bound on one socket's unsent messages: room for a burst of small chat messages (seconds
/// of backlog at thousands per second) while a client catches up; 10× the reliable buffer's count.
pub const DEFAULT_OUTBOUND_MESSAGES: usize = 10_000;
/// The reliable protocol's retained (un-acked) buffer: the service's 1000 messages / 16 MB
/// (client-protocol §6, spec §3.2; Microsoft's emulator uses the same).
pub const DEFAULT_RELIABLE_BYTES: usize = 16 * 1024 * 1024;
pub const DEFAULT_RELIABLE_MESSAGES: usize = 1000;

/// A bound in bytes and in messages; a buffer is full when either would be exceeded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BufferLimit {
    pub bytes: usize,
    pub messages: usize,
}

impl BufferLimit {
    /// The default per-socket outbound queue.
    pub const OUTBOUND: BufferLimit = BufferLimit {
        bytes: DEFAULT_OUTBOUND_BYTES,
        messages: DEFAULT_OUTBOUND_MESSAGES,
    };
    /// The default reliable-protocol buffer of messages kept until the client acks them.
    pub const RELIABLE: BufferLimit = BufferLimit {
        bytes: DEFAULT_RELIABLE_BYTES,
        messages: DEFAULT_RELIABLE_MESSAGES,
    };

    /// Whether one more message of `len` bytes fits beside `messages` holding `bytes`.
    pub fn admits(&self, messages: usize, bytes: usize, len: usize) -> bool {
        messages < self.messages && bytes.saturating_add(len) <= self.bytes
    }
}

/// One frame for a client's socket.
#[derive(Debug, Clone)]
pub enum Frame {
    Text(Utf8Bytes),
    Binary(Bytes),
    Close(u16, String),
}

impl Frame {
    pub fn text(s: impl Into<Utf8Bytes>) -> Frame {
        Frame::Text(s.into())
    }

    /// What the frame counts against a limit: its payload.
    fn len(&self) -> usize {
        match self {
            Frame::Text(t) => t.len(),
            Frame::Binary(b) => b.len(),
            Frame::Close(_, reason) => reason.len(),
        }
    }
}

/// A push over the limit, or to a queue already cut: the frame was not queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueFull;

struct Counts {
    limit: BufferLimit,
    bytes: AtomicUsize,
    messages: AtomicUsize,
    cut: AtomicBool,
    cut_tx: Mutex<Option<oneshot::Sender<Vec<Frame>>>>,
}

/// The sending side (cheap to clone).
#[derive(Clone)]
pub struct Outq {
    tx: mpsc::UnboundedSender<Frame>,
    counts: Arc<Counts>,
}

/// The socket writer's side: the frames in order.
pub struct Frames {
    rx: mpsc::UnboundedReceiver<Frame>,
    counts: Arc<Counts>,
}

/// Resolves (once) with the frames to send instead of the backlog when the queue is cut.
pub type Cut = oneshot::Receiver<Vec<Frame>>;

pub fn queue(limit: BufferLimit) -> (Outq, Frames, Cut) {
    let (tx, rx) = mpsc::unbounded_channel();
    let (cut_tx, cut) = oneshot::channel();
    let counts = Arc::new(Counts {
        limit,
        bytes: AtomicUsize::new(0),
        messages: AtomicUsize::new(0),
        cut: AtomicBool::new(false),
        cut_tx: Mutex::new(Some(cut_tx)),
    });
    (
        Outq {
            tx,
            counts: counts.clone(),
        },
        Frames { rx, counts },
        cut,
    )
}

impl Outq {
    /// Queues `f` if it fits within the limit. Never waits.
    pub fn push(&self, f: Frame) -> Result<(), QueueFull> {
        let c = &self.counts;
        let len = f.len();
        if c.cut.load(Ordering::Acquire)
            || !c.limit.admits(
                c.messages.load(Ordering::Acquire),
                c.bytes.load(Ordering::Acquire),
                len,
            )
        {
            return Err(QueueFull);
        }
        self.enqueue(f, len)
    }

    /// Queues `f` whatever the limit (still counted): the frames that end a socket, and a
    /// reliable replay (bounded by the reliable buffer).
    pub fn push_anyway(&self, f: Frame) {
        let len = f.len();
        let _ = self.enqueue(f, len);
    }

    fn enqueue(&self, f: Frame, len: usize) -> Result<(), QueueFull> {
        let c = &self.counts;
        c.messages.fetch_add(1, Ordering::AcqRel);
        c.bytes.fetch_add(len, Ordering::AcqRel);
        if self.tx.send(f).is_err() {
            c.messages.fetch_sub(1, Ordering::AcqRel);
            c.bytes.fetch_sub(len, Ordering::AcqRel);
            return Err(QueueFull);
        }
        Ok(())
    }

    /// Ends the socket: the writer drops everything queued and sends `goodbye` instead. Later
    /// pushes are refused. False if it was already cut.
    pub fn cut(&self, goodbye: Vec<Frame>) -> bool {
        if self.counts.cut.swap(true, Ordering::AcqRel) {
            return false;
        }
        if let Some(tx) = self.counts.cut_tx.lock().unwrap().take() {
            let _ = tx.send(goodbye);
        }
        true
    }

    /// Frames queued and not yet taken by the writer.
    #[cfg(test)]
    pub fn queued(&self) -> (usize, usize) {
        (
            self.counts.messages.load(Ordering::Acquire),
            self.counts.bytes.load(Ordering::Acquire),
        )
    }
}

impl Frames {
    /// The next frame; None once every sender is gone.
    pub async fn recv(&mut self) -> Option<Frame> {
        let f = self.rx.recv().await?;
        self.counts.messages.fetch_sub(1, Ordering::AcqRel);
        self.counts.bytes.fetch_sub(f.len(), Ordering::AcqRel);
        Some(f)
    }

    /// The next frame if one is waiting (the writer batches what is queued into one flush).
    pub fn try_recv(&mut self) -> Option<Frame> {
        let f = self.rx.try_recv().ok()?;
        self.counts.messages.fetch_sub(1, Ordering::AcqRel);
        self.counts.bytes.fetch_sub(f.len(), Ordering::AcqRel);
        Some(f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pushes_over_either_bound_are_refused_and_taking_frees_room() {
        let (q, mut frames, _cut) = queue(BufferLimit {
            bytes: 10,
            messages: 3,
        });
        q.push(Frame::text("12345")).unwrap();
        q.push(Frame::text("12345")).unwrap();
        assert_eq!(q.push(Frame::text("1")), Err(QueueFull), "11 bytes > 10");
        assert!(frames.try_recv().is_some());
        q.push(Frame::text("1")).unwrap();
        q.push(Frame::text("")).unwrap();
        assert_eq!(q.push(Frame::text("")), Err(QueueFull), "4 messages > 3");
        q.push_anyway(Frame::Close(1008, "bye".into()));
        assert_eq!(q.queued(), (4, 9));
    }

    #[test]
    fn a_cut_hands_the_goodbye_over_once_and_refuses_later_pushes() {
        let (q, _frames, mut cut) = queue(BufferLimit::OUTBOUND);
        assert!(q.cut(vec![Frame::Close(1008, "full".into())]));
        assert!(!q.cut(vec![]), "only once");
        assert!(matches!(
            cut.try_recv().as_deref(),
            Ok([Frame::Close(1008, _)])
        ));
        assert_eq!(q.push(Frame::text("late")), Err(QueueFull));
    }
}
