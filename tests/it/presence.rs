//! Presence (`GET /api/rooms/{room}/presence`, kept from `connected`/`disconnected`, with the
//! online count on join/leave notices) and the per-user message rate limit, black-box through
//! signed webhooks.

use std::time::Duration;

use hubhook::protocol::{DisconnectedRequest, Event};
use serde_json::{json, Value};

use crate::support::*;

async fn presence(app: &TestApp, room: &str) -> Value {
    let r = app
        .http
        .get(app.url(&format!("/api/rooms/{room}/presence")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    r.json().await.unwrap()
}

fn users(v: &Value) -> Vec<(String, u64)> {
    v["users"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| {
            assert!(u["since"].as_str().is_some_and(|s| s.ends_with('Z')), "{u}");
            (
                u["userId"].as_str().unwrap().to_string(),
                u["connections"].as_u64().unwrap(),
            )
        })
        .collect()
}

fn left() -> Event {
    Event::Disconnected(DisconnectedRequest {
        reason: None,
        mqtt: None,
    })
}

#[tokio::test]
async fn presence_follows_connect_and_disconnect() {
    let app = spawn_app().await;
    for (conn, user, ce) in [
        ("c1", "alice", "1"),
        ("c2", "alice", "2"),
        ("c3", "bob", "3"),
    ] {
        let r = app
            .send(
                ctx(conn, Some(user), ce, Some("lobby")),
                Event::Connected,
                &[KEY],
            )
            .await;
        assert_eq!(r.status(), 200);
    }
    // A retried `connected` changes nothing.
    let r = app
        .send(
            ctx("c3", Some("bob"), "3", Some("lobby")),
            Event::Connected,
            &[KEY],
        )
        .await;
    assert_eq!(r.status(), 200);
    let p = presence(&app, "lobby").await;
    assert_eq!(p["online"], 2);
    assert_eq!(users(&p), [("alice".into(), 2), ("bob".into(), 1)]);
    assert_eq!(
        presence(&app, "other").await,
        json!({"room": "other", "online": 0, "users": []})
    );

    // The join notices carry the room's online count.
    let counts: Vec<Value> = app
        .rest
        .requests()
        .iter()
        .map(|r| r.json()["online"].clone())
        .collect();
    assert_eq!(
        counts,
        [json!(1), json!(1), json!(2)],
        "one notice per delivery"
    );

    let r = app
        .send(ctx("c1", Some("alice"), "4", Some("lobby")), left(), &[KEY])
        .await;
    assert_eq!(r.status(), 200);
    assert_eq!(
        users(&presence(&app, "lobby").await),
        [("alice".into(), 1), ("bob".into(), 1)]
    );
    for (conn, user, ce) in [("c2", "alice", "5"), ("c3", "bob", "6"), ("c3", "bob", "6")] {
        let r = app
            .send(ctx(conn, Some(user), ce, Some("lobby")), left(), &[KEY])
            .await;
        assert_eq!(r.status(), 200);
    }
    assert_eq!(presence(&app, "lobby").await["online"], 0);
    let last = app.rest.requests().last().unwrap().json();
    assert_eq!(
        (last["type"].as_str(), last["online"].as_u64()),
        (Some("left"), Some(0))
    );
}

#[tokio::test]
async fn a_lost_disconnected_expires() {
    let app = spawn_app_with(|a| a.presence_ttl = Some("1s".into())).await;
    let r = app
        .send(
            ctx("c1", Some("alice"), "1", Some("lobby")),
            Event::Connected,
            &[KEY],
        )
        .await;
    assert_eq!(r.status(), 200);
    assert_eq!(presence(&app, "lobby").await["online"], 1);
    // No `disconnected` ever comes.
    let gone = poll(
        Duration::from_secs(3),
        Duration::from_millis(100),
        async || presence(&app, "lobby").await["online"] == 0,
    )
    .await;
    assert!(gone, "the entry expired");
}

#[tokio::test]
async fn message_rate_is_per_user_and_refusals_store_nothing() {
    let app = spawn_app_with(|a| a.message_rate = Some("1/m,burst=3".into())).await;
    let mut statuses = vec![];
    for i in 0..6 {
        let r = app
            .send(
                ctx("c1", Some("alice"), &format!("m{i}"), Some("lobby")),
                message(&format!("burst {i}")),
                &[KEY],
            )
            .await;
        let status = r.status().as_u16();
        let body = r.text().await.unwrap();
        if status == 429 {
            assert_eq!(
                body,
                "rate limit: at most 1 messages per minute (burst 3) per user; message refused, try again later"
            );
        }
        statuses.push(status);
    }
    assert_eq!(statuses, [200, 200, 200, 429, 429, 429]);
    // Another user has a bucket of their own.
    let r = app
        .send(
            ctx("c2", Some("bob"), "b1", Some("lobby")),
            message("mine"),
            &[KEY],
        )
        .await;
    assert_eq!(r.status(), 200);
    let history = app.history("lobby").await;
    assert_eq!(history["messages"].as_array().unwrap().len(), 4);
    assert_eq!(
        app.rest.requests().len(),
        4,
        "refused messages are not broadcast"
    );
}
