//! Cold-start driver for `bench/`: spawns a handler process and measures the wall time from
//! spawn to its first `200` on a signed webhook (or, with `--mode lambda`, to its first call of
//! the Lambda runtime API's `GET …/invocation/next`, i.e. the end of the Lambda INIT phase).
//!
//! ```text
//! coldstart [--runs N] [--port P] [--mode http|lambda] [--key KEY] [--db-dir DIR]
//!           [--timeout-ms MS] [--poll-us US] -- COMMAND [ARGS...]
//! ```
//! * `http` (default): sets `PORT=P` for the child, then polls `127.0.0.1:P` every `--poll-us`
//!   (default 100 µs) with a signed `message` user event (hub `chat`, `text/plain`, connection
//!   state `{"room":"lobby"}`, `WebHook-Request-Origin` set as the service sends it) until the
//!   first response; anything but 200 is an error.
//! * `lambda`: binds a runtime-API stand-in on an ephemeral port, sets `AWS_LAMBDA_RUNTIME_API`
//!   and the other variables Lambda sets, and stops the clock when the first request arrives.
//! * `--db-dir DIR`: each run gets a fresh `HUBHOOK_STORE=sqlite://DIR/cold-<n>.db`.
//!
//! The child inherits the environment and stderr; it is killed after each run. Prints one JSON
//! line: `{"mode":..,"samples_ms":[..],"median_ms":..}`. Every loop is bounded by `--timeout-ms`.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use hubhook::protocol::{
    build_webhook, ConnectionState, Event, EventContext, EventData, UserEvent,
};

const DEFAULT_KEY: &str = "ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789ABCDEFGH";

struct Opts {
    runs: usize,
    port: u16,
    lambda: bool,
    key: String,
    db_dir: Option<PathBuf>,
    timeout: Duration,
    poll: Duration,
    command: Vec<String>,
}

fn usage(msg: &str) -> ! {
    eprintln!("coldstart: {msg}\nusage: coldstart [--runs N] [--port P] [--mode http|lambda] [--key KEY] [--db-dir DIR] [--timeout-ms MS] [--poll-us US] -- COMMAND [ARGS...]");
    std::process::exit(2)
}

fn parse_opts() -> Opts {
    let mut o = Opts {
        runs: 1,
        port: 18_080,
        lambda: false,
        key: DEFAULT_KEY.into(),
        db_dir: None,
        timeout: Duration::from_secs(15),
        poll: Duration::from_micros(100),
        command: Vec::new(),
    };
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        if a == "--" {
            o.command = args.by_ref().collect();
            break;
        }
        let v = args
            .next()
            .unwrap_or_else(|| usage(&format!("{a} needs a value")));
        let num = |v: &str| -> u64 {
            v.parse()
                .unwrap_or_else(|_| usage(&format!("{a}: {v:?} is not a number")))
        };
        match a.as_str() {
            "--runs" => o.runs = num(&v) as usize,
            "--port" => o.port = num(&v) as u16,
            "--mode" => {
                o.lambda = match v.as_str() {
                    "http" => false,
                    "lambda" => true,
                    _ => usage("--mode is http or lambda"),
                }
            }
            "--key" => o.key = v,
            "--db-dir" => o.db_dir = Some(PathBuf::from(v)),
            "--timeout-ms" => o.timeout = Duration::from_millis(num(&v)),
            "--poll-us" => o.poll = Duration::from_micros(num(&v)),
            _ => usage(&format!("unknown option {a}")),
        }
    }
    if o.command.is_empty() {
        usage("no command given");
    }
    o
}

/// The raw bytes of one signed `message` webhook, as the service would POST it.
fn signed_request(port: u16, key: &str) -> Vec<u8> {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let mut state = ConnectionState::default();
    state.set("room", "lobby");
    let ctx = EventContext::new(
        "chat",
        "message",
        "bench-cold-conn",
        format!("cold-{nanos}"),
    )
    .with_user_id(Some("bench-user"))
    .with_state(state)
    .with_origin("127.0.0.1");
    let event = Event::User(UserEvent {
        name: "message".into(),
        data: EventData::Text("hello from a cold start".into()),
    });
    let (headers, body) = build_webhook(&ctx, &event, &[key]).expect("webhook builds");
    let mut req = format!(
        "POST /eventhandler HTTP/1.1\r\nhost: 127.0.0.1:{port}\r\ncontent-length: {}\r\nconnection: close\r\n",
        body.len()
    )
    .into_bytes();
    for (name, value) in &headers {
        req.extend_from_slice(name.as_str().as_bytes());
        req.extend_from_slice(b": ");
        req.extend_from_slice(value.as_bytes());
        req.extend_from_slice(b"\r\n");
    }
    req.extend_from_slice(b"\r\n");
    req.extend_from_slice(&body);
    req
}

/// Reads until the status line is complete; returns the status code.
fn read_status(stream: &mut TcpStream) -> std::io::Result<u16> {
    let mut buf = Vec::with_capacity(256);
    let mut chunk = [0u8; 256];
    loop {
        if let Some(end) = buf.windows(2).position(|w| w == b"\r\n") {
            let line = String::from_utf8_lossy(&buf[..end]).to_string();
            return line
                .split_whitespace()
                .nth(1)
                .and_then(|s| s.parse().ok())
                .ok_or_else(|| std::io::Error::other(format!("bad status line {line:?}")));
        }
        let n = stream.read(&mut chunk)?;
        if n == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "closed before a status line",
            ));
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

