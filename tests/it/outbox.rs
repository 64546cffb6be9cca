//! The outbox end to end (SQLite): a broadcast that failed is sent by the webhook's retry or by
//! the sweeper, a notice's 502 means a retry works, and `/healthz` tells a store that cannot
//! write and an outbox that is behind.

use std::time::Duration;

use crate::support::*;
use hubhook::protocol::Event;
use serde_json::Value;

fn sends(app: &TestApp) -> Vec<Value> {
    app.rest
        .matching(|r| r.path.ends_with("/:send"))
        .iter()
        .map(|r| r.json())
        .collect()
}

#[tokio::test]
async fn a_retry_sends_the_broadcast_a_failure_left_behind() {
    let app = spawn_app().await;
    app.rest.set_status(403);
    let first = app
        .send(
            ctx("c1", Some("alice"), "1", Some("lobby")),
            message("kept"),
            &[KEY],
        )
        .await;
    let first: Value = first.json().await.unwrap();
    assert_eq!(
        (first["stored"].as_bool(), first["broadcast"].as_bool()),
        (Some(true), Some(false))
    );
    assert!(
        first["error"].as_str().unwrap().contains("queued"),
        "{first}"
    );

    app.rest.set_status(202);
    let retry: Value = app
        .send(
            ctx("c1", Some("alice"), "1", Some("lobby")),
            message("kept"),
            &[KEY],
        )
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(retry["duplicate"], true, "{retry}");
    assert_eq!(retry["broadcast"], true, "{retry}");
    assert_eq!(retry["id"], first["id"]);
    let sent = sends(&app);
    assert_eq!(sent.len(), 2, "one failed attempt, one success");
    assert_eq!(sent[1]["id"], first["id"]);
    assert_eq!(sent[1]["text"], "kept");

    // Sent once: a third delivery is a plain duplicate and sends nothing.
    let third: Value = app
        .send(
            ctx("c1", Some("alice"), "1", Some("lobby")),
            message("kept"),
            &[KEY],
        )
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(
        (third["duplicate"].as_bool(), third.get("broadcast")),
        (Some(true), None)
    );
    assert_eq!(sends(&app).len(), 2);
    assert_eq!(app.history_len("lobby").await, 1);
}

#[tokio::test]
async fn a_notice_that_answered_502_is_sent_by_the_retry() {
    let app = spawn_app().await;
    app.rest.set_status(403);
    let joined = || ctx("c9", Some("bob"), "7", Some("lobby")).with_event_name("connected");
    let r = app.send(joined(), Event::Connected, &[KEY]).await;
    assert_eq!(r.status(), 502);
    assert!(r
        .text()
        .await
        .unwrap()
        .starts_with("connected notice not delivered"));

    app.rest.set_status(202);
    let r = app.send(joined(), Event::Connected, &[KEY]).await;
    assert_eq!(r.status(), 200);
    let sent = sends(&app);
    assert_eq!(sent.len(), 2);
    assert_eq!(sent[1]["type"], "joined");
    assert_eq!(
        sent[1]["id"], sent[0]["id"],
        "the same notice, not a new one"
    );

    let r = app.send(joined(), Event::Connected, &[KEY]).await;
    assert_eq!(r.status(), 200);
    assert_eq!(sends(&app).len(), 2, "sent once");
}

