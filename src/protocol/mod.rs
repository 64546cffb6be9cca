//! The Web PubSub CloudEvents wire format, both directions, with no I/O: parse and verify a
//! webhook into a typed [`Webhook`], answer the abuse-protection probe, build the typed
//! responses, and (for the emulator) build and sign webhooks.

mod error;
mod event;
mod handshake;
mod hub;
mod ids;
mod outgoing;
mod response;
mod signature;
mod state;

pub use error::ProtocolError;
pub use event::*;
pub use handshake::{AllowedOrigins, OriginsError};
pub use hub::{validate_hub, HubError};
pub use ids::{
    parse_event_time, validate_ce_id, validate_connection_id, validate_user_id, IdError,
    MAX_CE_ID_BYTES, MAX_CONNECTION_ID_BYTES, MAX_EVENT_TIME_AHEAD, MAX_USER_ID_BYTES,
    MIN_EVENT_YEAR,
};
pub use outgoing::{build_webhook, now_rfc3339};
pub use response::*;
pub use signature::{sign, SignatureVerifier};
pub use state::ConnectionState;

#[cfg(test)]
mod tests;
