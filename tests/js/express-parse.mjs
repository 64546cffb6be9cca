// stdin: JSON array of raw webhooks [{name, method, path, headers: [[k, v], ...], bodyBase64}].
// Serves them, one at a time over real HTTP, to an express app using the official
// @azure/web-pubsub-express WebPubSubEventHandler (hub "chat", path /eventhandler) whose handlers
// record everything they receive. stdout (one JSON line):
//   [{name, seen, status, headers: {lowercase: value}, bodyBase64}]
// `seen` is {handler, request} as the handler got it (binary data as {base64}), or null.
import http from "node:http";
import express from "express";
import { WebPubSubEventHandler } from "@azure/web-pubsub-express";
import { readStdin, run } from "./lib.mjs";

const plain = (v) => JSON.parse(JSON.stringify(v ?? null));

function context(ctx) {
  // Every field the handler's context carries (subprotocol is declared in the SDK's types).
  return plain({
    hub: ctx.hub,
    connectionId: ctx.connectionId,
    eventName: ctx.eventName,
    userId: ctx.userId ?? null,
    subprotocol: ctx.subprotocol ?? null,
    origin: ctx.origin ?? null,
    signature: ctx.signature ?? null,
    states: ctx.states,
    clientProtocol: ctx.clientProtocol ?? null,
    mqtt: ctx.mqtt ?? null,
  });
}

run(async () => {
  const webhooks = JSON.parse(await readStdin());
  let record = () => {};
  const handler = new WebPubSubEventHandler("chat", {
    path: "/eventhandler",
    handleConnect(req, res) {
      record({
        handler: "handleConnect",
        context: context(req.context),
        claims: plain(req.claims),
        query: plain(req.query),
        queries: plain(req.queries),
        headers: plain(req.headers),
        subprotocols: plain(req.subprotocols),
        clientCertificates: plain(req.clientCertificates),
      });
      res.setState("room", "lobby");
      res.setState("n", 1);
      res.success({ userId: "alice", groups: ["lobby"], roles: ["webpubsub.sendToGroup.lobby"] });
    },
    handleUserEvent(req, res) {
      const binary = Buffer.isBuffer(req.data);
      record({
        handler: "handleUserEvent",
        context: context(req.context),
        data: binary ? { base64: req.data.toString("base64") } : plain(req.data),
        dataType: req.dataType,
      });
      res.setState("seen", true);
      res.success("echo", "text");
    },
    onConnected(req) {
      record({ handler: "onConnected", context: context(req.context) });
    },
    onDisconnected(req) {
      record({
        handler: "onDisconnected",
        context: context(req.context),
        reason: req.reason ?? null,
      });
    },
  });
  const app = express();
  app.use(handler.getMiddleware());
  app.use((req, res) => res.status(404).end("not handled by WebPubSubEventHandler"));
  const server = await new Promise((resolve) => {
    const s = app.listen(0, "127.0.0.1", () => resolve(s));
  });
  const port = server.address().port;

  const out = [];
  for (const w of webhooks) {
    let seen = null;
    let notify;
    const recorded = new Promise((r) => (notify = r));
    record = (v) => {
      seen = v;
      notify();
    };
    const headers = {};
    for (const [k, v] of w.headers) {
      const key = k.toLowerCase();
      headers[key] = headers[key] === undefined ? v : [].concat(headers[key], v);
    }
    const body = Buffer.from(w.bodyBase64, "base64");
    headers["content-length"] = String(body.length);
    const resp = await new Promise((resolve, reject) => {
      const req = http.request(
        { host: "127.0.0.1", port, method: w.method ?? "POST", path: w.path ?? "/eventhandler", headers },
        (res) => {
          const chunks = [];
          res.on("data", (c) => chunks.push(c));
          res.on("end", () => resolve({ status: res.statusCode, headers: res.headers, body: Buffer.concat(chunks) }));
        },
      );
      req.on("error", reject);
      req.end(body);
    });
    // handleConnect/handleUserEvent record before they answer. onConnected/onDisconnected run
    // after express has answered (fire-and-forget, after reading the body): wait up to 2 s for
    // them, but only when express took such an event (exact ce-type, as express matches it, and a
    // 2xx); everything else (OPTIONS, fall-through, errors) would only wait for nothing.
    const ceType = [].concat(headers["ce-type"] ?? []).join(",");
    const afterResponse =
      ["azure.webpubsub.sys.connected", "azure.webpubsub.sys.disconnected"].includes(ceType) &&
      resp.status >= 200 && resp.status < 300;
    if (seen === null && afterResponse) {
      let timer;
      await Promise.race([recorded, new Promise((r) => (timer = setTimeout(r, 2000)))]);
      clearTimeout(timer);
    }
    const respHeaders = {};
    for (const [k, v] of Object.entries(resp.headers)) {
      if (!["date", "connection", "keep-alive"].includes(k)) respHeaders[k] = v;
    }
    out.push({
      name: w.name,
      seen,
      status: resp.status,
      headers: respHeaders,
      bodyBase64: resp.body.toString("base64"),
    });
  }
  server.close();
  return out;
});
