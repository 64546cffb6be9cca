//! The Node-backed tests: the official npm SDKs run as subprocesses (`tests/js/*.mjs`) and
//! dynalite. Without Node.js or `tests/js/node_modules` such a test is skipped with a printed
//! reason, unless `HUBHOOK_REQUIRE_NODE=1` (set by `scripts/test.sh`, which installs them): then
//! it fails with that reason.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use serde_json::Value;
use tokio::io::AsyncWriteExt;

use super::free_port;

pub const NEEDS: &str = "needs Node.js and tests/js/node_modules \
                         (run bash scripts/js-deps.sh, or bash scripts/test.sh)";
const FIX: &str =
    "run `bash scripts/js-deps.sh` (installs the pinned npm packages with `npm ci`), \
                   or the README's test command `bash scripts/test.sh`";

fn manifest_dir() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn js_dir() -> PathBuf {
    manifest_dir().join("tests/js")
}

/// Why Node-backed tests cannot run here, if they cannot.
fn missing() -> Option<&'static str> {
    static NODE_RUNS: OnceLock<bool> = OnceLock::new();
    let node_runs = *NODE_RUNS.get_or_init(|| {
        Command::new("node")
            .arg("--version")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    });
    if !node_runs {
        Some("`node` is not on PATH")
    } else if !js_dir().join("node_modules").is_dir() {
        Some("tests/js/node_modules is missing")
    } else {
        None
    }
}

/// A headless browser of the dev page's tests, as Debian packages it (`scripts/test.sh`
/// installs both).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Browser {
    /// `/usr/bin/chromium`, which `tests/js/browser.mjs` drives through playwright-core.
    Chromium,
    /// `/usr/bin/firefox-esr`, which `tests/js/browser-drivers.mjs` drives through
    /// puppeteer-core over WebDriver BiDi.
    Firefox,
}

impl Browser {
    fn executable(self) -> &'static str {
        match self {
            Browser::Chromium => "/usr/bin/chromium",
            Browser::Firefox => "/usr/bin/firefox-esr",
        }
    }

    fn package(self) -> &'static str {
        match self {
            Browser::Chromium => "chromium",
            Browser::Firefox => "firefox-esr",
        }
    }
}

/// [`node_or_skip`], and `browser` installed: without it, skipped with a printed reason, or a
/// failure under `HUBHOOK_REQUIRE_NODE=1`.
pub fn browser_or_skip(test: &str, browser: Browser) -> Option<NodeEnv> {
    let node = node_or_skip(test)?;
    let exe = browser.executable();
    if Path::new(exe).is_file() {
        return Some(node);
    }
    skip(
        test,
        &format!(
            "{exe} is missing (`apt-get install {}`; scripts/test.sh installs it)",
            browser.package()
        ),
    )
}

/// Skips `test` for `why`: a line on stderr, or a panic under `HUBHOOK_REQUIRE_NODE=1`. The line
/// starts `skipped <test>: needs Node.js`, which `scripts/test.sh` looks for.
fn skip(test: &str, why: &str) -> Option<NodeEnv> {
    if std::env::var("HUBHOOK_REQUIRE_NODE").as_deref() == Ok("1") {
        panic!("{test}: {NEEDS}; {why} (HUBHOOK_REQUIRE_NODE=1: not skipped)");
    }
    // Straight to stderr: libtest captures `eprintln!` of passing tests.
    let _ = writeln!(std::io::stderr(), "skipped {test}: {NEEDS}; {why}");
    None
}

/// Node.js and the npm packages are there: runs the scripts in `tests/js`.
#[derive(Debug, Clone)]
pub struct NodeEnv {
    _private: (),
}

/// `Some` when Node.js and `tests/js/node_modules` are there. Otherwise prints
/// `skipped <test>: needs Node.js …` and returns `None` — or panics with that reason when
/// `HUBHOOK_REQUIRE_NODE=1`.
pub fn node_or_skip(test: &str) -> Option<NodeEnv> {
    match missing() {
        None => Some(NodeEnv { _private: () }),
        Some(why) => skip(test, why),
    }
}

impl NodeEnv {
    /// Panics unless each of `packages` is installed in `tests/js/node_modules`.
    pub fn require(&self, packages: &[&str]) {
        let modules = js_dir().join("node_modules");
        for pkg in packages {
            assert!(
                modules.join(pkg).join("package.json").is_file(),
                "tests/js/node_modules/{pkg} is missing: {FIX}"
            );
        }
    }

    /// Panics unless each `(package, version)` is installed at exactly that version.
    pub fn require_versions(&self, pinned: &[(&str, &str)]) {
        for (pkg, version) in pinned {
            let manifest = js_dir().join("node_modules").join(pkg).join("package.json");
            let text = std::fs::read_to_string(&manifest)
                .unwrap_or_else(|e| panic!("{} unreadable ({e}): {FIX}", manifest.display()));
            let v: Value = serde_json::from_str(&text).expect("package.json is JSON");
            assert_eq!(
                v["version"].as_str(),
                Some(*version),
                "{pkg} in tests/js/node_modules is not the pinned version: {FIX}"
            );
        }
    }

