//! `hubhook tunnel` (the real binary) against the emulator's service side: hub handlers
//! `tunnel:///…` delivered through the tunnel to `hubhook`'s chat function or a stand-in.

use std::future::Future;
use std::net::SocketAddr;
use std::process::Stdio;
use std::time::Duration;

use hubhook::config::{Config, Defaults, ServeArgs};
use hubhook::emulator::{Emulator, EmulatorConfig, EmulatorHandle, HandlerSettings};
use hubhook::runtime::Application;
use hubhook::service::{client_access, ClientTokenOptions, ConnectionString};
use hubhook::tunnel::frame::{decode, Message};

use crate::support::{hubhook_command, node_or_skip, reply, KillOnDrop, Script, StandIn, KEY};

async fn bounded<F: Future<Output = ()>>(secs: u64, what: &str, body: F) {
    tokio::time::timeout(Duration::from_secs(secs), body)
        .await
        .unwrap_or_else(|_| panic!("{what}: not done within {secs} s"));
}

async fn eventually(what: &str, mut pred: impl FnMut() -> bool) {
    for _ in 0..200 {
        if pred() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{what}: not within 10 s");
}

/// An emulator whose hub `chat` is handled through the tunnel at `template`.
async fn emulator(template: &str) -> EmulatorHandle {
    let mut c = EmulatorConfig::local(0, vec![HandlerSettings::all_events("chat", template)]);
    c.access_key = KEY.into();
    c.upstream_timeout = Duration::from_secs(5);
    Emulator::start(c).await.unwrap()
}

/// The chat function in process, pointed at the emulator; its base URL.
async fn chat_function(emu: &EmulatorHandle, dir: &std::path::Path) -> SocketAddr {
    let args = ServeArgs {
        port: Some("0".into()),
        bind: Some("127.0.0.1".into()),
        connection_string: Some(emu.connection_string().to_string()),
        store: Some(format!("sqlite://{}", dir.join("hubhook.db").display())),
        allowed_origins: Some("localhost".into()),
        ..Default::default()
    };
    let config = Config::from_args(&args, &Defaults::serve()).unwrap();
    let app = Application::build(&config).await.unwrap();
    let addr = app.local_addr();
    tokio::spawn(app.run());
    addr
}

/// `hubhook tunnel --hub chat --upstream URL` with the emulator's connection string; output in
/// `log` (read it on failure).
fn tunnel(emu: &EmulatorHandle, upstream: &str, log: &std::path::Path) -> KillOnDrop {
    let out = std::fs::File::options()
        .create(true)
        .append(true)
        .open(log)
        .unwrap();
    let mut c = hubhook_command();
    c.args(["tunnel", "--hub", "chat", "--upstream", upstream])
        .env("WEBPUBSUB_CONNECTION_STRING", emu.connection_string())
        .env("HUBHOOK_TUNNEL_UPSTREAM_TIMEOUT", "1s")
        .stdout(Stdio::from(out.try_clone().unwrap()))
        .stderr(Stdio::from(out));
    KillOnDrop(c.spawn().expect("start hubhook tunnel"))
}

async fn connected(emu: &EmulatorHandle, n: usize) {
    eventually(&format!("{n} tunnel connection(s)"), || {
        emu.tunnels().connections("chat").len() == n
    })
    .await;
}

/// A plain WebSocket client on hub `chat`: the status of the handshake (101 or the refusal).
async fn client_connect(emu: &EmulatorHandle) -> u16 {
    let cs = ConnectionString::parse(emu.connection_string()).unwrap();
    let access = client_access(
        &cs,
        "chat",
        &ClientTokenOptions {
            user_id: Some("carol".into()),
            ..Default::default()
        },
    );
    match tokio_tungstenite::connect_async(access.url.as_str()).await {
        Ok((mut ws, resp)) => {
            let _ = ws.close(None).await;
            resp.status().as_u16()
        }
        Err(tokio_tungstenite::tungstenite::Error::Http(r)) => r.status().as_u16(),
        Err(e) => panic!("client connect: {e}"),
    }
}

#[test]
fn codec_reads_the_services_own_bytes() {
    let status = hex::decode("2e0000009305d9297b2254797065223a352c224d657373616765223a2261222c2254726163696e674964223a6e756c6c7dc0").unwrap();
    assert_eq!(
        decode(&status).unwrap(),
        Message::ServiceStatus {
            message: "a".into()
        }
    );
    assert!(decode(&status[..20]).is_err());
}

#[tokio::test]
async fn tunnel_endpoint_refuses_bad_tokens_before_the_upgrade() {
    let emu = emulator("tunnel:///eventhandler").await;
    let url = format!(
        "ws://{}/server/tunnel?hub=chat&access_token=nope",
        emu.local_addr
    );
    match tokio_tungstenite::connect_async(url.as_str()).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(r)) => assert_eq!(r.status(), 401),
        other => panic!("expected 401, got {other:?}"),
    }
    // Wrong key: the tunnel exits with a clear line.
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = hubhook_command();
    cmd.args(["tunnel", "--hub", "chat"])
        .env(
            "WEBPUBSUB_CONNECTION_STRING",
            format!(
                "Endpoint=http://{};AccessKey={};Version=1.0;",
                emu.local_addr,
                "x".repeat(44)
            ),
        )
        .current_dir(dir.path());
    // Off the runtime: the emulator answers on this test's (single) runtime thread.
    let out = tokio::task::spawn_blocking(move || cmd.output().unwrap())
        .await
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("HTTP 401") && stderr.contains("access key"),
        "{stderr}"
    );
    assert!(!stderr.contains("xxxxxxxx"), "{stderr}");
}

