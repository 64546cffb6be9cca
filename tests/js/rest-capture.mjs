// Runs a fixed, named list of every REST operation of @azure/web-pubsub's WebPubSubServiceClient
// (and its group client) against a capture server on 127.0.0.1:0 and prints one JSON line:
//   {"requests": [{op, method, path, rawQuery, query, contentType, bodyBase64, jwtHeader,
//                  jwtClaims, aud, url, audMatchesUrl}], "results": {op: value},
//    "uncovered": [public SDK methods no op exercises (must stay empty)]}
// `path` is the raw request target path (still percent-encoded); `query` is the decoded
// [key, value] pairs in wire order. tests/compat.rs mirrors OPS with hubhook::service::ServiceClient.
import http from "node:http";
import { WebPubSubServiceClient } from "@azure/web-pubsub";
import { decodeJwt, run } from "./lib.mjs";

const KEY = "ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789ABCDEFGH";
const HUB = "chat";
const EXCLUDED = ["c2", "c3"];
const FILTER = "userId eq 'alice'";
// Exercises path and query escaping (space, +, quote, &, =, /, non-ASCII).
const ODD_USER = "Ann Lee+ü'&=";
const ODD_FILTER = "userId eq 'O''Brien & co/ü+1'";
const NEXT_TOKEN = "tok/+= 1";
// Generated-client operations reached through the public methods above, or directly below.
const GENERATED_COVERED = new Set([
  "constructor", "addConnectionsToGroups", "closeAllConnections", "generateClientToken",
  "removeConnectionsFromGroups", "sendToAll", "closeConnection", "connectionExists",
  "sendToConnection", "removeConnectionFromAllGroups", "groupExists", "closeGroupConnections",
  "sendToGroup", "listConnectionsInGroup", "listConnectionsInGroupPagingPage",
  "listConnectionsInGroupPagingAll", "removeConnectionFromGroup", "addConnectionToGroup",
  "revokePermission", "checkPermission", "grantPermission", "userExists", "closeUserConnections",
  "sendToUser", "removeUserFromAllGroups", "removeUserFromGroup", "addUserToGroup",
].map((m) => `generated.${m}`));

/** What the service answers, as the SDK expects it. */
function answer(req, url, body) {
  const p = url.pathname;
  if (/\/(missing|nobody)(\/|$)/.test(p)) return [404, null];
  if (p.endsWith("/:generateToken")) return [200, { token: "x" }];
  if (p.endsWith("/:addToGroups") || p.endsWith("/:removeFromGroups")) return [200, null];
  if (p.endsWith("/:send")) return [202, null];
  if (req.method === "GET" && p.endsWith("/connections")) {
    if (!url.searchParams.has("continuationToken")) {
      const next = new URL(`http://${req.headers.host}${p}`);
      next.searchParams.set("api-version", "2024-12-01");
      next.searchParams.set("continuationToken", NEXT_TOKEN);
      return [200, { value: [{ connectionId: "c1", userId: "alice" }], nextLink: next.toString() }];
    }
    return [200, { value: [{ connectionId: "c2" }] }];
  }
  if (req.method === "DELETE" || p.endsWith("/:closeConnections")) return [204, null];
  return [200, null]; // PUT, HEAD (exists, permission, health)
}

