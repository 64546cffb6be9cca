//! The real binary's listeners: a slow client cannot hold SIGTERM hostage, and a silent one is
//! dropped after the header timeout (`serve`, `hubhook emulator` and both of `dev`'s).

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Stdio;
use std::time::{Duration, Instant};

use crate::support::*;

fn serve(port: u16, db: &std::path::Path, extra: &[(&str, &str)]) -> KillOnDrop {
    let mut c = hubhook_command();
    c.arg("serve")
        .env("PORT", port.to_string())
        .env("HUBHOOK_BIND", "127.0.0.1")
        .env(
            "WEBPUBSUB_CONNECTION_STRING",
            format!("Endpoint=http://127.0.0.1:9;AccessKey={KEY};Version=1.0;"),
        )
        .env("HUBHOOK_STORE", format!("sqlite://{}", db.display()))
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    for (k, v) in extra {
        c.env(k, v);
    }
    KillOnDrop(c.spawn().expect("start hubhook"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_exits_within_the_drain_period_whatever_a_client_does() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut child = serve(
        port,
        &dir.path().join("s.db"),
        &[("HUBHOOK_DRAIN_TIMEOUT", "1s")],
    );
    wait_healthy(&reqwest::Client::new(), port).await;
    // Half a request head, then nothing: the client that kept the process alive for 40 s.
    let mut slow = TcpStream::connect(("127.0.0.1", port)).unwrap();
    slow.write_all(b"POST /eventhandler HTTP/1.1\r\nHost: x\r\n")
        .unwrap();
    std::thread::sleep(Duration::from_millis(100));

    let started = Instant::now();
    let pid = child.0.id() as i32;
    // SAFETY: kill(2) on our own child's pid.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
    let exited = loop {
        if let Some(status) = child.0.try_wait().unwrap() {
            break Some(status);
        }
        if started.elapsed() > Duration::from_secs(10) {
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let status = exited.expect("hubhook still running 10 s after SIGTERM");
    eprintln!(
        "exited {status} {:?} after SIGTERM (drain 1 s)",
        started.elapsed()
    );
    assert!(status.success(), "a drained shutdown exits 0: {status}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_connection_is_closed_after_the_header_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let _child = serve(
        port,
        &dir.path().join("s.db"),
        &[("HUBHOOK_HEADER_TIMEOUT", "300ms")],
    );
    wait_healthy(&reqwest::Client::new(), port).await;
    let mut silent = TcpStream::connect(("127.0.0.1", port)).unwrap();
    silent
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let started = Instant::now();
    let mut buf = [0u8; 64];
    // EOF (0) or a reset: either way the server let go, long before the 10 s read timeout.
    let n = silent.read(&mut buf).unwrap_or(0);
    assert_eq!(n, 0, "no response to a request never sent");
    assert!(started.elapsed() < Duration::from_secs(10));
    // The server still answers everyone else.
    wait_healthy(&reqwest::Client::new(), port).await;
}

/// A connection to `port` that sends nothing is let go within the short header timeout the
/// process was given (the default is 10 s).
fn assert_silent_connection_closed(port: u16, what: &str) {
    let mut silent = TcpStream::connect(("127.0.0.1", port)).unwrap();
    silent
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let started = Instant::now();
    let mut buf = [0u8; 64];
    match silent.read(&mut buf) {
        Ok(0) => {}
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
        Ok(n) => panic!("{what}: answered {n} bytes to a request never sent"),
        Err(e) => panic!("{what}: still open after {:?} ({e})", started.elapsed()),
    }
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{what}: closed only after {:?}",
        started.elapsed()
    );
}

/// Waits (up to 10 s) until the emulator on `port` answers its health probe.
async fn wait_emulator(port: u16) {
    let http = reqwest::Client::new();
    let url = format!("http://127.0.0.1:{port}/api/health");
    let up = poll(
        Duration::from_secs(10),
        Duration::from_millis(25),
        async || matches!(http.head(&url).send().await, Ok(r) if r.status() == 200),
    )
    .await;
    assert!(up, "the emulator did not become ready on port {port}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_emulators_listener_takes_the_header_timeout_too() {
    let dir = tempfile::tempdir().unwrap();
    let clean = |c: &mut std::process::Command| {
        for var in hubhook::config::VARIABLES {
            c.env_remove(var);
        }
        c.env("HUBHOOK_HEADER_TIMEOUT", "300ms")
            .stdout(Stdio::null())
            .stderr(Stdio::null());
    };

    let emu_port = free_port();
    let mut c = hubhook_command();
    clean(&mut c);
    c.arg("emulator")
        .env("HUBHOOK_EMULATOR_PORT", emu_port.to_string());
    let _emulator = KillOnDrop(c.spawn().expect("start hubhook emulator"));
    wait_emulator(emu_port).await;
    assert_silent_connection_closed(emu_port, "hubhook emulator");
    wait_emulator(emu_port).await;

    let (emu_port, fn_port) = (free_port(), free_port());
    let mut c = hubhook_command();
    clean(&mut c);
    c.args(["dev", "--emulator-port", &emu_port.to_string()])
        .env("PORT", fn_port.to_string())
        .env(
            "HUBHOOK_STORE",
            format!("sqlite://{}", dir.path().join("dev.db").display()),
        );
    let _dev = KillOnDrop(c.spawn().expect("start hubhook dev"));
    wait_healthy(&reqwest::Client::new(), fn_port).await;
    wait_emulator(emu_port).await;
    assert_silent_connection_closed(emu_port, "hubhook dev's emulator");
    assert_silent_connection_closed(fn_port, "hubhook dev's function");
}
