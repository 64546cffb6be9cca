//! The emulator's client-frame parser (`emulator::frame::parse`, through the hidden
//! `emulator::fuzzing::client_frame` hook) and the data decoding of the frames that carry data.
//!
//! Properties: no panic; a refused frame closes with 1002 (1003 is for binary frames, which never
//! reach the parser); an accepted frame is a JSON object whose `ackId`, if any, is what the
//! parser reports, and whose `type` is the kind it was parsed as.
#![no_main]

use hubhook::emulator::fuzzing::client_frame;
use libfuzzer_sys::fuzz_target;
use serde_json::Value;

fuzz_target!(|data: &[u8]| {
    match client_frame(data) {
        Err(code) => assert_eq!(code, 1002),
        Ok((ack_id, kind)) => {
            let v: Value = serde_json::from_slice(data).expect("an accepted frame is JSON");
            assert_eq!(v.get("ackId").and_then(Value::as_u64), ack_id);
            assert_eq!(v.get("type").and_then(Value::as_str), Some(kind));
        }
    }
});
