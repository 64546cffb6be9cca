//! The emulator over real sockets, through its public API only: an in-process emulator (port 0),
//! `tokio-tungstenite` clients and a stand-in event handler whose answers each test scripts
//! (status, body, delay, connection state). The official npm clients are exercised end to end
//! in `emulator.rs`.
//!
//! Every wait is bounded by `T`.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use futures_util::{SinkExt, StreamExt};
use hubhook::emulator::{Emulator, EmulatorConfig, EmulatorHandle, HandlerSettings};
use hubhook::emulator::{JSON_RELIABLE_V1, JSON_V1};
use hubhook::protocol::{sign, EventData};
use hubhook::service::{
    client_token, rest_token, unix_now, AccessKey, ClientTokenOptions, ConnectionString,
    Permission, RetryPolicy, SendOptions, ServiceClient,
};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::{self, Message};

use crate::support::{reply, Reply, Request, Script, StandIn};

/// The bound on every single wait.
const T: Duration = Duration::from_secs(5);
const KEY: &str = hubhook::config::LOCAL_ACCESS_KEY;
const OTHER_KEY: &str = "abcdefghijklmnopqrstuvwxyz0123456789abcdefgh";

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

// ------------------------------------------------------------------------------------------
// A scriptable event handler
// ------------------------------------------------------------------------------------------

/// What a webhook says about itself.
trait Webhook {
    fn event(&self) -> String;
    fn conn(&self) -> String;
}

impl Webhook for Request {
    fn event(&self) -> String {
        self.header("ce-eventname").unwrap_or_default()
    }
    fn conn(&self) -> String {
        self.header("ce-connectionid").unwrap_or_default()
    }
}

/// An event handler on a [`StandIn`] with the defaults of one that works.
struct Stub(StandIn);

impl Stub {
    /// `script` answers what it wants to; anything else gets the defaults: the abuse-protection
    /// `OPTIONS` → 200 `WebHook-Allowed-Origin: *`, every event → 200 with no body.
    async fn start(script: impl Fn(&Request) -> Option<Reply> + Send + Sync + 'static) -> Stub {
        Stub(
            StandIn::start(Script::handler(move |r| {
                script(r).or_else(|| {
                    (r.method == "OPTIONS")
                        .then(|| reply(200).header("webhook-allowed-origin", "*"))
                })
            }))
            .await,
        )
    }

    fn url(&self) -> String {
        self.0.url("/hooks/{hub}/{event}")
    }

    fn all(&self, method: &str) -> Vec<Request> {
        self.0.matching(|r| r.method == method)
    }

    fn posts(&self) -> Vec<Request> {
        self.all("POST")
    }

    /// The first POST matching `pred`, waiting up to `T`.
    async fn wait(&self, what: &str, pred: impl Fn(&Request) -> bool) -> Request {
        self.0.wait(what, |r| r.method == "POST" && pred(r)).await
    }
}

// ------------------------------------------------------------------------------------------
// Emulator, tokens, sockets
// ------------------------------------------------------------------------------------------

async fn emulator_with(
    stub: Option<&Stub>,
    tweak: impl FnOnce(&mut EmulatorConfig),
) -> EmulatorHandle {
    let handlers = stub
        .map(|s| vec![HandlerSettings::all_events("*", &s.url())])
        .unwrap_or_default();
    let mut c = EmulatorConfig::local(0, handlers);
    c.upstream_timeout = Duration::from_millis(800);
    c.recovery_window = Duration::from_secs(2);
    tweak(&mut c);
    Emulator::start(c).await.unwrap()
}

async fn emulator(stub: Option<&Stub>) -> EmulatorHandle {
    emulator_with(stub, |_| {}).await
}

fn cs(emu: &EmulatorHandle) -> ConnectionString {
    ConnectionString::parse(emu.connection_string()).unwrap()
}

fn token(emu: &EmulatorHandle, hub: &str, user: Option<&str>, roles: &[&str]) -> String {
    let opts = ClientTokenOptions {
        user_id: user.map(String::from),
        roles: roles.iter().map(|r| r.to_string()).collect(),
        ..Default::default()
    };
    client_token(&cs(emu), hub, &opts, unix_now())
}

fn url(emu: &EmulatorHandle, hub: &str, token: &str) -> String {
    format!(
        "ws://{}/client/hubs/{hub}?access_token={token}",
        emu.local_addr
    )
}

/// Opens a socket offering `protocol`; Ok has the negotiated subprotocol, Err the HTTP status.
async fn connect(url: &str, protocol: Option<&str>) -> Result<(Ws, Option<String>), u16> {
    let mut req = url.into_client_request().unwrap();
    if let Some(p) = protocol {
        req.headers_mut()
            .insert("sec-websocket-protocol", p.parse().unwrap());
    }
    match tokio::time::timeout(T, tokio_tungstenite::connect_async(req))
        .await
        .expect("handshake answered in time")
    {
        Ok((ws, resp)) => {
            let p = resp
                .headers()
                .get("sec-websocket-protocol")
                .map(|v| v.to_str().unwrap().to_string());
            Ok((ws, p))
        }
        Err(tungstenite::Error::Http(resp)) => Err(resp.status().as_u16()),
        Err(e) => panic!("handshake failed unexpectedly: {e}"),
    }
}

/// Connects as `user` (hub `chat`) with a JSON protocol and reads the `connected` message.
async fn json_client(
    emu: &EmulatorHandle,
    user: &str,
    roles: &[&str],
    protocol: &str,
) -> (Ws, String) {
    let u = url(emu, "chat", &token(emu, "chat", Some(user), roles));
    let (mut ws, _) = connect(&u, Some(protocol)).await.expect("accepted");
    let c = recv(&mut ws).await;
    assert_eq!(c["event"], "connected", "{c}");
    (ws, c["connectionId"].as_str().unwrap().to_string())
}

/// The next frame (pings skipped); None when the socket ended.
async fn next_msg(ws: &mut Ws) -> Option<Message> {
    loop {
        match tokio::time::timeout(T, ws.next())
            .await
            .expect("a frame in time")
        {
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
            Some(Ok(m)) => return Some(m),
            Some(Err(_)) | None => return None,
        }
    }
}

/// The next text frame as JSON.
async fn recv(ws: &mut Ws) -> Value {
    match next_msg(ws).await {
        Some(Message::Text(t)) => serde_json::from_str(&t).expect("text frames are JSON"),
        other => panic!("expected a JSON text frame, got {other:?}"),
    }
}

/// Reads to the end: the close code (None: no close frame) and the JSON frames before it.
async fn closed(ws: &mut Ws) -> (Option<u16>, Vec<Value>) {
    let mut frames = vec![];
    loop {
        match next_msg(ws).await {
            Some(Message::Close(f)) => {
                // Reading once more sends our close reply (as real clients do at once).
                let _ = tokio::time::timeout(T, ws.next()).await;
                return (f.map(|f| u16::from(f.code)), frames);
            }
            Some(Message::Text(t)) => frames.push(serde_json::from_str(&t).unwrap_or(Value::Null)),
            Some(_) => {}
            None => return (None, frames),
        }
    }
}

