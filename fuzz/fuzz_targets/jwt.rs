//! The emulator's token checks (`emulator::auth::verify_client_token` and `verify_rest_token`,
//! through the hidden `emulator::fuzzing` hooks). The first byte picks the mode (seeds start with
//! an ASCII digit, so `'0' % 3 == 0`):
//!
//! * 0 — the rest is an arbitrary token (client check) and `Authorization` value (REST check);
//! * 1 — the rest is a JSON claims value, signed with the emulator's key by `service::sign_jwt`,
//!   so the fuzzer gets past the signature and reaches the expiry and audience checks;
//! * 2 — the first line is a JSON JOSE header, the rest the claims; both are signed with the key
//!   (HS256 over whatever the header says: `alg` confusion).
//!
//! Properties: no panic; a token the checks accept has the claims they require (`exp`, `aud`)
//! and an `HS256` header, and the same token is refused under another key.
#![no_main]

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use hmac::{Hmac, KeyInit, Mac};
use hubhook::emulator::fuzzing::{verify_client_token, verify_rest_token};
use hubhook::service::{sign_jwt, AccessKey};
use libfuzzer_sys::fuzz_target;
use serde_json::Value;
use sha2::Sha256;

const KEY: &str = "ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789ABCDEFGH";
const OTHER: &str = "abcdefghijklmnopqrstuvwxyz0123456789abcdefgh";
const HUB: &str = "chat";
const REST_PATH: &str = "/api/hubs/chat/:send";

fn sign_raw(header: &[u8], claims: &[u8]) -> String {
    let signed = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header),
        URL_SAFE_NO_PAD.encode(claims)
    );
    let mut mac = Hmac::<Sha256>::new_from_slice(KEY.as_bytes()).expect("any key length");
    mac.update(signed.as_bytes());
    format!(
        "{signed}.{}",
        URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes())
    )
}

/// Both checks on a token signed with `KEY`; whatever passes must carry what the checks require.
fn check_signed(token: &str, claims: Option<&Value>, header: Option<&Value>) {
    let client = verify_client_token(KEY, token, HUB);
    let rest = verify_rest_token(KEY, Some(&format!("Bearer {token}")), REST_PATH);
    if client.is_ok() || rest.is_ok() {
        if let Some(claims) = claims {
            assert!(
                claims.get("exp").is_some(),
                "accepted without exp: {claims}"
            );
            assert!(
                claims.get("aud").is_some(),
                "accepted without aud: {claims}"
            );
        }
        if let Some(header) = header {
            assert_eq!(header.get("alg"), Some(&Value::from("HS256")), "{header}");
        }
        assert!(verify_client_token(OTHER, token, HUB).is_err());
        assert!(verify_rest_token(OTHER, Some(&format!("Bearer {token}")), REST_PATH).is_err());
    }
    if let Ok(c) = &client {
        assert!(c.contains_key("aud") && c.contains_key("exp"), "{c:?}");
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    match mode % 3 {
        0 => {
            let Ok(text) = std::str::from_utf8(rest) else {
                return;
            };
            let _ = verify_client_token(KEY, text, HUB);
            let _ = verify_rest_token(KEY, Some(text), REST_PATH);
        }
        1 => {
            let Ok(claims) = serde_json::from_slice::<Value>(rest) else {
                return;
            };
            let token = sign_jwt(&AccessKey::new(KEY), &claims);
            check_signed(&token, Some(&claims), None);
        }
        _ => {
            let (header, claims) = match rest.iter().position(|b| *b == b'\n') {
                Some(i) => (&rest[..i], &rest[i + 1..]),
                None => (rest, &[][..]),
            };
            let token = sign_raw(header, claims);
            let header = serde_json::from_slice::<Value>(header).ok();
            let claims = serde_json::from_slice::<Value>(claims).ok();
            check_signed(&token, claims.as_ref(), header.as_ref());
        }
    }
});
