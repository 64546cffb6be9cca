//! Chaos, bounded: the real binary under load where 10% of deliveries are retried (some with a
//! new `ce-time`), the REST API fails for a while, and the handler is killed with SIGKILL and
//! restarted mid-load. Afterwards, on SQLite and on DynamoDB (dynalite):
//! stored == unique deliveries, every stored message broadcast (once the sweeper ran),
//! every acknowledged message stored. The figures are printed.

use std::collections::{BTreeSet, HashMap};
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::support::*;
use serde_json::Value;

/// Deliveries in one run, and senders at once.
const DELIVERIES: usize = 400;
const SENDERS: usize = 16;

struct Rest {
    stand_in: StandIn,
    failing: Arc<AtomicBool>,
    /// Message ids the REST API accepted (2xx), with how often.
    sent: Arc<Mutex<HashMap<String, usize>>>,
}

async fn rest() -> Rest {
    let failing = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(Mutex::new(HashMap::<String, usize>::new()));
    let (f, s) = (failing.clone(), sent.clone());
    let stand_in = StandIn::start(Script::handler(move |r| {
        if f.load(Ordering::SeqCst) {
            return Some(reply(403));
        }
        let v = r.json_or_null();
        if v["type"] == "message" {
            let id = v["id"].as_str().unwrap_or_default().to_string();
            *s.lock().unwrap().entry(id).or_default() += 1;
        }
        Some(reply(202))
    }))
    .await;
    Rest {
        stand_in,
        failing,
        sent,
    }
}

fn start(rest: &Rest, port: u16, store: &[(&str, String)]) -> KillOnDrop {
    let mut c = hubhook_command();
    c.arg("serve")
        .env("PORT", port.to_string())
        .env("HUBHOOK_BIND", "127.0.0.1")
        .env(
            "WEBPUBSUB_CONNECTION_STRING",
            connection_string(&rest.stand_in),
        )
        .env("HUBHOOK_OUTBOX_GRACE", "300ms")
        .env("HUBHOOK_OUTBOX_SWEEP_EVERY", "100ms")
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    for (k, v) in store {
        c.env(k, v);
    }
    KillOnDrop(c.spawn().expect("start hubhook"))
}

