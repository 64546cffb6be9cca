//! `hubhook tunnel`, and `hubhook dev` when its connection string names a real resource: the
//! chat function on loopback and the resource's hub tunnelled to it (no emulator).

use super::{shutdown_signal, Application, RuntimeError};
use crate::config::{Config, ConfigError, Defaults, ServeArgs, TunnelArgs};
use crate::service::ConnectionString;
use crate::tunnel::{self, TunnelConfig, TunnelError};

/// Until Ctrl-C / SIGTERM, or until the service closes the tunnel.
pub async fn run(args: &TunnelArgs) -> Result<(), RuntimeError> {
    let config = args.config()?;
    run_tunnel(config).await
}

async fn run_tunnel(config: TunnelConfig) -> Result<(), RuntimeError> {
    tokio::select! {
        r = tunnel::run(config) => r?,
        _ = shutdown_signal() => println!("hubhook tunnel: stopped"),
    }
    Ok(())
}

/// True when `hubhook dev`'s connection string (already read) names a resource that is not on
/// this machine: then `dev` tunnels it instead of starting the emulator.
pub fn names_real_resource(serve: &ServeArgs) -> bool {
    serve
        .connection_string
        .as_deref()
        .and_then(|cs| ConnectionString::parse(cs).ok())
        .is_some_and(|cs| !cs.is_loopback())
}

/// `dev` with a real resource's connection string (already read into `serve`).
pub async fn dev(serve: &ServeArgs) -> Result<(), RuntimeError> {
    let config = Config::from_args(serve, &Defaults::dev(0))?;
    if !config.bind.is_loopback() {
        return Err(ConfigError {
            var: "HUBHOOK_BIND",
            reason: "dev binds loopback only".into(),
        }
        .into());
    }
    let app = Application::build(&config).await?;
    let fn_addr = app.local_addr();
    let tunnel = TunnelArgs {
        hub: Some(config.hub.clone()),
        upstream: Some(format!("http://{fn_addr}")),
        connection_string: serve.connection_string.clone(),
        ..Default::default()
    }
    .config()?;
    let room = &config.chat.default_room;
    println!(
        "hubhook dev — against {} (a real resource; no emulator started).",
        config.connection_string.origin()
    );
    println!(
        "  the hub {:?}'s event handler must be tunnel:///eventhandler (see the README)",
        config.hub
    );
    println!("  chat function : http://{fn_addr}{}", config.event_path);
    println!("  negotiate     : http://{fn_addr}/negotiate?userId=alice&room={room}");
    println!("  history       : http://{fn_addr}/api/messages?room={room}");
    println!("  store         : {:?}", config.store);
    tokio::select! {
        r = app.run() => r?,
        r = tunnel::run(tunnel) => r?,
    }
    Ok(())
}

impl From<TunnelError> for RuntimeError {
    fn from(e: TunnelError) -> Self {
        RuntimeError::Tunnel(e)
    }
}
