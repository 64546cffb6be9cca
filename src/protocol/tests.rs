//! Parser tests: the reference's worked examples, every event type, and hostile input.

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue};
use serde_json::json;

use super::*;

const K1: &str = "ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789ABCDEFGH";
const K2: &str = "abcdefghijklmnopqrstuvwxyz0123456789abcdefgh";
const CID: &str = "0f9c97a2f0bf4706afe87a14e0797b11";

fn parser() -> WebhookParser {
    WebhookParser::new("chat", Some(SignatureVerifier::new([K1, K2])))
}

fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
    let mut h = HeaderMap::new();
    for (k, v) in pairs {
        h.append(
            HeaderName::from_bytes(k.as_bytes()).unwrap(),
            HeaderValue::from_str(v).unwrap(),
        );
    }
    h
}

/// The reference's worked `connect` request, byte for byte (header case as in the docs).
fn reference_connect() -> (HeaderMap, Bytes) {
    let h = headers(&[
        ("WebHook-Request-Origin", "contoso.webpubsub.azure.com"),
        ("Content-Type", "application/json; charset=utf-8"),
        ("ce-specversion", "1.0"),
        ("ce-awpsversion", "1.0"),
        ("ce-type", "azure.webpubsub.sys.connect"),
        ("ce-source", "/hubs/chat/client/0f9c97a2f0bf4706afe87a14e0797b11"),
        ("ce-id", "1"),
        ("ce-time", "2024-05-01T10:00:00Z"),
        ("ce-signature", "sha256=8805d739a12d46f22bcb15382a8c1c2bf38ae8f04566017bd613d5ef47cafe2c,sha256=3a56e6c1afb7a7afba9a054ef8589e97442e7bef351f92ebc010953c3848a562"),
        ("ce-userId", "alice"),
        ("ce-connectionId", CID),
        ("ce-hub", "chat"),
        ("ce-eventName", "connect"),
    ]);
    let body = r#"{"claims":{"sub":["alice"],"role":["webpubsub.joinLeaveGroup.lobby"]},
 "query":{"room":["lobby"]},
 "headers":{"Upgrade":["websocket"],"Sec-WebSocket-Version":["13"]},
 "subprotocols":["json.webpubsub.azure.v1"],
 "clientCertificates":[]}"#;
    (h, Bytes::from(body))
}

#[test]
fn parses_the_reference_connect() {
    let (h, b) = reference_connect();
    let w = parser().parse(&h, b).unwrap();
    assert_eq!(w.context.hub, "chat");
    assert_eq!(w.context.connection_id, CID);
    assert_eq!(w.context.user_id.as_deref(), Some("alice"));
    assert_eq!(w.context.ce_id, "1");
    assert_eq!(w.context.event_name, "connect");
    assert_eq!(
        w.context.origin.as_deref(),
        Some("contoso.webpubsub.azure.com")
    );
    let Event::Connect(c) = w.event else {
        panic!("not connect")
    };
    assert_eq!(c.first_claim("sub"), Some("alice"));
    assert_eq!(c.first_query("room"), Some("lobby"));
    assert_eq!(c.headers["Sec-WebSocket-Version"], vec!["13"]);
    assert_eq!(c.subprotocols, vec!["json.webpubsub.azure.v1"]);
    assert!(c.client_certificates.is_empty());
}

#[test]
fn header_names_are_case_insensitive() {
    let (h, b) = reference_connect();
    let mut upper = HeaderMap::new();
    for (k, v) in h.iter() {
        // HeaderName is always lower-case; what matters is that wire case never reached it.
        upper.append(
            HeaderName::from_bytes(k.as_str().to_uppercase().as_bytes()).unwrap(),
            v.clone(),
        );
    }
    assert!(parser().parse(&upper, b).is_ok());
}

