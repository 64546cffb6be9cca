//! Black-box tests of the chat function: the router on port 0, a real SQLite file, and a
//! loopback stand-in for the Web PubSub REST API that records every broadcast.

use crate::support::*;
use hubhook::protocol::{
    ConnectRequest, ConnectionState, DisconnectedRequest, Event, EventData, UserEvent,
};
use serde_json::{json, Value};

fn assert_broadcast(call: &Request, rest: &StandIn, room: &str) -> Value {
    assert_eq!(call.method, "POST");
    assert_eq!(call.path, format!("/api/hubs/chat/groups/{room}/:send"));
    assert_eq!(call.query, "api-version=2024-12-01");
    assert_eq!(
        call.header("content-type").as_deref(),
        Some("application/json")
    );
    let claims = verify_jwt(&call.header("authorization").unwrap(), KEY);
    let url = format!(
        "http://127.0.0.1:{}{}?{}",
        rest.addr.port(),
        call.path,
        call.query
    );
    assert_eq!(claims["aud"], url);
    assert_eq!(
        claims["exp"].as_u64().unwrap() - claims["iat"].as_u64().unwrap(),
        3600
    );
    call.json()
}

#[tokio::test]
async fn handshake_allows_configured_origins_only() {
    let app = spawn_app().await;
    let probe = |origin: Option<&'static str>, path: &'static str| {
        let mut r = app.http.request(reqwest::Method::OPTIONS, app.url(path));
        if let Some(o) = origin {
            r = r.header("WebHook-Request-Origin", o);
        }
        r.send()
    };
    let ok = probe(Some("localhost"), "/eventhandler/validate")
        .await
        .unwrap();
    assert_eq!(ok.status(), 200);
    assert_eq!(ok.headers()["webhook-allowed-origin"], "localhost");
    assert_eq!(
        probe(Some("evil.webpubsub.azure.com"), "/eventhandler")
            .await
            .unwrap()
            .status(),
        403
    );
    assert_eq!(probe(None, "/eventhandler").await.unwrap().status(), 400);
    let star = spawn_app_with(|a| a.allowed_origins = Some("*".into())).await;
    let r = star
        .http
        .request(reqwest::Method::OPTIONS, star.url("/eventhandler"))
        .header("WebHook-Request-Origin", "x.webpubsub.azure.com")
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["webhook-allowed-origin"], "*");
}

#[tokio::test]
async fn connect_accepts_the_verified_user_into_the_room() {
    let app = spawn_app().await;
    let mut req = ConnectRequest::default();
    req.query.insert("room".into(), vec!["room-7".into()]);
    req.query.insert("userId".into(), vec!["mallory".into()]);
    req.subprotocols = vec!["json.reliable.webpubsub.azure.v1".into()];
    let r = app
        .send(
            ctx("c1", Some("alice"), "1", None),
            Event::Connect(req),
            &[KEY],
        )
        .await;
    assert_eq!(r.status(), 200);
    let state = ConnectionState::decode(r.headers()["ce-connectionstate"].to_str().unwrap());
    assert_eq!(state.get_str("room"), Some("room-7"));
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["userId"], "alice");
    assert_eq!(body["groups"], json!(["room-7"]));
    assert_eq!(
        body["roles"],
        json!([
            "webpubsub.joinLeaveGroup.room-7",
            "webpubsub.sendToGroup.room-7"
        ])
    );
    assert_eq!(body["subprotocol"], "json.reliable.webpubsub.azure.v1");

    let r = app
        .send(
            ctx("c2", None, "1", None),
            Event::Connect(ConnectRequest::default()),
            &[KEY],
        )
        .await;
    assert_eq!(r.status(), 401);
    let mut bad = ConnectRequest::default();
    bad.query.insert("room".into(), vec!["../etc".into()]);
    assert_eq!(
        app.send(
            ctx("c3", Some("bob"), "1", None),
            Event::Connect(bad),
            &[KEY]
        )
        .await
        .status(),
        400
    );
    assert!(app.rest.requests().is_empty(), "connect broadcasts nothing");
}

