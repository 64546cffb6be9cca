// W2 peer: hubhook's chat function written on the official Node stack -- express +
// @azure/web-pubsub-express for the webhooks, @azure/web-pubsub's WebPubSubServiceClient for the
// broadcasts, better-sqlite3 for the store with the SAME durability as hubhook (WAL,
// synchronous=FULL: a message is acknowledged only after its transaction is on disk).
//
// The same rules as hubhook's `chat` module: `connect` puts the verified user into the room of
// the `room` query parameter (default lobby) and keeps it in the connection state; a `message`
// user event is stored idempotently on (connection id, ce-id) with hubhook's message id scheme
// and schema, then broadcast to the room with sendToAll, and answered with
// {"type":"stored","id",...}; connected/disconnected broadcast a join/leave notice. It is the
// straightforward Node code: one synchronous insert (one commit, one fsync) per message.
//
// Env (same names as hubhook): PORT (8080), HUBHOOK_BIND (127.0.0.1), WEBPUBSUB_HUB (chat),
// WEBPUBSUB_CONNECTION_STRING (required), HUBHOOK_STORE (sqlite://PATH, default
// sqlite://hubhook-node.db), HUBHOOK_EVENT_PATH (/eventhandler).
import { AsyncLocalStorage } from "node:async_hooks";
import { createHash } from "node:crypto";
import express from "express";
import { WebPubSubEventHandler } from "@azure/web-pubsub-express";
import { WebPubSubServiceClient } from "@azure/web-pubsub";
import Database from "better-sqlite3";

const hub = process.env.WEBPUBSUB_HUB ?? "chat";
const port = Number(process.env.PORT ?? 8080);
const bind = process.env.HUBHOOK_BIND ?? "127.0.0.1";
const path = process.env.HUBHOOK_EVENT_PATH ?? "/eventhandler";
const connectionString = process.env.WEBPUBSUB_CONNECTION_STRING;
if (!connectionString) {
  console.error("node-chat: WEBPUBSUB_CONNECTION_STRING is required");
  process.exit(1);
}
const storeSpec = process.env.HUBHOOK_STORE ?? "sqlite://hubhook-node.db";
if (!storeSpec.startsWith("sqlite://") || storeSpec.length <= "sqlite://".length) {
  console.error(`node-chat: HUBHOOK_STORE must be sqlite://PATH, got ${storeSpec}`);
  process.exit(1);
}

const db = new Database(storeSpec.slice("sqlite://".length));
db.pragma("busy_timeout = 5000");
db.pragma("journal_mode = WAL");
db.pragma("synchronous = FULL");
db.exec(`
CREATE TABLE IF NOT EXISTS messages (
    room          TEXT    NOT NULL,
    id            TEXT    NOT NULL,
    connection_id TEXT    NOT NULL,
    ce_id         TEXT    NOT NULL,
    user_id       TEXT,
    text          TEXT    NOT NULL,
    at_ms         INTEGER NOT NULL,
    PRIMARY KEY (room, id)
) WITHOUT ROWID;
CREATE UNIQUE INDEX IF NOT EXISTS messages_delivery ON messages (connection_id, ce_id);
`);
const insert = db.prepare(`INSERT INTO messages (room, id, connection_id, ce_id, user_id, text, at_ms)
  VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING`);
const existing = db.prepare(
  "SELECT id, room FROM messages WHERE connection_id = ? AND ce_id = ?",
);

const isHttp = new URL(/Endpoint=([^;]+)/i.exec(connectionString)?.[1] ?? "https://x").protocol === "http:";
const service = new WebPubSubServiceClient(connectionString, hub, {
  allowInsecureConnection: isHttp,
});

// The express handler hands the callbacks a context without ce-id / ce-time; the request's
// headers are carried to them in async-local storage.
const requestHeaders = new AsyncLocalStorage();

const ROOM = /^[A-Za-z0-9_.\-]{1,64}$/;
const MAX_MESSAGE_BYTES = 64 * 1024;

