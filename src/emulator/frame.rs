//! What a client of the JSON subprotocols (`json.webpubsub.azure.v1`,
//! `json.reliable.webpubsub.azure.v1`) sends: one JSON object per text frame, told apart by its
//! `type`, with an optional `ackId` on any of them.
//!
//! Fields the service treats as optional read leniently (a mistyped one is absent), so that, as
//! before, a bad `group` or `event` gets an ack error while only a broken frame closes the
//! connection (1002).

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use serde::de::Error as _;
use serde::{Deserialize, Deserializer};
use serde_json::Value;

use super::lenient;
use crate::protocol::EventData;

/// A client frame by its `type`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(tag = "type", rename_all = "camelCase")]
pub enum ClientFrame {
    JoinGroup {
        #[serde(default, deserialize_with = "lenient::string")]
        group: Option<String>,
    },
    LeaveGroup {
        #[serde(default, deserialize_with = "lenient::string")]
        group: Option<String>,
    },
    SendToGroup(GroupMessage),
    Event(UserEvent),
    /// Client 1.0.4 `invokeEvent`: the user-event webhook, answered with `invokeResponse`.
    Invoke(Invocation),
    #[serde(rename_all = "camelCase")]
    SequenceAck {
        sequence_id: u64,
    },
    Ping,
    /// Sent after a failed or abandoned invoke.
    CancelInvocation,
}