#[test]
fn rejects_bad_or_missing_signatures_before_the_body() {
    let (mut h, _) = reference_connect();
    h.remove("ce-signature");
    let e = parser()
        .parse(&h, Bytes::from_static(b"not json"))
        .unwrap_err();
    assert_eq!(
        (e.status().as_u16(), e),
        (401, ProtocolError::MissingSignature)
    );
    h.insert("ce-signature", HeaderValue::from_static("sha256=00"));
    assert_eq!(
        parser().parse(&h, Bytes::new()).unwrap_err(),
        ProtocolError::BadSignature
    );
    // signature of another connection
    h.insert(
        "ce-signature",
        HeaderValue::from_str(&sign([K1], "someone-else")).unwrap(),
    );
    assert_eq!(
        parser().parse(&h, Bytes::new()).unwrap_err(),
        ProtocolError::BadSignature
    );
    // explicitly disabled verification accepts it
    let (mut h, b) = reference_connect();
    h.remove("ce-signature");
    assert!(WebhookParser::new("chat", None).parse(&h, b).is_ok());
}

fn signed(extra: &[(&str, &str)]) -> HeaderMap {
    let sig = sign([K1], CID);
    let mut pairs = vec![
        ("ce-connectionId", CID),
        ("ce-hub", "chat"),
        ("ce-id", "42"),
        ("ce-signature", sig.as_str()),
    ];
    pairs.extend_from_slice(extra);
    headers(&pairs)
}

