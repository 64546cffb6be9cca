//! End-to-end tests of the local Web PubSub emulator (`hubhook::emulator`) and `hubhook dev`:
//! the official npm clients (`@azure/web-pubsub-client`, `@azure/web-pubsub`) and a plain `ws`
//! client against the emulator with the chat function as its event handler, plus Rust-side bad
//! clients (tokens, frames) and bad event handlers (500, hanging).
//!
//! Every test is bounded: each has an overall timeout, each Node script a watchdog. The Node
//! tests need Node.js and `tests/js/node_modules` (`bash scripts/js-deps.sh`); without them they
//! are skipped with a printed reason, or fail under `HUBHOOK_REQUIRE_NODE=1` (`scripts/test.sh`).

use std::future::Future;
use std::net::SocketAddr;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::http::Method;
use futures_util::{SinkExt, StreamExt};
use hubhook::config::{Config, Defaults, ServeArgs};
use hubhook::emulator::{
    handler_for_all, Emulator, EmulatorConfig, EmulatorHandle, HandlerSettings,
};
use hubhook::runtime::Application;
use hubhook::service::{rest_token, sign_jwt, unix_now, AccessKey};
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use crate::support::{
    hubhook_command, node_or_skip, reply, NodeEnv, Reply, Request, Script, StandIn, KEY, KEY2,
};

const JSON_V1: &str = "json.webpubsub.azure.v1";
const RELIABLE_V1: &str = "json.reliable.webpubsub.azure.v1";
/// One step (a frame, a handshake, an HTTP call) of a Rust-side test.
const STEP: Duration = Duration::from_secs(5);

/// Runs a test body under an overall deadline: nothing may hang.
async fn bounded<F: Future<Output = ()>>(secs: u64, what: &str, body: F) {
    if tokio::time::timeout(Duration::from_secs(secs), body)
        .await
        .is_err()
    {
        panic!("{what}: still running after {secs} s");
    }
}

async fn step<T>(what: &str, f: impl Future<Output = T>) -> T {
    tokio::time::timeout(STEP, f)
        .await
        .unwrap_or_else(|_| panic!("timeout after {STEP:?}: {what}"))
}

// ------------------------------------------------------------------------------------------------
// A scriptable event handler for every hub but `chat` (which goes to the chat function).
//
// By hub: `refuse500` answers connect with 500, `refuse401` with 401, `hang` never answers
// connect, `unvalidated` refuses the abuse-protection handshake. Everywhere else connect is accepted; user event `fail` gets 500, `hang` no answer,
// `silent` 204, anything else is echoed back with its content type.

/// The hub of a request to the scripted handler (`/{hub}/{event}`).
fn hub_of(r: &Request) -> &str {
    r.path
        .trim_start_matches('/')
        .split('/')
        .next()
        .unwrap_or("")
}

/// What the scripted handler has received (the abuse-protection `OPTIONS` aside).
#[derive(Clone)]
struct Hooks(StandIn);

impl Hooks {
    fn all(&self) -> Vec<Request> {
        self.0.matching(|r| r.method != "OPTIONS")
    }

    fn count(&self, hub: &str, ce_type: &str) -> usize {
        self.all()
            .iter()
            .filter(|h| hub_of(h) == hub && h.header("ce-type").as_deref() == Some(ce_type))
            .count()
    }
}

fn scripted_reply(r: &Request) -> Reply {
    let segments: Vec<&str> = r.path.trim_start_matches('/').split('/').collect();
    let [hub, _event] = segments[..] else {
        return reply(404);
    };
    if r.method == "OPTIONS" {
        if hub == "unvalidated" {
            return reply(403);
        }
        return reply(200).header("WebHook-Allowed-Origin", "*");
    }
    let ce_type = r.header("ce-type").unwrap_or_default();
    match ce_type.as_str() {
        "azure.webpubsub.sys.connect" => match hub {
            "refuse500" => reply(500).text("boom"),
            "refuse401" => reply(401).text("not you"),
            "hang" => reply(200).hang(),
            _ => reply(200),
        },
        "azure.webpubsub.sys.connected" | "azure.webpubsub.sys.disconnected" => reply(204),
        "azure.webpubsub.user.fail" => reply(500).text("handler failed"),
        "azure.webpubsub.user.hang" => reply(200).hang(),
        "azure.webpubsub.user.silent" => reply(204),
        _ => {
            let ct = r
                .header("content-type")
                .unwrap_or_else(|| "application/octet-stream".into());
            reply(200).body(&ct, &r.body)
        }
    }
}

async fn start_scripted_handler() -> (SocketAddr, Hooks) {
    let stand_in = StandIn::start(Script::handler(|r| Some(scripted_reply(r)))).await;
    (stand_in.addr, Hooks(stand_in))
}

// ------------------------------------------------------------------------------------------------
// Emulator + chat function (hub `chat`) + scripted handler (every other hub), in process.

struct Stack {
    emu: EmulatorHandle,
    /// The chat function (`/negotiate`, `/api/messages`, `/eventhandler`).
    func: SocketAddr,
    hooks: Hooks,
    _dir: tempfile::TempDir,
}

impl Stack {
    async fn start() -> Stack {
        Stack::start_with(|_| {}).await
    }

