//! `hubhook emulator`: the local Web PubSub service alone.

use std::sync::Arc;

use super::{setting_at_fault, RuntimeError};
use crate::config::{ConfigError, EmulatorArgs};
use crate::emulator::{Emulator, EmulatorConfig, HandlerSettings, WebhookLog};

pub async fn run(args: &EmulatorArgs) -> Result<(), RuntimeError> {
    let addr = args.addr()?;
    let limits = args.limits()?;
    let handlers = args
        .event_handler
        .iter()
        .map(|h| HandlerSettings::parse(h))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| ConfigError {
            var: "HUBHOOK_EVENT_HANDLER",
            reason: e.to_string(),
        })?;
    if !addr.ip().is_loopback() && !args.allow_public {
        return Err(ConfigError {
            var: "HUBHOOK_EMULATOR_BIND",
            reason: format!(
                "{} is not loopback and the emulator's access key is public (--allow-public allows it)",
                addr.ip()
            ),
        }
        .into());
    }
    // Bound here, so that a refusal names the variable at fault.
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| {
            let what = setting_at_fault(&source, "HUBHOOK_EMULATOR_BIND", "HUBHOOK_EMULATOR_PORT");
            RuntimeError::Listen { what, addr, source }
        })?;
    let mut config = EmulatorConfig::local(addr.port(), handlers);
    config.bind = addr;
    config.allow_public = args.allow_public;
    config.limits = limits;
    config.on_webhook = Some(Arc::new(|log: &WebhookLog| println!("  {log}")));
    let emulator = Emulator::with_listener(listener, config)?;
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
    if args.event_handler.iter().any(|h| h.contains("tunnel:///")) {
        println!("  tunnel            : ws://{addr}/server/tunnel (run `hubhook tunnel` with the connection string above)");
    }
    emulator.run().await?;
    Ok(())
}
