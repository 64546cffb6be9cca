//! `hubhook-lambda`: the binary of the AWS Lambda package (template.yaml's `Binary`). It runs
//! [`hubhook::runtime::lambda`], the handler `hubhook` also runs when Lambda starts it, and
//! links nothing a Lambda function cannot use (emulator, dev page, tunnel, listener).

use clap::Parser;

#[derive(Parser)]
#[command(
    name = "hubhook-lambda",
    version,
    about = "hubhook's Azure Web PubSub event handler as an AWS Lambda function"
)]
struct Cli {
    /// Log format: `json` (default) or `pretty`.
    #[arg(long, env = "HUBHOOK_LOG_FORMAT")]
    log_format: Option<String>,
}

#[tokio::main]
async fn main() {
    if let Err(e) = hubhook::config::check_environment() {
        eprintln!("hubhook-lambda: {e}");
        std::process::exit(1);
    }
    let cli = Cli::parse();
    if let Err(e) = hubhook::runtime::lambda(cli.log_format.as_deref()).await {
        eprintln!("hubhook-lambda: {e}");
        std::process::exit(1);
    }
}
