// W3 with the official client: N `@azure/web-pubsub-client` clients in one room of `hubhook dev`,
// each negotiating its URL from the chat function (`/negotiate?userId=..&room=lobby`, as the chat
// page does). Client i mod N sends message i with `sendEvent("message", "w3m<i>.", "text")` at a
// paced rate; every client's `group-message` carrying the chat broadcast of message i counts as
// one delivery, timed from the `sendEvent` call (and from its scheduled time: Node's timers fire a
// millisecond or more late, reported as `send_late_ms`). Prints one line `W3_JSON {...}` (same
// fields as examples/wsload.rs where they apply).
//
// env: FN (function base URL), W3_CLIENTS (10), W3_RATE (msgs/s, 100), W3_WARMUP (s, 1),
// W3_DURATION (s, 5), W3_DRAIN (s, 5), W3_PROTOCOL (reliable | json; default reliable, the client's
// default), W3_SEND (chat | group; default chat: `sendEvent` through the chat function. group:
// `sendToGroup("lobby", ...)` straight through the emulator, no webhook, no store — the official
// client's own floor beside the same emulator), W3_NODE_MODULES (where @azure/web-pubsub-client is installed; default
// ../tests/js/node_modules: the version pinned in tests/js/package-lock.json).
import { createRequire } from "node:module";
import path from "node:path";
import { fileURLToPath } from "node:url";

const here = path.dirname(fileURLToPath(import.meta.url));
const modules = process.env.W3_NODE_MODULES || path.join(here, "..", "tests", "js", "node_modules");
const require = createRequire(path.join(modules, "noop.js"));
const { WebPubSubClient, WebPubSubJsonProtocol, WebPubSubJsonReliableProtocol } = require("@azure/web-pubsub-client");

const FN = process.env.FN;
const N = Number(process.env.W3_CLIENTS || 10);
const RATE = Number(process.env.W3_RATE || 100);
const WARMUP = Number(process.env.W3_WARMUP || 1);
const DURATION = Number(process.env.W3_DURATION || 5);
const DRAIN = Number(process.env.W3_DRAIN || 5);
const PROTOCOL = process.env.W3_PROTOCOL || "reliable";
const SEND = process.env.W3_SEND || "chat";
const protocol = PROTOCOL === "json" ? WebPubSubJsonProtocol() : WebPubSubJsonReliableProtocol();

const now = () => Number(process.hrtime.bigint()) / 1e6; // ms
const sent = new Map(); // id -> [sendEvent called, scheduled] (ms)
const got = new Map(); // id -> receivers
const lat = [];
const latDue = [];
const ackLat = [];
const ackLatDue = [];
const late = [];
let measureFrom = Infinity;
let acksFailed = 0;
const ackErrors = [];
let lastFrame = now();

const negotiate = async (user) => {
  const res = await fetch(`${FN}/negotiate?userId=${user}&room=lobby`);
  if (!res.ok) throw new Error(`negotiate ${user}: ${res.status} ${await res.text()}`);
  return (await res.json()).url;
};

const pct = (v, p) => {
  if (!v.length) return null;
  v.sort((a, b) => a - b);
  return v[Math.round((p / 100) * (v.length - 1))];
};

const stats = (v) => ({ p50: pct(v, 50), p90: pct(v, 90), p99: pct(v, 99), max: pct(v, 100), n: v.length });

async function main() {
  const t0 = now();
  const clients = [];
  for (let i = 0; i < N; i += 32) {
    const batch = [];
    for (let j = i; j < Math.min(N, i + 32); j++) {
      const c = new WebPubSubClient({ getClientAccessUrl: () => negotiate(`w3-${j}`) }, { protocol });
      c.on("group-message", (e) => {
        const t = now();
        lastFrame = t;
        const d = e.message.data;
        // chat: the chat function's broadcast object; group: the text as sent.
        const text = SEND === "group" ? d : d && d.type === "message" ? d.text : undefined;
        if (typeof text !== "string" || !text.startsWith("w3m")) return;
        const id = parseInt(text.slice(3), 10);
        const at = sent.get(id);
        if (at === undefined) return;
        got.set(id, (got.get(id) || 0) + 1);
        if (id >= measureFrom) {
          lat.push(t - at[0]);
          latDue.push(t - at[1]);
        }
      });
      clients.push(c);
      batch.push(c.start());
    }
    await Promise.all(batch);
  }
  const connectS = (now() - t0) / 1000;
  // Let the join notices settle.
  const settle0 = now();
  while (now() - lastFrame < 500 && now() - settle0 < 60000) await new Promise((r) => setTimeout(r, 100));

  const start = now();
  const warmEnd = start + WARMUP * 1000;
  const end = warmEnd + DURATION * 1000;
  let id = 0;
  let measureStart = null;
  const inflight = [];
  while (now() < end) {
    const due = start + (id * 1000) / RATE;
    const t = now();
    if (due > t) {
      await new Promise((r) => setTimeout(r, Math.max(0, due - t)));
      continue;
    }
    if (measureStart === null && t >= warmEnd) {
      measureStart = t;
      measureFrom = id;
    }
    const my = id++;
    const at = now();
    sent.set(my, [at, due]);
    if (my >= measureFrom) late.push(at - due);
    inflight.push(
      (SEND === "group"
        ? clients[my % N].sendToGroup("lobby", `w3m${my}.`, "text")
        : clients[my % N].sendEvent("message", `w3m${my}.`, "text")
      )
        .then(() => {
          if (my >= measureFrom) {
            const t = now();
            ackLat.push(t - at);
            ackLatDue.push(t - due);
          }
        })
        .catch((e) => {
          acksFailed++;
          if (ackErrors.length < 5) ackErrors.push(String(e?.message || e));
        }),
    );
  }
  const sendEnd = now();
  const first = measureFrom === Infinity ? id : measureFrom;
  const measured = id - first;
  const complete = () => {
    let c = 0;
    for (let i = first; i < id; i++) if ((got.get(i) || 0) >= N) c++;
    return c;
  };
  const drain0 = now();
  while (complete() < measured && now() - drain0 < DRAIN * 1000) await new Promise((r) => setTimeout(r, 20));
  await Promise.race([Promise.allSettled(inflight), new Promise((r) => setTimeout(r, 1000))]);
  const done = complete();
  let deliveries = 0;
  for (let i = first; i < id; i++) deliveries += got.get(i) || 0;
  const windowS = (sendEnd - (measureStart ?? sendEnd)) / 1000;
  const spanS = Math.max(windowS, (Math.min(now(), drain0 + DRAIN * 1000) - (measureStart ?? sendEnd)) / 1000);
  const out = {
    clients: N,
    protocol: PROTOCOL,
    send: SEND,
    rate: RATE,
    connect_s: connectS,
    window_s: windowS,
    sent: measured,
    completed: done,
    incomplete: measured - done,
    acks_failed: acksFailed,
    ack_errors: ackErrors,
    deliveries,
    expected_deliveries: measured * N,
    missing_deliveries: Math.max(0, measured * N - deliveries),
    msgs_per_s: done / spanS,
    deliveries_per_s: deliveries / spanS,
    delivery_ms: stats(lat),
    delivery_from_due_ms: stats(latDue),
    ack_ms: stats(ackLat),
    ack_from_due_ms: stats(ackLatDue),
    send_late_ms: stats(late),
  };
  console.log(`W3_JSON ${JSON.stringify(out)}`);
  process.exit(0);
}

main().catch((e) => {
  console.error(e);
  process.exit(1);
});
