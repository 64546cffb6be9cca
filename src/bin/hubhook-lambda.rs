//! `hubhook-lambda`: the binary of the AWS Lambda package (template.yaml's `Binary`). It runs
//! [`hubhook::runtime::lambda`], the handler `hubhook` also runs when Lambda starts it, and
//! links nothing a Lambda function cannot use (emulator, dev page, tunnel, listener).

use clap::Parser;
use hubhook::config::LogArgs;

#[derive(Parser)]
#[command(
    name = "hubhook-lambda",
    version,
    about = "hubhook's Azure Web PubSub event handler as an AWS Lambda function"
)]
struct Cli {
    #[command(flatten)]
    log: LogArgs,
}

#[tokio::main]
async fn main() {
    if let Err(e) = hubhook::config::check_environment() {
        eprintln!("hubhook-lambda: {e}");
        std::process::exit(1);
    }
    let cli = Cli::parse();
    if let Err(e) = hubhook::runtime::lambda(cli.log.log_format.as_deref()).await {
        eprintln!("hubhook-lambda: {e}");
        std::process::exit(1);
    }
}
