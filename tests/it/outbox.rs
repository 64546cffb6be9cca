//! The outbox end to end: a broadcast that failed is sent by the webhook's retry or by the
//! sweeper, a notice's 502 means a retry works (both on SQLite and on DynamoDB through dynalite),
//! a broadcast unsent too long is given up with an error in the log, and `/healthz` tells a
//! store that cannot write and an outbox that is behind, probing the store at most once a second.

use std::any::Any;
use std::io::{BufRead, BufReader};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::support::*;
use hubhook::protocol::{Event, EventContext};
use serde_json::Value;

fn sends(rest: &StandIn) -> Vec<Value> {
    rest.matching(|r| r.path.ends_with("/:send"))
        .iter()
        .map(|r| r.json())
        .collect()
}

/// Where a served hubhook keeps its messages: its environment, and what must outlive it (the
/// database's folder, or the dynalite server).
struct Backend {
    env: Vec<(&'static str, String)>,
    _keep: Box<dyn Any + Send>,
}

fn sqlite() -> Backend {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("hubhook.db");
    Backend {
        env: vec![("HUBHOOK_STORE", format!("sqlite://{}", db.display()))],
        _keep: Box::new(dir),
    }
}

/// A dynalite server of this test's own (its table created by hubhook, as for any local
/// endpoint); `None` when skipped for want of Node.js.
async fn dynalite(test: &str) -> Option<Backend> {
    let server = Dynalite::start_or_skip(test).await?;
    Some(Backend {
        env: vec![
            ("HUBHOOK_STORE", "dynamodb://outbox".to_string()),
            ("AWS_ENDPOINT_URL_DYNAMODB", server.endpoint.clone()),
            ("AWS_REGION", "us-east-1".into()),
            ("AWS_ACCESS_KEY_ID", "AKIDFAKE".into()),
            ("AWS_SECRET_ACCESS_KEY", "fakesecret".into()),
        ],
        _keep: Box::new(server),
    })
}

/// `hubhook serve`, the real binary, on a free port, with a REST stand-in (202 until told
/// otherwise) and its log (JSON lines) collected.
struct Served {
    port: u16,
    rest: StandIn,
    http: reqwest::Client,
    log: Arc<Mutex<Vec<String>>>,
    _child: KillOnDrop,
    _backend: Backend,
}

impl Served {
    async fn start(backend: Backend, env: &[(&str, &str)]) -> Served {
        let rest = rest_stand_in().await;
        let port = free_port();
        let mut c = hubhook_command();
        c.arg("serve")
            .env("PORT", port.to_string())
            .env("HUBHOOK_BIND", "127.0.0.1")
            .env("WEBPUBSUB_CONNECTION_STRING", connection_string(&rest))
            .env("HUBHOOK_LOG_FORMAT", "json")
            .env("RUST_LOG", "info")
            .envs(backend.env.iter().map(|(k, v)| (*k, v.as_str())))
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut child = KillOnDrop(c.spawn().expect("start hubhook"));
        let stderr = child.0.stderr.take().unwrap();
        let log = Arc::new(Mutex::new(Vec::new()));
        let lines = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                lines.lock().unwrap().push(line);
            }
        });
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(20))
            .build()
            .unwrap();
        wait_healthy(&http, port).await;
        Served {
            port,
            rest,
            http,
            log,
            _child: child,
            _backend: backend,
        }
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    /// Sends `event` as the service would (its event name set from it), signed with [`KEY`].
    async fn send(&self, ctx: EventContext, event: Event) -> reqwest::Response {
        let name = match &event {
            Event::User(u) => u.name.clone(),
            other => other.kind().into(),
        };
        let (headers, body) =
            hubhook::protocol::build_webhook(&ctx.with_event_name(name), &event, &[KEY]).unwrap();
        self.http
            .post(self.url("/eventhandler"))
            .headers(headers)
            .body(body)
            .send()
            .await
            .unwrap()
    }

    async fn history(&self, room: &str) -> Value {
        get_json(&self.http, self.url(&format!("/api/messages?room={room}"))).await
    }

    async fn pending(&self) -> Value {
        get_json(&self.http, self.url("/healthz?verbose")).await["outbox"]["pending"].clone()
    }

    /// The log lines so far, as JSON (a line that is not JSON as a string).
    fn log(&self) -> Vec<Value> {
        self.log
            .lock()
            .unwrap()
            .iter()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|_| Value::String(l.clone())))
            .collect()
    }
}

