//! One client socket from `101` to its end: the `connected` message and webhook, the read and
//! write loops, and what the end means — a final close (`disconnected` webhook) or, for the
//! reliable protocol, a drop that keeps the connection for recovery. What each frame does is
//! `handle`'s business.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message, WebSocket};
use bytes::Bytes;
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use serde_json::json;
use tokio::sync::oneshot;
use tungstenite::error::ProtocolError;

use super::conn::{Conn, Frame, Proto};
use super::handle::{on_frame, SimpleMode, Stop};
use super::queue::{self, Cut, Frames, Outq};
use super::Shared;
use crate::protocol::Event;

/// Frames (and messages) over this size are refused with close 1009: the service's limit is 1 MB.
pub const MAX_FRAME: usize = 1024 * 1024;

/// How long a closing socket may take to answer our close frame or drain its writer, and how
/// long a cut socket's writer tries to send its goodbye (a client that does not read never
/// takes it).
const CLOSE_GRACE: Duration = Duration::from_secs(2);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Start {
    New,
    Recovered,
}

enum End {
    /// The connection is over; the reason goes to the `disconnected` webhook.
    Final(String),
    /// The socket dropped; a reliable connection waits for its client to recover it.
    Dropped,
    /// A recovered socket replaced this one.
    Superseded,
    /// The socket was cut (over a buffer bound): the connection is over, and the client, which
    /// does not read, will not answer a close.
    Cut,
}

/// A connection's outbound side, attached before its socket is up: what the service sends from
/// the moment the client can see `open` is queued, after `connected`, and none of it is lost to
/// the gap between the `101` and the upgraded socket's first poll.
pub struct Attached {
    tx: Outq,
    frames: Frames,
    cut: Cut,
    generation: u64,
}

/// `connected` goes first, before any replay (a recovered reliable connection's unacked
/// messages) and before any client frame is read.
pub fn attach(s: &Shared, conn: &Conn) -> Attached {
    let (tx, frames, cut) = queue::queue(s.outbound_limit);
    if conn.proto != Proto::Simple {
        let mut connected = json!({"type": "system", "event": "connected", "userId": conn.user_id, "connectionId": conn.id});
        if conn.proto == Proto::Reliable {
            connected["reconnectionToken"] = conn.reconnection_token.clone().into();
        }
        tx.push_anyway(Frame::text(connected.to_string()));
    }
    let generation = conn.attach(tx.clone());
    Attached {
        tx,
        frames,
        cut,
        generation,
    }
}

pub async fn run(
    s: Arc<Shared>,
    conn: Arc<Conn>,
    socket: WebSocket,
    mode: SimpleMode,
    start: Start,
    attached: Attached,
) {
    let Attached {
        tx,
        frames,
        cut,
        generation,
    } = attached;
    if start == Start::New {
        let (s2, c2) = (s.clone(), conn.clone());
        conn.set_connected_hook(tokio::spawn(async move {
            if s2.upstream.handles_system(&c2.hub, "connected") {
                let ctx = s2.conn_context(&c2, "connected");
                let _ = s2
                    .upstream
                    .call(&ctx, &Event::Connected, c2.state().as_deref(), 3)
                    .await;
            }
        }));
    }

    let (sink, mut stream) = socket.split();
    let (closed_tx, mut closed_by_server) = oneshot::channel();
    let mut writer = tokio::spawn(write_loop(sink, frames, cut, closed_tx));
    let end = read_loop(&s, &conn, &tx, &mut stream, &mut closed_by_server, &mode).await;
    drop(tx);
    let cut = matches!(end, End::Cut);
    // Finish the close handshake either way: reading once more sends tungstenite's reply to a
    // client close, or receives the client's reply to ours (bounded).
    let drain = async move {
        let _ = tokio::time::timeout(CLOSE_GRACE, async {
            while let Some(Ok(_)) = stream.next().await {}
        })
        .await;
    };
    // Decided before the socket drains: a recovery arriving meanwhile must already see it.
    let end = detach(&conn, generation, end);
    finish_writer(&mut writer).await;
    if !cut {
        drain.await;
    }
    match end {
        End::Final(reason) => s.finish(&conn, &reason).await,
        End::Dropped => keep_for_recovery(s, conn, generation),
        End::Superseded | End::Cut => {}
    }
}

