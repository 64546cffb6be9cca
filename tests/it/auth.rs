//! Sign-in for the browser-facing routes (`HUBHOOK_AUTH`): a local OpenID Connect provider
//! stand-in (discovery document + JWKS with two RSA keys and a P-256 key from
//! `tests/it/fixtures/oidc/`, DER), tokens signed in the test, key rotation, every refusal, the
//! JWKS endpoint down, CORS preflight, and the `off` mode.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{json, Value};

use crate::support::*;

const AUDIENCE: &str = "chat-app";

fn fixture(name: &str) -> Vec<u8> {
    std::fs::read(format!(
        "{}/tests/it/fixtures/oidc/{name}",
        env!("CARGO_MANIFEST_DIR")
    ))
    .unwrap()
}

/// The public JWK of a fixture key (`rsa1`, `rsa2`, `ec1`) with `kid`.
fn jwk(key: &str, kid: &str) -> Value {
    let all: Value = serde_json::from_slice(&fixture("jwks.json")).unwrap();
    let mut k = all[key].clone();
    k["kid"] = kid.into();
    k
}

/// A provider stand-in: `/.well-known/openid-configuration` and `/keys`, the key set changeable
/// while it runs, and `/keys` answering 503 while `down`.
struct Provider {
    server: StandIn,
    keys: Arc<Mutex<Vec<Value>>>,
    down: Arc<AtomicBool>,
}

impl Provider {
    async fn start(keys: Vec<Value>) -> Provider {
        let set = Arc::new(Mutex::new(keys));
        let down = Arc::new(AtomicBool::new(false));
        let base = Arc::new(OnceLock::<String>::new());
        let (s, d, b) = (set.clone(), down.clone(), base.clone());
        let server = StandIn::start(
            Script::handler(move |r| match r.path.as_str() {
                "/.well-known/openid-configuration" => {
                    let base = b.get().unwrap();
                    Some(reply(200).json(json!({
                        "issuer": base, "jwks_uri": format!("{base}/keys"),
                        "id_token_signing_alg_values_supported": ["RS256", "ES256", "PS256"],
                    })))
                }
                "/keys" if !d.load(Ordering::SeqCst) => {
                    Some(reply(200).json(json!({ "keys": *s.lock().unwrap() })))
                }
                _ => None,
            })
            .or_status(503),
        )
        .await;
        base.set(format!("http://127.0.0.1:{}", server.addr.port()))
            .unwrap();
        Provider {
            server,
            keys: set,
            down,
        }
    }

    fn issuer(&self) -> String {
        format!("http://127.0.0.1:{}", self.server.addr.port())
    }

    fn key_fetches(&self) -> usize {
        self.server.count(|r| r.path == "/keys")
    }

    fn discoveries(&self) -> usize {
        self.server.count(|r| r.path.starts_with("/.well-known/"))
    }

    /// Claims valid now: `iss`, `aud`, `sub`, `exp` in five minutes.
    fn claims(&self, sub: &str) -> Value {
        let now = now();
        json!({ "iss": self.issuer(), "aud": AUDIENCE, "sub": sub, "iat": now, "exp": now + 300 })
    }
}

fn now() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

/// A token signed by fixture key `key` (`rsa1`, `rsa2`, `ec1`) under `kid`.
fn sign(key: &str, kid: &str, alg: Algorithm, claims: &Value) -> String {
    let der = fixture(&format!("{key}.der"));
    let enc = match alg {
        Algorithm::ES256 => EncodingKey::from_ec_der(&der),
        _ => EncodingKey::from_rsa_der(&der),
    };
    let mut h = Header::new(alg);
    h.kid = Some(kid.into());
    jsonwebtoken::encode(&h, claims, &enc).unwrap()
}

/// A token whose header and payload are as given, with `sig` as the signature part.
fn raw_token(header: Value, claims: &Value, sig: &str) -> String {
    let b = |v: &Value| URL_SAFE_NO_PAD.encode(v.to_string());
    format!("{}.{}.{sig}", b(&header), b(claims))
}

async fn oidc_app(p: &Provider, tweak: impl FnOnce(&mut hubhook::config::ServeArgs)) -> TestApp {
    let issuer = p.issuer();
    spawn_app_with(move |a| {
        a.auth = Some("oidc".into());
        a.auth_issuer = Some(issuer);
        a.auth_audience = Some(AUDIENCE.into());
        tweak(a);
    })
    .await
}

