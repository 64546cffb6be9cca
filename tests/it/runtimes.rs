//! The built binary under the two cloud runtimes, driven the way each platform drives it:
//! a loopback stand-in for the AWS Lambda Runtime API delivering Function URL (payload v2)
//! events, and the Azure Functions host's forwarded HTTP requests on `FUNCTIONS_CUSTOMHANDLER_PORT`.

use std::collections::VecDeque;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::http::HeaderMap;
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use hubhook::protocol::{build_webhook, ConnectRequest, Event};
use serde_json::{json, Value};
use tokio::sync::Notify;

use crate::support::*;

const ARN: &str = "arn:aws:secretsmanager:us-east-1:123456789012:secret:hubhook/webpubsub-AbCdEf";
const RUNTIME: &str = "/2018-06-01/runtime";

/// The slice of the Lambda Runtime API a function uses, on a [`StandIn`]: `next` hands out
/// queued events (waiting for one), the function posts each response (or an error) back, which
/// the stand-in records.
#[derive(Clone, Default)]
struct RuntimeApi {
    queue: Arc<Mutex<VecDeque<(String, Value)>>>,
    ready: Arc<Notify>,
}

impl RuntimeApi {
    fn script(&self) -> Script {
        let api = self.clone();
        Script::async_handler(move |r| {
            let api = api.clone();
            async move {
                let path = r.path.strip_prefix(RUNTIME).unwrap_or_default();
                match (r.method.as_str(), path) {
                    ("GET", "/invocation/next") => Some(api.next().await),
                    ("POST", "/init/error") => {
                        eprintln!("init error: {}", String::from_utf8_lossy(&r.body));
                        Some(reply(202))
                    }
                    ("POST", p) if p.ends_with("/response") || p.ends_with("/error") => {
                        Some(reply(202))
                    }
                    _ => Some(reply(404)),
                }
            }
        })
    }

    async fn next(&self) -> Reply {
        loop {
            let queued = self.queue.lock().unwrap().pop_front();
            if let Some((id, event)) = queued {
                let deadline = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap()
                    .as_millis()
                    + 30_000;
                return reply(200)
                    .json(event)
                    .header("lambda-runtime-aws-request-id", &id)
                    .header("lambda-runtime-deadline-ms", &deadline.to_string())
                    .header(
                        "lambda-runtime-invoked-function-arn",
                        "arn:aws:lambda:us-east-1:123456789012:function:hubhook",
                    )
                    .header(
                        "lambda-runtime-trace-id",
                        "Root=1-00000000-000000000000000000000000",
                    );
            }
            self.ready.notified().await;
        }
    }
}

/// What the function posted back for invocation `id`: the response, or `{"error": …}`.
fn lambda_result(r: &Request) -> Option<(String, Value)> {
    let rest = r.path.strip_prefix(RUNTIME)?.strip_prefix("/invocation/")?;
    let (id, kind) = rest.split_once('/')?;
    let v = match kind {
        "response" => serde_json::from_slice(&r.body)
            .unwrap_or_else(|_| json!({"raw": String::from_utf8_lossy(&r.body)})),
        "error" => json!({"error": String::from_utf8_lossy(&r.body)}),
        _ => return None,
    };
    Some((id.to_string(), v))
}

fn function_url_event(
    method: &str,
    path: &str,
    query: &str,
    headers: &HeaderMap,
    body: &[u8],
) -> Value {
    let mut hs = serde_json::Map::new();
    for (k, v) in headers {
        let v = v.to_str().unwrap().to_string();
        // Function URLs join repeated headers with commas.
        match hs.get_mut(k.as_str()) {
            Some(Value::String(prev)) => *prev = format!("{prev},{v}"),
            _ => drop(hs.insert(k.as_str().to_string(), Value::String(v))),
        }
    }
    json!({
        "version": "2.0", "routeKey": "$default", "rawPath": path, "rawQueryString": query,
        "headers": hs,
        "requestContext": {
            "accountId": "anonymous", "apiId": "abc123", "domainName": "abc123.lambda-url.us-east-1.on.aws",
            "domainPrefix": "abc123",
            "http": {"method": method, "path": path, "protocol": "HTTP/1.1", "sourceIp": "127.0.0.1", "userAgent": "test"},
            "requestId": "r", "routeKey": "$default", "stage": "$default",
            "time": "01/May/2024:10:00:00 +0000", "timeEpoch": 1714557600000u64
        },
        "body": B64.encode(body), "isBase64Encoded": true
    })
}