#[tokio::test]
async fn the_sweeper_sends_after_an_outage_and_health_tells_the_backlog() {
    let app = spawn_app_with(|a| {
        a.outbox_grace = Some("100ms".into());
        a.outbox_sweep_every = Some("100ms".into());
        a.outbox_behind = Some("300ms".into());
    })
    .await;
    app.rest.set_status(403);
    let reply: Value = app
        .send(
            ctx("c1", Some("alice"), "1", Some("lobby")),
            message("later"),
            &[KEY],
        )
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(reply["broadcast"], false);

    // While the REST API refuses, the broadcast waits and health says the outbox is behind.
    let behind = poll(
        Duration::from_secs(10),
        Duration::from_millis(100),
        async || {
            let r = app.http.get(app.url("/healthz")).send().await.unwrap();
            r.status() == 503
                && r.text()
                    .await
                    .unwrap()
                    .starts_with("outbox behind: 1 broadcasts")
        },
    )
    .await;
    assert!(behind, "healthz never reported the backlog");
    let verbose: Value = app
        .http
        .get(app.url("/healthz?verbose"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(verbose["store"], "ok", "{verbose}");
    assert_eq!(verbose["outbox"]["pending"], 1, "{verbose}");
    // The webhook's own failure pushed the next attempt back by 1 s; then the sweeper retries.
    let retried = poll(
        Duration::from_secs(10),
        Duration::from_millis(100),
        async || sends(&app).len() >= 2,
    )
    .await;
    assert!(retried, "the sweeper did not retry");

    // The API is back: the sweeper sends it (back-off is 1 s, 2 s, ...) and health recovers.
    app.rest.set_status(202);
    let sent = poll(
        Duration::from_secs(15),
        Duration::from_millis(100),
        async || {
            app.rest.set_status(202);
            sends(&app).last().is_some_and(|s| s["id"] == reply["id"])
                && app
                    .http
                    .get(app.url("/healthz"))
                    .send()
                    .await
                    .unwrap()
                    .status()
                    == 200
        },
    )
    .await;
    assert!(sent, "the sweeper did not send the broadcast");
    let text_sent: Vec<Value> = sends(&app);
    assert!(text_sent
        .iter()
        .all(|s| s["id"] == reply["id"] && s["text"] == "later"));
}

#[tokio::test]
async fn health_fails_while_the_store_cannot_write() {
    let app = spawn_app().await;
    assert_eq!(
        app.http
            .get(app.url("/healthz"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    let db = rusqlite::Connection::open(&app.db).unwrap();
    db.execute_batch(
        "CREATE TRIGGER full BEFORE UPDATE ON health_probe BEGIN SELECT RAISE(FAIL, 'database or disk is full'); END;
         CREATE TRIGGER full2 BEFORE INSERT ON health_probe BEGIN SELECT RAISE(FAIL, 'database or disk is full'); END;",
    )
    .unwrap();
    let failing = poll(
        Duration::from_secs(5),
        Duration::from_millis(100),
        async || {
            let r = app.http.get(app.url("/healthz")).send().await.unwrap();
            r.status() == 503 && r.text().await.unwrap().contains("disk is full")
        },
    )
    .await;
    assert!(failing, "healthz did not notice the failing writes");
    db.execute_batch("DROP TRIGGER full; DROP TRIGGER full2;")
        .unwrap();
    let back = poll(
        Duration::from_secs(5),
        Duration::from_millis(100),
        async || {
            app.http
                .get(app.url("/healthz"))
                .send()
                .await
                .unwrap()
                .status()
                == 200
        },
    )
    .await;
    assert!(back, "healthz did not recover");
}

#[tokio::test]
async fn the_sweeper_gives_up_after_the_configured_age() {
    let app = spawn_app_with(|a| {
        a.outbox_grace = Some("100ms".into());
        a.outbox_sweep_every = Some("100ms".into());
        a.outbox_give_up = Some("500ms".into());
    })
    .await;
    app.rest.set_status(403);
    let r = app
        .send(
            ctx("c1", Some("alice"), "1", Some("lobby")),
            message("doomed"),
            &[KEY],
        )
        .await;
    assert_eq!(r.status(), 200);
    let emptied = poll(
        Duration::from_secs(10),
        Duration::from_millis(100),
        async || {
            let v: Value = app
                .http
                .get(app.url("/healthz?verbose"))
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            v["outbox"]["pending"] == 0
        },
    )
    .await;
    assert!(emptied, "the broadcast was never given up");
    // Given up, not sent: the message stays stored, its broadcast is gone.
    assert!(sends(&app).iter().all(|s| s["text"] == "doomed"));
    assert_eq!(app.history("lobby").await["messages"][0]["text"], "doomed");
}