    /// The emulator's listener is bound first: the function's connection string needs its port.
    async fn start_with(tweak: impl FnOnce(&mut EmulatorConfig)) -> Stack {
        let (handler_addr, hooks) = start_scripted_handler().await;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let emu_port = listener.local_addr().unwrap().port();

        let dir = tempfile::tempdir().unwrap();
        let args = ServeArgs {
            port: Some("0".into()),
            bind: Some("127.0.0.1".into()),
            connection_string: Some(format!(
                "Endpoint=http://127.0.0.1;Port={emu_port};AccessKey={KEY};Version=1.0;"
            )),
            store: Some(format!(
                "sqlite://{}",
                dir.path().join("hubhook.db").display()
            )),
            allowed_origins: Some("localhost".into()),
            ..Default::default()
        };
        let config = Config::from_args(&args, &Defaults::dev(emu_port)).unwrap();
        let app = Application::build(&config).await.unwrap();
        let func = app.local_addr();
        tokio::spawn(app.run());

        let mut emu_config = EmulatorConfig::local(
            0,
            vec![
                HandlerSettings::all_events("chat", &format!("http://{func}{}", config.event_path)),
                handler_for_all(&format!("http://{handler_addr}/{{hub}}/{{event}}")),
            ],
        );
        emu_config.access_key = KEY.into();
        tweak(&mut emu_config);
        let emu = Emulator::with_listener(listener, emu_config)
            .unwrap()
            .spawn();
        Stack {
            emu,
            func,
            hooks,
            _dir: dir,
        }
    }

    fn cs(&self) -> String {
        self.emu.connection_string().to_string()
    }

    fn port(&self) -> u16 {
        self.emu.local_addr.port()
    }

    fn func_url(&self) -> String {
        format!("http://{}", self.func)
    }

    /// A client access token for `hub` signed with `key`, `exp` = now + `ttl_secs`.
    fn token_with(&self, key: &str, aud_hub: &str, ttl_secs: i64, claims: Value) -> String {
        let mut c = json!({
            "aud": format!("http://127.0.0.1:{}/client/hubs/{aud_hub}", self.port()),
            "iat": unix_now(),
            "exp": (unix_now() as i64 + ttl_secs),
        });
        for (k, v) in claims.as_object().unwrap() {
            c[k] = v.clone();
        }
        sign_jwt(&AccessKey::new(key), &c)
    }

    fn token(&self, hub: &str, claims: Value) -> String {
        self.token_with(KEY, hub, 3600, claims)
    }

    fn client_url(&self, hub: &str, token: Option<&str>) -> String {
        let base = format!("ws://127.0.0.1:{}/client/hubs/{hub}", self.port());
        match token {
            Some(t) => format!("{base}?access_token={t}"),
            None => base,
        }
    }
}

// ------------------------------------------------------------------------------------------------
// A small Rust WebSocket client (tokio-tungstenite).

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Connects, offering `proto`: Ok(socket) on `101`, Err(status) when the upgrade is refused.
async fn ws_connect(url: &str, proto: Option<&str>) -> Result<Ws, u16> {
    let mut req = url.into_client_request().unwrap();
    if let Some(p) = proto {
        req.headers_mut()
            .insert("sec-websocket-protocol", p.parse().unwrap());
    }
    match step(
        &format!("handshake {url}"),
        tokio_tungstenite::connect_async(req),
    )
    .await
    {
        Ok((ws, resp)) => {
            let echoed = resp
                .headers()
                .get("sec-websocket-protocol")
                .map(|v| v.to_str().unwrap().to_string());
            assert_eq!(echoed.as_deref(), proto, "subprotocol echoed in the 101");
            Ok(ws)
        }
        Err(WsError::Http(resp)) => Err(resp.status().as_u16()),
        Err(e) => panic!("handshake {url}: {e}"),
    }
}

/// The next data frame (pings skipped); panics on close or timeout.
async fn next_frame(ws: &mut Ws, what: &str) -> Message {
    loop {
        match step(what, ws.next()).await {
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
            Some(Ok(m @ (Message::Text(_) | Message::Binary(_)))) => return m,
            other => panic!("{what}: expected a frame, got {other:?}"),
        }
    }
}

async fn next_json(ws: &mut Ws, what: &str) -> Value {
    match next_frame(ws, what).await {
        Message::Text(t) => {
            serde_json::from_str(&t).unwrap_or_else(|e| panic!("{what}: not JSON ({e}): {t}"))
        }
        other => panic!("{what}: expected a text frame, got {other:?}"),
    }
}

async fn send_json(ws: &mut Ws, v: Value) {
    step("send", ws.send(Message::Text(v.to_string().into())))
        .await
        .unwrap();
}

/// A JSON-protocol client after its `connected` message: (socket, connectionId).
async fn json_client(url: &str, proto: &str) -> (Ws, String) {
    let (ws, connected) = json_client_full(url, proto).await;
    (ws, connected["connectionId"].as_str().unwrap().to_string())
}

/// A JSON-protocol client and its `connected` message.
async fn json_client_full(url: &str, proto: &str) -> (Ws, Value) {
    let mut ws = ws_connect(url, Some(proto))
        .await
        .unwrap_or_else(|s| panic!("{url}: upgrade refused with {s}"));
    let connected = next_json(&mut ws, "connected message").await;
    assert_eq!(connected["type"], "system", "{connected}");
    assert_eq!(connected["event"], "connected", "{connected}");
    assert!(connected["connectionId"].is_string(), "{connected}");
    (ws, connected)
}

/// A REST call signed like the SDKs (audience = the URL without query); returns the status.
async fn rest(stack: &Stack, method: Method, path: &str, text: Option<&str>) -> u16 {
    let base = format!("http://127.0.0.1:{}", stack.port());
    let bearer = rest_token(&AccessKey::new(KEY), &format!("{base}{path}"), unix_now());
    let mut req = reqwest::Client::new()
        .request(method, format!("{base}{path}?api-version=2024-12-01"))
        .bearer_auth(bearer);
    if let Some(t) = text {
        req = req.header("content-type", "text/plain").body(t.to_string());
    }
    step(path, req.send()).await.unwrap().status().as_u16()
}

