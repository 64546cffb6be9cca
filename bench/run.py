#!/usr/bin/env python3
"""hubhook beside the official Node stack: the driver behind `bash bench/run.sh`.

Python 3 standard library only. run.sh has already built the release binaries
(`cargo build --release --examples --bin hubhook`), installed the Node peers (`npm ci` in bench/)
and made sure `wrk` is there. This script:

  W1  signed `message` webhook, echo reply, no store:
      examples/echo (hubhook's protocol module, signature verification ON)
      vs bench/node-echo.mjs (official @azure/web-pubsub-express, no verification)
      vs examples/ceiling (bare axum answering 200: the machine's ceiling)
  W2  the full chat path (verify, persist with synchronous=FULL, broadcast to a loopback REST
      stand-in, reply): `hubhook serve` vs bench/node-chat.mjs; afterwards the servers are
      SIGKILLed and every acknowledged message id is looked up in each store
  RSS peak (VmHWM) of each W2 server, read from /proc/<pid>/status after its W2 rounds
  cold start: process spawn -> first 200 on a signed webhook (examples/coldstart), median
  Lambda: bootstrap.zip size if built; INIT (spawn -> first runtime-API call) under a stand-in

Load: wrk, 64 connections, a warm-up per target, then rounds interleaved A B A B; the figure is
the median of the rounds. By default each server is pinned to CPU 1 and wrk + the REST stand-ins
to CPU 0 (`taskset`), so on a 2-core machine the handler under test gets one core to itself and
the load generator never competes with it (`--no-pin` turns this off).

Writes bench/RESULTS.md (with --quick: bench/.run/RESULTS.quick.md, marked as a smoke run) and
the raw numbers to bench/.run/results.json. Every load loop is bounded in time; only loopback
(127.0.0.1) is used.
"""

from __future__ import annotations

import argparse
import base64
import datetime as dt
import hashlib
import hmac
import http.client
import json
import os
import platform
import re
import shutil
import signal
import socket
import sqlite3
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
RUN = BENCH / ".run"
TARGET = Path(os.environ.get("CARGO_TARGET_DIR") or ROOT / "target").resolve()
RELEASE = TARGET / "release"
EXAMPLES = RELEASE / "examples"
LAMBDA_ZIP = TARGET / "lambda" / "hubhook" / "bootstrap.zip"

# The public local-emulator key (never valid on a real resource).
KEY = "ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789ABCDEFGH"
HUB = "chat"
CONNECTION_ID = "bench-conn-0"
SIGNATURE = "sha256=" + hmac.new(KEY.encode(), CONNECTION_ID.encode(), hashlib.sha256).hexdigest()
STATE = base64.b64encode(b'{"room":"lobby"}').decode()
TEXT = "hello from the bench"
CONNECTIONS = 64

PROFILES = {
    # seconds of warm-up per target, seconds per round, rounds, cold-start samples per target
    "full": dict(warmup=10, duration=15, rounds=5, cold_runs=20),
    "quick": dict(warmup=1, duration=2, rounds=2, cold_runs=3),
}

_procs: list["Proc"] = []


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def sh(argv: list[str], cwd: Path | None = None, timeout: float = 30) -> str:
    try:
        out = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=timeout)
        return (out.stdout or out.stderr).strip()
    except (OSError, subprocess.SubprocessError) as e:
        return f"unavailable ({e})"