/// Sends delivery `i` as the service would: until it is acknowledged (a bounded number of
/// tries), then, for one in ten, once more as a retry — every other of those with a new ce-time.
async fn deliver(http: &reqwest::Client, url: &str, i: usize) -> (Option<String>, usize) {
    let time = |retry: bool| {
        if retry && i % 20 == 0 {
            "2024-05-01T10:00:07Z"
        } else {
            "2024-05-01T10:00:00Z"
        }
    };
    let send = |retry: bool| {
        let c = ctx(
            &format!("conn-{}", i % 8),
            Some("alice"),
            &format!("ce-{i}"),
            Some("lobby"),
        )
        .with_event_name("message")
        .with_time(time(retry));
        let (headers, body) =
            hubhook::protocol::build_webhook(&c, &message(&format!("m{i}")), &[KEY]).unwrap();
        http.post(url).headers(headers).body(body).send()
    };
    let mut tries = 0;
    let mut acked = None;
    while acked.is_none() && tries < 200 {
        tries += 1;
        if let Ok(r) = send(false).await {
            if r.status() == 200 {
                let v: Value = r.json().await.unwrap_or_default();
                acked = v["id"].as_str().map(String::from);
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut retries = 0;
    if acked.is_some() && i % 10 == 0 {
        retries += 1;
        let _ = send(true).await;
    }
    (acked, retries)
}

async fn chaos(
    name: &str,
    store: Vec<(&'static str, String)>,
    stored_ids: impl AsyncFn() -> Vec<String>,
) {
    let rest = rest().await;
    let port = free_port();
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let mut child = start(&rest, port, &store);
    wait_healthy(&http, port).await;
    let url = format!("http://127.0.0.1:{port}/eventhandler");
    let started = Instant::now();

    let done = Arc::new(AtomicUsize::new(0));
    let gate = Arc::new(tokio::sync::Semaphore::new(SENDERS));
    let mut tasks = Vec::new();
    for i in 0..DELIVERIES {
        let (http, url, done, gate) = (http.clone(), url.clone(), done.clone(), gate.clone());
        tasks.push(tokio::spawn(async move {
            let _permit = gate.acquire_owned().await.unwrap();
            let r = deliver(&http, &url, i).await;
            done.fetch_add(1, Ordering::SeqCst);
            r
        }));
    }
    let reached = |n: usize| {
        let done = done.clone();
        async move {
            while done.load(Ordering::SeqCst) < n {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
    };
    // A REST outage from a quarter of the load to just past its middle, and the kill inside it.
    reached(DELIVERIES / 4).await;
    rest.failing.store(true, Ordering::SeqCst);
    reached(DELIVERIES / 2).await;
    child.kill();
    let killed_at = done.load(Ordering::SeqCst);
    child = start(&rest, port, &store);
    reached(DELIVERIES * 5 / 8).await;
    rest.failing.store(false, Ordering::SeqCst);

    let mut acked = BTreeSet::new();
    let mut retries = 0;
    let mut unacked = 0;
    for t in tasks {
        let (id, r) = t.await.unwrap();
        retries += r;
        match id {
            Some(id) => {
                acked.insert(id);
            }
            None => unacked += 1,
        }
    }
    // The sweeper sends what the outage and the kill left.
    let drained = poll(
        Duration::from_secs(60),
        Duration::from_millis(200),
        async || {
            let v: Value = match http
                .get(format!("http://127.0.0.1:{port}/healthz?verbose"))
                .send()
                .await
            {
                Ok(r) => r.json().await.unwrap_or_default(),
                Err(_) => return false,
            };
            v["outbox"]["pending"] == 0
        },
    )
    .await;
    let stored: Vec<String> = stored_ids().await;
    let stored_set: BTreeSet<String> = stored.iter().cloned().collect();
    let sent = rest.sent.lock().unwrap().clone();
    let broadcast: BTreeSet<String> = sent.keys().cloned().collect();
    let extra_sends: usize = sent.values().map(|n| n - 1).sum();
    eprintln!(
        "chaos on {name}: {DELIVERIES} deliveries, {retries} retries ({} with a new ce-time), \
         killed after {killed_at} done; acked {}, unacked {unacked}, stored {} ({} unique), \
         broadcast {} ids ({extra_sends} repeated sends), outbox drained: {drained}, {:.1} s",
        retries / 2,
        acked.len(),
        stored.len(),
        stored_set.len(),
        broadcast.len(),
        started.elapsed().as_secs_f64()
    );
    drop(child);
    assert!(drained, "the outbox was not drained");
    assert_eq!(unacked, 0, "every delivery is acknowledged in the end");
    assert_eq!(stored.len(), stored_set.len(), "no message stored twice");
    assert_eq!(stored_set.len(), DELIVERIES, "stored == unique deliveries");
    assert!(acked.is_subset(&stored_set), "acked ⊆ stored");
    assert_eq!(broadcast, stored_set, "broadcast == stored");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chaos_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("chaos.db");
    let store = vec![("HUBHOOK_STORE", format!("sqlite://{}", db.display()))];
    chaos("sqlite", store, async || {
        let c = rusqlite::Connection::open(&db).unwrap();
        let mut s = c.prepare("SELECT id FROM messages").unwrap();
        s.query_map([], |r| r.get(0))
            .unwrap()
            .collect::<Result<Vec<String>, _>>()
            .unwrap()
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chaos_on_dynamodb() {
    let Some(dynamo) = Dynalite::start_or_skip("chaos::chaos_on_dynamodb").await else {
        return;
    };
    let store = vec![
        ("HUBHOOK_STORE", "dynamodb://chaos".to_string()),
        ("AWS_ENDPOINT_URL_DYNAMODB", dynamo.endpoint.clone()),
        ("AWS_REGION", "us-east-1".into()),
        ("AWS_ACCESS_KEY_ID", "AKIDFAKE".into()),
        ("AWS_SECRET_ACCESS_KEY", "fakesecret".into()),
    ];
    let client = crate::store::local_client(&dynamo.endpoint);
    chaos("dynamodb (dynalite)", store, async || {
        let mut ids = Vec::new();
        let mut start = None;
        loop {
            let out = client
                .query()
                .table_name("chaos")
                .consistent_read(true)
                .key_condition_expression("pk = :pk")
                .expression_attribute_values(
                    ":pk",
                    aws_sdk_dynamodb::types::AttributeValue::S("room#lobby".into()),
                )
                .set_exclusive_start_key(start.take())
                .send()
                .await
                .expect("query the messages");
            ids.extend(
                out.items()
                    .iter()
                    .filter_map(|i| i.get("sk")?.as_s().ok().cloned()),
            );
            match out.last_evaluated_key() {
                Some(k) => start = Some(k.clone()),
                None => break,
            }
        }
        ids
    })
    .await;
}
