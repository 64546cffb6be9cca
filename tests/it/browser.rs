//! The dev page (`src/ui`) in real headless browsers: the real `hubhook dev` binary on free
//! ports, driven by `tests/js/browser.mjs` — in Debian's Chromium (playwright-core, pinned) and
//! Debian's Firefox ESR (puppeteer-core over WebDriver BiDi, pinned) — with its own emulator, and
//! tunnelling another service (the emulator in this process standing in for a real resource).
//! Screenshots of each view land in `target/browser/`.

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use hubhook::emulator::{Emulator, EmulatorConfig, EmulatorHandle, HandlerSettings};
use hubhook::service::{client_access, ClientTokenOptions, ConnectionString};
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, BufReader};

use crate::support::{browser_or_skip, hubhook_command, Browser, NodeEnv};

const SHOTS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/target/browser");

/// `hubhook dev --emulator-port 0 --port 0` with `env`: the process and the page's URL.
async fn dev(env: &[(&str, String)], dir: &Path) -> (tokio::process::Child, String) {
    let mut command = hubhook_command();
    command
        .args(["dev", "--emulator-port", "0", "--port", "0"])
        .env(
            "HUBHOOK_STORE",
            format!("sqlite://{}", dir.join("dev.db").display()),
        )
        .env_remove("WEBPUBSUB_CONNECTION_STRING")
        .env_remove("WEBPUBSUB_HUB")
        .env_remove("PORT")
        .env_remove("HUBHOOK_EMULATOR_PORT")
        .env_remove("HUBHOOK_BIND")
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    let mut child = tokio::process::Command::from(command)
        .kill_on_drop(true)
        .spawn()
        .expect("run target/debug/hubhook");
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let url = tokio::time::timeout(Duration::from_secs(30), async {
        while let Some(line) = lines.next_line().await.unwrap() {
            if let Some((_, rest)) = line.split_once("open the dev page") {
                return rest
                    .trim_start_matches([' ', ':'])
                    .split_whitespace()
                    .next()
                    .map(String::from);
            }
        }
        None
    })
    .await
    .expect("hubhook dev printed its page's URL within 30 s")
    .expect("hubhook dev exited before printing its page's URL");
    assert!(
        url.starts_with("http://127.0.0.1:") && url.contains("/#token="),
        "{url}"
    );
    // Keep reading its lines so the pipe never fills.
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    (child, url)
}

/// Runs `browser.mjs` and checks the screenshots it saved (`prefix` + view name).
async fn browse(node: &NodeEnv, url: &str, env: &[(&str, String)], prefix: &str) -> Value {
    let mut all = vec![
        ("DEV_URL", url.to_string()),
        ("SHOTS", SHOTS.to_string()),
        ("PREFIX", prefix.to_string()),
    ];
    all.extend(env.iter().cloned());
    let result = node.e2e("browser.mjs", &all).await;
    assert_eq!(
        result["webhooks"],
        serde_json::json!(["connect", "connected", "message"]),
        "{result}"
    );
    for view in ["chat-alice", "chat-bob-phone", "inspector", "service"] {
        let png = Path::new(SHOTS).join(format!("{prefix}{view}.png"));
        let bytes = std::fs::read(&png).unwrap_or_else(|e| panic!("{}: {e}", png.display()));
        assert!(
            bytes.starts_with(b"\x89PNG"),
            "{} is not a PNG",
            png.display()
        );
    }
    result
}

#[tokio::test]
async fn two_users_chat_and_the_inspector_shows_replays_in_chromium() {
    let test = "browser::two_users_chat_and_the_inspector_shows_replays_in_chromium";
    let Some(node) = browser_or_skip(test, Browser::Chromium) else {
        return;
    };
    node.require_versions(&[("playwright-core", "1.64.1")]);
    let dir = tempfile::tempdir().unwrap();
    let (mut child, url) = dev(&[], dir.path()).await;
    let result = browse(&node, &url, &[("BROWSER", "chromium".into())], "").await;
    assert!(
        result["browser"]
            .as_str()
            .is_some_and(|b| b.starts_with("chromium")),
        "{result}"
    );
    child.kill().await.unwrap();
}