#[test]
fn parses_connected_disconnected_and_user_events() {
    let p = parser();
    let w = p
        .parse(
            &signed(&[("ce-type", "azure.webpubsub.sys.connected")]),
            Bytes::from_static(b"{}"),
        )
        .unwrap();
    assert_eq!(
        (w.event.clone(), w.context.event_name.as_str()),
        (Event::Connected, "connected")
    );

    let w = p
        .parse(
            &signed(&[
                ("ce-type", "azure.webpubsub.sys.disconnected"),
                ("ce-eventName", "disconnected"),
            ]),
            Bytes::from_static(br#"{"reason":"Connection closed by the client."}"#),
        )
        .unwrap();
    let Event::Disconnected(d) = w.event else {
        panic!()
    };
    assert_eq!(
        d.reason.as_deref(),
        Some("Connection closed by the client.")
    );
    let w = p
        .parse(
            &signed(&[("ce-type", "azure.webpubsub.sys.disconnected")]),
            Bytes::from_static(br#"{"reason":null}"#),
        )
        .unwrap();
    assert_eq!(w.event, Event::Disconnected(DisconnectedRequest::default()));

    for (ct, body, want) in [
        ("text/plain", &b"hi"[..], EventData::Text("hi".into())),
        (
            "text/plain; charset=utf-8",
            b"hi",
            EventData::Text("hi".into()),
        ),
        (
            "application/json",
            br#"{"text":"x"}"#,
            EventData::Json(json!({"text":"x"})),
        ),
        (
            "Application/JSON; charset=UTF-8",
            b"\"s\"",
            EventData::Json(json!("s")),
        ),
        (
            "application/octet-stream",
            &[0u8, 255, 128],
            EventData::Binary(Bytes::from_static(&[0, 255, 128])),
        ),
    ] {
        let w = p
            .parse(
                &signed(&[
                    ("ce-type", "azure.webpubsub.user.echo"),
                    ("ce-eventName", "echo"),
                    ("content-type", ct),
                ]),
                Bytes::copy_from_slice(body),
            )
            .unwrap();
        assert_eq!(
            w.event,
            Event::User(UserEvent {
                name: "echo".into(),
                data: want
            }),
            "{ct}"
        );
    }
}

#[test]
fn reads_connection_state_and_subprotocol() {
    let w = parser()
        .parse(
            &signed(&[
                ("ce-type", "azure.webpubsub.sys.connected"),
                ("ce-subprotocol", "json.reliable.webpubsub.azure.v1"),
                ("ce-connectionState", "eyJyb29tIjoibG9iYnkiLCJuIjoxfQ=="),
            ]),
            Bytes::from_static(b"{}"),
        )
        .unwrap();
    assert_eq!(w.context.state.get_str("room"), Some("lobby"));
    assert_eq!(
        w.context.subprotocol.as_deref(),
        Some("json.reliable.webpubsub.azure.v1")
    );
    assert!(w.context.mqtt.is_none());
}

#[test]
fn parses_mqtt_connect_and_disconnected() {
    let body = br#"{"mqtt":{"protocolVersion":5,"cleanStart":true,"username":null,"password":null,"userProperties":null},
        "claims":{},"query":{},"headers":{},"subprotocols":["mqtt"],"clientCertificates":[{"thumbprint":"ab","content":"PEM"}]}"#;
    let w = parser()
        .parse(
            &signed(&[
                ("ce-type", "azure.webpubsub.sys.connect"),
                ("ce-subprotocol", "mqtt"),
                ("ce-physicalConnectionId", "phys-1"),
            ]),
            Bytes::from_static(body),
        )
        .unwrap();
    let mqtt = w.context.mqtt.clone().unwrap();
    assert_eq!(
        (mqtt.physical_connection_id.as_str(), mqtt.session_id),
        ("phys-1", None)
    );
    let Event::Connect(c) = w.event else { panic!() };
    assert_eq!(c.mqtt.unwrap().protocol_version, 5);
    assert_eq!(c.client_certificates[0].thumbprint, "ab");

    let body = br#"{"reason":null,"mqtt":{"initiatedByClient":true,"disconnectPacket":{"code":0,"userProperties":null}}}"#;
    let w = parser()
        .parse(
            &signed(&[
                ("ce-type", "azure.webpubsub.sys.disconnected"),
                ("ce-subprotocol", "mqtt"),
                ("ce-physicalConnectionId", "phys-1"),
                ("ce-sessionId", "s-1"),
            ]),
            Bytes::from_static(body),
        )
        .unwrap();
    assert_eq!(w.context.mqtt.unwrap().session_id.as_deref(), Some("s-1"));
    let Event::Disconnected(d) = w.event else {
        panic!()
    };
    assert!(d.mqtt.unwrap().initiated_by_client);
}

#[test]
fn tolerant_claim_shapes() {
    let body =
        br#"{"claims":{"sub":"alice","exp":[1700000000],"admin":true,"none":null},"query":null}"#;
    let w = parser()
        .parse(
            &signed(&[("ce-type", "azure.webpubsub.sys.connect")]),
            Bytes::from_static(body),
        )
        .unwrap();
    let Event::Connect(c) = w.event else { panic!() };
    assert_eq!(c.first_claim("sub"), Some("alice"));
    assert_eq!(c.first_claim("exp"), Some("1700000000"));
    assert_eq!(c.first_claim("admin"), Some("true"));
    assert_eq!(c.claims["none"], Vec::<String>::new());
}

// Over 80 lines: one table of hostile inputs and the status each must get, then the header
// cases; split, the table would be scattered.
#[test]
fn hostile_input_gets_typed_errors_not_panics() {
    let p = parser();
    type Case<'a> = (Vec<(&'a str, &'a str)>, &'a [u8], u16);
    let cases: Vec<Case> = vec![
        (
            vec![("ce-type", "azure.webpubsub.sys.connect")],
            b"{\"claims\":{",
            400,
        ),
        (
            vec![("ce-type", "azure.webpubsub.sys.connect")],
            b"[1,2]",
            400,
        ),
        (
            vec![("ce-type", "azure.webpubsub.sys.connect")],
            br#"{"claims":{"sub":{"x":1}}}"#,
            200,
        ),
        (
            vec![("ce-type", "azure.webpubsub.sys.connect")],
            br#"{"subprotocols":"x"}"#,
            400,
        ),
        (
            vec![("ce-type", "azure.webpubsub.sys.connect")],
            b"\xff\xfe",
            400,
        ),
        (
            vec![("ce-type", "azure.webpubsub.sys.disconnected")],
            b"{\"reason\":5}",
            400,
        ),
        (vec![("ce-type", "azure.webpubsub.sys.bogus")], b"{}", 400),
        (vec![("ce-type", "com.example.other")], b"{}", 400),
        (vec![("ce-type", "azure.webpubsub.user.")], b"{}", 400),
        (
            vec![
                ("ce-type", "azure.webpubsub.user.x"),
                ("content-type", "text/plain"),
            ],
            b"\xff\xfe",
            400,
        ),
        (
            vec![
                ("ce-type", "azure.webpubsub.user.x"),
                ("content-type", "application/json"),
            ],
            b"{\"a\":",
            400,
        ),
        (
            vec![
                ("ce-type", "azure.webpubsub.user.x"),
                ("content-type", "image/png"),
            ],
            b"x",
            400,
        ),
        (vec![("ce-type", "azure.webpubsub.user.x")], b"x", 400),
    ];
    for (extra, body, want) in cases {
        let got = match p.parse(&signed(&extra), Bytes::copy_from_slice(body)) {
            Ok(_) => 200,
            Err(e) => {
                assert!(
                    !e.to_string().contains('\n'),
                    "reason must be one line: {e}"
                );
                e.status().as_u16()
            }
        };
        assert_eq!(got, want, "{extra:?} {:?}", String::from_utf8_lossy(body));
    }
    // missing required headers, wrong hub, non-ASCII header values
    let mut h = signed(&[("ce-type", "azure.webpubsub.sys.connected")]);
    h.remove("ce-id");
    assert_eq!(
        p.parse(&h, Bytes::new()).unwrap_err(),
        ProtocolError::MissingHeader("ce-id")
    );
    let mut h = signed(&[("ce-type", "azure.webpubsub.sys.connected")]);
    h.insert("ce-hub", HeaderValue::from_static("other"));
    assert_eq!(
        p.parse(&h, Bytes::new()).unwrap_err().status().as_u16(),
        400
    );
    let mut h = signed(&[("ce-type", "azure.webpubsub.sys.connected")]);
    h.insert("ce-userid", HeaderValue::from_bytes(b"\xff\xfe").unwrap());
    assert!(matches!(
        p.parse(&h, Bytes::new()),
        Err(ProtocolError::InvalidHeader { .. })
    ));
    let mut h = signed(&[]);
    h.insert(
        "ce-type",
        HeaderValue::from_str(&"x".repeat(64 * 1024)).unwrap(),
    );
    assert_eq!(
        p.parse(&h, Bytes::new()).unwrap_err().status().as_u16(),
        400
    );
    assert_eq!(
        p.parse(&HeaderMap::new(), Bytes::new()).unwrap_err(),
        ProtocolError::MissingHeader("ce-type")
    );
}

