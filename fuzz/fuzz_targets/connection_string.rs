//! `service::ConnectionString::parse` on arbitrary text.
//!
//! Properties: no panic; the outcome does not depend on the AccessKey's value, only on it being
//! empty — the input with every non-empty AccessKey value swapped for a canary gives the same
//! error (or the same endpoint) — and the canary never appears in the error text or the `Debug`
//! output, so neither can the real key (unless the input also writes it outside `AccessKey=`); a
//! parsed string round-trips through `to_secret_string`.
#![no_main]

use hubhook::service::ConnectionString;
use libfuzzer_sys::fuzz_target;

const CANARY: &str = "CANARY-not-the-key";

/// The input with every `AccessKey=` value (as `parse` reads it: trimmed, after the first `=`)
/// replaced by `with`, keeping empty values empty; the last non-empty such value; and the other
/// segments.
fn swap_keys(s: &str, with: &str) -> (String, Option<String>, String) {
    let mut key = None;
    let mut rest = String::new();
    let swapped = s
        .split(';')
        .map(|part| {
            let is_key = part
                .split_once('=')
                .filter(|(k, _)| k.trim().eq_ignore_ascii_case("accesskey"));
            match is_key {
                Some((k, v)) if !v.trim().is_empty() => {
                    key = Some(v.trim().to_string());
                    format!("{k}={with}")
                }
                _ => {
                    rest.push_str(part);
                    rest.push(';');
                    part.to_string()
                }
            }
        })
        .collect::<Vec<_>>()
        .join(";");
    (swapped, key, rest)
}

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    let parsed = ConnectionString::parse(s);
    let (swapped, key, rest) = swap_keys(s, CANARY);
    let Some(key) = key else {
        if let Ok(cs) = &parsed {
            panic!("parsed {cs:?} without an AccessKey");
        }
        return;
    };
    let with_canary = ConnectionString::parse(&swapped);
    // hubhook refuses an endpoint that carries its own access key (a pasted key must not end up
    // in a URL or a log), so where the key or the canary also stands outside `AccessKey=` the
    // outcome rightly depends on the key's value: only "no panic" holds there. Compared without
    // case, and on the endpoint as kept too: it is checked again once its host is lower-cased and
    // `Port=` applied, where a key can appear that the text spelled differently.
    let (rest_lc, key_lc) = (rest.to_ascii_lowercase(), key.to_ascii_lowercase());
    let kept = with_canary
        .as_ref()
        .map_or(String::new(), |c| c.origin().to_string());
    if rest_lc.contains(&key_lc)
        || rest_lc.contains(&CANARY.to_ascii_lowercase())
        || (key.len() >= 16 && kept.contains(&key))
    {
        return;
    }

    match (&parsed, &with_canary) {
        (Ok(cs), Ok(canary)) => {
            assert_eq!(cs.access_key.expose(), key);
            assert_eq!(canary.access_key.expose(), CANARY);
            assert_eq!(cs.origin(), canary.origin());
            let text = cs.to_secret_string();
            let again = ConnectionString::parse(&text)
                .unwrap_or_else(|e| panic!("{text:?} does not parse again: {e}"));
            assert_eq!(again.origin(), cs.origin(), "{text:?}");
            assert_eq!(again.access_key, cs.access_key, "{text:?}");
            let debug = format!("{canary:?}");
            assert!(!debug.contains(CANARY), "{debug}");
        }
        (Err(e), Err(canary)) => {
            // The error is the same whatever the key is...
            assert_eq!(e, canary, "the error depends on the key's value");
            // ...and it never shows the key.
            let text = canary.to_string();
            assert!(!text.contains(CANARY), "{text:?} leaks the key");
        }
        (a, b) => panic!("the outcome depends on the key's value: {a:?} vs {b:?}"),
    }
});