#[tokio::test]
async fn full_conversation_broadcasts_stores_and_replays() {
    let app = spawn_app().await;
    let r = app
        .send(
            ctx("c1", Some("alice"), "1", Some("lobby")),
            Event::Connected,
            &[KEY],
        )
        .await;
    assert_eq!(r.status(), 200);
    let r = app
        .send(
            ctx("c1", Some("alice"), "2", Some("lobby")),
            message("hello world"),
            &[KEY],
        )
        .await;
    assert_eq!(r.status(), 200);
    assert_eq!(
        r.headers()["content-type"],
        "application/json; charset=utf-8"
    );
    let reply: Value = r.json().await.unwrap();
    assert_eq!(
        (reply["stored"].as_bool(), reply["broadcast"].as_bool()),
        (Some(true), Some(true))
    );
    let id = reply["id"].as_str().unwrap().to_string();
    let leave = DisconnectedRequest {
        reason: Some("bye".into()),
        mqtt: None,
    };
    let r = app
        .send(
            ctx("c1", Some("alice"), "3", Some("lobby")),
            Event::Disconnected(leave),
            &[KEY],
        )
        .await;
    assert_eq!(r.status(), 200);

    let calls = app.rest.requests();
    assert_eq!(calls.len(), 3, "{calls:#?}");
    let joined = assert_broadcast(&calls[0], &app.rest, "lobby");
    assert_eq!(
        joined,
        json!({"type":"joined","id":hubhook::store::Broadcast::notice_id("c1", "1", 1_714_557_600_000),
               "room":"lobby","userId":"alice","connectionId":"c1","at":"2024-05-01T10:00:00.000Z","online":1})
    );
    let msg = assert_broadcast(&calls[1], &app.rest, "lobby");
    assert_eq!(
        msg,
        json!({"type":"message","room":"lobby","id":id,"from":"alice","text":"hello world","at":"2024-05-01T10:00:00.000Z"})
    );
    let left = assert_broadcast(&calls[2], &app.rest, "lobby");
    assert_eq!(left["type"], "left");
    assert_eq!(left["connectionId"], "c1");
    assert_eq!(left["online"], 0);
    // Every broadcast carries an id of its own, so a client can drop a duplicate.
    assert!(
        left["id"].as_str().is_some_and(|l| l != joined["id"]),
        "{left}"
    );

    let history = app.history("lobby").await;
    assert_eq!(history["next"], Value::Null);
    assert_eq!(history["messages"].as_array().unwrap().len(), 1);
    assert_eq!(history["messages"][0]["id"], id);
    assert_eq!(history["messages"][0]["text"], "hello world");
    assert_eq!(history["messages"][0]["from"], "alice");
    assert_eq!(app.history("other").await["messages"], json!([]));
}

#[tokio::test]
async fn retried_webhooks_store_and_broadcast_once() {
    let app = spawn_app().await;
    for _ in 0..3 {
        let r = app
            .send(
                ctx("c1", Some("alice"), "9", Some("lobby")),
                message("once"),
                &[KEY],
            )
            .await;
        assert_eq!(r.status(), 200);
    }
    let r = app
        .send(
            ctx("c1", Some("alice"), "9", Some("lobby")),
            message("once"),
            &[KEY],
        )
        .await;
    let reply: Value = r.json().await.unwrap();
    assert_eq!(reply["duplicate"], true);
    for _ in 0..2 {
        app.send(
            ctx("c1", Some("alice"), "10", Some("lobby")),
            Event::Connected,
            &[KEY],
        )
        .await;
    }
    // the same ce-id on another connection is another delivery
    app.send(
        ctx("c2", Some("bob"), "9", Some("lobby")),
        message("twice"),
        &[KEY],
    )
    .await;
    assert_eq!(
        app.rest.requests().len(),
        3,
        "one message, one join, one message from c2"
    );
    assert_eq!(app.history_len("lobby").await, 2);
}

