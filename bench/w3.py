#!/usr/bin/env python3
"""W3 (the dev loop end to end, issue 15) and the tunnel row (issue 12), through WebSockets.

Python 3 standard library only. Needs the release binaries
(`cargo build --release --examples --bins`): target/release/hubhook and the examples
wsload, ws_ceiling and echo; Node.js and tests/js/node_modules for the official-client rows
(skipped, with the reason, when missing).

W3   N clients (json.webpubsub.azure.v1) in one room of `hubhook dev` (emulator + chat function,
     SQLite with synchronous=FULL in a temp dir). Each client in turn sends a `message` user event
     (`{"type":"event","event":"message","dataType":"text",...,"ackId":k}`, what the chat page and
     the quickstart's sendEvent send); the chat function stores it (one fsync'd commit, grouped)
     and broadcasts it to the room through the emulator's REST API; every client (the sender
     included) must get it. Latency: from the send (and from its scheduled time) to each receiver's copy.
       latency rows: a paced rate (open loop) per N, below saturation;
       throughput rows: closed loop, W messages not yet delivered to everyone at a time.
     Stages, to say where the time goes: the ack latency (webhook + fsync'd write + REST
     broadcast call, measured in the same run), the emulator alone (`hubhook emulator`, clients
     `sendToGroup` to the room: fan-out only), the disk's fsync time, and the ceiling.
     Ceiling: examples/ws_ceiling.rs (bare tokio-tungstenite, every frame sent to every client),
     the same load client, the same throughput run.
TUNNEL  signed user-event webhooks from the emulator to examples/echo.rs (W1's echo), either
     directly (event handler = the echo's URL) or through `hubhook tunnel` (event handler
     `tunnel:///eventhandler`); C clients send user events with ackIds, a message is done at its
     ack (the echo's reply reaches the client first). Requests/s and p99; overhead ratio.

`section(opts) -> str` returns the markdown (opts: anything with `.quick`, or a dict);
`python3 bench/w3.py [--quick] [--only w3|tunnel] [--sizes 10,100]` prints it and writes the raw
numbers to bench/.run/w3.json. Loopback only; every run is bounded in time.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
RUN = BENCH / ".run"
TARGET = Path(os.environ.get("CARGO_TARGET_DIR") or ROOT / "target").resolve()
RELEASE = TARGET / "release"
EXAMPLES = RELEASE / "examples"
NODE_MODULES = ROOT / "tests" / "js" / "node_modules"
# The hubhook binary under test (W3_HUBHOOK overrides it: before/after comparisons).
HUBHOOK = Path(os.environ.get("W3_HUBHOOK") or RELEASE / "hubhook")
# A RAM-backed directory for the diagnostic row that takes fsync out of the dev loop.
SHM = Path("/dev/shm")

# The public local-emulator key (never valid on a real resource).
KEY = "ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789ABCDEFGH"
HUB = "chat"
ROOM = "lobby"

PROFILES = {
    # sizes; per N: paced rate (messages/s) for the latency row; closed-loop window for the
    # throughput row; seconds of warm-up and of measurement per run; tunnel clients.
    "full": dict(sizes=[10, 100, 1000], rate={10: 100, 100: 50, 1000: 5}, inflight={10: 16, 100: 8, 1000: 4},
                 warmup=3.0, duration=10.0, official_sizes=[10, 100], tunnel_clients=64, tunnel_duration=10.0,
                 rounds=3),
    "quick": dict(sizes=[10, 100], rate={10: 100, 100: 50, 1000: 5}, inflight={10: 16, 100: 8, 1000: 4},
                  warmup=1.0, duration=3.0, official_sizes=[10], tunnel_clients=32, tunnel_duration=3.0,
                  rounds=1),
}

_procs: list["Proc"] = []


def log(msg: str) -> None:
    print(f"[w3 {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cs_for(port: int) -> str:
    return f"Endpoint=http://127.0.0.1;Port={port};AccessKey={KEY};Version=1.0;"


class Proc:
    def __init__(self, name: str, argv: list[str], env: dict[str, str], ports: list[int]):
        self.name = name
        self.ports = ports
        RUN.mkdir(parents=True, exist_ok=True)
        self.log_path = RUN / f"w3-{name}.log"
        self.log = open(self.log_path, "ab")
        self.p = subprocess.Popen(argv, env=env, cwd=ROOT, stdin=subprocess.DEVNULL,
                                  stdout=self.log, stderr=subprocess.STDOUT)
        _procs.append(self)

    def wait_ready(self, timeout: float = 30) -> "Proc":
        deadline = time.monotonic() + timeout
        for port in self.ports:
            while True:
                if self.p.poll() is not None:
                    raise RuntimeError(f"{self.name} exited ({self.p.returncode}); see {self.log_path}")
                try:
                    with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                        break
                except OSError:
                    if time.monotonic() > deadline:
                        raise RuntimeError(f"{self.name} not listening on {port}; see {self.log_path}") from None
                    time.sleep(0.02)
        return self

    def wait_log(self, pattern: str, timeout: float = 20) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.p.poll() is not None:
                raise RuntimeError(f"{self.name} exited ({self.p.returncode}); see {self.log_path}")
            if re.search(pattern, self.log_path.read_text(errors="replace")):
                return
            time.sleep(0.05)
        raise RuntimeError(f"{self.name}: no {pattern!r} in {self.log_path} after {timeout}s")

    def stop(self) -> None:
        if self.p.poll() is None:
            self.p.send_signal(signal.SIGTERM)
            try:
                self.p.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.p.kill()
                self.p.wait(timeout=5)
        self.log.close()
        if self in _procs:
            _procs.remove(self)


def stop_all() -> None:
    for p in list(_procs):
        try:
            p.stop()
        except Exception:  # noqa: BLE001 - best effort
            pass


def env(**extra: str) -> dict[str, str]:
    e = {k: v for k, v in os.environ.items()
         if not k.startswith(("AWS_LAMBDA_", "FUNCTIONS_CUSTOMHANDLER", "WEBPUBSUB_", "HUBHOOK_"))}
    e.update({"RUST_LOG": os.environ.get("BENCH_RUST_LOG", "warn"), "HUBHOOK_BIND": "127.0.0.1"})
    e.update(extra)
    return e


def wsload(args: list[str], timeout: float) -> dict:
    argv = [str(EXAMPLES / "wsload")] + args
    out = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, env=env())
    m = re.search(r"^WSLOAD_JSON (\{.*\})$", out.stdout, re.M)
    if out.returncode != 0 or not m:
        raise RuntimeError(f"wsload {' '.join(args)} failed ({out.returncode}): {out.stdout[-1500:]} {out.stderr[-1500:]}")
    return json.loads(m.group(1))


def official(url_args: dict[str, str], timeout: float) -> dict:
    argv = ["node", str(BENCH / "w3-official.mjs")]
    e = env(**url_args)
    out = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, env=e, cwd=BENCH)
    m = re.search(r"^W3_JSON (\{.*\})$", out.stdout, re.M)
    if out.returncode != 0 or not m:
        raise RuntimeError(f"w3-official.mjs failed ({out.returncode}): {out.stdout[-1500:]} {out.stderr[-1500:]}")
    return json.loads(m.group(1))


def fsync_ms(directory: str, samples: int = 50) -> dict:
    """What a commit's flush costs in `directory`: a 4 KiB append + fsync (the file grows: a
    journal commit too), and a 4 KiB overwrite in place + fdatasync (what SQLite's WAL does once
    it has wrapped). Median and p90 of each, in ms."""
    path = Path(directory) / "fsync-probe"
    out = {"samples": samples}
    for kind in ("append_fsync", "overwrite_fdatasync"):
        times = []
        with open(path, "r+b" if kind == "overwrite_fdatasync" else "wb") as f:
            for i in range(samples):
                t = time.perf_counter()
                if kind == "overwrite_fdatasync":
                    f.seek((i % 16) * 4096)
                f.write(b"x" * 4096)
                f.flush()
                (os.fdatasync if kind == "overwrite_fdatasync" else os.fsync)(f.fileno())
                times.append((time.perf_counter() - t) * 1000)
        times.sort()
        out[kind] = {"median_ms": statistics.median(times), "p90_ms": times[int(0.9 * (len(times) - 1))]}
    path.unlink()
    return out


class W3:
    def __init__(self, quick: bool, sizes: list[int] | None = None):
        self.quick = quick
        self.p = dict(PROFILES["quick" if quick else "full"])
        if sizes:
            self.p["sizes"] = sizes
        self.data: dict = {"profile": {k: v for k, v in self.p.items()}, "rows": []}
        self.tmp = tempfile.mkdtemp(prefix="hubhook-w3-")
        self.dev_runs = 0

    def timing(self) -> list[str]:
        return ["--warmup", str(self.p["warmup"]), "--duration", str(self.p["duration"]), "--drain", "5"]

    def run_timeout(self, n: int) -> float:
        return 120 + self.p["warmup"] + self.p["duration"] + n * 0.05

    def dev(self, n: int, store_dir: str | None = None) -> tuple[Proc, int, int]:
        emu, fn = free_port(), free_port()
        # A fresh SQLite file for every `hubhook dev` (the official-client row used to reopen the
        # file the Rust client's rows of the same N had filled).
        self.dev_runs += 1
        db = Path(store_dir or self.tmp) / f"w3-dev-{n}-{os.getpid()}-{self.dev_runs}.db"
        p = Proc(f"dev-{n}", [str(HUBHOOK), "dev"],
                 env(HUBHOOK_EMULATOR_PORT=str(emu), PORT=str(fn), HUBHOOK_STORE=f"sqlite://{db}"), [emu, fn])
        return p.wait_ready(), emu, fn

    def record(self, **row) -> dict:
        self.data["rows"].append(row)
        r = row["result"]
        log(f"  {row['target']} N={row['n']} {row['kind']}: {r.get('msgs_per_s', 0):,.0f} msg/s, "
            f"{r.get('deliveries_per_s', 0):,.0f} deliveries/s, p50 {r['delivery_ms']['p50']} / p99 {r['delivery_ms']['p99']} ms, "
            f"missing {r.get('missing_deliveries')}, ack p99 {r.get('ack_ms', {}).get('p99')}")
        return row

    def paced(self, run_once) -> dict:
        """A paced latency row: `rounds` runs of `run_once()` in a row. A p99 of pooled deliveries is
        set by the few slowest messages of one run (at N = 100 and 50 msg/s, 5 of 500), so one disk
        hiccup moves it by milliseconds; like W1/W2's medians of rounds, the row is the round with
        the median p99, with every round's p99 beside it and the deliveries of all rounds counted."""
        runs = [run_once() for _ in range(self.p["rounds"])]
        runs.sort(key=lambda r: r["delivery_ms"]["p99"] if r["delivery_ms"]["p99"] is not None else float("inf"))
        row = dict(runs[len(runs) // 2])
        row["rounds_p99"] = [r["delivery_ms"]["p99"] for r in runs]
        row["rounds_p99_from_due"] = [r.get("delivery_from_due_ms", {}).get("p99") for r in runs]
        for k in ("deliveries", "expected_deliveries", "missing_deliveries"):
            row[k] = sum(r[k] for r in runs)
        return row

    def paced_wsload(self, conn: list[str], n: int, send: str) -> dict:
        """The paced latency row of `examples/wsload` at N's rate."""
        base = conn + ["--clients", str(n), "--send", send] + self.timing()
        return self.paced(lambda: wsload(base + ["--rate", str(self.p["rate"][n])], self.run_timeout(n)))

    def load_pair(self, target: str, n: int, conn: list[str], send: str) -> None:
        """A paced latency row and a closed-loop throughput run of one target."""
        self.record(target=target, n=n, kind="latency", result=self.paced_wsload(conn, n, send))
        base = conn + ["--clients", str(n), "--send", send] + self.timing()
        r = wsload(base + ["--inflight", str(self.p["inflight"][n])], self.run_timeout(n))
        self.record(target=target, n=n, kind="throughput", result=r)

    def run_w3(self) -> None:
        self.data["fsync"] = fsync_ms(self.tmp)
        log(f"W3: flush cost in {self.tmp}: {self.data['fsync']}")
        for n in self.p["sizes"]:
            log(f"W3 N={n}: hubhook dev")
            dev, emu, fn = self.dev(n)
            try:
                conn = ["--connection-string", cs_for(emu), "--hub", HUB, "--query", f"room={ROOM}", "--group", ROOM]
                self.load_pair("hubhook dev", n, conn, "event")
            finally:
                dev.stop()
            if n == 100 and SHM.is_dir() and os.access(SHM, os.W_OK):
                # Diagnostic only: the same paced row with the store on tmpfs, where fsync costs
                # nothing; the difference is what durability costs on this disk.
                log("W3 N=100: hubhook dev, store on tmpfs (diagnostic)")
                shm = tempfile.mkdtemp(prefix="hubhook-w3-", dir=SHM)
                dev, emu, fn = self.dev(n, shm)
                try:
                    conn = ["--connection-string", cs_for(emu), "--hub", HUB, "--query", f"room={ROOM}", "--group", ROOM]
                    self.record(target="hubhook dev, store on tmpfs", n=n, kind="latency",
                                result=self.paced_wsload(conn, n, "event"))
                finally:
                    dev.stop()
                    shutil.rmtree(shm, ignore_errors=True)
            if n in self.p["official_sizes"]:
                self.official_run(n)
            log(f"W3 N={n}: emulator alone (sendToGroup)")
            emu = free_port()
            p = Proc(f"emulator-{n}", [str(HUBHOOK), "emulator"], env(HUBHOOK_EMULATOR_PORT=str(emu)), [emu])
            try:
                p.wait_ready()
                conn = ["--connection-string", cs_for(emu), "--hub", HUB, "--group", ROOM]
                # The token's webpubsub.group claim puts every client in the room.
                self.load_pair("emulator sendToGroup", n, conn, "group")
            finally:
                p.stop()
            log(f"W3 N={n}: ceiling")
            port = free_port()
            c = Proc(f"ceiling-{n}", [str(EXAMPLES / "ws_ceiling")], env(PORT=str(port)), [port])
            try:
                c.wait_ready()
                self.load_pair("ceiling", n, ["--url", f"ws://127.0.0.1:{port}/"], "event")
            finally:
                c.stop()

    def official_run(self, n: int) -> None:
        if not shutil.which("node") or not (NODE_MODULES / "@azure" / "web-pubsub-client").exists():
            self.data.setdefault("skipped", []).append(f"official client N={n}: node or {NODE_MODULES}/@azure/web-pubsub-client missing")
            return
        # chat: sendEvent through the chat function (the W3 figure). group: sendToGroup through the
        # same `hubhook dev`'s emulator, no webhook and no store: what the official client costs
        # by itself, beside the same emulator (the floor of the chat row).
        for send, target in (("chat", "hubhook dev, official client"), ("group", "official client, sendToGroup")):
            log(f"W3 N={n}: official @azure/web-pubsub-client through hubhook dev ({send})")
            dev, emu, fn = self.dev(n)
            try:
                args = {"FN": f"http://127.0.0.1:{fn}", "W3_CLIENTS": str(n), "W3_RATE": str(self.p["rate"][n]),
                        "W3_WARMUP": str(self.p["warmup"]), "W3_DURATION": str(self.p["duration"]),
                        "W3_SEND": send, "W3_NODE_MODULES": str(NODE_MODULES)}
                r = self.paced(lambda: official(args, self.run_timeout(n) + 60))
                self.record(target=target, n=n, kind="latency", result=r)
            except RuntimeError as e:
                self.data.setdefault("skipped", []).append(f"official client ({send}) N={n}: {e}")
            finally:
                dev.stop()

    def run_tunnel(self) -> None:
        c = self.p["tunnel_clients"]
        args = ["--hub", HUB, "--clients", str(c), "--send", "event", "--complete", "ack", "--inflight", str(c),
                "--warmup", str(self.p["warmup"]), "--duration", str(self.p["tunnel_duration"]), "--drain", "5"]
        rows = {}
        for mode in ("direct", "tunnel", "direct", "tunnel"):
            log(f"TUNNEL: {mode}")
            emu, echo_port = free_port(), free_port()
            echo = Proc(f"echo-{mode}", [str(EXAMPLES / "echo")], env(PORT=str(echo_port), WEBPUBSUB_CONNECTION_STRING=cs_for(emu)),
                        [echo_port]).wait_ready()
            handler = f"http://127.0.0.1:{echo_port}/eventhandler" if mode == "direct" else "tunnel:///eventhandler"
            procs = [echo]
            try:
                e = Proc(f"emulator-{mode}", [str(HUBHOOK), "emulator", "--event-handler", handler],
                         env(HUBHOOK_EMULATOR_PORT=str(emu)), [emu]).wait_ready()
                procs.append(e)
                if mode == "tunnel":
                    t = Proc("tunnel", [str(HUBHOOK), "tunnel", "--hub", HUB, "--upstream", f"http://127.0.0.1:{echo_port}"],
                             env(WEBPUBSUB_CONNECTION_STRING=cs_for(emu)), [])
                    procs.append(t)
                    t.wait_log(r"hubhook tunnel: connected")
                r = wsload(["--connection-string", cs_for(emu)] + args, 180)
                rows.setdefault(mode, []).append(r)
                self.data["rows"].append({"target": f"echo {mode}", "n": c, "kind": "tunnel", "result": r})
                log(f"  {mode}: {r['msgs_per_s']:,.0f} req/s, ack p50 {r['ack_ms']['p50']} p99 {r['ack_ms']['p99']} ms, "
                    f"failed acks {r['acks_failed']}, incomplete {r['incomplete']}")
            finally:
                for p in reversed(procs):
                    p.stop()
        self.data["tunnel"] = rows

    # ------------------------------------------------------------------ markdown

    def rows(self, target: str, kind: str) -> dict[int, dict]:
        return {r["n"]: r["result"] for r in self.data["rows"] if r["target"] == target and r["kind"] == kind}

    def w3_markdown(self) -> list[str]:
        L = ["## W3: the dev loop end to end (`hubhook dev`, WebSocket clients)", ""]
        if self.quick:
            L += ["> Smoke run (`--quick`): seconds per row; these numbers only show that every row is measured.", ""]
        dev_lat, dev_thr = self.rows("hubhook dev", "latency"), self.rows("hubhook dev", "throughput")
        emu_lat, emu_thr = self.rows("emulator sendToGroup", "latency"), self.rows("emulator sendToGroup", "throughput")
        ceil_lat, ceil_thr = self.rows("ceiling", "latency"), self.rows("ceiling", "throughput")
        off = self.rows("hubhook dev, official client", "latency")
        off_group = self.rows("official client, sendToGroup", "latency")
        targets = {100: 6.0, 1000: 25.0}

        def pair(d: dict | None) -> str:
            return f"{d['p50']:.2f} / {d['p99']:.2f} ms" if d and d.get("p50") is not None else "-"

        def lost(r: dict) -> str:
            m = r["missing_deliveries"]
            return f"{r['deliveries']:,}/{r['expected_deliveries']:,}" + (" (**all**)" if m == 0 else f" (**{m:,} missing**)")

        L.append("Latency rows (paced): each message from its send — the official client's `sendEvent` call; for wsload"
                 " the moment the frame is handed to its client — to every receiver's copy (the sender's own included), all"
                 " deliveries pooled. Beside it the same from the time the pacer had scheduled the send: the load clients'"
                 " timers (tokio's and Node's, millisecond ticks) fire late, by the `sender late` column, which that figure"
                 " includes. Targets: p99 ≤ 6 ms at N = 100, ≤ 25 ms at N = 1,000; every message delivered to every receiver."
                 + (f" Each row is the round with the median p99 of {self.p['rounds']} rounds in a row (every round's p99 in"
                    " brackets); delivered / expected counts all rounds." if self.p["rounds"] > 1 else ""))
        L.append("")
        L.append("| N | rate (msg/s) | client | delivered / expected | deliveries/s | p50 | p99 | max | ack p50 / p99 |"
                 " from the schedule: p50 / p99 | sender late p50 / p99 | target | |")
        L.append("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
        for n in self.p["sizes"]:
            for name, rows, is_target in (("wsload (Rust)", dev_lat, True), ("@azure/web-pubsub-client", off, True),
                                          ("@azure/web-pubsub-client, `sendToGroup` (no webhook: the client's floor)",
                                           off_group, False)):
                r = rows.get(n)
                if not r:
                    continue
                d = r["delivery_ms"]
                t = targets.get(n) if is_target else None
                ok = t is not None and d["p99"] <= t and r["missing_deliveries"] == 0
                ack = r.get("ack_ms", {})
                rounds = r.get("rounds_p99") or [d["p99"]]
                p99 = f"{d['p99']:.2f} ms" + (f" (rounds: {', '.join(f'{x:.2f}' for x in rounds)})" if len(rounds) > 1 else "")
                L.append(f"| {n:,} | {r.get('rate') or 0:g} | {name} | {lost(r)} | {r['deliveries_per_s']:,.0f} | {d['p50']:.2f} ms |"
                         f" {p99} | {d['max']:.1f} ms | {pair(ack)} | {pair(r.get('delivery_from_due_ms'))} |"
                         f" {pair(r.get('send_late_ms'))} | {f'≤ {t:g} ms' if t else 'report'} |"
                         f" {('**met**' if ok else '**missed**') if t else ''} |")
        L.append("")
        L.append("Throughput rows (closed loop: W messages not yet delivered to everyone at a time) and the fan-out ratio"
                 " against the bare tokio-tungstenite broadcast server (`examples/ws_ceiling.rs`, same load client; target ≥ 0.5):")
        L.append("")
        L.append("| N | W | hubhook dev msg/s | deliveries/s | p99 | emulator alone (sendToGroup) deliveries/s | ceiling deliveries/s | p99 | dev / ceiling | emulator / ceiling | |")
        L.append("|---|---|---|---|---|---|---|---|---|---|---|")
        for n in self.p["sizes"]:
            d, e, c = dev_thr.get(n), emu_thr.get(n), ceil_thr.get(n)
            if not (d and c):
                continue
            ratio = d["deliveries_per_s"] / c["deliveries_per_s"]
            eratio = e["deliveries_per_s"] / c["deliveries_per_s"] if e else float("nan")
            L.append(f"| {n:,} | {d['inflight']} | {d['msgs_per_s']:,.0f} | {d['deliveries_per_s']:,.0f} ({lost(d)}) | {d['delivery_ms']['p99']:.2f} ms |"
                     f" {e['deliveries_per_s'] if e else float('nan'):,.0f} | {c['deliveries_per_s']:,.0f} | {c['delivery_ms']['p99']:.2f} ms |"
                     f" {ratio:.2f} | {eratio:.2f} | {'**met**' if ratio >= 0.5 else '**missed**'} |")
        L.append("")
        L.append("At small N the dev loop's messages/s are bound by each message's chain (webhook, fsync'd commit, REST"
                 " call back to the emulator), not by fan-out: a message costs N deliveries but one commit. The fan-out"
                 " ratio says most at N = 1,000; the emulator-alone column isolates the emulator's own fan-out.")
        L.append("")
        L.append("Where the time goes (same N, paced rows): p50 of the ack (webhook → chat function → fsync'd SQLite"
                 " commit → REST broadcast call → reply; the chat function answers after the broadcast call) beside the"
                 " emulator's fan-out alone and the ceiling's:")
        L.append("")
        L.append("| N | dev: delivery p50 / p99 | dev: ack p50 / p99 | emulator alone: delivery p50 / p99 | ceiling: delivery p50 / p99 |")
        L.append("|---|---|---|---|---|")
        for n in self.p["sizes"]:
            d, e, c = dev_lat.get(n), emu_lat.get(n), ceil_lat.get(n)
            if not d:
                continue
            f = lambda r, k="delivery_ms": f"{r[k]['p50']:.2f} / {r[k]['p99']:.2f} ms" if r else "-"  # noqa: E731
            L.append(f"| {n:,} | {f(d)} | {f(d, 'ack_ms')} | {f(e)} | {f(c)} |")
        shm = self.rows("hubhook dev, store on tmpfs", "latency")
        for n, r in shm.items():
            d = dev_lat.get(n)
            L.append("")
            L.append(f"Diagnostic, not a figure: the N = {n:,} paced row with the SQLite file on tmpfs (fsync costs nothing"
                     f" there; the default store is unchanged): delivery p50 / p99 {r['delivery_ms']['p50']:.2f} /"
                     f" {r['delivery_ms']['p99']:.2f} ms, ack p50 / p99 {r['ack_ms']['p50']:.2f} / {r['ack_ms']['p99']:.2f} ms"
                     + (f" against {d['delivery_ms']['p50']:.2f} / {d['delivery_ms']['p99']:.2f} ms on disk: durability costs"
                        f" {d['delivery_ms']['p50'] - r['delivery_ms']['p50']:+.2f} ms at p50,"
                        f" {d['delivery_ms']['p99'] - r['delivery_ms']['p99']:+.2f} ms at p99 here." if d else "."))
        fs = self.data.get("fsync")
        if fs:
            a, o = fs["append_fsync"], fs["overwrite_fdatasync"]
            L.append("")
            L.append(f"Flush cost on the store's disk ({fs['samples']} samples of 4 KiB): append + fsync median {a['median_ms']:.2f} ms"
                     f" (p90 {a['p90_ms']:.2f}); overwrite in place + fdatasync (SQLite's WAL once it has wrapped) median"
                     f" {o['median_ms']:.2f} ms (p90 {o['p90_ms']:.2f}). Each message is one commit synced before its"
                     " answer (`synchronous=FULL`, fdatasync, grouped when several wait); marking its broadcast sent is a"
                     " commit without a sync of its own, and the WAL is checkpointed when no write waits. The tmpfs row"
                     " above says how much of the latency the disk still is.")
        for s in self.data.get("skipped", []):
            L.append(f"- skipped: {s}")
        L.append("")
        L.append("Method: `examples/wsload.rs` opens N clients (user `w3-<i>`, `?room=lobby`, subprotocol"
                 " `json.webpubsub.azure.v1`), waits until the join notices stop, then client i mod N sends message i as"
                 " `{\"type\":\"event\",\"event\":\"message\",\"dataType\":\"text\",\"data\":\"w3m<i>.\",\"ackId\":i}`;"
                 " a receiver counts a frame carrying `w3m<i>.` as a delivery. Paced rows schedule messages at a fixed"
                 " rate (open loop: a late sender does not delay the next message) and time them from the send and from"
                 " the schedule; warm-up messages are not counted. `hubhook dev`"
                 " runs with its defaults (one stdout line per webhook, to a file) and a fresh SQLite file per N."
                 " The emulator-alone rows use `hubhook emulator` without an event handler and `sendToGroup` frames"
                 " (no webhook, no store). Load client and servers share the machine's cores (no pinning).")
        return L

    def tunnel_markdown(self) -> list[str]:
        L = ["## Tunnel: webhooks through `hubhook tunnel` vs straight to the handler (issue 12)", ""]
        t = self.data.get("tunnel", {})
        if not t.get("direct") or not t.get("tunnel"):
            return L + ["not measured"]
        med = lambda rs, f: statistics.median(f(r) for r in rs)  # noqa: E731
        rps = {m: med(rs, lambda r: r["msgs_per_s"]) for m, rs in t.items()}
        p50 = {m: med(rs, lambda r: r["ack_ms"]["p50"]) for m, rs in t.items()}
        p99 = {m: med(rs, lambda r: r["ack_ms"]["p99"]) for m, rs in t.items()}
        fails = {m: sum(r["acks_failed"] + r["incomplete"] for r in rs) for m, rs in t.items()}
        c = self.p["tunnel_clients"]
        L.append(f"{c} clients each send a `message` user event with an ackId and send the next on its ack (closed loop,"
                 f" {c} in flight); the emulator signs the webhook and sends it to `examples/echo.rs` (W1's echo: signature"
                 " verified, the data echoed back), either directly or through `hubhook tunnel` (event handler"
                 " `tunnel:///eventhandler`, the tunnel on the emulator's `/server/tunnel`). Median of 2 interleaved rounds.")
        L.append("")
        L.append("| path | requests/s (rounds) | ack p50 | ack p99 | failed or unanswered |")
        L.append("|---|---|---|---|---|")
        for m in ("direct", "tunnel"):
            per = ", ".join(f"{r['msgs_per_s']:,.0f}" for r in t[m])
            L.append(f"| emulator → {'hubhook tunnel → ' if m == 'tunnel' else ''}echo | {rps[m]:,.0f} ({per}) | {p50[m]:.2f} ms | {p99[m]:.2f} ms | {fails[m]} |")
        L.append("")
        L.append(f"Overhead of the tunnel: throughput {rps['tunnel'] / rps['direct']:.2f}× of direct, p99 {p99['tunnel'] / p99['direct']:.2f}×"
                 f" (+{p99['tunnel'] - p99['direct']:.2f} ms). Both rows include the client WebSocket and the emulator's"
                 " webhook; only the hop differs.")
        return L


def section(opts) -> str:
    """The W3 and tunnel sections as markdown. `opts`: `.quick` (attribute or dict key), optional
    `.only` ("w3" | "tunnel") and `.sizes` (list of N)."""
    get = (lambda k, d=None: opts.get(k, d)) if isinstance(opts, dict) else (lambda k, d=None: getattr(opts, k, d))
    w = W3(bool(get("quick", False)), get("sizes"))
    only = get("only")
    started = time.monotonic()
    try:
        if only in (None, "w3"):
            w.run_w3()
        if only in (None, "tunnel"):
            w.run_tunnel()
    finally:
        stop_all()
        shutil.rmtree(w.tmp, ignore_errors=True)
    w.data["elapsed_s"] = round(time.monotonic() - started, 1)
    w.data["loadavg_end"] = Path("/proc/loadavg").read_text().split()[:3]
    RUN.mkdir(parents=True, exist_ok=True)
    (RUN / "w3.json").write_text(json.dumps(w.data, indent=2))
    L: list[str] = []
    if only in (None, "w3"):
        L += w.w3_markdown() + [""]
    if only in (None, "tunnel"):
        L += w.tunnel_markdown() + [""]
    return "\n".join(L)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="smoke run: seconds per row, N = 10 and 100")
    ap.add_argument("--only", choices=["w3", "tunnel"], help="one of the two sections")
    ap.add_argument("--sizes", help="comma-separated N for W3 (default 10,100,1000; quick 10,100)")
    args = ap.parse_args()
    if args.sizes:
        args.sizes = [int(x) for x in args.sizes.split(",")]
    for exe in (RELEASE / "hubhook", EXAMPLES / "wsload", EXAMPLES / "ws_ceiling", EXAMPLES / "echo"):
        if not exe.exists():
            raise SystemExit(f"missing {exe}: run `cargo build --release --examples --bins`")
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    print(section(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