fn spawn(o: &Opts, run: usize, extra_env: &[(&str, String)]) -> Child {
    let mut c = Command::new(&o.command[0]);
    c.args(&o.command[1..])
        .stdin(Stdio::null())
        .stdout(Stdio::null());
    for (k, v) in extra_env {
        c.env(k, v);
    }
    if let Some(dir) = &o.db_dir {
        let db = dir.join(format!("cold-{}-{run}.db", std::process::id()));
        c.env("HUBHOOK_STORE", format!("sqlite://{}", db.display()));
    }
    c.spawn()
        .unwrap_or_else(|e| usage(&format!("cannot start {:?}: {e}", o.command[0])))
}

fn stop(mut child: Child) {
    let _ = child.kill();
    let _ = child.wait();
}

fn measure_http(o: &Opts, run: usize) -> Result<f64, String> {
    let addr = SocketAddr::from(([127, 0, 0, 1], o.port));
    if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
        return Err(format!("port {} is already in use", o.port));
    }
    let request = signed_request(o.port, &o.key);
    let t0 = Instant::now();
    let mut child = spawn(o, run, &[("PORT", o.port.to_string())]);
    let result = loop {
        if t0.elapsed() > o.timeout {
            break Err(format!("no 200 within {:?}", o.timeout));
        }
        if let Ok(Some(status)) = child.try_wait() {
            break Err(format!("child exited early: {status}"));
        }
        let Ok(mut s) = TcpStream::connect(addr) else {
            std::thread::sleep(o.poll);
            continue;
        };
        let _ = s.set_nodelay(true);
        let _ = s.set_read_timeout(Some(o.timeout));
        let attempt = s.write_all(&request).and_then(|_| read_status(&mut s));
        match attempt {
            Ok(200) => break Ok(t0.elapsed().as_secs_f64() * 1000.0),
            Ok(other) => break Err(format!("first answer was {other}, not 200")),
            // accepted but not ready yet (or reset while starting): poll again
            Err(_) => std::thread::sleep(o.poll),
        }
    };
    stop(child);
    result
}

fn measure_lambda(o: &Opts, run: usize) -> Result<f64, String> {
    let listener = TcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
    listener.set_nonblocking(true).map_err(|e| e.to_string())?;
    let api = listener
        .local_addr()
        .map_err(|e| e.to_string())?
        .to_string();
    let env = [
        ("AWS_LAMBDA_RUNTIME_API", api),
        ("AWS_LAMBDA_FUNCTION_NAME", "hubhook".to_string()),
        ("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "128".to_string()),
        ("AWS_LAMBDA_FUNCTION_VERSION", "$LATEST".to_string()),
        ("AWS_LAMBDA_LOG_STREAM_NAME", "bench".to_string()),
        ("AWS_LAMBDA_LOG_GROUP_NAME", "bench".to_string()),
    ];
    let t0 = Instant::now();
    let mut child = spawn(o, run, &env);
    let result = loop {
        if t0.elapsed() > o.timeout {
            break Err(format!("no runtime-API call within {:?}", o.timeout));
        }
        if let Ok(Some(status)) = child.try_wait() {
            break Err(format!("child exited early: {status}"));
        }
        match listener.accept() {
            Ok((mut s, _)) => {
                let _ = s.set_nonblocking(false);
                let _ = s.set_read_timeout(Some(o.timeout));
                let mut buf = [0u8; 512];
                let mut got = Vec::new();
                let line = loop {
                    match s.read(&mut buf) {
                        Ok(0) | Err(_) => break None,
                        Ok(n) => {
                            got.extend_from_slice(&buf[..n]);
                            if let Some(end) = got.windows(2).position(|w| w == b"\r\n") {
                                break Some(String::from_utf8_lossy(&got[..end]).to_string());
                            }
                        }
                    }
                };
                let elapsed = t0.elapsed().as_secs_f64() * 1000.0;
                match line {
                    Some(l) if l.contains("/runtime/invocation/next") => break Ok(elapsed),
                    Some(l) => break Err(format!("first runtime-API call was {l:?}")),
                    None => continue,
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => std::thread::sleep(o.poll),
            Err(e) => break Err(e.to_string()),
        }
    };
    stop(child);
    result
}

fn main() {
    let o = parse_opts();
    let mut samples = Vec::with_capacity(o.runs);
    for run in 0..o.runs {
        let r = if o.lambda {
            measure_lambda(&o, run)
        } else {
            measure_http(&o, run)
        };
        match r {
            Ok(ms) => samples.push(ms),
            Err(e) => {
                eprintln!("coldstart: run {run} of {:?}: {e}", o.command);
                std::process::exit(1);
            }
        }
    }
    let mut sorted = samples.clone();
    sorted.sort_by(f64::total_cmp);
    let median = if sorted.is_empty() {
        0.0
    } else if sorted.len() % 2 == 1 {
        sorted[sorted.len() / 2]
    } else {
        (sorted[sorted.len() / 2 - 1] + sorted[sorted.len() / 2]) / 2.0
    };
    let list = samples
        .iter()
        .map(|s| format!("{s:.3}"))
        .collect::<Vec<_>>()
        .join(",");
    println!(
        "{{\"mode\":\"{}\",\"samples_ms\":[{list}],\"median_ms\":{median:.3}}}",
        if o.lambda { "lambda" } else { "http" }
    );
}
