//! Parsing a CloudEvents (binary mode) webhook into a typed [`Webhook`].

use std::collections::BTreeMap;

use bytes::Bytes;
use http::{HeaderMap, HeaderName};
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::Value;

use super::ids::{
    parse_event_time, validate_ce_id, validate_connection_id, validate_user_id, IdError,
};
use super::{ConnectionState, ProtocolError, SignatureVerifier};

pub const TYPE_PREFIX_SYS: &str = "azure.webpubsub.sys.";
pub const TYPE_PREFIX_USER: &str = "azure.webpubsub.user.";

/// What every event of a connection carries in its `ce-*` headers.
#[derive(Debug, Clone, PartialEq)]
pub struct EventContext {
    pub hub: String,
    pub connection_id: String,
    pub user_id: Option<String>,
    pub event_name: String,
    /// CloudEvents id; with the connection id it identifies a delivery, so retries can be deduplicated.
    pub ce_id: String,
    pub ce_time: Option<String>,
    pub subprotocol: Option<String>,
    pub state: ConnectionState,
    pub origin: Option<String>,
    pub mqtt: Option<MqttContext>,
}

impl EventContext {
    /// A context with the four fields every event has; everything optional is unset (no user,
    /// time, subprotocol, origin or MQTT context; empty state). Fill in with the `with_*` methods.
    pub fn new(
        hub: impl Into<String>,
        event_name: impl Into<String>,
        connection_id: impl Into<String>,
        ce_id: impl Into<String>,
    ) -> Self {
        EventContext {
            hub: hub.into(),
            connection_id: connection_id.into(),
            user_id: None,
            event_name: event_name.into(),
            ce_id: ce_id.into(),
            ce_time: None,
            subprotocol: None,
            state: ConnectionState::default(),
            origin: None,
            mqtt: None,
        }
    }

    pub fn with_user_id(mut self, user_id: Option<&str>) -> Self {
        self.user_id = user_id.map(String::from);
        self
    }

    pub fn with_time(mut self, ce_time: impl Into<String>) -> Self {
        self.ce_time = Some(ce_time.into());
        self
    }

    pub fn with_subprotocol(mut self, subprotocol: Option<&str>) -> Self {
        self.subprotocol = subprotocol.map(String::from);
        self
    }

    pub fn with_state(mut self, state: ConnectionState) -> Self {
        self.state = state;
        self
    }

    pub fn with_origin(mut self, origin: impl Into<String>) -> Self {
        self.origin = Some(origin.into());
        self
    }