#[test]
fn builder_and_parser_agree() {
    let mut state = ConnectionState::default();
    state.set("room", "lobby");
    let ctx = EventContext::new("chat", "message", CID, "7")
        .with_user_id(Some("alice"))
        .with_time("2024-05-01T10:00:00Z")
        .with_subprotocol(Some("json.webpubsub.azure.v1"))
        .with_state(state)
        .with_origin("localhost");
    let events = [
        Event::Connect(ConnectRequest {
            subprotocols: vec!["a".into()],
            ..Default::default()
        }),
        Event::Connected,
        Event::Disconnected(DisconnectedRequest {
            reason: Some("bye".into()),
            mqtt: None,
        }),
        Event::User(UserEvent {
            name: "message".into(),
            data: EventData::Text("hi".into()),
        }),
        Event::User(UserEvent {
            name: "message".into(),
            data: EventData::Json(json!({"text":"x"})),
        }),
        Event::User(UserEvent {
            name: "message".into(),
            data: EventData::Binary(Bytes::from_static(b"\0\x01")),
        }),
    ];
    for event in events {
        let mut ctx = ctx.clone();
        if !matches!(event, Event::User(_)) {
            ctx.event_name = event.kind().into();
        }
        let (h, b) = build_webhook(&ctx, &event, &[K2]).unwrap();
        let w = parser().parse(&h, b).unwrap();
        assert_eq!(w.context, ctx);
        assert_eq!(w.event, event);
    }
}

#[test]
fn dotnet_state_is_read_only_when_configured() {
    let h = signed(&[
        ("ce-type", "azure.webpubsub.sys.connected"),
        (
            "ce-connectionState",
            "eyJyb29tIjoiSW14dlltSjVJZz09IiwibiI6Ik1RPT0ifQ==",
        ),
    ]);
    let express = parser().parse(&h, Bytes::from_static(b"{}")).unwrap();
    assert_eq!(express.context.state.get_str("room"), Some("ImxvYmJ5Ig=="));
    let dotnet = parser()
        .with_dotnet_state(true)
        .parse(&h, Bytes::from_static(b"{}"))
        .unwrap();
    assert_eq!(dotnet.context.state.get_str("room"), Some("lobby"));
    assert_eq!(dotnet.context.state.get("n"), Some(&json!(1)));
}

