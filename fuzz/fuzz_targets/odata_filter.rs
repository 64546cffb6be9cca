//! `emulator::Filter::parse` (the REST API's OData `filter`) on arbitrary text, then `eval` of
//! whatever parses against a few connections.
//!
//! Properties: no panic (nor a stack overflow: nesting is bounded); `not (f)` evaluates to the
//! negation of `f`; `f or true` is true and `f and false` is false.
#![no_main]

use std::collections::HashMap;

use hubhook::emulator::Filter;
use libfuzzer_sys::fuzz_target;
use serde_json::{json, Value};

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(filter) = Filter::parse(s) else {
        return;
    };
    let connections: [HashMap<&str, Value>; 3] = [
        HashMap::from([
            ("userid", json!("alice")),
            ("connectionid", json!("0f9c97a2f0bf4706afe87a14e0797b11")),
            ("groups", json!(["lobby", "g1"])),
        ]),
        HashMap::from([
            ("userid", Value::Null),
            ("connectionid", json!("c2")),
            ("groups", json!([])),
        ]),
        HashMap::new(),
    ];
    // Derived filters are only built when the original is short enough to stay under the
    // parser's own limits once wrapped.
    let derived = (s.len() < 1000).then(|| {
        (
            Filter::parse(&format!("not ({s})")).ok(),
            Filter::parse(&format!("({s}) or true")).ok(),
            Filter::parse(&format!("({s}) and false")).ok(),
        )
    });
    for vars in &connections {
        let v = filter.eval(vars);
        if let Some((not, or_true, and_false)) = &derived {
            if let Some(not) = not {
                assert_eq!(not.eval(vars), !v, "not ({s})");
            }
            if let Some(f) = or_true {
                assert!(f.eval(vars), "({s}) or true");
            }
            if let Some(f) = and_false {
                assert!(!f.eval(vars), "({s}) and false");
            }
        }
    }
});