run(async () => {
  const requests = [];
  let current = "(none)";
  const server = http.createServer((req, res) => {
    const chunks = [];
    req.on("data", (c) => chunks.push(c));
    req.on("end", () => {
      const body = Buffer.concat(chunks);
      const fullUrl = `http://${req.headers.host}${req.url}`;
      const url = new URL(fullUrl);
      const auth = req.headers.authorization ?? "";
      const jwt = auth.startsWith("Bearer ") ? decodeJwt(auth.slice(7)) : null;
      const q = req.url.indexOf("?");
      requests.push({
        op: current,
        method: req.method,
        path: q < 0 ? req.url : req.url.slice(0, q),
        rawQuery: q < 0 ? "" : req.url.slice(q + 1),
        query: [...url.searchParams.entries()],
        contentType: req.headers["content-type"] ?? null,
        bodyBase64: body.toString("base64"),
        jwtHeader: jwt?.header ?? null,
        jwtClaims: jwt?.claims ?? null,
        aud: jwt?.claims?.aud ?? null,
        url: fullUrl,
        audMatchesUrl: jwt?.claims?.aud === fullUrl,
      });
      const [status, json] = answer(req, url, body);
      if (json) {
        const text = JSON.stringify(json);
        res.writeHead(status, { "content-type": "application/json", "content-length": Buffer.byteLength(text) });
        res.end(req.method === "HEAD" ? undefined : text);
      } else {
        res.writeHead(status, { "content-length": 0 });
        res.end();
      }
    });
  });
  await new Promise((r) => server.listen(0, "127.0.0.1", r));
  const port = server.address().port;
  const cs = `Endpoint=http://127.0.0.1:${port};AccessKey=${KEY};Version=1.0;`;
  const client = new WebPubSubServiceClient(cs, HUB, {
    allowInsecureConnection: true,
    retryOptions: { maxRetries: 0 },
  });
  const lobby = client.group("lobby");
  // The generated client: operations the public surface only reaches in some modes
  // (health; generateToken is used by getClientAccessToken with an Entra credential).
  const generated = client["client"];

  const ops = [
    ["sendToAll.text", () => client.sendToAll("Hello World", { contentType: "text/plain", excludedConnections: EXCLUDED, filter: FILTER })],
    ["sendToAll.json", () => client.sendToAll({ hello: "world", n: 1, nested: [true, null] }, { excludedConnections: EXCLUDED, filter: FILTER })],
    ["sendToAll.binary", () => client.sendToAll(Buffer.from([0, 1, 2, 255, 254]), { excludedConnections: EXCLUDED, filter: FILTER })],
    ["sendToAll.ttl", () => client.sendToAll("ttl", { contentType: "text/plain", messageTtlSeconds: 30 })],
    ["sendToGroup", () => lobby.sendToAll({ hello: "group" }, { excludedConnections: EXCLUDED, filter: FILTER })],
    ["sendToGroup.text", () => lobby.sendToAll("hi group", { contentType: "text/plain" })],
    ["sendToUser", () => client.sendToUser("alice", "hi alice", { contentType: "text/plain", filter: FILTER })],
    ["sendToUser.odd", () => client.sendToUser(ODD_USER, { x: 1 }, { filter: ODD_FILTER })],
    ["sendToConnection", () => client.sendToConnection("c1", Buffer.from("bin"), { messageTtlSeconds: 5 })],
    ["addConnectionToGroup", () => lobby.addConnection("c1")],
    ["removeConnectionFromGroup", () => lobby.removeConnection("c1")],
    ["removeConnectionFromAllGroups", () => client.removeConnectionFromAllGroups("c1")],
    ["addUserToGroup", () => lobby.addUser("alice")],
    ["removeUserFromGroup", () => lobby.removeUser("alice")],
    ["removeUserFromAllGroups", () => client.removeUserFromAllGroups("alice")],
    ["closeConnection", () => client.closeConnection("c1", { reason: "kicked" })],
    ["closeAllConnections", () => client.closeAllConnections({ reason: "maintenance", excluded: EXCLUDED })],
    ["closeGroupConnections", () => lobby.closeAllConnections({ reason: "bye", excluded: EXCLUDED })],
    ["closeUserConnections", () => client.closeUserConnections("alice", { reason: "bye", excluded: EXCLUDED })],
    ["connectionExists", () => client.connectionExists("c1")],
    ["connectionExists.missing", () => client.connectionExists("missing")],
    ["groupExists", () => client.groupExists("lobby")],
    ["userExists", () => client.userExists("alice")],
    ["userExists.missing", () => client.userExists("nobody")],
    ["grantPermission", () => client.grantPermission("c1", "sendToGroup", { targetName: "lobby" })],
    ["grantPermission.all", () => client.grantPermission("c1", "joinLeaveGroup")],
    ["revokePermission", () => client.revokePermission("c1", "sendToGroup", { targetName: "lobby" })],
    ["checkPermission", () => client.hasPermission("c1", "sendToGroup", { targetName: "lobby" })],
    ["checkPermission.missing", () => client.hasPermission("missing", "joinLeaveGroup")],
    ["addConnectionsToGroups", () => client.addConnectionsToGroups(["g1", "g2"], FILTER)],
    ["removeConnectionsFromGroups", () => client.removeConnectionsFromGroups(["g1", "g2"], FILTER)],
    ["listConnectionsInGroup", async () => {
      const out = [];
      for await (const m of await lobby.listConnections()) out.push(m);
      return out;
    }],
    ["health", async () => {
      let status;
      await generated.healthApi.getServiceStatus({ onResponse: (r) => (status = r.status) });
      return status === 200;
    }],
    ["generateToken", async () => (await generated.webPubSub.generateClientToken(HUB, {
      userId: "alice",
      roles: ["webpubsub.joinLeaveGroup.lobby", "webpubsub.sendToGroup.lobby"],
      groups: ["lobby", "g2"],
      expirationTimeInMinutes: 5,
    })).token],
    ["generateToken.defaults", async () => (await generated.webPubSub.generateClientToken(HUB, {})).token],
  ];

  // Every public method of the hub and group clients must be exercised by some op above, so an
  // SDK upgrade that adds an operation fails the compat test instead of going unnoticed.
  const covered = new Set([
    "sendToAll", "sendToUser", "sendToConnection", "connectionExists", "closeConnection",
    "closeAllConnections", "closeUserConnections", "removeUserFromAllGroups",
    "removeConnectionFromAllGroups", "addConnectionsToGroups", "removeConnectionsFromGroups",
    "groupExists", "userExists", "grantPermission", "revokePermission", "hasPermission",
    "group.addConnection", "group.removeConnection", "group.closeAllConnections", "group.addUser",
    "group.removeUser", "group.sendToAll", "group.listConnections",
    // Not REST calls with a key credential (tokens.mjs covers getClientAccessToken).
    "constructor", "group", "getClientAccessToken", "group.constructor",
  ]);
  const uncovered = [
    ...Object.getOwnPropertyNames(WebPubSubServiceClient.prototype),
    ...Object.getOwnPropertyNames(Object.getPrototypeOf(lobby)).map((m) => `group.${m}`),
    ...Object.getOwnPropertyNames(Object.getPrototypeOf(generated.webPubSub))
      .filter((m) => !m.startsWith("_"))
      .map((m) => `generated.${m}`),
  ].filter((m) => !covered.has(m) && !GENERATED_COVERED.has(m));

  const results = {};
  for (const [name, f] of ops) {
    current = name;
    try {
      const v = await f();
      results[name] = v === undefined ? null : v;
    } catch (e) {
      results[name] = { error: String(e && e.message ? e.message : e) };
    }
  }
  server.close();
  return { requests, results, uncovered };
});