impl TestApp {
    async fn get_as(&self, path: &str, token: Option<&str>) -> (u16, String) {
        let mut r = self.http.get(self.url(path));
        if let Some(t) = token {
            r = r.bearer_auth(t);
        }
        let r = r.send().await.unwrap();
        (r.status().as_u16(), r.text().await.unwrap())
    }
}

#[tokio::test]
async fn oidc_tokens_sign_in_and_every_refusal_is_401() {
    let p = Provider::start(vec![jwk("rsa1", "k1"), jwk("ec1", "e1")]).await;
    let app = oidc_app(&p, |a| a.auth_rooms_claim = Some("rooms".into())).await;
    assert_eq!(
        p.discoveries(),
        0,
        "keys are fetched on first need, not at start"
    );

    // No token: 401 with a challenge.
    let r = app.http.get(app.url("/negotiate")).send().await.unwrap();
    assert_eq!(r.status(), 401);
    assert_eq!(
        r.headers()["www-authenticate"],
        "Bearer error=\"invalid_token\""
    );
    assert!(r.text().await.unwrap().starts_with("sign-in required"));

    // RS256, PS256 (same RSA key, its JWK names no alg) and ES256: the user is the token's.
    let mut alice = p.claims("alice");
    alice["rooms"] = json!(["lobby", "r1"]);
    for (key, kid, alg) in [
        ("rsa1", "k1", Algorithm::RS256),
        ("rsa1", "k1", Algorithm::PS256),
        ("ec1", "e1", Algorithm::ES256),
    ] {
        let t = sign(key, kid, alg, &alice);
        let (status, body) = app
            .get_as("/negotiate?room=r1&userId=mallory", Some(&t))
            .await;
        assert_eq!(status, 200, "{alg:?}: {body}");
        let v: Value = serde_json::from_str(&body).unwrap();
        let claims = verify_jwt(&format!("Bearer {}", v["token"].as_str().unwrap()), KEY);
        assert_eq!(claims["sub"], "alice", "the query's userId is ignored");
    }
    assert_eq!((p.discoveries(), p.key_fetches()), (1, 1), "keys cached");

    // Rooms claim: history and presence of a listed room only.
    let t = sign("rsa1", "k1", Algorithm::RS256, &alice);
    assert_eq!(
        app.get_as("/api/messages?room=lobby", Some(&t)).await.0,
        200
    );
    assert_eq!(app.get_as("/api/rooms/r1/presence", Some(&t)).await.0, 200);
    for path in [
        "/api/messages?room=secret",
        "/negotiate?room=secret",
        "/api/rooms/secret/presence",
    ] {
        let (status, body) = app.get_as(path, Some(&t)).await;
        assert_eq!(
            (status, body.as_str()),
            (403, "the token does not allow room \"secret\""),
            "{path}"
        );
    }
    let no_rooms = sign("rsa1", "k1", Algorithm::RS256, &p.claims("bob"));
    assert_eq!(app.get_as("/api/messages", Some(&no_rooms)).await.0, 403);

    // Every refusal: 401 and a one-line reason.
    let public_pem = fixture("rsa1.pub.pem");
    let hs256 = jsonwebtoken::encode(
        &Header {
            kid: Some("k1".into()),
            ..Header::new(Algorithm::HS256)
        },
        &alice,
        &EncodingKey::from_secret(&public_pem),
    )
    .unwrap();
    let mut wrong_iss = alice.clone();
    wrong_iss["iss"] = "https://evil.example.com".into();
    let mut wrong_aud = alice.clone();
    wrong_aud["aud"] = "another-app".into();
    let mut expired = alice.clone();
    expired["exp"] = (now() - 120).into();
    let mut early = alice.clone();
    early["nbf"] = (now() + 120).into();
    let mut no_sub = alice.clone();
    no_sub.as_object_mut().unwrap().remove("sub");
    let cases = [
        (
            raw_token(json!({"alg": "none", "kid": "k1"}), &alice, ""),
            "algorithm \"none\" is not accepted",
        ),
        (hs256, "algorithm \"HS256\" is not accepted"),
        (
            sign("rsa1", "k1", Algorithm::RS256, &wrong_iss),
            "wrong issuer",
        ),
        (
            sign("rsa1", "k1", Algorithm::RS256, &wrong_aud),
            "wrong audience",
        ),
        (sign("rsa1", "k1", Algorithm::RS256, &expired), "expired"),
        (
            sign("rsa1", "k1", Algorithm::RS256, &early),
            "not yet valid",
        ),
        (
            sign("rsa1", "k1", Algorithm::RS256, &no_sub),
            "no sub claim",
        ),
        (
            sign("rsa2", "k1", Algorithm::RS256, &alice),
            "bad signature",
        ),
        (
            sign("rsa1", "e1", Algorithm::RS256, &alice),
            "does not match",
        ),
        ("not-a-token".to_string(), "not a JWT"),
    ];
    for (token, reason) in &cases {
        for path in ["/negotiate", "/api/messages"] {
            let (status, body) = app.get_as(path, Some(token)).await;
            assert_eq!(status, 401, "{reason} on {path}: {body}");
            assert!(
                body.starts_with("token refused: ")
                    && body.contains(reason)
                    && !body.contains('\n'),
                "{reason}: {body}"
            );
        }
    }
    assert_eq!(p.key_fetches(), 1, "no refusal above refetched the keys");

    // Rotation: the provider swaps k1 for k2; a k2 token makes one refresh and is accepted.
    *p.keys.lock().unwrap() = vec![jwk("rsa2", "k2"), jwk("ec1", "e1")];
    let t2 = sign("rsa2", "k2", Algorithm::RS256, &alice);
    assert_eq!(
        app.get_as("/api/messages?room=lobby", Some(&t2)).await.0,
        200
    );
    assert_eq!(p.key_fetches(), 2);
    // The retired key and an unknown one: refused without a new fetch (at most one a minute).
    let old = sign("rsa1", "k1", Algorithm::RS256, &alice);
    let unknown = sign("rsa1", "zz", Algorithm::RS256, &alice);
    for (t, kid) in [(old, "k1"), (unknown, "zz")] {
        let (status, body) = app.get_as("/negotiate", Some(&t)).await;
        assert_eq!(
            (status, body),
            (401, format!("token refused: unknown key id {kid:?}"))
        );
    }
    assert_eq!(
        p.key_fetches(),
        2,
        "unknown kids refresh at most once a minute"
    );
}

