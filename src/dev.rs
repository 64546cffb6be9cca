//! `hubhook dev`: the local emulator and the chat function in one process, wired together, on
//! loopback, with the embedded store — the whole quickstart with no account and no config.

use crate::config::{Config, Defaults, ServeArgs};
use crate::emulator::{handler_for_all, Emulator, EmulatorConfig};
use crate::runtime::Application;
use crate::service::{client_access, ClientTokenOptions};

pub async fn run_dev(emulator_port: u16, args: &ServeArgs) -> anyhow::Result<()> {
    let config = Config::from_args(args, &Defaults::dev(emulator_port))?;
    if !config.bind.is_loopback() {
        anyhow::bail!("HUBHOOK_BIND: dev uses a public access key and binds loopback only");
    }
    let app = Application::build(&config).await?;
    let fn_addr = app.local_addr();
    let handler = format!("http://{fn_addr}{}", config.event_path);
    let emulator = Emulator::bind(EmulatorConfig::local(
        emulator_port,
        vec![handler_for_all(&handler)],
    ))
    .await?;
    let emu_addr = emulator.local_addr();

    let cs = &config.connection_string;
    let access = client_access(
        cs,
        &config.hub,
        &ClientTokenOptions {
            user_id: Some("dev-user".into()),
            roles: vec![
                "webpubsub.joinLeaveGroup.lobby".into(),
                "webpubsub.sendToGroup.lobby".into(),
            ],
            ..Default::default()
        },
    );
    println!(
        "hubhook dev — FOR LOCAL USE ONLY: the access key below is the public local-emulator key."
    );
    println!(
        "  Web PubSub emulator : http://{emu_addr}   (hub {:?}, event handler {handler})",
        config.hub
    );
    println!(
        "  connection string   : Endpoint=http://localhost;Port={};AccessKey={};Version=1.0;",
        emu_addr.port(),
        cs.access_key.expose()
    );
    println!(
        "  client access URL   : {}&room=lobby   (user dev-user, valid 1 h)",
        access.url
    );
    println!("  negotiate           : http://{fn_addr}/negotiate?userId=alice&room=lobby");
    println!("  history             : http://{fn_addr}/api/messages?room=lobby");
    println!("  store               : {:?}", config.store);
    tokio::select! {
        r = app.run() => r?,
        r = emulator.run() => r?,
    }
    Ok(())
}