/// The same checks in Firefox: chat between two users (desktop and phone widths), the
/// inspector's connect, connected, message (200) in order, the replay's duplicate answer, the
/// refusals without the token, no console errors.
#[tokio::test]
async fn two_users_chat_and_the_inspector_shows_replays_in_firefox() {
    let test = "browser::two_users_chat_and_the_inspector_shows_replays_in_firefox";
    let Some(node) = browser_or_skip(test, Browser::Firefox) else {
        return;
    };
    node.require_versions(&[("puppeteer-core", "24.43.1")]);
    let dir = tempfile::tempdir().unwrap();
    let (mut child, url) = dev(&[], dir.path()).await;
    let result = browse(&node, &url, &[("BROWSER", "firefox".into())], "firefox-").await;
    assert!(
        result["browser"]
            .as_str()
            .is_some_and(|b| b.starts_with("firefox/")),
        "{result}"
    );
    child.kill().await.unwrap();
}

/// Polls `pred` (every 50 ms, at most 10 s): the condition is the assertion, not the time.
async fn eventually<T>(what: &str, mut pred: impl AsyncFnMut() -> Option<T>) -> T {
    for _ in 0..200 {
        if let Some(v) = pred().await {
            return v;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{what}: not within 10 s");
}

/// A plain WebSocket client of hub `chat` as `user`, straight to the service; closed at once.
async fn client_connects(emu: &EmulatorHandle, user: &str) {
    let cs = ConnectionString::parse(emu.connection_string()).unwrap();
    let access = client_access(
        &cs,
        "chat",
        &ClientTokenOptions {
            user_id: Some(user.into()),
            ..Default::default()
        },
    );
    let (mut ws, resp) = tokio_tungstenite::connect_async(access.url.as_str())
        .await
        .expect("the client connects through the tunnelled hub");
    assert_eq!(resp.status().as_u16(), 101);
    ws.close(None).await.unwrap();
}

/// `hubhook dev` with another service's connection string (here an emulator on another port
/// whose hub `chat` is handled by `tunnel:///eventhandler`, as a real resource's would be): no
/// emulator of its own, the service's webhooks tunnelled to its chat function, and the same page.
/// Through the page's own API: the live stream reports the tunnel's reconnect, the JSON feed
/// lists a client's tunnelled connect and connected (200, signature verified). Then in Chromium:
/// two users chat through the service, the inspector lists connect, connected, message (200),
/// replay answers "duplicate", the Service view shows the tunnel and its reconnect, and a
/// second reconnect while the page is open shows up live.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tunnelled_webhooks_fill_the_same_inspector_and_reconnects_show() {
    let test = "browser::tunnelled_webhooks_fill_the_same_inspector_and_reconnects_show";
    let Some(node) = browser_or_skip(test, Browser::Chromium) else {
        return;
    };
    node.require_versions(&[("playwright-core", "1.64.1")]);
    let handler = HandlerSettings::all_events("chat", "tunnel:///eventhandler");
    let mut config = EmulatorConfig::local(0, vec![handler]);
    // As a resource does: its webhooks' `WebHook-Request-Origin` is its connection string's host.
    config.origin = "127.0.0.1".into();
    let emu = Emulator::start(config).await.unwrap();
    let resource = ConnectionString::parse(emu.connection_string())
        .unwrap()
        .origin()
        .to_string();
    let dir = tempfile::tempdir().unwrap();
    let env = [(
        "WEBPUBSUB_CONNECTION_STRING",
        emu.connection_string().to_string(),
    )];
    let (mut child, url) = dev(&env, dir.path()).await;
    let (base, token) = url.split_once("/#token=").unwrap();
    eventually("the dev's tunnel is connected", async || {
        (emu.tunnels().connections("chat").len() == 1).then_some(())
    })
    .await;

    // The live stream: the service moves the tunnel's connection; the page hears the move and
    // the reconnect.
    let http = reqwest::Client::new();
    let mut live = http
        .get(format!("{base}/ui/api/webhooks/live?token={token}"))
        .send()
        .await
        .unwrap();
    assert_eq!(live.status(), 200);
    assert!(emu
        .tunnels()
        .reconnect("chat", &emu.endpoint(), "instance-B"));
    let mut seen = String::new();
    let reconnected = tokio::time::timeout(Duration::from_secs(20), async {
        while let Some(chunk) = live.chunk().await.unwrap() {
            seen.push_str(&String::from_utf8_lossy(&chunk));
            for event in seen.split("\n\n") {
                if !event.lines().any(|l| l == "event: tunnel") {
                    continue;
                }
                let Some(data) = event
                    .lines()
                    .find_map(|l| l.strip_prefix("data: "))
                    .and_then(|d| serde_json::from_str::<Value>(d).ok())
                else {
                    continue;
                };
                if data["state"] == "connected" && data["reconnects"] == 1 {
                    return Some(data);
                }
            }
        }
        None
    })
    .await
    .expect("a `tunnel` event within 20 s")
    .unwrap_or_else(|| panic!("the stream ended: {seen}"));
    let kinds: Vec<&str> = reconnected["log"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|l| l["kind"].as_str())
        .collect();
    assert!(
        kinds.ends_with(&["moved", "connecting", "connected"]),
        "{kinds:?}"
    );
    assert_eq!(reconnected["endpoint"], resource.as_str());
    assert!(
        !reconnected.to_string().contains("AccessKey"),
        "{reconnected}"
    );
    drop(live);

    // A client of the service: its connect and connected come through the tunnel into the feed.
    client_connects(&emu, "carol").await;
    let carol = eventually("carol's connect and connected in the feed", async || {
        let list: Vec<Value> = http
            .get(format!("{base}/ui/api/webhooks"))
            .header("x-hubhook-token", token)
            .send()
            .await
            .ok()?
            .json()
            .await
            .ok()?;
        let mut carol: Vec<Value> = list
            .into_iter()
            .filter(|r| r["userId"] == "carol")
            .collect();
        carol.reverse();
        (carol.len() >= 2).then_some(carol)
    })
    .await;
    let events: Vec<&str> = carol.iter().filter_map(|r| r["event"].as_str()).collect();
    assert_eq!(&events[..2], ["connect", "connected"], "{carol:?}");
    for r in &carol[..2] {
        assert_eq!(r["status"], 200, "{r}");
        assert_eq!(r["verified"], true, "the service's signature: {r}");
        assert_eq!(r["hub"], "chat", "{r}");
        let req_url = r["request"]["url"].as_str().unwrap_or_default();
        assert_eq!(req_url, format!("{base}/eventhandler"), "{r}");
    }
    let without_token = http
        .get(format!("{base}/ui/api/webhooks"))
        .send()
        .await
        .unwrap();
    assert_eq!(without_token.status(), 401);

    // The page, in Chromium; at its Service step it writes `signal` and waits for a second move
    // of the tunnel, made here, to show up live.
    let signal = dir.path().join("reconnect-now");
    let env = [
        ("BROWSER", "chromium".into()),
        ("MODE", "tunnel".into()),
        ("RESOURCE", resource.clone()),
        ("RECONNECTS", "1".into()),
        ("RECONNECT_SIGNAL", signal.display().to_string()),
    ];
    let move_again = async {
        // Bounded by the script's own watchdog: it fails (and `browse` with it) first.
        for _ in 0..1800 {
            if signal.exists() {
                assert!(emu
                    .tunnels()
                    .reconnect("chat", &emu.endpoint(), "instance-C"));
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    let (result, ()) = tokio::join!(browse(&node, &url, &env, "tunnel-"), move_again);
    assert_eq!(result["tunnel"]["reconnects"], 1, "{result}");
    assert_eq!(result["tunnel"]["liveReconnects"], 2, "{result}");
    child.kill().await.unwrap();
}
