//! Picking and starting the runtime: AWS Lambda (`AWS_LAMBDA_RUNTIME_API`), an Azure Functions
//! custom handler (`FUNCTIONS_CUSTOMHANDLER_PORT`), or a plain server.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use tokio::net::TcpListener;

use crate::chat::Chat;
use crate::config::{Config, StoreSpec};
use crate::http::{router, AppState};
use crate::protocol::{SignatureVerifier, WebhookParser};
use crate::service::{RetryPolicy, ServiceClient};
use crate::store::{sqlite::SqliteStore, SharedStore, StoreError};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Runtime {
    Lambda,
    AzureFunctions(u16),
    Server,
}

impl Runtime {
    pub fn detect() -> Runtime {
        if std::env::var_os("AWS_LAMBDA_RUNTIME_API").is_some() {
            return Runtime::Lambda;
        }
        match std::env::var("FUNCTIONS_CUSTOMHANDLER_PORT").ok().and_then(|p| p.parse().ok()) {
            Some(port) => Runtime::AzureFunctions(port),
            None => Runtime::Server,
        }
    }
}

pub async fn open_store(config: &Config) -> Result<SharedStore, StoreError> {
    match &config.store {
        StoreSpec::Sqlite(path) => Ok(Arc::new(SqliteStore::open(path)?)),
        StoreSpec::Dynamo { table } => {
            let _ = table;
            Err(StoreError::Failed("dynamodb store not wired yet".into()))
        }
    }
}

/// Everything built once per process (per Lambda container): config, store, pooled HTTP client.
pub async fn build_router(config: &Config) -> anyhow::Result<Router> {
    let store = open_store(config).await?;
    build_router_with_store(config, store)
}

pub fn build_router_with_store(config: &Config, store: SharedStore) -> anyhow::Result<Router> {
    let verifier = config
        .verify_signatures
        .then(|| SignatureVerifier::new(config.signature_keys.iter().map(|k| k.expose())));
    if verifier.is_none() {
        tracing::warn!("ce-signature verification is OFF (HUBHOOK_INSECURE_SKIP_SIGNATURE): anyone can forge events");
    }
    let service = ServiceClient::new(&config.connection_string, &config.hub, RetryPolicy::default())?;
    let state = AppState {
        parser: WebhookParser::new(&config.hub, verifier),
        origins: config.allowed_origins.clone(),
        chat: Chat::new(store, service, config.chat.clone()),
        connection_string: config.connection_string.clone(),
        hub: config.hub.clone(),
        negotiate_open: config.negotiate_open,
    };
    Ok(router(Arc::new(state), &config.event_path))
}

/// A server bound to its port (0 picks a free one), ready to run: what tests and `serve` use.
pub struct Application {
    listener: TcpListener,
    router: Router,
}

impl Application {
    pub async fn build(config: &Config) -> anyhow::Result<Application> {
        let router = build_router(config).await?;
        Application::bind(SocketAddr::new(config.bind, config.port), router).await
    }

    pub async fn bind(addr: SocketAddr, router: Router) -> anyhow::Result<Application> {
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|e| anyhow::anyhow!("cannot listen on {addr}: {e}"))?;
        Ok(Application { listener, router })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.listener.local_addr().expect("a bound listener has an address")
    }

    pub async fn run(self) -> std::io::Result<()> {
        axum::serve(self.listener, self.router).with_graceful_shutdown(shutdown_signal()).await
    }
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        if let Ok(mut s) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            s.recv().await;
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! { _ = ctrl_c => {}, _ = term => {} }
}

pub async fn run_lambda(router: Router) -> anyhow::Result<()> {
    lambda_http::run(router).await.map_err(|e| anyhow::anyhow!("lambda runtime: {e}"))
}