#[test]
fn ids_and_time_are_bounded_at_the_boundary() {
    let p = WebhookParser::new("chat", None);
    let connected = |extra: &[(&str, &str)]| {
        let mut pairs = vec![
            ("ce-type", "azure.webpubsub.sys.connected"),
            ("ce-connectionId", CID),
            ("ce-hub", "chat"),
            ("ce-id", "42"),
        ];
        for (k, _) in extra {
            pairs.retain(|(name, _)| !name.eq_ignore_ascii_case(k));
        }
        pairs.extend_from_slice(extra);
        p.parse(&headers(&pairs), Bytes::new())
    };
    let long_ce_id = "i".repeat(MAX_CE_ID_BYTES + 1);
    let long_cid = "c".repeat(MAX_CONNECTION_ID_BYTES + 1);
    let long_user = "u".repeat(MAX_USER_ID_BYTES + 1);
    for (name, value) in [
        ("ce-id", long_ce_id.as_str()),
        ("ce-connectionId", long_cid.as_str()),
        ("ce-userId", long_user.as_str()),
        ("ce-time", "9999-12-31T23:59:59Z"),
        ("ce-time", "1970-01-01T00:00:00Z"),
        ("ce-time", "01/May/2024:10:00:00 +0000"),
    ] {
        let e = connected(&[(name, value)]).unwrap_err();
        assert_eq!(e.status().as_u16(), 400, "{name}");
        let reason = e.to_string();
        assert!(
            reason.starts_with(&format!("invalid header {name}:")),
            "{reason}"
        );
        assert!(reason.len() < 120, "the value is not echoed: {reason}");
    }
    // At the limits, and a missing or empty ce-time, are fine.
    let ce_id = "i".repeat(MAX_CE_ID_BYTES);
    let user = "u".repeat(MAX_USER_ID_BYTES);
    let w = connected(&[("ce-id", &ce_id), ("ce-userId", &user)]).unwrap();
    assert_eq!((w.context.ce_id.len(), w.context.ce_time), (128, None));
    assert_eq!(connected(&[("ce-time", "")]).unwrap().context.ce_time, None);
    let now = now_rfc3339();
    assert_eq!(
        connected(&[("ce-time", &now)]).unwrap().context.ce_time,
        Some(now.into())
    );

    // The builder refuses what the parser would.
    let ctx = EventContext::new("chat", "connected", CID, "1");
    assert!(build_webhook(&ctx, &Event::Connected, &[]).is_ok());
    for bad in [
        EventContext::new("chat", "connected", long_cid.as_str(), "1"),
        EventContext::new("chat", "connected", CID, long_ce_id.as_str()),
        ctx.clone().with_user_id(Some(&long_user)),
        ctx.clone().with_time("9999-01-01T00:00:00Z"),
    ] {
        assert!(matches!(
            build_webhook(&bad, &Event::Connected, &[]),
            Err(ProtocolError::InvalidHeader { .. })
        ));
    }
    // An empty user id is sent as none.
    let (h, _) = build_webhook(&ctx.with_user_id(Some("")), &Event::Connected, &[]).unwrap();
    assert!(!h.contains_key("ce-userid"));
}

#[test]
fn encoded_bodies_are_refused_with_415() {
    let p = WebhookParser::new("chat", None);
    let user = |extra: &[(&str, &str)]| {
        let mut pairs = vec![
            ("ce-type", "azure.webpubsub.user.message"),
            ("ce-connectionId", CID),
            ("ce-hub", "chat"),
            ("ce-id", "42"),
            ("content-type", "text/plain"),
        ];
        pairs.extend_from_slice(extra);
        p.parse(&headers(&pairs), Bytes::from_static(b"hi"))
    };
    for ok in [
        vec![],
        vec![("transfer-encoding", "chunked")],
        vec![
            ("transfer-encoding", "Chunked"),
            ("content-encoding", "identity"),
        ],
    ] {
        assert!(user(&ok).is_ok(), "{ok:?}");
    }
    for bad in [
        ("transfer-encoding", "gzip, chunked"),
        ("transfer-encoding", "chunked, chunked, br"),
        ("content-encoding", "gzip"),
        ("content-encoding", "identity, deflate"),
    ] {
        let e = user(&[bad]).unwrap_err();
        assert_eq!(e.status().as_u16(), 415, "{bad:?}");
        assert!(matches!(e, ProtocolError::UnsupportedEncoding { .. }));
    }
}
