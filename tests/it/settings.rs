//! The real binary's settings at start: every refusal is one line naming the variable, and no
//! access key reaches argv, output or logs (`hubhook serve`, `hubhook dev`, `hubhook emulator`).

use std::ffi::OsStr;
use std::io::{BufRead, BufReader};
use std::os::unix::ffi::OsStrExt;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use crate::support::{free_port, hubhook_command, KillOnDrop};

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