    /// Runs `node tests/js/<script>` (stdin, env) until it exits or `limit` passes.
    async fn run(
        &self,
        script: &str,
        stdin: Option<&Value>,
        env: &[(&str, String)],
        limit: Duration,
    ) -> std::process::Output {
        let mut child = tokio::process::Command::new("node")
            .arg(format!("tests/js/{script}"))
            .current_dir(manifest_dir())
            .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
            .stdin(if stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot run `node` ({e}): install Node.js >= 20, then `bash scripts/js-deps.sh`")
            });
        if let Some(input) = stdin {
            let mut pipe = child.stdin.take().expect("piped stdin");
            pipe.write_all(input.to_string().as_bytes())
                .await
                .expect("write node stdin");
            drop(pipe);
        }
        tokio::time::timeout(limit, child.wait_with_output())
            .await
            .unwrap_or_else(|_| panic!("node {script} still running after {limit:?} (killed)"))
            .expect("node runs")
    }

    /// A tool script (`tokens.mjs`, `rest-capture.mjs`, `express-parse.mjs`): `input` on stdin,
    /// exit 0, its one JSON line.
    pub async fn json(&self, script: &str, input: &Value) -> Value {
        let out = self
            .run(script, Some(input), &[], Duration::from_secs(120))
            .await;
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success(),
            "node {script} failed ({}):\nstdout: {stdout}\nstderr: {stderr}",
            out.status
        );
        let line = stdout.lines().rfind(|l| !l.trim().is_empty()).unwrap_or("");
        serde_json::from_str(line).unwrap_or_else(|e| {
            panic!("node {script}: not one JSON line ({e}): {stdout}\n{stderr}")
        })
    }

    /// An end-to-end client (`e2e-*.mjs`): input in `env`; its one JSON result line, which must
    /// say `"ok": true`. The scripts have their own watchdogs (≤ 60 s); 90 s is the backstop.
    pub async fn e2e(&self, script: &str, env: &[(&str, String)]) -> Value {
        let started = Instant::now();
        let out = self.run(script, None, env, Duration::from_secs(90)).await;
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        let line = stdout.lines().rfind(|l| !l.trim().is_empty()).unwrap_or("");
        let v: Value = serde_json::from_str(line).unwrap_or_else(|e| {
            panic!(
                "node {script} ({}): no JSON result line ({e})\nstdout: {stdout}\nstderr: {stderr}",
                out.status
            )
        });
        assert!(
            out.status.success() && v["ok"] == true,
            "node {script} failed ({}): {}\nstderr:\n{stderr}",
            out.status,
            v["error"].as_str().unwrap_or(line)
        );
        eprintln!(
            "node {script} {:?}: ok in {:.1} s",
            env.iter()
                .filter(|(k, _)| *k == "PROTOCOL")
                .map(|(_, v)| v.as_str())
                .collect::<Vec<_>>(),
            started.elapsed().as_secs_f64()
        );
        v
    }
}

/// A dynalite server on a free loopback port, killed on drop.
pub struct Dynalite {
    child: Child,
    pub endpoint: String,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

const HOW_TO_INSTALL: &str = "the DynamoDB tests need Node.js >= 20 and dynalite in \
     tests/js/node_modules: run the README's test command, `bash scripts/test.sh`";

impl Dynalite {
    /// A running dynalite, or `None` (skipped, see [`node_or_skip`]) without Node.js.
    pub async fn start_or_skip(test: &str) -> Option<Dynalite> {
        let node = node_or_skip(test)?;
        Some(Dynalite::start(&node).await)
    }

