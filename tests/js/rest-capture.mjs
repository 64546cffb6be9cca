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

// The fixed, named op list. Each entry: [op name (the "op" of every request it sends), the exact
// SDK call]. `client` = new WebPubSubServiceClient(<capture cs>, "chat", {allowInsecureConnection:
// true, retryOptions: {maxRetries: 0}}), `lobby` = client.group("lobby"), `generated` =
// client["client"] (the SDK's internal generated client, for REST ops the public surface only
// reaches with an Entra credential or not at all). tests/compat.rs `run_our_ops` mirrors this
// list one for one (same names); keep both in step.
const OPS = [
  // POST /api/hubs/chat/:send  ?excluded=c2&excluded=c3&filter=…  text/plain
  ["sendToAll.text", ({ client }) => client.sendToAll("Hello World", { contentType: "text/plain", excludedConnections: EXCLUDED, filter: FILTER })],
  // same, application/json (a JS object is JSON-serialized)
  ["sendToAll.json", ({ client }) => client.sendToAll({ hello: "world", n: 1, nested: [true, null] }, { excludedConnections: EXCLUDED, filter: FILTER })],
  // same, application/octet-stream (a Buffer is sent raw)
  ["sendToAll.binary", ({ client }) => client.sendToAll(Buffer.from([0, 1, 2, 255, 254]), { excludedConnections: EXCLUDED, filter: FILTER })],
  // POST /api/hubs/chat/:send ?messageTtlSeconds=30
  ["sendToAll.ttl", ({ client }) => client.sendToAll("ttl", { contentType: "text/plain", messageTtlSeconds: 30 })],
  // POST /api/hubs/chat/groups/lobby/:send ?excluded…&filter… application/json
  ["sendToGroup", ({ lobby }) => lobby.sendToAll({ hello: "group" }, { excludedConnections: EXCLUDED, filter: FILTER })],
  // POST /api/hubs/chat/groups/lobby/:send text/plain
  ["sendToGroup.text", ({ lobby }) => lobby.sendToAll("hi group", { contentType: "text/plain" })],
  // POST /api/hubs/chat/users/alice/:send ?filter…
  ["sendToUser", ({ client }) => client.sendToUser("alice", "hi alice", { contentType: "text/plain", filter: FILTER })],
  // path/query escaping: user "Ann Lee+ü'&=", filter with '' quote, &, /, ü, +
  ["sendToUser.odd", ({ client }) => client.sendToUser(ODD_USER, { x: 1 }, { filter: ODD_FILTER })],
  // POST /api/hubs/chat/connections/c1/:send ?messageTtlSeconds=5 application/octet-stream
  ["sendToConnection", ({ client }) => client.sendToConnection("c1", Buffer.from("bin"), { messageTtlSeconds: 5 })],
  // PUT /api/hubs/chat/groups/lobby/connections/c1
  ["addConnectionToGroup", ({ lobby }) => lobby.addConnection("c1")],
  // DELETE /api/hubs/chat/groups/lobby/connections/c1
  ["removeConnectionFromGroup", ({ lobby }) => lobby.removeConnection("c1")],
  // DELETE /api/hubs/chat/connections/c1/groups
  ["removeConnectionFromAllGroups", ({ client }) => client.removeConnectionFromAllGroups("c1")],
  // PUT /api/hubs/chat/users/alice/groups/lobby
  ["addUserToGroup", ({ lobby }) => lobby.addUser("alice")],
  // DELETE /api/hubs/chat/users/alice/groups/lobby
  ["removeUserFromGroup", ({ lobby }) => lobby.removeUser("alice")],
  // DELETE /api/hubs/chat/users/alice/groups
  ["removeUserFromAllGroups", ({ client }) => client.removeUserFromAllGroups("alice")],
  // DELETE /api/hubs/chat/connections/c1 ?reason=kicked
  ["closeConnection", ({ client }) => client.closeConnection("c1", { reason: "kicked" })],
  // POST /api/hubs/chat/:closeConnections ?excluded=c2&excluded=c3&reason=maintenance
  ["closeAllConnections", ({ client }) => client.closeAllConnections({ reason: "maintenance", excluded: EXCLUDED })],
  // POST /api/hubs/chat/groups/lobby/:closeConnections ?excluded…&reason=bye
  ["closeGroupConnections", ({ lobby }) => lobby.closeAllConnections({ reason: "bye", excluded: EXCLUDED })],
  // POST /api/hubs/chat/users/alice/:closeConnections ?excluded…&reason=bye
  ["closeUserConnections", ({ client }) => client.closeUserConnections("alice", { reason: "bye", excluded: EXCLUDED })],
  // HEAD /api/hubs/chat/connections/c1 (200 → true)
  ["connectionExists", ({ client }) => client.connectionExists("c1")],
  // HEAD /api/hubs/chat/connections/missing (404 → false)
  ["connectionExists.missing", ({ client }) => client.connectionExists("missing")],
  // HEAD /api/hubs/chat/groups/lobby
  ["groupExists", ({ client }) => client.groupExists("lobby")],
  // HEAD /api/hubs/chat/users/alice
  ["userExists", ({ client }) => client.userExists("alice")],
  // HEAD /api/hubs/chat/users/nobody (404 → false)
  ["userExists.missing", ({ client }) => client.userExists("nobody")],
  // PUT /api/hubs/chat/permissions/sendToGroup/connections/c1 ?targetName=lobby
  ["grantPermission", ({ client }) => client.grantPermission("c1", "sendToGroup", { targetName: "lobby" })],
  // PUT /api/hubs/chat/permissions/joinLeaveGroup/connections/c1 (no targetName)
  ["grantPermission.all", ({ client }) => client.grantPermission("c1", "joinLeaveGroup")],
  // DELETE /api/hubs/chat/permissions/sendToGroup/connections/c1 ?targetName=lobby
  ["revokePermission", ({ client }) => client.revokePermission("c1", "sendToGroup", { targetName: "lobby" })],
  // HEAD /api/hubs/chat/permissions/sendToGroup/connections/c1 ?targetName=lobby
  ["checkPermission", ({ client }) => client.hasPermission("c1", "sendToGroup", { targetName: "lobby" })],
  // HEAD /api/hubs/chat/permissions/joinLeaveGroup/connections/missing (404 → false)
  ["checkPermission.missing", ({ client }) => client.hasPermission("missing", "joinLeaveGroup")],
  // POST /api/hubs/chat/:addToGroups  {"groups":["g1","g2"],"filter":…}
  ["addConnectionsToGroups", ({ client }) => client.addConnectionsToGroups(["g1", "g2"], FILTER)],
  // POST /api/hubs/chat/:removeFromGroups  same body
  ["removeConnectionsFromGroups", ({ client }) => client.removeConnectionsFromGroups(["g1", "g2"], FILTER)],
  // GET /api/hubs/chat/groups/lobby/connections, then GET <nextLink> (two requests, one op)
  ["listConnectionsInGroup", async ({ lobby }) => {
    const out = [];
    for await (const m of await lobby.listConnections()) out.push(m);
    return out;
  }],
  // HEAD /api/health (not on the public surface)
  ["health", async ({ generated }) => {
    let status;
    await generated.healthApi.getServiceStatus({ onResponse: (r) => (status = r.status) });
    return status === 200;
  }],
  // POST /api/hubs/chat/:generateToken ?userId&role×2&minutesToExpire&group×2&clientType
  // (public surface: getClientAccessToken only calls it with an Entra TokenCredential)
  ["generateToken", async ({ generated }) => (await generated.webPubSub.generateClientToken(HUB, {
    userId: "alice",
    roles: ["webpubsub.joinLeaveGroup.lobby", "webpubsub.sendToGroup.lobby"],
    groups: ["lobby", "g2"],
    expirationTimeInMinutes: 5,
  })).token],
  // POST /api/hubs/chat/:generateToken ?minutesToExpire=60&clientType=Default (SDK defaults)
  ["generateToken.defaults", async ({ generated }) => (await generated.webPubSub.generateClientToken(HUB, {})).token],
];

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
  for (const [name, f] of OPS) {
    current = name;
    try {
      const v = await f({ client, lobby, generated });
      results[name] = v === undefined ? null : v;
    } catch (e) {
      results[name] = { error: String(e && e.message ? e.message : e) };
    }
  }
  server.close();
  return { requests, results, uncovered };
});
