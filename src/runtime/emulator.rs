//! `hubhook emulator`: the local Web PubSub service alone.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use super::RuntimeError;
use crate::config::{ConfigError, EmulatorArgs};
use crate::emulator::{Emulator, EmulatorConfig, HandlerSettings, WebhookLog};

pub async fn run(args: &EmulatorArgs) -> Result<(), RuntimeError> {
    let bind: IpAddr = args.bind.parse().map_err(|_| ConfigError {
        var: "HUBHOOK_EMULATOR_BIND",
        reason: format!("{:?} is not an IP address", args.bind),
    })?;
    let handlers = args
        .event_handler
        .iter()
        .map(|h| HandlerSettings::parse(h))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| ConfigError {
            var: "HUBHOOK_EVENT_HANDLER",
            reason: e.to_string(),
        })?;
    let mut config = EmulatorConfig::local(args.port, handlers);
    config.bind = SocketAddr::new(bind, args.port);
    config.allow_public = args.allow_public;
    config.on_webhook = Some(Arc::new(|log: &WebhookLog| println!("  {log}")));
    let emulator = Emulator::bind(config).await?;
    let addr = emulator.local_addr();
    println!("hubhook emulator — FOR LOCAL USE ONLY: the access key is public.");
    println!("  listening         : http://{addr}");
    println!("  connection string : {}", emulator.connection_string());
    if args.event_handler.is_empty() {
        println!("  event handlers    : none (connections are accepted without webhooks; add --event-handler URL)");
    }
    for h in &args.event_handler {
        println!("  event handler     : {h}");
    }
    emulator.run().await?;
    Ok(())
}