async fn send(ws: &mut Ws, v: Value) {
    ws.send(Message::text(v.to_string())).await.unwrap();
}

/// Asserts that nothing but pings arrives within `d`.
async fn quiet(ws: &mut Ws, d: Duration) {
    if let Ok(Some(Ok(m))) = tokio::time::timeout(d, ws.next()).await {
        assert!(
            matches!(m, Message::Ping(_) | Message::Pong(_)),
            "expected no frame, got {m:?}"
        );
    }
}

fn service(emu: &EmulatorHandle) -> ServiceClient {
    ServiceClient::new(&cs(emu), "chat", RetryPolicy::default()).unwrap()
}

fn text(s: &str) -> EventData {
    EventData::Text(s.into())
}

// ------------------------------------------------------------------------------------------
// Handshake and auth
// ------------------------------------------------------------------------------------------

#[tokio::test]
async fn bad_expired_or_misdirected_tokens_get_401() {
    let emu = emulator(None).await;
    let a = emu.local_addr;
    let valid = token(&emu, "chat", Some("alice"), &[]);
    let other_cs = ConnectionString::parse(&format!(
        "Endpoint=http://{};Port={};AccessKey={OTHER_KEY};Version=1.0;",
        a.ip(),
        a.port()
    ))
    .unwrap();
    let wrong_key = client_token(
        &other_cs,
        "chat",
        &ClientTokenOptions::default(),
        unix_now(),
    );
    let expired = client_token(
        &cs(&emu),
        "chat",
        &ClientTokenOptions {
            expires_in: Some(Duration::from_secs(60)),
            ..Default::default()
        },
        unix_now() - 3600,
    );
    let other_hub = token(&emu, "lobby", Some("alice"), &[]);
    for (what, u) in [
        ("no token", format!("ws://{a}/client/hubs/chat")),
        ("garbage", url(&emu, "chat", "not.a.jwt")),
        ("wrong key", url(&emu, "chat", &wrong_key)),
        ("expired", url(&emu, "chat", &expired)),
        ("token for another hub", url(&emu, "chat", &other_hub)),
    ] {
        assert_eq!(connect(&u, Some(JSON_V1)).await.err(), Some(401), "{what}");
    }
    // The valid token, on both endpoint forms, and as a bearer header.
    assert!(connect(&url(&emu, "chat", &valid), Some(JSON_V1))
        .await
        .is_ok());
    let q = format!("ws://{a}/client/?hub=chat&access_token={valid}");
    assert!(connect(&q, Some(JSON_V1)).await.is_ok());
    let mut req = format!("ws://{a}/client/hubs/chat")
        .into_client_request()
        .unwrap();
    req.headers_mut()
        .insert("authorization", format!("Bearer {valid}").parse().unwrap());
    assert!(tokio_tungstenite::connect_async(req).await.is_ok());
    // Not a WebSocket upgrade at all; an invalid hub name.
    let plain = reqwest::get(format!("http://{a}/client/hubs/chat?access_token={valid}"))
        .await
        .unwrap();
    assert_eq!(plain.status(), 400);
    assert_eq!(
        connect(&url(&emu, "1chat", &valid), None).await.err(),
        Some(400)
    );
}

#[tokio::test]
async fn subprotocol_is_echoed_and_connected_comes_first() {
    let emu = emulator(None).await;
    let u = url(&emu, "chat", &token(&emu, "chat", Some("alice"), &[]));

    let (mut ws, p) = connect(&u, Some(JSON_RELIABLE_V1)).await.unwrap();
    assert_eq!(p.as_deref(), Some(JSON_RELIABLE_V1));
    let c = recv(&mut ws).await;
    assert_eq!(c["type"], "system");
    assert_eq!(c["event"], "connected");
    assert_eq!(c["userId"], "alice");
    assert!(c["connectionId"].as_str().is_some_and(|s| !s.is_empty()));
    assert!(c["reconnectionToken"]
        .as_str()
        .is_some_and(|s| !s.is_empty()));

    let (mut ws, p) = connect(&u, Some(JSON_V1)).await.unwrap();
    assert_eq!(p.as_deref(), Some(JSON_V1));
    let c = recv(&mut ws).await;
    assert!(c.get("reconnectionToken").is_none(), "{c}");

    // Both offered: the first JSON one (as Microsoft's emulator).
    let (_ws, p) = connect(&u, Some(&format!("{JSON_V1}, {JSON_RELIABLE_V1}")))
        .await
        .unwrap();
    assert_eq!(p.as_deref(), Some(JSON_V1));

    // Anonymous: userId null.
    let anon = url(&emu, "chat", &token(&emu, "chat", None, &[]));
    let (mut ws, _) = connect(&anon, Some(JSON_V1)).await.unwrap();
    assert_eq!(recv(&mut ws).await["userId"], Value::Null);

    // No subprotocol: no header, no connected frame (a plain client).
    let (mut ws, p) = connect(&u, None).await.unwrap();
    assert_eq!(p, None);
    quiet(&mut ws, Duration::from_millis(200)).await;
}

