use http::StatusCode;

/// Why a request is not an acceptable Web PubSub webhook. Each variant maps to the status the
/// service (or a human with curl) gets back, and its `Display` is the one-line reason in the body.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ProtocolError {
    #[error("missing header {0}")]
    MissingHeader(&'static str),
    #[error("invalid header {name}: {reason}")]
    InvalidHeader { name: &'static str, reason: String },
    #[error("unknown ce-type {0:?}: expected azure.webpubsub.sys.* or azure.webpubsub.user.*")]
    UnknownType(String),
    #[error("invalid {event} body: {reason}")]
    InvalidBody { event: &'static str, reason: String },
    #[error("unsupported content type {0:?} for a user event")]
    UnsupportedContentType(String),
    #[error("hub {got:?} is not served here (expected {expected:?})")]
    WrongHub { got: String, expected: String },
    #[error("missing ce-signature")]
    MissingSignature,
    #[error("signature validation failed")]
    BadSignature,
    #[error("missing WebHook-Request-Origin")]
    MissingOrigin,
    #[error("origin {0:?} is not allowed")]
    OriginNotAllowed(String),
    #[error("request body too large (limit {limit} bytes)")]
    TooLarge { limit: usize },
    #[error("method {0} not allowed on the event handler")]
    MethodNotAllowed(String),
    /// A body still encoded (compressed): stored as is, it would be garbage.
    #[error("unsupported {header} {value:?}: send the body unencoded (chunked is fine)")]
    UnsupportedEncoding { header: &'static str, value: String },
}

impl ProtocolError {
    pub fn status(&self) -> StatusCode {
        match self {
            ProtocolError::MissingSignature | ProtocolError::BadSignature => {
                StatusCode::UNAUTHORIZED
            }
            ProtocolError::OriginNotAllowed(_) => StatusCode::FORBIDDEN,
            ProtocolError::TooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            ProtocolError::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
            ProtocolError::UnsupportedEncoding { .. } => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            _ => StatusCode::BAD_REQUEST,
        }
    }
}
