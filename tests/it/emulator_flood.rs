//! A client that never reads, flooded over the REST API (issue 10, item 5): it is closed at its
//! bound and torn down (gone from REST and its group, `disconnected` webhook), while a reading
//! client in the same group gets every message. Real sockets (`tokio-tungstenite`), an
//! in-process emulator through its public API, and the shared stand-in as the event handler.
//! Every wait is bounded; nothing is timed.

use std::time::Duration;

use futures_util::{stream, SinkExt, StreamExt};
use hubhook::emulator::{
    handler_for_all, BufferLimit, Emulator, EmulatorConfig, EmulatorHandle, BUFFER_FULL_CODE,
    JSON_RELIABLE_V1, JSON_V1, OUTBOUND_BUFFER_FULL, RELIABLE_BUFFER_FULL,
};
use hubhook::protocol::EventData;
use hubhook::service::{
    client_token, unix_now, ClientTokenOptions, ConnectionString, RetryPolicy, SendOptions,
    ServiceClient,
};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;

use crate::support::{reply, Script, StandIn};

/// The bound on every single wait.
const T: Duration = Duration::from_secs(10);
/// The most the flood sends before the test gives up on the bound tripping: 80 MB, far above
/// the outbound bound (1 MiB) plus what loopback TCP buffers hold for a reader that never reads.
const MAX_FLOOD: usize = 10_000;
const SIZE: usize = 8192;

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// An event handler that accepts everything (the abuse-protection handshake included) and
/// records what it got.
async fn accepting_handler() -> StandIn {
    StandIn::start(Script::handler(|_| {
        Some(reply(200).header("webhook-allowed-origin", "*"))
    }))
    .await
}

struct Setup {
    emu: EmulatorHandle,
    cs: ConnectionString,
    svc: ServiceClient,
    handler: StandIn,
}

async fn setup(tweak: impl FnOnce(&mut EmulatorConfig)) -> Setup {
    let handler = accepting_handler().await;
    let url = handler.url("/hooks/{hub}/{event}");
    let mut c = EmulatorConfig::local(0, vec![handler_for_all(&url)]);
    c.outbound_limit = BufferLimit {
        bytes: 1024 * 1024,
        messages: 10_000,
    };
    tweak(&mut c);
    let emu = Emulator::start(c).await.unwrap();
    let cs = ConnectionString::parse(emu.connection_string()).unwrap();
    let svc = ServiceClient::new(&cs, "chat", RetryPolicy::default()).unwrap();
    Setup {
        emu,
        cs,
        svc,
        handler,
    }
}

impl Setup {
    /// (event name, connection id, body) of every webhook POST so far.
    fn hooks(&self) -> Vec<(String, String, Value)> {
        self.handler
            .matching(|r| r.method == "POST")
            .into_iter()
            .map(|r| {
                let header = |n: &str| r.header(n).unwrap_or_default();
                (
                    header("ce-eventname"),
                    header("ce-connectionid"),
                    r.json_or_null(),
                )
            })
            .collect()
    }

    /// A client of group `flood` offering `protocol`; its connection id (from `connected`).
    async fn client(&self, user: &str, protocol: &str) -> (Ws, String) {
        let opts = ClientTokenOptions {
            user_id: Some(user.into()),
            groups: vec!["flood".into()],
            ..Default::default()
        };
        let token = client_token(&self.cs, "chat", &opts, unix_now());
        let mut req = format!(
            "ws://{}/client/hubs/chat?access_token={token}",
            self.emu.local_addr
        )
        .into_client_request()
        .unwrap();
        req.headers_mut()
            .insert("sec-websocket-protocol", protocol.parse().unwrap());
        let (mut ws, _) = tokio::time::timeout(T, tokio_tungstenite::connect_async(req))
            .await
            .expect("handshake in time")
            .expect("accepted");
        let first = tokio::time::timeout(T, ws.next()).await.unwrap();
        let connected: Value = serde_json::from_str(first.unwrap().unwrap().to_text().unwrap())
            .expect("connected frame");
        assert_eq!(connected["event"], "connected");
        (ws, connected["connectionId"].as_str().unwrap().to_string())
    }

    async fn send(&self, n: usize) {
        let data = EventData::Text("x".repeat(SIZE).into());
        let opts = SendOptions::default();
        let failed = stream::iter(0..n)
            .map(|_| self.svc.send_to_group("flood", &data, &opts))
            .buffer_unordered(8)
            .filter(|r| std::future::ready(r.is_err()))
            .count()
            .await;
        assert_eq!(
            failed, 0,
            "REST sends never wait on a full queue, never fail"
        );
    }

    /// Floods the group until `stuck` is gone; the number of messages sent.
    async fn flood_until_gone(&self, stuck: &str) -> usize {
        let mut sent = 0;
        while sent < MAX_FLOOD {
            self.send(100).await;
            sent += 100;
            if !self.svc.connection_exists(stuck).await.unwrap() {
                return sent;
            }
        }
        panic!("{stuck} still exists after {sent} messages of {SIZE} bytes");
    }