#[tokio::test]
async fn connect_webhook_answer_is_applied_and_state_is_carried_verbatim() {
    let stub = Stub::start(|h| match (h.method.as_str(), h.event().as_str()) {
        ("POST", "connect") => Some(
            reply(200)
                .json(json!({"userId": "bob", "groups": ["g"], "roles": ["webpubsub.sendToGroup.g"], "subprotocol": JSON_V1}))
                .header("ce-connectionstate", "opaque-state:1"),
        ),
        ("POST", "echo") => Some(
            reply(200)
                .text("echoed")
                .header("ce-connectionstate", "opaque-state:2"),
        ),
        _ => None,
    })
    .await;
    let emu = emulator(Some(&stub)).await;
    let tok = token(&emu, "chat", Some("alice"), &["webpubsub.joinLeaveGroup.x"]);
    let u = format!("{}&room=lobby", url(&emu, "chat", &tok));
    let (mut ws, p) = connect(&u, Some(&format!("custom, {JSON_V1}")))
        .await
        .unwrap();
    assert_eq!(p.as_deref(), Some(JSON_V1), "the handler's choice");
    let c = recv(&mut ws).await;
    assert_eq!(
        c["userId"], "bob",
        "the handler's userId wins over the token's sub"
    );
    let id = c["connectionId"].as_str().unwrap().to_string();

    // The connect event: before the 101, signed, with claims, query (no access_token) and offers.
    let hook = stub.wait("connect", |h| h.event() == "connect").await;
    assert_eq!(hook.path, "/hooks/chat/connect");
    assert_eq!(
        hook.header("ce-type").as_deref(),
        Some("azure.webpubsub.sys.connect")
    );
    assert_eq!(hook.header("ce-userid").as_deref(), Some("alice"));
    assert_eq!(hook.header("ce-signature"), Some(sign([KEY], &id)));
    assert_eq!(
        hook.header("webhook-request-origin").as_deref(),
        Some("localhost")
    );
    let body = hook.json_or_null();
    assert_eq!(body["claims"]["sub"], json!(["alice"]));
    assert_eq!(
        body["claims"]["role"],
        json!(["webpubsub.joinLeaveGroup.x"])
    );
    assert_eq!(body["query"], json!({"room": ["lobby"]}));
    assert_eq!(body["subprotocols"], json!(["custom", JSON_V1]));

    // Groups and roles from the answer: bob is in g and may send to it.
    send(&mut ws, json!({"type": "sendToGroup", "group": "g", "ackId": 1, "dataType": "text", "data": "hi g"})).await;
    assert_eq!(
        recv(&mut ws).await,
        json!({"type": "message", "from": "group", "group": "g", "fromUserId": "bob", "dataType": "text", "data": "hi g"})
    );
    assert_eq!(
        recv(&mut ws).await,
        json!({"type": "ack", "ackId": 1, "success": true})
    );
    // Token roles still apply (union).
    send(
        &mut ws,
        json!({"type": "joinGroup", "group": "x", "ackId": 2}),
    )
    .await;
    assert_eq!(recv(&mut ws).await["success"], true);

    // State set by connect goes out verbatim on the next events; a user event may replace it.
    let connected = stub.wait("connected", |h| h.event() == "connected").await;
    assert_eq!(
        connected.header("ce-connectionstate").as_deref(),
        Some("opaque-state:1")
    );
    assert_eq!(connected.header("ce-subprotocol").as_deref(), Some(JSON_V1));
    send(
        &mut ws,
        json!({"type": "event", "event": "echo", "ackId": 3, "dataType": "text", "data": "x"}),
    )
    .await;
    assert_eq!(
        recv(&mut ws).await,
        json!({"type": "message", "from": "server", "dataType": "text", "data": "echoed"})
    );
    assert_eq!(
        recv(&mut ws).await,
        json!({"type": "ack", "ackId": 3, "success": true})
    );
    let echo = stub.wait("echo", |h| h.event() == "echo").await;
    assert_eq!(
        echo.header("ce-connectionstate").as_deref(),
        Some("opaque-state:1")
    );
    assert_eq!(echo.header("content-type").as_deref(), Some("text/plain"));
    assert_eq!(
        echo.header("ce-type").as_deref(),
        Some("azure.webpubsub.user.echo")
    );

    ws.close(None).await.unwrap();
    let d = stub
        .wait("disconnected", |h| h.event() == "disconnected")
        .await;
    assert_eq!(
        d.header("ce-connectionstate").as_deref(),
        Some("opaque-state:2")
    );
    assert_eq!(
        d.json_or_null()["reason"],
        "Connection closed by the client."
    );

    // The abuse-protection handshake ran once for the URL, on `{event}` = validate.
    let _second = connect(&u, Some(JSON_V1)).await.unwrap();
    let options = stub.all("OPTIONS");
    assert_eq!(
        options.len(),
        1,
        "one abuse-protection OPTIONS per handler URL"
    );
    assert_eq!(options[0].path, "/hooks/chat/validate");
    assert_eq!(
        options[0].header("webhook-request-origin").as_deref(),
        Some("localhost")
    );
}

#[tokio::test]
async fn connect_rejections_timeouts_and_failed_handshakes_refuse_the_upgrade() {
    let stub = Stub::start(|h| {
        let user = h.json_or_null()["claims"]["sub"][0]
            .as_str()
            .unwrap_or("")
            .to_string();
        match (h.method.as_str(), user.as_str()) {
            ("POST", "denied") => Some(reply(403).text("not you")),
            ("POST", "broken") => Some(reply(500).text("boom")),
            ("POST", "slow") => Some(reply(200).after(Duration::from_secs(3))),
            ("POST", "garbage") => Some(reply(200).text("not json")),
            ("POST", "badproto") => Some(reply(200).json(json!({"subprotocol": "nope"}))),
            _ => None,
        }
    })
    .await;
    let emu = emulator(Some(&stub)).await;
    let status = |user: &'static str| {
        let u = url(&emu, "chat", &token(&emu, "chat", Some(user), &[]));
        async move { connect(&u, Some(JSON_V1)).await.err() }
    };
    assert_eq!(
        status("denied").await,
        Some(403),
        "the handler's 4xx is the client's status"
    );
    assert_eq!(status("broken").await, Some(500));
    let t0 = Instant::now();
    assert_eq!(
        status("slow").await,
        Some(500),
        "a hanging connect handler times out"
    );
    assert!(
        t0.elapsed() < Duration::from_secs(3),
        "bounded by the upstream timeout"
    );
    assert_eq!(status("garbage").await, Some(500));
    assert_eq!(status("badproto").await, Some(500));
    assert!(status("fine").await.is_none());
    // A refused connection never existed: no connected/disconnected for it.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let connected: Vec<String> = stub
        .posts()
        .iter()
        .filter(|h| h.event() == "connected")
        .map(|h| h.header("ce-userid").unwrap_or_default())
        .collect();
    assert_eq!(connected, ["fine"]);

    // A handler that refuses the abuse-protection handshake gets no events: connect fails.
    let refusing = Stub::start(|h| (h.method == "OPTIONS").then(|| reply(200))).await;
    let emu = emulator(Some(&refusing)).await;
    let u = url(&emu, "chat", &token(&emu, "chat", Some("a"), &[]));
    assert_eq!(connect(&u, Some(JSON_V1)).await.err(), Some(500));
    assert!(refusing.posts().is_empty());

    // An unreachable handler: 500, quickly.
    let emu = emulator_with(None, |c| {
        c.handlers = vec![HandlerSettings::all_events(
            "*",
            "http://127.0.0.1:9/{event}",
        )]
    })
    .await;
    let u = url(&emu, "chat", &token(&emu, "chat", Some("a"), &[]));
    assert_eq!(connect(&u, Some(JSON_V1)).await.err(), Some(500));
}

// ------------------------------------------------------------------------------------------
// JSON protocols
// ------------------------------------------------------------------------------------------

