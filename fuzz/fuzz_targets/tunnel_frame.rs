//! The tunnel's frame codec (`tunnel::frame`), which both `hubhook tunnel` and the emulator's
//! service side run on every WebSocket frame a peer sends.
//!
//! Properties: no panic; `decode_frame` yields at least one item and only its last may be an
//! error; `decode` is `decode_frame`'s first item; whatever decodes re-encodes to a frame that
//! decodes to the same message, as exactly one message, and re-encoding that is byte-identical.
#![no_main]

use hubhook::tunnel::frame::{decode, decode_frame};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let all = decode_frame(data);
    let (_, before) = all.split_last().expect("at least one item");
    assert!(before.iter().all(Result::is_ok), "an error ends the frame");
    assert_eq!(decode(data), all[0], "decode is decode_frame's first item");
    for m in all.into_iter().flatten() {
        let bytes = m.encode();
        let again = decode_frame(&bytes);
        assert_eq!(again.len(), 1, "one message per encoded frame: {m:?}");
        assert_eq!(again[0].as_ref(), Ok(&m), "decode(encode(m)) == m");
        assert_eq!(m.encode(), bytes, "encoding is deterministic");
        assert_eq!(
            decode(&bytes).map(|d| d.encode()),
            Ok(bytes),
            "re-encoding is byte-identical"
        );
    }
});
