//! One scriptable HTTP stand-in for everything the tests talk to that is not hubhook: the Web
//! PubSub REST API, event handlers, the Lambda Runtime API, Secrets Manager, a failing DynamoDB.
//!
//! It records every request (method, path, query, headers, body) and answers from a [`Script`]:
//! a fixed status (changeable while running), a sequence of statuses, a handler closure (sync or
//! async) that may answer any request it wants to, a delay, or never at all.

use std::collections::VecDeque;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::Response;
use axum::Router;
use serde_json::Value;

/// How long [`StandIn::wait`] waits.
pub const WAIT: Duration = Duration::from_secs(5);

/// One recorded request.
#[derive(Debug, Clone)]
pub struct Request {
    pub method: String,
    pub path: String,
    /// The raw query string (no `?`), empty when there is none.
    pub query: String,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Request {
    /// A header's value as a string.
    pub fn header(&self, name: &str) -> Option<String> {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(String::from)
    }

    /// The body as JSON (panics when it is not).
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).expect("recorded body is JSON")
    }

    /// The body as JSON, `Null` when it is not.
    pub fn json_or_null(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or(Value::Null)
    }
}

/// One answer: status, headers, body, after an optional delay (or never).
#[derive(Debug, Clone)]
pub struct Reply {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
    delay: Duration,
    hang: bool,
}

/// An empty answer with `status`.
pub fn reply(status: u16) -> Reply {
    Reply {
        status,
        headers: vec![],
        body: vec![],
        delay: Duration::ZERO,
        hang: false,
    }
}

impl Reply {
    /// `body` with its `content-type`.
    pub fn body(mut self, content_type: &str, body: &[u8]) -> Self {
        self.headers
            .push(("content-type".into(), content_type.into()));
        self.body = body.to_vec();
        self
    }

    pub fn text(self, t: &str) -> Self {
        self.body("text/plain; charset=utf-8", t.as_bytes())
    }

    pub fn json(self, v: Value) -> Self {
        self.body("application/json; charset=utf-8", v.to_string().as_bytes())
    }

    /// A body without setting a content type.
    pub fn raw(mut self, body: impl Into<Vec<u8>>) -> Self {
        self.body = body.into();
        self
    }

    pub fn header(mut self, name: &str, v: &str) -> Self {
        self.headers.push((name.to_string(), v.to_string()));
        self
    }

    /// Answers only after `d`.
    pub fn after(mut self, d: Duration) -> Self {
        self.delay = d;
        self
    }

    /// Never answers (the connection stays open until the client gives up).
    pub fn hang(mut self) -> Self {
        self.hang = true;
        self
    }

