//! The tunnel's frame codec, both directions (the `hubhook tunnel` client and the emulator's
//! service side): pure, no I/O, never panics on input.
//!
//! One WebSocket binary frame = `u32` little-endian length `N`, then `N` bytes of MessagePack: an
//! array `[type, json, body]` — the message type, a UTF-8 JSON object with the PascalCase fields
//! (`"Type"` always included and equal to the array's type), and the body as `bin` (requests and
//! responses) or `nil`. See `reference/tunnel-protocol.md` §4–§5.
//!
//! Reading is tolerant where the reference marks the service's behaviour unverified: missing
//! fields, extra fields and `null`s are accepted, a header value may be one string instead of an
//! array, the JSON may come as `bin` and the body as `str`, and several messages packed into one
//! frame are all read ([`decode_frame`]). Writing follows what each side's real peer emits: the
//! service's style (every field, `Type` first, `"TracingId":null` last) for service → client
//! messages, the TS client's (`Type` last, no `TracingId`) for [`HttpResponse`].

use bytes::Bytes;
use serde::{Deserialize, Deserializer};
use serde_json::{Map, Value};

/// Headers as the tunnel carries them: name → values, in order, names as sent.
pub type Headers = Vec<(String, Vec<String>)>;

/// A webhook sent down the tunnel (type 1).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct HttpRequest {
    pub ack_id: u64,
    pub local_routing: bool,
    pub channel_name: String,
    pub http_method: String,
    /// An absolute URL (`tunnel:///eventhandler/connect?x=1`, or an http(s) URL).
    pub url: String,
    pub headers: Headers,
    pub body: Bytes,
}

/// The answer to an [`HttpRequest`] (type 2), on the connection it came from.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct HttpResponse {
    pub ack_id: u64,
    pub local_routing: bool,
    pub status_code: u16,
    pub channel_name: String,
    /// More chunks with the same `AckId` follow.
    pub not_completed: bool,
    pub headers: Headers,
    pub body: Bytes,
}

/// `ConnectionReconnect` (6) and `ConnectionRebalance` (8): dial `endpoint` with `target=`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Redirect {
    pub target_id: String,
    pub endpoint: String,
    pub message: String,
}

/// `ConnectionConnected` (10): the service's first frame on every connection.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Connected {
    pub connection_id: String,
    pub user_id: Option<String>,
    pub reconnection_token: Option<String>,
}

/// Every message type of the protocol (types 0, 3, 4 and 9 do not exist).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    HttpRequest(HttpRequest),
    HttpResponse(HttpResponse),
    /// Informational; clients ignore it (also an old tool's keepalive).
    ServiceStatus {
        message: String,
    },
    ConnectionReconnect(Redirect),
    /// Stop this connection for good.
    ConnectionClose {
        message: String,
    },
    ConnectionRebalance(Redirect),
    ConnectionConnected(Connected),
}

impl Message {
    pub fn type_id(&self) -> u64 {
        match self {
            Message::HttpRequest(_) => 1,
            Message::HttpResponse(_) => 2,
            Message::ServiceStatus { .. } => 5,
            Message::ConnectionReconnect(_) => 6,
            Message::ConnectionClose { .. } => 7,
            Message::ConnectionRebalance(_) => 8,
            Message::ConnectionConnected(_) => 10,
        }
    }

    /// One frame: length prefix + `[type, json, body]`.
    pub fn encode(&self) -> Vec<u8> {
        let (json, body) = self.json_and_body();
        let json = Value::Object(json).to_string();
        let mut payload = Vec::with_capacity(json.len() + body.map_or(1, |b| b.len() + 5) + 8);
        // Writing to a Vec cannot fail.
        let _ = rmp::encode::write_array_len(&mut payload, 3);
        let _ = rmp::encode::write_uint(&mut payload, self.type_id());
        let _ = rmp::encode::write_str(&mut payload, &json);
        match body {
            Some(b) => {
                let _ = rmp::encode::write_bin(&mut payload, b);
            }
            None => {
                let _ = rmp::encode::write_nil(&mut payload);
            }
        }
        let mut frame = Vec::with_capacity(payload.len() + 4);
        frame.extend_from_slice(&(payload.len() as u32).to_le_bytes());
        frame.extend_from_slice(&payload);
        frame
    }

