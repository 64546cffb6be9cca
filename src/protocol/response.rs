//! What a handler answers to each event, as an `http::Response` any framework can send.

use bytes::Bytes;
use http::{header, HeaderValue, Response, StatusCode};
use serde::Serialize;
use serde_json::Value;

use super::{ConnectionState, EventData, MqttContext};

pub const STATE_HEADER: &str = "ce-connectionstate";
const JSON: &str = "application/json; charset=utf-8";
const TEXT: &str = "text/plain; charset=utf-8";
const BINARY: &str = "application/octet-stream";

/// Accepting a `connect`. Empty fields are omitted: the service treats a missing `subprotocol`
/// as "none chosen", but `""` as an invalid choice.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ConnectResponse {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user_id: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub groups: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub roles: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub subprotocol: Option<String>,
}

impl ConnectResponse {
    /// `state`: the full state to carry from now on (`None` leaves it as it was).
    pub fn into_response(self, state: Option<&ConnectionState>) -> Response<Bytes> {
        if self == ConnectResponse::default() {
            return with_state(plain(StatusCode::NO_CONTENT, None, Bytes::new()), state);
        }
        let body = serde_json::to_vec(&self).expect("connect response serialises");
        with_state(plain(StatusCode::OK, Some(JSON), body.into()), state)
    }
}

/// Refusing a `connect`: the client's WebSocket upgrade fails with this status. The service relays
/// the status; the body is a plain-text reason (JSON with an MQTT CONNACK code for MQTT clients).
pub fn connect_rejection(
    status: StatusCode,
    reason: &str,
    mqtt: Option<(&MqttContext, u8)>,
) -> Response<Bytes> {
    match mqtt {
        None => plain(
            status,
            Some(TEXT),
            Bytes::copy_from_slice(reason.as_bytes()),
        ),
        Some((_, protocol_version)) => {
            let code = mqtt_connack_code(status, protocol_version);
            let body = serde_json::json!({"mqtt": {"code": code, "reason": reason}});
            plain(status, Some(JSON), body.to_string().into())
        }
    }
}

/// MQTT CONNACK reason for an HTTP status (3.1.1 return codes vs MQTT 5 reason codes).
fn mqtt_connack_code(status: StatusCode, protocol_version: u8) -> u8 {
    let v5 = protocol_version >= 5;
    match status.as_u16() {
        401 | 403 => {
            if v5 {
                0x87
            } else {
                5
            }
        }
        400 => {
            if v5 {
                0x85
            } else {
                2
            }
        }
        503 => {
            if v5 {
                0x88
            } else {
                3
            }
        }
        _ => {
            if v5 {
                0x80
            } else {
                3
            }
        }
    }
}

/// The reply to a user event, relayed by the service to the sending client.
pub fn user_event_reply(
    data: Option<&EventData>,
    state: Option<&ConnectionState>,
) -> Response<Bytes> {
    let resp = match data {
        None => plain(StatusCode::NO_CONTENT, None, Bytes::new()),
        Some(EventData::Text(s)) => plain(
            StatusCode::OK,
            Some(TEXT),
            Bytes::copy_from_slice(s.as_bytes()),
        ),
        Some(EventData::Json(v)) => plain(StatusCode::OK, Some(JSON), json_bytes(v)),
        Some(EventData::Binary(b)) => plain(StatusCode::OK, Some(BINARY), b.clone()),
    };
    with_state(resp, state)
}

/// The reply to a user event whose JSON body is already serialised (200, JSON content type):
/// what `user_event_reply` answers for `EventData::Json`, without a `Value` in between.
pub fn json_reply(body: Bytes) -> Response<Bytes> {
    plain(StatusCode::OK, Some(JSON), body)
}

/// `connected` / `disconnected` are notifications: any 2xx will do and the body is ignored.
pub fn notification_ack() -> Response<Bytes> {
    plain(StatusCode::OK, None, Bytes::new())
}