#[tokio::test]
async fn json_messages_rooms_and_rejections() {
    let app = spawn_app().await;
    let json_msg = |v: Value| {
        Event::User(UserEvent {
            name: "message".into(),
            data: EventData::Json(v),
        })
    };
    let r = app
        .send(
            ctx("c1", Some("a"), "1", Some("r1")),
            json_msg(json!({"text":"hi","room":"r1"})),
            &[KEY],
        )
        .await;
    assert_eq!(r.status(), 200);
    let r = app
        .send(
            ctx("c1", Some("a"), "2", Some("r1")),
            json_msg(json!({"text":"hi","room":"r2"})),
            &[KEY],
        )
        .await;
    assert_eq!(r.status(), 400);
    assert!(r.text().await.unwrap().contains("no permission"));
    let r = app
        .send(ctx("c1", Some("a"), "3", Some("r1")), message(""), &[KEY])
        .await;
    assert_eq!(
        (r.status().as_u16(), r.text().await.unwrap()),
        (400, "empty message".to_string())
    );
    let big = "x".repeat(64 * 1024 + 1);
    let r = app
        .send(ctx("c1", Some("a"), "4", Some("r1")), message(&big), &[KEY])
        .await;
    assert_eq!(r.status(), 400);
    let other = Event::User(UserEvent {
        name: "typing".into(),
        data: EventData::Text("..".into()),
    });
    let r = app
        .send(ctx("c1", Some("a"), "5", Some("r1")), other.clone(), &[KEY])
        .await;
    assert_eq!(r.status(), 400);
    assert_eq!(app.rest.requests().len(), 1);
    assert_eq!(
        app.history("r1").await["messages"]
            .as_array()
            .unwrap()
            .len(),
        1
    );

    let relay = spawn_app_with(|a| a.relay_events = Some("typing".into())).await;
    let r = relay
        .send(ctx("c1", Some("a"), "5", Some("r1")), other, &[KEY])
        .await;
    assert_eq!(r.status(), 204);
    let calls = relay.rest.requests();
    assert_eq!(calls[0].query, "api-version=2024-12-01&excluded=c1");
    assert_eq!(calls[0].json()["type"], "typing");
    assert_eq!(relay.history("r1").await["messages"], json!([]));
}

#[tokio::test]
async fn signatures_are_required_and_both_keys_rotate() {
    let app = spawn_app_with(|a| a.access_keys = Some(KEY2.into())).await;
    let c = || ctx("c1", Some("alice"), "1", Some("lobby"));
    let r = app.send(c(), message("x"), &[]).await;
    assert_eq!(
        (r.status().as_u16(), r.text().await.unwrap()),
        (401, "missing ce-signature".to_string())
    );
    let r = app.send(c(), message("x"), &["not-a-key"]).await;
    assert_eq!(
        (r.status().as_u16(), r.text().await.unwrap()),
        (401, "signature validation failed".to_string())
    );
    assert_eq!(
        app.send(
            ctx("c1", Some("a"), "1", Some("lobby")),
            message("p"),
            &[KEY]
        )
        .await
        .status(),
        200
    );
    assert_eq!(
        app.send(
            ctx("c1", Some("a"), "2", Some("lobby")),
            message("s"),
            &[KEY2]
        )
        .await
        .status(),
        200
    );
    assert_eq!(
        app.send(
            ctx("c1", Some("a"), "3", Some("lobby")),
            message("b"),
            &["old", KEY2]
        )
        .await
        .status(),
        200
    );
    assert_eq!(app.history_len("lobby").await, 3);
    let wrong_hub = {
        let mut x = c();
        x.hub = "other".into();
        x
    };
    assert_eq!(
        app.send(wrong_hub, message("x"), &[KEY]).await.status(),
        400
    );
}

#[tokio::test]
async fn store_failure_fails_the_event_and_broadcasts_nothing() {
    let app = spawn_app().await;
    let db = rusqlite::Connection::open(&app.db).unwrap();
    db.execute_batch("CREATE TRIGGER fail BEFORE INSERT ON messages BEGIN SELECT RAISE(FAIL, 'simulated disk failure'); END;").unwrap();
    let r = app
        .send(
            ctx("c1", Some("alice"), "1", Some("lobby")),
            message("lost?"),
            &[KEY],
        )
        .await;
    assert_eq!(r.status(), 500);
    let reason = r.text().await.unwrap();
    assert!(
        reason.contains("simulated disk failure") && !reason.contains('\n'),
        "{reason}"
    );
    assert!(app.rest.requests().is_empty());
    db.execute_batch("DROP TRIGGER fail;").unwrap();
    // the retry of the failed delivery succeeds and is stored once
    let r = app
        .send(
            ctx("c1", Some("alice"), "1", Some("lobby")),
            message("lost?"),
            &[KEY],
        )
        .await;
    assert_eq!(r.status(), 200);
    assert_eq!(app.history_len("lobby").await, 1);
}

