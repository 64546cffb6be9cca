//! The real binary's settings at start: every refusal is one line naming the variable, and no
//! access key reaches argv, output or logs (`hubhook serve`, `hubhook dev`, `hubhook emulator`).

use std::ffi::OsStr;
use std::io::{BufRead, BufReader};
use std::os::unix::ffi::OsStrExt;
use std::process::{Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;

use crate::support::{free_port, hubhook_command, poll, KillOnDrop};

/// A key with the form of a real one: it must never be printed.
const REAL_KEY: &str = "Zm9vYmFyYmF6cXV4cXV1eGNvcmdlZ3JhdWx0Z2FycGw=";

fn real_connection_string() -> String {
    format!("Endpoint=https://contoso.webpubsub.azure.com;AccessKey={REAL_KEY};Version=1.0;")
}

/// `hubhook ARGS` with a clean environment for our variables (only `envs`), run to its end.
fn command(args: &[&str], envs: &[(&str, &OsStr)]) -> Command {
    let mut c = hubhook_command();
    for var in hubhook::config::VARIABLES {
        c.env_remove(var);
    }
    c.env("RUST_LOG", "info").env("PORT", "0");
    c.args(args);
    for (k, v) in envs {
        c.env(k, v);
    }
    c
}

fn run(args: &[&str], envs: &[(&str, &OsStr)]) -> Output {
    let mut c = command(args, envs);
    let started = Instant::now();
    let out = c.output().expect("run hubhook");
    assert!(started.elapsed() < Duration::from_secs(20));
    out
}

/// Exit 1 with exactly one line on stderr, `hubhook: VAR: ...`; returns that line.
fn refused(args: &[&str], envs: &[(&str, &OsStr)], var: &str) -> String {
    let out = run(args, envs);
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert_eq!(out.status.code(), Some(1), "{args:?} {envs:?}: {stderr}");
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 1, "one line: {stderr}");
    assert!(
        lines[0].starts_with(&format!("hubhook: {var}: ")),
        "names {var}: {stderr}"
    );
    lines[0].to_string()
}

fn s(v: &str) -> &OsStr {
    OsStr::new(v)
}

#[test]
fn non_utf8_values_name_the_variable() {
    let bad = OsStr::from_bytes(b"sec\xffret");
    for (args, var) in [
        (&["serve"][..], "WEBPUBSUB_CONNECTION_STRING"),
        (&["serve"], "WEBPUBSUB_ACCESS_KEYS"),
        (&["serve"], "WEBPUBSUB_HUB"),
        (&["serve"], "PORT"),
        (&["serve"], "RUST_LOG"),
        (&["serve"], "HUBHOOK_LOG_FORMAT"),
        (&[], "HUBHOOK_STORE"),
        (&["emulator"], "HUBHOOK_EMULATOR_PORT"),
        (&["dev"], "HUBHOOK_EMULATOR_BIND"),
    ] {
        let line = refused(args, &[(var, bad)], var);
        assert!(line.ends_with("is not valid UTF-8"), "{line}");
        assert!(!line.contains("sec"), "{line}");
    }
}

#[test]
fn the_connection_string_is_not_a_flag() {
    let out = run(
        &["serve", "--connection-string", &real_connection_string()],
        &[],
    );
    assert_ne!(out.status.code(), Some(0));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("--connection-string"), "{stderr}");
    assert!(!stderr.contains(REAL_KEY), "{stderr}");
}

#[test]
fn access_keys_are_not_a_flag() {
    let out = run(&["serve", "--access-keys", REAL_KEY], &[]);
    assert_ne!(out.status.code(), Some(0));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("--access-keys"), "{stderr}");
    assert!(!stderr.contains(REAL_KEY), "{stderr}");
}

#[test]
fn a_connection_string_key_without_the_service_form_is_refused_unechoed() {
    for key in ["1", "sekrit-but-short", &REAL_KEY[..43]] {
        let cs =
            format!("Endpoint=https://contoso.webpubsub.azure.com;AccessKey={key};Version=1.0;");
        for args in [&["serve"][..], &["dev"], &["tunnel"]] {
            let line = refused(
                args,
                &[("WEBPUBSUB_CONNECTION_STRING", s(&cs))],
                "WEBPUBSUB_CONNECTION_STRING",
            );
            assert!(line.contains("AccessKey is not an access key"), "{line}");
            assert!(
                !line.contains(&format!("={key}")) && !line.contains(&format!("\"{key}\"")),
                "{line}"
            );
            if key.len() > 1 {
                assert!(!line.contains(key), "{line}");
            }
        }
    }
}

