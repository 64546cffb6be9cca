//! Connection state carried by the service in `ce-connectionState`.
//!
//! Written in the `@azure/web-pubsub-express` format — base64 of one JSON object whose values are
//! plain JSON — so a hub can move between hubhook and the express handler. The .NET SDK's format
//! (each value itself base64 of its JSON) is read only when configured: the two cannot be told
//! apart from the bytes (an express value may itself be a base64 string). Like express, an undecodable
//! value reads as empty state rather than failing the event: state is a cache, not an input.

use std::sync::OnceLock;

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use serde_json::{Map, Value};

/// Decoded on first use, at most once: the parser keeps the header text, and a handler that
/// never looks at the state (an echo, a `connected` ack) never pays for base64 + JSON, while
/// one that reads several keys decodes once.
#[derive(Clone, Default)]
pub struct ConnectionState {
    /// The header text and its format, until decoded (`None`: built empty or by `set`). Inline
    /// up to 24 bytes: the base64 of a state like `{"room":"general"}` takes no allocation.
    raw: Option<(super::ShortString, Format)>,
    values: OnceLock<Map<String, Value>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Format {
    Express,
    Dotnet,
}

impl std::fmt::Debug for ConnectionState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConnectionState")
            .field("values", self.values())
            .finish()
    }
}

/// Two states are equal when they hold the same values, however they were read.
impl PartialEq for ConnectionState {
    fn eq(&self, other: &Self) -> bool {
        self.values() == other.values()
    }
}

impl ConnectionState {
    /// Reads the express format. A value that merely looks like base64 stays the string it is.
    pub fn decode(header: &str) -> Self {
        Self::lazy(header, Format::Express)
    }

    /// Reads the .NET SDK's format (each value base64 of its JSON), e.g. for a hub moving from
    /// an ASP.NET Core handler (`HUBHOOK_STATE_FORMAT=dotnet`). Values that are not in that
    /// shape are kept as they are.
    pub fn decode_dotnet(header: &str) -> Self {
        Self::lazy(header, Format::Dotnet)
    }

    fn lazy(header: &str, format: Format) -> Self {
        ConnectionState {
            raw: Some((header.into(), format)),
            values: OnceLock::new(),
        }
    }

    /// The `ce-connectionState` header value for this state.
    pub fn encode(&self) -> String {
        STANDARD.encode(serde_json::to_vec(self.values()).expect("a JSON map always serialises"))
    }
}

impl ConnectionState {
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.values().get(key)
    }

    pub fn get_str(&self, key: &str) -> Option<&str> {
        self.values().get(key).and_then(Value::as_str)
    }

    pub fn set(&mut self, key: impl Into<String>, value: impl Into<Value>) {
        self.values_mut().insert(key.into(), value.into());
    }

    pub fn remove(&mut self, key: &str) -> Option<Value> {
        self.values_mut().remove(key)
    }

    pub fn is_empty(&self) -> bool {
        self.values().is_empty()
    }

    fn values(&self) -> &Map<String, Value> {
        self.values.get_or_init(|| match &self.raw {
            None => Map::new(),
            Some((header, Format::Express)) => decode_object(header),
            Some((header, Format::Dotnet)) => decode_dotnet_values(header),
        })
    }

    fn values_mut(&mut self) -> &mut Map<String, Value> {
        self.values();
        self.values.get_mut().expect("initialised just above")
    }
}

fn decode_dotnet_values(header: &str) -> Map<String, Value> {
    decode_object(header)
        .into_iter()
        .map(|(k, v)| {
            let decoded = v
                .as_str()
                .and_then(|s| STANDARD.decode(s).ok())
                .and_then(|b| serde_json::from_slice::<Value>(&b).ok());
            (k, decoded.unwrap_or(v))
        })
        .collect()
}

fn decode_object(header: &str) -> Map<String, Value> {
    STANDARD
        .decode(header.trim())
        .ok()
        .and_then(|bytes| serde_json::from_slice::<Value>(&bytes).ok())
        .and_then(|v| match v {
            Value::Object(m) => Some(m),
            _ => None,
        })
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn express_format_round_trips_byte_for_byte() {
        let mut s = ConnectionState::default();
        s.set("room", "lobby");
        s.set("n", 1);
        // reference §2.4: express writes exactly this for {"room":"lobby","n":1}
        assert_eq!(s.encode(), "eyJyb29tIjoibG9iYnkiLCJuIjoxfQ==");
        assert_eq!(
            ConnectionState::decode("eyJyb29tIjoibG9iYnkiLCJuIjoxfQ=="),
            s
        );
        assert_eq!(
            ConnectionState::decode("eyJrZXkiOiJhIn0=").get_str("key"),
            Some("a")
        );
    }

    #[test]
    fn reads_dotnet_format_when_asked_and_never_guesses() {
        let dotnet = "eyJyb29tIjoiSW14dlltSjVJZz09IiwibiI6Ik1RPT0ifQ==";
        assert_eq!(
            ConnectionState::decode(dotnet).get_str("room"),
            Some("ImxvYmJ5Ig==")
        );
        let s = ConnectionState::decode_dotnet("eyJyb29tIjoiSW14dlltSjVJZz09IiwibiI6Ik1RPT0ifQ==");
        assert_eq!(s.get_str("room"), Some("lobby"));
        assert_eq!(s.get("n"), Some(&json!(1)));
    }

    #[test]
    fn garbage_reads_as_empty() {
        for h in [
            "",
            "!!!",
            "bm90IGpzb24=",
            "WzEsMl0=",
            "\u{0}\u{ff}",
            "eyJyb29t",
        ] {
            assert!(ConnectionState::decode(h).is_empty(), "{h:?}");
        }
    }

    #[test]
    fn decoded_once_on_first_use_and_set_after_decoding() {
        let mut s = ConnectionState::decode("eyJyb29tIjoibG9iYnkifQ==");
        assert!(s.values.get().is_none(), "not decoded before use");
        assert_eq!(s.get_str("room"), Some("lobby"));
        assert!(s.values.get().is_some());
        // A clone of an undecoded state decodes on its own; `set` keeps the decoded values.
        let mut c = ConnectionState::decode("eyJyb29tIjoibG9iYnkifQ==");
        c.set("n", 1);
        assert_eq!(c.get_str("room"), Some("lobby"));
        s.set("n", 1);
        assert_eq!(s, c);
        assert_eq!(s.encode(), "eyJyb29tIjoibG9iYnkiLCJuIjoxfQ==");
        assert_eq!(s.remove("n"), Some(json!(1)));
        assert_eq!(s, ConnectionState::decode("eyJyb29tIjoibG9iYnkifQ=="));
    }

    #[test]
    fn numbers_survive_encode_then_decode() {
        // fuzz/connection_state: serde_json's default float parsing read `5.5555555555555e69`
        // (what `encode` wrote) one ulp away from the number first read (now `float_roundtrip`).
        let s = ConnectionState::decode(&STANDARD.encode(r#"{"room":555555555555550e55}"#));
        assert!(!s.is_empty());
        assert_eq!(ConnectionState::decode(&s.encode()), s);
    }
}