#[tokio::test]
async fn webhooks_flow_fail_cleanly_without_a_tunnel_and_survive_rebalance_and_reconnect() {
    bounded(60, "tunnel round trip", async {
        let dir = tempfile::tempdir().unwrap();
        let emu = emulator("tunnel:///eventhandler").await;
        let func = chat_function(&emu, dir.path()).await;
        // No tunnel yet: the connect webhook fails, the client is refused (500).
        assert_eq!(client_connect(&emu).await, 500);
        let log = dir.path().join("tunnel.log");
        let _t = tunnel(&emu, &format!("http://{func}"), &log);
        connected(&emu, 1).await;
        assert_eq!(client_connect(&emu).await, 101, "{}", read(&log));

        let endpoint = emu.endpoint();
        assert!(emu.tunnels().rebalance("chat", &endpoint, "instance-B"));
        connected(&emu, 2).await;
        let targets = |emu: &EmulatorHandle| {
            let mut t: Vec<_> = emu
                .tunnels()
                .connections("chat")
                .into_iter()
                .map(|c| c.target.unwrap_or_default())
                .collect();
            t.sort();
            t
        };
        assert_eq!(targets(&emu), ["", "instance-B"]);
        assert!(emu.tunnels().reconnect("chat", &endpoint, "instance-C"));
        eventually("the first connection moved to instance-C", || {
            targets(&emu) == ["instance-B", "instance-C"]
        })
        .await;
        let ids: Vec<_> = emu
            .tunnels()
            .connections("chat")
            .iter()
            .map(|c| c.tunnel_id.clone())
            .collect();
        assert!(
            ids[0].is_some() && ids[0] == ids[1],
            "one tunnel id for all: {ids:?}"
        );
        // Round-robin over both: several webhooks all answered.
        for _ in 0..4 {
            assert_eq!(client_connect(&emu).await, 101, "{}", read(&log));
        }
        let out = read(&log);
        assert!(out.contains("connected (connection"), "{out}");
        assert!(
            out.contains("another connection") && out.contains("reconnect to"),
            "{out}"
        );
        assert!(
            out.contains("POST    /eventhandler connect      -> 200"),
            "{out}"
        );
    })
    .await;
}

fn read(p: &std::path::Path) -> String {
    std::fs::read_to_string(p).unwrap_or_default()
}

#[tokio::test]
async fn upstream_prefix_query_and_a_hanging_upstream() {
    bounded(60, "prefix, query, hang", async {
        let stand_in = StandIn::start(Script::handler(|r| {
            Some(match (r.method.as_str(), r.path.as_str()) {
                ("OPTIONS", _) => reply(200).header("WebHook-Allowed-Origin", "*"),
                (_, p) if p.ends_with("/connect") => reply(200).hang(),
                _ => reply(204),
            })
        }))
        .await;
        let emu = emulator("tunnel:///eventhandler/{event}?code=secret").await;
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("tunnel.log");
        let _t = tunnel(&emu, &stand_in.url("/base?fn=1"), &log);
        connected(&emu, 1).await;
        let started = std::time::Instant::now();
        // The upstream hangs: the tunnel answers 502 after its 1 s timeout, the client is refused.
        assert_eq!(client_connect(&emu).await, 500);
        assert!(
            started.elapsed() < Duration::from_secs(4),
            "{:?}",
            started.elapsed()
        );
        let seen = stand_in.wait("connect", |r| r.method == "POST").await;
        assert_eq!(seen.path, "/base/eventhandler/connect");
        assert_eq!(seen.query, "fn=1&code=secret");
        assert!(seen.header("ce-signature").is_some());
        let validate = stand_in.wait("validate", |r| r.method == "OPTIONS").await;
        assert_eq!(validate.path, "/base/eventhandler/validate");
        eventually("the 502 line", || {
            read(&log).contains("connect      -> 502")
        })
        .await;
        let out = read(&log);
        assert!(out.contains("upstream timed out after 1s"), "{out}");
        assert!(!out.contains("secret"), "the query is not printed: {out}");
    })
    .await;
}

