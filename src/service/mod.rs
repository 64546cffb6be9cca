//! Talking to the Web PubSub service: connection strings, JWTs (REST and client access), and the
//! REST data-plane client.

mod cache;
mod client;
mod connection_string;
mod token;

pub use cache::{Prepared, RequestCache};
pub use client::*;
pub use connection_string::{AccessKey, ConnectionString, ACCESS_KEY_CHARS};
pub use token::{
    client_access, client_token, rest_token, sign_jwt, unix_now, ClientAccess, ClientTokenOptions,
};

#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum ServiceError {
    #[error("connection string: {0}")]
    ConnectionString(String),
    #[error("{op}: service answered {status}: {body}")]
    Status {
        op: &'static str,
        status: u16,
        body: String,
    },
    #[error("{op}: network error: {reason}")]
    Network { op: &'static str, reason: String },
    #[error("{op}: timed out")]
    Timeout { op: &'static str },
    #[error("{op}: unexpected response: {reason}")]
    InvalidResponse { op: &'static str, reason: String },
}
