//! `protocol::WebhookParser::parse` on an arbitrary header list and body.
//!
//! Input: an HTTP-like text, one `name: value` header per line, a blank line, then the body (the
//! seeds are the reference's worked webhooks). Lines that are not a valid header are skipped, as
//! `http` would refuse them before the parser sees them. Each input is parsed three ways:
//!
//! 1. without a verifier;
//! 2. with a verifier, headers as given (the seeds carry the reference's real signatures);
//! 3. with a verifier, after replacing `ce-signature` with the right one for the input's
//!    `ce-connectionId` — so the fuzzer gets past the signature check every time.
//!
//! Properties: no panic; a correctly signed request parses exactly as the unverified parser
//! parses it (the signature is a gate, nothing more); whatever the verifying parser accepts the
//! unverified one accepts identically; an accepted webhook is for this parser's hub.
#![no_main]

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue};
use hubhook::protocol::{sign, SignatureVerifier, WebhookParser};
use libfuzzer_sys::fuzz_target;

const K1: &str = "ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789ABCDEFGH";
const K2: &str = "abcdefghijklmnopqrstuvwxyz0123456789abcdefgh";

fn split(data: &[u8]) -> (HeaderMap, Bytes) {
    let (head, body) = match find(data, b"\r\n\r\n") {
        Some(i) => (&data[..i], &data[i + 4..]),
        None => match find(data, b"\n\n") {
            Some(i) => (&data[..i], &data[i + 2..]),
            None => (data, &[][..]),
        },
    };
    let mut headers = HeaderMap::new();
    for line in head.split(|b| *b == b'\n') {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let Some(colon) = line.iter().position(|b| *b == b':') else {
            continue;
        };
        let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(line[..colon].trim_ascii()),
            HeaderValue::from_bytes(line[colon + 1..].trim_ascii()),
        ) else {
            continue;
        };
        headers.append(name, value);
    }
    (headers, Bytes::copy_from_slice(body))
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

fuzz_target!(|data: &[u8]| {
    let (mut headers, body) = split(data);
    let open = WebhookParser::new("chat", None);
    let verifying = WebhookParser::new("chat", Some(SignatureVerifier::new([K1, K2])));

    let unverified = open.parse(&headers, body.clone());
    if let Ok(w) = &unverified {
        assert!(w.context.hub.eq_ignore_ascii_case("chat"));
        assert!(!w.context.connection_id.is_empty() && !w.context.ce_id.is_empty());
    }
    // The .NET state format only changes how the state reads.
    let dotnet = open
        .clone()
        .with_dotnet_state(true)
        .parse(&headers, body.clone());
    assert_eq!(dotnet.is_ok(), unverified.is_ok());

    if let Ok(w) = verifying.parse(&headers, body.clone()) {
        assert_eq!(
            Ok(w),
            unverified,
            "accepted only when the open parser agrees"
        );
    }

    // Signed: the service's header for this connection id, one entry per key.
    let Some(connection_id) = headers
        .get("ce-connectionId")
        .and_then(|v| v.to_str().ok())
        .map(|s| s.trim().to_string())
    else {
        return;
    };
    let signature = sign([K1, K2], &connection_id);
    headers.remove("ce-signature");
    headers.insert(
        "ce-signature",
        HeaderValue::from_str(&signature).expect("hex is a valid header"),
    );
    let signed = verifying.parse(&headers, body);
    // ce-signature is read by nothing but the verifier, so the open parser's answer stands.
    assert_eq!(
        signed, unverified,
        "a correctly signed request parses as the unverified one"
    );
});