    fn json_and_body(&self) -> (Map<String, Value>, Option<&[u8]>) {
        let mut m = Map::new();
        let ty = Value::from(self.type_id());
        let service_style = |m: &mut Map<String, Value>, fields: Vec<(&str, Value)>| {
            m.insert("Type".into(), ty.clone());
            for (k, v) in fields {
                m.insert(k.into(), v);
            }
            m.insert("TracingId".into(), Value::Null);
        };
        let body = match self {
            Message::HttpRequest(r) => {
                service_style(
                    &mut m,
                    vec![
                        ("AckId", r.ack_id.into()),
                        ("HttpMethod", r.http_method.clone().into()),
                        ("Url", r.url.clone().into()),
                        ("Headers", headers_json(&r.headers)),
                        ("LocalRouting", r.local_routing.into()),
                        ("ChannelName", r.channel_name.clone().into()),
                    ],
                );
                Some(&r.body[..])
            }
            Message::HttpResponse(r) => {
                // The TS client's order: constructor fields, then `Type`; no TracingId.
                m.insert("AckId".into(), r.ack_id.into());
                m.insert("LocalRouting".into(), r.local_routing.into());
                m.insert("StatusCode".into(), r.status_code.into());
                m.insert("ChannelName".into(), r.channel_name.clone().into());
                m.insert("NotCompleted".into(), r.not_completed.into());
                m.insert("Headers".into(), headers_json(&r.headers));
                m.insert("Type".into(), ty.clone());
                Some(&r.body[..])
            }
            Message::ServiceStatus { message } | Message::ConnectionClose { message } => {
                service_style(&mut m, vec![("Message", message.clone().into())]);
                None
            }
            Message::ConnectionReconnect(r) | Message::ConnectionRebalance(r) => {
                service_style(
                    &mut m,
                    vec![
                        ("TargetId", r.target_id.clone().into()),
                        ("Endpoint", r.endpoint.clone().into()),
                        ("Message", r.message.clone().into()),
                    ],
                );
                None
            }
            Message::ConnectionConnected(c) => {
                service_style(
                    &mut m,
                    vec![
                        ("ConnectionId", c.connection_id.clone().into()),
                        ("UserId", c.user_id.clone().into()),
                        ("ReconnectionToken", c.reconnection_token.clone().into()),
                    ],
                );
                None
            }
        };
        (m, body)
    }
}

fn headers_json(h: &Headers) -> Value {
    Value::Object(
        h.iter()
            .map(|(k, v)| (k.clone(), Value::from(v.clone())))
            .collect(),
    )
}

/// Why bytes are not a tunnel message. The frame is skipped; the connection goes on.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("frame too short: {0} bytes, the length prefix needs 4")]
    NoLength(usize),
    #[error("frame says {declared} bytes follow, only {actual} do")]
    Truncated { declared: u64, actual: usize },
    #[error("not a MessagePack array of 3: {0}")]
    NotArray(String),
    #[error("message type is not an integer: {0}")]
    BadType(String),
    #[error("unknown message type {0}")]
    UnknownType(u64),
    #[error("the JSON part is not a string: {0}")]
    BadJsonPart(String),
    #[error("the JSON part is not a JSON object: {0}")]
    BadJson(String),
    #[error("the JSON says Type {json}, the frame says {frame}")]
    TypeMismatch { json: i64, frame: u64 },
    #[error("the body is neither bin nor nil: {0}")]
    BadBody(String),
    #[error("{message} without {field}")]
    MissingField {
        message: &'static str,
        field: &'static str,
    },
}

/// Every message in one WebSocket frame (normally one; messages packed back to back are all
/// read). Stops at the first malformed one, which is the last item.
pub fn decode_frame(frame: &[u8]) -> Vec<Result<Message, FrameError>> {
    let mut out = Vec::new();
    let mut rest = frame;
    loop {
        match decode_one(rest) {
            Ok((m, used)) => {
                out.push(Ok(m));
                rest = &rest[used..];
                if rest.is_empty() {
                    return out;
                }
            }
            Err(e) => {
                out.push(Err(e));
                return out;
            }
        }
    }
}

/// The first message of `frame` (anything after it is ignored, as the TS reader does): the
/// entry point for fuzzing.
#[doc(hidden)]
pub fn decode(frame: &[u8]) -> Result<Message, FrameError> {
    decode_one(frame).map(|(m, _)| m)
}

