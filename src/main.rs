use clap::{Parser, Subcommand};
use hubhook::config::{Config, Defaults, ServeArgs};
use hubhook::emulator::{Emulator, EmulatorConfig, HandlerSettings, WebhookLog};
use hubhook::runtime::{self, Application, Runtime};

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

#[derive(Subcommand)]
enum Command {
    /// Run the event handler (the default; also what Lambda and Azure Functions start).
    Serve(ServeArgs),
    /// The local Web PubSub emulator alone (client WebSockets, webhooks, REST API), loopback only.
    Emulator {
        #[arg(long, env = "HUBHOOK_EMULATOR_PORT", default_value_t = 8080)]
        port: u16,
        #[arg(long, env = "HUBHOOK_EMULATOR_BIND", default_value = "127.0.0.1")]
        bind: String,
        /// Allow a non-loopback bind address (the access key is public!).
        #[arg(long)]
        allow_public: bool,
        /// Event handler `[hub=]url-template` ({hub}, {event} are replaced; no hub: every hub);
        /// gets connect, connected, disconnected and every user event. Repeatable.
        #[arg(long, env = "HUBHOOK_EVENT_HANDLER", value_delimiter = ' ')]
        event_handler: Vec<String>,
    },
    /// Local development: the emulator and the chat function in one process, loopback only.
    Dev {
        /// Port of the local Web PubSub emulator (the service endpoint).
        #[arg(long, env = "HUBHOOK_EMULATOR_PORT", default_value_t = 8080)]
        emulator_port: u16,
        #[command(flatten)]
        serve: ServeArgs,
    },
}

fn init_logging(format: Option<&str>, runtime: Runtime) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let json = match format {
        Some(f) => f.eq_ignore_ascii_case("json"),
        None => runtime != Runtime::Server,
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if json {
        builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .init();
    } else {
        builder.compact().init();
    }
}

#[tokio::main]
async fn main() {
    let cli = Cli::parse();
    let runtime = Runtime::detect();
    init_logging(cli.log_format.as_deref(), runtime);
    if let Err(e) = run(cli.command, runtime).await {
        eprintln!("hubhook: {e:#}");
        std::process::exit(1);
    }
}

async fn run(command: Option<Command>, runtime: Runtime) -> anyhow::Result<()> {
    let command = command.unwrap_or_else(|| Command::Serve(ServeArgs::parse_env()));
    match command {
        Command::Serve(mut args) => {
            runtime::resolve_secret(&mut args).await?;
            let mut config = Config::from_args(&args, &Defaults::serve())?;
            match runtime {
                Runtime::Lambda => {
                    let router = runtime::build_router(&config).await?;
                    tracing::info!(hub = %config.hub, store = ?config.store, "hubhook starting under AWS Lambda");
                    runtime::run_lambda(router).await
                }
                Runtime::AzureFunctions(port) => {
                    config.port = port;
                    config.bind = std::net::IpAddr::from([127, 0, 0, 1]);
                    serve(&config, "Azure Functions custom handler").await
                }
                Runtime::Server => serve(&config, "server").await,
            }
        }
        Command::Dev {
            emulator_port,
            serve: args,
        } => hubhook::dev::run_dev(emulator_port, &args).await,
        Command::Emulator {
            port,
            bind,
            allow_public,
            event_handler,
        } => {
            let bind: std::net::IpAddr = bind.parse().map_err(|_| {
                anyhow::anyhow!("HUBHOOK_EMULATOR_BIND: {bind:?} is not an IP address")
            })?;
            let handlers = event_handler
                .iter()
                .map(|h| HandlerSettings::parse(h))
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| anyhow::anyhow!("HUBHOOK_EVENT_HANDLER: {e}"))?;
            let mut config = EmulatorConfig::local(port, handlers);
            config.bind = std::net::SocketAddr::new(bind, port);
            config.allow_public = allow_public;
            config.on_webhook = Some(std::sync::Arc::new(|log: &WebhookLog| println!("  {log}")));
            let emulator = Emulator::bind(config).await?;
            let addr = emulator.local_addr();
            println!("hubhook emulator — FOR LOCAL USE ONLY: the access key is public.");
            println!("  listening         : http://{addr}");
            println!("  connection string : {}", emulator.connection_string());
            if event_handler.is_empty() {
                println!("  event handlers    : none (connections are accepted without webhooks; add --event-handler URL)");
            }
            for h in &event_handler {
                println!("  event handler     : {h}");
            }
            emulator.run().await?;
            Ok(())
        }
    }
}

async fn serve(config: &Config, mode: &str) -> anyhow::Result<()> {
    let app = Application::build(config).await?;
    let addr = app.local_addr();
    tracing::info!(
        %addr, hub = %config.hub, store = ?config.store, endpoint = %config.connection_string.origin(),
        negotiate = config.negotiate_open, verify_signatures = config.verify_signatures,
        "hubhook {mode} listening; event handler at http://{addr}{}", config.event_path
    );
    app.run().await?;
    Ok(())
}

trait ParseEnv {
    fn parse_env() -> Self;
}

impl ParseEnv for ServeArgs {
    /// `hubhook` with no subcommand (how Lambda and Functions start it): serve, configured by env.
    fn parse_env() -> Self {
        #[derive(Parser)]
        struct Only {
            #[command(flatten)]
            serve: ServeArgs,
        }
        Only::parse_from(["hubhook"]).serve
    }
}