#[test]
fn malformed_connection_strings_never_echo_the_key() {
    let k = REAL_KEY;
    for cs in [
        format!("Endpoint=https://x.example;AccessKey={k};Port={k}"),
        format!("Endpoint=http://[{k}]:1;AccessKey={k}"),
        format!("Endpoint=http://user:{k}@host.example;AccessKey={k}"),
        format!("Endpoint={k};AccessKey={k}"),
        format!("Endpoint={k};AccessKey=other"),
        format!("Endpoint=https://x.example;{k}"),
    ] {
        let line = refused(
            &["serve"],
            &[("WEBPUBSUB_CONNECTION_STRING", s(&cs))],
            "WEBPUBSUB_CONNECTION_STRING",
        );
        let lower = line.to_ascii_lowercase();
        assert!(
            !line.contains(k) && !lower.contains(&k.to_ascii_lowercase()[..20]),
            "{line}"
        );
    }
}

#[test]
fn settings_are_refused_with_one_line_naming_the_variable() {
    let cs = real_connection_string();
    let cs = s(&cs);
    let c = ("WEBPUBSUB_CONNECTION_STRING", cs);
    for (var, value) in [
        ("WEBPUBSUB_ACCESS_KEYS", "1"),
        ("HUBHOOK_LOG_FORMAT", "xml"),
        ("RUST_LOG", "info,hubhook=loud"),
        ("HUBHOOK_EVENT_PATH", "/a b"),
    ] {
        let line = refused(&["serve"], &[c, (var, s(value))], var);
        if var == "WEBPUBSUB_ACCESS_KEYS" {
            assert!(!line.contains("\"1\""), "{line}");
        }
    }
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing");
    refused(
        &["serve"],
        &[("WEBPUBSUB_CONNECTION_STRING_FILE", missing.as_os_str())],
        "WEBPUBSUB_CONNECTION_STRING_FILE",
    );
    let keys = dir.path().join("keys");
    std::fs::write(&keys, "sekrit\n").unwrap();
    let line = refused(
        &["serve"],
        &[c, ("WEBPUBSUB_ACCESS_KEYS_FILE", keys.as_os_str())],
        "WEBPUBSUB_ACCESS_KEYS_FILE",
    );
    assert!(!line.contains("sekrit"), "{line}");
    refused(
        &["serve"],
        &[
            c,
            ("WEBPUBSUB_ACCESS_KEYS", s(REAL_KEY)),
            ("WEBPUBSUB_ACCESS_KEYS_FILE", keys.as_os_str()),
        ],
        "WEBPUBSUB_ACCESS_KEYS_FILE",
    );
    refused(
        &["serve"],
        &[c, ("WEBPUBSUB_CONNECTION_STRING_FILE", missing.as_os_str())],
        "WEBPUBSUB_CONNECTION_STRING_FILE",
    );
}

#[test]
fn emulator_port_and_bind_errors_name_the_variable() {
    refused(
        &["emulator"],
        &[("HUBHOOK_EMULATOR_PORT", s("http"))],
        "HUBHOOK_EMULATOR_PORT",
    );
    refused(
        &["dev"],
        &[("HUBHOOK_EMULATOR_PORT", s("70000"))],
        "HUBHOOK_EMULATOR_PORT",
    );
    refused(&["emulator", "--port", "x"], &[], "HUBHOOK_EMULATOR_PORT");
    refused(
        &["emulator"],
        &[("HUBHOOK_EMULATOR_BIND", s("localhost"))],
        "HUBHOOK_EMULATOR_BIND",
    );
    refused(
        &["emulator"],
        &[("HUBHOOK_EMULATOR_BIND", s("0.0.0.0"))],
        "HUBHOOK_EMULATOR_BIND",
    );
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port().to_string();
    let line = refused(
        &["emulator"],
        &[("HUBHOOK_EMULATOR_PORT", s(&port))],
        "HUBHOOK_EMULATOR_PORT",
    );
    assert!(line.contains("cannot listen"), "{line}");
    refused(
        &["dev"],
        &[("HUBHOOK_EMULATOR_PORT", s(&port))],
        "HUBHOOK_EMULATOR_PORT",
    );
}

