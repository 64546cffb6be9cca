//! `protocol::ConnectionState`: `decode` (the express format) and `decode_dotnet` on an arbitrary
//! `ce-connectionState` value, and `encode`.
//!
//! Properties: no panic; whatever either decoder reads, `encode` writes something `decode` reads
//! back as the same state, and re-encoding that is byte-identical; and when the input is itself a
//! JSON object, a state built from it survives `encode` → `decode` unchanged.
#![no_main]

use hubhook::protocol::ConnectionState;
use libfuzzer_sys::fuzz_target;
use serde_json::Value;

fn round_trips(state: &ConnectionState) {
    let encoded = state.encode();
    let back = ConnectionState::decode(&encoded);
    assert_eq!(&back, state, "{encoded}");
    assert_eq!(back.encode(), encoded);
}

fuzz_target!(|data: &[u8]| {
    if let Ok(header) = std::str::from_utf8(data) {
        round_trips(&ConnectionState::decode(header));
        round_trips(&ConnectionState::decode_dotnet(header));
    }
    if let Ok(Value::Object(m)) = serde_json::from_slice::<Value>(data) {
        let mut state = ConnectionState::default();
        for (k, v) in m {
            state.set(k, v);
        }
        round_trips(&state);
    }
});