/// A webhook that fails (store down, bad event): status plus a one-line plain-text reason.
pub fn failure(status: StatusCode, reason: &str) -> Response<Bytes> {
    plain(
        status,
        Some(TEXT),
        Bytes::copy_from_slice(reason.as_bytes()),
    )
}

fn json_bytes(v: &Value) -> Bytes {
    serde_json::to_vec(v)
        .expect("a JSON value serialises")
        .into()
}

fn plain(status: StatusCode, content_type: Option<&'static str>, body: Bytes) -> Response<Bytes> {
    let mut r = Response::new(body);
    *r.status_mut() = status;
    if let Some(ct) = content_type {
        r.headers_mut()
            .insert(header::CONTENT_TYPE, HeaderValue::from_static(ct));
    }
    r
}

fn with_state(mut r: Response<Bytes>, state: Option<&ConnectionState>) -> Response<Bytes> {
    if let Some(state) = state {
        let v = HeaderValue::from_str(&state.encode()).expect("base64 is a valid header value");
        r.headers_mut().insert(STATE_HEADER, v);
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connect_body_and_state_match_the_reference() {
        let mut state = ConnectionState::default();
        state.set("room", "lobby");
        state.set("n", 1);
        let r = ConnectResponse {
            user_id: Some("alice".into()),
            groups: vec!["lobby".into()],
            roles: vec!["webpubsub.sendToGroup.lobby".into()],
            subprotocol: Some("json.webpubsub.azure.v1".into()),
        }
        .into_response(Some(&state));
        assert_eq!(r.status(), 200);
        assert_eq!(r.headers()["content-type"], JSON);
        assert_eq!(
            r.headers()["ce-connectionState"],
            "eyJyb29tIjoibG9iYnkiLCJuIjoxfQ=="
        );
        assert_eq!(
            r.body().as_ref(),
            br#"{"userId":"alice","groups":["lobby"],"roles":["webpubsub.sendToGroup.lobby"],"subprotocol":"json.webpubsub.azure.v1"}"#
        );
    }

    #[test]
    fn empty_connect_is_204_and_never_sends_empty_subprotocol() {
        let r = ConnectResponse::default().into_response(None);
        assert_eq!(r.status(), 204);
        assert!(r.body().is_empty());
        let r = ConnectResponse {
            user_id: Some("u".into()),
            ..Default::default()
        }
        .into_response(None);
        assert_eq!(r.body().as_ref(), br#"{"userId":"u"}"#);
    }

    #[test]
    fn user_replies_carry_the_right_content_type() {
        let t = user_event_reply(Some(&EventData::Text("hi".into())), None);
        assert_eq!(
            (
                t.status().as_u16(),
                t.headers()["content-type"].to_str().unwrap()
            ),
            (200, TEXT)
        );
        let j = user_event_reply(Some(&EventData::Json(serde_json::json!({"a":1}))), None);
        assert_eq!(j.headers()["content-type"], JSON);
        assert_eq!(j.body().as_ref(), br#"{"a":1}"#);
        let b = user_event_reply(
            Some(&EventData::Binary(Bytes::from_static(&[0, 255]))),
            None,
        );
        assert_eq!(b.headers()["content-type"], BINARY);
        assert_eq!(user_event_reply(None, None).status(), 204);
    }

    #[test]
    fn rejections_are_plain_text_or_mqtt_json() {
        let r = connect_rejection(StatusCode::UNAUTHORIZED, "invalid token", None);
        assert_eq!(
            (r.status().as_u16(), r.body().as_ref()),
            (401, b"invalid token".as_ref())
        );
        let m = MqttContext {
            physical_connection_id: "p".into(),
            session_id: None,
        };
        let r = connect_rejection(StatusCode::UNAUTHORIZED, "no", Some((&m, 5)));
        let v: Value = serde_json::from_slice(r.body()).unwrap();
        assert_eq!(v["mqtt"]["code"], 0x87);
        let r = connect_rejection(StatusCode::UNAUTHORIZED, "no", Some((&m, 4)));
        let v: Value = serde_json::from_slice(r.body()).unwrap();
        assert_eq!(v["mqtt"]["code"], 5);
    }
}
