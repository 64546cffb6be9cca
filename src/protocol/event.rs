//! Parsing a CloudEvents (binary mode) webhook into a typed [`Webhook`].

use std::collections::BTreeMap;

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue};
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::Value;

use super::ids::{
    parse_event_time, validate_ce_id, validate_connection_id, validate_user_id, IdError,
};
use super::{ConnectionState, ProtocolError, SignatureVerifier};

pub const TYPE_PREFIX_SYS: &str = "azure.webpubsub.sys.";
pub const TYPE_PREFIX_USER: &str = "azure.webpubsub.user.";

/// A string copied out of a webhook: kept inline, without an allocation, up to 24 bytes (hub
/// and event names, `ce-time`, most user, connection and event ids, short text messages), on
/// the heap beyond (a `String` turned into one keeps its buffer). Seven such strings are copied
/// out of every webhook; as `String`s they were seven allocations and frees a request, ~6% of
/// the W1 echo's CPU (bench/README.md). It derefs to `str`.
pub type ShortString = compact_str::CompactString;

/// What every event of a connection carries in its `ce-*` headers.
#[derive(Debug, Clone, PartialEq)]
pub struct EventContext {
    pub hub: ShortString,
    pub connection_id: ShortString,
    pub user_id: Option<ShortString>,
    pub event_name: ShortString,
    /// CloudEvents id; with the connection id it identifies a delivery, so retries can be deduplicated.
    pub ce_id: ShortString,
    pub ce_time: Option<ShortString>,
    pub subprotocol: Option<ShortString>,
    pub state: ConnectionState,
    pub origin: Option<ShortString>,
    pub mqtt: Option<MqttContext>,
}

impl EventContext {
    /// A context with the four fields every event has; everything optional is unset (no user,
    /// time, subprotocol, origin or MQTT context; empty state). Fill in with the `with_*` methods.
    pub fn new(
        hub: impl Into<ShortString>,
        event_name: impl Into<ShortString>,
        connection_id: impl Into<ShortString>,
        ce_id: impl Into<ShortString>,
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
        self.user_id = user_id.map(ShortString::from);
        self
    }

    pub fn with_time(mut self, ce_time: impl Into<ShortString>) -> Self {
        self.ce_time = Some(ce_time.into());
        self
    }

    pub fn with_subprotocol(mut self, subprotocol: Option<&str>) -> Self {
        self.subprotocol = subprotocol.map(ShortString::from);
        self
    }

    pub fn with_state(mut self, state: ConnectionState) -> Self {
        self.state = state;
        self
    }

    pub fn with_origin(mut self, origin: impl Into<ShortString>) -> Self {
        self.origin = Some(origin.into());
        self
    }

