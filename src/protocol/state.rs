//! Connection state carried by the service in `ce-connectionState`.
//!
//! Written in the `@azure/web-pubsub-express` format — base64 of one JSON object whose values are
//! plain JSON — so a hub can move between hubhook and the express handler. The .NET SDK's format
//! (each value itself base64 of its JSON) is recognised on read. Like express, an undecodable
//! value reads as empty state rather than failing the event: state is a cache, not an input.

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use serde_json::{Map, Value};

#[derive(Debug, Clone, Default, PartialEq)]
pub struct ConnectionState {
    values: Map<String, Value>,
}

impl ConnectionState {
    pub fn decode(header: &str) -> Self {
        let values = STANDARD
            .decode(header.trim())
            .ok()
            .and_then(|bytes| serde_json::from_slice::<Value>(&bytes).ok())
            .and_then(|v| match v {
                Value::Object(m) => Some(m),
                _ => None,
            })
            .unwrap_or_default();
        let values = if is_dotnet_encoding(&values) {
            values
                .into_iter()
                .filter_map(|(k, v)| {
                    let bytes = STANDARD.decode(v.as_str()?).ok()?;
                    Some((k, serde_json::from_slice(&bytes).ok()?))
                })
                .collect()
        } else {
            values
        };
        ConnectionState { values }
    }

    /// The `ce-connectionState` header value for this state.
    pub fn encode(&self) -> String {
        STANDARD.encode(serde_json::to_vec(&self.values).expect("a JSON map always serialises"))
    }

    pub fn get(&self, key: &str) -> Option<&Value> {
        self.values.get(key)
    }

    pub fn get_str(&self, key: &str) -> Option<&str> {
        self.values.get(key).and_then(Value::as_str)
    }

    pub fn set(&mut self, key: impl Into<String>, value: impl Into<Value>) {
        self.values.insert(key.into(), value.into());
    }

    pub fn remove(&mut self, key: &str) -> Option<Value> {
        self.values.remove(key)
    }

    pub fn is_empty(&self) -> bool {
        self.values.is_empty()
    }
}

/// .NET writes every value as a base64 string of JSON. A state whose values are all strings that
/// decode that way is read as .NET's; express values that happen to be such strings are rare
/// enough (and the .NET reading of them is still their JSON value) that this heuristic is safe.
fn is_dotnet_encoding(values: &Map<String, Value>) -> bool {
    !values.is_empty()
        && values.values().all(|v| {
            v.as_str()
                .filter(|s| !s.is_empty())
                .and_then(|s| STANDARD.decode(s).ok())
                .is_some_and(|b| serde_json::from_slice::<Value>(&b).is_ok())
        })
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
    fn reads_dotnet_format() {
        let s = ConnectionState::decode("eyJyb29tIjoiSW14dlltSjVJZz09IiwibiI6Ik1RPT0ifQ==");
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
}
