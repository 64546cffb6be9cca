use std::sync::Arc;

use super::*;
use crate::protocol::{ConnectionState, EventContext};
use crate::service::{ConnectionString, RetryPolicy};
use crate::store::sqlite::SqliteStore;

fn chat(dir: &tempfile::TempDir, config: ChatConfig) -> Chat {
    let store = Arc::new(SqliteStore::open(dir.path().join("t.db")).unwrap());
    let cs = ConnectionString::parse("Endpoint=http://127.0.0.1:9;AccessKey=k").unwrap();
    Chat::new(
        store,
        ServiceClient::new(&cs, "chat", RetryPolicy::default()).unwrap(),
        config,
    )
}

fn ctx(user: Option<&str>) -> EventContext {
    EventContext::new("chat", "connect", "c1", "1").with_user_id(user)
}

fn connect_req(query_room: Option<&str>, roles: &[&str], subprotocols: &[&str]) -> ConnectRequest {
    let mut req = ConnectRequest::default();
    if let Some(r) = query_room {
        req.query.insert("room".into(), vec![r.into()]);
    }
    req.claims
        .insert("role".into(), roles.iter().map(|s| s.to_string()).collect());
    req.subprotocols = subprotocols.iter().map(|s| s.to_string()).collect();
    req
}

#[test]
fn a_token_scoped_to_rooms_limits_the_room_at_connect() {
    let dir = tempfile::tempdir().unwrap();
    let negotiated = ["webpubsub.joinLeaveGroup.r1", "webpubsub.sendToGroup.r1"];
    let free = chat(&dir, ChatConfig::default());
    let r = free.connect(
        &ctx(Some("alice")),
        &connect_req(Some("r2"), &negotiated, &[]),
    );
    assert_eq!(r.status(), 200, "only when sign-in limits rooms");
    let c = chat(
        &dir,
        ChatConfig {
            room_must_be_granted: true,
            ..Default::default()
        },
    );
    let r = c.connect(
        &ctx(Some("alice")),
        &connect_req(Some("r1"), &negotiated, &[]),
    );
    assert_eq!(r.status(), 200);
    let r = c.connect(
        &ctx(Some("alice")),
        &connect_req(Some("r2"), &negotiated, &[]),
    );
    assert_eq!(r.status(), 403);
    assert_eq!(
        r.body().as_ref(),
        b"the client token does not grant room \"r2\""
    );
    let all = ["webpubsub.joinLeaveGroup", "webpubsub.joinLeaveGroup.r1"];
    let r = c.connect(&ctx(Some("alice")), &connect_req(Some("r2"), &all, &[]));
    assert_eq!(r.status(), 200);
}

#[test]
fn connect_puts_the_user_in_the_room_and_remembers_it() {
    let dir = tempfile::tempdir().unwrap();
    let c = chat(&dir, ChatConfig::default());
    let mut req = connect_req(Some("room-1"), &[], &["json.webpubsub.azure.v1"]);
    // a forged userId in the query is ignored
    req.query.insert("userId".into(), vec!["mallory".into()]);
    let r = c.connect(&ctx(Some("alice")), &req);
    assert_eq!(r.status(), 200);
    let body: Value = serde_json::from_slice(r.body()).unwrap();
    assert_eq!(
        body,
        json!({"userId":"alice","groups":["room-1"],
               "roles":["webpubsub.joinLeaveGroup.room-1","webpubsub.sendToGroup.room-1"],
               "subprotocol":"json.webpubsub.azure.v1"})
    );
    let state = ConnectionState::decode(r.headers()["ce-connectionstate"].to_str().unwrap());
    assert_eq!(state.get_str("room"), Some("room-1"));

    let r = c.connect(&ctx(Some("alice")), &connect_req(None, &[], &[]));
    let body: Value = serde_json::from_slice(r.body()).unwrap();
    assert_eq!(body["groups"], json!(["lobby"]));
    assert!(body.get("subprotocol").is_none());
}

#[test]
fn connect_rejects_anonymous_and_bad_rooms() {
    let dir = tempfile::tempdir().unwrap();
    let c = chat(&dir, ChatConfig::default());
    let r = c.connect(&ctx(None), &connect_req(None, &[], &[]));
    assert_eq!(r.status(), 401);
    assert_eq!(r.body().as_ref(), b"anonymous connections are not allowed");
    let r = c.connect(&ctx(Some("a")), &connect_req(Some("no spaces"), &[], &[]));
    assert_eq!(r.status(), 400);

    let c = chat(
        &dir,
        ChatConfig {
            allow_anonymous: true,
            ..Default::default()
        },
    );
    let r = c.connect(&ctx(None), &connect_req(None, &[], &[]));
    assert_eq!(r.status(), 200);
    let body: Value = serde_json::from_slice(r.body()).unwrap();
    assert!(body.get("userId").is_none());
}

#[test]
fn message_rules() {
    let dir = tempfile::tempdir().unwrap();
    let c = chat(
        &dir,
        ChatConfig {
            max_message_bytes: 10,
            ..Default::default()
        },
    );
    let mut cx = ctx(Some("alice"));
    cx.state.set("room", "home");
    let ok = |d: EventData| c.parse_message(&cx, &d);
    assert_eq!(
        ok(EventData::Text("hi".into())),
        Ok(("hi".into(), "home".into()))
    );
    assert_eq!(
        ok(EventData::Json(json!("hi"))),
        Ok(("hi".into(), "home".into()))
    );
    assert_eq!(
        ok(EventData::Json(json!({"text":"hi","room":"home"}))),
        Ok(("hi".into(), "home".into()))
    );
    assert!(ok(EventData::Text("   ".into()))
        .unwrap_err()
        .to_string()
        .contains("empty"));
    assert!(ok(EventData::Text("x".repeat(11).into()))
        .unwrap_err()
        .to_string()
        .contains("exceeds 10 bytes"));
    assert!(ok(EventData::Json(json!({"text":5}))).is_err());
    assert!(ok(EventData::Json(json!({"body":"x"}))).is_err());
    assert!(ok(EventData::Json(json!([1]))).is_err());
    assert!(ok(EventData::Binary(bytes::Bytes::from_static(b"x"))).is_err());
    assert!(ok(EventData::Json(json!({"text":"hi","room":"other"})))
        .unwrap_err()
        .to_string()
        .contains("no permission"));
    assert!(ok(EventData::Json(json!({"text":"hi","room":"bad room"}))).is_err());

    // a token role for another room lets the connection send there
    let r = c.connect(
        &ctx(Some("alice")),
        &connect_req(Some("home"), &["webpubsub.sendToGroup.other"], &[]),
    );
    cx.state = ConnectionState::decode(r.headers()["ce-connectionstate"].to_str().unwrap());
    assert_eq!(
        c.parse_message(&cx, &EventData::Json(json!({"text":"hi","room":"other"}))),
        Ok(("hi".into(), "other".into()))
    );
    assert!(c
        .parse_message(&cx, &EventData::Json(json!({"text":"hi","room":"third"})))
        .is_err());
    let r = c.connect(
        &ctx(Some("alice")),
        &connect_req(Some("home"), &["webpubsub.sendToGroup"], &[]),
    );
    cx.state = ConnectionState::decode(r.headers()["ce-connectionstate"].to_str().unwrap());
    assert!(c
        .parse_message(&cx, &EventData::Json(json!({"text":"hi","room":"third"})))
        .is_ok());
}
