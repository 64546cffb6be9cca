//! `hubhook dev`: the local Web PubSub emulator and the chat function in one process, wired
//! together on loopback with the embedded store — the whole quickstart with no account and no
//! configuration. Prints what a client needs and one line per webhook as it flows.

use std::net::SocketAddr;
use std::sync::Arc;

use super::{listen, Application, RuntimeError};
use crate::config::{Config, ConfigError, Defaults, DevArgs, LOCAL_ACCESS_KEY};
use crate::emulator::{Emulator, EmulatorConfig, EmulatorView, HandlerSettings, WebhookLog};
use crate::service::{client_access, ClientTokenOptions, RetryPolicy, ServiceClient};
use crate::ui::{Backends, DevPage, TunnelStatus};

/// Runs until Ctrl-C (or SIGTERM): emulator on `HUBHOOK_EMULATOR_PORT` (default 8080), the
/// function on `PORT` (default 8081).
pub async fn run(args: &DevArgs) -> Result<(), RuntimeError> {
    // The emulator's listener first: its real port (HUBHOOK_EMULATOR_PORT=0 picks one) goes into
    // the function's connection string.
    let emu_bind = SocketAddr::from(([127, 0, 0, 1], args.emulator_port()?));
    let mut serve = args.serve.clone();
    serve.read_connection_string()?;
    if super::tunnel::names_another_service(&serve, emu_bind.port()) {
        return super::tunnel::dev(&serve).await;
    }
    let listener = listen("HUBHOOK_EMULATOR_PORT", emu_bind).await?;
    let emulator_port = listener.local_addr()?.port();
    let config = Config::from_args(&serve, &Defaults::dev(emulator_port))?;
    if !config.bind.is_loopback() {
        return Err(ConfigError {
            var: "HUBHOOK_BIND",
            reason: "dev uses a public access key and binds loopback only".into(),
        }
        .into());
    }
    let app = Application::build(&config).await?;
    let fn_addr = app.local_addr();
    let handler = format!("http://{fn_addr}{}", config.event_path);
    let mut emu_config = EmulatorConfig::local(
        emulator_port,
        vec![HandlerSettings::all_events(&config.hub, &handler)],
    );
    emu_config.access_key = config.connection_string.access_key.expose().to_string();
    // Its share of the connection cap (`Defaults::dev`) and the same timeouts as the function's.
    emu_config.limits = config.limits.clone();
    // On a laptop a closing tab should say "left" at once: a close frame ends the connection.
    // A dropped socket (no close frame) is still recoverable for 30 s on the reliable protocol.
    emu_config.close_frame_is_final = true;
    let page = DevPage::new(fn_addr.port(), config.connection_string.access_key.expose());
    let feed = page.feed();
    emu_config.on_webhook = Some(Arc::new(move |log: &WebhookLog| {
        println!("  {log}");
        feed.record(log, None);
    }));
    let emulator = Emulator::with_listener(listener, emu_config)?;
    let page_url = page.url();
    let app = app.merge(page.router(page_backends(&config, Some(emulator.view()), None)?));
    print_banner(&config, &page_url, emulator.local_addr(), fn_addr, &handler);
    tokio::select! {
        r = app.run() => r?,
        r = emulator.run() => r?,
    }
    Ok(())
}

/// What a client needs: the addresses, the connection string and a ready client URL.
fn print_banner(
    config: &Config,
    page_url: &str,
    emu_addr: SocketAddr,
    fn_addr: SocketAddr,
    handler: &str,
) {
    // Pointed at a real resource (its own connection string): that key is a secret, so neither
    // it, the connection string nor a token-bearing URL is printed.
    let public_key = config.connection_string.access_key.expose() == LOCAL_ACCESS_KEY;
    let shown = |secret: String| {
        if public_key {
            secret
        } else {
            "<redacted>".into()
        }
    };
    let room = &config.chat.default_room;
    let access = client_access(
        &config.connection_string,
        &config.hub,
        &ClientTokenOptions {
            user_id: Some("dev-user".into()),
            ..Default::default()
        },
    );
    if public_key {
        println!("hubhook dev — FOR LOCAL USE ONLY: the access key below is public (the same as Microsoft's emulator).");
    } else {
        println!("hubhook dev — FOR LOCAL USE ONLY: the connection string is not the emulator's, so its key and token URLs are shown as <redacted>.");
    }
    println!("  open the dev page    : {page_url}  (chat, webhook inspector, connections)");
    println!(
        "  Web PubSub emulator : http://{emu_addr}  (hub {:?}; events → {handler})",
        config.hub
    );
    println!(
        "  connection string   : {}",
        shown(config.connection_string.to_secret_string())
    );
    println!(
        "  client access URL   : {}  (user dev-user, 1 h)",
        shown(format!("{}&room={room}", access.url))
    );
    println!("  negotiate           : http://{fn_addr}/negotiate?userId=alice&room={room}");
    println!("  history             : http://{fn_addr}/api/messages?room={room}");
    println!("  store               : {:?}", config.store);
    println!("webhooks (event, connection, status, time):");
}

/// What the dev page works with. Its "send to room" goes through the service's REST API: the
/// emulator's, or the tunnelled resource's own.
pub(super) fn page_backends(
    config: &Config,
    emulator: Option<EmulatorView>,
    tunnel: Option<TunnelStatus>,
) -> Result<Backends, RuntimeError> {
    Ok(Backends {
        hub: config.hub.clone(),
        default_room: config.chat.default_room.clone(),
        service: ServiceClient::new(
            &config.connection_string,
            &config.hub,
            RetryPolicy::default(),
        )?,
        emulator,
        tunnel,
    })
}
