//! The one test-support layer: a scriptable HTTP stand-in ([`StandIn`]) for everything that is
//! not hubhook, the app in process on port 0 ([`spawn_app`]) and the real binary
//! ([`hubhook_command`]), signed webhook builders (using the same `protocol` module the emulator
//! uses — its wire rules are pinned separately by the reference examples and the official npm
//! SDKs), and the Node.js gate ([`node_or_skip`]).

mod node;
mod stand_in;

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hubhook::config::{Config, Defaults, ServeArgs};
use hubhook::protocol::{
    build_webhook, ConnectionState, Event, EventContext, EventData, UserEvent,
};
use hubhook::runtime::Application;

pub use node::{browser_or_skip, node_or_skip, Azurite, Browser, Dynalite, NodeEnv, AZURITE_KEY};
pub use stand_in::{reply, Reply, Request, Script, StandIn};

pub const KEY: &str = "ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789ABCDEFGH";
pub const KEY2: &str = "abcdefghijklmnopqrstuvwxyz0123456789abcdefgh";

/// A stand-in for the Web PubSub REST API: records every call, answers 202 (see
/// [`StandIn::set_status`]).
pub async fn rest_stand_in() -> StandIn {
    StandIn::start(Script::status(202)).await
}

/// The connection string (access key [`KEY`]) that points hubhook at `rest`.
pub fn connection_string(rest: &StandIn) -> String {
    format!(
        "Endpoint=http://127.0.0.1:{};AccessKey={KEY};Version=1.0;",
        rest.addr.port()
    )
}

/// A loopback port that was free a moment ago.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The real binary (`target/debug/hubhook`), `RUST_LOG=warn`, no stdin.
pub fn hubhook_command() -> Command {
    hubhook_command_at(std::path::Path::new(env!("CARGO_BIN_EXE_hubhook")))
}

/// The same for a copy of the binary (e.g. a staged Functions app), run in its own folder.
pub fn hubhook_command_at(exe: &std::path::Path) -> Command {
    let mut c = Command::new(exe);
    if let Some(dir) = exe.parent() {
        c.current_dir(dir);
    }
    c.env("RUST_LOG", "warn").stdin(Stdio::null());
    c
}

/// A child process killed (and reaped) on drop.
pub struct KillOnDrop(pub Child);

impl KillOnDrop {
    /// SIGKILL now, and reap it.
    pub fn kill(&mut self) {
        self.0.kill().unwrap();
        self.0.wait().unwrap();
    }
}

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Polls `ready` every `every` until it says yes; false after `within`.
pub async fn poll(within: Duration, every: Duration, mut ready: impl AsyncFnMut() -> bool) -> bool {
    let deadline = Instant::now() + within;
    loop {
        if ready().await {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(every).await;
    }
}

/// Waits (up to 5 s) until `GET /healthz` on `port` answers 200.
pub async fn wait_healthy(http: &reqwest::Client, port: u16) {
    let url = format!("http://127.0.0.1:{port}/healthz");
    let up = poll(
        Duration::from_secs(5),
        Duration::from_millis(25),
        async || matches!(http.get(&url).send().await, Ok(r) if r.status() == 200),
    )
    .await;
    assert!(up, "hubhook did not become ready on port {port}");
}

pub struct TestApp {
    pub addr: SocketAddr,
    pub rest: StandIn,
    pub db: std::path::PathBuf,
    pub http: reqwest::Client,
    _dir: Arc<tempfile::TempDir>,
}

pub fn args_for(rest: &StandIn, db: &std::path::Path) -> ServeArgs {
    ServeArgs {
        port: Some("0".into()),
        bind: Some("127.0.0.1".into()),
        connection_string: Some(connection_string(rest)),
        store: Some(format!("sqlite://{}", db.display())),
        allowed_origins: Some("localhost".into()),
        ..Default::default()
    }
}

pub async fn spawn_app() -> TestApp {
    spawn_app_with(|_| {}).await
}

pub async fn spawn_app_with(tweak: impl FnOnce(&mut ServeArgs)) -> TestApp {
    let rest = rest_stand_in().await;
    let dir = Arc::new(tempfile::tempdir().unwrap());
    let db = dir.path().join("hubhook.db");
    let mut args = args_for(&rest, &db);
    tweak(&mut args);
    let config = Config::from_args(&args, &Defaults::serve()).unwrap();
    let app = Application::build(&config).await.unwrap();
    let addr = app.local_addr();
    tokio::spawn(app.run());
    TestApp {
        addr,
        rest,
        db,
        http: reqwest::Client::new(),
        _dir: dir,
    }
}

/// A context as the service sends it for hub `chat` (event name: see [`TestApp::send`]).
pub fn ctx(
    connection_id: &str,
    user: Option<&str>,
    ce_id: &str,
    room: Option<&str>,
) -> EventContext {
    let mut state = ConnectionState::default();
    if let Some(r) = room {
        state.set("room", r);
    }
    EventContext::new("chat", "", connection_id, ce_id)
        .with_user_id(user)
        .with_time("2024-05-01T10:00:00Z")
        .with_subprotocol(Some("json.webpubsub.azure.v1"))
        .with_state(state)
        .with_origin("localhost")
}

pub fn message(text: &str) -> Event {
    Event::User(UserEvent {
        name: "message".into(),
        data: EventData::Text(text.into()),
    })
}

impl TestApp {
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Sends `event` as the service would, signed with `keys`.
    pub async fn send(
        &self,
        mut ctx: EventContext,
        event: Event,
        keys: &[&str],
    ) -> reqwest::Response {
        if ctx.event_name.is_empty() {
            ctx.event_name = match &event {
                Event::User(u) => u.name.clone(),
                other => other.kind().into(),
            };
        }
        let (headers, body) = build_webhook(&ctx, &event, keys).unwrap();
        self.http
            .post(self.url("/eventhandler"))
            .headers(headers)
            .body(body)
            .send()
            .await
            .unwrap()
    }

    pub async fn history(&self, room: &str) -> serde_json::Value {
        get_json(&self.http, self.url(&format!("/api/messages?room={room}"))).await
    }

    /// How many messages the room's first history page holds.
    pub async fn history_len(&self, room: &str) -> usize {
        self.history(room).await["messages"]
            .as_array()
            .map_or(0, Vec::len)
    }
}

/// Decodes a bearer JWT after checking its HS256 signature with `key` (no aud/exp policy here:
/// callers assert the claims themselves).
pub fn verify_jwt(authorization: &str, key: &str) -> serde_json::Value {
    let token = authorization.strip_prefix("Bearer ").expect("bearer token");
    let mut v = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::HS256);
    v.validate_aud = false;
    jsonwebtoken::decode::<serde_json::Value>(
        token,
        &jsonwebtoken::DecodingKey::from_secret(key.as_bytes()),
        &v,
    )
    .expect("JWT signed with the access key")
    .claims
}

/// `GET url` as JSON; a failed request or a body that is not JSON fails the test.
pub async fn get_json(http: &reqwest::Client, url: impl reqwest::IntoUrl) -> serde_json::Value {
    http.get(url).send().await.unwrap().json().await.unwrap()
}
