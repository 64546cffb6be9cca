//! The client side of the Web PubSub tunnel (`hubhook tunnel`, and `hubhook dev` against a real
//! resource): dial the service's `/server/tunnel`, replay each webhook it sends against a local
//! upstream, answer on the same connection.
//!
//! | file | concept |
//! |---|---|
//! | `frame` | the codec both sides share (the emulator's service side is `emulator::tunnel`) |
//! | `dial` | the tunnel URL and its JWT (`aud` = the URL as dialled, fresh per attempt) |
//! | `client` | the connections: first connect, reconnect with back-off, rebalance, close |
//! | `forward` | one `HttpRequest` replayed against the upstream, answered as an `HttpResponse` |

mod client;
mod dial;
pub mod forward;
pub mod frame;

use std::time::Duration;

pub use client::run;
pub use dial::{dial_url, Dial};

use crate::service::ConnectionString;

/// Everything `hubhook tunnel` needs, validated by `config`.
#[derive(Debug, Clone)]
pub struct TunnelConfig {
    pub connection_string: ConnectionString,
    pub hub: String,
    /// Base URL webhooks are replayed against: its path is a prefix, its query is kept.
    pub upstream: url::Url,
    /// Per forwarded request (connect, body and answer); past it the service gets 502.
    pub upstream_timeout: Duration,
    /// Per connect attempt, until `ConnectionConnected` arrives.
    pub connect_timeout: Duration,
}

impl TunnelConfig {
    pub const DEFAULT_UPSTREAM_TIMEOUT: Duration = Duration::from_secs(20);
    pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
}

/// Why the tunnel could not start or stopped: one line for the terminal, never a token.
#[derive(Debug, thiserror::Error)]
pub enum TunnelError {
    #[error("the service refused the tunnel connection: HTTP {status}{hint}")]
    Refused { status: u16, hint: &'static str },
    #[error("cannot connect to {endpoint}: {reason}")]
    Connect { endpoint: String, reason: String },
    #[error(
        "no ConnectionConnected from {endpoint} within {timeout:?} (is it a Web PubSub endpoint?)"
    )]
    NoConnected { endpoint: String, timeout: Duration },
    #[error("invalid tunnel endpoint {0:?}")]
    Endpoint(String),
    #[error("the service closed the tunnel: {0}")]
    Closed(String),
}