function homeRoom(context) {
  const room = context.states?.room;
  return typeof room === "string" && room ? room : "lobby";
}

function eventTimeMs() {
  const t = Date.parse(requestHeaders.getStore()?.["ce-time"] ?? "");
  return Number.isNaN(t) ? Date.now() : t;
}

// hubhook's id: 13-digit ms, "-", 16 hex of sha256(connection id, NUL, ce-id).
function messageId(atMs, connectionId, ceId) {
  const h = createHash("sha256").update(connectionId).update("\0").update(ceId).digest("hex");
  return `${String(Math.max(0, atMs)).padStart(13, "0")}-${h.slice(0, 16)}`;
}

function notice(type, context) {
  const room = homeRoom(context);
  service
    .group(room)
    .sendToAll({ type, room, userId: context.userId ?? null, connectionId: context.connectionId, at: new Date().toISOString() })
    .catch((e) => console.error(`node-chat: ${type} notice not delivered: ${e.message}`));
}

const handler = new WebPubSubEventHandler(hub, {
  path,
  handleConnect(req, res) {
    const userId = req.context.userId;
    if (!userId) return res.fail(401, "anonymous connections are not allowed");
    const room = req.queries?.room?.[0] ?? "lobby";
    if (!ROOM.test(room)) return res.fail(400, "invalid room");
    res.setState("room", room);
    const known = (req.subprotocols ?? []).find((p) => p.startsWith("json.") || p.startsWith("protobuf."));
    res.success({
      userId,
      groups: [room],
      roles: [`webpubsub.joinLeaveGroup.${room}`, `webpubsub.sendToGroup.${room}`],
      ...(known ? { subprotocol: known } : {}),
    });
  },
  onConnected(req) {
    notice("joined", req.context);
  },
  onDisconnected(req) {
    notice("left", req.context);
  },
  async handleUserEvent(req, res) {
    const { context } = req;
    if (context.eventName !== "message") {
      return res.fail(400, `unsupported event ${JSON.stringify(context.eventName)}`);
    }
    let text;
    if (req.dataType === "text") text = req.data;
    else if (req.dataType === "json" && typeof req.data === "string") text = req.data;
    else if (req.dataType === "json" && typeof req.data?.text === "string") text = req.data.text;
    else return res.fail(400, "send text, a JSON string or {\"text\": ...}");
    if (!text.trim()) return res.fail(400, "empty message");
    if (Buffer.byteLength(text) > MAX_MESSAGE_BYTES) return res.fail(400, "message too large");
    const ceId = requestHeaders.getStore()?.["ce-id"];
    if (!ceId) return res.fail(400, "missing header ce-id");
    const room = homeRoom(context);
    const atMs = eventTimeMs();
    const id = messageId(atMs, context.connectionId, ceId);
    let inserted;
    try {
      inserted = insert.run(room, id, context.connectionId, ceId, context.userId ?? null, text, atMs).changes === 1;
    } catch (e) {
      return res.fail(500, `store failure: ${e.message}`);
    }
    if (!inserted) {
      const row = existing.get(context.connectionId, ceId);
      return res.success(JSON.stringify({ type: "stored", id: row?.id ?? id, room: row?.room ?? room, stored: true, duplicate: true }), "json");
    }
    const reply = { type: "stored", id, room, stored: true, broadcast: true };
    try {
      await service.group(room).sendToAll({
        type: "message", room, id, from: context.userId ?? null, text, at: new Date(atMs).toISOString(),
      });
    } catch (e) {
      reply.broadcast = false;
      reply.error = `broadcast failed: ${e.message}`;
    }
    res.success(JSON.stringify(reply), "json");
  },
});

const app = express();
app.use((req, res, next) => requestHeaders.run(req.headers, next));
app.use(handler.getMiddleware());
app.listen(port, bind, () => {
  console.error(`node-chat listening on http://${bind}:${port}${path} (store ${storeSpec})`);
});
