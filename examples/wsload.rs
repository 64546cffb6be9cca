//! W3 load client for `bench/`: N WebSocket clients in one room; messages sent by the clients in
//! turn, each one timed from its send to every receiver's copy (and to the sender's ack).
//!
//! ```text
//! # through `hubhook dev` (the chat function stores and broadcasts each `message` event):
//! wsload --connection-string "$CS" --hub chat --query room=lobby --clients 100 --send event --rate 200
//! # the bare broadcast server (examples/ws_ceiling.rs) as the ceiling:
//! wsload --url ws://127.0.0.1:8090/ --clients 100 --send event --inflight 8
//! # user events answered by an event handler (tunnel row): completion is the ack
//! wsload --connection-string "$CS" --hub chat --clients 16 --send event --complete ack --inflight 64
//! ```
//!
//! Each message's text is `w3m<id>.`; a receiver counts a frame carrying that marker as the
//! delivery of message `<id>` (a chat broadcast, a `group` message, or the ceiling's echo of the
//! raw frame alike), so nothing is parsed as JSON on the receive path except acks.
//!
//! Pacing: `--rate R` sends R messages/s (open loop: a late send does not delay the next; latency
//! counts from the send and, reported beside it, from the scheduled time, so a
//! stalled client is not hidden), `--inflight W` keeps W messages not yet complete (closed loop:
//! the throughput figure). A message is complete when every one of `--receivers` clients
//! (default: all, the sender included) has it, or with `--complete ack` when its sender has a
//! successful ack. After `--duration` s it waits up to `--drain` s for what is outstanding, then
//! counts every delivery that never came. One line `WSLOAD_JSON {…}` on stdout.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use clap::{Parser, ValueEnum};
use futures_util::{SinkExt, StreamExt};
use hubhook::service::{client_access, ClientTokenOptions, ConnectionString};
use tokio::sync::{mpsc, Semaphore};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Send {
    /// `{"type":"event","event":E,"dataType":"text","data":T,"ackId":id}` (the chat page's `sendEvent`)
    Event,
    /// `{"type":"sendToGroup","group":G,"dataType":"text","data":T,"ackId":id}` (no webhook)
    Group,
    /// the text alone (a simple client)
    Raw,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Complete {
    /// every receiver has the message
    Delivered,
    /// the sender has a successful ack
    Ack,
}

#[derive(Parser, Debug)]
#[command(about = "W3 WebSocket load client (bench/w3.py)")]
struct Args {
    /// One URL for every client (the ceiling server).
    #[arg(long)]
    url: Option<String>,
    /// Mint a client access URL per client (user `w3-<i>`) from this connection string.
    #[arg(long, env = "WEBPUBSUB_CONNECTION_STRING")]
    connection_string: Option<String>,
    #[arg(long, default_value = "chat")]
    hub: String,
    /// Appended to each minted URL (e.g. `room=lobby`).
    #[arg(long)]
    query: Option<String>,
    /// `none` for no subprotocol.
    #[arg(long, default_value = "json.webpubsub.azure.v1")]
    subprotocol: String,
    #[arg(long, default_value_t = 10)]
    clients: usize,
    /// Clients that send (the first S; default all), in turn.
    #[arg(long)]
    senders: Option<usize>,
    /// Clients that receive each message (default all); 0 with `--complete ack`.
    #[arg(long)]
    receivers: Option<usize>,
    #[arg(long, value_enum, default_value = "event")]
    send: Send,
    #[arg(long, value_enum, default_value = "delivered")]
    complete: Complete,
    #[arg(long, default_value = "message")]
    event: String,
    #[arg(long, default_value = "lobby")]
    group: String,
    /// Messages per second (open loop).
    #[arg(long)]
    rate: Option<f64>,
    /// Messages not yet complete at any time (closed loop); default 1 without --rate.
    #[arg(long)]
    inflight: Option<usize>,
    /// Padding added to each message text, in bytes.
    #[arg(long, default_value_t = 0)]
    pad: usize,
    #[arg(long, default_value_t = 2.0)]
    warmup: f64,
    #[arg(long, default_value_t = 5.0)]
    duration: f64,
    #[arg(long, default_value_t = 5.0)]
    drain: f64,
    /// Connections opened at once while connecting.
    #[arg(long, default_value_t = 32)]
    connect_concurrency: usize,
    /// After connecting, wait until no frame has arrived for this long (join notices), at most 60 s.
    #[arg(long, default_value_t = 0.5)]
    quiet: f64,
}

/// One message: when it was due and when it was sent, how many receivers have it, whether it was
/// acked.
struct Slot {
    /// When the pacer scheduled it (open loop) — the same as `sent_ns` in the closed loop.
    due_ns: AtomicU64,
    /// When it was handed to its client to send (what `sendEvent` is in the official client).
    sent_ns: AtomicU64,
    got: AtomicU32,
    acked: AtomicU32,
    done: AtomicBool,
}

struct Shared {
    slots: Vec<Slot>,
    base: Instant,
    expect: u32,
    complete: Complete,
    /// Messages with an id at or above this are measured (below: warm-up).
    measure_from: AtomicU64,
    /// Released once per completed message (closed loop).
    window: Semaphore,
    last_frame_ns: AtomicU64,
    frames: AtomicU64,
    acks_failed: AtomicU64,
    ack_errors: Mutex<Vec<String>>,
    dropped: AtomicU64,
    /// Latencies in µs, each (from the send, from the due time).
    complete_us: Mutex<Vec<(u32, u32)>>,
    ack_us: Mutex<Vec<(u32, u32)>>,
}

impl Shared {
    fn now_ns(&self) -> u64 {
        self.base.elapsed().as_nanos() as u64
    }

    /// Microseconds from `slot`'s send and from its due time to `now`.
    fn since(slot: &Slot, now: u64) -> (u32, u32) {
        let us =
            |from: &AtomicU64| (now.saturating_sub(from.load(Ordering::Acquire)) / 1000) as u32;
        (us(&slot.sent_ns), us(&slot.due_ns))
    }

    fn measured(&self, id: u64) -> bool {
        id >= self.measure_from.load(Ordering::Acquire)
    }

    fn finish(&self, id: u64, now: u64) {
        let slot = &self.slots[id as usize];
        if slot.done.swap(true, Ordering::AcqRel) {
            return;
        }
        self.window.add_permits(1);
        if self.measured(id) {
            self.complete_us
                .lock()
                .unwrap()
                .push(Self::since(slot, now));
        }
    }
}

static SHARED: OnceLock<Shared> = OnceLock::new();

fn marker_id(text: &str) -> Option<u64> {
    let at = text.find("w3m")? + 3;
    let digits = &text[at..];
    let end = digits
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(digits.len());
    digits[..end].parse().ok()
}

/// `"ackId":N` and `"success":true|false` of an ack frame, without a JSON parser.
fn ack_of(text: &str) -> Option<(u64, bool)> {
    if !text.contains("\"type\":\"ack\"") {
        return None;
    }
    let at = text.find("\"ackId\":")? + 8;
    let rest = &text[at..];
    let end = rest
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(rest.len());
    let id = rest[..end].parse().ok()?;
    Some((id, text.contains("\"success\":true")))
}

async fn reader(
    s: &'static Shared,
    mut stream: impl StreamExt<Item = Result<Message, tokio_tungstenite::tungstenite::Error>> + Unpin,
    lat: Arc<Mutex<Vec<(u32, u32)>>>,
) {
    while let Some(m) = stream.next().await {
        let text = match m {
            Ok(Message::Text(t)) => t,
            Ok(Message::Binary(b)) => match String::from_utf8(b.to_vec()) {
                Ok(t) => t.into(),
                Err(_) => continue,
            },
            Ok(Message::Close(_)) | Err(_) => break,
            Ok(_) => continue,
        };
        let now = s.now_ns();
        s.last_frame_ns.store(now, Ordering::Relaxed);
        s.frames.fetch_add(1, Ordering::Relaxed);
        if let Some((id, ok)) = ack_of(&text) {
            let Some(slot) = s.slots.get(id as usize) else {
                continue;
            };
            if !ok {
                s.acks_failed.fetch_add(1, Ordering::Relaxed);
                let mut errs = s.ack_errors.lock().unwrap();
                if errs.len() < 5 {
                    errs.push(text.to_string());
                }
                continue;
            }
            slot.acked.fetch_add(1, Ordering::AcqRel);
            if s.measured(id) {
                s.ack_us.lock().unwrap().push(Shared::since(slot, now));
            }
            if s.complete == Complete::Ack {
                s.finish(id, now);
            }
            continue;
        }
        if s.complete == Complete::Ack {
            continue;
        }
        let Some(id) = marker_id(&text) else {
            continue;
        };
        let Some(slot) = s.slots.get(id as usize) else {
            continue;
        };
        let got = slot.got.fetch_add(1, Ordering::AcqRel) + 1;
        if s.measured(id) {
            lat.lock().unwrap().push(Shared::since(slot, now));
        }
        if got == s.expect {
            s.finish(id, now);
        }
    }
    s.dropped.fetch_add(1, Ordering::Relaxed);
}

fn client_url(args: &Args, i: usize) -> anyhow::Result<String> {
    if let Some(u) = &args.url {
        return Ok(u.clone());
    }
    let cs = args
        .connection_string
        .as_deref()
        .ok_or_else(|| anyhow::anyhow!("--url or --connection-string is required"))?;
    let cs = ConnectionString::parse(cs).map_err(|e| anyhow::anyhow!("{e}"))?;
    let access = client_access(
        &cs,
        &args.hub,
        &ClientTokenOptions {
            user_id: Some(format!("w3-{i}")),
            roles: vec![
                "webpubsub.sendToGroup".into(),
                "webpubsub.joinLeaveGroup".into(),
            ],
            groups: vec![args.group.clone()],
            expires_in: Some(Duration::from_secs(3600)),
        },
    );
    Ok(match &args.query {
        Some(q) => format!("{}&{q}", access.url),
        None => access.url,
    })
}

fn frame(args: &Args, id: u64, pad: &str) -> String {
    let text = format!("w3m{id}.{pad}");
    match args.send {
        Send::Event => format!(
            r#"{{"type":"event","event":"{}","dataType":"text","data":"{text}","ackId":{id}}}"#,
            args.event
        ),
        Send::Group => format!(
            r#"{{"type":"sendToGroup","group":"{}","dataType":"text","data":"{text}","ackId":{id}}}"#,
            args.group
        ),
        Send::Raw => text,
    }
}

fn pct(v: &[u32], p: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    let i = ((p / 100.0) * (v.len() - 1) as f64).round() as usize;
    v[i] as f64 / 1000.0
}

/// p50, p90, p99, max (ms) and count of one field of latencies in µs.
fn stats<T>(v: &[T], field: impl Fn(&T) -> u32) -> serde_json::Value {
    let mut us: Vec<u32> = v.iter().map(field).collect();
    us.sort_unstable();
    serde_json::json!({"p50": pct(&us, 50.0), "p90": pct(&us, 90.0), "p99": pct(&us, 99.0),
        "max": pct(&us, 100.0), "n": us.len()})
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let n = args.clients;
    let receivers = args.receivers.unwrap_or(match args.complete {
        Complete::Delivered => n,
        Complete::Ack => 0,
    });
    let senders = args.senders.unwrap_or(n).clamp(1, n);
    let inflight = args.inflight.unwrap_or(1);
    let cap = match args.rate {
        Some(r) => ((args.warmup + args.duration) * r * 1.2) as usize + 1000,
        None => 4_000_000,
    };
    let s: &'static Shared = SHARED.get_or_init(|| Shared {
        slots: (0..cap)
            .map(|_| Slot {
                due_ns: AtomicU64::new(0),
                sent_ns: AtomicU64::new(0),
                got: AtomicU32::new(0),
                acked: AtomicU32::new(0),
                done: AtomicBool::new(false),
            })
            .collect(),
        base: Instant::now(),
        expect: receivers as u32,
        complete: args.complete,
        measure_from: AtomicU64::new(u64::MAX),
        window: Semaphore::new(inflight),
        last_frame_ns: AtomicU64::new(0),
        frames: AtomicU64::new(0),
        acks_failed: AtomicU64::new(0),
        ack_errors: Mutex::new(Vec::new()),
        dropped: AtomicU64::new(0),
        complete_us: Mutex::new(Vec::new()),
        ack_us: Mutex::new(Vec::new()),
    });

    // Connect every client (bounded concurrency), in order: client i is the i-th sender.
    let t0 = Instant::now();
    let gate = Arc::new(Semaphore::new(args.connect_concurrency.max(1)));
    let mut pending = Vec::with_capacity(n);
    for i in 0..n {
        let url = client_url(&args, i)?;
        let sub = args.subprotocol.clone();
        let gate = gate.clone();
        pending.push(tokio::spawn(async move {
            let _permit = gate.acquire_owned().await?;
            let mut req = url.into_client_request()?;
            if sub != "none" {
                req.headers_mut()
                    .insert("sec-websocket-protocol", sub.parse()?);
            }
            // TCP_NODELAY: small frames must not wait for the previous one's ACK (Nagle).
            let (ws, _) = tokio_tungstenite::connect_async_with_config(req, None, true).await?;
            Ok::<_, anyhow::Error>(ws)
        }));
    }
    let mut txs = Vec::with_capacity(n);
    let mut lats = Vec::with_capacity(n);
    for (i, p) in pending.into_iter().enumerate() {
        let ws = p
            .await?
            .map_err(|e| anyhow::anyhow!("client {i} could not connect: {e}"))?;
        let (mut sink, stream) = ws.split();
        let lat = Arc::new(Mutex::new(Vec::new()));
        lats.push(lat.clone());
        tokio::spawn(reader(s, stream, lat));
        let (tx, mut rx) = mpsc::unbounded_channel::<String>();
        tokio::spawn(async move {
            while let Some(f) = rx.recv().await {
                if sink.send(Message::Text(f.into())).await.is_err() {
                    break;
                }
            }
        });
        txs.push(tx);
    }
    let connect_s = t0.elapsed().as_secs_f64();
    // Let the join notices settle.
    let settle_start = Instant::now();
    loop {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let idle = s
            .now_ns()
            .saturating_sub(s.last_frame_ns.load(Ordering::Relaxed));
        if idle as f64 >= args.quiet * 1e9 || settle_start.elapsed() > Duration::from_secs(60) {
            break;
        }
    }
    let settle_s = settle_start.elapsed().as_secs_f64();
    let frames_before = s.frames.load(Ordering::Relaxed);

    // Send: warm-up, then the measured window.
    let pad = "x".repeat(args.pad);
    let mut next_id: u64 = 0;
    let start = Instant::now();
    let warm_end = start + Duration::from_secs_f64(args.warmup);
    let end = warm_end + Duration::from_secs_f64(args.duration);
    let mut measure_start = None;
    let mut measure_first = 0;
    loop {
        let now = Instant::now();
        if now >= end || next_id as usize >= cap {
            break;
        }
        if measure_start.is_none() && now >= warm_end {
            measure_start = Some(now);
            measure_first = next_id;
            s.measure_from.store(next_id, Ordering::Release);
        }
        let due_ns = match args.rate {
            Some(r) => {
                let due = start + Duration::from_secs_f64(next_id as f64 / r);
                if due > now {
                    tokio::time::sleep_until(due.into()).await;
                    continue;
                }
                due.duration_since(s.base).as_nanos() as u64
            }
            None => {
                let permit = tokio::time::timeout_at(end.into(), s.window.acquire()).await;
                match permit {
                    Ok(Ok(p)) => p.forget(),
                    _ => break,
                }
                s.now_ns()
            }
        };
        let id = next_id;
        next_id += 1;
        let slot = &s.slots[id as usize];
        let frame = frame(&args, id, &pad);
        slot.due_ns.store(due_ns, Ordering::Release);
        // The pacer's timer wakes up to a tick (1 ms) after the due time: latency is counted from
        // here, where the frame is handed over — what a `sendEvent` call is — and the lateness
        // is reported beside it (`send_late_ms`, `*_from_due_ms`).
        slot.sent_ns.store(s.now_ns(), Ordering::Release);
        let _ = txs[id as usize % senders].send(frame);
    }
    let send_end = Instant::now();
    let measure_start = measure_start.unwrap_or(send_end);
    let sent_measured = next_id - measure_first;

    // Drain: wait for what is outstanding (bounded), then count.
    let drain_deadline = send_end + Duration::from_secs_f64(args.drain);
    let done = |from: u64, to: u64| {
        (from..to)
            .filter(|&i| s.slots[i as usize].done.load(Ordering::Acquire))
            .count() as u64
    };
    while Instant::now() < drain_deadline && done(measure_first, next_id) < sent_measured {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let completed = done(measure_first, next_id);
    let last_completion = Instant::now().min(drain_deadline);
    let mut deliveries = 0u64;
    let mut acked = 0u64;
    for i in measure_first..next_id {
        let slot = &s.slots[i as usize];
        deliveries += u64::from(slot.got.load(Ordering::Acquire));
        acked += u64::from(slot.acked.load(Ordering::Acquire).min(1));
    }
    let expected = sent_measured * receivers as u64;
    let window_s = send_end.duration_since(measure_start).as_secs_f64();
    let span_s = last_completion
        .duration_since(measure_start)
        .as_secs_f64()
        .max(window_s);
    let dl: Vec<(u32, u32)> = lats
        .iter()
        .flat_map(|l| std::mem::take(&mut *l.lock().unwrap()))
        .collect();
    let cl = std::mem::take(&mut *s.complete_us.lock().unwrap());
    let al = std::mem::take(&mut *s.ack_us.lock().unwrap());
    // From its due time to its send.
    let late: Vec<u32> = (measure_first..next_id)
        .map(|i| {
            let slot = &s.slots[i as usize];
            Shared::since(slot, slot.sent_ns.load(Ordering::Acquire)).1
        })
        .collect();
    let out = serde_json::json!({
        "clients": n,
        "senders": senders,
        "receivers": receivers,
        "send": format!("{:?}", args.send).to_lowercase(),
        "complete": format!("{:?}", args.complete).to_lowercase(),
        "rate": args.rate,
        "inflight": if args.rate.is_none() { Some(inflight) } else { None },
        "connect_s": connect_s,
        "settle_s": settle_s,
        "frames_before_load": frames_before,
        "window_s": window_s,
        "sent": sent_measured,
        "completed": completed,
        "incomplete": sent_measured - completed,
        "acked": acked,
        "acks_failed": s.acks_failed.load(Ordering::Relaxed),
        "ack_errors": *s.ack_errors.lock().unwrap(),
        "deliveries": deliveries,
        "expected_deliveries": expected,
        "missing_deliveries": expected.saturating_sub(deliveries),
        "sockets_closed": s.dropped.load(Ordering::Relaxed),
        "msgs_per_s": completed as f64 / span_s,
        "sent_per_s": sent_measured as f64 / window_s,
        "deliveries_per_s": deliveries as f64 / span_s,
        "delivery_ms": stats(&dl, |l| l.0),
        "delivery_from_due_ms": stats(&dl, |l| l.1),
        "complete_ms": stats(&cl, |l| l.0),
        "ack_ms": stats(&al, |l| l.0),
        "ack_from_due_ms": stats(&al, |l| l.1),
        "send_late_ms": stats(&late, |l| *l),
    });
    println!("WSLOAD_JSON {out}");
    // Exit without closing the sockets one by one (the servers are stopped by the driver).
    std::process::exit(0);
}
