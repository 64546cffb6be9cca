//! Micro-benchmarks of the per-request work issue 15 took out of the hot paths, each beside what
//! it replaced, so the saving stays visible (and honest) as the code moves:
//!
//! * `rest_auth`: a REST call's URL and bearer token — parsed and minted per request (before)
//!   vs. [`RequestCache::prepare`] on a URL it has seen (now).
//! * `connection_state`: `ce-connectionState` as the parser leaves it (kept as text) and as a
//!   handler reads it (decoded once on first use).
//! * `read_body`: the webhook body through axum's `HeaderMap` + `Bytes` extractors (before) vs.
//!   the request taken whole (`hubhook::http::read_body`).
//! * `router`: the whole webhook route through `tower::ServiceExt::oneshot` — a user event the
//!   chat refuses (no I/O), and a relayed one (a REST call to a loopback stand-in: the cached
//!   token and URL on a real client).
//!
//! `cargo bench --bench hotpath` (add `-- --quick` for a short run). End-to-end figures are
//! `bench/run.sh`'s; instruction counts per request `bench/instructions.sh`'s.

use std::hint::black_box;
use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::FromRequest;
use criterion::{criterion_group, criterion_main, Criterion};
use http::{HeaderMap, HeaderValue, Request};
use hubhook::chat::{Chat, ChatConfig};
use hubhook::http::{read_body, router, AppState, HealthCheck, MAX_BODY_BYTES};
use hubhook::protocol::{
    build_webhook, AllowedOrigins, ConnectionState, Event, EventContext, EventData,
    SignatureVerifier, UserEvent, WebhookParser,
};
use hubhook::service::{
    rest_token, unix_now, AccessKey, ConnectionString, RequestCache, RetryPolicy, ServiceClient,
};
use hubhook::store::StoreSpec;
use tower::ServiceExt;

const KEY: &str = "ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789ABCDEFGH";
const URL: &str =
    "https://contoso.webpubsub.azure.com/api/hubs/chat/groups/lobby/:send?api-version=2024-12-01";
const STATE: &str = "eyJyb29tIjoibG9iYnkifQ=="; // {"room":"lobby"}

fn bench_rest_auth(c: &mut Criterion) {
    let key = AccessKey::new(KEY);
    let mut g = c.benchmark_group("rest_auth");
    // What `ServiceClient::execute` did per attempt: parse, mint over the parsed text, header.
    g.bench_function("parse_and_mint", |b| {
        b.iter(|| {
            let url = url::Url::parse(black_box(URL)).unwrap();
            let token = rest_token(&key, url.as_str(), unix_now());
            let mut v = HeaderValue::from_str(&format!("Bearer {token}")).unwrap();
            v.set_sensitive(true);
            (url, v)
        })
    });
    let cache = RequestCache::new(key.clone());
    cache.prepare(URL, unix_now()).unwrap();
    g.bench_function("cached", |b| {
        b.iter(|| cache.prepare(black_box(URL), unix_now()).unwrap())
    });
    g.finish();
}

fn bench_state(c: &mut Criterion) {
    let mut g = c.benchmark_group("connection_state");
    g.bench_function("kept_unread", |b| {
        b.iter(|| ConnectionState::decode(black_box(STATE)))
    });
    g.bench_function("decode_and_read_room", |b| {
        b.iter(|| {
            let s = ConnectionState::decode(black_box(STATE));
            s.get_str("room").map(str::len)
        })
    });
    // A handler that reads the state three times still decodes it once.
    g.bench_function("decode_and_read_room_3x", |b| {
        b.iter(|| {
            let s = ConnectionState::decode(black_box(STATE));
            (0..3).filter_map(|_| s.get_str("room")).count()
        })
    });
    g.finish();
}