/// Polls `pred` every 20 ms for up to `STEP`.
async fn eventually(what: &str, mut pred: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + STEP;
    while !pred().await {
        assert!(Instant::now() < deadline, "timeout after {STEP:?}: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Frames until the server's close: the JSON messages before it and the close code.
async fn until_close(ws: &mut Ws, what: &str) -> (Vec<Value>, Option<u16>) {
    let mut before = Vec::new();
    loop {
        match step(what, ws.next()).await {
            Some(Ok(Message::Text(t))) => before.push(serde_json::from_str(&t).unwrap()),
            Some(Ok(Message::Close(f))) => {
                return (before, f.map(|f| u16::from(f.code)));
            }
            Some(Ok(_)) => {}
            Some(Err(e)) => panic!("{what}: socket error before the close frame: {e}"),
            None => return (before, None),
        }
    }
}

/// The connection still answers: `ping` → `pong`.
async fn assert_alive(ws: &mut Ws, what: &str) {
    send_json(ws, json!({"type": "ping"})).await;
    let pong = next_json(ws, what).await;
    assert_eq!(pong, json!({"type": "pong"}), "{what}");
}

// ------------------------------------------------------------------------------------------------
// Node scripts

/// Node.js and the client packages, or `None` (skipped, see `support::node_or_skip`).
fn clients_or_skip(test: &str) -> Option<NodeEnv> {
    let node = node_or_skip(test)?;
    node.require(&["@azure/web-pubsub-client", "@azure/web-pubsub", "ws"]);
    Some(node)
}

// ------------------------------------------------------------------------------------------------
// 1. The seed quickstart against the real `hubhook dev` binary, both JSON subprotocols.

struct DevProcess {
    child: tokio::process::Child,
    emulator: String,
    function: String,
    /// The ready client access URL it prints (user `dev-user`, room `lobby`).
    client_url: String,
    lines: Arc<Mutex<Vec<String>>>,
    _dir: tempfile::TempDir,
}

impl DevProcess {
    /// `hubhook dev --emulator-port 0 --port 0`: both ports read back from what it prints.
    async fn start() -> DevProcess {
        let dir = tempfile::tempdir().unwrap();
        let mut command = hubhook_command();
        command
            .args(["dev", "--emulator-port", "0", "--port", "0"])
            .env(
                "HUBHOOK_STORE",
                format!("sqlite://{}", dir.path().join("dev.db").display()),
            )
            .env_remove("WEBPUBSUB_CONNECTION_STRING")
            .env_remove("WEBPUBSUB_HUB")
            .env_remove("PORT")
            .env_remove("HUBHOOK_EMULATOR_PORT")
            .env_remove("HUBHOOK_BIND")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        let mut child = tokio::process::Command::from(command)
            .kill_on_drop(true)
            .spawn()
            .expect("run target/debug/hubhook");
        let lines = Arc::new(Mutex::new(Vec::new()));
        let mut reader = BufReader::new(child.stdout.take().unwrap()).lines();
        let (mut emulator, mut function, mut client_url) = (None, None, None);
        let deadline = Instant::now() + Duration::from_secs(30);
        while emulator.is_none() || function.is_none() {
            let line = tokio::time::timeout_at(deadline.into(), reader.next_line())
                .await
                .expect("hubhook dev printed its addresses within 30 s")
                .unwrap()
                .expect("hubhook dev exited before printing its addresses");
            let url_after = |label: &str| {
                line.split_once(label).map(|(_, rest)| {
                    let url = rest
                        .trim_start_matches([' ', ':'])
                        .split_whitespace()
                        .next();
                    url.unwrap().to_string()
                })
            };
            if let Some(u) = url_after("Web PubSub emulator") {
                emulator = Some(u);
            }
            if let Some(u) = url_after("client access URL") {
                client_url = Some(u);
            }
            if let Some(u) = url_after("negotiate") {
                function = Some(u.split("/negotiate").next().unwrap().to_string());
            }
            lines.lock().unwrap().push(line);
        }
        let sink = lines.clone();
        tokio::spawn(async move {
            while let Ok(Some(l)) = reader.next_line().await {
                sink.lock().unwrap().push(l);
            }
        });
        DevProcess {
            child,
            emulator: emulator.unwrap(),
            function: function.unwrap(),
            client_url: client_url.expect("hubhook dev prints a client access URL"),
            lines,
            _dir: dir,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quickstart_against_hubhook_dev_both_protocols() {
    let Some(node) = clients_or_skip("emulator::quickstart_against_hubhook_dev_both_protocols")
    else {
        return;
    };
    bounded(120, "quickstart", async {
        let mut dev = DevProcess::start().await;
        let http = reqwest::Client::new();
        let health = step(
            "emulator health",
            http.head(format!("{}/api/health", dev.emulator)).send(),
        )
        .await
        .unwrap();
        assert_eq!(health.status(), 200);

        // Both subprotocols with negotiated URLs (alice), then the seed as written: the client
        // access URL `hubhook dev` printed, verbatim (user dev-user).
        let rounds = [
            ("reliable", None, "alice"),
            ("json", None, "alice"),
            ("reliable", Some(dev.client_url.clone()), "dev-user"),
        ];
        for (protocol, client_url, user) in rounds {
            let mut env = vec![("FN", dev.function.clone()), ("PROTOCOL", protocol.into())];
            if let Some(u) = client_url {
                env.push(("CLIENT_URL", u));
            }
            let out = node.e2e("e2e-quickstart.mjs", &env).await;
            let id = out["connectionId"].as_str().unwrap_or_default();
            assert_eq!(id.len(), 32, "{protocol}: connection id seen: {out}");
            assert_eq!(out["userId"], user, "{protocol}: {out}");
            assert_eq!(
                out["ack"],
                json!({"ackId": 1, "isDuplicated": false}),
                "{protocol}: the sendEvent ack"
            );
            let bob = out["bobSaw"].as_array().unwrap();
            assert!(
                bob.iter()
                    .any(|m| m["type"] == "joined" && m["userId"] == user),
                "{protocol}: bob saw alice join: {out}"
            );
            assert!(
                bob.iter().any(|m| m["type"] == "message"
                    && m["from"] == user
                    && m["text"] == "sending custom event!"),
                "{protocol}: bob got the broadcast: {out}"
            );
            let reply = &out["serverMessages"][0];
            assert_eq!(reply["type"], "stored", "{protocol}: {out}");
            assert_eq!(reply["stored"], true, "{protocol}: {out}");
            assert!(
                out["stopMs"].as_u64().unwrap() < 2000,
                "{protocol}: stop took {} ms",
                out["stopMs"]
            );

            // The function stored it: GET /api/messages on the function.
            let history: Value = step(
                "history",
                http.get(format!("{}/api/messages?room=lobby", dev.function))
                    .send(),
            )
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
            let stored = history["messages"]
                .as_array()
                .unwrap()
                .iter()
                .find(|m| m["connectionId"] == id)
                .unwrap_or_else(|| panic!("{protocol}: message of {id} not stored: {history}"));
            assert_eq!(stored["text"], "sending custom event!");
            assert_eq!(stored["from"], user);
            assert_eq!(stored["room"], "lobby");
            assert_eq!(
                stored["id"], reply["id"],
                "the reply names the stored message"
            );
        }

        // One line per webhook as it flows (event, connection, status, ms).
        let printed = dev.lines.lock().unwrap().clone();
        let hook_line = |event: &str| {
            printed
                .iter()
                .any(|l| l.contains(&format!("webhook {event} ")) && l.contains("-> 200 in"))
        };
        for event in ["connect", "connected", "message"] {
            assert!(
                hook_line(event),
                "hubhook dev printed no line for a {event} webhook:\n{}",
                printed.join("\n")
            );
        }
        assert!(
            printed.iter().any(|l| l.contains("connection string")
                && l.contains("AccessKey=ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789ABCDEFGH")),
            "the connection string is printed"
        );
        assert!(
            printed
                .iter()
                .any(|l| l.contains("client access URL") && l.contains("access_token=")),
            "a ready client access URL is printed"
        );
        dev.child.kill().await.unwrap();
    })
    .await;
}

// ------------------------------------------------------------------------------------------------
// 2. The official client against emulator + function.

async fn official_client(node: NodeEnv, protocol: &str) {
    let stack = Stack::start().await;
    let out = node
        .e2e(
            "e2e-client.mjs",
            &[
                ("CS", stack.cs()),
                ("PROTOCOL", protocol.into()),
                ("FN", stack.func_url()),
            ],
        )
        .await;
    assert!(
        out["stopMs"].as_u64().unwrap() < 2000,
        "stop → stopped took {} ms",
        out["stopMs"]
    );
    // The echo hub's handler saw every dataType with the service's content types.
    let types: Vec<Option<String>> = stack
        .hooks
        .all()
        .iter()
        .filter(|h| {
            hub_of(h) == "echo"
                && h.header("ce-type").as_deref() == Some("azure.webpubsub.user.echo")
        })
        .map(|h| h.header("content-type"))
        .collect();
    for ct in ["text/plain", "application/json", "application/octet-stream"] {
        assert!(
            types
                .iter()
                .any(|t| t.as_deref().is_some_and(|t| t.starts_with(ct))),
            "no echo event with content type {ct}: {types:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn official_client_reliable_protocol() {
    let Some(node) = clients_or_skip("emulator::official_client_reliable_protocol") else {
        return;
    };
    bounded(
        100,
        "official client (reliable)",
        official_client(node, "reliable"),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn official_client_json_protocol() {
    let Some(node) = clients_or_skip("emulator::official_client_json_protocol") else {
        return;
    };
    bounded(100, "official client (json)", official_client(node, "json")).await;
}

// ------------------------------------------------------------------------------------------------
// 3. Every REST operation of @azure/web-pubsub against the emulator.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn service_sdk_every_rest_operation() {
    let Some(node) = clients_or_skip("emulator::service_sdk_every_rest_operation") else {
        return;
    };
    bounded(100, "REST operations", async {
        let stack = Stack::start().await;
        let out = node.e2e("e2e-rest.mjs", &[("CS", stack.cs())]).await;
        eprintln!("e2e-rest: {out}");
    })
    .await;
}

/// `:generateToken` (the SDK signs locally with a key; Entra callers use this) and a REST call
/// with a bad token.
#[tokio::test]
async fn rest_generate_token_and_auth() {
    bounded(30, "generateToken", async {
        let stack = Stack::start().await;
        let http = reqwest::Client::new();
        let base = format!("http://127.0.0.1:{}", stack.port());
        let path = "/api/hubs/echo/:generateToken";
        let url = format!(
            "{base}{path}?api-version=2024-12-01&userId=gen&role=webpubsub.joinLeaveGroup&group=gg&minutesToExpire=5"
        );
        let bearer = rest_token(&AccessKey::new(KEY), &format!("{base}{path}"), unix_now());
        let r = step("generateToken", http.post(&url).bearer_auth(&bearer).send())
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        let token = r.json::<Value>().await.unwrap()["token"]
            .as_str()
            .unwrap()
            .to_string();
        let (mut ws, id) = json_client(&stack.client_url("echo", Some(&token)), JSON_V1).await;
        send_json(
            &mut ws,
            json!({"type": "joinGroup", "group": "other", "ackId": 1}),
        )
        .await;
        let ack = next_json(&mut ws, "join ack").await;
        assert_eq!(ack["success"], true, "the generated token carries the role: {ack}");
        // The token's group: a group send reaches it.
        let send_path = "/api/hubs/echo/groups/gg/:send";
        let bearer = rest_token(&AccessKey::new(KEY), &format!("{base}{send_path}"), unix_now());
        let r = step(
            "group send",
            http.post(format!("{base}{send_path}?api-version=2024-12-01"))
                .bearer_auth(&bearer)
                .header("content-type", "text/plain")
                .body("to gg")
                .send(),
        )
        .await
        .unwrap();
        assert_eq!(r.status(), 202);
        let m = next_json(&mut ws, "group message").await;
        assert_eq!(m["from"], "group", "{m}");
        assert_eq!(m["group"], "gg", "{m}");
        assert_eq!(m["data"], "to gg", "{m}");
        assert!(!id.is_empty());

        // Bad REST tokens: another key, another URL, none at all.
        let other = rest_token(&AccessKey::new(KEY2), &format!("{base}{send_path}"), unix_now());
        let wrong_aud = rest_token(&AccessKey::new(KEY), &format!("{base}/api/hubs/echo/:send"), unix_now());
        for (what, bearer) in [("other key", Some(other)), ("other audience", Some(wrong_aud)), ("no token", None)] {
            let mut req = http
                .post(format!("{base}{send_path}?api-version=2024-12-01"))
                .header("content-type", "text/plain")
                .body("x");
            if let Some(b) = bearer {
                req = req.bearer_auth(b);
            }
            let r = step(what, req.send()).await.unwrap();
            assert_eq!(r.status(), 401, "{what}");
        }
        let r = step("health", http.head(format!("{base}/api/health")).send())
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    })
    .await;
}

// ------------------------------------------------------------------------------------------------
// 4. A plain WebSocket client (Node `ws`, no subprotocol).

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_websocket_client() {
    let Some(node) = clients_or_skip("emulator::plain_websocket_client") else {
        return;
    };
    bounded(100, "plain WebSocket client", async {
        let stack = Stack::start().await;
        let out = node
            .e2e(
                "e2e-plain.mjs",
                &[("CS", stack.cs()), ("FN", stack.func_url())],
            )
            .await;
        eprintln!("e2e-plain: {out}");
        // Text frames arrive as text/plain `message` events, binary ones as octet-stream.
        let echo: Vec<Request> = stack
            .hooks
            .all()
            .into_iter()
            .filter(|h| {
                hub_of(h) == "echo"
                    && h.header("ce-type").as_deref() == Some("azure.webpubsub.user.message")
            })
            .collect();
        assert!(
            echo.iter().any(
                |h| h.header("content-type").as_deref() == Some("text/plain")
                    && h.body.as_ref() == b"plain text"
            ),
            "{echo:?}"
        );
        assert!(
            echo.iter().any(|h| h.header("content-type").as_deref()
                == Some("application/octet-stream")
                && h.body.as_ref() == [0u8, 1, 2, 255]),
            "{echo:?}"
        );
    })
    .await;
}

// ------------------------------------------------------------------------------------------------
// 5. Bad clients and bad event handlers.

#[tokio::test]
async fn bad_tokens_are_refused_with_401_before_any_webhook() {
    bounded(30, "bad tokens", async {
        let stack = Stack::start().await;
        let hub = "echo";
        let claims = json!({"sub": "mallory"});
        let cases = [
            ("no token", None),
            ("not a JWT", Some("not-a-jwt".to_string())),
            (
                "signed with another key",
                Some(stack.token_with(KEY2, hub, 3600, claims.clone())),
            ),
            (
                "expired",
                Some(stack.token_with(KEY, hub, -600, claims.clone())),
            ),
            (
                "audience of another hub",
                Some(stack.token_with(KEY, "lobby", 3600, claims.clone())),
            ),
            (
                "audience of the REST API",
                Some(sign_jwt(
                    &AccessKey::new(KEY),
                    &json!({"aud": format!("http://127.0.0.1:{}/api/hubs/{hub}", stack.port()), "exp": unix_now() + 600}),
                )),
            ),
            (
                "no expiry",
                Some(sign_jwt(
                    &AccessKey::new(KEY),
                    &json!({"aud": format!("http://127.0.0.1:{}/client/hubs/{hub}", stack.port())}),
                )),
            ),
        ];
        let not_yet = sign_jwt(
            &AccessKey::new(KEY),
            &json!({"aud": format!("http://127.0.0.1:{}/client/hubs/{hub}", stack.port()), "nbf": unix_now() + 600, "exp": unix_now() + 1200}),
        );
        let cases = [cases.as_slice(), &[("not valid before a future nbf", Some(not_yet))]].concat();
        for (what, token) in cases {
            for proto in [Some(JSON_V1), Some(RELIABLE_V1), None] {
                let status = ws_connect(&stack.client_url(hub, token.as_deref()), proto)
                    .await
                    .err();
                assert_eq!(status, Some(401), "{what} ({proto:?})");
            }
        }
        assert_eq!(
            stack.hooks.count(hub, "azure.webpubsub.sys.connect"),
            0,
            "tokens are checked before the connect webhook"
        );
        // The same hub with a good token works.
        let (mut ws, _) = json_client(
            &stack.client_url(hub, Some(&stack.token(hub, claims))),
            JSON_V1,
        )
        .await;
        assert_alive(&mut ws, "good token").await;
        assert_eq!(stack.hooks.count(hub, "azure.webpubsub.sys.connect"), 1);
        // The `/client/?hub=` form of the endpoint, same token rules.
        let good = stack.token(hub, json!({"sub": "q"}));
        let query_url = |t: &str| format!("ws://127.0.0.1:{}/client/?hub={hub}&access_token={t}", stack.port());
        let (mut ws, _) = json_client(&query_url(&good), JSON_V1).await;
        assert_alive(&mut ws, "/client/?hub=").await;
        let bad = stack.token_with(KEY2, hub, 3600, json!({"sub": "q"}));
        assert_eq!(ws_connect(&query_url(&bad), Some(JSON_V1)).await.err(), Some(401));
    })
    .await;
}

#[tokio::test]
async fn bad_frames_close_that_client_and_the_emulator_keeps_serving() {
    bounded(60, "bad frames", async {
        let stack = Stack::start().await;
        let hub = "echo";
        let url = stack.client_url(hub, Some(&stack.token(hub, json!({"sub": "w"}))));
        let (mut witness, _) = json_client(&url, RELIABLE_V1).await;

        let big = format!(
            "{{\"type\":\"event\",\"event\":\"echo\",\"dataType\":\"text\",\"data\":\"{}\"}}",
            "x".repeat(1024 * 1024 + 10)
        );
        let cases: Vec<(&str, Message, u16)> = vec![
            ("invalid JSON", Message::Text("{not json".into()), 1002),
            ("a JSON array", Message::Text("[1,2]".into()), 1002),
            (
                "unknown type",
                Message::Text(r#"{"type":"launchMissiles"}"#.into()),
                1002,
            ),
            ("no type", Message::Text(r#"{"group":"g"}"#.into()), 1002),
            (
                "ackId not a number",
                Message::Text(r#"{"type":"joinGroup","group":"g","ackId":"one"}"#.into()),
                1002,
            ),
            ("a binary frame", Message::Binary(vec![1u8, 2, 3].into()), 1003),
            ("a frame over 1 MB", Message::Text(big.into()), 1009),
        ];
        for proto in [JSON_V1, RELIABLE_V1] {
            for (what, frame, code) in &cases {
                let what = format!("{what} ({proto})");
                let (mut ws, id) = json_client(&url, proto).await;
                // Over 1 MB the server may close before the client has written it all.
                let _ = step(&what, ws.send(frame.clone())).await;
                let (before, got) = until_close(&mut ws, &what).await;
                assert_eq!(got, Some(*code), "{what}: close code");
                let told = before
                    .iter()
                    .find(|m| m["type"] == "system" && m["event"] == "disconnected");
                assert!(
                    told.is_some_and(|m| m["message"].as_str().is_some_and(|s| !s.is_empty())),
                    "{what}: a disconnected message with the reason comes before the close: {before:?}"
                );
                // The connection is over (no recovery), the disconnected webhook fires.
                let recovered = ws_connect(
                    &format!(
                        "{url}&awps_connection_id={id}&awps_reconnection_token=whatever"
                    ),
                    Some(proto),
                )
                .await;
                if let Ok(mut r) = recovered {
                    let (_, code) = until_close(&mut r, "recovery refused").await;
                    assert_eq!(code, Some(1008), "{what}: not recoverable");
                }
                assert_alive(&mut witness, &format!("witness after {what}")).await;
            }
        }
        // New clients are still served, and a large frame under the limit goes through (and
        // back: the echo handler returns it as the server message).
        let (mut fresh, _) = json_client(&url, JSON_V1).await;
        assert_alive(&mut fresh, "a fresh client").await;
        let large = "y".repeat(900 * 1024);
        send_json(
            &mut fresh,
            json!({"type": "event", "event": "echo", "ackId": 1, "dataType": "text", "data": large}),
        )
        .await;
        let echoed = next_json(&mut fresh, "900 KB echo").await;
        assert_eq!(echoed["data"].as_str().map(str::len), Some(large.len()));
        assert_eq!(next_json(&mut fresh, "900 KB ack").await["success"], true);
        let deadline = Instant::now() + STEP;
        let expected = 2 * cases.len();
        while stack.hooks.count(hub, "azure.webpubsub.sys.disconnected") < expected {
            assert!(
                Instant::now() < deadline,
                "a disconnected webhook per closed client: {} of {expected}",
                stack.hooks.count(hub, "azure.webpubsub.sys.disconnected")
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
}

#[tokio::test]
async fn event_handler_that_hangs_or_fails() {
    bounded(60, "bad event handlers", async {
        let timeout = Duration::from_millis(700);
        let stack = Stack::start_with(|c| c.upstream_timeout = timeout).await;

        // connect: a hanging handler → 500 after the timeout (not a hanging handshake).
        let started = Instant::now();
        let status = ws_connect(
            &stack.client_url("hang", Some(&stack.token("hang", json!({"sub": "u"})))),
            Some(JSON_V1),
        )
        .await
        .err();
        assert_eq!(status, Some(500), "a hanging connect handler refuses the client");
        assert!(
            started.elapsed() < timeout * 4,
            "refused after {:?} (timeout {timeout:?})",
            started.elapsed()
        );
        // connect: 500 → 500, 401 → 401 (a 4xx is passed through), a refused abuse-protection
        // handshake → 500.
        for (hub, want) in [("refuse500", 500), ("refuse401", 401), ("unvalidated", 500)] {
            for proto in [Some(JSON_V1), None] {
                let status = ws_connect(
                    &stack.client_url(hub, Some(&stack.token(hub, json!({"sub": "u"})))),
                    proto,
                )
                .await
                .err();
                assert_eq!(status, Some(want), "{hub} ({proto:?})");
            }
        }

        // user events: 500 → InternalServerError ack, connection stays; same for a hang.
        let url = stack.client_url("echo", Some(&stack.token("echo", json!({"sub": "u"}))));
        for proto in [JSON_V1, RELIABLE_V1] {
            let (mut ws, _) = json_client(&url, proto).await;
            for (event, ack_id) in [("fail", 1), ("hang", 2)] {
                let started = Instant::now();
                send_json(
                    &mut ws,
                    json!({"type": "event", "event": event, "ackId": ack_id, "dataType": "text", "data": "x"}),
                )
                .await;
                let ack = next_json(&mut ws, &format!("{event} ack")).await;
                assert_eq!(ack["type"], "ack", "{proto} {event}: {ack}");
                assert_eq!(ack["ackId"], ack_id, "{proto} {event}: {ack}");
                assert_eq!(ack["success"], false, "{proto} {event}: {ack}");
                assert_eq!(
                    ack["error"]["name"], "InternalServerError",
                    "{proto} {event}: {ack}"
                );
                assert!(started.elapsed() < timeout * 4, "{proto} {event}: {:?}", started.elapsed());
                assert_alive(&mut ws, &format!("{proto}: open after {event}")).await;
            }
            // A failed ackId may be retried; a successful one is a Duplicate (handler not called).
            for _ in 0..2 {
                send_json(
                    &mut ws,
                    json!({"type": "event", "event": "echo", "ackId": 1, "dataType": "json", "data": {"n": 1}}),
                )
                .await;
            }
            let reply = next_json(&mut ws, "echo reply").await;
            assert_eq!(reply["type"], "message", "{reply}");
            assert_eq!(reply["from"], "server", "{reply}");
            assert_eq!(reply["dataType"], "json", "{reply}");
            assert_eq!(reply["data"], json!({"n": 1}), "{reply}");
            if proto == RELIABLE_V1 {
                assert_eq!(reply["sequenceId"], 1, "{reply}");
            } else {
                assert!(reply.get("sequenceId").is_none(), "{reply}");
            }
            let ack = next_json(&mut ws, "echo ack").await;
            assert_eq!(ack, json!({"type": "ack", "ackId": 1, "success": true}));
            let dup = next_json(&mut ws, "duplicate ack").await;
            assert_eq!(dup["success"], false, "{dup}");
            assert_eq!(dup["error"]["name"], "Duplicate", "{dup}");
            // `silent` (204) acks without a message.
            send_json(
                &mut ws,
                json!({"type": "event", "event": "silent", "ackId": 3, "dataType": "text", "data": "s"}),
            )
            .await;
            let ack = next_json(&mut ws, "silent ack").await;
            assert_eq!(ack, json!({"type": "ack", "ackId": 3, "success": true}));
        }
        let echoes = stack
            .hooks
            .all()
            .iter()
            .filter(|h| h.header("ce-type").as_deref() == Some("azure.webpubsub.user.echo"))
            .count();
        assert_eq!(echoes, 2, "a Duplicate ackId does not call the handler again");
    })
    .await;
}

/// The reliable protocol's recovery: a dropped socket keeps the connection (and buffers what
/// is sent meanwhile) for the recovery window; the right reconnection token resumes it with the
/// unacked messages replayed; a wrong one, or a late one, gets `disconnected` + close 1008.
#[tokio::test]
async fn reliable_recovery_replay_and_window() {
    bounded(60, "reliable recovery", async {
        let window = Duration::from_millis(1500);
        let stack = Stack::start_with(|c| c.recovery_window = window).await;
        let hub = "echo";
        let token = stack.token(
            hub,
            json!({"sub": "rita", "role": ["webpubsub.joinLeaveGroup"]}),
        );
        let url = stack.client_url(hub, Some(&token));
        let (mut ws, connected) = json_client_full(&url, RELIABLE_V1).await;
        let id = connected["connectionId"].as_str().unwrap().to_string();
        let reconnection = connected["reconnectionToken"].as_str().unwrap().to_string();
        assert!(!reconnection.is_empty());
        send_json(
            &mut ws,
            json!({"type": "joinGroup", "group": "rg", "ackId": 1}),
        )
        .await;
        assert_eq!(next_json(&mut ws, "join ack").await["success"], true);
        for text in ["m1", "m2"] {
            assert_eq!(
                rest(
                    &stack,
                    Method::POST,
                    &format!("/api/hubs/{hub}/groups/rg/:send"),
                    Some(text)
                )
                .await,
                202
            );
        }
        for (seq, text) in [(1, "m1"), (2, "m2")] {
            let m = next_json(&mut ws, text).await;
            assert_eq!(
                (m["sequenceId"].as_u64(), m["data"].as_str()),
                (Some(seq), Some(text)),
                "{m}"
            );
        }
        send_json(&mut ws, json!({"type": "sequenceAck", "sequenceId": 1})).await;
        assert_alive(&mut ws, "after sequenceAck").await;

        // Drop the TCP connection (no close frame); send while away.
        drop(ws);
        tokio::time::sleep(Duration::from_millis(100)).await;
        let conn_path = format!("/api/hubs/{hub}/connections/{id}");
        assert_eq!(
            rest(&stack, Method::HEAD, &conn_path, None).await,
            200,
            "kept for recovery"
        );
        assert_eq!(
            rest(
                &stack,
                Method::POST,
                &format!("/api/hubs/{hub}/groups/rg/:send"),
                Some("m3")
            )
            .await,
            202
        );

        // A wrong reconnection token: 101, disconnected, 1008 (the connection stays recoverable).
        let wrong = format!("{url}&awps_connection_id={id}&awps_reconnection_token=nope");
        let mut refused = ws_connect(&wrong, Some(RELIABLE_V1))
            .await
            .expect("101 even when refused");
        let (before, code) = until_close(&mut refused, "wrong token").await;
        assert_eq!(code, Some(1008));
        assert_eq!(
            before.first().map(|m| m["event"].clone()),
            Some(json!("disconnected")),
            "{before:?}"
        );

        // The right one: the same connection, unacked m2 and m3 replayed in order. The client
        // keeps its original URL, whose access token may have expired meanwhile: ignored.
        let expired = stack.client_url(
            hub,
            Some(&stack.token_with(KEY, hub, -600, json!({"sub": "rita"}))),
        );
        let recover =
            format!("{expired}&awps_connection_id={id}&awps_reconnection_token={reconnection}");
        let mut ws = ws_connect(&recover, Some(RELIABLE_V1))
            .await
            .expect("recovered");
        let mut data = Vec::new();
        while data.len() < 2 {
            let m = next_json(&mut ws, "replay").await;
            match m["type"].as_str() {
                Some("system") => assert_eq!(m["connectionId"], id.as_str(), "{m}"),
                Some("message") => data.push((
                    m["sequenceId"].as_u64().unwrap(),
                    m["data"].as_str().unwrap().to_string(),
                )),
                _ => panic!("unexpected {m}"),
            }
        }
        assert_eq!(data, [(2, "m2".to_string()), (3, "m3".to_string())]);
        assert_alive(&mut ws, "recovered socket").await;
        assert_eq!(
            stack.hooks.count(hub, "azure.webpubsub.sys.connect"),
            1,
            "recovery calls no connect webhook"
        );
        assert_eq!(
            stack.hooks.count(hub, "azure.webpubsub.sys.disconnected"),
            0
        );

        // Dropped again and not recovered in time: over, with a disconnected webhook.
        drop(ws);
        eventually(
            "disconnected webhook after the recovery window",
            async || stack.hooks.count(hub, "azure.webpubsub.sys.disconnected") == 1,
        )
        .await;
        assert_eq!(rest(&stack, Method::HEAD, &conn_path, None).await, 404);
        let mut late = ws_connect(&recover, Some(RELIABLE_V1))
            .await
            .expect("101 even when refused");
        assert_eq!(until_close(&mut late, "late recovery").await.1, Some(1008));

        // A close frame with 1000 ends a reliable connection at once; the json protocol has
        // no recovery: a drop ends it at once.
        for (proto, close) in [(RELIABLE_V1, true), (JSON_V1, false)] {
            let (mut ws, id) = json_client(&url, proto).await;
            let path = format!("/api/hubs/{hub}/connections/{id}");
            assert_eq!(rest(&stack, Method::HEAD, &path, None).await, 200);
            if close {
                ws.close(Some(tokio_tungstenite::tungstenite::protocol::CloseFrame {
                    code: 1000.into(),
                    reason: "bye".into(),
                }))
                .await
                .unwrap();
            } else {
                drop(ws);
            }
            let started = Instant::now();
            eventually(&format!("{proto}: gone at once"), async || {
                rest(&stack, Method::HEAD, &path, None).await == 404
            })
            .await;
            assert!(started.elapsed() < window, "{proto}: not kept for recovery");
        }
    })
    .await;
}

/// A plain client in `webpubsub_mode=sendToGroup` publishes every frame to its group (with the
/// role), or is closed with 1008 (without it).
#[tokio::test]
async fn plain_client_send_to_group_mode_needs_the_role() {
    bounded(30, "plain sendToGroup mode", async {
        let stack = Stack::start().await;
        let hub = "echo";
        let member = stack.client_url(
            hub,
            Some(&stack.token(hub, json!({"sub": "m", "webpubsub.group": ["pg"]}))),
        );
        let (mut listener, _) = json_client(&member, JSON_V1).await;
        let mode = "&webpubsub_mode=sendToGroup&group=pg";
        let allowed = stack.client_url(
            hub,
            Some(&stack.token(
                hub,
                json!({"sub": "pub", "role": ["webpubsub.sendToGroup.pg"]}),
            )),
        );
        let mut publisher = ws_connect(&format!("{allowed}{mode}"), None)
            .await
            .expect("plain client accepted");
        step("send", publisher.send(Message::Text("to pg".into())))
            .await
            .unwrap();
        let m = next_json(&mut listener, "group message from a plain client").await;
        assert_eq!(
            (&m["from"], &m["group"], &m["fromUserId"], &m["data"]),
            (
                &json!("group"),
                &json!("pg"),
                &json!("pub"),
                &json!("to pg")
            ),
            "{m}"
        );
        let denied = stack.client_url(hub, Some(&stack.token(hub, json!({"sub": "nope"}))));
        let mut intruder = ws_connect(&format!("{denied}{mode}"), None)
            .await
            .expect("plain client accepted");
        step("send", intruder.send(Message::Text("intrude".into())))
            .await
            .unwrap();
        let (_, code) = until_close(&mut intruder, "no role").await;
        assert_eq!(code, Some(1008));
        assert_alive(&mut listener, "listener got nothing else").await;
    })
    .await;
}

/// What `client.stop()` sends — a close frame without a code — keeps a reliable connection for
/// recovery by default (as Microsoft's emulator); `close_frame_is_final` ends it at once.
#[tokio::test]
async fn close_frame_without_code_on_the_reliable_protocol() {
    bounded(30, "close without code", async {
        for is_final in [false, true] {
            let stack = Stack::start_with(|c| c.close_frame_is_final = is_final).await;
            let url = stack.client_url("echo", Some(&stack.token("echo", json!({"sub": "s"}))));
            let (mut ws, id) = json_client(&url, RELIABLE_V1).await;
            let path = format!("/api/hubs/echo/connections/{id}");
            step("close", ws.close(None)).await.unwrap();
            // The server answers the close frame (echoing no code), no error.
            until_close(&mut ws, "close reply").await;
            if is_final {
                eventually("gone at once", async || {
                    rest(&stack, Method::HEAD, &path, None).await == 404
                })
                .await;
                eventually("disconnected webhook", async || {
                    stack
                        .hooks
                        .count("echo", "azure.webpubsub.sys.disconnected")
                        == 1
                })
                .await;
            } else {
                tokio::time::sleep(Duration::from_millis(300)).await;
                assert_eq!(rest(&stack, Method::HEAD, &path, None).await, 200, "kept");
                assert_eq!(
                    stack
                        .hooks
                        .count("echo", "azure.webpubsub.sys.disconnected"),
                    0
                );
            }
        }
    })
    .await;
}
