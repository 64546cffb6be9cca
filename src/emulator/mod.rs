//! A local Azure Web PubSub service for development and tests (`hubhook dev`, `hubhook
//! emulator`): client WebSockets (`json.webpubsub.azure.v1`, `json.reliable.webpubsub.azure.v1`,
//! plain), CloudEvents webhooks to the hub's event handler, and the REST data-plane API.
//!
//! It speaks the wire format through the same `protocol` module the handler parses with; the
//! tests pin it with the official `@azure/web-pubsub-client` and `@azure/web-pubsub` packages.

mod client;
mod filter;
mod hub;
mod rest;
mod upstream;

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::routing::{any, get};
use axum::Router;
use serde_json::Value;

pub use filter::Filter;
pub use hub::{JSON_RELIABLE_V1, JSON_V1};
pub use upstream::HandlerSettings;

use crate::service::AccessKey;

#[derive(Debug, Clone)]
pub struct EmulatorConfig {
    pub bind: SocketAddr,
    /// Binding a non-loopback address needs this: the default key is public.
    pub allow_public: bool,
    pub access_key: String,
    pub handlers: Vec<HandlerSettings>,
    /// Per webhook call; a connect handler that takes longer refuses the client.
    pub upstream_timeout: Duration,
    /// How long a dropped reliable connection waits for its client to recover it.
    pub recovery_window: Duration,
    /// `WebHook-Request-Origin` sent to event handlers.
    pub origin: String,
}

impl EmulatorConfig {
    pub fn local(port: u16, handlers: Vec<HandlerSettings>) -> Self {
        EmulatorConfig {
            bind: SocketAddr::from(([127, 0, 0, 1], port)),
            allow_public: false,
            access_key: crate::config::LOCAL_ACCESS_KEY.to_string(),
            handlers,
            upstream_timeout: Duration::from_secs(10),
            recovery_window: Duration::from_secs(30),
            origin: "localhost".into(),
        }
    }
}

/// Event-handler settings that send everything to `url` (connect, connected, disconnected, `*`).
pub fn handler_for_all(url: &str) -> HandlerSettings {
    HandlerSettings {
        url_template: url.to_string(),
        user_event_pattern: "*".into(),
        system_events: vec!["connect".into(), "connected".into(), "disconnected".into()],
    }
}

pub(crate) struct Shared {
    registry: hub::Registry,
    upstream: upstream::Upstream,
    key: AccessKey,
    recovery_window: Duration,
    closing: Mutex<HashSet<String>>,
}

impl Shared {
    /// Client tokens: HS256 with the key; `aud` any scheme (SDKs use http(s), the portal once
    /// used wss) ending in `/client/hubs/{hub}`; `exp` required.
    fn verify_client_token(&self, token: &str, hub: &str) -> Result<client::Claims, String> {
        let claims = self.decode(token)?;
        let aud = claims
            .get("aud")
            .and_then(Value::as_str)
            .unwrap_or_default();
        let want = format!("/client/hubs/{}", hub.to_ascii_lowercase());
        if !aud
            .to_ascii_lowercase()
            .trim_end_matches('/')
            .ends_with(&want)
        {
            return Err(format!(
                "token audience {aud:?} is not this hub's client endpoint"
            ));
        }
        Ok(client::claims_of(&claims))
    }

    /// REST tokens: `aud` is the request URL; the path must match (scheme, host and query may
    /// differ behind proxies).
    fn verify_rest_token(&self, headers: &axum::http::HeaderMap, path: &str) -> Result<(), String> {
        let token = headers
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .ok_or("missing bearer token")?;
        let claims = self.decode(token)?;
        let aud = claims
            .get("aud")
            .and_then(Value::as_str)
            .unwrap_or_default();
        let aud_path = url::Url::parse(aud)
            .map(|u| u.path().to_string())
            .unwrap_or_default();
        if aud_path.trim_end_matches('/') != path.trim_end_matches('/') {
            return Err(format!("token audience does not match {path}"));
        }
        Ok(())
    }

    fn decode(&self, token: &str) -> Result<std::collections::HashMap<String, Value>, String> {
        let mut v = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::HS256);
        v.validate_aud = false;
        v.required_spec_claims = ["exp".to_string()].into_iter().collect();
        v.leeway = 5;
        jsonwebtoken::decode::<std::collections::HashMap<String, Value>>(
            token,
            &jsonwebtoken::DecodingKey::from_secret(self.key.expose().as_bytes()),
            &v,
        )
        .map(|d| d.claims)
        .map_err(|e| format!("invalid token: {e}"))
    }
}

pub struct Emulator {
    listener: tokio::net::TcpListener,
    router: Router,
}

impl Emulator {
    pub async fn bind(config: EmulatorConfig) -> anyhow::Result<Emulator> {
        if !config.bind.ip().is_loopback() {
            if !config.allow_public {
                anyhow::bail!("HUBHOOK_EMULATOR_BIND: the emulator's access key is public; binding {} needs --allow-public", config.bind);
            }
            tracing::warn!("emulator listening on {} with a PUBLIC access key: anyone who can reach it can connect", config.bind);
        }
        let shared = Arc::new(Shared {
            registry: hub::Registry::default(),
            upstream: upstream::Upstream::new(
                &config.access_key,
                config.handlers.clone(),
                config.upstream_timeout,
                config.origin.clone(),
            ),
            key: AccessKey::new(config.access_key.clone()),
            recovery_window: config.recovery_window,
            closing: Mutex::new(HashSet::new()),
        });
        let router = Router::new()
            .route("/client/hubs/{hub}", get(client::hub_path))
            .route("/client", get(client::hub_query))
            .route("/client/", get(client::hub_query))
            .route("/api/{*rest}", any(rest::api))
            .with_state(shared);
        let listener = tokio::net::TcpListener::bind(config.bind)
            .await
            .map_err(|e| anyhow::anyhow!("emulator cannot listen on {}: {e}", config.bind))?;
        Ok(Emulator { listener, router })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.listener.local_addr().expect("bound")
    }

    pub async fn run(self) -> std::io::Result<()> {
        axum::serve(self.listener, self.router).await
    }
}
