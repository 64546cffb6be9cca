//! `hubhook tunnel`, and `hubhook dev` when its connection string names a real resource: the
//! chat function on loopback and the resource's hub tunnelled to it (no emulator).

use super::{shutdown_signal, Application, RuntimeError};
use crate::config::{Config, ConfigError, Defaults, ServeArgs, TunnelArgs};
use crate::service::ConnectionString;
use crate::tunnel::{self, TunnelConfig, TunnelError};
use crate::ui::{DevPage, TunnelStatus};

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

/// True when `hubhook dev`'s connection string (already read) names a service other than the
/// emulator `dev` would start on `emulator_port`: a resource not on this machine, or a service on
/// another loopback port (an emulator already running, standing in for a resource). Then `dev`
/// tunnels that service's hub instead of starting its own emulator.
pub fn names_another_service(serve: &ServeArgs, emulator_port: u16) -> bool {
    serve
        .connection_string
        .as_deref()
        .and_then(|cs| ConnectionString::parse(cs).ok())
        .is_some_and(|cs| {
            let port = url::Url::parse(cs.origin())
                .ok()
                .and_then(|u| u.port_or_known_default());
            !cs.is_loopback() || port != Some(emulator_port)
        })
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
    let upstream = format!("http://{fn_addr}");
    let tunnel = TunnelArgs {
        hub: Some(config.hub.clone()),
        upstream: Some(upstream.clone()),
        connection_string: serve.connection_string.clone(),
        ..Default::default()
    }
    .config()?;
    // The same page as with the emulator: its inspector lists the tunnelled webhooks (signatures
    // checked, replays re-signed, with the resource's key), its Service view the tunnel.
    let endpoint = config.connection_string.origin().to_string();
    let page = DevPage::new(fn_addr.port(), config.connection_string.access_key.expose());
    let status = TunnelStatus::new(&endpoint, &config.hub, &upstream);
    let observer = status.observer(page.feed());
    let page_url = page.url();
    let app = app.merge(page.router(super::dev::page_backends(&config, None, Some(status))?));
    let room = &config.chat.default_room;
    let what = if config.connection_string.is_loopback() {
        "a service on this machine, not dev's own emulator"
    } else {
        "a real resource"
    };
    println!("hubhook dev — against {endpoint} ({what}; no emulator started).");
    println!("  open the dev page : {page_url}  (chat, webhook inspector, tunnel)");
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
        r = tunnel::run_observed(tunnel, observer) => r?,
    }
    Ok(())
}

impl From<TunnelError> for RuntimeError {
    fn from(e: TunnelError) -> Self {
        RuntimeError::Tunnel(e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn serve(cs: &str) -> ServeArgs {
        ServeArgs {
            connection_string: Some(cs.into()),
            ..Default::default()
        }
    }

    #[test]
    fn dev_tunnels_any_service_but_its_own_emulator() {
        let key = crate::config::LOCAL_ACCESS_KEY;
        let local = |port: u16| {
            serve(&format!(
                "Endpoint=http://localhost;Port={port};AccessKey={key};Version=1.0;"
            ))
        };
        // dev's own emulator (the default port): no tunnel.
        assert!(!names_another_service(&local(8080), 8080));
        assert!(!names_another_service(&ServeArgs::default(), 8080));
        // Another local service (an emulator already running), or any port with a free pick.
        assert!(names_another_service(&local(9000), 8080));
        assert!(names_another_service(&local(8080), 0));
        let real = serve(&format!(
            "Endpoint=https://contoso.webpubsub.azure.com;AccessKey={key};Version=1.0;"
        ));
        assert!(names_another_service(&real, 8080));
        assert!(names_another_service(&real, 443));
    }
}