#[tokio::test]
async fn jwks_down_is_503_not_401_until_it_is_back() {
    // The test's runtime is one thread, so the server's tasks log into this capture.
    let log = LogCapture::install();
    let p = Provider::start(vec![jwk("ec1", "e1")]).await;
    p.down.store(true, Ordering::SeqCst);
    let app = oidc_app(&p, |_| {}).await;
    let t = sign("ec1", "e1", Algorithm::ES256, &p.claims("alice"));
    let (status, body) = app.get_as("/negotiate", Some(&t)).await;
    assert_eq!(status, 503, "{body}");
    assert!(body.starts_with("cannot verify tokens now: GET "), "{body}");
    assert!(body.contains("status 503"), "{body}");
    // Past the one-second back-off each request fetches again and fails again; the operator is
    // warned once, not once per request.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    for _ in 0..3 {
        assert_eq!(app.get_as("/api/messages", Some(&t)).await.0, 503);
    }
    let fetches = p.key_fetches();
    assert!(fetches >= 2, "the keys were fetched again: {fetches}");
    let text = log.text();
    let loud: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("WARN") || l.contains("ERROR"))
        .collect();
    assert_eq!(loud.len(), 1, "one warning while the keys are down: {text}");
    assert!(
        loud[0].contains("cannot fetch the issuer's signing keys"),
        "{text}"
    );
    // A missing token is still the caller's fault.
    assert_eq!(app.get_as("/negotiate", None).await.0, 401);
    p.down.store(false, Ordering::SeqCst);
    let back = poll(
        Duration::from_secs(5),
        Duration::from_millis(100),
        async || app.get_as("/api/messages", Some(&t)).await.0 == 200,
    )
    .await;
    assert!(back, "sign-in works again once the keys can be fetched");
}