class Proc:
    """A server we started: pinned (optionally), logged to bench/.run/<name>.log, always stopped."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str], cpu: int | None, port: int | None):
        self.name = name
        self.port = port
        self.log_path = RUN / f"{name}.log"
        full = (["taskset", "-c", str(cpu)] if cpu is not None else []) + argv
        self.log = open(self.log_path, "ab")
        # taskset execs the command, so the pid is the server's own (what /proc/<pid>/status needs).
        self.p = subprocess.Popen(full, env=env, cwd=ROOT, stdin=subprocess.DEVNULL,
                                  stdout=self.log, stderr=subprocess.STDOUT)
        _procs.append(self)

    @property
    def pid(self) -> int:
        return self.p.pid

    def wait_ready(self, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.p.poll() is not None:
                raise RuntimeError(f"{self.name} exited ({self.p.returncode}); see {self.log_path}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return
            except OSError:
                time.sleep(0.02)
        raise RuntimeError(f"{self.name} not listening on {self.port} after {timeout}s; see {self.log_path}")

    def status_kb(self, field: str) -> int | None:
        try:
            for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
                if line.startswith(field + ":"):
                    return int(line.split()[1])
        except OSError:
            return None
        return None

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 5) -> None:
        if self.p.poll() is None:
            try:
                self.p.send_signal(sig)
                self.p.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.p.kill()
                self.p.wait(timeout=timeout)
            except ProcessLookupError:
                pass
        self.log.close()
        if self in _procs:
            _procs.remove(self)


def stop_all() -> None:
    for p in list(_procs):
        try:
            p.stop(signal.SIGKILL)
        except Exception:  # noqa: BLE001 - best effort at exit
            pass


def webhook_headers(ce_id: str, signature: str = SIGNATURE) -> dict[str, str]:
    return {
        "Content-Type": "text/plain",
        "ce-specversion": "1.0",
        "ce-awpsversion": "1.0",
        "ce-type": "azure.webpubsub.user.message",
        "ce-source": f"/hubs/{HUB}/client/{CONNECTION_ID}",
        "ce-id": ce_id,
        "ce-time": "2024-05-01T10:00:00Z",
        "ce-signature": signature,
        "ce-userId": "bench-user",
        "ce-connectionId": CONNECTION_ID,
        "ce-hub": HUB,
        "ce-eventName": "message",
        "ce-connectionState": STATE,
        "WebHook-Request-Origin": "127.0.0.1",
    }


def post(port: int, ce_id: str, signature: str = SIGNATURE) -> tuple[int, str]:
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        c.request("POST", "/eventhandler", body=TEXT.encode(), headers=webhook_headers(ce_id, signature))
        r = c.getresponse()
        return r.status, r.read().decode(errors="replace")
    finally:
        c.close()


def zip_arch(path: Path) -> str:
    """The ELF machine of `bootstrap` inside the Lambda zip (arm64 or x86_64)."""
    import zipfile

    try:
        with zipfile.ZipFile(path) as z:
            head = z.open("bootstrap").read(20)
        machine = int.from_bytes(head[18:20], "little")
        return {0xB7: "arm64", 0x3E: "x86_64"}.get(machine, f"ELF machine {machine:#x}")
    except (OSError, KeyError, zipfile.BadZipFile):
        return "unknown"


class Bench:
    def __init__(self, args: argparse.Namespace):
        self.args = args
        prof = dict(PROFILES["quick" if args.quick else "full"])
        for k in prof:
            v = getattr(args, k)
            if v is not None:
                prof[k] = v
        self.p = prof
        self.pin = not args.no_pin
        self.server_cpu = 1 if self.pin else None
        self.loadgen_cpu = 0 if self.pin else None
        self.wrk_threads = 1 if self.pin else 2
        self.rust_log = os.environ.get("BENCH_RUST_LOG", "warn")
        self.data: dict = {"profile": prof, "pinned": self.pin, "started": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")}
        self.tag_seq = 0

    # ---------------------------------------------------------------- helpers

    def env(self, **extra: str) -> dict[str, str]:
        e = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_LAMBDA_", "FUNCTIONS_CUSTOMHANDLER"))}
        e.update({"HUBHOOK_BIND": "127.0.0.1", "RUST_LOG": self.rust_log, "NODE_ENV": "production"})
        e.update(extra)
        return e

    def start(self, name: str, argv: list[str], cpu: int | None, **env: str) -> Proc:
        port = free_port()
        p = Proc(name, argv, self.env(PORT=str(port), **env), cpu, port)
        p.wait_ready()
        return p

    def wrk(self, port: int, script: str, seconds: int, **env: str) -> dict:
        self.tag_seq += 1
        tag = f"r{os.getpid()}x{self.tag_seq}"
        argv = ["wrk", f"-t{self.wrk_threads}", f"-c{CONNECTIONS}", f"-d{seconds}s", "--timeout", "5s",
                "-s", str(BENCH / script), f"http://127.0.0.1:{port}/eventhandler"]
        if self.loadgen_cpu is not None:
            argv = ["taskset", "-c", str(self.loadgen_cpu)] + argv
        wenv = self.env(BENCH_DIR=str(BENCH), BENCH_SIGNATURE=SIGNATURE, BENCH_CONNECTION_ID=CONNECTION_ID,
                        BENCH_STATE=STATE, BENCH_TEXT=TEXT, BENCH_HUB=HUB, BENCH_RUN_TAG=tag, **env)
        out = subprocess.run(argv, env=wenv, capture_output=True, text=True, timeout=seconds + 60)
        m = re.search(r"^BENCH_JSON (\{.*\})$", out.stdout, re.M)
        if out.returncode != 0 or not m:
            raise RuntimeError(f"wrk failed ({out.returncode}): {out.stdout[-2000:]} {out.stderr[-2000:]}")
        r = json.loads(m.group(1))
        secs = r["duration_us"] / 1e6
        r["ok_requests"] = r["requests"] - r["err_status"]
        r["rps"] = r["ok_requests"] / secs if secs > 0 else 0.0
        r["socket_errors"] = r["err_connect"] + r["err_read"] + r["err_write"] + r["err_timeout"]
        r["tag"] = tag
        return r

    def rounds(self, targets: list[tuple[str, Proc, dict]], script: str) -> dict[str, list[dict]]:
        """Warm-up for each target, then rounds A B A B; returns per-target lists of round results."""
        for name, proc, env in targets:
            log(f"  warm-up {name} ({self.p['warmup']} s)")
            r = self.wrk(proc.port, script, self.p["warmup"], **env)
            self.data.setdefault("warmups", {})[name] = r
        res: dict[str, list[dict]] = {name: [] for name, _, _ in targets}
        for i in range(self.p["rounds"]):
            for name, proc, env in targets:
                r = self.wrk(proc.port, script, self.p["duration"], **env)
                res[name].append(r)
                log(f"  round {i + 1}/{self.p['rounds']} {name}: {r['rps']:.0f} req/s, p99 {r['lat_p99_us'] / 1000:.2f} ms,"
                    f" non-2xx {r['err_status']}, socket errors {r['socket_errors']}")
        return res

    # ---------------------------------------------------------------- W1

    def w1(self) -> None:
        log("W1: signed message webhook, echo reply, no store")
        cs = f"Endpoint=http://127.0.0.1:9;AccessKey={KEY};Version=1.0;"
        echo = self.start("w1-hubhook-echo", [str(EXAMPLES / "echo")], self.server_cpu, WEBPUBSUB_CONNECTION_STRING=cs)
        node = self.start("w1-node-echo", ["node", str(BENCH / "node-echo.mjs")], self.server_cpu)
        ceiling = self.start("w1-ceiling", [str(EXAMPLES / "ceiling")], self.server_cpu)
        sanity = {}
        for name, proc in (("hubhook echo", echo), ("node-echo", node), ("ceiling", ceiling)):
            ok = post(proc.port, "sanity-1")
            bad = post(proc.port, "sanity-2", signature="sha256=" + "0" * 64)
            sanity[name] = {"signed": ok[0], "signed_body": ok[1][:80], "bad_signature": bad[0]}
            if ok[0] != 200 or (name != "ceiling" and ok[1] != TEXT):
                raise RuntimeError(f"W1 sanity: {name} answered {ok} to a signed message")
        if sanity["hubhook echo"]["bad_signature"] != 401:
            raise RuntimeError(f"W1 sanity: hubhook echo accepted a bad signature: {sanity['hubhook echo']}")
        self.data["w1_sanity"] = sanity
        targets = [("hubhook echo", echo, {}), ("node-echo", node, {}), ("ceiling", ceiling, {})]
        self.data["w1"] = self.rounds(targets, "wrk-w1.lua")
        for p in (echo, node, ceiling):
            p.stop()

    # ---------------------------------------------------------------- W2

    def w2(self) -> None:
        log("W2: full chat path (verify, persist synchronous=FULL, broadcast, reply)")
        standins = {}
        servers = {}
        stores = {}
        acks = {}
        for name, argv, extra in (
            ("hubhook serve", [str(RELEASE / "hubhook"), "serve"], {}),
            ("node-chat", ["node", str(BENCH / "node-chat.mjs")], {}),
        ):
            slug = "hubhook" if name.startswith("hubhook") else "node"
            standins[name] = self.start(f"w2-standin-{slug}", [str(EXAMPLES / "rest_standin")], self.loadgen_cpu)
            db = RUN / f"w2-{slug}.db"
            stores[name] = db
            acks[name] = RUN / f"acks-{slug}"
            acks[name].mkdir()
            cs = f"Endpoint=http://127.0.0.1:{standins[name].port};AccessKey={KEY};Version=1.0;"
            servers[name] = self.start(f"w2-{slug}", argv, self.server_cpu, WEBPUBSUB_CONNECTION_STRING=cs,
                                       HUBHOOK_STORE=f"sqlite://{db}", **extra)
        sanity = {}
        for name, proc in servers.items():
            first = post(proc.port, "sanity-1")
            again = post(proc.port, "sanity-1")
            try:
                a, b = json.loads(first[1]), json.loads(again[1])
            except ValueError:
                raise RuntimeError(f"W2 sanity: {name} answered {first} / {again}") from None
            if first[0] != 200 or a.get("type") != "stored" or not a.get("broadcast") or b.get("id") != a.get("id") or not b.get("duplicate"):
                raise RuntimeError(f"W2 sanity: {name} answered {first} then {again}")
            (acks[name] / "acked-sanity.txt").write_text(a["id"] + "\n")
            sanity[name] = {"reply": a, "retry_reply": b,
                            "idle_rss_kb": proc.status_kb("VmRSS"), "idle_hwm_kb": proc.status_kb("VmHWM")}
        self.data["w2_sanity"] = sanity
        targets = [(name, servers[name], {"BENCH_ACK_DIR": str(acks[name])}) for name in servers]
        self.data["w2"] = self.rounds(targets, "wrk-w2.lua")
        rss = {}
        for name, proc in servers.items():
            rss[name] = {"VmHWM_kb": proc.status_kb("VmHWM"), "VmRSS_kb": proc.status_kb("VmRSS"),
                         "idle_VmHWM_kb": sanity[name]["idle_hwm_kb"]}
        self.data["rss"] = rss
        # Let in-flight work settle, then count broadcasts and crash the servers (kill -9): what the
        # stores hold now is what survived a crash right after the load.
        time.sleep(1.0)
        for name in servers:
            c = http.client.HTTPConnection("127.0.0.1", standins[name].port, timeout=5)
            c.request("GET", "/__standin/stats")
            standin_stats = json.loads(c.getresponse().read())
            c.close()
            servers[name].stop(signal.SIGKILL)
            self.data.setdefault("durability", {})[name] = self.check_store(
                name, stores[name], acks[name], self.data["warmups"][name], self.data["w2"][name], standin_stats)
        self.standins = standins  # kept for the cold-start phase

    def check_store(self, name: str, db: Path, ack_dir: Path, warmup: dict, runs: list[dict], standin: dict) -> dict:
        all_runs = [warmup] + runs
        sent = sum(r["sent"] for r in all_runs) + 2  # + the sanity message and its retry
        ok = sum(r["ok"] for r in all_runs) + 2
        non2xx = sum(r["err_status"] for r in all_runs)
        acked: set[str] = set()
        lines = 0
        for f in ack_dir.glob("acked-*.txt"):
            for line in f.read_text().splitlines():
                if line:
                    lines += 1
                    acked.add(line)
        con = sqlite3.connect(db)
        try:
            stored_ids = {r[0] for r in con.execute("SELECT id FROM messages")}
            count = con.execute("SELECT count(*) FROM messages").fetchone()[0]
            integrity = con.execute("PRAGMA integrity_check").fetchone()[0]
        finally:
            con.close()
        missing = len(acked - stored_ids)
        result = {
            "requests_sent": sent, "acknowledged_2xx": ok, "non_2xx": non2xx,
            "acked_ids_recorded": lines, "distinct_acked_ids": len(acked),
            "stored_rows": count, "acked_missing_from_store": missing,
            "stored_not_acked": len(stored_ids - acked),
            "broadcasts": standin.get("posts"), "integrity": integrity,
        }
        result["stored_not_broadcast"] = count - (result["broadcasts"] or 0)
        # The sanity retry is acknowledged but is the same message: one id for two 2xx answers.
        result["ok"] = (missing == 0 and integrity == "ok" and lines == ok - 1 and count <= sent)
        log(f"  store check {name}: {json.dumps(result)}")
        return result

    # ---------------------------------------------------------------- cold start

    def coldstart(self, argv: list[str], mode: str = "http", **env: str) -> float:
        cmd = [str(EXAMPLES / "coldstart"), "--runs", "1", "--mode", mode, "--key", KEY,
               "--db-dir", str(RUN / "cold"), "--timeout-ms", "20000"]
        if mode == "http":
            cmd += ["--port", str(free_port())]
        cmd += ["--"] + argv
        with open(RUN / "coldstart.log", "ab") as errlog:
            out = subprocess.run(cmd, env=self.env(**env), capture_output=False, stdout=subprocess.PIPE,
                                 stderr=errlog, text=True, timeout=60, cwd=ROOT)
        if out.returncode != 0:
            raise RuntimeError(f"coldstart failed for {argv}: see {RUN / 'coldstart.log'}")
        return json.loads(out.stdout.strip().splitlines()[-1])["median_ms"]

    def cold(self) -> None:
        log(f"cold start: spawn -> first 200 on a signed message webhook, {self.p['cold_runs']} runs each, interleaved")
        (RUN / "cold").mkdir(exist_ok=True)
        standin = self.standins["hubhook serve"]
        cs = f"Endpoint=http://127.0.0.1:{standin.port};AccessKey={KEY};Version=1.0;"
        targets = [
            ("hubhook serve", [str(RELEASE / "hubhook"), "serve"], "http"),
            ("node-chat", ["node", str(BENCH / "node-chat.mjs")], "http"),
            ("hubhook echo", [str(EXAMPLES / "echo")], "http"),
            ("node-echo", ["node", str(BENCH / "node-echo.mjs")], "http"),
            ("hubhook Lambda INIT", [str(RELEASE / "hubhook")], "lambda"),
        ]
        samples: dict[str, list[float]] = {t[0]: [] for t in targets}
        for name, argv, mode in targets:  # one unmeasured start each: page cache, not process, warm
            self.coldstart(argv, mode, WEBPUBSUB_CONNECTION_STRING=cs)
        for i in range(self.p["cold_runs"]):
            for name, argv, mode in targets:
                samples[name].append(self.coldstart(argv, mode, WEBPUBSUB_CONNECTION_STRING=cs))
        for name, s in samples.items():
            log(f"  {name}: median {statistics.median(s):.1f} ms (min {min(s):.1f}, max {max(s):.1f})")
        self.data["cold"] = samples

    # ---------------------------------------------------------------- environment

    def environment(self) -> dict:
        info: dict = {}
        info["nproc"] = sh(["nproc"])
        cpu = "unknown"
        meminfo = "unknown"
        try:
            cpu = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                       if line.startswith("model name"))
            kb = int(next(line.split()[1] for line in Path("/proc/meminfo").read_text().splitlines()
                          if line.startswith("MemTotal")))
            meminfo = f"{kb / 1024 / 1024:.1f} GiB"
        except (OSError, StopIteration, ValueError):
            pass
        info["cpu"] = cpu
        info["ram"] = meminfo
        info["kernel"] = platform.release()
        osr = Path("/etc/os-release")
        info["os"] = next((line.split("=", 1)[1].strip('"') for line in osr.read_text().splitlines()
                           if line.startswith("PRETTY_NAME=")), "unknown") if osr.exists() else "unknown"
        info["fs"] = sh(["df", "--output=fstype", str(RUN)]).splitlines()[-1].strip()
        info["loadavg_start"] = Path("/proc/loadavg").read_text().split()[:3]
        info["rustc"] = sh(["rustc", "--version"])
        info["node"] = sh(["node", "--version"])
        info["wrk"] = sh(["wrk", "--version"]).splitlines()[0] if shutil.which("wrk") else "missing"
        info["python"] = platform.python_version()
        rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True)
        info["git"] = rev.stdout.strip() if rev.returncode == 0 else "unknown (not a git checkout)"
        info["git_dirty"] = rev.returncode == 0 and bool(sh(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT))
        pkgs = {}
        for pkg in ("@azure/web-pubsub-express", "@azure/web-pubsub", "express", "better-sqlite3"):
            try:
                pkgs[pkg] = json.loads((BENCH / "node_modules" / pkg / "package.json").read_text())["version"]
            except (OSError, ValueError, KeyError):
                pkgs[pkg] = "missing"
        info["npm"] = pkgs
        info["better_sqlite3_sqlite"] = sh(["node", "-e", "const D=require('better-sqlite3');"
                                            "console.log(new D(':memory:').prepare('select sqlite_version()').pluck().get())"], cwd=BENCH)
        crates = {}
        lock = (ROOT / "Cargo.lock").read_text() if (ROOT / "Cargo.lock").exists() else ""
        for crate in ("axum", "hyper", "tokio", "rusqlite", "libsqlite3-sys", "reqwest"):
            m = re.search(r'\[\[package\]\]\nname = "' + re.escape(crate) + r'"\nversion = "([^"]+)"', lock)
            crates[crate] = m.group(1) if m else "?"
        info["crates"] = crates
        m = re.search(r'^version = "([^"]+)"', (ROOT / "Cargo.toml").read_text(), re.M)
        info["hubhook"] = m.group(1) if m else "?"
        info["hubhook_binary_bytes"] = (RELEASE / "hubhook").stat().st_size
        info["lambda_zip_bytes"] = LAMBDA_ZIP.stat().st_size if LAMBDA_ZIP.exists() else None
        info["lambda_zip_arch"] = zip_arch(LAMBDA_ZIP) if LAMBDA_ZIP.exists() else None
        return info

    # ---------------------------------------------------------------- report

    def write_results(self, out: Path, command: str) -> None:
        d = self.data
        env = d["env"]
        med = statistics.median

        def m(target: str, key: str, wl: str) -> float:
            return med([r[key] for r in d[wl][target]])

        w1_h, w1_n, w1_c = (m(t, "rps", "w1") for t in ("hubhook echo", "node-echo", "ceiling"))
        p99_h, p99_n, p99_c = (m(t, "lat_p99_us", "w1") / 1000 for t in ("hubhook echo", "node-echo", "ceiling"))
        w2_h, w2_n = (m(t, "rps", "w2") for t in ("hubhook serve", "node-chat"))
        w2p99_h, w2p99_n = (m(t, "lat_p99_us", "w2") / 1000 for t in ("hubhook serve", "node-chat"))
        cold = {k: med(v) for k, v in d["cold"].items()}
        rss_h = d["rss"]["hubhook serve"]["VmHWM_kb"] / 1024
        rss_n = d["rss"]["node-chat"]["VmHWM_kb"] / 1024
        dur = d["durability"]

        def verdict(ok: bool) -> str:
            return "**met**" if ok else "**missed**"

        rows = [
            ("W1 requests/s", f"{w1_h:,.0f}", f"{w1_n:,.0f}", w1_h / w1_n, "≥ 5×", w1_h / w1_n >= 5),
            ("W1 p99 latency", f"{p99_h:.2f} ms", f"{p99_n:.2f} ms", p99_h / p99_n, "≤ 0.20×", p99_h / p99_n <= 0.2),
            ("W1 vs bare-server ceiling", f"{w1_h:,.0f}", f"{w1_c:,.0f} (ceiling)", w1_h / w1_c, "≥ 0.70×", w1_h / w1_c >= 0.7),
            ("W2 requests/s, every ack durable", f"{w2_h:,.0f}", f"{w2_n:,.0f}", w2_h / w2_n, "≥ 5×",
             w2_h / w2_n >= 5 and dur["hubhook serve"]["ok"]),
            ("cold start to first 200 (chat)", f"{cold['hubhook serve']:.1f} ms", f"{cold['node-chat']:.1f} ms",
             cold["hubhook serve"] / cold["node-chat"], "≤ 0.10×", cold["hubhook serve"] / cold["node-chat"] <= 0.1),
            ("peak RSS under W2 (VmHWM)", f"{rss_h:.1f} MiB", f"{rss_n:.1f} MiB", rss_h / rss_n, "≤ 0.20×", rss_h / rss_n <= 0.2),
        ]
        smoke = self.args.quick
        L: list[str] = []
        L.append("# hubhook beside the official Node stack: results" + (" — SMOKE RUN, NOT RESULTS" if smoke else ""))
        L.append("")
        if smoke:
            L.append("> **Smoke run (`--quick`)**: seconds per workload on a possibly loaded machine. These numbers only")
            L.append("> show that every row is measured; they are not the project's figures.")
            L.append("")
        L.append(f"Date: {d['started']} · command: `{command}` · git {env['git']}{' (dirty work tree)' if env['git_dirty'] else ''}"
                 f" · {d['elapsed_s']:.0f} s of measurement")
        L.append("")
        L.append("Each figure is the median of the rounds (cold start: of the samples). Ratio = hubhook / peer.")
        L.append("")
        L.append("| figure | hubhook | peer | ratio | target | |")
        L.append("|---|---|---|---|---|---|")
        for fig, h, n, ratio, target, ok in rows:
            L.append(f"| {fig} | {h} | {n} | {ratio:.2f}× | {target} | {verdict(ok)} |")
        zip_b = env["lambda_zip_bytes"]
        zip_txt = f"{zip_b / 1024 / 1024:.2f} MiB ({zip_b:,} bytes, {env['lambda_zip_arch']})" if zip_b else \
            "not measured: target/lambda/hubhook/bootstrap.zip not built (`cargo lambda build --release --arm64 --output-format zip`)"
        L.append(f"| Lambda bootstrap.zip size | {zip_txt} | | | report | |")
        li = cold["hubhook Lambda INIT"]
        L.append(f"| Lambda INIT under a runtime-API stand-in (x86_64 release build, SQLite) | {li:.1f} ms | | | ≤ 20 ms | {verdict(li <= 20)} |")
        L.append("")
        missed = [r[0] for r in rows if not r[5]] + (["Lambda INIT"] if li > 20 else [])
        load = float(env["loadavg_start"][0])
        if load > 0.5 and not smoke:
            L.append(f"> The machine was not idle (load average {load:.2f} at the start): rerun before quoting these figures.")
            L.append("")
        if missed and not smoke:
            L.append("**Missed targets** (why, and what would fix it, to be written here by whoever commits this run): "
                     + ", ".join(missed) + ".")
            L.append("")
        L.append("Peers: W1 = `bench/node-echo.mjs` (official `@azure/web-pubsub-express` quickstart shape; it does not verify"
                 " `ce-signature`, hubhook's `examples/echo.rs` does) and `examples/ceiling.rs` (bare axum, 200). W2, cold start and"
                 " RSS = `bench/node-chat.mjs` (express + `@azure/web-pubsub-express` + `WebPubSubServiceClient.group().sendToAll` +"
                 " `better-sqlite3`, WAL, `synchronous=FULL`, same schema and idempotency key as hubhook) vs `hubhook serve`"
                 " (SQLite WAL, `synchronous=FULL`, group commit). Broadcasts go to `examples/rest_standin.rs` (202, counts calls).")
        L.append("")
        L.append("## Details")
        L.append("")
        L.append("| workload | target | req/s per round | median req/s | p50 / p99 (median) | non-2xx | socket errors |")
        L.append("|---|---|---|---|---|---|---|")
        for wl in ("w1", "w2"):
            for t, rs in d[wl].items():
                per = ", ".join(f"{r['rps']:,.0f}" for r in rs)
                L.append(f"| {wl.upper()} | {t} | {per} | {med([r['rps'] for r in rs]):,.0f} | "
                         f"{med([r['lat_p50_us'] for r in rs]) / 1000:.2f} / {med([r['lat_p99_us'] for r in rs]) / 1000:.2f} ms | "
                         f"{sum(r['err_status'] for r in rs)} | {sum(r['socket_errors'] for r in rs)} |")
        L.append("")
        L.append(f"W2 p99: hubhook {w2p99_h:.2f} ms, node-chat {w2p99_n:.2f} ms.")
        L.append("")
        L.append("Cold start (ms; spawn → first 200 on a signed `message` webhook; chat rows open a fresh SQLite file and make their"
                 " first broadcast; Lambda INIT = spawn → first `GET /2018-06-01/runtime/invocation/next` of the x86_64 release"
                 " binary, SQLite store, against a runtime-API stand-in):")
        L.append("")
        L.append("| process | median | min | max | samples |")
        L.append("|---|---|---|---|---|")
        for k, v in d["cold"].items():
            L.append(f"| {k} | {med(v):.1f} | {min(v):.1f} | {max(v):.1f} | {len(v)} |")
        L.append("")
        L.append("Memory (MiB, from /proc/<pid>/status):")
        L.append("")
        L.append("| process | idle VmHWM | peak VmHWM under W2 | VmRSS after W2 |")
        L.append("|---|---|---|---|")
        for k, v in d["rss"].items():
            L.append(f"| {k} | {(v['idle_VmHWM_kb'] or 0) / 1024:.1f} | {v['VmHWM_kb'] / 1024:.1f} | {v['VmRSS_kb'] / 1024:.1f} |")
        L.append("")
        L.append("W2 durability check (servers killed with SIGKILL right after the load, then each store opened with sqlite3;"
                 " every message id of a 2xx answer was recorded by the wrk script and must be in the store):")
        L.append("")
        L.append("| server | sent | 2xx | non-2xx | stored rows | acked ids missing | stored, never acked | broadcasts | stored, never broadcast | integrity | |")
        L.append("|---|---|---|---|---|---|---|---|---|---|---|")
        for k, v in dur.items():
            L.append(f"| {k} | {v['requests_sent']:,} | {v['acknowledged_2xx']:,} | {v['non_2xx']} | {v['stored_rows']:,} | "
                     f"{v['acked_missing_from_store']} | {v['stored_not_acked']} | {v['broadcasts']:,} | {v['stored_not_broadcast']} | {v['integrity']} | "
                     f"{'**ok**' if v['ok'] else '**FAILED**'} |")
        L.append("")
        L.append("\"stored, never acked\" = requests in flight when a wrk run stopped (the client closed the connection before the"
                 " answer); they were committed but no one was told, which is allowed. \"acked ids missing\" must be 0."
                 " \"stored, never broadcast\" > 0 means a request whose handler was dropped (client gone) after the commit"
                 " and before the broadcast: a retry of that delivery is answered as a duplicate and never broadcast.")
        L.append("")
        L.append("## Method")
        L.append("")
        pin = ("each server pinned to CPU 1, wrk and the REST stand-ins to CPU 0 (`taskset`)" if self.pin
               else "no CPU pinning")
        L.append(f"- Load: wrk, {CONNECTIONS} connections, {self.wrk_threads} thread(s), {self.p['warmup']} s warm-up per target, then"
                 f" {self.p['rounds']} rounds of {self.p['duration']} s interleaved A B A B; {pin}. Cold start: no pinning,"
                 f" {self.p['cold_runs']} samples per process after one unmeasured start, interleaved.")
        L.append("- W1 sends one fixed signed `message` (text/plain, connection state `{\"room\":\"lobby\"}`); W2 gives every request a"
                 " unique `ce-id` (run tag, wrk thread, counter), so each is a new message that is stored and broadcast.")
        L.append("- node-chat commits each message in its own transaction (one fsync per message, the event loop blocked"
                 " meanwhile), as better-sqlite3 code is ordinarily written; hubhook's writer thread commits the waiting"
                 " messages together (group commit). Both answer only after the commit.")
        L.append(f"- hubhook runs with `RUST_LOG={self.rust_log}` (no per-request log lines; the Node peers log nothing either);"
                 " the Node peers run with `NODE_ENV=production`.")
        L.append("")
        L.append("## Machine and versions")
        L.append("")
        L.append(f"- {env['nproc']} CPUs ({env['cpu']}), {env['ram']} RAM, {env['os']}, Linux {env['kernel']}, store files on {env['fs']};"
                 f" load average at start {' '.join(env['loadavg_start'])}, at the end {' '.join(env['loadavg_end'])}")
        L.append(f"- {env['rustc']}; hubhook {env['hubhook']} (release binary {env['hubhook_binary_bytes'] / 1024 / 1024:.1f} MiB);"
                 " " + ", ".join(f"{k} {v}" for k, v in env["crates"].items()))
        L.append(f"- Node {env['node']}; " + ", ".join(f"{k} {v}" for k, v in env["npm"].items())
                 + f" (SQLite {env['better_sqlite3_sqlite']})")
        L.append(f"- {env['wrk']}; Python {env['python']}")
        L.append("")
        out.write_text("\n".join(L) + "\n")

    # ---------------------------------------------------------------- main

    def run(self, command: str) -> Path:
        if RUN.exists():
            shutil.rmtree(RUN)
        RUN.mkdir(parents=True)
        for exe in (RELEASE / "hubhook", EXAMPLES / "echo", EXAMPLES / "ceiling", EXAMPLES / "rest_standin", EXAMPLES / "coldstart"):
            if not exe.exists():
                raise SystemExit(f"missing {exe}: run `cargo build --release --examples --bin hubhook` (bench/run.sh does)")
        if not shutil.which("wrk"):
            raise SystemExit("wrk is not installed (bench/run.sh installs it with apt-get)")
        if self.pin and (not shutil.which("taskset") or (os.cpu_count() or 1) < 2):
            log("taskset missing or fewer than 2 CPUs: running without pinning")
            self.pin, self.server_cpu, self.loadgen_cpu, self.wrk_threads = False, None, None, 2
            self.data["pinned"] = False
        self.data["env"] = self.environment()
        t0 = time.monotonic()
        self.w1()
        self.w2()
        self.cold()
        self.data["env"]["loadavg_end"] = Path("/proc/loadavg").read_text().split()[:3]
        self.data["elapsed_s"] = round(time.monotonic() - t0, 1)
        (RUN / "results.json").write_text(json.dumps(self.data, indent=2))
        out = Path(self.args.out) if self.args.out else (RUN / "RESULTS.quick.md" if self.args.quick else BENCH / "RESULTS.md")
        self.write_results(out, command)
        return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="smoke run: seconds per workload; writes bench/.run/RESULTS.quick.md")
    ap.add_argument("--no-pin", action="store_true", help="do not pin servers and load generator to separate CPUs")
    ap.add_argument("--out", help="where to write the results (default bench/RESULTS.md, or .run/RESULTS.quick.md with --quick)")
    ap.add_argument("--warmup", type=int, help="seconds of warm-up per target")
    ap.add_argument("--duration", type=int, help="seconds per round")
    ap.add_argument("--rounds", type=int, help="interleaved rounds per workload")
    ap.add_argument("--cold-runs", dest="cold_runs", type=int, help="cold-start samples per process")
    args = ap.parse_args()
    command = os.environ.get("BENCH_COMMAND") or ("python3 bench/run.py " + " ".join(sys.argv[1:])).strip()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    bench = Bench(args)
    try:
        out = bench.run(command)
    finally:
        stop_all()
    log(f"done in {bench.data.get('elapsed_s')} s: {out}")
    print(out.read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
