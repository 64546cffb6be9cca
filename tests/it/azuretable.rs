//! The real binary on Azure Table Storage (Azurite): two processes writing to one table at once
//! (every delivery sent to both, as Web PubSub's retries may land on two instances: each stored
//! once, none lost), Azurite stopped mid-run (503 with a reason, /healthz too, then recovery),
//! and the managed-identity path: Azurite over HTTPS with OAuth (`--oauth basic`) taking the
//! bearer token of a stand-in identity endpoint, and a stand-in table endpoint for what Azurite
//! does not check (the token cached, refreshed near expiry and after a 401; identity failures).
//! Also the store's own purge of expired presence entries, which only this backend needs.

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

/// Table storage has no TTL: a presence entry whose `disconnected` never came is ignored by
/// `presence` and then deleted by the bounded purge; live entries stay.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn purge_deletes_expired_presence_entries() {
    use hubhook::store::{MessageStore, Online};
    let Some(server) =
        Azurite::start_or_skip("azuretable::purge_deletes_expired_presence_entries").await
    else {
        return;
    };
    let store = crate::store::azure_store(&server, "presencepurge").await;
    let now = hubhook::store::now_ms();
    let hour = 3_600_000;
    let online = |room: &str, conn: &str, user: &str, since_ms: i64, expires_ms: i64| Online {
        room: room.into(),
        connection_id: conn.into(),
        user_id: user.into(),
        since_ms,
        expires_ms,
    };
    for o in [
        online("pp-a", "gone-1", "ann", now - 3 * hour, now - 2 * hour),
        online("pp-a", "gone-2", "amy", now - 3 * hour, now - hour),
        online("pp-b", "gone-3", "bea", now - 3 * hour, now - hour),
        online("pp-a", "live", "bob", now - 3 * hour, now + hour),
    ] {
        store.presence_online(&o).await.unwrap();
    }
    // Asked as of an earlier time, `presence` shows whether an expired entry is still stored.
    let users = |room: &'static str, at: i64| {
        let store = &store;
        async move {
            let mut u: Vec<String> = store
                .presence(room, at)
                .await
                .unwrap()
                .into_iter()
                .map(|p| p.user_id)
                .collect();
            u.sort();
            u
        }
    };
    let before = now - 3 * hour + 1;
    assert_eq!(users("pp-a", before).await, ["amy", "ann", "bob"]);
    assert_eq!(users("pp-b", before).await, ["bea"]);
    assert_eq!(users("pp-a", now).await, ["bob"]);
    let cutoff = now - 30 * 24 * hour;
    // Bounded: one entry per call at most, then the rest.
    assert_eq!(store.purge_expired(cutoff, 1).await.unwrap(), 1);
    assert_eq!(store.purge_expired(cutoff, 500).await.unwrap(), 2);
    assert_eq!(store.purge_expired(cutoff, 500).await.unwrap(), 0);
    assert_eq!(users("pp-a", before).await, ["bob"]);
    assert_eq!(users("pp-b", before).await, Vec::<String>::new());
    assert_eq!(users("pp-a", now).await, ["bob"]);
}