    async fn into_response(self) -> Response {
        if self.hang {
            std::future::pending::<()>().await;
        }
        tokio::time::sleep(self.delay).await;
        // No header the script did not ask for (not even a default content type).
        let mut resp = Response::new(Body::from(self.body));
        *resp.status_mut() = StatusCode::from_u16(self.status).unwrap();
        for (k, v) in self.headers {
            resp.headers_mut().insert(
                axum::http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        resp
    }
}

type BoxReply = Pin<Box<dyn Future<Output = Option<Reply>> + Send>>;
type Handler = Arc<dyn Fn(Request) -> BoxReply + Send + Sync>;

/// What a [`StandIn`] answers. The handler (if any) is asked first; when it has no answer, the
/// next status of the sequence, then the fixed status; then the delay or hang applies.
#[derive(Clone)]
pub struct Script {
    handler: Option<Handler>,
    sequence: VecDeque<u16>,
    status: u16,
    delay: Duration,
    hang: bool,
}

impl Script {
    /// Every request gets `status`.
    pub fn status(status: u16) -> Script {
        Script {
            handler: None,
            sequence: VecDeque::new(),
            status,
            delay: Duration::ZERO,
            hang: false,
        }
    }

    /// The statuses in order, one per request; after the last, the last again.
    pub fn statuses(statuses: impl IntoIterator<Item = u16>) -> Script {
        let sequence: VecDeque<u16> = statuses.into_iter().collect();
        let last = *sequence.back().expect("at least one status");
        Script {
            sequence,
            ..Script::status(last)
        }
    }

    /// `f` answers what it wants to; anything else gets 200 (see [`Script::or_status`]).
    pub fn handler(f: impl Fn(&Request) -> Option<Reply> + Send + Sync + 'static) -> Script {
        Script::async_handler(move |r| {
            let answer = f(&r);
            async move { answer }
        })
    }

    /// [`Script::handler`] with an async closure (e.g. one that waits for something to send).
    pub fn async_handler<F>(f: impl Fn(Request) -> F + Send + Sync + 'static) -> Script
    where
        F: Future<Output = Option<Reply>> + Send + 'static,
    {
        Script {
            handler: Some(Arc::new(move |r| Box::pin(f(r)))),
            ..Script::status(200)
        }
    }

    /// Accepts every request and never answers.
    pub fn hang() -> Script {
        Script {
            hang: true,
            ..Script::status(200)
        }
    }

    /// The status when the handler has no answer.
    pub fn or_status(mut self, status: u16) -> Script {
        self.status = status;
        self
    }

    /// Every answer only after `d`.
    pub fn after(mut self, d: Duration) -> Script {
        self.delay = d;
        self
    }
}

struct Inner {
    requests: Mutex<Vec<Request>>,
    script: Mutex<Script>,
}

/// A loopback HTTP server on a free port that records and answers as scripted.
#[derive(Clone)]
pub struct StandIn {
    pub addr: SocketAddr,
    inner: Arc<Inner>,
}

async fn answer(
    State(inner): State<Arc<Inner>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let request = Request {
        method: method.to_string(),
        path: uri.path().to_string(),
        query: uri.query().unwrap_or_default().to_string(),
        headers,
        body,
    };
    inner.requests.lock().unwrap().push(request.clone());
    let (handler, default, delay, hang) = {
        let mut s = inner.script.lock().unwrap();
        let default = if s.sequence.len() > 1 {
            s.sequence.pop_front().unwrap()
        } else {
            s.sequence.front().copied().unwrap_or(s.status)
        };
        (s.handler.clone(), default, s.delay, s.hang)
    };
    let scripted = match handler {
        Some(h) => h(request).await,
        None => None,
    };
    let mut r = scripted.unwrap_or_else(|| reply(default));
    r.delay = r.delay.max(delay);
    r.hang |= hang;
    r.into_response().await
}

impl StandIn {
    pub async fn start(script: Script) -> StandIn {
        let inner = Arc::new(Inner {
            requests: Mutex::new(Vec::new()),
            script: Mutex::new(script),
        });
        let app = Router::new().fallback(answer).with_state(inner.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        StandIn { addr, inner }
    }

    /// `http://127.0.0.1:port{path}`
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// From now on, the fixed status (a sequence in progress is dropped).
    pub fn set_status(&self, status: u16) {
        let mut s = self.inner.script.lock().unwrap();
        s.sequence.clear();
        s.status = status;
    }

    /// Every request so far, in arrival order.
    pub fn requests(&self) -> Vec<Request> {
        self.inner.requests.lock().unwrap().clone()
    }

    /// The requests matching `pred`.
    pub fn matching(&self, pred: impl Fn(&Request) -> bool) -> Vec<Request> {
        self.requests().into_iter().filter(|r| pred(r)).collect()
    }

    pub fn count(&self, pred: impl Fn(&Request) -> bool) -> usize {
        self.matching(pred).len()
    }

    /// The first request matching `pred`, waiting up to [`WAIT`].
    pub async fn wait(&self, what: &str, pred: impl Fn(&Request) -> bool) -> Request {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(r) = self.requests().into_iter().find(&pred) {
                return r;
            }
            assert!(
                Instant::now() < deadline,
                "timed out after {WAIT:?} waiting for a request: {what}; got {:?}",
                self.requests()
                    .iter()
                    .map(|r| format!("{} {}", r.method, r.path))
                    .collect::<Vec<_>>()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

/// The stand-in itself, against its script.
#[tokio::test]
async fn stand_in_records_and_follows_its_script() {
    let http = reqwest::Client::new();
    let seq = StandIn::start(Script::statuses([503, 502, 202])).await;
    let mut got = vec![];
    for i in 0..4 {
        let r = http
            .post(seq.url(&format!("/p/{i}?q=1")))
            .header("x-test", "yes")
            .body("b")
            .send()
            .await
            .unwrap();
        got.push(r.status().as_u16());
    }
    assert_eq!(got, [503, 502, 202, 202]);
    seq.set_status(404);
    let r = http.get(seq.url("/after")).send().await.unwrap();
    assert_eq!(r.status(), 404);
    let reqs = seq.requests();
    assert_eq!(reqs.len(), 5);
    assert_eq!(
        (reqs[1].method.as_str(), reqs[1].path.as_str()),
        ("POST", "/p/1")
    );
    assert_eq!(reqs[1].query, "q=1");
    assert_eq!(reqs[1].header("x-test").as_deref(), Some("yes"));
    assert_eq!(reqs[1].body.as_ref(), b"b");
    assert_eq!(seq.count(|r| r.method == "GET"), 1);

    let scripted = StandIn::start(
        Script::handler(|r| match r.path.as_str() {
            "/json" => Some(reply(201).json(serde_json::json!({"a": 1}))),
            "/slow" => Some(reply(200).raw("late").after(Duration::from_millis(300))),
            "/never" => Some(reply(200).hang()),
            _ => None,
        })
        .or_status(418),
    )
    .await;
    let r = http.get(scripted.url("/json")).send().await.unwrap();
    assert_eq!(r.status(), 201);
    assert_eq!(r.json::<Value>().await.unwrap()["a"], 1);
    let t = Instant::now();
    let r = http.get(scripted.url("/slow")).send().await.unwrap();
    assert!(t.elapsed() >= Duration::from_millis(300));
    assert_eq!(r.text().await.unwrap(), "late");
    assert_eq!(
        http.get(scripted.url("/other"))
            .send()
            .await
            .unwrap()
            .status(),
        418
    );
    let never = http
        .get(scripted.url("/never"))
        .timeout(Duration::from_millis(300))
        .send()
        .await;
    assert!(never.unwrap_err().is_timeout());
    scripted
        .wait("the hung request", |r| r.path == "/never")
        .await;

    let delayed = StandIn::start(Script::status(204).after(Duration::from_millis(200))).await;
    let t = Instant::now();
    let r = http.get(delayed.url("/")).send().await.unwrap();
    assert_eq!(r.status(), 204);
    assert!(t.elapsed() >= Duration::from_millis(200));

    let hung = StandIn::start(Script::hang()).await;
    let r = http
        .get(hung.url("/"))
        .timeout(Duration::from_millis(200))
        .send()
        .await;
    assert!(r.unwrap_err().is_timeout());
    assert_eq!(hung.requests()[0].json_or_null(), Value::Null);
}