fn hubhook_at(exe: &std::path::Path, envs: &[(&str, String)]) -> KillOnDrop {
    let mut c = hubhook_command_at(exe);
    c.env_remove("PORT")
        .env_remove("WEBPUBSUB_CONNECTION_STRING")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit());
    for (k, v) in envs {
        c.env(k, v);
    }
    KillOnDrop(c.spawn().expect("start hubhook"))
}

fn signed(c: &hubhook::protocol::EventContext, e: &Event) -> (HeaderMap, Vec<u8>) {
    let (h, b) = build_webhook(c, e, &[KEY]).unwrap();
    (h, b.to_vec())
}

/// The package template.yaml deploys.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lambda_function_url_flow_on_dynamodb() {
    lambda_function_url_flow(
        env!("CARGO_BIN_EXE_hubhook-lambda"),
        "runtimes::lambda_function_url_flow_on_dynamodb",
    )
    .await;
}

/// `hubhook` itself, started by Lambda, runs the same handler.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lambda_function_url_flow_of_the_hubhook_binary() {
    lambda_function_url_flow(
        env!("CARGO_BIN_EXE_hubhook"),
        "runtimes::lambda_function_url_flow_of_the_hubhook_binary",
    )
    .await;
}

#[test]
fn hubhook_lambda_outside_lambda_says_so() {
    let out = hubhook_command_at(std::path::Path::new(env!("CARGO_BIN_EXE_hubhook-lambda")))
        .env_remove("AWS_LAMBDA_RUNTIME_API")
        .output()
        .expect("run hubhook-lambda");
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("runs under AWS Lambda only") && err.contains("hubhook serve"),
        "{err}"
    );
}

