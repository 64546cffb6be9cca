//! The real binary on Azure Table Storage (Azurite): two processes writing to one table at once
//! (every delivery sent to both, as Web PubSub's retries may land on two instances: each stored
//! once, none lost), and Azurite stopped mid-run (503 with a reason, then recovery).

use std::process::Stdio;
use std::time::Duration;

use crate::support::*;

fn start(rest: &StandIn, azurite: &Azurite, port: u16) -> KillOnDrop {
    KillOnDrop(
        hubhook_command()
            .arg("serve")
            .env("PORT", port.to_string())
            .env("HUBHOOK_BIND", "127.0.0.1")
            .env("WEBPUBSUB_CONNECTION_STRING", connection_string(rest))
            .env("HUBHOOK_STORE", "azuretable://shared")
            .env(
                "AZURE_STORAGE_CONNECTION_STRING",
                azurite.connection_string(),
            )
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start hubhook"),
    )
}

async fn send(
    http: &reqwest::Client,
    port: u16,
    conn: &str,
    ce: &str,
    text: &str,
) -> (u16, String) {
    let c = ctx(conn, Some("alice"), ce, Some("lobby")).with_event_name("message");
    let (headers, body) = hubhook::protocol::build_webhook(&c, &message(text), &[KEY]).unwrap();
    match http
        .post(format!("http://127.0.0.1:{port}/eventhandler"))
        .headers(headers)
        .body(body)
        .timeout(Duration::from_secs(20))
        .send()
        .await
    {
        Ok(r) => (r.status().as_u16(), r.text().await.unwrap_or_default()),
        Err(e) => (0, e.to_string()),
    }
}

async fn history(http: &reqwest::Client, port: u16) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut next: Option<String> = None;
    loop {
        let mut u = format!("http://127.0.0.1:{port}/api/messages?room=lobby&limit=200");
        if let Some(n) = &next {
            u.push_str(&format!("&before={n}"));
        }
        let page: serde_json::Value = http.get(u).send().await.unwrap().json().await.unwrap();
        for m in page["messages"].as_array().unwrap() {
            out.push((
                m["id"].as_str().unwrap().to_string(),
                m["text"].as_str().unwrap().to_string(),
            ));
        }
        match page["next"].as_str() {
            Some(n) => next = Some(n.to_string()),
            None => return out,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_processes_share_one_table() {
    let Some(azurite) = Azurite::start_or_skip("azuretable::two_processes_share_one_table").await
    else {
        return;
    };
    let rest = rest_stand_in().await;
    let http = reqwest::Client::new();
    let (pa, pb) = (free_port(), free_port());
    let _a = start(&rest, &azurite, pa);
    let _b = start(&rest, &azurite, pb);
    wait_healthy(&http, pa).await;
    wait_healthy(&http, pb).await;

    let n = 60;
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..n {
        for port in [pa, pb] {
            let http = http.clone();
            tasks.spawn(async move {
                send(
                    &http,
                    port,
                    &format!("conn-{}", i % 7),
                    &i.to_string(),
                    &format!("m{i}"),
                )
                .await
            });
        }
    }
    for (status, body) in tasks.join_all().await {
        assert_eq!(status, 200, "{body}");
    }
    for port in [pa, pb] {
        let stored = history(&http, port).await;
        let mut texts: Vec<String> = stored.iter().map(|(_, t)| t.clone()).collect();
        texts.sort();
        let mut expected: Vec<String> = (0..n).map(|i| format!("m{i}")).collect();
        expected.sort();
        assert_eq!(
            texts, expected,
            "each delivery stored exactly once, none lost"
        );
    }
}

/// Azurite frozen mid-run (SIGSTOP: it accepts connections and never answers), thawed, then
/// killed: 503 with a reason within the store's deadline each time, /healthz says so, and after
/// the thaw the refused delivery's retry and new ones are stored, nothing lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn azurite_stopped_mid_run_is_503_then_recovers() {
    let Some(mut azurite) =
        Azurite::start_or_skip("azuretable::azurite_stopped_mid_run_is_503_then_recovers").await
    else {
        return;
    };
    let rest = rest_stand_in().await;
    let http = reqwest::Client::new();
    let port = free_port();
    let _app = start(&rest, &azurite, port);
    wait_healthy(&http, port).await;
    assert_eq!(send(&http, port, "conn-1", "1", "before").await.0, 200);

    azurite.freeze(true);
    let t = std::time::Instant::now();
    let (status, body) = send(&http, port, "conn-1", "2", "during").await;
    let took = t.elapsed();
    eprintln!("Azurite frozen: {status} after {took:?}: {body}");
    assert_eq!(status, 503, "{body}");
    assert!(
        body.contains("azuretable") && body.contains("timed out"),
        "a reason: {body}"
    );
    assert!(
        took < Duration::from_secs(8),
        "bounded by the store's deadline: {took:?}"
    );
    azurite.freeze(false);
    // The retry of the refused delivery (as Web PubSub sends it) and a new one.
    let (status, body) = send(&http, port, "conn-1", "2", "during").await;
    assert_eq!(status, 200, "after the thaw: {body}");
    assert_eq!(send(&http, port, "conn-1", "3", "after").await.0, 200);
    let mut texts: Vec<String> = history(&http, port)
        .await
        .into_iter()
        .map(|(_, t)| t)
        .collect();
    texts.sort();
    assert_eq!(
        texts,
        ["after", "before", "during"],
        "each stored once, none lost"
    );

    // Gone altogether: refused at once.
    azurite.stop();
    let t = std::time::Instant::now();
    let (status, body) = send(&http, port, "conn-1", "4", "refused").await;
    eprintln!("Azurite stopped: {status} after {:?}: {body}", t.elapsed());
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("connection refused"), "{body}");
    assert!(
        !body.contains("Eby8vdM02") && !body.contains("127.0.0.1"),
        "{body}"
    );
}
