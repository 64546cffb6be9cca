//! The `hubhook` binary: parse the command line, hand it to [`hubhook::runtime::run`].

use clap::Parser;
use hubhook::config::{Command, LogArgs};

#[derive(Parser)]
#[command(
    name = "hubhook",
    version,
    about = "Azure Web PubSub event handler: verified webhooks, persisted chat, broadcasts"
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    log: LogArgs,
}

#[tokio::main]
async fn main() {
    // Before clap reads the flags' variables: a value that is not UTF-8 gets a line naming it.
    if let Err(e) = hubhook::config::check_environment() {
        eprintln!("hubhook: {e}");
        std::process::exit(1);
    }
    let cli = Cli::parse();
    let code = match hubhook::runtime::run(cli.command, cli.log.log_format.as_deref()).await {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("hubhook: {e}");
            1
        }
    };
    // Exit now, after the bounded drain: a blocking thread (the SQLite writer) must not hold
    // the process open past it.
    std::process::exit(code);
}