async fn lambda_function_url_flow(exe: &str, test: &str) {
    let Some(dynamo) = Dynalite::start_or_skip(test).await else {
        return;
    };
    let rest = rest_stand_in().await;
    // Secrets Manager is a cloud endpoint we cannot run: a stand-in answers GetSecretValue
    // (JSON 1.1 protocol) and records which secret was asked for.
    let secret = connection_string(&rest);
    let sm = StandIn::start(Script::handler(move |r| {
        let req: Value = serde_json::from_slice(&r.body).unwrap_or(Value::Null);
        Some(reply(200).body(
            "application/x-amz-json-1.1",
            json!({"ARN": req["SecretId"], "Name": "hubhook/webpubsub", "SecretString": secret})
                .to_string()
                .as_bytes(),
        ))
    }))
    .await;
    let sm_addr = sm.addr;
    let api = RuntimeApi::default();
    let runtime = StandIn::start(api.script()).await;
    let runtime_addr = runtime.addr;

    let _fn = hubhook_at(
        std::path::Path::new(exe),
        &[
            ("AWS_LAMBDA_RUNTIME_API", runtime_addr.to_string()),
            ("AWS_LAMBDA_FUNCTION_NAME", "hubhook".into()),
            ("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "128".into()),
            ("AWS_LAMBDA_FUNCTION_VERSION", "$LATEST".into()),
            ("AWS_LAMBDA_LOG_STREAM_NAME", "s".into()),
            ("AWS_LAMBDA_LOG_GROUP_NAME", "g".into()),
            ("WEBPUBSUB_CONNECTION_STRING_SECRET_ARN", ARN.into()),
            (
                "AWS_ENDPOINT_URL_SECRETS_MANAGER",
                format!("http://{sm_addr}"),
            ),
            (
                "HUBHOOK_ALLOWED_ORIGINS",
                "contoso.webpubsub.azure.com".into(),
            ),
            // As deployed by template.yaml: DynamoDB (here dynalite; the table is created on start
            // because a local endpoint is configured).
            ("HUBHOOK_STORE", "dynamodb://hubhook-messages".into()),
            ("HUBHOOK_RETENTION_DAYS", "30".into()),
            ("AWS_ENDPOINT_URL_DYNAMODB", dynamo.endpoint.clone()),
            ("AWS_REGION", "us-east-1".into()),
            ("AWS_ACCESS_KEY_ID", "AKIDFAKE".into()),
            ("AWS_SECRET_ACCESS_KEY", "fakesecret".into()),
        ],
    );

    let mut n = 0;
    let mut invoke = |event: Value| {
        n += 1;
        let id = format!("req-{n}");
        api.queue.lock().unwrap().push_back((id.clone(), event));
        api.ready.notify_waiters();
        api.ready.notify_one();
        id
    };
    // The function's answers, in the order it posted them.
    let mut answered = 0;
    let mut recv = async |id: String| -> Value {
        let results = || {
            runtime
                .requests()
                .iter()
                .filter_map(lambda_result)
                .collect::<Vec<_>>()
        };
        let came = poll(
            Duration::from_secs(20),
            Duration::from_millis(10),
            async || results().len() > answered,
        )
        .await;
        assert!(came, "lambda answered");
        let (got, v) = results().swap_remove(answered);
        answered += 1;
        assert_eq!(got, id);
        v
    };
    let body_of = |v: &Value| -> Vec<u8> {
        let b = v["body"].as_str().unwrap_or_default();
        if v["isBase64Encoded"].as_bool() == Some(true) {
            B64.decode(b).unwrap()
        } else {
            b.as_bytes().to_vec()
        }
    };

    // 1. abuse-protection handshake (after the cold start read the secret)
    let mut h = HeaderMap::new();
    h.insert(
        "webhook-request-origin",
        "contoso.webpubsub.azure.com".parse().unwrap(),
    );
    let id = invoke(function_url_event("OPTIONS", "/eventhandler", "", &h, b""));
    let v = recv(id).await;
    assert_eq!(v["statusCode"], 200, "{v}");
    assert_eq!(
        v["headers"]["webhook-allowed-origin"],
        "contoso.webpubsub.azure.com"
    );

    // 2. connect
    let mut req = ConnectRequest::default();
    req.query.insert("room".into(), vec!["lambda-room".into()]);
    let c = ctx("c1", Some("alice"), "1", None);
    let (h, b) = signed(&c.with_event_name("connect"), &Event::Connect(req));
    let v = recv(invoke(function_url_event(
        "POST",
        "/eventhandler",
        "",
        &h,
        &b,
    )))
    .await;
    assert_eq!(v["statusCode"], 200, "{v}");
    let connect: Value = serde_json::from_slice(&body_of(&v)).unwrap();
    assert_eq!(connect["groups"], json!(["lambda-room"]));
    let state = v["headers"]["ce-connectionstate"]
        .as_str()
        .unwrap()
        .to_string();

    // 3. message (binary-safe path: the body arrives base64 and must be decoded)
    let c = ctx("c1", Some("alice"), "2", Some("lambda-room")).with_event_name("message");
    let (mut h, b) = signed(&c, &message("from lambda"));
    h.insert("ce-connectionstate", state.parse().unwrap());
    let v = recv(invoke(function_url_event(
        "POST",
        "/eventhandler/message",
        "",
        &h,
        &b,
    )))
    .await;
    assert_eq!(v["statusCode"], 200, "{v}");
    let reply: Value = serde_json::from_slice(&body_of(&v)).unwrap();
    assert_eq!(
        (reply["stored"].as_bool(), reply["broadcast"].as_bool()),
        (Some(true), Some(true))
    );
    let calls = rest.requests();
    assert_eq!(calls.len(), 1);
    assert_eq!(calls[0].path, "/api/hubs/chat/groups/lambda-room/:send");
    assert_eq!(calls[0].json()["text"], "from lambda");

    // 4. a forged event is refused with 401 and a reason
    let (mut h, b) = signed(&c, &message("forged"));
    h.insert("ce-signature", "sha256=00".parse().unwrap());
    let v = recv(invoke(function_url_event(
        "POST",
        "/eventhandler",
        "",
        &h,
        &b,
    )))
    .await;
    assert_eq!(v["statusCode"], 401);
    assert_eq!(body_of(&v), b"signature validation failed");

    // the connection string was read from Secrets Manager exactly once, at cold start
    let asked = sm.requests();
    assert_eq!(asked.len(), 1, "{asked:?}");
    assert_eq!(
        asked[0].header("x-amz-target").as_deref(),
        Some("secretsmanager.GetSecretValue")
    );
    assert_eq!(asked[0].json_or_null()["SecretId"], ARN);

    // 5. history
    let v = recv(invoke(function_url_event(
        "GET",
        "/api/messages",
        "room=lambda-room",
        &HeaderMap::new(),
        b"",
    )))
    .await;
    assert_eq!(v["statusCode"], 200, "{v}");
    let page: Value = serde_json::from_slice(&body_of(&v)).unwrap();
    assert_eq!(page["messages"][0]["text"], "from lambda");
    assert_eq!(page["messages"][0]["id"], reply["id"]);
}

/// Stages the Functions app with the packaging script the README uses, as the host would find it.
fn stage_functions_app(dir: &std::path::Path) -> std::path::PathBuf {
    let out = dir.join("app");
    let status = std::process::Command::new("bash")
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/scripts/package-azure.sh"
        ))
        .args(["--binary", env!("CARGO_BIN_EXE_hubhook"), "--out"])
        .arg(&out)
        .stdout(Stdio::null())
        .status()
        .expect("run scripts/package-azure.sh");
    assert!(status.success(), "package-azure.sh failed");
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn azure_functions_custom_handler_flow() {
    let rest = rest_stand_in().await;
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    // The host starts host.json's defaultExecutablePath in the app's folder.
    let app = stage_functions_app(dir.path());
    let host_json: Value =
        serde_json::from_str(&std::fs::read_to_string(app.join("host.json")).unwrap()).unwrap();
    let exe = app.join(
        host_json["customHandler"]["description"]["defaultExecutablePath"]
            .as_str()
            .unwrap(),
    );
    let _fn = hubhook_at(
        &exe,
        &[
            ("FUNCTIONS_CUSTOMHANDLER_PORT", port.to_string()),
            ("WEBPUBSUB_CONNECTION_STRING", connection_string(&rest)),
            (
                "HUBHOOK_ALLOWED_ORIGINS",
                "contoso.webpubsub.azure.com".into(),
            ),
            (
                "HUBHOOK_STORE",
                format!("sqlite://{}", dir.path().join("f.db").display()),
            ),
        ],
    );
    let http = reqwest::Client::new();
    let base = format!("http://127.0.0.1:{port}");
    // The host polls GET / until anything answers.
    let up = poll(
        Duration::from_secs(10),
        Duration::from_millis(25),
        async || http.get(format!("{base}/")).send().await.is_ok(),
    )
    .await;
    assert!(
        up,
        "custom handler did not listen on FUNCTIONS_CUSTOMHANDLER_PORT"
    );
    // What the host adds to every forwarded request.
    let host = |r: reqwest::RequestBuilder| {
        r.header("x-azure-functions-hostversion", "4.1040.0")
            .header(
                "x-azure-functions-invocationid",
                "0b2c9a1e-0000-0000-0000-000000000000",
            )
            .header("user-agent", "Azure-Functions-Host/4")
    };
    let r = host(http.request(reqwest::Method::OPTIONS, format!("{base}/eventhandler")))
        .header("WebHook-Request-Origin", "contoso.webpubsub.azure.com")
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.headers()["webhook-allowed-origin"],
        "contoso.webpubsub.azure.com"
    );

    let (h, b) = signed(
        &ctx("c9", Some("bob"), "1", Some("lobby")).with_event_name("connected"),
        &Event::Connected,
    );
    let r = host(http.post(format!("{base}/eventhandler")))
        .headers(h)
        .body(b)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let c = ctx("c9", Some("bob"), "2", Some("lobby")).with_event_name("message");
    let (h, b) = signed(&c, &message("from functions"));
    let r = host(http.post(format!("{base}/eventhandler")))
        .headers(h)
        .body(b)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let page: Value = host(http.get(format!("{base}/api/messages?room=lobby")))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(page["messages"][0]["text"], "from functions");
    let kinds: Vec<String> = rest
        .requests()
        .iter()
        .map(|c| c.json()["type"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(kinds, ["joined", "message"]);
}

/// The Functions host is not installable here (its binary comes from a CDN), so the files it
/// reads are checked for the settings the flow above depends on.
#[test]
fn azure_functions_files_forward_every_route() {
    let dir = tempfile::tempdir().unwrap();
    let app = stage_functions_app(dir.path());
    let read = |p: &str| -> Value {
        serde_json::from_str(&std::fs::read_to_string(app.join(p)).unwrap()).unwrap()
    };
    let host = read("host.json");
    assert_eq!(host["customHandler"]["enableForwardingHttpRequest"], true);
    assert_eq!(
        host["customHandler"]["description"]["defaultExecutablePath"],
        "hubhook"
    );
    assert_eq!(host["extensions"]["http"]["routePrefix"], "");
    // Function folders sit beside host.json; the host finds them by their function.json.
    let f = read("handler/function.json");
    let trigger = &f["bindings"][0];
    assert_eq!(trigger["authLevel"], "anonymous");
    assert_eq!(trigger["route"], "{*path}");
    for m in ["get", "post", "options"] {
        assert!(
            trigger["methods"].as_array().unwrap().contains(&json!(m)),
            "{m}"
        );
    }
    assert_eq!(
        f["bindings"].as_array().unwrap().len(),
        2,
        "forwarding needs exactly one http in + one http out"
    );
    // The zip deployed with config-zip: the same layout, the executable bit kept, no local file.
    let zip = std::process::Command::new("python3")
        .args([
            "-c",
            "import sys,zipfile; z=zipfile.ZipFile(sys.argv[1]); print('\\n'.join(f'{i.filename} {i.external_attr >> 16:o}' for i in z.infolist()))",
        ])
        .arg(app.with_extension("zip"))
        .output()
        .unwrap();
    let listing = String::from_utf8(zip.stdout).unwrap();
    assert!(listing.contains("host.json "), "{listing}");
    assert!(listing.contains("handler/function.json "), "{listing}");
    assert!(listing.contains("hubhook 100755"), "{listing}");
    assert!(!listing.contains("local.settings.json"), "{listing}");
}

/// `scripts/check-arm.py` is the ARM validator test.sh runs (none installs from the registries):
/// the template passes, and each kind of mistake ARM's own validation rejects is caught.
#[test]
fn arm_template_passes_the_checker_and_the_checker_catches_mistakes() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let check = |template: &str| -> (bool, String) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.json");
        std::fs::write(&path, template).unwrap();
        let out = std::process::Command::new("python3")
            .arg(root.join("scripts/check-arm.py"))
            .arg(&path)
            .output()
            .expect("python3 runs");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    };
    let good = std::fs::read_to_string(root.join("azure/azuredeploy.json")).unwrap();
    let (ok, said) = check(&good);
    assert!(ok, "{said}");
    let broken = [
        (
            "parameters('hub')",
            "parameters('hubs')",
            "parameters('hubs') is not declared",
        ),
        (
            "variables('appName')",
            "variables('appname')",
            "variables('appname') is not declared",
        ),
        ("[concat(", "[concat((", "expected"),
        ("[toLower(", "[toLowr(", "unknown function toLowr()"),
        (
            "'Microsoft.Web/sites'",
            "'Microsoft.Web/site'",
            "names type Microsoft.Web/site",
        ),
        ("\"2023-01-01\"", "\"2023-1-1\"", "apiVersion is not a date"),
    ];
    for (from, to, expect) in broken {
        assert!(good.contains(from), "the template no longer has {from}");
        let (ok, said) = check(&good.replacen(from, to, 1));
        assert!(!ok, "{from} → {to} passed");
        assert!(said.contains(expect), "{from} → {to}: {said}");
    }
}