    pub fn with_event_name(mut self, event_name: impl Into<String>) -> Self {
        self.event_name = event_name.into();
        self
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct MqttContext {
    pub physical_connection_id: String,
    /// Absent on `connect`.
    pub session_id: Option<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Webhook {
    pub context: EventContext,
    pub event: Event,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    Connect(ConnectRequest),
    Connected,
    Disconnected(DisconnectedRequest),
    User(UserEvent),
}

impl Event {
    pub fn kind(&self) -> &'static str {
        match self {
            Event::Connect(_) => "connect",
            Event::Connected => "connected",
            Event::Disconnected(_) => "disconnected",
            Event::User(_) => "user",
        }
    }
}

/// Every claim/query/header value is a list in the wire format; single values are tolerated too.
pub type MultiMap = BTreeMap<String, Vec<String>>;

#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ConnectRequest {
    #[serde(default, deserialize_with = "multimap")]
    pub claims: MultiMap,
    #[serde(default, deserialize_with = "multimap")]
    pub query: MultiMap,
    #[serde(default, deserialize_with = "multimap")]
    pub headers: MultiMap,
    #[serde(default, deserialize_with = "null_as_default")]
    pub subprotocols: Vec<String>,
    #[serde(default, deserialize_with = "null_as_default")]
    pub client_certificates: Vec<ClientCertificate>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mqtt: Option<MqttConnectProperties>,
}

impl ConnectRequest {
    pub fn first_claim(&self, name: &str) -> Option<&str> {
        self.claims
            .get(name)
            .and_then(|v| v.first())
            .map(String::as_str)
    }
    pub fn first_query(&self, name: &str) -> Option<&str> {
        self.query
            .get(name)
            .and_then(|v| v.first())
            .map(String::as_str)
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
pub struct ClientCertificate {
    #[serde(default)]
    pub thumbprint: String,
    #[serde(default)]
    pub content: String,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct MqttConnectProperties {
    pub protocol_version: u8,
    #[serde(default)]
    pub username: Option<String>,
    /// base64, as sent.
    #[serde(default)]
    pub password: Option<String>,
    #[serde(default)]
    pub user_properties: Option<Vec<MqttUserProperty>>,
    #[serde(default)]
    pub clean_start: Option<bool>,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
pub struct MqttUserProperty {
    pub name: String,
    pub value: String,
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
pub struct DisconnectedRequest {
    #[serde(default)]
    pub reason: Option<String>,
    #[serde(default)]
    pub mqtt: Option<MqttDisconnected>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MqttDisconnected {
    #[serde(default)]
    pub initiated_by_client: bool,
    #[serde(default)]
    pub disconnect_packet: Option<MqttDisconnectPacket>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MqttDisconnectPacket {
    pub code: u32,
    #[serde(default)]
    pub user_properties: Option<Vec<MqttUserProperty>>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct UserEvent {
    pub name: String,
    pub data: EventData,
}

/// A user event's payload, typed by the request's media type as the service uploads it.
#[derive(Debug, Clone, PartialEq)]
pub enum EventData {
    Text(String),
    Json(Value),
    Binary(Bytes),
}

impl EventData {
    pub fn len(&self) -> usize {
        match self {
            EventData::Text(s) => s.len(),
            EventData::Json(v) => v.to_string().len(),
            EventData::Binary(b) => b.len(),
        }
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

fn null_as_default<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Default + Deserialize<'de>,
{
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

/// Accepts `{"k": ["a","b"]}` as sent, and also `{"k": "a"}` or numbers/bools (stringified), since
/// custom token claims need not be strings.
fn multimap<'de, D: Deserializer<'de>>(d: D) -> Result<MultiMap, D::Error> {
    let raw: Option<BTreeMap<String, Value>> = Option::deserialize(d)?;
    let scalar = |v: Value| match v {
        Value::String(s) => Some(s),
        Value::Null => None,
        other => Some(other.to_string()),
    };
    Ok(raw
        .unwrap_or_default()
        .into_iter()
        .map(|(k, v)| {
            let vals = match v {
                Value::Array(items) => items.into_iter().filter_map(scalar).collect(),
                other => scalar(other).into_iter().collect(),
            };
            (k, vals)
        })
        .collect())
}

/// Parses webhooks for one hub. Holding the verifier here means no code path can obtain a typed
/// event without the signature having been checked (unless verification was explicitly disabled).
#[derive(Debug, Clone)]
pub struct WebhookParser {
    hub: String,
    verifier: Option<SignatureVerifier>,
    dotnet_state: bool,
}

impl WebhookParser {
    /// `verifier: None` disables signature checks (an explicit, logged choice of the caller).
    pub fn new(hub: impl Into<String>, verifier: Option<SignatureVerifier>) -> Self {
        WebhookParser {
            hub: hub.into(),
            verifier,
            dotnet_state: false,
        }
    }

    /// Read `ce-connectionState` in the .NET SDK's encoding (see [`ConnectionState::decode_dotnet`]).
    pub fn with_dotnet_state(mut self, on: bool) -> Self {
        self.dotnet_state = on;
        self
    }

    pub fn hub(&self) -> &str {
        &self.hub
    }

    pub fn verifies_signatures(&self) -> bool {
        self.verifier.is_some()
    }

    /// Parses a `POST`ed webhook. Cheap checks run first, so a forged request costs one HMAC and
    /// never a body parse. Over 80 lines: the order of the checks is the security property, and
    /// it reads best as one sequence.
    ///
    /// Header values are borrowed while they are checked; only what the [`Webhook`] keeps is
    /// copied out (once), and the connection state is kept as text until first read.
    pub fn parse(&self, headers: &HeaderMap, body: Bytes) -> Result<Webhook, ProtocolError> {
        check_encoding(headers)?;
        let ce_type = required(headers, &CE_TYPE)?;
        let connection_id = required(headers, &CE_CONNECTION_ID)?;
        checked(CE_CONNECTION_ID.name, connection_id, validate_connection_id)?;
        if let Some(verifier) = &self.verifier {
            let lines = headers.get_all(&CE_SIGNATURE).iter().map(|v| v.as_bytes());
            verifier.verify(lines, connection_id)?;
        }
        let hub = required(headers, &CE_HUB)?;
        if !hub.eq_ignore_ascii_case(&self.hub) {
            return Err(ProtocolError::WrongHub {
                got: hub.to_string(),
                expected: self.hub.clone(),
            });
        }
        let ce_id = required(headers, &CE_ID)?;
        checked(CE_ID.name, ce_id, validate_ce_id)?;
        let user_id = optional(headers, &CE_USER_ID)?.filter(|s| !s.is_empty());
        if let Some(u) = user_id {
            checked(CE_USER_ID.name, u, validate_user_id)?;
        }
        let ce_time = optional(headers, &CE_TIME)?.filter(|s| !s.is_empty());
        if let Some(t) = ce_time {
            checked(CE_TIME.name, t, |t| parse_event_time(t).map(drop))?;
        }
        let event_name_header = optional(headers, &CE_EVENT_NAME)?;
        let state = optional(headers, &CE_CONNECTION_STATE)?
            .map(|s| {
                if self.dotnet_state {
                    ConnectionState::decode_dotnet(s)
                } else {
                    ConnectionState::decode(s)
                }
            })
            .unwrap_or_default();
        let subprotocol = optional(headers, &CE_SUBPROTOCOL)?.filter(|s| !s.is_empty());
        let physical = optional(headers, &CE_PHYSICAL_CONNECTION_ID)?;
        let mqtt = match (subprotocol, physical) {
            (Some(p), Some(physical_connection_id)) if p.to_ascii_lowercase().contains("mqtt") => {
                checked(
                    CE_PHYSICAL_CONNECTION_ID.name,
                    physical_connection_id,
                    validate_connection_id,
                )?;
                let session_id = optional(headers, &CE_SESSION_ID)?;
                if let Some(s) = session_id {
                    checked(CE_SESSION_ID.name, s, validate_connection_id)?;
                }
                Some(MqttContext {
                    physical_connection_id: physical_connection_id.to_string(),
                    session_id: session_id.map(String::from),
                })
            }
            _ => None,
        };

        let (event, event_name) = if let Some(sys) = strip_prefix_ci(ce_type, TYPE_PREFIX_SYS) {
            let event = match sys.to_ascii_lowercase().as_str() {
                "connect" => Event::Connect(json_body("connect", &body)?),
                "connected" => Event::Connected,
                "disconnected" => {
                    Event::Disconnected(if body.iter().all(u8::is_ascii_whitespace) {
                        DisconnectedRequest::default()
                    } else {
                        json_body("disconnected", &body)?
                    })
                }
                _ => return Err(ProtocolError::UnknownType(ce_type.to_string())),
            };
            (
                event,
                event_name_header.map_or_else(|| sys.to_ascii_lowercase(), String::from),
            )
        } else if let Some(name) = strip_prefix_ci(ce_type, TYPE_PREFIX_USER) {
            let name = event_name_header.unwrap_or(name).to_string();
            if name.is_empty() {
                return Err(ProtocolError::InvalidHeader {
                    name: CE_EVENT_NAME.name,
                    reason: "empty".into(),
                });
            }
            let data = user_data(headers, body)?;
            (
                Event::User(UserEvent {
                    name: name.clone(),
                    data,
                }),
                name,
            )
        } else {
            return Err(ProtocolError::UnknownType(ce_type.to_string()));
        };

        Ok(Webhook {
            context: EventContext {
                hub: hub.to_string(),
                connection_id: connection_id.to_string(),
                user_id: user_id.map(String::from),
                event_name,
                ce_id: ce_id.to_string(),
                ce_time: ce_time.map(String::from),
                subprotocol: subprotocol.map(String::from),
                state,
                origin: optional(headers, &WEBHOOK_REQUEST_ORIGIN)?.map(String::from),
                mqtt,
            },
            event,
        })
    }
}

/// An id or time header checked by its rule (the value is not echoed: it may be huge).
fn checked(
    name: &'static str,
    value: &str,
    rule: impl Fn(&str) -> Result<(), IdError>,
) -> Result<(), ProtocolError> {
    rule(value).map_err(|e| ProtocolError::InvalidHeader {
        name,
        reason: e.to_string(),
    })
}

/// The body must arrive as sent: `Transfer-Encoding` no more than `chunked` (which the server
/// has undone), no `Content-Encoding` but `identity`. A compressed body would otherwise be
/// stored still compressed.
fn check_encoding(headers: &HeaderMap) -> Result<(), ProtocolError> {
    for (header, allowed) in [
        (http::header::TRANSFER_ENCODING, "chunked"),
        (http::header::CONTENT_ENCODING, "identity"),
    ] {
        for v in headers.get_all(&header) {
            let text = String::from_utf8_lossy(v.as_bytes());
            let ok = text
                .split(',')
                .map(str::trim)
                .all(|coding| coding.is_empty() || coding.eq_ignore_ascii_case(allowed));
            if !ok {
                return Err(ProtocolError::UnsupportedEncoding {
                    header: if header == http::header::TRANSFER_ENCODING {
                        "Transfer-Encoding"
                    } else {
                        "Content-Encoding"
                    },
                    value: text.chars().take(40).collect(),
                });
            }
        }
    }
    Ok(())
}

/// The media type of a `content-type` value: lower-cased, parameters dropped.
pub fn media_type(content_type: &str) -> String {
    content_type
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase()
}

fn user_data(headers: &HeaderMap, body: Bytes) -> Result<EventData, ProtocolError> {
    let ct = optional(headers, &CONTENT_TYPE_FIELD)?.unwrap_or_default();
    // The media type compared in place (no lower-cased copy): `;` ends it, case is ignored.
    let media = ct.split(';').next().unwrap_or("").trim();
    let is = |m: &str| media.eq_ignore_ascii_case(m);
    if is("text/plain") {
        // Checked in place, then copied once.
        std::str::from_utf8(&body)
            .map(|s| EventData::Text(s.to_string()))
            .map_err(|_| ProtocolError::InvalidBody {
                event: "user",
                reason: "text/plain body is not UTF-8".into(),
            })
    } else if is("application/json") {
        serde_json::from_slice(&body)
            .map(EventData::Json)
            .map_err(|e| ProtocolError::InvalidBody {
                event: "user",
                reason: format!("invalid JSON: {e}"),
            })
    } else if is("application/octet-stream") {
        Ok(EventData::Binary(body))
    } else {
        Err(ProtocolError::UnsupportedContentType(ct.to_string()))
    }
}

fn json_body<T: for<'de> Deserialize<'de>>(
    event: &'static str,
    body: &[u8],
) -> Result<T, ProtocolError> {
    serde_json::from_slice(body).map_err(|e| ProtocolError::InvalidBody {
        event,
        reason: e.to_string(),
    })
}

fn strip_prefix_ci<'a>(s: &'a str, prefix: &str) -> Option<&'a str> {
    s.get(..prefix.len())
        .filter(|p| p.eq_ignore_ascii_case(prefix))
        .map(|_| &s[prefix.len()..])
}

/// A header the parser reads: its key, built at compile time in the lower case `http` stores
/// names in, and its spelling in error messages. A lookup by `&str` parses and lower-cases the
/// name on every call: for the thirteen lookups of a webhook that was ~5% of the W1 echo's CPU
/// (perf, `http::header::name::HdrName::from_bytes`).
struct Field {
    key: HeaderName,
    name: &'static str,
}

const fn field(name: &'static str, key: &'static str) -> Field {
    Field {
        key: HeaderName::from_static(key),
        name,
    }
}

static CE_TYPE: Field = field("ce-type", "ce-type");
static CE_CONNECTION_ID: Field = field("ce-connectionId", "ce-connectionid");
static CE_SIGNATURE: HeaderName = HeaderName::from_static("ce-signature");
static CE_HUB: Field = field("ce-hub", "ce-hub");
static CE_ID: Field = field("ce-id", "ce-id");
static CE_USER_ID: Field = field("ce-userId", "ce-userid");
static CE_TIME: Field = field("ce-time", "ce-time");
static CE_EVENT_NAME: Field = field("ce-eventName", "ce-eventname");
static CE_CONNECTION_STATE: Field = field("ce-connectionState", "ce-connectionstate");
static CE_SUBPROTOCOL: Field = field("ce-subprotocol", "ce-subprotocol");
static CE_PHYSICAL_CONNECTION_ID: Field =
    field("ce-physicalConnectionId", "ce-physicalconnectionid");
static CE_SESSION_ID: Field = field("ce-sessionId", "ce-sessionid");
static WEBHOOK_REQUEST_ORIGIN: Field = field("WebHook-Request-Origin", "webhook-request-origin");
static CONTENT_TYPE_FIELD: Field = field("content-type", "content-type");

/// The value is borrowed from the request (trimmed); callers copy what they keep.
fn optional<'h>(headers: &'h HeaderMap, field: &Field) -> Result<Option<&'h str>, ProtocolError> {
    match headers.get(&field.key) {
        None => Ok(None),
        Some(v) => v
            .to_str()
            .map(|s| Some(s.trim()))
            .map_err(|_| ProtocolError::InvalidHeader {
                name: field.name,
                reason: "not visible ASCII".into(),
            }),
    }
}

fn required<'h>(headers: &'h HeaderMap, field: &Field) -> Result<&'h str, ProtocolError> {
    optional(headers, field)?
        .filter(|s| !s.is_empty())
        .ok_or(ProtocolError::MissingHeader(field.name))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each field's key is its error-message name in lower case (`from_static` already refuses
    /// an upper-case key at compile time; this catches a key that names another header).
    #[test]
    fn every_field_key_is_its_name_lower_cased() {
        for f in [
            &CE_TYPE,
            &CE_CONNECTION_ID,
            &CE_HUB,
            &CE_ID,
            &CE_USER_ID,
            &CE_TIME,
            &CE_EVENT_NAME,
            &CE_CONNECTION_STATE,
            &CE_SUBPROTOCOL,
            &CE_PHYSICAL_CONNECTION_ID,
            &CE_SESSION_ID,
            &WEBHOOK_REQUEST_ORIGIN,
            &CONTENT_TYPE_FIELD,
        ] {
            assert_eq!(f.key.as_str(), f.name.to_ascii_lowercase(), "{}", f.name);
        }
    }
}