fn webhook(event_name: &str, text: &str) -> (HeaderMap, Bytes) {
    let mut state = ConnectionState::default();
    state.set("room", "lobby");
    let ctx = EventContext::new("chat", event_name, "bench-conn-0", "w1-fixed-event")
        .with_user_id(Some("bench-user"))
        .with_time("2024-05-01T10:00:00Z")
        .with_state(state)
        .with_origin("127.0.0.1");
    let event = Event::User(UserEvent {
        name: event_name.into(),
        data: EventData::Text(text.into()),
    });
    build_webhook(&ctx, &event, &[KEY]).unwrap()
}

fn request(headers: &HeaderMap, body: &Bytes) -> Request<Body> {
    let mut r = Request::post("/eventhandler")
        .header("content-length", body.len())
        .body(Body::from(body.clone()))
        .unwrap();
    r.headers_mut()
        .extend(headers.iter().map(|(k, v)| (k.clone(), v.clone())));
    r
}

fn bench_read_body(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let (headers, body) = webhook("message", "hello from the bench");
    let mut g = c.benchmark_group("read_body");
    // Request building is in both: only the difference between the two lines matters.
    g.bench_function("extractors_headermap_clone_and_bytes", |b| {
        b.iter(|| {
            rt.block_on(async {
                let req = request(&headers, &body);
                let (parts, body) = req.into_parts();
                let h = parts.headers.clone(); // what the `HeaderMap` extractor does
                let req = Request::from_parts(parts, body);
                let bytes = Bytes::from_request(req, &()).await.unwrap();
                (h, bytes)
            })
        })
    });
    g.bench_function("request_whole", |b| {
        b.iter(|| {
            rt.block_on(async {
                let req = request(&headers, &body);
                let (parts, body) = req.into_parts();
                let bytes = read_body(&parts.headers, body, MAX_BODY_BYTES)
                    .await
                    .unwrap();
                (parts, bytes)
            })
        })
    });
    g.finish();
}

/// A loopback REST stand-in answering 202, as `examples/rest_standin.rs`.
async fn standin() -> u16 {
    let app = axum::Router::new().fallback(|_b: Bytes| async { http::StatusCode::ACCEPTED });
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    tokio::spawn(async move { axum::serve(l, app).await.unwrap() });
    port
}

fn bench_router(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let app = rt.block_on(async {
        let port = standin().await;
        let cs = ConnectionString::parse(&format!(
            "Endpoint=http://127.0.0.1:{port};AccessKey={KEY};Version=1.0;"
        ))
        .unwrap();
        let spec =
            StoreSpec::parse(&format!("sqlite://{}", dir.path().join("b.db").display())).unwrap();
        let store = spec.open(&Default::default()).await.unwrap();
        let service = ServiceClient::new(&cs, "chat", RetryPolicy::default()).unwrap();
        let config = ChatConfig {
            relay_events: vec!["typing".into()],
            ..Default::default()
        };
        let state = AppState {
            parser: WebhookParser::new("chat", Some(SignatureVerifier::new([KEY]))),
            origins: AllowedOrigins::Any,
            chat: Chat::new(store, service, config),
            connection_string: cs,
            hub: "chat".into(),
            auth: hubhook::auth::Authenticator::Off,
            cors_origins: vec![],
            health: HealthCheck::default(),
        };
        router(Arc::new(state), "/eventhandler")
    });
    let mut g = c.benchmark_group("router");
    for (name, event, status) in [
        ("refused_user_event", "unknown", 400),
        ("relayed_via_rest", "typing", 204),
    ] {
        let (headers, body) = webhook(event, "hello from the bench");
        let r = rt.block_on(app.clone().oneshot(request(&headers, &body)));
        assert_eq!(r.unwrap().status(), status, "{name}");
        g.bench_function(name, |b| {
            b.iter(|| {
                rt.block_on(async {
                    let r = app.clone().oneshot(request(&headers, &body)).await.unwrap();
                    axum::body::to_bytes(r.into_body(), usize::MAX)
                        .await
                        .unwrap()
                })
            })
        });
    }
    g.finish();
}

criterion_group!(
    benches,
    bench_rest_auth,
    bench_state,
    bench_read_body,
    bench_router
);
criterion_main!(benches);