    /// Waits for the `disconnected` webhook of `conn`; its reason.
    async fn disconnected(&self, conn: &str) -> String {
        tokio::time::timeout(T, async {
            loop {
                let found = self.hooks().into_iter().find_map(|(e, c, b)| {
                    (e == "disconnected" && c == conn).then(|| b["reason"].clone())
                });
                if let Some(r) = found {
                    return r.as_str().unwrap_or_default().to_string();
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await
        .expect("disconnected webhook in time")
    }

    async fn group_members(&self) -> Vec<String> {
        self.svc
            .list_connections_in_group("flood")
            .await
            .unwrap()
            .into_iter()
            .map(|m| m.connection_id)
            .collect()
    }
}

/// Reads group messages until one with data `done`; how many came before it.
async fn count_until_done(mut ws: Ws) -> usize {
    let mut n = 0;
    loop {
        let m = tokio::time::timeout(T, ws.next())
            .await
            .expect("the reader keeps getting frames")
            .expect("the reader's socket stays open")
            .expect("no socket error");
        let Message::Text(t) = m else { continue };
        let v: Value = serde_json::from_str(&t).unwrap();
        if v["from"] == "group" {
            if v["data"] == "done" {
                return n;
            }
            n += 1;
        }
    }
}

/// The stuck client's socket, read at last: it ends (a close frame or EOF) within the bound.
/// A close frame, if the emulator got it out before giving up on the client, is 1008.
async fn ends(mut ws: Ws) {
    tokio::time::timeout(T * 3, async {
        while let Some(Ok(m)) = ws.next().await {
            if let Message::Close(Some(f)) = m {
                eprintln!("the stuck client got close {}", f.code);
                assert_eq!(u16::from(f.code), BUFFER_FULL_CODE);
                return;
            }
        }
    })
    .await
    .expect("the stuck socket is closed by the emulator");
}

async fn stuck_client_is_closed_and_reader_gets_everything(protocol: &str, reason: &str) {
    let s = setup(|c| {
        c.reliable_limit = BufferLimit {
            bytes: 16 * 1024 * 1024,
            messages: 50_000,
        }
    })
    .await;
    let (stuck_ws, stuck) = s.client("stuck", protocol).await;
    let (reader_ws, reader) = s.client("reader", JSON_V1).await;
    let reading = tokio::spawn(count_until_done(reader_ws));

    let sent = s.flood_until_gone(&stuck).await;
    eprintln!("{protocol}: the stuck client was gone after {sent} messages of {SIZE} bytes");
    assert_eq!(s.disconnected(&stuck).await, reason);
    assert_eq!(s.group_members().await, std::slice::from_ref(&reader));
    assert!(s.svc.connection_exists(&reader).await.unwrap());

    s.svc
        .send_to_group(
            "flood",
            &EventData::Text("done".into()),
            &SendOptions::default(),
        )
        .await
        .unwrap();
    let got = tokio::time::timeout(T * 3, reading).await.unwrap().unwrap();
    assert_eq!(got, sent, "the reading client got every message");
    ends(stuck_ws).await;
}

#[tokio::test]
async fn a_json_client_that_never_reads_is_closed_at_the_outbound_bound() {
    stuck_client_is_closed_and_reader_gets_everything(JSON_V1, OUTBOUND_BUFFER_FULL).await;
}

#[tokio::test]
async fn a_reliable_client_that_never_reads_is_closed_at_the_outbound_bound() {
    stuck_client_is_closed_and_reader_gets_everything(JSON_RELIABLE_V1, OUTBOUND_BUFFER_FULL).await;
}

#[tokio::test]
async fn a_reliable_client_that_never_acks_is_closed_at_the_reliable_bound() {
    // Attached or not (dropped, awaiting recovery), over the retained buffer it is closed at
    // once, not when the recovery window ends.
    let s = setup(|c| {
        c.reliable_limit = BufferLimit {
            bytes: 16 * 1024 * 1024,
            messages: 50,
        };
        c.recovery_window = Duration::from_secs(600);
    })
    .await;
    let (attached_ws, attached) = s.client("attached", JSON_RELIABLE_V1).await;
    let (mut dropped_ws, dropped) = s.client("dropped", JSON_RELIABLE_V1).await;
    // A close without code 1000 keeps a reliable connection for recovery.
    dropped_ws.send(Message::Close(None)).await.unwrap();
    drop(dropped_ws);
    tokio::time::timeout(T, async {
        while s.hooks().len() < 4 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("connect and connected webhooks");
    s.send(51).await;
    assert_eq!(s.disconnected(&dropped).await, RELIABLE_BUFFER_FULL);
    assert_eq!(s.disconnected(&attached).await, RELIABLE_BUFFER_FULL);
    assert!(!s.svc.connection_exists(&attached).await.unwrap());
    assert!(!s.svc.connection_exists(&dropped).await.unwrap());
    // The attached client read nothing: at most 50 messages (≈ 400 KB) were in flight, so the
    // goodbye gets out, and the client sees it after them.
    let mut ws = attached_ws;
    let mut last_text = Value::Null;
    let code = tokio::time::timeout(T, async {
        while let Some(Ok(m)) = ws.next().await {
            match m {
                Message::Text(t) => last_text = serde_json::from_str(&t).unwrap(),
                Message::Close(f) => return f.map(|f| u16::from(f.code)),
                _ => {}
            }
        }
        None
    })
    .await
    .expect("closed in time");
    assert_eq!(code, Some(BUFFER_FULL_CODE));
    assert_eq!(
        last_text,
        json!({"type": "system", "event": "disconnected", "message": RELIABLE_BUFFER_FULL})
    );
}
