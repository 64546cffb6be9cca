//! Micro-benchmark of the per-webhook CPU work in `hubhook::protocol`: parse the CloudEvents
//! headers and body, verify `ce-signature` (one key), and build the response, for every event
//! type. Inputs are built once with `build_webhook`, exactly as the service would send them.
//!
//! `cargo bench --bench webhook` (add `-- --quick` for a short run). No I/O is measured here; the
//! end-to-end figures are `bench/run.sh`'s.

use std::hint::black_box;

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use http::{HeaderMap, HeaderValue, Response};
use hubhook::protocol::{
    build_webhook, failure, notification_ack, user_event_reply, ConnectRequest, ConnectResponse,
    ConnectionState, DisconnectedRequest, Event, EventContext, EventData, SignatureVerifier,
    UserEvent, Webhook, WebhookParser,
};

const KEY: &str = "ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789ABCDEFGH";

fn context(event_name: &str) -> EventContext {
    let mut state = ConnectionState::default();
    state.set("room", "lobby");
    EventContext::new(
        "chat",
        event_name,
        "0f9c97a2f0bf4706afe87a14e0797b11",
        "1a2b3c4d",
    )
    .with_user_id(Some("alice"))
    .with_time("2024-05-01T10:00:00Z")
    .with_subprotocol(Some("json.webpubsub.azure.v1"))
    .with_state(state)
    .with_origin("contoso.webpubsub.azure.com")
}

fn cases() -> Vec<(&'static str, Event)> {
    let mut connect = ConnectRequest::default();
    connect.claims.insert("sub".into(), vec!["alice".into()]);
    connect
        .claims
        .insert("role".into(), vec!["webpubsub.sendToGroup.lobby".into()]);
    connect.query.insert("room".into(), vec!["lobby".into()]);
    connect
        .headers
        .insert("user-agent".into(), vec!["Mozilla/5.0 (bench)".into()]);
    connect.subprotocols = vec!["json.webpubsub.azure.v1".into()];
    let user = |data| {
        Event::User(UserEvent {
            name: "message".into(),
            data,
        })
    };
    vec![
        ("connect", Event::Connect(connect)),
        ("connected", Event::Connected),
        (
            "disconnected",
            Event::Disconnected(DisconnectedRequest {
                reason: Some("client closed".into()),
                mqtt: None,
            }),
        ),
        (
            "user_text",
            user(EventData::Text("hello, lobby! ".repeat(8).into())),
        ),
        (
            "user_json",
            user(EventData::Json(serde_json::json!({
                "text": "hello, lobby!", "room": "lobby", "n": 42, "tags": ["a", "b"]
            }))),
        ),
        (
            "user_binary",
            user(EventData::Binary(Bytes::from(
                (0..=255u8).cycle().take(512).collect::<Vec<_>>(),
            ))),
        ),
    ]
}

/// What a handler answers: the connect body with state, an ack, or the user event echoed.
fn respond(hook: &Webhook) -> Response<Bytes> {
    match &hook.event {
        Event::Connect(req) => {
            let room = req.first_query("room").unwrap_or("lobby");
            let mut state = hook.context.state.clone();
            state.set("room", room);
            ConnectResponse {
                user_id: hook.context.user_id.as_deref().map(String::from),
                groups: vec![room.to_string()],
                roles: vec![
                    format!("webpubsub.joinLeaveGroup.{room}"),
                    format!("webpubsub.sendToGroup.{room}"),
                ],
                subprotocol: req.subprotocols.first().cloned(),
            }
            .into_response(Some(&state))
        }
        Event::Connected | Event::Disconnected(_) => notification_ack(),
        Event::User(u) => user_event_reply(Some(&u.data), None),
    }
}

fn handle(parser: &WebhookParser, headers: &HeaderMap, body: &Bytes) -> Response<Bytes> {
    match parser.parse(headers, body.clone()) {
        Ok(hook) => respond(&hook),
        Err(e) => failure(e.status(), &e.to_string()),
    }
}

fn bench_webhooks(c: &mut Criterion) {
    let parser = WebhookParser::new("chat", Some(SignatureVerifier::new([KEY])));
    let mut group = c.benchmark_group("parse_verify_respond");
    for (name, event) in cases() {
        let event_name = match &event {
            Event::User(u) => u.name.clone(),
            other => other.kind().into(),
        };
        let (headers, body) = build_webhook(&context(&event_name), &event, &[KEY]).unwrap();
        let check = handle(&parser, &headers, &body);
        assert!(
            check.status().is_success(),
            "{name}: {} {:?}",
            check.status(),
            check.body()
        );
        group.throughput(Throughput::Elements(1));
        group.bench_function(name, |b| {
            b.iter(|| handle(black_box(&parser), black_box(&headers), black_box(&body)))
        });
    }

    // A forged request: the cheap header checks and one HMAC, then 401 before any body parse.
    let (mut headers, body) = build_webhook(
        &context("message"),
        &Event::User(UserEvent {
            name: "message".into(),
            data: EventData::Text("forged".into()),
        }),
        &[KEY],
    )
    .unwrap();
    headers.insert(
        "ce-signature",
        HeaderValue::from_static(
            "sha256=0000000000000000000000000000000000000000000000000000000000000000",
        ),
    );
    assert_eq!(handle(&parser, &headers, &body).status(), 401);
    group.bench_function("forged_signature", |b| {
        b.iter(|| handle(black_box(&parser), black_box(&headers), black_box(&body)))
    });
    group.finish();
}

criterion_group!(benches, bench_webhooks);
criterion_main!(benches);