/// `GET /healthz`: status and body; 0 and the error when it did not answer within 20 s.
async fn healthz(http: &reqwest::Client, port: u16) -> (u16, String) {
    match http
        .get(format!("http://127.0.0.1:{port}/healthz"))
        .timeout(Duration::from_secs(20))
        .send()
        .await
    {
        Ok(r) => (r.status().as_u16(), r.text().await.unwrap_or_default()),
        Err(e) => (0, e.to_string()),
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
    // /healthz while frozen: a 503 with the store's reason, not a hang (its probe — a write and
    // an outbox read — is bounded by the store's deadline; a wait of 20 s bounds the test).
    let t = std::time::Instant::now();
    let (status, body) = healthz(&http, port).await;
    eprintln!(
        "/healthz while frozen: {status} after {:?}: {body}",
        t.elapsed()
    );
    assert_eq!(status, 503, "{body}");
    assert!(
        body.contains("azuretable") && body.contains("timed out"),
        "a reason: {body}"
    );
    azurite.freeze(false);
    // Healthy again once thawed (its answer is cached for 1 s).
    let healthy = poll(
        Duration::from_secs(15),
        Duration::from_millis(100),
        async || healthz(&http, port).await.0 == 200,
    )
    .await;
    assert!(
        healthy,
        "/healthz after the thaw: {:?}",
        healthz(&http, port).await
    );
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

const IDENTITY_HEADER: &str = "identity-header-f00dfeed";

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// An Entra-shaped access token for Azure Storage: Azurite's `--oauth basic` checks its
/// audience, issuer and lifetime, not its signature.
fn storage_token(aud: &str, lifetime_s: i64) -> String {
    use base64::Engine;
    let b64 = |v: serde_json::Value| {
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string())
    };
    let now = unix_now();
    format!(
        "{}.{}.{}",
        b64(serde_json::json!({"typ": "JWT", "alg": "RS256"})),
        b64(serde_json::json!({
            "aud": aud,
            "iss": "https://sts.windows.net/72f988bf-0000-0000-0000-000000000000/",
            "iat": now - 60, "nbf": now - 60, "exp": now + lifetime_s,
            "oid": "00000000-0000-0000-0000-00000000f00d",
        })),
        "c2lnbmF0dXJl"
    )
}

/// A stand-in for the Functions host's identity endpoint (`IDENTITY_ENDPOINT`): a token for
/// `aud` to a request with the right `X-IDENTITY-HEADER`, 400 otherwise.
async fn identity_endpoint(aud: &'static str) -> StandIn {
    StandIn::start(Script::handler(move |r| {
        if r.header("x-identity-header").as_deref() != Some(IDENTITY_HEADER) {
            return Some(reply(400).json(serde_json::json!({
                "statusCode": 400, "message": "bad identity header"
            })));
        }
        Some(reply(200).json(serde_json::json!({
            "access_token": storage_token(aud, 3600),
            "expires_on": (unix_now() + 3600).to_string(),
            "resource": "https://storage.azure.com/",
            "token_type": "Bearer",
            "client_id": "00000000-0000-0000-0000-00000000c1d0",
        })))
    }))
    .await
}

/// A test CA and a server certificate for 127.0.0.1 signed by it (`openssl`): Azurite takes
/// bearer tokens only over HTTPS. Returns (CA file, certificate, key).
fn test_certificates(dir: &std::path::Path) -> (String, String, String) {
    let p = |f: &str| dir.join(f).display().to_string();
    std::fs::write(
        dir.join("leaf.ext"),
        "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n",
    )
    .unwrap();
    let steps: [Vec<String>; 3] = [
        vec![
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-days",
            "2",
            "-subj",
            "/CN=hubhook test CA",
            "-keyout",
            &p("ca.key"),
            "-out",
            &p("ca.pem"),
        ]
        .into_iter()
        .map(String::from)
        .collect(),
        vec![
            "req",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-subj",
            "/CN=127.0.0.1",
            "-keyout",
            &p("key.pem"),
            "-out",
            &p("leaf.csr"),
        ]
        .into_iter()
        .map(String::from)
        .collect(),
        vec![
            "x509",
            "-req",
            "-in",
            &p("leaf.csr"),
            "-CA",
            &p("ca.pem"),
            "-CAkey",
            &p("ca.key"),
            "-CAcreateserial",
            "-days",
            "2",
            "-extfile",
            &p("leaf.ext"),
            "-out",
            &p("cert.pem"),
        ]
        .into_iter()
        .map(String::from)
        .collect(),
    ];
    for args in steps {
        let out = std::process::Command::new("openssl")
            .args(&args)
            .output()
            .unwrap_or_else(|e| panic!("the HTTPS Azurite test needs `openssl`: {e}"));
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    (p("ca.pem"), p("cert.pem"), p("key.pem"))
}

/// `hubhook serve` on `azuretable://mitable` with the managed identity: the account URL, the
/// identity endpoint and header as the Functions host sets them, the test CA trusted.
fn start_with_identity(
    rest: &StandIn,
    account_url: &str,
    identity: &StandIn,
    ca: &str,
    port: u16,
    stderr: Stdio,
) -> std::process::Command {
    let mut c = hubhook_command();
    c.arg("serve")
        .env("PORT", port.to_string())
        .env("HUBHOOK_BIND", "127.0.0.1")
        .env("WEBPUBSUB_CONNECTION_STRING", connection_string(rest))
        .env("HUBHOOK_STORE", "azuretable://mitable")
        .env_remove("AZURE_STORAGE_CONNECTION_STRING")
        .env("AZURE_STORAGE_ACCOUNT_URL", account_url)
        .env("IDENTITY_ENDPOINT", identity.url("/msi/token"))
        .env("IDENTITY_HEADER", IDENTITY_HEADER)
        .env("SSL_CERT_FILE", ca)
        .stdout(Stdio::null())
        .stderr(stderr);
    c
}

/// The managed-identity path end to end: Azurite over HTTPS with `--oauth basic` accepts the
/// bearer token hubhook gets from the identity endpoint (table created, messages stored and
/// read back, one token request for all of it), and refuses a token for another audience
/// (hubhook does not start; the reason names the HTTP status, never the token or the header).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn managed_identity_token_is_accepted_by_azurite_over_https() {
    let dir = tempfile::tempdir().unwrap();
    let (ca, cert, key) = test_certificates(dir.path());
    let Some(azurite) = Azurite::start_with_or_skip(
        "azuretable::managed_identity_token_is_accepted_by_azurite_over_https",
        &["--oauth", "basic", "--cert", &cert, "--key", &key],
    )
    .await
    else {
        return;
    };
    let account_url = format!("https://127.0.0.1:{}/devstoreaccount1", azurite.port);
    let rest = rest_stand_in().await;
    let http = reqwest::Client::new();

    // A token for another audience: Azurite refuses it, so creating the table fails at start.
    let wrong = identity_endpoint("https://vault.azure.net").await;
    let mut cmd = start_with_identity(
        &rest,
        &account_url,
        &wrong,
        &ca,
        free_port(),
        Stdio::piped(),
    );
    let out = tokio::task::spawn_blocking(move || cmd.output().unwrap())
        .await
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "started with a refused token: {stderr}"
    );
    assert!(
        stderr.contains("CreateTable") && stderr.contains("HTTP 403"),
        "{stderr}"
    );
    assert!(
        !stderr.contains(IDENTITY_HEADER) && !stderr.contains("eyJ"),
        "{stderr}"
    );
    assert_eq!(wrong.requests().len(), 1);

    let identity = identity_endpoint("https://storage.azure.com/").await;
    let port = free_port();
    let _app = KillOnDrop(
        start_with_identity(&rest, &account_url, &identity, &ca, port, Stdio::null())
            .spawn()
            .expect("start hubhook"),
    );
    wait_healthy(&http, port).await;
    for (i, text) in ["one", "two", "three"].into_iter().enumerate() {
        let (status, body) = send(&http, port, "conn-mi", &i.to_string(), text).await;
        assert_eq!(status, 200, "{body}");
    }
    let mut texts: Vec<String> = history(&http, port)
        .await
        .into_iter()
        .map(|(_, t)| t)
        .collect();
    texts.sort();
    assert_eq!(texts, ["one", "three", "two"]);
    let asked = identity.requests();
    assert_eq!(asked.len(), 1, "one token for the hour: {asked:?}");
    assert_eq!(asked[0].method, "GET");
    assert_eq!(asked[0].path, "/msi/token");
    assert_eq!(
        asked[0].query,
        "resource=https%3A%2F%2Fstorage.azure.com%2F&api-version=2019-08-01"
    );
}

