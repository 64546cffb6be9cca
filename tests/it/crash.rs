//! The real binary, killed with SIGKILL while webhooks are in flight, restarted on the same
//! SQLite file: every message it acknowledged must still be there.

use std::process::Stdio;
use std::time::Duration;

use crate::support::*;

fn start(rest: &StandIn, db: &std::path::Path, port: u16) -> KillOnDrop {
    KillOnDrop(
        hubhook_command()
            .arg("serve")
            .env("PORT", port.to_string())
            .env("HUBHOOK_BIND", "127.0.0.1")
            .env("WEBPUBSUB_CONNECTION_STRING", connection_string(rest))
            .env("HUBHOOK_STORE", format!("sqlite://{}", db.display()))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start hubhook"),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_messages_survive_kill_9() {
    let rest = rest_stand_in().await;
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("crash.db");
    let port = free_port();
    let http = reqwest::Client::new();
    let mut child = start(&rest, &db, port);
    wait_healthy(&http, port).await;

    // 400 senders, 32 at a time; the kill lands once 100 were acknowledged, with more in flight.
    let url = format!("http://127.0.0.1:{port}/eventhandler");
    let acks = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let gate = std::sync::Arc::new(tokio::sync::Semaphore::new(32));
    let mut tasks = Vec::new();
    for i in 0..400 {
        let (http, url, acks, gate) = (http.clone(), url.clone(), acks.clone(), gate.clone());
        tasks.push(tokio::spawn(async move {
            let _permit = gate.acquire_owned().await.ok()?;
            let c = ctx(
                &format!("conn-{}", i % 16),
                Some("alice"),
                &i.to_string(),
                Some("lobby"),
            )
            .with_event_name("message");
            let (headers, body) =
                hubhook::protocol::build_webhook(&c, &message(&format!("m{i}")), &[KEY]).unwrap();
            let r = http
                .post(url)
                .headers(headers)
                .body(body)
                .send()
                .await
                .ok()?;
            if r.status() != 200 {
                eprintln!("{} {:?}", r.status(), r.text().await);
                return None;
            }
            let v: serde_json::Value = r.json().await.ok()?;
            acks.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            v["id"].as_str().map(String::from)
        }));
    }
    while acks.load(std::sync::atomic::Ordering::SeqCst) < 100
        && !tasks.iter().all(|t| t.is_finished())
    {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    child.kill(); // SIGKILL
    let mut acked = Vec::new();
    for t in tasks {
        if let Some(id) = t.await.unwrap() {
            acked.push(id);
        }
    }

    let mut child = start(&rest, &db, port);
    wait_healthy(&http, port).await;
    let mut stored = std::collections::HashSet::new();
    let mut next: Option<String> = None;
    loop {
        let mut u = format!("http://127.0.0.1:{port}/api/messages?room=lobby&limit=200");
        if let Some(n) = &next {
            u.push_str(&format!("&before={n}"));
        }
        let page: serde_json::Value = http.get(u).send().await.unwrap().json().await.unwrap();
        for m in page["messages"].as_array().unwrap() {
            stored.insert(m["id"].as_str().unwrap().to_string());
        }
        match page["next"].as_str() {
            Some(n) => next = Some(n.to_string()),
            None => break,
        }
    }
    child.kill();
    let missing: Vec<_> = acked.iter().filter(|id| !stored.contains(*id)).collect();
    eprintln!(
        "acknowledged {} of 400 before the kill; {} stored after restart",
        acked.len(),
        stored.len()
    );
    assert!(
        !acked.is_empty(),
        "no message was acknowledged before the kill; the test proved nothing"
    );
    assert!(missing.is_empty(), "acknowledged but lost: {missing:?}");
}