    pub fn with_event_name(mut self, event_name: impl Into<ShortString>) -> Self {
        self.event_name = event_name.into();
        self
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct MqttContext {
    pub physical_connection_id: ShortString,
    /// Absent on `connect`.
    pub session_id: Option<ShortString>,
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
    pub name: ShortString,
    pub data: EventData,
}

/// A user event's payload, typed by the request's media type as the service uploads it.
#[derive(Debug, Clone, PartialEq)]
pub enum EventData {
    Text(ShortString),
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
        let f = Fields::scan(headers)?;
        let ce_type = required(f.ce_type, CE_TYPE)?;
        let connection_id = required(f.connection_id, CE_CONNECTION_ID)?;
        checked(CE_CONNECTION_ID, connection_id, validate_connection_id)?;
        if let Some(verifier) = &self.verifier {
            let lines = headers.get_all(&CE_SIGNATURE).iter().map(|v| v.as_bytes());
            verifier.verify(lines, connection_id)?;
        }
        let hub = required(f.hub, CE_HUB)?;
        if !hub.eq_ignore_ascii_case(&self.hub) {
            return Err(ProtocolError::WrongHub {
                got: hub.to_string(),
                expected: self.hub.clone(),
            });
        }
        let ce_id = required(f.id, CE_ID)?;
        checked(CE_ID, ce_id, validate_ce_id)?;
        let user_id = optional(f.user_id, CE_USER_ID)?.filter(|s| !s.is_empty());
        if let Some(u) = user_id {
            checked(CE_USER_ID, u, validate_user_id)?;
        }
        let ce_time = optional(f.time, CE_TIME)?.filter(|s| !s.is_empty());
        if let Some(t) = ce_time {
            checked(CE_TIME, t, |t| parse_event_time(t).map(drop))?;
        }
        let event_name_header = optional(f.event_name, CE_EVENT_NAME)?;
        let state = optional(f.state, CE_CONNECTION_STATE)?
            .map(|s| {
                if self.dotnet_state {
                    ConnectionState::decode_dotnet(s)
                } else {
                    ConnectionState::decode(s)
                }
            })
            .unwrap_or_default();
        let subprotocol = optional(f.subprotocol, CE_SUBPROTOCOL)?.filter(|s| !s.is_empty());
        let physical = optional(f.physical_connection_id, CE_PHYSICAL_CONNECTION_ID)?;
        let mqtt = match (subprotocol, physical) {
            (Some(p), Some(physical_connection_id)) if p.to_ascii_lowercase().contains("mqtt") => {
                checked(
                    CE_PHYSICAL_CONNECTION_ID,
                    physical_connection_id,
                    validate_connection_id,
                )?;
                let session_id = optional(f.session_id, CE_SESSION_ID)?;
                if let Some(s) = session_id {
                    checked(CE_SESSION_ID, s, validate_connection_id)?;
                }
                Some(MqttContext {
                    physical_connection_id: physical_connection_id.into(),
                    session_id: session_id.map(ShortString::from),
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
                event_name_header
                    .map_or_else(|| sys.to_ascii_lowercase().into(), ShortString::from),
            )
        } else if let Some(name) = strip_prefix_ci(ce_type, TYPE_PREFIX_USER) {
            let name = ShortString::from(event_name_header.unwrap_or(name));
            if name.is_empty() {
                return Err(ProtocolError::InvalidHeader {
                    name: CE_EVENT_NAME,
                    reason: "empty".into(),
                });
            }
            let content_type = optional(f.content_type, CONTENT_TYPE)?.unwrap_or_default();
            let data = user_data(content_type, body)?;
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
                hub: hub.into(),
                connection_id: connection_id.into(),
                user_id: user_id.map(ShortString::from),
                event_name,
                ce_id: ce_id.into(),
                ce_time: ce_time.map(ShortString::from),
                subprotocol: subprotocol.map(ShortString::from),
                state,
                origin: optional(f.origin, WEBHOOK_REQUEST_ORIGIN)?.map(ShortString::from),
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
/// stored still compressed. `header` is the name as errors spell it; `value` one header line.
fn check_coding(
    header: &'static str,
    allowed: &str,
    value: &HeaderValue,
) -> Result<(), ProtocolError> {
    let text = String::from_utf8_lossy(value.as_bytes());
    let ok = text
        .split(',')
        .map(str::trim)
        .all(|coding| coding.is_empty() || coding.eq_ignore_ascii_case(allowed));
    if ok {
        Ok(())
    } else {
        Err(ProtocolError::UnsupportedEncoding {
            header,
            value: text.chars().take(40).collect(),
        })
    }
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

fn user_data(ct: &str, body: Bytes) -> Result<EventData, ProtocolError> {
    // The media type compared in place (no lower-cased copy): `;` ends it, case is ignored.
    let media = ct.split(';').next().unwrap_or("").trim();
    let is = |m: &str| media.eq_ignore_ascii_case(m);
    if is("text/plain") {
        // Checked in place, then copied once.
        std::str::from_utf8(&body)
            .map(|s| EventData::Text(s.into()))
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

/// `s` without `prefix`, ignoring ASCII case. The service sends the prefixes in lower case, so
/// an exact compare (one `memcmp`) answers first; the byte-by-byte case-folding compare only
/// runs for a type in another case or one that has neither prefix.
fn strip_prefix_ci<'a>(s: &'a str, prefix: &str) -> Option<&'a str> {
    s.strip_prefix(prefix).or_else(|| {
        s.get(..prefix.len())
            .filter(|p| p.eq_ignore_ascii_case(prefix))
            .map(|_| &s[prefix.len()..])
    })
}

// The headers the parser reads, as error messages spell them (`http` stores names lower-cased).
const CE_TYPE: &str = "ce-type";
const CE_CONNECTION_ID: &str = "ce-connectionId";
const CE_HUB: &str = "ce-hub";
const CE_ID: &str = "ce-id";
const CE_USER_ID: &str = "ce-userId";
const CE_TIME: &str = "ce-time";
const CE_EVENT_NAME: &str = "ce-eventName";
const CE_CONNECTION_STATE: &str = "ce-connectionState";
const CE_SUBPROTOCOL: &str = "ce-subprotocol";
const CE_PHYSICAL_CONNECTION_ID: &str = "ce-physicalConnectionId";
const CE_SESSION_ID: &str = "ce-sessionId";
const WEBHOOK_REQUEST_ORIGIN: &str = "WebHook-Request-Origin";
const CONTENT_TYPE: &str = "content-type";
static CE_SIGNATURE: HeaderName = HeaderName::from_static("ce-signature");

/// The first value of each header a webhook is read from, found in one pass over the request's
/// headers. Looking each up by name hashed the name and probed the map thirteen times a webhook
/// (~8% of the W1 echo's CPU in perf, `event::optional` + `hash_elem_using`); one walk over the
/// ~15 headers the service sends, matched by name, costs a fraction of that. The encodings are
/// checked on the way, on every line of them.
#[derive(Default)]
struct Fields<'h> {
    ce_type: Option<&'h HeaderValue>,
    connection_id: Option<&'h HeaderValue>,
    hub: Option<&'h HeaderValue>,
    id: Option<&'h HeaderValue>,
    user_id: Option<&'h HeaderValue>,
    time: Option<&'h HeaderValue>,
    event_name: Option<&'h HeaderValue>,
    state: Option<&'h HeaderValue>,
    subprotocol: Option<&'h HeaderValue>,
    physical_connection_id: Option<&'h HeaderValue>,
    session_id: Option<&'h HeaderValue>,
    origin: Option<&'h HeaderValue>,
    content_type: Option<&'h HeaderValue>,
}

impl<'h> Fields<'h> {
    fn scan(headers: &'h HeaderMap) -> Result<Self, ProtocolError> {
        let mut f = Fields::default();
        for (name, value) in headers {
            // The arms are the lower-cased spellings of the names above.
            let slot = match name.as_str() {
                "ce-type" => &mut f.ce_type,
                "ce-connectionid" => &mut f.connection_id,
                "ce-hub" => &mut f.hub,
                "ce-id" => &mut f.id,
                "ce-userid" => &mut f.user_id,
                "ce-time" => &mut f.time,
                "ce-eventname" => &mut f.event_name,
                "ce-connectionstate" => &mut f.state,
                "ce-subprotocol" => &mut f.subprotocol,
                "ce-physicalconnectionid" => &mut f.physical_connection_id,
                "ce-sessionid" => &mut f.session_id,
                "webhook-request-origin" => &mut f.origin,
                "content-type" => &mut f.content_type,
                "transfer-encoding" => {
                    check_coding("Transfer-Encoding", "chunked", value)?;
                    continue;
                }
                "content-encoding" => {
                    check_coding("Content-Encoding", "identity", value)?;
                    continue;
                }
                _ => continue,
            };
            // A repeated header: the first line counts, as `HeaderMap::get` would give.
            slot.get_or_insert(value);
        }
        Ok(f)
    }
}

/// The value is borrowed from the request (trimmed); callers copy what they keep.
fn optional<'h>(
    value: Option<&'h HeaderValue>,
    name: &'static str,
) -> Result<Option<&'h str>, ProtocolError> {
    match value {
        None => Ok(None),
        Some(v) => v
            .to_str()
            .map(|s| Some(s.trim()))
            .map_err(|_| ProtocolError::InvalidHeader {
                name,
                reason: "not visible ASCII".into(),
            }),
    }
}

fn required<'h>(
    value: Option<&'h HeaderValue>,
    name: &'static str,
) -> Result<&'h str, ProtocolError> {
    optional(value, name)?
        .filter(|s| !s.is_empty())
        .ok_or(ProtocolError::MissingHeader(name))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every header the parser reads is found by the scan under the name its errors spell, in
    /// any case the sender used (`http` lower-cases names), and the first of repeated lines counts.
    #[test]
    fn the_scan_finds_every_field_by_its_name() {
        let names = [
            CE_TYPE,
            CE_CONNECTION_ID,
            CE_HUB,
            CE_ID,
            CE_USER_ID,
            CE_TIME,
            CE_EVENT_NAME,
            CE_CONNECTION_STATE,
            CE_SUBPROTOCOL,
            CE_PHYSICAL_CONNECTION_ID,
            CE_SESSION_ID,
            WEBHOOK_REQUEST_ORIGIN,
            CONTENT_TYPE,
        ];
        let mut headers = HeaderMap::new();
        for n in names {
            let name = HeaderName::from_bytes(n.as_bytes()).unwrap();
            headers.append(name.clone(), HeaderValue::from_str(n).unwrap());
            headers.append(name, HeaderValue::from_static("second"));
        }
        let f = Fields::scan(&headers).unwrap();
        let found = [
            f.ce_type,
            f.connection_id,
            f.hub,
            f.id,
            f.user_id,
            f.time,
            f.event_name,
            f.state,
            f.subprotocol,
            f.physical_connection_id,
            f.session_id,
            f.origin,
            f.content_type,
        ];
        for (n, v) in names.iter().zip(found) {
            assert_eq!(v.map(|v| v.to_str().unwrap()), Some(*n), "{n}");
        }
    }
}