#[tokio::test]
async fn cors_preflight_on_browser_routes_only() {
    let p = Provider::start(vec![jwk("ec1", "e1")]).await;
    let app = oidc_app(&p, |a| {
        a.cors_origins = Some("https://chat.example.com".into());
    })
    .await;
    let preflight = |path: &str, origin: &str| {
        app.http
            .request(reqwest::Method::OPTIONS, app.url(path))
            .header("origin", origin)
            .header("access-control-request-method", "GET")
            .header("access-control-request-headers", "authorization")
            .send()
    };
    for path in ["/negotiate", "/api/messages", "/api/rooms/lobby/presence"] {
        let r = preflight(path, "https://chat.example.com").await.unwrap();
        assert!(r.status().is_success(), "{path}: {}", r.status());
        let h = r.headers();
        assert_eq!(h["access-control-allow-origin"], "https://chat.example.com");
        assert!(h["access-control-allow-methods"]
            .to_str()
            .unwrap()
            .contains("GET"));
        assert!(h["access-control-allow-headers"]
            .to_str()
            .unwrap()
            .contains("authorization"));
        assert!(h.get("access-control-allow-credentials").is_none());
        let other = preflight(path, "https://evil.example.com").await.unwrap();
        assert!(other.headers().get("access-control-allow-origin").is_none());
    }
    // The actual request (a 401 here) carries the header too, so the page can read the reason.
    let r = app
        .http
        .get(app.url("/negotiate"))
        .header("origin", "https://chat.example.com")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    assert_eq!(
        r.headers()["access-control-allow-origin"],
        "https://chat.example.com"
    );
    // The webhook path never gets CORS headers.
    for method in [reqwest::Method::OPTIONS, reqwest::Method::POST] {
        let r = app
            .http
            .request(method, app.url("/eventhandler"))
            .header("origin", "https://chat.example.com")
            .header("access-control-request-method", "POST")
            .header("webhook-request-origin", "localhost")
            .send()
            .await
            .unwrap();
        assert!(
            r.headers()
                .keys()
                .all(|k| !k.as_str().starts_with("access-control-")),
            "{:?}",
            r.headers()
        );
    }
}

#[tokio::test]
async fn off_closes_negotiate_history_and_presence() {
    let app = spawn_app_with(|a| a.auth = Some("off".into())).await;
    for path in [
        "/negotiate?userId=a",
        "/api/messages",
        "/api/rooms/lobby/presence",
    ] {
        let (status, body) = app.get_as(path, None).await;
        assert_eq!(status, 404, "{path}");
        assert!(body.contains("HUBHOOK_AUTH=oidc"), "{body}");
    }
    // The old name still works as an alias of open/off.
    let app = spawn_app_with(|a| a.negotiate = Some("off".into())).await;
    assert_eq!(app.get_as("/api/messages", None).await.0, 404);
}

#[tokio::test]
async fn leeway_forgives_clock_skew_and_no_more() {
    let p = Provider::start(vec![jwk("ec1", "e1")]).await;
    let with = |exp_offset: i64, nbf_offset: Option<i64>| {
        let mut c = p.claims("alice");
        c["exp"] = (now() + exp_offset).into();
        if let Some(n) = nbf_offset {
            c["nbf"] = (now() + n).into();
        }
        sign("ec1", "e1", Algorithm::ES256, &c)
    };
    // Default leeway (30 s): ten seconds of skew either way is forgiven, two minutes is not.
    let app = oidc_app(&p, |_| {}).await;
    assert_eq!(
        app.get_as("/api/messages", Some(&with(-10, None))).await.0,
        200
    );
    assert_eq!(
        app.get_as("/api/messages", Some(&with(300, Some(10))))
            .await
            .0,
        200
    );
    assert_eq!(
        app.get_as("/api/messages", Some(&with(-120, None))).await.0,
        401
    );
    // HUBHOOK_AUTH_LEEWAY=0: the same ten seconds are refused.
    let strict = oidc_app(&p, |a| a.auth_leeway = Some("0".into())).await;
    let (status, body) = strict.get_as("/api/messages", Some(&with(-10, None))).await;
    assert_eq!(status, 401, "{body}");
    assert!(body.contains("expired"), "{body}");
    // A wider leeway (3m) accepts what the default refused.
    let lax = oidc_app(&p, |a| a.auth_leeway = Some("3m".into())).await;
    assert_eq!(
        lax.get_as("/api/messages", Some(&with(-120, None))).await.0,
        200
    );
}

/// Collects what the current thread's tasks log (a scoped subscriber, so other tests running
/// in parallel do not write into it).
struct LogCapture {
    buf: Arc<Mutex<Vec<u8>>>,
    _guard: tracing::subscriber::DefaultGuard,
}

impl LogCapture {
    fn install() -> Self {
        let buf = Arc::new(Mutex::new(Vec::new()));
        let writer = CaptureWriter(buf.clone());
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::DEBUG)
            .with_ansi(false)
            .with_writer(move || writer.clone())
            .finish();
        let _guard = tracing::subscriber::set_default(subscriber);
        LogCapture { buf, _guard }
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.buf.lock().unwrap()).into_owned()
    }
}

#[derive(Clone)]
struct CaptureWriter(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for CaptureWriter {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}
