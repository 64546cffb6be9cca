//! Picking and starting the runtime: AWS Lambda (`AWS_LAMBDA_RUNTIME_API`), an Azure Functions
//! custom handler (`FUNCTIONS_CUSTOMHANDLER_PORT`), or a plain server.

pub mod listener;

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use tokio::net::TcpListener;

use crate::chat::Chat;
use crate::config::{Config, ConfigError, ServeArgs, StoreSpec};
use crate::http::{router, AppState};
use crate::protocol::{SignatureVerifier, WebhookParser};
use crate::service::{RetryPolicy, ServiceClient};
use crate::store::dynamodb::{self, DynamoOptions};
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
        match std::env::var("FUNCTIONS_CUSTOMHANDLER_PORT")
            .ok()
            .and_then(|p| p.parse().ok())
        {
            Some(port) => Runtime::AzureFunctions(port),
            None => Runtime::Server,
        }
    }
}

pub async fn open_store(config: &Config) -> Result<SharedStore, StoreError> {
    match &config.store {
        StoreSpec::Sqlite(path) => Ok(Arc::new(SqliteStore::open(path)?)),
        StoreSpec::Dynamo { table } => {
            let opts = DynamoOptions {
                retention_days: config.retention_days,
                ..Default::default()
            };
            let store = dynamodb::connect(table, opts).await?;
            // A local DynamoDB-compatible server starts empty; a real table comes from template.yaml.
            if std::env::var_os("AWS_ENDPOINT_URL_DYNAMODB").is_some() {
                store.ensure_table().await?;
            }
            Ok(Arc::new(store))
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
    let service = ServiceClient::new(
        &config.connection_string,
        &config.hub,
        RetryPolicy::default(),
    )?;
    let state = AppState {
        parser: WebhookParser::new(&config.hub, verifier).with_dotnet_state(config.dotnet_state),
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
        self.listener
            .local_addr()
            .expect("a bound listener has an address")
    }

    pub async fn run(self) -> std::io::Result<()> {
        axum::serve(self.listener, self.router)
            .with_graceful_shutdown(shutdown_signal())
            .await
    }
}

async fn shutdown_signal() {
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

/// Fills in the connection string from AWS Secrets Manager when only its ARN is configured.
/// Done once per process: a Lambda container pays one `GetSecretValue` at cold start, and the
/// key never sits in the function's plain environment or the CloudFormation template.
pub async fn resolve_secret(args: &mut ServeArgs) -> Result<(), ConfigError> {
    let Some(arn) = args
        .connection_string_secret_arn
        .clone()
        .filter(|a| !a.is_empty())
    else {
        return Ok(());
    };
    if args.connection_string.is_some() {
        return Ok(());
    }
    let fail = |reason: String| ConfigError {
        var: "WEBPUBSUB_CONNECTION_STRING_SECRET_ARN",
        reason,
    };
    let timeouts = aws_config::timeout::TimeoutConfig::builder()
        .connect_timeout(std::time::Duration::from_secs(2))
        .operation_timeout(std::time::Duration::from_secs(5))
        .build();
    let sdk = aws_config::defaults(aws_config::BehaviorVersion::latest())
        .timeout_config(timeouts)
        .load()
        .await;
    let out = aws_sdk_secretsmanager::Client::new(&sdk)
        .get_secret_value()
        .secret_id(&arn)
        .send()
        .await
        .map_err(|e| {
            fail(format!(
                "cannot read the secret: {}",
                aws_sdk_secretsmanager::error::DisplayErrorContext(&e)
            ))
        })?;
    let value = out
        .secret_string()
        .ok_or_else(|| fail("the secret has no string value".into()))?;
    args.connection_string = Some(value.trim().to_string());
    Ok(())
}

pub async fn run_lambda(router: Router) -> anyhow::Result<()> {
    lambda_http::run(router)
        .await
        .map_err(|e| anyhow::anyhow!("lambda runtime: {e}"))
}
