// Helpers for the emulator end-to-end scripts (tests/emulator.rs runs them): bounded waits, a
// watchdog so no script can hang, a TCP proxy that can drop every socket, one JSON result line.
import net from "node:net";

/** Rejects with `timeout: <what>` unless `p` settles within `ms`. */
export function within(p, ms, what) {
  let t;
  const timer = new Promise((_, rej) => {
    t = setTimeout(() => rej(new Error(`timeout after ${ms} ms: ${what}`)), ms);
  });
  return Promise.race([p, timer]).finally(() => clearTimeout(t));
}

/** Polls `pred` every 20 ms until it is truthy (returns its value) or `ms` pass (throws). */
export async function until(pred, ms, what) {
  const deadline = Date.now() + ms;
  for (;;) {
    const v = await pred();
    if (v) return v;
    if (Date.now() > deadline) throw new Error(`timeout after ${ms} ms: ${what}`);
    await sleep(20);
  }
}

export const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/** Throws `msg` (with both values) unless `actual` deep-equals `expected` (JSON comparison). */
export function same(actual, expected, msg) {
  const a = JSON.stringify(actual);
  const e = JSON.stringify(expected);
  if (a !== e) throw new Error(`${msg}: expected ${e}, got ${a}`);
}

export function check(cond, msg) {
  if (!cond) throw new Error(msg);
}

/** The emulator's port from a connection string `Endpoint=http://host;Port=N;…`. */
export function portOf(cs) {
  const m = /Port=(\d+)/i.exec(cs);
  if (!m) throw new Error(`no Port in connection string ${cs}`);
  return Number(m[1]);
}

/**
 * A TCP proxy to 127.0.0.1:`target`. `drop()` destroys every open socket pair (no WebSocket close
 * frame: the client sees 1006, the server a reset) while the proxy keeps accepting new ones.
 */
export async function tcpProxy(target) {
  const pairs = new Set();
  const server = net.createServer((down) => {
    const up = net.connect(target, "127.0.0.1");
    const pair = { down, up };
    pairs.add(pair);
    const end = () => {
      pairs.delete(pair);
      down.destroy();
      up.destroy();
    };
    down.on("error", end).on("close", end);
    up.on("error", end).on("close", end);
    down.pipe(up);
    up.pipe(down);
  });
  await new Promise((r) => server.listen(0, "127.0.0.1", r));
  return {
    port: server.address().port,
    drop() {
      const n = pairs.size;
      for (const p of [...pairs]) {
        p.down.destroy();
        p.up.destroy();
      }
      pairs.clear();
      return n;
    },
    close() {
      this.drop();
      server.close();
    },
  };
}

/**
 * Runs `main` under a watchdog: prints exactly one JSON line ({"ok":true,…} or {"error":…}) and
 * exits (the SDK clients may keep timers alive otherwise). Progress goes to stderr via `log`.
 */
export function run(main, watchdogMs = 60000) {
  const out = (v, code) => process.stdout.write(JSON.stringify(v) + "\n", () => process.exit(code));
  const dog = setTimeout(() => out({ error: `watchdog: script still running after ${watchdogMs} ms (last step: ${lastStep})` }, 1), watchdogMs);
  main().then(
    (v) => {
      clearTimeout(dog);
      out({ ok: true, ...v }, 0);
    },
    (e) => {
      clearTimeout(dog);
      out({ error: `${lastStep}: ${e && e.stack ? e.stack : e}` }, 1);
    },
  );
}

let lastStep = "start";
/** Names the current step (reported on failure) and logs it to stderr. */
export function step(name) {
  lastStep = name;
  process.stderr.write(`[${new Date().toISOString()}] ${name}\n`);
}
