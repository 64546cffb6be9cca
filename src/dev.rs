//! `hubhook dev`: the local Web PubSub emulator and the chat function in one process, wired
//! together on loopback with the embedded store — the whole quickstart with no account and no
//! configuration. Prints what a client needs and one line per webhook as it flows.

use std::sync::Arc;

use crate::config::{Config, Defaults, ServeArgs};
use crate::emulator::{Emulator, EmulatorConfig, HandlerSettings, WebhookLog};
use crate::runtime::Application;
use crate::service::{client_access, ClientTokenOptions};

/// Runs until Ctrl-C (or SIGTERM): emulator on `emulator_port` (`HUBHOOK_EMULATOR_PORT`,
/// default 8080), the function on `PORT` (default 8081).
pub async fn run_dev(emulator_port: u16, args: &ServeArgs) -> anyhow::Result<()> {
    // The emulator's listener first: its real port (HUBHOOK_EMULATOR_PORT=0 picks one) goes into
    // the function's connection string.
    let emu_bind = std::net::SocketAddr::from(([127, 0, 0, 1], emulator_port));
    let listener = tokio::net::TcpListener::bind(emu_bind)
        .await
        .map_err(|e| anyhow::anyhow!("HUBHOOK_EMULATOR_PORT: cannot listen on {emu_bind}: {e}"))?;
    let emulator_port = listener.local_addr()?.port();
    let config = Config::from_args(args, &Defaults::dev(emulator_port))?;
    if !config.bind.is_loopback() {
        anyhow::bail!("HUBHOOK_BIND: dev uses a public access key and binds loopback only");
    }
    let app = Application::build(&config).await?;
    let fn_addr = app.local_addr();
    let handler = format!("http://{fn_addr}{}", config.event_path);
    let mut emu_config = EmulatorConfig::local(
        emulator_port,
        vec![HandlerSettings::all_events(&config.hub, &handler)],
    );
    emu_config.access_key = config.connection_string.access_key.expose().to_string();
    // On a laptop a closing tab should say "left" at once: a close frame ends the connection.
    // A dropped socket (no close frame) is still recoverable for 30 s on the reliable protocol.
    emu_config.close_frame_is_final = true;
    emu_config.on_webhook = Some(Arc::new(|log: &WebhookLog| println!("  {log}")));
    let emulator = Emulator::with_listener(listener, emu_config)?;
    let emu_addr = emulator.local_addr();

    let room = "lobby";
    let access = client_access(
        &config.connection_string,
        &config.hub,
        &ClientTokenOptions {
            user_id: Some("dev-user".into()),
            ..Default::default()
        },
    );
    println!("hubhook dev — FOR LOCAL USE ONLY: the access key below is public (the same as Microsoft's emulator).");
    println!(
        "  Web PubSub emulator : http://{emu_addr}  (hub {:?}; events → {handler})",
        config.hub
    );
    println!(
        "  connection string   : Endpoint=http://localhost;Port={};AccessKey={};Version=1.0;",
        emu_addr.port(),
        config.connection_string.access_key.expose()
    );
    println!(
        "  client access URL   : {}&room={room}  (user dev-user, 1 h)",
        access.url
    );
    println!("  negotiate           : http://{fn_addr}/negotiate?userId=alice&room={room}");
    println!("  history             : http://{fn_addr}/api/messages?room={room}");
    println!("  store               : {:?}", config.store);
    println!("webhooks (event, connection, status, time):");
    tokio::select! {
        r = app.run() => r?,
        r = emulator.run() => r?,
    }
    Ok(())
}
