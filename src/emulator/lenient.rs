//! `deserialize_with` helpers for JSON fields the emulator reads leniently: a field of the wrong
//! type reads as absent, so the operation answers for the missing value (an ack error, a default)
//! instead of the whole frame or body failing to parse.

use serde::{Deserialize, Deserializer};
use serde_json::Value;

pub fn string<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    Ok(match Value::deserialize(d)? {
        Value::String(s) => Some(s),
        _ => None,
    })
}

/// The strings of an array (other items skipped); anything else is empty.
pub fn strings<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    Ok(match Value::deserialize(d)? {
        Value::Array(a) => a
            .into_iter()
            .filter_map(|v| match v {
                Value::String(s) => Some(s),
                _ => None,
            })
            .collect(),
        _ => Vec::new(),
    })
}

/// `true` only for JSON `true`.
pub fn flag<'de, D: Deserializer<'de>>(d: D) -> Result<bool, D::Error> {
    Ok(Value::deserialize(d)? == Value::Bool(true))
}