async fn a_retry_sends_the_broadcast_a_failure_left_behind(app: &Served) {
    let send = || {
        app.send(
            ctx("c1", Some("alice"), "1", Some("lobby")),
            message("kept"),
        )
    };
    app.rest.set_status(403);
    let first: Value = send().await.json().await.unwrap();
    assert_eq!(
        (first["stored"].as_bool(), first["broadcast"].as_bool()),
        (Some(true), Some(false))
    );
    assert!(
        first["error"].as_str().unwrap().contains("queued"),
        "{first}"
    );

    app.rest.set_status(202);
    let retry: Value = send().await.json().await.unwrap();
    assert_eq!(retry["duplicate"], true, "{retry}");
    assert_eq!(retry["broadcast"], true, "{retry}");
    assert_eq!(retry["id"], first["id"]);
    let sent = sends(&app.rest);
    assert_eq!(sent.len(), 2, "one failed attempt, one success");
    assert_eq!(sent[1]["id"], first["id"]);
    assert_eq!(sent[1]["text"], "kept");

    // Sent once: a third delivery is a plain duplicate and sends nothing.
    let third: Value = send().await.json().await.unwrap();
    assert_eq!(
        (third["duplicate"].as_bool(), third.get("broadcast")),
        (Some(true), None)
    );
    assert_eq!(sends(&app.rest).len(), 2);
    let history = app.history("lobby").await;
    assert_eq!(history["messages"].as_array().map(Vec::len), Some(1));
}

#[tokio::test]
async fn a_retry_sends_the_broadcast_a_failure_left_behind_on_sqlite() {
    a_retry_sends_the_broadcast_a_failure_left_behind(&Served::start(sqlite(), &[]).await).await;
}

#[tokio::test]
async fn a_retry_sends_the_broadcast_a_failure_left_behind_on_dynamodb() {
    let test = "outbox::a_retry_sends_the_broadcast_a_failure_left_behind_on_dynamodb";
    let Some(backend) = dynalite(test).await else {
        return;
    };
    a_retry_sends_the_broadcast_a_failure_left_behind(&Served::start(backend, &[]).await).await;
}

async fn a_notice_that_answered_502_is_sent_by_the_retry(app: &Served) {
    app.rest.set_status(403);
    let joined = || ctx("c9", Some("bob"), "7", Some("lobby"));
    let r = app.send(joined(), Event::Connected).await;
    assert_eq!(r.status(), 502);
    assert!(r
        .text()
        .await
        .unwrap()
        .starts_with("connected notice not delivered"));

    app.rest.set_status(202);
    let r = app.send(joined(), Event::Connected).await;
    assert_eq!(r.status(), 200);
    let sent = sends(&app.rest);
    assert_eq!(sent.len(), 2);
    assert_eq!(sent[1]["type"], "joined");
    assert_eq!(
        sent[1]["id"], sent[0]["id"],
        "the same notice, not a new one"
    );

    let r = app.send(joined(), Event::Connected).await;
    assert_eq!(r.status(), 200);
    assert_eq!(sends(&app.rest).len(), 2, "sent once");
}

#[tokio::test]
async fn a_notice_that_answered_502_is_sent_by_the_retry_on_sqlite() {
    a_notice_that_answered_502_is_sent_by_the_retry(&Served::start(sqlite(), &[]).await).await;
}

