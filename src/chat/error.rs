use bytes::Bytes;
use http::{Response, StatusCode};

use super::{MessageRate, RoomError};
use crate::protocol::{self, MqttContext};
use crate::service::ServiceError;
use crate::store::StoreError;

/// Why the chat rules refused or failed an event. Each variant has one status and its `Display`
/// is the one-line reason the service (and so the sending client) gets back.
#[derive(Debug, thiserror::Error)]
pub enum ChatError {
    #[error("anonymous connections are not allowed")]
    Anonymous,
    #[error("the client token does not grant room {0:?}")]
    RoomNotGranted(String),
    #[error(transparent)]
    Room(#[from] RoomError),
    #[error(transparent)]
    Message(#[from] MessageError),
    #[error("unsupported event {0:?} (set HUBHOOK_RELAY_EVENTS to relay it)")]
    UnsupportedEvent(String),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("{event} notice not delivered: {source}")]
    NoticeNotDelivered {
        event: &'static str,
        source: BroadcastError,
    },
    #[error("relay failed: {0}")]
    RelayFailed(BroadcastError),
    #[error("rate limit: at most {0} per user; message refused, try again later")]
    RateLimited(MessageRate),
}

/// A chat message that cannot be accepted as sent.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum MessageError {
    #[error("\"text\" must be a string")]
    TextNotString,
    #[error("JSON message needs a \"text\" field")]
    NoText,
    #[error("\"room\" must be a string")]
    RoomNotString,
    #[error("JSON message must be a string or an object with \"text\"")]
    NotTextOrObject,
    #[error("binary messages are not supported; send text or JSON")]
    Binary,
    #[error("binary data is not relayed")]
    BinaryRelay,
    #[error("empty message")]
    Empty,
    #[error("message exceeds {limit} bytes")]
    TooLarge { limit: usize },
    #[error("no permission to send to room {0:?}")]
    NoPermission(String),
    #[error(transparent)]
    Room(#[from] RoomError),
}

/// A broadcast that did not reach the service.
#[derive(Debug, thiserror::Error)]
pub enum BroadcastError {
    #[error(transparent)]
    Service(#[from] ServiceError),
    /// The spawned send panicked or was cancelled: a bug or a shutdown, not the network.
    #[error("broadcast task ended early: {0}")]
    Task(#[from] tokio::task::JoinError),
    /// The send's task ended without saying how it went (it cannot, short of a bug).
    #[error("broadcast task ended without an answer")]
    NoAnswer,
}

impl ChatError {
    pub fn status(&self) -> StatusCode {
        match self {
            ChatError::Anonymous => StatusCode::UNAUTHORIZED,
            ChatError::RoomNotGranted(_) => StatusCode::FORBIDDEN,
            ChatError::Room(_) | ChatError::Message(_) | ChatError::UnsupportedEvent(_) => {
                StatusCode::BAD_REQUEST
            }
            ChatError::Store(e) => e.status(),
            ChatError::NoticeNotDelivered { .. } | ChatError::RelayFailed(_) => {
                StatusCode::BAD_GATEWAY
            }
            ChatError::RateLimited(_) => StatusCode::TOO_MANY_REQUESTS,
        }
    }

    /// The webhook answer: a connect rejection (MQTT clients get a CONNACK code) or a failure.
    pub fn into_response(self, mqtt: Option<(&MqttContext, u8)>) -> Response<Bytes> {
        let status = self.status();
        if status.is_server_error() {
            tracing::error!(status = status.as_u16(), error = %self, "event failed");
        }
        match mqtt {
            Some(_) => protocol::connect_rejection(status, &self.to_string(), mqtt),
            None => protocol::failure(status, &self.to_string()),
        }
    }
}