#[tokio::test]
async fn official_quickstart_through_emulator_tunnel_and_serve_with_a_tunnel_restart() {
    let Some(node) = node_or_skip("tunnel::official_quickstart_through_emulator_tunnel_and_serve")
    else {
        return;
    };
    node.require(&["@azure/web-pubsub-client"]);
    bounded(150, "quickstart through the tunnel", async {
        let dir = tempfile::tempdir().unwrap();
        let emu = emulator("tunnel:///eventhandler").await;
        let func = chat_function(&emu, dir.path()).await;
        let log = dir.path().join("tunnel.log");
        let mut t = tunnel(&emu, &format!("http://{func}"), &log);
        connected(&emu, 1).await;
        let env = [
            ("FN", format!("http://{func}")),
            ("PROTOCOL", "json".to_string()),
        ];
        let out = node.e2e("e2e-quickstart.mjs", &env).await;
        assert_eq!(out["userId"], "alice", "{out}");
        let history: serde_json::Value =
            reqwest::get(format!("http://{func}/api/messages?room=lobby"))
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
        assert!(
            !history.to_string().is_empty() && history.to_string().contains("alice"),
            "{history}"
        );

        // The tunnel process dies: webhooks in the gap fail cleanly (the client is refused).
        t.kill();
        connected(&emu, 0).await;
        assert_eq!(client_connect(&emu).await, 500);
        // Restarted, webhooks flow again, the quickstart included.
        let _t2 = tunnel(&emu, &format!("http://{func}"), &log);
        connected(&emu, 1).await;
        assert_eq!(client_connect(&emu).await, 101, "{}", read(&log));
        node.e2e("e2e-quickstart.mjs", &env).await;
    })
    .await;
}

/// The emulator keeps tunnels alive (reference §7.2, §7.5; interval shortened to 200 ms here):
/// a raw tunnel client that reads sees WebSocket pings and `ServiceStatus` frames and stays
/// connected; once it stops reading (so stops answering pings) it is closed after three silent
/// intervals. `hubhook tunnel` answers the pings and skips the statuses: the same connection
/// stays up across many intervals, with nothing lost or reconnected, and webhooks still flow.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn emulator_pings_tunnels_drops_silent_ones_and_hubhook_tunnel_stays_connected() {
    use futures_util::StreamExt;
    use hubhook::tunnel::{dial_url, Dial};
    use tokio_tungstenite::tungstenite::Message as WsMessage;

    bounded(60, "tunnel keepalive", async {
        let every = Duration::from_millis(200);
        let mut c = EmulatorConfig::local(
            0,
            vec![HandlerSettings::all_events(
                "chat",
                "tunnel:///eventhandler",
            )],
        );
        c.access_key = KEY.into();
        c.upstream_timeout = Duration::from_secs(5);
        c.tunnel_keepalive = every;
        let emu = Emulator::start(c).await.unwrap();

        // A raw tunnel client that reads: pings (answered by tungstenite) and statuses arrive.
        let cs = ConnectionString::parse(emu.connection_string()).unwrap();
        let dial = Dial {
            endpoint: emu.endpoint(),
            target: None,
        };
        let url = dial_url(&dial, "chat", &cs.access_key, "raw-tunnel").unwrap();
        let (mut ws, _) = tokio_tungstenite::connect_async(url.as_str())
            .await
            .unwrap();
        let (mut pings, mut statuses, mut first) = (0, 0, None);
        while pings < 6 || statuses < 2 {
            match ws.next().await {
                Some(Ok(WsMessage::Ping(_))) => pings += 1,
                Some(Ok(WsMessage::Binary(b))) => match decode(&b) {
                    Ok(Message::ConnectionConnected(c)) => first = Some(c.connection_id),
                    Ok(Message::ServiceStatus { .. }) => statuses += 1,
                    other => panic!("unexpected frame {other:?}"),
                },
                other => panic!("the raw tunnel ended: {other:?}"),
            }
        }
        let first = first.expect("ConnectionConnected first");
        assert_eq!(
            emu.tunnels()
                .connections("chat")
                .iter()
                .map(|c| c.connection_id.clone())
                .collect::<Vec<_>>(),
            [first],
            "still connected after {pings} pings"
        );
        // It stops reading, so it stops answering pings: closed after three silent intervals.
        connected(&emu, 0).await;
        drop(ws);

        // `hubhook tunnel` over many intervals: one connection throughout, webhooks flow.
        let stand_in = StandIn::start(Script::handler(|r| {
            Some(match r.method.as_str() {
                "OPTIONS" => reply(200).header("WebHook-Allowed-Origin", "*"),
                _ => reply(204),
            })
        }))
        .await;
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("tunnel.log");
        let _t = tunnel(&emu, &stand_in.url(""), &log);
        connected(&emu, 1).await;
        let id = emu.tunnels().connections("chat")[0].connection_id.clone();
        // 15 intervals: five times what a silent connection survives (a bounded wait, not a
        // timing assertion: the check is that nothing changed).
        tokio::time::sleep(every * 15).await;
        let now: Vec<_> = emu
            .tunnels()
            .connections("chat")
            .into_iter()
            .map(|c| c.connection_id)
            .collect();
        assert_eq!(now, [id], "the same connection throughout: {}", read(&log));
        assert_eq!(client_connect(&emu).await, 101, "{}", read(&log));
        let out = read(&log);
        assert!(
            !out.contains("lost") && !out.contains("reconnect") && !out.contains("malformed"),
            "{out}"
        );
        assert!(out.contains("connect      -> 204"), "{out}");
    })
    .await;
}
