//! Shared test helpers: a loopback stand-in for the Web PubSub REST API, an in-process app on
//! port 0, and signed webhook builders (using the same `protocol` module the emulator uses —
//! its wire rules are pinned separately by the reference examples and the official npm SDKs).
#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::Router;
use hubhook::config::{Config, Defaults, ServeArgs};
use hubhook::protocol::{
    build_webhook, ConnectionState, Event, EventContext, EventData, UserEvent,
};
use hubhook::runtime::Application;

pub const KEY: &str = "ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789ABCDEFGH";
pub const KEY2: &str = "abcdefghijklmnopqrstuvwxyz0123456789abcdefgh";

#[derive(Debug, Clone)]
pub struct Captured {
    pub method: String,
    pub path: String,
    pub query: String,
    pub authorization: Option<String>,
    pub content_type: Option<String>,
    pub body: Bytes,
}

impl Captured {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).expect("captured body is JSON")
    }
}

type Recorder = (Arc<Mutex<Vec<Captured>>>, Arc<AtomicU16>);

/// A loopback stand-in for the REST API: records every call, answers `status` (202 by default).
#[derive(Clone)]
pub struct RestStandIn {
    pub addr: SocketAddr,
    pub calls: Arc<Mutex<Vec<Captured>>>,
    pub status: Arc<AtomicU16>,
}

impl RestStandIn {
    pub async fn start() -> Self {
        let calls = Arc::new(Mutex::new(Vec::new()));
        let status = Arc::new(AtomicU16::new(202));
        let state = (calls.clone(), status.clone());
        let app = Router::new().fallback(
            |State((calls, status)): State<Recorder>,
             method: Method,
             uri: Uri,
             headers: HeaderMap,
             body: Bytes| async move {
                let h = |n: &str| {
                    headers
                        .get(n)
                        .and_then(|v| v.to_str().ok())
                        .map(String::from)
                };
                calls.lock().unwrap().push(Captured {
                    method: method.to_string(),
                    path: uri.path().to_string(),
                    query: uri.query().unwrap_or_default().to_string(),
                    authorization: h("authorization"),
                    content_type: h("content-type"),
                    body,
                });
                StatusCode::from_u16(status.load(Ordering::SeqCst)).unwrap()
            },
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app.with_state(state)).await.unwrap() });
        RestStandIn {
            addr,
            calls,
            status,
        }
    }

    pub fn connection_string(&self) -> String {
        format!(
            "Endpoint=http://127.0.0.1:{};AccessKey={KEY};Version=1.0;",
            self.addr.port()
        )
    }

    pub fn calls(&self) -> Vec<Captured> {
        self.calls.lock().unwrap().clone()
    }
}

pub struct TestApp {
    pub addr: SocketAddr,
    pub rest: RestStandIn,
    pub db: std::path::PathBuf,
    pub http: reqwest::Client,
    _dir: Arc<tempfile::TempDir>,
}

pub fn args_for(rest: &RestStandIn, db: &std::path::Path) -> ServeArgs {
    ServeArgs {
        port: Some("0".into()),
        bind: Some("127.0.0.1".into()),
        connection_string: Some(rest.connection_string()),
        store: Some(format!("sqlite://{}", db.display())),
        allowed_origins: Some("localhost".into()),
        ..Default::default()
    }
}

pub async fn spawn_app() -> TestApp {
    spawn_app_with(|_| {}).await
}

pub async fn spawn_app_with(tweak: impl FnOnce(&mut ServeArgs)) -> TestApp {
    let rest = RestStandIn::start().await;
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
    EventContext {
        hub: "chat".into(),
        connection_id: connection_id.into(),
        user_id: user.map(Into::into),
        event_name: String::new(),
        ce_id: ce_id.into(),
        ce_time: Some("2024-05-01T10:00:00Z".into()),
        subprotocol: Some("json.webpubsub.azure.v1".into()),
        state,
        origin: Some("localhost".into()),
        mqtt: None,
    }
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
                other => other.kind().to_string(),
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
        self.http
            .get(self.url(&format!("/api/messages?room={room}")))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
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

/// A dynalite server on a free loopback port, killed on drop.
pub struct Dynalite {
    child: Child,
    pub endpoint: String,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

const HOW_TO_INSTALL: &str =
    "the DynamoDB tests need Node.js >= 20 and dynalite in tests/js/node_modules: run the README's test command, `bash scripts/test.sh`";

impl Dynalite {
    pub async fn start() -> Dynalite {
        let cli =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/js/node_modules/dynalite/cli.js");
        assert!(
            cli.is_file(),
            "{} is missing: {HOW_TO_INSTALL}",
            cli.display()
        );
        let mut last_log = String::new();
        for _ in 0..3 {
            let port = std::net::TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
                .port();
            let dir = tempfile::tempdir().unwrap();
            let log = dir.path().join("dynalite.log");
            let out = std::fs::File::create(&log).unwrap();
            let child = Command::new("node")
                .arg(&cli)
                .args(["--host", "127.0.0.1", "--port", &port.to_string()])
                .args([
                    "--createTableMs",
                    "0",
                    "--deleteTableMs",
                    "0",
                    "--updateTableMs",
                    "0",
                ])
                .stdin(Stdio::null())
                .stdout(out.try_clone().unwrap())
                .stderr(out)
                .spawn()
                .unwrap_or_else(|e| panic!("cannot run `node` ({e}): {HOW_TO_INSTALL}"));
            let mut d = Dynalite {
                child,
                endpoint: format!("http://127.0.0.1:{port}"),
                log,
                _dir: dir,
            };
            let deadline = Instant::now() + Duration::from_secs(20);
            while Instant::now() < deadline {
                if let Some(status) = d.child.try_wait().unwrap() {
                    last_log = format!(
                        "dynalite exited with {status}: {}",
                        std::fs::read_to_string(&d.log).unwrap_or_default()
                    );
                    break;
                }
                if tokio::net::TcpStream::connect(("127.0.0.1", port))
                    .await
                    .is_ok()
                {
                    return d;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            if last_log.is_empty() {
                panic!(
                    "dynalite did not listen on {port} within 20 s: {}",
                    std::fs::read_to_string(&d.log).unwrap_or_default()
                );
            }
            // Exited (e.g. the port was taken meanwhile): try another port.
        }
        panic!("{last_log}\n{HOW_TO_INSTALL}");
    }
}

impl Drop for Dynalite {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