/// One message and the bytes it took (prefix included).
fn decode_one(buf: &[u8]) -> Result<(Message, usize), FrameError> {
    let Some(prefix) = buf.get(..4) else {
        return Err(FrameError::NoLength(buf.len()));
    };
    let declared = u32::from_le_bytes([prefix[0], prefix[1], prefix[2], prefix[3]]) as usize;
    let rest = &buf[4..];
    let Some(mut p) = rest.get(..declared) else {
        return Err(FrameError::Truncated {
            declared: declared as u64,
            actual: rest.len(),
        });
    };
    let len =
        rmp::decode::read_array_len(&mut p).map_err(|e| FrameError::NotArray(e.to_string()))?;
    if len != 3 {
        return Err(FrameError::NotArray(format!("{len} elements")));
    }
    let ty: u64 = rmp::decode::read_int(&mut p).map_err(|e| FrameError::BadType(e.to_string()))?;
    if !matches!(ty, 1 | 2 | 5 | 6 | 7 | 8 | 10) {
        return Err(FrameError::UnknownType(ty));
    }
    let json = read_bytes(&mut p, true).map_err(FrameError::BadJsonPart)?;
    let body = read_bytes(&mut p, false).map_err(FrameError::BadBody)?;
    // Parsed as a value first: serde would read a JSON array into the struct by position.
    let fields = match serde_json::from_slice::<Value>(json.unwrap_or_default()) {
        Ok(v @ Value::Object(_)) => {
            Fields::deserialize(v).map_err(|e| FrameError::BadJson(e.to_string()))?
        }
        Ok(other) => {
            return Err(FrameError::BadJson(format!(
                "{} instead of an object",
                kind(&other)
            )))
        }
        Err(e) => return Err(FrameError::BadJson(e.to_string())),
    };
    if let Some(t) = fields.ty {
        if u64::try_from(t).ok() != Some(ty) {
            return Err(FrameError::TypeMismatch { json: t, frame: ty });
        }
    }
    let body = Bytes::copy_from_slice(body.unwrap_or_default());
    let message = fields.into_message(ty, body)?;
    Ok((message, 4 + declared))
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// A `str`, `bin` or `nil` (`None`) at the front of `p`, its length checked against what is
/// left before anything is taken. `str_first` only words the error.
// The error is a bare detail: the caller wraps it in the `FrameError` of the part it was reading.
fn read_bytes<'a>(p: &mut &'a [u8], str_first: bool) -> Result<Option<&'a [u8]>, String> {
    use rmp::Marker;
    let marker = rmp::decode::read_marker(p).map_err(|_| "missing".to_string())?;
    let width = |p: &mut &'a [u8], n: usize| -> Result<usize, String> {
        let Some(b) = p.get(..n) else {
            return Err("truncated length".into());
        };
        let v = b.iter().fold(0usize, |acc, x| (acc << 8) | usize::from(*x));
        *p = &p[n..];
        Ok(v)
    };
    let len = match marker {
        Marker::Null => return Ok(None),
        Marker::FixStr(n) => usize::from(n),
        Marker::Str8 | Marker::Bin8 => width(p, 1)?,
        Marker::Str16 | Marker::Bin16 => width(p, 2)?,
        Marker::Str32 | Marker::Bin32 => width(p, 4)?,
        other => {
            let want = if str_first { "str" } else { "bin" };
            return Err(format!("{other:?} where {want} was expected"));
        }
    };
    let Some(data) = p.get(..len) else {
        return Err(format!("says {len} bytes, {} remain", p.len()));
    };
    *p = &p[len..];
    Ok(Some(data))
}

/// The JSON part, read leniently: every field optional, `null` = absent, unknown fields ignored.
#[derive(Deserialize, Default)]
#[serde(rename_all = "PascalCase", default)]
struct Fields {
    #[serde(rename = "Type", deserialize_with = "lenient")]
    ty: Option<i64>,
    #[serde(deserialize_with = "lenient")]
    ack_id: Option<u64>,
    #[serde(deserialize_with = "lenient")]
    local_routing: Option<bool>,
    #[serde(deserialize_with = "lenient")]
    channel_name: Option<String>,
    #[serde(deserialize_with = "lenient")]
    http_method: Option<String>,
    #[serde(deserialize_with = "lenient")]
    url: Option<String>,
    #[serde(deserialize_with = "headers")]
    headers: Headers,
    #[serde(deserialize_with = "lenient")]
    status_code: Option<u16>,
    #[serde(deserialize_with = "lenient")]
    not_completed: Option<bool>,
    #[serde(deserialize_with = "lenient")]
    message: Option<String>,
    #[serde(deserialize_with = "lenient")]
    target_id: Option<String>,
    #[serde(deserialize_with = "lenient")]
    endpoint: Option<String>,
    #[serde(deserialize_with = "lenient")]
    connection_id: Option<String>,
    #[serde(deserialize_with = "lenient")]
    user_id: Option<String>,
    #[serde(deserialize_with = "lenient")]
    reconnection_token: Option<String>,
}