/// What Azurite does not check, against a stand-in table endpoint: every call carries
/// `Authorization: Bearer <token>` and `x-ms-version` ≥ 2019-02-02; the token is reused until
/// five minutes before it expires, then fetched anew, and fetched anew after a 401; a failing
/// identity endpoint (error status, no token, hanging, unreachable) is a 503 with one line of
/// reason that never holds the token or `IDENTITY_HEADER`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn managed_identity_token_is_cached_refreshed_and_its_failures_are_503() {
    use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};
    use std::sync::Arc;

    use hubhook::store::azuretable::{Account, AzureTableOptions, AzureTableStore};
    use hubhook::store::MessageStore;

    const NORMAL: u8 = 0;
    const FAILING: u8 = 1;
    const REFUSING: u8 = 2;
    const NO_TOKEN: u8 = 3;
    const HANGING: u8 = 4;
    let mode = Arc::new(AtomicU8::new(NORMAL));
    let issued = Arc::new(AtomicUsize::new(0));
    let identity = {
        let (mode, issued) = (mode.clone(), issued.clone());
        StandIn::start(Script::handler(move |r| {
            let header = r.header("x-identity-header").unwrap_or_default();
            Some(match mode.load(Ordering::SeqCst) {
                // An error body that echoes what it was sent: it must not reach the reason.
                FAILING => reply(500).json(serde_json::json!({
                    "statusCode": 500,
                    "message": format!("identity service error for header {header}\nsecond line"),
                })),
                REFUSING => reply(400).json(serde_json::json!({
                    "statusCode": 400,
                    "message": "No managed identity found for this app",
                })),
                NO_TOKEN => reply(200).json(serde_json::json!({"token_type": "Bearer"})),
                HANGING => reply(200).hang(),
                _ => {
                    let n = issued.fetch_add(1, Ordering::SeqCst) + 1;
                    // The first token is already within the five-minute margin.
                    let lifetime = if n == 1 { 200 } else { 3600 };
                    reply(200).json(serde_json::json!({
                        "access_token": format!("token-{n}"),
                        "expires_on": (unix_now() + lifetime).to_string(),
                        "resource": "https://storage.azure.com/",
                        "token_type": "Bearer",
                    }))
                }
            })
        }))
        .await
    };
    let refuse_once = Arc::new(AtomicU8::new(0));
    let table = {
        let refuse_once = refuse_once.clone();
        StandIn::start(
            Script::handler(move |_| {
                (refuse_once.swap(0, Ordering::SeqCst) == 1).then(|| {
                    reply(401).json(serde_json::json!({"odata.error": {
                        "code": "InvalidAuthenticationInfo",
                        "message": {"value": "Server failed to authenticate the request."}
                    }}))
                })
            })
            .or_status(204),
        )
        .await
    };
    let store = |identity_url: String| {
        let account = Account::managed_identity(
            &table.url("/devstoreaccount1"),
            &identity_url,
            IDENTITY_HEADER,
        )
        .unwrap();
        let opts = AzureTableOptions {
            deadline: Duration::from_secs(2),
            ..Default::default()
        };
        AzureTableStore::new(account, "mitable", opts).unwrap()
    };
    let tokens = |table: &StandIn| -> Vec<String> {
        table
            .requests()
            .iter()
            .map(|r| r.header("authorization").unwrap_or_default())
            .collect()
    };

    let s = store(identity.url("/msi/token"));
    s.health().await.unwrap();
    s.health().await.unwrap();
    s.health().await.unwrap();
    s.health().await.unwrap();
    assert_eq!(
        tokens(&table),
        [
            "Bearer token-1",
            "Bearer token-2",
            "Bearer token-2",
            "Bearer token-2"
        ],
        "the first token (five minutes from expiry) used once, then a fresh one, cached"
    );
    for r in table.requests() {
        let v = r.header("x-ms-version").unwrap_or_default();
        assert!(
            v.as_str() >= "2019-02-02" && v.len() == 10,
            "x-ms-version {v}"
        );
    }
    for r in identity.requests() {
        assert_eq!(r.method, "GET");
        assert_eq!(
            r.header("x-identity-header").as_deref(),
            Some(IDENTITY_HEADER)
        );
        assert_eq!(
            r.query,
            "resource=https%3A%2F%2Fstorage.azure.com%2F&api-version=2019-08-01"
        );
    }
    // The table refuses the cached token once: fetched anew, the call succeeds.
    refuse_once.store(1, Ordering::SeqCst);
    s.health().await.unwrap();
    let seen = tokens(&table);
    assert_eq!(
        seen[seen.len() - 2..],
        ["Bearer token-2", "Bearer token-3"],
        "{seen:?}"
    );
    assert_eq!(issued.load(Ordering::SeqCst), 3);

    // Failures of the identity endpoint, each with a store that has no token yet.
    let before = table.requests().len();
    let check = |what: &str, e: hubhook::store::StoreError, expect: &str| {
        let reason = e.to_string();
        eprintln!("{what}: {reason}");
        assert_eq!(e.status(), 503, "{what}: {reason}");
        assert!(reason.contains("managed identity"), "{what}: {reason}");
        assert!(reason.contains(expect), "{what}: {reason}");
        assert!(!reason.contains('\n'), "{what}: one line: {reason}");
        assert!(
            !reason.contains(IDENTITY_HEADER) && !reason.contains("token-"),
            "{what}: {reason}"
        );
    };
    for (m, what, expect) in [
        (FAILING, "identity endpoint 500", "HTTP 500"),
        (
            REFUSING,
            "identity endpoint 400",
            "No managed identity found",
        ),
        (NO_TOKEN, "no access_token", "no access_token"),
        (HANGING, "identity endpoint hangs", "timed out"),
    ] {
        mode.store(m, Ordering::SeqCst);
        let t = std::time::Instant::now();
        let e = store(identity.url("/msi/token"))
            .health()
            .await
            .unwrap_err();
        eprintln!("{what}: after {:?}", t.elapsed());
        check(what, e, expect);
    }
    let closed = format!("http://127.0.0.1:{}/msi/token", free_port());
    check(
        "identity endpoint unreachable",
        store(closed).health().await.unwrap_err(),
        "cannot connect",
    );
    assert_eq!(
        table.requests().len(),
        before,
        "nothing is sent to the table without a token"
    );
}