/// Marks the connection over (`Final`) or detaches the socket. A drop that lost the race to a
/// recovered socket (or a superseded socket) ends as `Superseded`: nothing left to do.
fn detach(conn: &Conn, generation: u64, end: End) -> End {
    let end = match end {
        End::Dropped | End::Superseded | End::Cut if conn.is_closed() => {
            End::Final(conn.closed_reason().unwrap_or_default())
        }
        other => other,
    };
    match end {
        End::Final(reason) => {
            conn.close_with(&reason);
            conn.detach(generation);
            End::Final(reason)
        }
        End::Dropped if conn.detach(generation) => End::Dropped,
        End::Dropped | End::Superseded | End::Cut => End::Superseded,
    }
}

fn keep_for_recovery(s: Arc<Shared>, conn: Arc<Conn>, generation: u64) {
    tracing::info!(target: "hubhook::emulator", conn = %conn.id, "socket dropped; kept {:?} for recovery", s.recovery_window);
    let window = s.recovery_window;
    tokio::spawn(async move {
        tokio::time::sleep(window).await;
        if conn.is_detached_since(generation) {
            s.finish(&conn, "The connection was not recovered in time.")
                .await;
        }
    });
}

async fn finish_writer(writer: &mut tokio::task::JoinHandle<()>) {
    if tokio::time::timeout(CLOSE_GRACE, &mut *writer)
        .await
        .is_err()
    {
        writer.abort();
    }
}

/// Sends the queue's frames in order until a close frame: what is waiting is written as one
/// batch and flushed once (one write for a burst of broadcasts, not one per frame). A cut (the
/// queue over its bound) overtakes the backlog, which is dropped at once (its memory freed), and
/// does not wait for the batch being sent (tungstenite completes the frame it is writing ahead of
/// the goodbye, so frames stay whole). The goodbye is sent as far as the client takes it within
/// `CLOSE_GRACE`; one that does not read takes none of it, and the session drops the socket.
async fn write_loop(
    mut sink: SplitSink<WebSocket, Message>,
    mut frames: Frames,
    mut cut: Cut,
    closed: oneshot::Sender<bool>,
) {
    let goodbye = loop {
        let f = tokio::select! {
            biased;
            g = &mut cut => break g.unwrap_or_default(),
            f = frames.recv() => match f {
                Some(f) => f,
                None => return,
            },
        };
        let mut last = matches!(f, Frame::Close(..));
        let batch = async {
            sink.feed(message(f)).await?;
            while !last {
                let Some(f) = frames.try_recv() else { break };
                last = matches!(f, Frame::Close(..));
                sink.feed(message(f)).await?;
            }
            sink.flush().await
        };
        let sent = tokio::select! {
            biased;
            g = &mut cut => break g.unwrap_or_default(),
            r = batch => r,
        };
        if last {
            let _ = closed.send(false);
            return;
        }
        if sent.is_err() {
            return;
        }
    };
    drop(frames);
    let _ = tokio::time::timeout(CLOSE_GRACE, async {
        for f in goodbye {
            sink.send(message(f)).await?;
        }
        Ok::<_, axum::Error>(())
    })
    .await;
    let _ = closed.send(true);
}

fn message(f: Frame) -> Message {
    match f {
        Frame::Text(t) => Message::Text(t),
        Frame::Binary(b) => Message::Binary(b),
        Frame::Close(code, reason) => {
            let reason: String = reason.chars().take(100).collect();
            Message::Close(Some(CloseFrame {
                code,
                reason: reason.into(),
            }))
        }
    }
}

async fn read_loop(
    s: &Arc<Shared>,
    conn: &Arc<Conn>,
    tx: &Outq,
    stream: &mut SplitStream<WebSocket>,
    closed_by_server: &mut oneshot::Receiver<bool>,
    mode: &SimpleMode,
) -> End {
    loop {
        let msg = tokio::select! {
            m = stream.next() => m,
            r = &mut *closed_by_server => return match r {
                Ok(true) => End::Cut,
                _ => await_close_reply(conn, stream).await,
            },
        };
        let msg = match msg {
            None => return dropped(conn),
            Some(Err(e)) => match socket_error(e) {
                None => return dropped(conn),
                Some(st) => return protocol_stop(conn, tx, st),
            },
            Some(Ok(m)) => m,
        };
        let size = match &msg {
            Message::Text(t) => t.len(),
            Message::Binary(b) => b.len(),
            _ => 0,
        };
        if size > MAX_FRAME {
            let st = Stop::new(
                1009,
                format!("Frame too large ({size} bytes; the limit is {MAX_FRAME})."),
            );
            return protocol_stop(conn, tx, st);
        }
        let result = match msg {
            Message::Text(t) => {
                on_frame(s, conn, Bytes::copy_from_slice(t.as_bytes()), true, mode).await
            }
            Message::Binary(b) => on_frame(s, conn, b, false, mode).await,
            Message::Close(frame) => {
                // A client close with 1000 is final; any other may be recovered (reliable). The
                // close reply goes out when the stream is read once more (`drain`).
                let code = frame.as_ref().map(|f| f.code);
                return if conn.proto != Proto::Reliable
                    || code == Some(1000)
                    || s.close_frame_is_final
                {
                    End::Final("Connection closed by the client.".into())
                } else {
                    End::Dropped
                };
            }
            Message::Ping(_) | Message::Pong(_) => Ok(()),
        };
        if let Err(st) = result {
            return protocol_stop(conn, tx, st);
        }
    }
}