#[tokio::test]
async fn broadcast_failure_keeps_the_message_and_says_so() {
    let app = spawn_app().await;
    app.rest.set_status(403);
    let r = app
        .send(
            ctx("c1", Some("alice"), "1", Some("lobby")),
            message("kept"),
            &[KEY],
        )
        .await;
    assert_eq!(r.status(), 200);
    let reply: Value = r.json().await.unwrap();
    assert_eq!(
        (reply["stored"].as_bool(), reply["broadcast"].as_bool()),
        (Some(true), Some(false))
    );
    assert!(reply["error"].as_str().unwrap().contains("403"));
    assert_eq!(app.rest.requests().len(), 1, "403 is not retried");
    assert_eq!(app.history("lobby").await["messages"][0]["text"], "kept");
    // 5xx is retried, within the deadline
    app.rest.set_status(503);
    let r = app
        .send(
            ctx("c1", Some("alice"), "2", Some("lobby")),
            message("again"),
            &[KEY],
        )
        .await;
    assert_eq!(r.json::<Value>().await.unwrap()["broadcast"], false);
    assert_eq!(app.rest.requests().len(), 1 + 4);
}

#[tokio::test]
async fn oversize_bodies_are_refused_before_reading() {
    let app = spawn_app().await;
    let body = vec![b'x'; 1024 * 1024 + 1];
    let r = app
        .http
        .post(app.url("/eventhandler"))
        .header("content-type", "text/plain")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 413);
    let r = app.http.get(app.url("/eventhandler")).send().await.unwrap();
    assert_eq!(r.status(), 405);
}