/// Starts `hubhook ARGS`, reads stdout until a line containing `until`, stops it, and returns
/// everything it wrote on stdout and stderr.
fn output_until(args: &[&str], envs: &[(&str, &OsStr)], until: &str) -> String {
    let mut c = command(args, envs);
    c.stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = KillOnDrop(c.spawn().expect("start hubhook"));
    let stdout = child.0.stdout.take().unwrap();
    let stderr = child.0.stderr.take().unwrap();
    let err_reader = std::thread::spawn(move || {
        let mut s = String::new();
        std::io::Read::read_to_string(&mut { stderr }, &mut s).ok();
        s
    });
    let (tx, rx) = std::sync::mpsc::channel();
    let until = until.to_string();
    std::thread::spawn(move || {
        let mut seen = String::new();
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            seen.push_str(&line);
            seen.push('\n');
            if line.contains(&until) {
                break;
            }
        }
        let _ = tx.send(seen);
    });
    let stdout = rx
        .recv_timeout(Duration::from_secs(30))
        .expect("hubhook printed what was expected within 30 s");
    child.kill();
    let stderr = err_reader.join().unwrap();
    format!("{stdout}\n--- stderr ---\n{stderr}")
}

#[test]
fn dev_with_a_real_connection_string_tunnels_and_never_prints_its_key() {
    let dir = tempfile::tempdir().unwrap();
    let store = format!("sqlite://{}", dir.path().join("dev.db").display());
    let file = dir.path().join("connection-string");
    std::fs::write(&file, format!("{}\n", real_connection_string())).unwrap();
    let cs = real_connection_string();
    for source in [
        ("WEBPUBSUB_CONNECTION_STRING", s(&cs)),
        ("WEBPUBSUB_CONNECTION_STRING_FILE", file.as_os_str()),
    ] {
        let out = output_until(
            &["dev", "--emulator-port", "0", "--port", "0"],
            &[
                ("HUBHOOK_STORE", s(&store)),
                source,
                ("RUST_LOG", s("debug")),
            ],
            "hubhook tunnel: connecting to",
        );
        // A real resource: `dev` tunnels it (no emulator), and no key or token is printed.
        assert!(!out.contains(REAL_KEY), "{}: {out}", source.0);
        assert!(
            out.contains("a real resource; no emulator started"),
            "{out}"
        );
        assert!(
            out.contains("connecting to https://contoso.webpubsub.azure.com"),
            "{out}"
        );
        assert!(!out.contains("access_token"), "{out}");
        assert!(!out.contains("key below is public"), "{out}");
    }
    // The emulator's own key is public and still shown.
    let out = output_until(
        &["dev", "--emulator-port", "0", "--port", "0"],
        &[("HUBHOOK_STORE", s(&store))],
        "webhooks (",
    );
    assert!(out.contains(hubhook::config::LOCAL_ACCESS_KEY), "{out}");
}

#[test]
fn serve_logs_no_key_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let store = format!("sqlite://{}", dir.path().join("serve.db").display());
    let cs = real_connection_string();
    let port = free_port().to_string();
    let mut c = command(
        &["serve"],
        &[
            ("WEBPUBSUB_CONNECTION_STRING", s(&cs)),
            ("HUBHOOK_STORE", s(&store)),
            ("PORT", s(&port)),
            ("HUBHOOK_BIND", s("127.0.0.1")),
            ("RUST_LOG", s("debug")),
            ("HUBHOOK_LOG_FORMAT", s("json")),
        ],
    );
    c.stdout(Stdio::null()).stderr(Stdio::piped());
    let mut child = KillOnDrop(c.spawn().unwrap());
    let stderr = child.0.stderr.take().unwrap();
    let mut log = String::new();
    for line in BufReader::new(stderr).lines() {
        let line = line.unwrap();
        log.push_str(&line);
        log.push('\n');
        if line.contains("listening") {
            break;
        }
    }
    child.kill();
    assert!(log.contains("https://contoso.webpubsub.azure.com"), "{log}");
    assert!(!log.contains(REAL_KEY), "{log}");
}