impl ClientFrame {
    /// The `type` it came as (for logs).
    pub fn kind(&self) -> &'static str {
        match self {
            ClientFrame::JoinGroup { .. } => "joinGroup",
            ClientFrame::LeaveGroup { .. } => "leaveGroup",
            ClientFrame::SendToGroup(_) => "sendToGroup",
            ClientFrame::Event(_) => "event",
            ClientFrame::Invoke(_) => "invoke",
            ClientFrame::SequenceAck { .. } => "sequenceAck",
            ClientFrame::Ping => "ping",
            ClientFrame::CancelInvocation => "cancelInvocation",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GroupMessage {
    #[serde(default, deserialize_with = "lenient::string")]
    pub group: Option<String>,
    #[serde(default, deserialize_with = "lenient::flag")]
    pub no_echo: bool,
    #[serde(flatten)]
    pub payload: Payload,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct UserEvent {
    #[serde(default, deserialize_with = "lenient::string")]
    pub event: Option<String>,
    #[serde(flatten)]
    pub payload: Payload,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Invocation {
    /// Echoed verbatim in the `invokeResponse`: any JSON value but `null`.
    #[serde(deserialize_with = "non_null")]
    pub invocation_id: Value,
    /// Default `event`, the only target there is.
    #[serde(default, deserialize_with = "lenient::string")]
    pub target: Option<String>,
    #[serde(default, deserialize_with = "lenient::string")]
    pub event: Option<String>,
    #[serde(flatten)]
    pub payload: Payload,
}

/// `data` and its `dataType` (default `json`; `binary` and `protobuf` are base64).
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Payload {
    #[serde(default)]
    pub data: Value,
    #[serde(default, deserialize_with = "lenient::string")]
    pub data_type: Option<String>,
}

/// Why a payload's data cannot be read (a `BadRequest` ack).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DataError {
    #[error("text data must be a string")]
    TextNotString,
    #[error("binary data must be base64")]
    NotBase64,
    #[error("unsupported dataType {0:?}")]
    UnsupportedType(String),
}

impl Payload {
    pub fn decode(self) -> Result<EventData, DataError> {
        match self.data_type.as_deref().unwrap_or("json") {
            "json" => Ok(EventData::Json(self.data)),
            "text" => match self.data {
                Value::String(s) => Ok(EventData::Text(s.into())),
                _ => Err(DataError::TextNotString),
            },
            "binary" | "protobuf" => self
                .data
                .as_str()
                .and_then(|s| B64.decode(s).ok())
                .map(|b| EventData::Binary(b.into()))
                .ok_or(DataError::NotBase64),
            other => Err(DataError::UnsupportedType(other.to_string())),
        }
    }
}

/// Why a frame is not a frame of these protocols: the connection closes with `code()`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("The JSON subprotocols take text frames only.")]
    Binary,
    #[error("Invalid frame: not a JSON object.")]
    NotObject,
    #[error("Invalid frame: ackId must be an unsigned integer.")]
    AckId,
    #[error("Invalid frame: missing \"type\".")]
    MissingType,
    #[error("Invalid frame: unknown type {0:?}.")]
    UnknownType(String),
    #[error("Invalid frame: sequenceAck needs a sequenceId.")]
    NoSequenceId,
    #[error("Invalid frame: invoke needs an invocationId.")]
    NoInvocationId,
}

impl FrameError {
    pub fn code(&self) -> u16 {
        match self {
            FrameError::Binary => 1003,
            _ => 1002,
        }
    }
}

/// A text frame's `ackId` (if any) and the frame. The checks run in this order: a JSON object,
/// the `ackId`, the `type`, then the type's own required field.
pub fn parse(payload: &[u8]) -> Result<(Option<u64>, ClientFrame), FrameError> {
    let frame: Value = serde_json::from_slice(payload)
        .ok()
        .filter(Value::is_object)
        .ok_or(FrameError::NotObject)?;
    let ack_id = match frame.get("ackId") {
        None | Some(Value::Null) => None,
        Some(v) => Some(v.as_u64().ok_or(FrameError::AckId)?),
    };
    let kind = match frame.get("type").and_then(Value::as_str) {
        None | Some("") => return Err(FrameError::MissingType),
        Some(k) => k.to_string(),
    };
    let frame = serde_json::from_value(frame).map_err(|_| match kind.as_str() {
        "sequenceAck" => FrameError::NoSequenceId,
        "invoke" => FrameError::NoInvocationId,
        // Every other type's fields read leniently: only the type itself can be wrong.
        _ => FrameError::UnknownType(kind),
    })?;
    Ok((ack_id, frame))
}

fn non_null<'de, D: Deserializer<'de>>(d: D) -> Result<Value, D::Error> {
    match Value::deserialize(d)? {
        Value::Null => Err(D::Error::custom("null")),
        v => Ok(v),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use serde_json::json;

    fn payload(v: Value) -> Payload {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn data_types() {
        assert_eq!(
            payload(json!({"dataType": "binary", "data": "AQI="})).decode(),
            Ok(EventData::Binary(Bytes::from_static(b"\x01\x02")))
        );
        assert_eq!(
            payload(json!({"data": {"a": 1}})).decode(),
            Ok(EventData::Json(json!({"a": 1})))
        );
        assert_eq!(
            payload(json!({"dataType": 7, "data": null})).decode(),
            Ok(EventData::Json(Value::Null)),
            "a mistyped dataType is the default"
        );
        assert_eq!(
            payload(json!({"dataType": "text", "data": 1})).decode(),
            Err(DataError::TextNotString)
        );
        assert_eq!(
            payload(json!({"dataType": "xml", "data": ""}))
                .decode()
                .unwrap_err()
                .to_string(),
            "unsupported dataType \"xml\""
        );
    }

    fn parsed(v: Value) -> Result<(Option<u64>, ClientFrame), FrameError> {
        parse(v.to_string().as_bytes())
    }

    #[test]
    fn frames_by_type_with_lenient_optional_fields() {
        assert_eq!(
            parsed(json!({"type": "joinGroup", "group": 5, "ackId": 3})),
            Ok((Some(3), ClientFrame::JoinGroup { group: None }))
        );
        assert_eq!(
            parsed(json!({"type": "sequenceAck", "sequenceId": 9, "ackId": null})),
            Ok((None, ClientFrame::SequenceAck { sequence_id: 9 }))
        );
        assert_eq!(
            parsed(json!({"type": "ping", "extra": [1]})),
            Ok((None, ClientFrame::Ping))
        );
        let Ok((_, ClientFrame::SendToGroup(m))) = parsed(
            json!({"type": "sendToGroup", "group": "g", "noEcho": "yes", "dataType": "text", "data": "hi"}),
        ) else {
            panic!("sendToGroup");
        };
        assert_eq!((m.group.as_deref(), m.no_echo), (Some("g"), false));
        assert_eq!(m.payload.decode(), Ok(EventData::Text("hi".into())));
        let Ok((_, ClientFrame::Invoke(i))) =
            parsed(json!({"type": "invoke", "invocationId": "x", "target": 1}))
        else {
            panic!("invoke");
        };
        assert_eq!((i.invocation_id, i.target), (json!("x"), None));
    }

    #[test]
    fn broken_frames_in_the_order_they_are_checked() {
        let cases = [
            (json!([1, 2]), FrameError::NotObject),
            (json!({"ackId": "1"}), FrameError::AckId),
            (json!({"type": "bogus", "ackId": -1}), FrameError::AckId),
            (json!({"group": "g"}), FrameError::MissingType),
            (json!({"type": 0}), FrameError::MissingType),
            (json!({"type": ""}), FrameError::MissingType),
            (
                json!({"type": "launchRockets"}),
                FrameError::UnknownType("launchRockets".into()),
            ),
            (
                json!({"type": "Ping"}),
                FrameError::UnknownType("Ping".into()),
            ),
            (
                json!({"type": "sequenceAck", "sequenceId": -1}),
                FrameError::NoSequenceId,
            ),
            (json!({"type": "sequenceAck"}), FrameError::NoSequenceId),
            (
                json!({"type": "invoke", "invocationId": null}),
                FrameError::NoInvocationId,
            ),
            (json!({"type": "invoke"}), FrameError::NoInvocationId),
        ];
        for (frame, want) in cases {
            assert_eq!(parsed(frame.clone()), Err(want), "{frame}");
        }
        assert_eq!(parse(b"{not json"), Err(FrameError::NotObject));
        assert_eq!(
            FrameError::UnknownType("x".into()).to_string(),
            "Invalid frame: unknown type \"x\"."
        );
    }
}