/// We sent a close frame (server close, superseded): let the client answer it (bounded).
async fn await_close_reply(conn: &Conn, stream: &mut SplitStream<WebSocket>) -> End {
    let _ = tokio::time::timeout(CLOSE_GRACE, async {
        while let Some(Ok(m)) = stream.next().await {
            if matches!(m, Message::Close(_)) {
                break;
            }
        }
    })
    .await;
    if conn.is_closed() {
        End::Final(conn.closed_reason().unwrap_or_default())
    } else {
        End::Superseded
    }
}

/// The socket went away without a close frame: kept for recovery if reliable.
fn dropped(conn: &Conn) -> End {
    if conn.proto == Proto::Reliable {
        End::Dropped
    } else {
        End::Final("The connection was dropped.".into())
    }
}

/// A read error: None if the peer just went away (I/O, reset), else how to close — 1009 for a
/// frame over tungstenite's limit (4× ours), 1002 for anything else it refuses.
fn socket_error(e: axum::Error) -> Option<Stop> {
    let text = e.to_string();
    let too_large = || {
        Stop::new(
            1009,
            format!("Frame too large (the limit is {MAX_FRAME} bytes)."),
        )
    };
    let invalid = || Stop::new(1002, format!("Invalid WebSocket frame: {text}"));
    let Ok(e) = e.into_inner().downcast::<tungstenite::Error>() else {
        return Some(invalid());
    };
    match *e {
        // tokio-tungstenite ends the stream on the last two instead; listed for completeness.
        tungstenite::Error::Io(_)
        | tungstenite::Error::Protocol(ProtocolError::ResetWithoutClosingHandshake)
        | tungstenite::Error::AlreadyClosed
        | tungstenite::Error::ConnectionClosed => None,
        tungstenite::Error::Capacity(_) => Some(too_large()),
        _ => Some(invalid()),
    }
}

/// Tells a JSON client why (`disconnected`), then closes with the code; the connection is over.
fn protocol_stop(conn: &Conn, tx: &Outq, st: Stop) -> End {
    tracing::info!(target: "hubhook::emulator", conn = %conn.id, code = st.code, "closing client: {}", st.reason);
    if conn.proto != Proto::Simple {
        let msg = json!({"type": "system", "event": "disconnected", "message": st.reason});
        tx.push_anyway(Frame::text(msg.to_string()));
    }
    tx.push_anyway(Frame::Close(st.code, st.reason.clone()));
    End::Final(st.reason)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tungstenite::error::CapacityError;

    fn classify(e: tungstenite::Error) -> Option<Stop> {
        socket_error(axum::Error::new(e))
    }

    #[test]
    fn socket_errors_by_kind() {
        let reset = std::io::Error::from(std::io::ErrorKind::ConnectionReset);
        assert_eq!(classify(tungstenite::Error::Io(reset)), None);
        assert_eq!(
            classify(tungstenite::Error::Protocol(
                ProtocolError::ResetWithoutClosingHandshake
            )),
            None
        );
        let long = CapacityError::MessageTooLong {
            size: 5 * MAX_FRAME,
            max_size: 4 * MAX_FRAME,
        };
        assert_eq!(
            classify(tungstenite::Error::Capacity(long)),
            Some(Stop::new(
                1009,
                "Frame too large (the limit is 1048576 bytes)."
            ))
        );
        assert_eq!(
            classify(tungstenite::Error::Protocol(
                ProtocolError::UnmaskedFrameFromClient
            )),
            Some(Stop::new(
                1002,
                "Invalid WebSocket frame: WebSocket protocol error: Received an unmasked frame from client"
            ))
        );
    }
}
