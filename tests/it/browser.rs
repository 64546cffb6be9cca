//! The dev page (`src/ui`) in real headless Chromium: the real `hubhook dev` binary on free
//! ports, driven by `tests/js/browser.mjs` (playwright-core, pinned; Debian's chromium).
//! Screenshots of each view land in `target/browser/`.

use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader};

use crate::support::{browser_or_skip, hubhook_command};

#[tokio::test]
async fn two_users_chat_and_the_inspector_shows_replays_in_chromium() {
    let Some(node) = browser_or_skip("browser::two_users_chat_and_the_inspector_shows_replays")
    else {
        return;
    };
    node.require_versions(&[("playwright-core", "1.64.1")]);
    let dir = tempfile::tempdir().unwrap();
    let mut command = hubhook_command();
    command
        .args(["dev", "--emulator-port", "0", "--port", "0"])
        .env(
            "HUBHOOK_STORE",
            format!("sqlite://{}", dir.path().join("dev.db").display()),
        )
        .env_remove("WEBPUBSUB_CONNECTION_STRING")
        .env_remove("WEBPUBSUB_HUB")
        .env_remove("PORT")
        .env_remove("HUBHOOK_EMULATOR_PORT")
        .env_remove("HUBHOOK_BIND")
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
    // Keep reading its webhook lines so the pipe never fills.
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });

    let shots = concat!(env!("CARGO_MANIFEST_DIR"), "/target/browser");
    let result = node
        .e2e(
            "browser.mjs",
            &[("DEV_URL", url), ("SHOTS", shots.to_string())],
        )
        .await;
    assert_eq!(
        result["webhooks"],
        serde_json::json!(["connect", "connected", "message"])
    );
    for view in ["chat-alice", "chat-bob-phone", "inspector", "service"] {
        let png = std::path::Path::new(shots).join(format!("{view}.png"));
        let bytes = std::fs::read(&png).unwrap_or_else(|e| panic!("{}: {e}", png.display()));
        assert!(
            bytes.starts_with(b"\x89PNG"),
            "{} is not a PNG",
            png.display()
        );
    }
    child.kill().await.unwrap();
}