/// `hubhook dev` (`RUST_LOG` as given, or unset) with one WebSocket client that joins, sends one
/// message and leaves: what it printed on stdout after its banner, and all of stderr.
async fn dev_session(rust_log: Option<&str>) -> (Vec<String>, String) {
    let dir = tempfile::tempdir().unwrap();
    let store = format!("sqlite://{}", dir.path().join("dev.db").display());
    let mut c = command(
        &["dev", "--emulator-port", "0", "--port", "0"],
        &[("HUBHOOK_STORE", s(&store))],
    );
    match rust_log {
        Some(v) => c.env("RUST_LOG", v),
        None => c.env_remove("RUST_LOG"),
    };
    c.stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = KillOnDrop(c.spawn().expect("start hubhook dev"));
    let stdout = child.0.stdout.take().unwrap();
    let stderr = child.0.stderr.take().unwrap();
    let err_reader = std::thread::spawn(move || {
        let mut bytes = Vec::new();
        std::io::Read::read_to_end(&mut { stderr }, &mut bytes).ok();
        String::from_utf8_lossy(&bytes).into_owned()
    });
    let lines = Arc::new(Mutex::new(Vec::<String>::new()));
    let sink = lines.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            sink.lock().unwrap().push(line);
        }
    });
    let banner_end = |l: &String| l.starts_with("webhooks (");
    let up = poll(
        Duration::from_secs(30),
        Duration::from_millis(50),
        async || lines.lock().unwrap().iter().any(banner_end),
    )
    .await;
    assert!(
        up,
        "hubhook dev printed its banner: {:?}",
        lines.lock().unwrap()
    );
    let client_url = lines
        .lock()
        .unwrap()
        .iter()
        .find_map(|l| l.split_once("client access URL   : "))
        .and_then(|(_, rest)| rest.split_whitespace().next())
        .expect("a client access URL")
        .to_string();

    let mut req = client_url.into_client_request().unwrap();
    req.headers_mut().insert(
        "sec-websocket-protocol",
        "json.webpubsub.azure.v1".parse().unwrap(),
    );
    let (mut ws, _) = tokio::time::timeout(
        Duration::from_secs(10),
        tokio_tungstenite::connect_async(req),
    )
    .await
    .expect("the client connects within 10 s")
    .expect("the client connects");
    let event = json!({"type": "event", "event": "message", "dataType": "text",
        "data": "hello", "ackId": 1});
    ws.send(Message::Text(event.to_string().into()))
        .await
        .unwrap();
    loop {
        let frame = tokio::time::timeout(Duration::from_secs(10), ws.next())
            .await
            .expect("an ack within 10 s");
        match frame {
            Some(Ok(Message::Text(t))) => {
                let v: Value = serde_json::from_str(&t).unwrap();
                if v["type"] == "ack" {
                    assert_eq!(v["success"], true, "{v}");
                    break;
                }
            }
            Some(Ok(_)) => {}
            other => panic!("closed before the ack: {other:?}"),
        }
    }
    ws.close(None).await.unwrap();
    while let Ok(Some(Ok(_))) = tokio::time::timeout(Duration::from_secs(5), ws.next()).await {}

    let events = ["connect", "connected", "message", "disconnected"];
    let hook_lines = |event: &str| {
        let lines = lines.lock().unwrap();
        let prefix = format!("  webhook {event} ");
        lines.iter().filter(|l| l.starts_with(&prefix)).count()
    };
    let all_seen = poll(
        Duration::from_secs(10),
        Duration::from_millis(50),
        async || events.iter().all(|e| hook_lines(e) > 0),
    )
    .await;
    // A second (structured or repeated) line would come right after the first.
    tokio::time::sleep(Duration::from_millis(500)).await;
    child.kill();
    let stderr = err_reader.join().unwrap();
    let lines = lines.lock().unwrap();
    let after_banner: Vec<String> = lines
        .iter()
        .skip_while(|l| !banner_end(l))
        .skip(1)
        .cloned()
        .collect();
    assert!(
        all_seen,
        "a line for each webhook: {after_banner:?}\n{stderr}"
    );
    (after_banner, stderr)
}

/// The one-line-per-webhook printer of `dev` (issue 9): a person at a terminal gets the friendly
/// line only; `RUST_LOG` still turns the structured log on, on stderr, without colour codes in a
/// pipe.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dev_prints_one_line_per_webhook_and_rust_log_adds_the_structured_log() {
    for rust_log in [None, Some("info")] {
        let (stdout, stderr) = dev_session(rust_log).await;
        let events = ["connect", "connected", "message", "disconnected"];
        for event in events {
            let prefix = format!("  webhook {event} ");
            let lines: Vec<_> = stdout.iter().filter(|l| l.starts_with(&prefix)).collect();
            assert_eq!(
                lines.len(),
                1,
                "{rust_log:?}: one {event} line: {stdout:#?}"
            );
            assert!(lines[0].contains("-> 200 in"), "{}", lines[0]);
        }
        assert_eq!(
            stdout.len(),
            events.len(),
            "{rust_log:?}: nothing but one line per webhook: {stdout:#?}"
        );
        assert!(
            !stderr.contains('\x1b'),
            "{rust_log:?}: ANSI on a pipe: {stderr}"
        );
        let structured = stderr.matches("webhook handled").count();
        match rust_log {
            None => {
                assert_eq!(structured, 0, "no structured log by default: {stderr}");
                assert!(!stderr.contains(" INFO "), "{stderr}");
            }
            Some(_) => assert!(
                structured >= events.len(),
                "RUST_LOG=info: a structured line per webhook: {stderr}"
            ),
        }
    }
}
