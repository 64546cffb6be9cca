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

use std::sync::Arc;
use std::time::Duration;

pub use client::{run, run_observed};
pub use dial::{dial_url, Dial};
pub use forward::Forwarded;

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

/// What the tunnel did, as it happens: `hubhook dev`'s page shows the forwarded webhooks in its
/// inspector and the connections' state (reconnects included) beside them. The terminal lines are
/// printed either way.
#[derive(Debug, Clone)]
pub enum TunnelEvent {
    /// Dialling `endpoint` (the first connect, a reconnect, or an extra connection).
    Connecting { endpoint: String },
    /// `ConnectionConnected` arrived.
    Connected {
        connection_id: String,
        endpoint: String,
    },
    /// The connection dropped; it is dialled again.
    Lost {
        connection_id: String,
        reason: String,
    },
    /// A reconnect attempt failed; the next one in `retry_in`.
    RetryFailed { error: String, retry_in: Duration },
    /// `ConnectionReconnect`: the service moved the connection to `endpoint`.
    Moved {
        connection_id: String,
        endpoint: String,
    },
    /// `ConnectionRebalance`: the service asked for another connection to `endpoint`.
    Added { endpoint: String },
    /// `ConnectionClose`: this connection ends for good.
    Closed {
        connection_id: String,
        message: String,
    },
    /// One webhook forwarded to the upstream and answered.
    Forwarded(Arc<Forwarded>),
}

/// Told every [`TunnelEvent`]; called on the tunnel's tasks, so it must not block.
pub type Observer = Arc<dyn Fn(TunnelEvent) + Send + Sync>;

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