/// A value of the wrong JSON type reads as absent.
fn lenient<'de, D: Deserializer<'de>, T: serde::de::DeserializeOwned>(
    d: D,
) -> Result<Option<T>, D::Error> {
    Ok(serde_json::from_value(Value::deserialize(d)?).ok())
}

/// `{"name": ["v1", "v2"]}`; a single string counts as one value, other values are dropped.
fn headers<'de, D: Deserializer<'de>>(d: D) -> Result<Headers, D::Error> {
    let Value::Object(m) = Value::deserialize(d)? else {
        return Ok(Vec::new());
    };
    Ok(m.into_iter()
        .filter_map(|(k, v)| match v {
            Value::String(s) => Some((k, vec![s])),
            Value::Array(a) => Some((
                k,
                a.into_iter()
                    .filter_map(|x| match x {
                        Value::String(s) => Some(s),
                        Value::Number(n) => Some(n.to_string()),
                        _ => None,
                    })
                    .collect(),
            )),
            _ => None,
        })
        .collect())
}

impl Fields {
    fn into_message(self, ty: u64, body: Bytes) -> Result<Message, FrameError> {
        let need = |message, field| FrameError::MissingField { message, field };
        let text = |s: Option<String>| s.unwrap_or_default();
        Ok(match ty {
            1 => Message::HttpRequest(HttpRequest {
                ack_id: self.ack_id.ok_or(need("HttpRequest", "AckId"))?,
                local_routing: self.local_routing.unwrap_or(false),
                channel_name: text(self.channel_name),
                http_method: self.http_method.ok_or(need("HttpRequest", "HttpMethod"))?,
                url: self.url.ok_or(need("HttpRequest", "Url"))?,
                headers: self.headers,
                body,
            }),
            2 => Message::HttpResponse(HttpResponse {
                ack_id: self.ack_id.ok_or(need("HttpResponse", "AckId"))?,
                local_routing: self.local_routing.unwrap_or(false),
                status_code: self.status_code.ok_or(need("HttpResponse", "StatusCode"))?,
                channel_name: text(self.channel_name),
                not_completed: self.not_completed.unwrap_or(false),
                headers: self.headers,
                body,
            }),
            5 => Message::ServiceStatus {
                message: text(self.message),
            },
            7 => Message::ConnectionClose {
                message: text(self.message),
            },
            6 | 8 => {
                let r = Redirect {
                    target_id: text(self.target_id),
                    endpoint: text(self.endpoint),
                    message: text(self.message),
                };
                if ty == 6 {
                    Message::ConnectionReconnect(r)
                } else {
                    Message::ConnectionRebalance(r)
                }
            }
            10 => Message::ConnectionConnected(Connected {
                connection_id: text(self.connection_id),
                user_id: self.user_id,
                reconnection_token: self.reconnection_token,
            }),
            other => return Err(FrameError::UnknownType(other)),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(s: &str) -> Vec<u8> {
        let s: String = s.chars().filter(|c| !c.is_whitespace()).collect();
        hex::decode(s).unwrap()
    }

    /// §4.1, produced by the real service.
    const SERVICE_STATUS: &str = "2e000000 93 05 d929 7b2254797065223a352c224d657373616765223a2261222c2254726163696e674964223a6e756c6c7d c0";

    fn service_request() -> Vec<u8> {
        let json = r#"{"Type":1,"AckId":1,"HttpMethod":"HEAD","Url":"a","Headers":{"a":["b"]},"LocalRouting":true,"ChannelName":"a","TracingId":null}"#;
        let mut v = hex("8a000000 93 01 d9 7f");
        v.extend_from_slice(json.as_bytes());
        v.extend_from_slice(&hex("c405"));
        v.extend_from_slice(b"Hello");
        v
    }

    /// §4.1, as the TS client writes it.
    const CLIENT_RESPONSE: &str = "98000000 9302 d990 7b2241636b4964223a372c224c6f63616c526f7574696e67223a66616c73652c22537461747573436f6465223a3230302c224368616e6e656c4e616d65223a226368616e2d31222c224e6f74436f6d706c65746564223a66616c73652c2248656164657273223a7b22636f6e74656e742d74797065223a5b22746578742f706c61696e225d7d2c2254797065223a327d c4026f6b";

    #[test]
    fn service_status_vector_both_ways() {
        let bytes = hex(SERVICE_STATUS);
        assert_eq!(bytes.len(), 50);
        let m = decode(&bytes).unwrap();
        assert_eq!(
            m,
            Message::ServiceStatus {
                message: "a".into()
            }
        );
        assert_eq!(m.encode(), bytes);
    }

    #[test]
    fn service_http_request_vector_both_ways() {
        let bytes = service_request();
        assert_eq!(bytes.len(), 142);
        let m = decode(&bytes).unwrap();
        let want = HttpRequest {
            ack_id: 1,
            local_routing: true,
            channel_name: "a".into(),
            http_method: "HEAD".into(),
            url: "a".into(),
            headers: vec![("a".into(), vec!["b".into()])],
            body: Bytes::from_static(b"Hello"),
        };
        assert_eq!(m, Message::HttpRequest(want));
        assert_eq!(
            m.encode(),
            bytes,
            "the emulator writes what the service writes"
        );
    }

    #[test]
    fn client_http_response_vector_both_ways() {
        let bytes = hex(CLIENT_RESPONSE);
        assert_eq!(bytes.len(), 156);
        let resp = HttpResponse {
            ack_id: 7,
            local_routing: false,
            status_code: 200,
            channel_name: "chan-1".into(),
            not_completed: false,
            headers: vec![("content-type".into(), vec!["text/plain".into()])],
            body: Bytes::from_static(b"ok"),
        };
        assert_eq!(decode(&bytes).unwrap(), Message::HttpResponse(resp.clone()));
        assert_eq!(Message::HttpResponse(resp.clone()).encode(), bytes);
        // Empty body, 204: `c4 00`, not nil.
        let empty = Message::HttpResponse(HttpResponse {
            status_code: 204,
            body: Bytes::new(),
            ..resp
        })
        .encode();
        assert!(empty.ends_with(br#","Type":2}"#.as_slice().iter().chain(&[0xc4, 0x00]).copied().collect::<Vec<_>>().as_slice()));
        assert!(
            matches!(decode(&empty), Ok(Message::HttpResponse(r)) if r.status_code == 204 && r.body.is_empty())
        );
    }

    #[test]
    fn every_message_round_trips() {
        let redirect = Redirect {
            target_id: "instance-B".into(),
            endpoint: "http://127.0.0.1:1".into(),
            message: "move".into(),
        };
        for m in [
            Message::HttpRequest(HttpRequest {
                ack_id: u64::from(u32::MAX) + 5,
                url: "tunnel:///eventhandler?code=x".into(),
                http_method: "POST".into(),
                body: Bytes::from(vec![7u8; 70_000]),
                ..Default::default()
            }),
            Message::HttpResponse(HttpResponse {
                not_completed: true,
                status_code: 502,
                ..Default::default()
            }),
            Message::ServiceStatus {
                message: "é".repeat(200),
            },
            Message::ConnectionReconnect(redirect.clone()),
            Message::ConnectionClose {
                message: "bye".into(),
            },
            Message::ConnectionRebalance(redirect),
            Message::ConnectionConnected(Connected {
                connection_id: "c1".into(),
                user_id: Some("tunnel-id".into()),
                reconnection_token: None,
            }),
        ] {
            let bytes = m.encode();
            assert_eq!(decode(&bytes).unwrap(), m);
            let json_has_type =
                String::from_utf8_lossy(&bytes).contains(&format!("\"Type\":{}", m.type_id()));
            assert!(json_has_type, "{m:?}");
        }
        let c = Message::ConnectionConnected(Connected::default()).encode();
        assert!(String::from_utf8_lossy(&c).contains(r#"{"Type":10,"ConnectionId":"","UserId":null,"ReconnectionToken":null,"TracingId":null}"#));
    }

    fn frame(ty: u8, json: &str, body: &[u8]) -> Vec<u8> {
        let mut p = vec![0x93, ty];
        rmp::encode::write_str(&mut p, json).unwrap();
        p.extend_from_slice(body);
        let mut f = (p.len() as u32).to_le_bytes().to_vec();
        f.extend(p);
        f
    }

    #[test]
    fn tolerant_reading() {
        // No Type in the JSON, nulls, extra fields, a header as one string, camel case ignored.
        let f = frame(
            1,
            r#"{"AckId":3,"HttpMethod":"POST","Url":"tunnel:///x","Headers":{"h":"v","n":null},"LocalRouting":null,"Extra":{"a":1}}"#,
            &[0xc0],
        );
        let Message::HttpRequest(r) = decode(&f).unwrap() else {
            panic!()
        };
        assert_eq!(
            (r.ack_id, r.headers, r.body.len()),
            (3, vec![("h".into(), vec!["v".into()])], 0)
        );
        // Body as str, trailing bytes after the message ignored by `decode`.
        let mut f = frame(5, r#"{"Message":"m"}"#, &[0xa1, b'x']);
        f.extend_from_slice(b"junk");
        assert!(decode(&f).is_ok());
        // Two messages in one frame: both read, then the malformed tail reported.
        let mut two = frame(5, "{}", &[0xc0]);
        two.extend(frame(7, "{}", &[0xc0]));
        let all = decode_frame(&two);
        assert_eq!(all.len(), 2);
        assert!(all.iter().all(Result::is_ok));
        two.extend_from_slice(&[1, 0]);
        let all = decode_frame(&two);
        assert_eq!(all.len(), 3);
        assert!(matches!(all[2], Err(FrameError::NoLength(2))));
    }

    #[test]
    fn malformed_frames_are_typed_errors() {
        type Check = fn(&FrameError) -> bool;
        let cases: Vec<(Vec<u8>, Check)> = vec![
            (vec![], |e| matches!(e, FrameError::NoLength(0))),
            (vec![5, 0, 0], |e| matches!(e, FrameError::NoLength(3))),
            (vec![0xff, 0xff, 0xff, 0xff, 0x93], |e| {
                matches!(e, FrameError::Truncated { .. })
            }),
            (vec![1, 0, 0, 0, 0x92], |e| {
                matches!(e, FrameError::NotArray(_))
            }),
            (vec![1, 0, 0, 0, 0xc1], |e| {
                matches!(e, FrameError::NotArray(_))
            }),
            (vec![2, 0, 0, 0, 0x93, 0xa0], |e| {
                matches!(e, FrameError::BadType(_))
            }),
            (frame(3, "{}", &[0xc0]), |e| {
                matches!(e, FrameError::UnknownType(3))
            }),
            (frame(0, "{}", &[0xc0]), |e| {
                matches!(e, FrameError::UnknownType(0))
            }),
            (frame(5, "[1]", &[0xc0]), |e| {
                matches!(e, FrameError::BadJson(_))
            }),
            (frame(5, "{", &[0xc0]), |e| {
                matches!(e, FrameError::BadJson(_))
            }),
            (frame(5, r#"{"Type":7}"#, &[0xc0]), |e| {
                matches!(e, FrameError::TypeMismatch { .. })
            }),
            (frame(5, "{}", &[0x01]), |e| {
                matches!(e, FrameError::BadBody(_))
            }),
            (frame(5, "{}", &[0xc6, 0xff, 0xff, 0xff, 0xff]), |e| {
                matches!(e, FrameError::BadBody(_))
            }),
            (frame(5, "{}", &[]), |e| matches!(e, FrameError::BadBody(_))),
            (
                frame(1, r#"{"HttpMethod":"GET","Url":"x"}"#, &[0xc0]),
                |e| matches!(e, FrameError::MissingField { field: "AckId", .. }),
            ),
            (frame(2, r#"{"AckId":1}"#, &[0xc0]), |e| {
                matches!(
                    e,
                    FrameError::MissingField {
                        field: "StatusCode",
                        ..
                    }
                )
            }),
            (hex("0400000093 05 dbff"), |e| {
                matches!(e, FrameError::BadJsonPart(_))
            }),
            (hex("0700000093 05 dbffffffff00"), |e| {
                matches!(e, FrameError::BadJsonPart(_))
            }),
        ];
        for (bytes, ok) in cases {
            let e = decode(&bytes).unwrap_err();
            assert!(ok(&e), "{bytes:02x?}: {e}");
        }
    }

    #[test]
    fn every_prefix_and_bit_flip_of_the_vectors_is_an_answer_not_a_panic() {
        for v in [hex(SERVICE_STATUS), service_request(), hex(CLIENT_RESPONSE)] {
            for n in 0..v.len() {
                let _ = decode_frame(&v[..n]);
            }
            for i in 0..v.len() {
                for bit in 0..8 {
                    let mut w = v.clone();
                    w[i] ^= 1 << bit;
                    let _ = decode_frame(&w);
                }
            }
        }
    }
}
