//! All process wiring: which platform started us (AWS Lambda, an Azure Functions custom handler,
//! or a plain server), logging, the store, the router, the listeners, and the `dev` and `emulator`
//! subcommands. `main` only parses the command line and calls [`run`].

mod dev;
mod emulator;
mod secret;
mod telemetry;
mod tunnel;

pub mod listener;

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use tokio::net::TcpListener;

use crate::auth::{Authenticator, OidcError, OidcVerifier};
use crate::chat::Chat;
use crate::config::{
    AuthMode, Command, Config, ConfigError, Defaults, LogFormat, Platform, ServeArgs,
};
use crate::emulator::EmulatorError;
use crate::http::{router, AppState, HealthCheck};
use crate::protocol::{SignatureVerifier, WebhookParser};
use crate::service::{RetryPolicy, ServiceClient, ServiceError};
use crate::store::{SharedStore, StoreError};
use listener::Limits;

/// Why the process could not start or stopped: the one line `main` prints before exiting 1.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Service(#[from] ServiceError),
    #[error("{what}: cannot listen on {addr}: {source}")]
    Listen {
        what: &'static str,
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("server stopped: {0}")]
    Serve(#[from] std::io::Error),
    #[error(transparent)]
    Emulator(#[from] EmulatorError),
    #[error("HUBHOOK_AUTH: {0}")]
    Auth(#[from] OidcError),
    #[error("tunnel: {0}")]
    Tunnel(crate::tunnel::TunnelError),
    #[error("lambda runtime: {0}")]
    Lambda(lambda_http::Error),
    #[error("hubhook-lambda runs under AWS Lambda only (AWS_LAMBDA_RUNTIME_API is not set); run `hubhook serve` elsewhere")]
    NotLambda,
}

/// The whole process: `hubhook [serve|dev|emulator]`.
pub async fn run(command: Option<Command>, log_format: Option<&str>) -> Result<(), RuntimeError> {
    let platform = Platform::detect()?;
    let command = match command {
        Some(c) => c,
        None => Command::Serve(ServeArgs::from_env()),
    };
    let dev = matches!(command, Command::Dev(_));
    telemetry::init(LogFormat::parse(log_format, platform)?, dev)?;
    match command {
        Command::Serve(args) => serve(args, platform).await,
        Command::Dev(args) => dev::run(&args).await,
        Command::Emulator(args) => emulator::run(&args).await,
        Command::Tunnel(args) => tunnel::run(&args).await,
    }
}

/// The process under AWS Lambda, for the `hubhook-lambda` binary (what template.yaml deploys):
/// the webhook router and the Lambda runtime only. Nothing here reaches the emulator, the dev
/// page, the tunnel or the listener, so the linker leaves them out of that binary and the
/// package is smaller; `hubhook` started by Lambda runs the same [`serve_lambda`].
pub async fn lambda(log_format: Option<&str>) -> Result<(), RuntimeError> {
    if Platform::detect()? != Platform::Lambda {
        return Err(RuntimeError::NotLambda);
    }
    telemetry::init(LogFormat::parse(log_format, Platform::Lambda)?, false)?;
    serve_lambda(ServeArgs::from_env()).await
}

/// The settings of a serving process, the connection string read (file, secret) first.
async fn serve_config(mut args: ServeArgs, platform: Platform) -> Result<Config, RuntimeError> {
    args.read_connection_string()?;
    secret::resolve(&mut args).await?;
    Ok(Config::from_args(&args, &Defaults::serve())?.for_platform(platform))
}

async fn serve_lambda(args: ServeArgs) -> Result<(), RuntimeError> {
    let config = serve_config(args, Platform::Lambda).await?;
    let router = build_router(&config).await?;
    tracing::info!(hub = %config.hub, store = ?config.store, "hubhook starting under AWS Lambda");
    lambda_http::run(router).await.map_err(RuntimeError::Lambda)
}

async fn serve(args: ServeArgs, platform: Platform) -> Result<(), RuntimeError> {
    let mode = match platform {
        Platform::Lambda => return serve_lambda(args).await,
        Platform::AzureFunctions(_) => "Azure Functions custom handler",
        Platform::Server => "server",
    };
    let config = serve_config(args, platform).await?;
    let app = Application::build(&config).await?;
    let addr = app.local_addr();
    tracing::info!(
        %addr, hub = %config.hub, store = ?config.store, endpoint = %config.connection_string.origin(),
        auth = ?auth_name(&config.auth), verify_signatures = config.verify_signatures,
        "hubhook {mode} listening; event handler at http://{addr}{}", config.event_path
    );
    app.run().await?;
    Ok(())
}

/// Everything built once per process (per Lambda container): config, store, pooled HTTP client.
pub async fn build_router(config: &Config) -> Result<Router, RuntimeError> {
    let store = config.store.open(&config.store_options).await?;
    build_router_with_store(config, store)
}

pub fn build_router_with_store(
    config: &Config,
    store: SharedStore,
) -> Result<Router, RuntimeError> {
    let verifier = config
        .verify_signatures
        .then(|| SignatureVerifier::new(config.signature_keys.iter().map(|k| k.expose())));
    if verifier.is_none() {
        tracing::warn!("ce-signature verification is OFF (HUBHOOK_INSECURE_SKIP_SIGNATURE): anyone can forge events");
    }
    let service = ServiceClient::new(
        &config.connection_string,
        &config.hub,
        RetryPolicy::default(),
    )?;
    let auth = match &config.auth {
        AuthMode::Open => {
            if !config.connection_string.is_loopback() {
                tracing::warn!("HUBHOOK_AUTH=open on a non-loopback endpoint (HUBHOOK_NEGOTIATE_INSECURE_OPEN): anyone can negotiate as any user and read every room's history");
            }
            Authenticator::Open
        }
        AuthMode::Off => Authenticator::Off,
        AuthMode::Oidc(c) => Authenticator::Oidc(Box::new(OidcVerifier::new(c.clone())?)),
    };
    crate::store::spawn_retention(store.clone(), config.store_options.retention_days);
    let chat = Chat::new(store, service, config.chat.clone());
    chat.spawn_sweeper();
    let state = AppState {
        parser: WebhookParser::new(&config.hub, verifier).with_dotnet_state(config.dotnet_state),
        origins: config.allowed_origins.clone(),
        chat,
        health: HealthCheck::default(),
        connection_string: config.connection_string.clone(),
        hub: config.hub.clone(),
        auth,
        cors_origins: config.cors_origins.clone(),
    };
    Ok(router(Arc::new(state), &config.event_path))
}

fn auth_name(mode: &AuthMode) -> &'static str {
    match mode {
        AuthMode::Open => "open",
        AuthMode::Off => "off",
        AuthMode::Oidc(_) => "oidc",
    }
}

/// A server bound to its port (0 picks a free one), ready to run: what tests and `serve` use.
pub struct Application {
    listener: TcpListener,
    router: Router,
    limits: Limits,
}

impl Application {
    pub async fn build(config: &Config) -> Result<Application, RuntimeError> {
        let router = build_router(config).await?;
        let addr = SocketAddr::new(config.bind, config.port);
        let listener = TcpListener::bind(addr).await.map_err(|source| {
            let what = setting_at_fault(&source, "HUBHOOK_BIND", "PORT");
            RuntimeError::Listen { what, addr, source }
        })?;
        let app = Application {
            listener,
            router,
            limits: Limits::default(),
        };
        Ok(app.with_limits(config.limits.clone()))
    }

    /// Serves `router` on `addr` with the default [`Limits`].
    pub async fn bind(addr: SocketAddr, router: Router) -> Result<Application, RuntimeError> {
        let listener = listen("hubhook", addr).await?;
        Ok(Application {
            listener,
            router,
            limits: Limits::default(),
        })
    }

    /// Serves `router`'s routes too (`hubhook dev`'s page); the app's own fallback stays.
    pub fn merge(mut self, router: Router) -> Application {
        self.router = self.router.merge(router);
        self
    }

    pub fn with_limits(mut self, limits: Limits) -> Application {
        self.limits = limits;
        self
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .expect("a bound listener has an address")
    }

    /// Until SIGTERM / Ctrl-C, then a bounded drain ([`Limits::drain`]).
    pub async fn run(self) -> std::io::Result<()> {
        listener::serve(self.listener, self.router, self.limits, shutdown_signal()).await
    }
}

/// Binds a listener; the error names what was to listen there.
pub async fn listen(what: &'static str, addr: SocketAddr) -> Result<TcpListener, RuntimeError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| RuntimeError::Listen { what, addr, source })
}

/// Which setting a failed bind is the fault of: an address this host does not have is the bind
/// address's, anything else (in use, privileged) the port's.
pub(crate) fn setting_at_fault(
    e: &std::io::Error,
    bind_var: &'static str,
    port_var: &'static str,
) -> &'static str {
    match e.kind() {
        std::io::ErrorKind::AddrNotAvailable => bind_var,
        _ => port_var,
    }
}

/// Ctrl-C or SIGTERM (what Lambda, the Functions host and container runtimes send).
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        if let Ok(mut s) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        {
            s.recv().await;
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! { _ = ctrl_c => {}, _ = term => {} }
}