#[tokio::test]
async fn history_pages_with_an_opaque_cursor() {
    let app = spawn_app().await;
    for i in 0..7 {
        let mut c = ctx("c1", Some("alice"), &i.to_string(), Some("lobby"));
        c.ce_time = Some(format!("2024-05-01T10:00:0{i}Z").into());
        assert_eq!(
            app.send(c, message(&format!("m{i}")), &[KEY])
                .await
                .status(),
            200
        );
    }
    let mut seen = Vec::new();
    let mut next: Option<String> = None;
    loop {
        let mut url = app.url("/api/messages?room=lobby&limit=3");
        if let Some(n) = &next {
            url.push_str(&format!("&before={n}"));
        }
        let page: Value = app
            .http
            .get(url)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        seen.extend(
            page["messages"]
                .as_array()
                .unwrap()
                .iter()
                .map(|m| m["text"].as_str().unwrap().to_string()),
        );
        match page["next"].as_str() {
            Some(n) => next = Some(n.to_string()),
            None => break,
        }
    }
    assert_eq!(seen, ["m6", "m5", "m4", "m3", "m2", "m1", "m0"]);
    for bad in [
        "/api/messages?before=zzz",
        "/api/messages?limit=0",
        "/api/messages?limit=x",
        "/api/messages?room=a%20b",
    ] {
        assert_eq!(
            app.http.get(app.url(bad)).send().await.unwrap().status(),
            400,
            "{bad}"
        );
    }
    assert_eq!(
        app.http
            .get(app.url("/healthz"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
}

#[tokio::test]
async fn negotiate_is_off_unless_loopback_or_opened() {
    // the stand-in endpoint is 127.0.0.1, so negotiate defaults to open
    let app = spawn_app().await;
    let v = get_json(&app.http, app.url("/negotiate?userId=alice&room=r1")).await;
    let base = format!("ws://127.0.0.1:{}/client/hubs/chat", app.rest.addr.port());
    assert_eq!(v["baseUrl"], base);
    let token = v["token"].as_str().unwrap();
    assert_eq!(v["url"], format!("{base}?access_token={token}&room=r1"));
    let claims = verify_jwt(&format!("Bearer {token}"), KEY);
    assert_eq!(claims["sub"], "alice");
    assert_eq!(
        claims["aud"],
        format!("http://127.0.0.1:{}/client/hubs/chat", app.rest.addr.port())
    );
    assert_eq!(
        claims["role"],
        json!(["webpubsub.joinLeaveGroup.r1", "webpubsub.sendToGroup.r1"])
    );
    let off = spawn_app_with(|a| a.negotiate = Some("off".into())).await;
    assert_eq!(
        off.http
            .get(off.url("/negotiate"))
            .send()
            .await
            .unwrap()
            .status(),
        404
    );
}

#[tokio::test]
async fn unreachable_store_is_503_with_a_reason_and_no_broadcast() {
    use hubhook::store::dynamodb::{DynamoOptions, DynamoStore};
    let rest = rest_stand_in().await;
    // Nothing listens on a port that was just free.
    let dead = format!("127.0.0.1:{}", free_port());
    let conf = aws_sdk_dynamodb::Config::builder()
        .behavior_version_latest()
        .region(aws_sdk_dynamodb::config::Region::new("us-east-1"))
        .endpoint_url(format!("http://{dead}"))
        .credentials_provider(aws_sdk_dynamodb::config::Credentials::new(
            "AKIDFAKE", "fake", None, None, "static",
        ))
        .build();
    let opts = DynamoOptions {
        deadline: std::time::Duration::from_secs(1),
        ..Default::default()
    };
    let store =
        DynamoStore::from_client(aws_sdk_dynamodb::Client::from_conf(conf), "messages", opts);
    let dir = tempfile::tempdir().unwrap();
    let config = hubhook::config::Config::from_args(
        &args_for(&rest, &dir.path().join("unused.db")),
        &hubhook::config::Defaults::serve(),
    )
    .unwrap();
    let router =
        hubhook::runtime::build_router_with_store(&config, std::sync::Arc::new(store)).unwrap();
    let app = hubhook::runtime::Application::bind("127.0.0.1:0".parse().unwrap(), router)
        .await
        .unwrap();
    let addr = app.local_addr();
    tokio::spawn(app.run());
    let (headers, body) = hubhook::protocol::build_webhook(
        &ctx("c1", Some("a"), "1", Some("lobby")).with_event_name("message"),
        &message("hi"),
        &[KEY],
    )
    .unwrap();
    let r = reqwest::Client::new()
        .post(format!("http://{addr}/eventhandler"))
        .headers(headers)
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 503);
    let reason = r.text().await.unwrap();
    assert!(
        reason.starts_with("store unavailable:") && reason.to_lowercase().contains("refused"),
        "{reason}"
    );
    assert!(rest.requests().is_empty());
    let r = reqwest::Client::new()
        .get(format!("http://{addr}/healthz"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 503);
}

#[tokio::test]
async fn a_room_from_the_connection_state_is_checked_like_any_other() {
    let app = spawn_app().await;
    let long = "r".repeat(5_000);
    for bad in ["", "../../api/x?y=1#z", long.as_str()] {
        let r = app
            .send(
                ctx("c1", Some("alice"), "1", Some(bad)),
                message("hi"),
                &[KEY],
            )
            .await;
        assert_eq!(r.status(), 400, "{bad:.40}");
        assert!(r.text().await.unwrap().starts_with("room "), "{bad:.40}");
        let r = app
            .send(
                ctx("c1", Some("alice"), "2", Some(bad)).with_event_name("connected"),
                Event::Connected,
                &[KEY],
            )
            .await;
        assert_eq!(r.status(), 400, "{bad:.40}");
    }
    assert!(app.rest.requests().is_empty(), "nothing was broadcast");
    let db = rusqlite::Connection::open(&app.db).unwrap();
    let stored: i64 = db
        .query_row("SELECT count(*) FROM messages", [], |r| r.get(0))
        .unwrap();
    assert_eq!(stored, 0);
}
