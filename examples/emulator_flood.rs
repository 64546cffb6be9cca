//! Memory under a flood at a client that never reads (issue 10, item 5): an in-process emulator,
//! one WebSocket client that reads only its `connected` frame and then nothing, and
//! `FLOOD_COUNT` messages of `FLOOD_SIZE` bytes sent to its group over the REST API. Prints this
//! process's VmRSS / VmHWM (from `/proc/self/status`) before and after, and whether the stuck
//! connection still exists. Not a test: the numbers are for a human to read (Linux only).
//!
//! `cargo run --example emulator_flood`
//!
//! Env: `FLOOD_COUNT` (50000), `FLOOD_SIZE` (8192), `FLOOD_PROTOCOL` (`json.webpubsub.azure.v1`;
//! `json.reliable.webpubsub.azure.v1`, or `simple` for a plain WebSocket), `FLOOD_CONCURRENCY` (8).

use std::time::{Duration, Instant};

use futures_util::{stream, StreamExt};
use hubhook::emulator::{Emulator, EmulatorConfig};
use hubhook::protocol::EventData;
use hubhook::service::{
    client_token, unix_now, ClientTokenOptions, ConnectionString, RetryPolicy, SendOptions,
    ServiceClient,
};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// `VmRSS` and `VmHWM` in MiB.
fn memory() -> (f64, f64) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
            .map_or(f64::NAN, |kb| kb / 1024.0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

fn report(stage: &str) {
    let (rss, hwm) = memory();
    println!("{stage:<28} VmRSS {rss:8.1} MiB   VmHWM {hwm:8.1} MiB");
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let count: usize = env_or("FLOOD_COUNT", 50_000);
    let size: usize = env_or("FLOOD_SIZE", 8192);
    let concurrency: usize = env_or("FLOOD_CONCURRENCY", 8);
    let protocol: String = env_or("FLOOD_PROTOCOL", hubhook::emulator::JSON_V1.to_string());

    let emu = Emulator::start(EmulatorConfig::local(0, vec![])).await?;
    let cs = ConnectionString::parse(emu.connection_string())?;
    let opts = ClientTokenOptions {
        user_id: Some("stuck".into()),
        groups: vec!["flood".into()],
        ..Default::default()
    };
    let token = client_token(&cs, "chat", &opts, unix_now());
    let mut req = format!(
        "ws://{}/client/hubs/chat?access_token={token}",
        emu.local_addr
    )
    .into_client_request()?;
    if protocol != "simple" {
        req.headers_mut()
            .insert("sec-websocket-protocol", protocol.parse()?);
    }
    let (mut ws, _) = tokio_tungstenite::connect_async(req).await?;
    let mut id = None;
    if protocol != "simple" {
        // The `connected` frame, for the connection id; nothing is read after it.
        if let Some(Ok(m)) = ws.next().await {
            let v: serde_json::Value = serde_json::from_str(m.to_text()?)?;
            id = v["connectionId"].as_str().map(String::from);
        }
    }
    let svc = ServiceClient::new(&cs, "chat", RetryPolicy::default())?;
    tokio::time::sleep(Duration::from_millis(200)).await;

    println!("flood: {count} x {size} B to group \"flood\" ({protocol}), {concurrency} in flight");
    report("before");
    let data = EventData::Text("x".repeat(size).into());
    let send_opts = SendOptions::default();
    let started = Instant::now();
    let failures = stream::iter(0..count)
        .map(|_| svc.send_to_group("flood", &data, &send_opts))
        .buffer_unordered(concurrency)
        .filter(|r| std::future::ready(r.is_err()))
        .count()
        .await;
    println!(
        "sent in {:.1} s ({failures} REST failures)",
        started.elapsed().as_secs_f64()
    );
    report("after the flood");
    tokio::time::sleep(Duration::from_secs(3)).await;
    report("3 s later");
    if let Some(id) = id {
        println!(
            "stuck connection exists: {}",
            svc.connection_exists(&id).await?
        );
    }
    println!("stuck user connected: {}", svc.user_exists("stuck").await?);
    drop(ws);
    Ok(())
}
