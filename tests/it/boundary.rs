//! Input refused at the boundary, through the real listener and router: ids and times by the
//! `protocol` rules, bodies in an encoding hubhook would store undecoded.

use std::time::Duration;

use hubhook::protocol::{build_webhook, MAX_CE_ID_BYTES, MAX_USER_ID_BYTES};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::support::*;

/// Sends `request` on a fresh connection and returns the status line's code and the body.
async fn raw(app: &TestApp, request: &[u8]) -> (u16, String) {
    let mut s = tokio::net::TcpStream::connect(app.addr).await.unwrap();
    s.write_all(request).await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out)).await;
    let text = String::from_utf8_lossy(&out).to_string();
    let code = text
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {text:?}"));
    let body = text
        .split("\r\n\r\n")
        .nth(1)
        .unwrap_or_default()
        .to_string();
    (code, body)
}

/// A signed `message` webhook for room `lobby` as raw header lines (no body framing).
fn message_head(ce_id: &str) -> String {
    let (headers, _) = build_webhook(
        &ctx("conn-raw", Some("alice"), ce_id, Some("lobby")).with_event_name("message"),
        &message("x"),
        &[KEY],
    )
    .unwrap();
    let mut head =
        String::from("POST /eventhandler HTTP/1.1\r\nhost: localhost\r\nconnection: close\r\n");
    for (k, v) in &headers {
        head.push_str(&format!("{k}: {}\r\n", v.to_str().unwrap()));
    }
    head
}

#[tokio::test]
async fn encoded_bodies_are_refused_not_stored() {
    let app = spawn_app().await;
    // gzip of "hello", sent chunked.
    let gz: &[u8] = &[
        0x1f, 0x8b, 0x08, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x03, 0xcb, 0x48, 0xcd, 0xc9, 0xc9,
        0x07, 0x00, 0x86, 0xa6, 0x10, 0x36, 0x05, 0x00, 0x00, 0x00,
    ];
    let chunked = |te: &str, extra: &str| {
        let mut r = message_head("te-1").into_bytes();
        r.extend_from_slice(format!("transfer-encoding: {te}\r\n{extra}\r\n").as_bytes());
        r.extend_from_slice(format!("{:x}\r\n", gz.len()).as_bytes());
        r.extend_from_slice(gz);
        r.extend_from_slice(b"\r\n0\r\n\r\n");
        r
    };
    let (code, body) = raw(&app, &chunked("gzip, chunked", "")).await;
    assert_eq!(code, 415, "{body}");
    assert!(body.contains("Transfer-Encoding"), "{body}");
    let (code, body) = raw(&app, &chunked("chunked", "content-encoding: gzip\r\n")).await;
    assert_eq!(code, 415, "{body}");
    assert!(body.contains("Content-Encoding"), "{body}");
    assert_eq!(
        app.history("lobby").await["messages"],
        serde_json::json!([])
    );

    // Plain chunked is fine.
    let mut r = message_head("te-2").into_bytes();
    r.extend_from_slice(b"transfer-encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n");
    let (code, body) = raw(&app, &r).await;
    assert_eq!(code, 200, "{body}");
    let h = app.history("lobby").await;
    assert_eq!(h["messages"][0]["text"], "hello", "{h}");
}

#[tokio::test]
async fn ids_and_times_outside_the_rules_are_refused() {
    let app = spawn_app().await;
    let send_raw = |ce_id: String, user: String, time: &'static str| {
        let mut c = ctx("conn-ids", Some("alice"), "1", Some("lobby")).with_event_name("message");
        c.ce_id = ce_id.into();
        c.user_id = Some(user.into());
        c.ce_time = Some(time.into());
        c
    };
    // Built by hand: build_webhook itself refuses these (its own test says so).
    for (what, c) in [
        (
            "ce-id",
            send_raw(
                "i".repeat(200 * 1024),
                "alice".into(),
                "2024-05-01T10:00:00Z",
            ),
        ),
        (
            "ce-id",
            send_raw(
                "i".repeat(MAX_CE_ID_BYTES + 1),
                "alice".into(),
                "2024-05-01T10:00:00Z",
            ),
        ),
        (
            "ce-userId",
            send_raw("1".into(), "u".repeat(60 * 1024), "2024-05-01T10:00:00Z"),
        ),
        (
            "ce-userId",
            send_raw(
                "1".into(),
                "u".repeat(MAX_USER_ID_BYTES + 1),
                "2024-05-01T10:00:00Z",
            ),
        ),
        (
            "ce-time",
            send_raw("1".into(), "alice".into(), "9999-12-31T23:59:59Z"),
        ),
    ] {
        let mut ok = c.clone();
        ok.ce_id = "1".into();
        ok.user_id = Some("alice".into());
        ok.ce_time = Some("2024-05-01T10:00:00Z".into());
        let (mut headers, body) = build_webhook(&ok, &message("x"), &[KEY]).unwrap();
        headers.insert("ce-id", c.ce_id.parse().unwrap());
        headers.insert("ce-userid", c.user_id.clone().unwrap().parse().unwrap());
        headers.insert("ce-time", c.ce_time.clone().unwrap().parse().unwrap());
        let r = app
            .http
            .post(app.url("/eventhandler"))
            .headers(headers)
            .body(body)
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        let text = r.text().await.unwrap();
        assert!((400..500).contains(&status), "{what}: {status} {text}");
        if status == 400 {
            assert!(text.contains(what), "{what}: {text}");
            assert!(text.len() < 200, "{what}: the value is not echoed");
        }
    }
    assert_eq!(
        app.history("lobby").await["messages"],
        serde_json::json!([])
    );

    // A message at the latest accepted time pages with a cursor the history accepts.
    for i in 0..3 {
        let c = ctx("conn-ids", Some("alice"), &format!("t{i}"), Some("lobby"))
            .with_time(hubhook::protocol::now_rfc3339());
        assert_eq!(app.send(c, message("x"), &[KEY]).await.status(), 200);
    }
    let page = get_json(&app.http, app.url("/api/messages?room=lobby&limit=2")).await;
    let next = page["next"].as_str().expect("a next cursor");
    let r = app
        .http
        .get(app.url(&format!("/api/messages?room=lobby&limit=2&before={next}")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
}

#[tokio::test]
async fn negotiate_uses_the_user_id_rule() {
    let app = spawn_app().await; // loopback endpoint: negotiate is open
    let get = |user: String| {
        let url = app.url(&format!("/negotiate?userId={user}"));
        let http = app.http.clone();
        async move { http.get(url).send().await.unwrap().status().as_u16() }
    };
    assert_eq!(get("u".repeat(MAX_USER_ID_BYTES)).await, 200);
    assert_eq!(get("u".repeat(MAX_USER_ID_BYTES + 1)).await, 400);
    assert_eq!(get("%C3%BC".into()).await, 400);
    assert_eq!(get("a%01b".into()).await, 400);
}
