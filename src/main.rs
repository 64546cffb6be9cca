//! The `hubhook` binary: parse the command line, hand it to [`hubhook::runtime::run`].

use clap::Parser;
use hubhook::config::Command;

#[derive(Parser)]
#[command(
    name = "hubhook",
    version,
    about = "Azure Web PubSub event handler: verified webhooks, persisted chat, broadcasts"
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    /// Log format: `pretty` or `json` (default: json under Lambda / Azure Functions).
    #[arg(long, env = "HUBHOOK_LOG_FORMAT", global = true)]
    log_format: Option<String>,
}

#[tokio::main]
async fn main() {
    let cli = Cli::parse();
    if let Err(e) = hubhook::runtime::run(cli.command, cli.log_format.as_deref()).await {
        eprintln!("hubhook: {e}");
        std::process::exit(1);
    }
}