#[tokio::test]
async fn bad_frames_get_protocol_errors_not_crashes() {
    let stub = Stub::start(|_| None).await;
    let emu = emulator(Some(&stub)).await;
    let oversize = format!("\"{}\"", "x".repeat(1024 * 1024 + 1));
    let cases: Vec<(&str, Message, u16)> = vec![
        ("invalid JSON", Message::text("{not json"), 1002),
        ("a JSON array", Message::text("[1,2]"), 1002),
        (
            "unknown type",
            Message::text(r#"{"type":"launchRockets"}"#),
            1002,
        ),
        ("missing type", Message::text(r#"{"group":"g"}"#), 1002),
        (
            "string ackId",
            Message::text(r#"{"type":"joinGroup","group":"g","ackId":"1"}"#),
            1002,
        ),
        ("binary frame", Message::binary(vec![1, 2, 3]), 1003),
        ("oversize frame", Message::text(oversize), 1009),
    ];
    for proto in [JSON_V1, JSON_RELIABLE_V1] {
        for (what, frame, code) in &cases {
            let (mut ws, id) = json_client(&emu, "alice", &[], proto).await;
            let _ = ws.send(frame.clone()).await;
            let (got, frames) = closed(&mut ws).await;
            assert_eq!(got, Some(*code), "{proto} {what}: {frames:?}");
            let d = frames.iter().find(|f| f["event"] == "disconnected");
            assert!(
                d.is_some_and(|d| d["message"].as_str().is_some()),
                "{proto} {what}: a disconnected message first: {frames:?}"
            );
            // The connection is over (not kept for recovery): disconnected webhook.
            stub.wait(what, |h| h.event() == "disconnected" && h.conn() == id)
                .await;
        }
    }
    // Still serving.
    let (mut ws, _) = json_client(&emu, "alice", &[], JSON_V1).await;
    send(&mut ws, json!({"type": "ping"})).await;
    assert_eq!(recv(&mut ws).await, json!({"type": "pong"}));
}

#[tokio::test]
async fn acks_roles_groups_and_no_echo() {
    let emu = emulator(None).await;
    let (mut a, a_id) = json_client(
        &emu,
        "alice",
        &["webpubsub.joinLeaveGroup.g", "webpubsub.sendToGroup.g"],
        JSON_V1,
    )
    .await;
    let (mut b, _) = json_client(&emu, "bob", &["webpubsub.joinLeaveGroup"], JSON_V1).await;

    // Role checks with Forbidden acks; join with the group role, join any with the plain role.
    send(
        &mut a,
        json!({"type": "joinGroup", "group": "other", "ackId": 1}),
    )
    .await;
    let ack = recv(&mut a).await;
    assert_eq!(
        (
            ack["ackId"].as_u64(),
            ack["success"].as_bool(),
            ack["error"]["name"].as_str()
        ),
        (Some(1), Some(false), Some("Forbidden"))
    );
    send(
        &mut a,
        json!({"type": "joinGroup", "group": "g", "ackId": 2}),
    )
    .await;
    assert_eq!(
        recv(&mut a).await,
        json!({"type": "ack", "ackId": 2, "success": true})
    );
    send(
        &mut b,
        json!({"type": "joinGroup", "group": "g", "ackId": 1}),
    )
    .await;
    assert_eq!(recv(&mut b).await["success"], true);
    send(
        &mut b,
        json!({"type": "sendToGroup", "group": "g", "ackId": 2, "data": {"x": 1}}),
    )
    .await;
    assert_eq!(
        recv(&mut b).await["error"]["name"],
        "Forbidden",
        "bob may not send"
    );

    // sendToGroup reaches every member (sender included); noEcho leaves the sender out.
    send(&mut a, json!({"type": "sendToGroup", "group": "g", "ackId": 3, "dataType": "json", "data": {"n": 1}, "noEcho": false})).await;
    assert_eq!(recv(&mut a).await["data"], json!({"n": 1}));
    assert_eq!(recv(&mut a).await["ackId"], 3);
    assert_eq!(
        recv(&mut b).await,
        json!({"type": "message", "from": "group", "group": "g", "fromUserId": "alice", "dataType": "json", "data": {"n": 1}})
    );
    send(&mut a, json!({"type": "sendToGroup", "group": "g", "ackId": 4, "dataType": "binary", "data": "AQID", "noEcho": true})).await;
    assert_eq!(
        recv(&mut a).await,
        json!({"type": "ack", "ackId": 4, "success": true})
    );
    assert_eq!(recv(&mut b).await["data"], "AQID");

    // A repeated ackId: Duplicate, and nothing is sent again.
    send(&mut a, json!({"type": "sendToGroup", "group": "g", "ackId": 4, "dataType": "text", "data": "again", "noEcho": true})).await;
    let dup = recv(&mut a).await;
    assert_eq!(
        (dup["success"].as_bool(), dup["error"]["name"].as_str()),
        (Some(false), Some("Duplicate"))
    );
    quiet(&mut b, Duration::from_millis(150)).await;
    // A failed ackId may be retried (the first try was Forbidden).
    send(
        &mut a,
        json!({"type": "joinGroup", "group": "other", "ackId": 1}),
    )
    .await;
    assert_eq!(
        recv(&mut a).await["error"]["name"],
        "Forbidden",
        "not Duplicate"
    );

    // Bad requests inside a valid frame: BadRequest acks, the connection stays.
    send(
        &mut a,
        json!({"type": "sendToGroup", "group": "g", "ackId": 5, "dataType": "text", "data": 42}),
    )
    .await;
    assert_eq!(recv(&mut a).await["error"]["name"], "BadRequest");
    send(&mut a, json!({"type": "joinGroup", "ackId": 6})).await;
    assert_eq!(recv(&mut a).await["error"]["name"], "BadRequest");

    // leaveGroup: no more group messages; ping/pong; sequenceAck is harmless on json.v1.
    send(
        &mut b,
        json!({"type": "leaveGroup", "group": "g", "ackId": 3}),
    )
    .await;
    assert_eq!(recv(&mut b).await["success"], true);
    send(&mut a, json!({"type": "sendToGroup", "group": "g", "dataType": "text", "data": "bye", "noEcho": true})).await;
    quiet(&mut b, Duration::from_millis(150)).await;
    send(&mut a, json!({"type": "sequenceAck", "sequenceId": 1})).await;
    send(&mut a, json!({"type": "ping"})).await;
    assert_eq!(recv(&mut a).await, json!({"type": "pong"}));

    // The emulator knows the groups (REST view).
    let svc = service(&emu);
    assert!(svc.group_exists("g").await.unwrap());
    let members = svc.list_connections_in_group("g").await.unwrap();
    assert_eq!(
        members
            .iter()
            .map(|m| m.connection_id.clone())
            .collect::<Vec<_>>(),
        [a_id]
    );
}

#[tokio::test]
async fn user_event_webhook_failures_give_error_acks_and_keep_the_connection() {
    let stub = Stub::start(|h| match h.event().as_str() {
        "fail" => Some(reply(500).text("boom")),
        "hang" => Some(reply(200).after(Duration::from_secs(3))),
        "json" => Some(reply(200).json(json!({"ok": true}))),
        "bytes" => Some(reply(200).body("application/octet-stream", &[0, 1])),
        "nobody" => Some(reply(200).body("application/octet-stream", &[])),
        "empty" => Some(reply(204)),
        "weird" => Some(reply(200).body("image/png", b"x")),
        _ => None,
    })
    .await;
    let emu = emulator(Some(&stub)).await;
    let (mut ws, id) = json_client(&emu, "alice", &[], JSON_RELIABLE_V1).await;
    let event = |n: &str, ack: u64| json!({"type": "event", "event": n, "ackId": ack, "dataType": "json", "data": {"q": 1}});

    send(&mut ws, event("fail", 1)).await;
    let a = recv(&mut ws).await;
    assert_eq!(
        (
            a["ackId"].as_u64(),
            a["success"].as_bool(),
            a["error"]["name"].as_str()
        ),
        (Some(1), Some(false), Some("InternalServerError"))
    );
    let t0 = Instant::now();
    send(&mut ws, event("hang", 2)).await;
    let a = recv(&mut ws).await;
    assert_eq!(a["error"]["name"], "InternalServerError", "{a}");
    assert!(
        t0.elapsed() < Duration::from_secs(3),
        "bounded by the upstream timeout"
    );
    send(&mut ws, event("weird", 3)).await;
    assert_eq!(
        recv(&mut ws).await["error"]["name"],
        "InternalServerError",
        "unsupported reply content type"
    );

    // Successful replies: relayed before the ack, sequenced on the reliable protocol.
    send(&mut ws, event("json", 4)).await;
    assert_eq!(
        recv(&mut ws).await,
        json!({"type": "message", "from": "server", "dataType": "json", "data": {"ok": true}, "sequenceId": 1})
    );
    assert_eq!(
        recv(&mut ws).await,
        json!({"type": "ack", "ackId": 4, "success": true})
    );
    send(&mut ws, event("bytes", 5)).await;
    assert_eq!(
        recv(&mut ws).await,
        json!({"type": "message", "from": "server", "dataType": "binary", "data": "AAE=", "sequenceId": 2})
    );
    assert_eq!(recv(&mut ws).await["ackId"], 5);
    for (n, ack) in [("empty", 6), ("nobody", 7)] {
        send(&mut ws, event(n, ack)).await;
        assert_eq!(
            recv(&mut ws).await,
            json!({"type": "ack", "ackId": ack, "success": true}),
            "{n}: no message"
        );
    }
    // Duplicate: the handler is not called again.
    let calls = || stub.posts().iter().filter(|h| h.event() == "json").count();
    let before = calls();
    send(&mut ws, event("json", 4)).await;
    assert_eq!(recv(&mut ws).await["error"]["name"], "Duplicate");
    assert_eq!(calls(), before);
    // The upload: JSON body, content type, ce-* headers.
    let up = stub.wait("json", |h| h.event() == "json").await;
    assert_eq!(
        up.header("content-type").as_deref(),
        Some("application/json")
    );
    assert_eq!(up.json_or_null(), json!({"q": 1}));
    assert_eq!(
        up.header("ce-subprotocol").as_deref(),
        Some(JSON_RELIABLE_V1)
    );
    assert_eq!(up.conn(), id);

    // invoke → invokeResponse.
    send(&mut ws, json!({"type": "invoke", "invocationId": "9", "target": "event", "event": "json", "dataType": "text", "data": "x"})).await;
    assert_eq!(
        recv(&mut ws).await,
        json!({"type": "invokeResponse", "invocationId": "9", "success": true, "dataType": "json", "data": {"ok": true}})
    );
    send(
        &mut ws,
        json!({"type": "invoke", "invocationId": "10", "target": "event", "event": "fail"}),
    )
    .await;
    let r = recv(&mut ws).await;
    assert_eq!(
        (r["success"].as_bool(), r["error"]["name"].as_str()),
        (Some(false), Some("InternalServerError"))
    );
    send(
        &mut ws,
        json!({"type": "cancelInvocation", "invocationId": "10"}),
    )
    .await;

    // Still connected after all that.
    send(&mut ws, json!({"type": "ping"})).await;
    assert_eq!(recv(&mut ws).await, json!({"type": "pong"}));

    // No handler for the event: InternalServerError too.
    let emu2 = emulator_with(Some(&stub), |c| {
        c.handlers[0].user_event_pattern = "only-this".into()
    })
    .await;
    let (mut ws2, _) = json_client(&emu2, "alice", &[], JSON_V1).await;
    send(&mut ws2, event("json", 1)).await;
    assert_eq!(recv(&mut ws2).await["error"]["name"], "InternalServerError");
}

#[tokio::test]
async fn reliable_recovery_replays_unacked_messages_and_refuses_with_1008() {
    let stub = Stub::start(|_| None).await;
    let emu = emulator(Some(&stub)).await;
    let svc = service(&emu);
    let opts = SendOptions::default();
    let u = url(&emu, "chat", &token(&emu, "chat", Some("alice"), &[]));
    let (mut ws, _) = connect(&u, Some(JSON_RELIABLE_V1)).await.unwrap();
    let c = recv(&mut ws).await;
    let id = c["connectionId"].as_str().unwrap().to_string();
    let rt = c["reconnectionToken"].as_str().unwrap().to_string();
    svc.add_connection_to_group("g", &id).await.unwrap();

    for m in ["one", "two", "three"] {
        svc.send_to_connection(&id, &text(m), &opts).await.unwrap();
    }
    for (seq, m) in [(1, "one"), (2, "two"), (3, "three")] {
        let got = recv(&mut ws).await;
        assert_eq!(
            (got["sequenceId"].as_u64(), got["data"].as_str()),
            (Some(seq), Some(m))
        );
    }
    send(&mut ws, json!({"type": "sequenceAck", "sequenceId": 2})).await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    drop(ws); // TCP gone, no close frame: a drop.
    tokio::time::sleep(Duration::from_millis(100)).await;
    svc.send_to_group("g", &text("while away"), &opts)
        .await
        .unwrap();
    assert!(
        svc.connection_exists(&id).await.unwrap(),
        "kept for recovery"
    );

    // A wrong token: 101, disconnected, 1008; the connection stays recoverable.
    let bad = format!("{u}&awps_connection_id={id}&awps_reconnection_token=wrong");
    let (mut x, p) = connect(&bad, Some(JSON_RELIABLE_V1)).await.unwrap();
    assert_eq!(p.as_deref(), Some(JSON_RELIABLE_V1));
    let (code, frames) = closed(&mut x).await;
    assert_eq!(code, Some(1008));
    assert_eq!(
        frames,
        [
            json!({"type": "system", "event": "disconnected", "message": "The connection could not be recovered."})
        ]
    );

    // The right token (the access token in the URL no longer matters): replay from seq 3.
    let good = format!(
        "ws://{}/client/hubs/chat?access_token=expired-or-whatever&awps_connection_id={id}&awps_reconnection_token={rt}",
        emu.local_addr
    );
    let (mut ws, p) = connect(&good, Some(JSON_RELIABLE_V1)).await.unwrap();
    assert_eq!(p.as_deref(), Some(JSON_RELIABLE_V1));
    let first = recv(&mut ws).await;
    assert_eq!(
        (first["event"].as_str(), first["connectionId"].as_str()),
        (Some("connected"), Some(id.as_str()))
    );
    let r3 = recv(&mut ws).await;
    let r4 = recv(&mut ws).await;
    assert_eq!(
        (r3["sequenceId"].as_u64(), r3["data"].as_str()),
        (Some(3), Some("three"))
    );
    assert_eq!(
        (
            r4["sequenceId"].as_u64(),
            r4["from"].as_str(),
            r4["group"].as_str(),
            r4["data"].as_str()
        ),
        (Some(4), Some("group"), Some("g"), Some("while away"))
    );
    // Groups survived; no second connect/connected webhook; no disconnected yet.
    svc.send_to_group("g", &text("after"), &opts).await.unwrap();
    assert_eq!(recv(&mut ws).await["sequenceId"], 5);
    let events: Vec<String> = stub
        .posts()
        .iter()
        .filter(|h| h.conn() == id)
        .map(|h| h.event())
        .collect();
    assert_eq!(events, ["connect", "connected"]);

    // Drop again and let the window (2 s here) pass: disconnected webhook, recovery refused.
    drop(ws);
    let d = stub
        .wait("disconnected after the window", |h| {
            h.event() == "disconnected" && h.conn() == id
        })
        .await;
    assert_eq!(
        d.json_or_null()["reason"],
        "The connection was not recovered in time."
    );
    assert!(!svc.connection_exists(&id).await.unwrap());
    let (mut late, _) = connect(&good, Some(JSON_RELIABLE_V1)).await.unwrap();
    assert_eq!(closed(&mut late).await.0, Some(1008));

    // A close with 1000 is final at once, and the close handshake completes.
    let (mut ws, id2) = json_client(&emu, "bob", &[], JSON_RELIABLE_V1).await;
    ws.close(Some(tungstenite::protocol::CloseFrame {
        code: 1000u16.into(),
        reason: "".into(),
    }))
    .await
    .unwrap();
    assert_eq!(closed(&mut ws).await.0, Some(1000));
    stub.wait("final close", |h| {
        h.event() == "disconnected" && h.conn() == id2
    })
    .await;
}

#[tokio::test]
async fn server_close_and_close_frame_policy() {
    let stub = Stub::start(|_| None).await;
    let emu = emulator(Some(&stub)).await;
    let svc = service(&emu);
    let (mut ws, id) = json_client(&emu, "alice", &[], JSON_RELIABLE_V1).await;
    svc.close_connection(&id, Some("kicked")).await.unwrap();
    let (code, frames) = closed(&mut ws).await;
    assert_eq!(code, Some(1008), "no recovery after a server close");
    assert_eq!(
        frames,
        [json!({"type": "system", "event": "disconnected", "message": "kicked"})]
    );
    let d = stub
        .wait("disconnected", |h| {
            h.event() == "disconnected" && h.conn() == id
        })
        .await;
    assert_eq!(d.json_or_null()["reason"], "kicked");

    // Closing a detached reliable connection ends it at once.
    let (ws, id) = json_client(&emu, "dave", &[], JSON_RELIABLE_V1).await;
    drop(ws);
    tokio::time::sleep(Duration::from_millis(100)).await;
    svc.close_connection(&id, None).await.unwrap();
    stub.wait("detached close", |h| {
        h.event() == "disconnected" && h.conn() == id
    })
    .await;

    // A reliable client's close frame without 1000 (what client.stop() sends) is recoverable by
    // default; with close_frame_is_final it ends the connection at once.
    let (mut ws, id) = json_client(&emu, "bob", &[], JSON_RELIABLE_V1).await;
    ws.close(None).await.unwrap();
    let _ = closed(&mut ws).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        svc.connection_exists(&id).await.unwrap(),
        "kept for recovery"
    );
    let emu2 = emulator_with(Some(&stub), |c| c.close_frame_is_final = true).await;
    let (mut ws, id) = json_client(&emu2, "carol", &[], JSON_RELIABLE_V1).await;
    ws.close(None).await.unwrap();
    let _ = closed(&mut ws).await;
    stub.wait("final", |h| h.event() == "disconnected" && h.conn() == id)
        .await;
}

// ------------------------------------------------------------------------------------------
// Plain WebSocket clients
// ------------------------------------------------------------------------------------------

/// A client that sends nothing, waits for `open` and has the server message it at once (the
/// official SDK's e2e does this) must get the message: the connection is registered before the
/// `101`, not when the upgraded socket is first polled. Many rounds, since the gap was a race.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_is_reachable_as_soon_as_its_handshake_returns() {
    let mut c = EmulatorConfig::local(0, vec![]);
    c.upstream_timeout = Duration::from_millis(800);
    let emulator = Emulator::bind(c).await.unwrap();
    let view = emulator.view();
    let emu = emulator.spawn();
    let svc = service(&emu);
    for round in 0..200 {
        let user = format!("early{round}");
        let u = url(&emu, "chat", &token(&emu, "chat", Some(&user), &[]));
        let (mut plain, _) = connect(&u, None).await.unwrap();
        // Checked before this task yields again.
        let known = view
            .connections()
            .iter()
            .any(|c| c.user_id.as_deref() == Some(&*user));
        assert!(known, "round {round}: connected but not registered");
        let u = url(&emu, "chat", &token(&emu, "chat", Some(&user), &[]));
        let (mut json, _) = connect(&u, Some(JSON_V1)).await.unwrap();
        svc.send_to_user(&user, &text("now"), &SendOptions::default())
            .await
            .unwrap();
        assert_eq!(
            next_msg(&mut plain).await,
            Some(Message::text("now")),
            "round {round}"
        );
        // A JSON client still sees `connected` first, then the message.
        assert_eq!(recv(&mut json).await["event"], "connected", "round {round}");
        assert_eq!(recv(&mut json).await["data"], "now", "round {round}");
    }
}

#[tokio::test]
async fn plain_clients_get_raw_frames_and_are_closed_when_the_handler_fails() {
    let stub = Stub::start(|h| {
        let body = String::from_utf8_lossy(&h.body).to_string();
        let binary = h.header("content-type").as_deref() == Some("application/octet-stream");
        match (h.event().as_str(), body.as_str()) {
            ("message", "fail") => Some(reply(500)),
            ("message", _) if binary => Some(reply(200).body("application/octet-stream", &h.body)),
            ("message", "quiet") => Some(reply(204)),
            ("message", b) => Some(reply(200).text(&format!("echo: {b}"))),
            _ => None,
        }
    })
    .await;
    let emu = emulator(Some(&stub)).await;
    let u = url(&emu, "chat", &token(&emu, "chat", Some("p"), &[]));
    let (mut ws, p) = connect(&u, None).await.unwrap();
    assert_eq!(p, None);
    ws.send(Message::text("hello")).await.unwrap();
    assert_eq!(next_msg(&mut ws).await, Some(Message::text("echo: hello")));
    let up = stub.wait("message", |h| h.event() == "message").await;
    assert_eq!(up.header("content-type").as_deref(), Some("text/plain"));
    assert_eq!(
        up.header("ce-type").as_deref(),
        Some("azure.webpubsub.user.message")
    );
    assert_eq!(up.header("ce-subprotocol"), None);
    ws.send(Message::binary(vec![1, 2])).await.unwrap();
    assert_eq!(next_msg(&mut ws).await, Some(Message::binary(vec![1, 2])));
    ws.send(Message::text("quiet")).await.unwrap();
    quiet(&mut ws, Duration::from_millis(150)).await;

    // REST sends arrive raw.
    let svc = service(&emu);
    svc.send_to_user(
        "p",
        &EventData::Json(json!({"k": "v"})),
        &SendOptions::default(),
    )
    .await
    .unwrap();
    assert_eq!(next_msg(&mut ws).await, Some(Message::text(r#"{"k":"v"}"#)));

    // A failed handler closes a plain client (it has no acks).
    ws.send(Message::text("fail")).await.unwrap();
    assert_eq!(closed(&mut ws).await.0, Some(1011));

    // sendToGroup mode needs the role.
    let no_role = format!("{u}&webpubsub_mode=sendToGroup&group=g");
    let (mut ws, _) = connect(&no_role, None).await.unwrap();
    ws.send(Message::text("x")).await.unwrap();
    assert_eq!(closed(&mut ws).await.0, Some(1008));
    let (mut member, _) = connect(
        &url(&emu, "chat", &token(&emu, "chat", Some("m"), &[])),
        None,
    )
    .await
    .unwrap();
    let m_id = stub
        .wait("m connected", |h| {
            h.event() == "connected" && h.header("ce-userid").as_deref() == Some("m")
        })
        .await
        .conn();
    svc.add_connection_to_group("g", &m_id).await.unwrap();
    let with_role = format!(
        "{}&webpubsub_mode=sendToGroup&group=g",
        url(
            &emu,
            "chat",
            &token(&emu, "chat", Some("pub"), &["webpubsub.sendToGroup.g"])
        )
    );
    let (mut publisher, _) = connect(&with_role, None).await.unwrap();
    publisher.send(Message::text("to g")).await.unwrap();
    assert_eq!(next_msg(&mut member).await, Some(Message::text("to g")));
}

// ------------------------------------------------------------------------------------------
// REST API
// ------------------------------------------------------------------------------------------

#[tokio::test]
async fn rest_api_serves_every_service_client_operation() {
    let emu = emulator(None).await;
    let svc = service(&emu);
    let (mut a, a_id) = json_client(&emu, "alice", &[], JSON_V1).await;
    let (mut b, b_id) = json_client(&emu, "bob", &[], JSON_V1).await;
    let opts = SendOptions::default();

    assert!(svc.health().await.unwrap());
    svc.send_to_all(&text("all"), &opts).await.unwrap();
    assert_eq!(
        recv(&mut a).await,
        json!({"type": "message", "from": "server", "dataType": "text", "data": "all"})
    );
    assert_eq!(recv(&mut b).await["data"], "all");
    let excluding_b = SendOptions {
        excluded: vec![b_id.clone()],
        ..Default::default()
    };
    let only_bob = SendOptions {
        filter: Some("userId eq 'bob'".into()),
        ..Default::default()
    };
    svc.send_to_all(&text("not b"), &excluding_b).await.unwrap();
    svc.send_to_all(&text("filtered"), &only_bob).await.unwrap();
    assert_eq!(recv(&mut a).await["data"], "not b");
    assert_eq!(recv(&mut b).await["data"], "filtered");
    svc.send_to_user("alice", &EventData::Json(json!([1])), &opts)
        .await
        .unwrap();
    assert_eq!(recv(&mut a).await["data"], json!([1]));
    let bytes = EventData::Binary(Bytes::from_static(b"\xff"));
    svc.send_to_connection(&b_id, &bytes, &opts).await.unwrap();
    assert_eq!(
        recv(&mut b).await,
        json!({"type": "message", "from": "server", "dataType": "binary", "data": "/w=="})
    );

    svc.add_connection_to_group("g", &a_id).await.unwrap();
    svc.add_user_to_group("g", "bob").await.unwrap();
    assert!(svc.group_exists("g").await.unwrap());
    let mut members: Vec<String> = svc
        .list_connections_in_group("g")
        .await
        .unwrap()
        .into_iter()
        .map(|m| m.connection_id)
        .collect();
    members.sort();
    let mut want = vec![a_id.clone(), b_id.clone()];
    want.sort();
    assert_eq!(members, want);
    svc.send_to_group("g", &text("to g"), &opts).await.unwrap();
    assert_eq!(
        recv(&mut a).await,
        json!({"type": "message", "from": "group", "group": "g", "dataType": "text", "data": "to g"})
    );
    assert_eq!(recv(&mut b).await["group"], "g");
    svc.remove_user_from_group("g", "bob").await.unwrap();
    svc.remove_connection_from_group("g", &a_id).await.unwrap();
    assert!(!svc.group_exists("g").await.unwrap());
    svc.add_connections_to_groups(&["h".into(), "i".into()], "userId eq 'alice'")
        .await
        .unwrap();
    assert!(svc.group_exists("i").await.unwrap());
    svc.remove_connections_from_groups(&["h".into()], "userId eq 'alice'")
        .await
        .unwrap();
    assert!(!svc.group_exists("h").await.unwrap());
    svc.remove_connection_from_all_groups(&a_id).await.unwrap();
    assert!(!svc.group_exists("i").await.unwrap());
    svc.add_user_to_group("j", "bob").await.unwrap();
    svc.remove_user_from_all_groups("bob").await.unwrap();
    assert!(!svc.group_exists("j").await.unwrap());

    assert!(svc.connection_exists(&a_id).await.unwrap());
    assert!(!svc.connection_exists("nope").await.unwrap());
    assert!(svc.user_exists("bob").await.unwrap());
    assert!(!svc.user_exists("nobody").await.unwrap());

    let send_to_g =
        |ack: u64| json!({"type": "sendToGroup", "group": "g", "ackId": ack, "data": 1});
    assert!(!svc
        .check_permission(Permission::SendToGroup, &a_id, Some("g"))
        .await
        .unwrap());
    svc.grant_permission(Permission::SendToGroup, &a_id, Some("g"))
        .await
        .unwrap();
    assert!(svc
        .check_permission(Permission::SendToGroup, &a_id, Some("g"))
        .await
        .unwrap());
    send(&mut a, send_to_g(1)).await;
    assert_eq!(recv(&mut a).await["success"], true);
    svc.revoke_permission(Permission::SendToGroup, &a_id, Some("g"))
        .await
        .unwrap();
    send(&mut a, send_to_g(2)).await;
    assert_eq!(recv(&mut a).await["error"]["name"], "Forbidden");
    svc.grant_permission(Permission::JoinLeaveGroup, &a_id, None)
        .await
        .unwrap();
    assert!(svc
        .check_permission(Permission::JoinLeaveGroup, &a_id, Some("any"))
        .await
        .unwrap());

    // :generateToken mints a token this emulator accepts (role, group, user).
    let t = svc
        .generate_token(&ClientTokenOptions {
            user_id: Some("gen".into()),
            roles: vec!["webpubsub.joinLeaveGroup".into()],
            groups: vec!["k".into()],
            expires_in: Some(std::time::Duration::from_secs(5 * 60)),
        })
        .await
        .unwrap();
    let (mut g, _) = connect(&url(&emu, "chat", &t), Some(JSON_V1))
        .await
        .unwrap();
    assert_eq!(recv(&mut g).await["userId"], "gen");
    assert!(
        svc.group_exists("k").await.unwrap(),
        "webpubsub.group claim joined"
    );

    svc.close_user_connections("gen", &[], Some("user"))
        .await
        .unwrap();
    assert_eq!(closed(&mut g).await.0, Some(1008));
    svc.add_connection_to_group("z", &b_id).await.unwrap();
    svc.close_group_connections("z", &[], Some("group"))
        .await
        .unwrap();
    assert_eq!(closed(&mut b).await.0, Some(1008));
    svc.close_all_connections(&[], Some("all")).await.unwrap();
    let (code, frames) = closed(&mut a).await;
    assert_eq!(code, Some(1008));
    assert_eq!(frames.last().unwrap()["message"], "all");
}

#[tokio::test]
async fn rest_auth_paging_and_errors() {
    let emu = emulator(None).await;
    let base = emu.endpoint();
    let http = reqwest::Client::new();
    let send_url = format!("{base}/api/hubs/chat/:send?api-version=2024-12-01");
    let key = AccessKey::new(KEY);
    let post = |auth: Option<String>| {
        let mut r = http
            .post(&send_url)
            .header("content-type", "text/plain")
            .body("x");
        if let Some(a) = auth {
            r = r.header("authorization", a);
        }
        r.send()
    };
    assert_eq!(post(None).await.unwrap().status(), 401);
    let wrong_aud = rest_token(
        &key,
        &format!("{base}/api/hubs/chat/:closeConnections"),
        unix_now(),
    );
    assert_eq!(
        post(Some(format!("Bearer {wrong_aud}")))
            .await
            .unwrap()
            .status(),
        401
    );
    let forged = rest_token(&AccessKey::new(OTHER_KEY), &send_url, unix_now());
    let r = post(Some(format!("Bearer {forged}"))).await.unwrap();
    assert_eq!(r.status(), 401);
    assert_eq!(r.headers().get("x-ms-error-code").unwrap(), "Unauthorized");
    let expired = rest_token(&key, &send_url, unix_now() - 7200);
    assert_eq!(
        post(Some(format!("Bearer {expired}")))
            .await
            .unwrap()
            .status(),
        401
    );
    // The audience with or without the query, any host.
    for aud in [
        send_url.clone(),
        format!("{base}/api/hubs/chat/:send"),
        "http://localhost:1/api/hubs/chat/:send".to_string(),
    ] {
        let t = rest_token(&key, &aud, unix_now());
        assert_eq!(
            post(Some(format!("Bearer {t}"))).await.unwrap().status(),
            202,
            "{aud}"
        );
    }
    // Health needs no token.
    let health = http
        .head(format!("{base}/api/health"))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status(), 200);
    // Unknown operation, missing api-version, bad filter.
    let call = |method: reqwest::Method, path: &str| {
        let u = format!("{base}{path}");
        let t = rest_token(&key, &u, unix_now());
        http.request(method, u)
            .header("authorization", format!("Bearer {t}"))
            .send()
    };
    let status = |r: reqwest::Response| r.status().as_u16();
    let get = reqwest::Method::GET;
    let post_m = reqwest::Method::POST;
    assert_eq!(
        status(
            call(get.clone(), "/api/hubs/chat/nothing?api-version=2024-12-01")
                .await
                .unwrap()
        ),
        404
    );
    assert_eq!(
        status(call(post_m.clone(), "/api/hubs/chat/:send").await.unwrap()),
        400
    );
    assert_eq!(
        status(
            call(
                post_m,
                "/api/hubs/chat/:send?api-version=2024-12-01&filter=userId%20eq"
            )
            .await
            .unwrap()
        ),
        400
    );

    // Paging: 5 members, pages of 2, followed through nextLink by the Rust client.
    let svc = service(&emu);
    let mut sockets = vec![];
    for i in 0..5 {
        let (ws, id) = json_client(&emu, &format!("u{i}"), &[], JSON_V1).await;
        svc.add_connection_to_group("big", &id).await.unwrap();
        sockets.push(ws);
    }
    let page = call(
        get,
        "/api/hubs/chat/groups/big/connections?api-version=2024-12-01&maxpagesize=2",
    )
    .await
    .unwrap();
    let body: Value = page.json().await.unwrap();
    assert_eq!(body["value"].as_array().unwrap().len(), 2);
    assert!(body["nextLink"]
        .as_str()
        .unwrap()
        .contains("continuationToken="));
    assert_eq!(svc.list_connections_in_group("big").await.unwrap().len(), 5);
}

#[tokio::test]
async fn non_loopback_bind_needs_allow_public() {
    let mut c = EmulatorConfig::local(0, vec![]);
    c.bind = "0.0.0.0:0".parse().unwrap();
    let err = Emulator::bind(c.clone()).await.err().expect("refused");
    assert!(err.to_string().contains("--allow-public"), "{err}");
    c.allow_public = true;
    assert!(Emulator::bind(c).await.is_ok());
}

#[tokio::test]
async fn webhook_observer_sees_every_call() {
    let stub = Stub::start(|_| None).await;
    let seen = Arc::new(Mutex::new(Vec::<String>::new()));
    let sink = seen.clone();
    let emu = emulator_with(Some(&stub), move |c| {
        c.on_webhook = Some(Arc::new(move |log| {
            sink.lock()
                .unwrap()
                .push(format!("{} {:?}", log.event, log.status))
        }))
    })
    .await;
    let (mut ws, _) = json_client(&emu, "alice", &[], JSON_V1).await;
    send(
        &mut ws,
        json!({"type": "event", "event": "hi", "ackId": 1, "data": 1}),
    )
    .await;
    assert_eq!(recv(&mut ws).await["success"], true);
    stub.wait("connected", |h| h.event() == "connected").await;
    let seen = seen.lock().unwrap().clone();
    for want in ["connect Some(200)", "connected Some(200)", "hi Some(200)"] {
        assert!(seen.iter().any(|s| s == want), "{want} in {seen:?}");
    }
}