#[tokio::test]
async fn a_notice_that_answered_502_is_sent_by_the_retry_on_dynamodb() {
    let test = "outbox::a_notice_that_answered_502_is_sent_by_the_retry_on_dynamodb";
    let Some(backend) = dynalite(test).await else {
        return;
    };
    a_notice_that_answered_502_is_sent_by_the_retry(&Served::start(backend, &[]).await).await;
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
        async || sends(&app.rest).len() >= 2,
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
            sends(&app.rest)
                .last()
                .is_some_and(|s| s["id"] == reply["id"])
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
    let text_sent: Vec<Value> = sends(&app.rest);
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

/// Given up, not sent, and said so: with the REST API refusing, the broadcast outlives
/// `HUBHOOK_OUTBOX_GIVE_UP` (500 ms; the webhook's failure put its next attempt 1 s out), the
/// sweeper drops it with an ERROR line naming it, and sends it no more once the API is back.
#[tokio::test]
async fn the_sweeper_gives_up_after_the_configured_age() {
    let app = Served::start(
        sqlite(),
        &[
            ("HUBHOOK_OUTBOX_GRACE", "100ms"),
            ("HUBHOOK_OUTBOX_SWEEP_EVERY", "100ms"),
            ("HUBHOOK_OUTBOX_GIVE_UP", "500ms"),
        ],
    )
    .await;
    app.rest.set_status(403);
    let r = app
        .send(
            ctx("c1", Some("alice"), "1", Some("lobby")),
            message("doomed"),
        )
        .await;
    assert_eq!(r.status(), 200);
    let reply: Value = r.json().await.unwrap();
    assert_eq!(reply["broadcast"], false, "{reply}");
    let id = reply["id"].as_str().expect("the message id").to_string();

    let emptied = poll(
        Duration::from_secs(10),
        Duration::from_millis(100),
        async || app.pending().await == 0,
    )
    .await;
    assert!(emptied, "the broadcast was never given up");
    // The line was written before the broadcast left the outbox; the pipe may still hold it.
    let give_up_line = || {
        app.log().into_iter().find(|l| {
            l["message"]
                .as_str()
                .is_some_and(|m| m.contains("giving up on a broadcast"))
        })
    };
    let logged = poll(
        Duration::from_secs(5),
        Duration::from_millis(50),
        async || give_up_line().is_some(),
    )
    .await;
    assert!(logged, "no give-up line in {:#?}", app.log());
    let given_up = give_up_line().unwrap();
    assert_eq!(given_up["level"], "ERROR", "{given_up}");
    assert_eq!(given_up["id"], id.as_str(), "{given_up}");

    // Only the webhook's own attempt went out: the sweeper's first look at it came after the
    // give-up age. With the API back, a broadcast still held anywhere would be sent within its
    // back-off (at most 2 s after one more failure) and a few sweeps: nothing comes.
    let attempts = sends(&app.rest);
    assert_eq!(attempts.len(), 1, "{attempts:?}");
    assert_eq!(attempts[0]["id"], id.as_str());
    app.rest.set_status(202);
    let after = Instant::now() + Duration::from_secs(3);
    while Instant::now() < after {
        assert_eq!(app.pending().await, 0);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(sends(&app.rest).len(), 1, "sent after it was given up");

    // The message itself stays stored.
    assert_eq!(app.history("lobby").await["messages"][0]["text"], "doomed");
}

/// `/healthz` probes the store (a one-row write) at most once a second, however often it is
/// asked: every probe is counted by a trigger on that row, and a burst of calls makes at most
/// one probe per second it took (plus the first); once a second passed, the next call probes.
#[tokio::test]
async fn health_probes_the_store_at_most_once_a_second() {
    let app = spawn_app().await;
    let db = rusqlite::Connection::open(&app.db).unwrap();
    db.execute_batch(
        "CREATE TABLE probes (at_ms INTEGER NOT NULL);
         CREATE TRIGGER probed_insert AFTER INSERT ON health_probe
             BEGIN INSERT INTO probes VALUES (new.at_ms); END;
         CREATE TRIGGER probed_update AFTER UPDATE ON health_probe
             BEGIN INSERT INTO probes VALUES (new.at_ms); END;",
    )
    .unwrap();
    let probes = || -> i64 {
        db.query_row("SELECT count(*) FROM probes", [], |r| r.get(0))
            .unwrap()
    };
    let healthz = async || {
        let r = app.http.get(app.url("/healthz")).send().await.unwrap();
        assert_eq!(r.status(), 200);
    };

    let started = Instant::now();
    for _ in 0..20 {
        healthz().await;
    }
    let elapsed = started.elapsed();
    let burst = probes();
    assert!(burst >= 1, "the first call probes the store");
    let most = elapsed.as_secs() as i64 + 1;
    assert!(
        burst <= most,
        "{burst} probes for 20 calls in {elapsed:?}: at most {most} with a 1 s cache"
    );

    // Past the second, the cached answer is stale: the next call probes again.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    healthz().await;
    assert_eq!(probes(), burst + 1);
}