    pub async fn start(_node: &NodeEnv) -> Dynalite {
        let cli = js_dir().join("node_modules/dynalite/cli.js");
        assert!(
            cli.is_file(),
            "{} is missing: {HOW_TO_INSTALL}",
            cli.display()
        );
        let mut last_log = String::new();
        for _ in 0..3 {
            let port = free_port();
            let dir = tempfile::tempdir().unwrap();
            let log = dir.path().join("dynalite.log");
            let out = std::fs::File::create(&log).unwrap();
            let child = Command::new("node")
                .arg(&cli)
                .args(["--host", "127.0.0.1", "--port", &port.to_string()])
                .args([
                    "--createTableMs",
                    "0",
                    "--deleteTableMs",
                    "0",
                    "--updateTableMs",
                    "0",
                ])
                .stdin(Stdio::null())
                .stdout(out.try_clone().unwrap())
                .stderr(out)
                .spawn()
                .unwrap_or_else(|e| panic!("cannot run `node` ({e}): {HOW_TO_INSTALL}"));
            let mut d = Dynalite {
                child,
                endpoint: format!("http://127.0.0.1:{port}"),
                log,
                _dir: dir,
            };
            let deadline = Instant::now() + Duration::from_secs(20);
            while Instant::now() < deadline {
                if let Some(status) = d.child.try_wait().unwrap() {
                    last_log = format!(
                        "dynalite exited with {status}: {}",
                        std::fs::read_to_string(&d.log).unwrap_or_default()
                    );
                    break;
                }
                if tokio::net::TcpStream::connect(("127.0.0.1", port))
                    .await
                    .is_ok()
                {
                    return d;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            if last_log.is_empty() {
                panic!(
                    "dynalite did not listen on {port} within 20 s: {}",
                    std::fs::read_to_string(&d.log).unwrap_or_default()
                );
            }
            // Exited (e.g. the port was taken meanwhile): try another port.
        }
        panic!("{last_log}\n{HOW_TO_INSTALL}");
    }
}

impl Drop for Dynalite {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// An Azurite Table server (npm `azurite`, pinned in tests/js) on a free loopback port, with its
/// data on disk in a temporary directory, so it can be stopped and started again on the same
/// port with the same tables; killed on drop.
pub struct Azurite {
    child: Option<Child>,
    pub port: u16,
    dir: tempfile::TempDir,
    /// Beyond host, port and location (e.g. `--oauth basic --cert … --key …`).
    extra: Vec<String>,
}

/// Azurite's published development account key (not a secret).
pub const AZURITE_KEY: &str =
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==";

impl Azurite {
    /// A running Azurite, or `None` (skipped, see [`node_or_skip`]) without Node.js.
    pub async fn start_or_skip(test: &str) -> Option<Azurite> {
        Azurite::start_with_or_skip(test, &[]).await
    }

    /// The same with more command-line options (HTTPS and OAuth: `--oauth basic --cert C --key K`).
    pub async fn start_with_or_skip(test: &str, extra: &[&str]) -> Option<Azurite> {
        let node = node_or_skip(test)?;
        node.require(&["azurite"]);
        let mut last = String::new();
        for _ in 0..3 {
            let mut a = Azurite {
                child: None,
                port: free_port(),
                dir: tempfile::tempdir().unwrap(),
                extra: extra.iter().map(|a| a.to_string()).collect(),
            };
            match a.run().await {
                Ok(()) => return Some(a),
                Err(e) => last = e,
            }
        }
        panic!("{last}\n{HOW_TO_INSTALL}");
    }

    pub fn connection_string(&self) -> String {
        format!(
            "DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;AccountKey={AZURITE_KEY};\
             TableEndpoint=http://127.0.0.1:{}/devstoreaccount1;",
            self.port
        )
    }

    async fn run(&mut self) -> Result<(), String> {
        let cli = js_dir().join("node_modules/azurite/dist/src/table/main.js");
        let log = self.dir.path().join("azurite.log");
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .unwrap();
        let mut child = Command::new("node")
            .arg(&cli)
            .args(["--tableHost", "127.0.0.1", "--tablePort"])
            .arg(self.port.to_string())
            .arg("--location")
            .arg(self.dir.path())
            .args(["--silent", "--skipApiVersionCheck", "--disableTelemetry"])
            .args(&self.extra)
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run `node` ({e}): {HOW_TO_INSTALL}"));
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Some(status) = child.try_wait().unwrap() {
                return Err(format!(
                    "azurite exited with {status}: {}",
                    std::fs::read_to_string(&log).unwrap_or_default()
                ));
            }
            if tokio::net::TcpStream::connect(("127.0.0.1", self.port))
                .await
                .is_ok()
            {
                self.child = Some(child);
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let _ = child.kill();
        let _ = child.wait();
        panic!(
            "azurite did not listen on {} within 30 s: {}",
            self.port,
            std::fs::read_to_string(&log).unwrap_or_default()
        );
    }

    /// Stops the server with SIGTERM (it saves its data to disk then: its in-memory database
    /// would lose the last seconds to a SIGKILL), SIGKILL after 10 s.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            // SAFETY: kill(2) on the pid of a child we own and have not reaped.
            unsafe {
                libc::kill(c.id() as i32, libc::SIGCONT);
                libc::kill(c.id() as i32, libc::SIGTERM);
            }
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if c.try_wait().ok().flatten().is_some() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Freezes (SIGSTOP) or thaws (SIGCONT) the server: connections are accepted by the kernel
    /// and never answered while frozen; nothing is lost.
    pub fn freeze(&self, frozen: bool) {
        if let Some(c) = &self.child {
            let sig = if frozen { libc::SIGSTOP } else { libc::SIGCONT };
            // SAFETY: kill(2) on the pid of a child we own and have not reaped.
            unsafe { libc::kill(c.id() as i32, sig) };
        }
    }
}

impl Drop for Azurite {
    fn drop(&mut self) {
        self.stop();
    }
}
