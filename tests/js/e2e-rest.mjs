// Every REST operation of the official @azure/web-pubsub WebPubSubServiceClient (with
// allowInsecureConnection) against the emulator, each checked by its effect on connected clients
// (raw `ws` sockets speaking json.webpubsub.azure.v1, so every frame is visible).
// env: CS (emulator connection string), HUB.
import WebSocket from "ws";
import { WebPubSubServiceClient } from "@azure/web-pubsub";
import { check, run, same, sleep, step, until } from "./e2e-lib.mjs";

const CS = process.env.CS;
const HUB = process.env.HUB || "chat";
const T = 5000;

run(async () => {
  const service = new WebPubSubServiceClient(CS, HUB, { allowInsecureConnection: true });
  const done = [];
  const op = async (name, f) => {
    step(name);
    const r = await f();
    done.push(name);
    return r;
  };

  /** A raw json.webpubsub.azure.v1 socket: every frame it gets, its close code. */
  const observer = async (userId) => {
    const { url } = await service.getClientAccessToken({ userId });
    const ws = new WebSocket(url, "json.webpubsub.azure.v1");
    const o = { ws, frames: [], closeCode: null, id: null, ackId: 0 };
    ws.on("message", (d, isBinary) => {
      check(!isBinary, "JSON protocol frames are text");
      o.frames.push(JSON.parse(d.toString()));
    });
    ws.on("close", (code) => (o.closeCode = code));
    await until(() => o.frames.find((f) => f.event === "connected"), T, `${userId} connected frame`);
    o.id = o.frames[0].connectionId;
    o.data = () => o.frames.filter((f) => f.type === "message").map((f) => f.data);
    o.got = (pred, what) => until(() => o.frames.find((f) => f.type === "message" && pred(f)), T, `${userId}: ${what}`);
    o.send = async (frame) => {
      const ackId = ++o.ackId;
      ws.send(JSON.stringify({ ...frame, ackId }));
      return until(() => o.frames.find((f) => f.type === "ack" && f.ackId === ackId), T, `${userId}: ack ${ackId}`);
    };
    return o;
  };
  const quiet = async (o, pred, what) => {
    await sleep(150);
    check(!o.frames.some((f) => f.type === "message" && pred(f)), `${what} must not arrive`);
  };

  const u1 = await observer("u1");
  const u2 = await observer("u2");
  const u3 = await observer("u3");

  await op("health", async () => {
    const res = await fetch(`http://127.0.0.1:${/Port=(\d+)/.exec(CS)[1]}/api/health`, { method: "HEAD" });
    same(res.status, 200, "HEAD /api/health");
  });

  await op("sendToAll (text, json, binary)", async () => {
    await service.sendToAll("t1", { contentType: "text/plain" });
    await service.sendToAll({ j: 1 });
    await service.sendToAll(new Uint8Array([7, 8]).buffer);
    for (const o of [u1, u2, u3]) {
      await o.got((f) => f.from === "server" && f.dataType === "text" && f.data === "t1", "text");
      await o.got((f) => f.dataType === "json" && f.data?.j === 1, "json");
      await o.got((f) => f.dataType === "binary" && f.data === Buffer.from([7, 8]).toString("base64"), "binary");
    }
  });

  await op("sendToAll with filter and excluded", async () => {
    await service.sendToAll("only-u1", { contentType: "text/plain", filter: "userId eq 'u1'" });
    await service.sendToAll("not-u2", { contentType: "text/plain", excludedConnections: [u2.id] });
    await u1.got((f) => f.data === "only-u1", "filtered");
    await u1.got((f) => f.data === "not-u2", "excluded other");
    await u3.got((f) => f.data === "not-u2", "excluded other");
    await quiet(u2, (f) => f.data === "only-u1" || f.data === "not-u2", "filtered/excluded to u2");
  });

  await op("sendToUser, sendToConnection", async () => {
    await service.sendToUser("u2", "to-u2", { contentType: "text/plain" });
    await service.sendToConnection(u3.id, { c: 3 });
    await u2.got((f) => f.data === "to-u2", "sendToUser");
    await u3.got((f) => f.data?.c === 3, "sendToConnection");
    await quiet(u1, (f) => f.data === "to-u2" || f.data?.c === 3, "other recipients' messages");
  });

  await op("connectionExists, userExists", async () => {
    same(await service.connectionExists(u1.id), true, "connectionExists(u1)");
    same(await service.connectionExists("nope"), false, "connectionExists(nope)");
    same(await service.userExists("u2"), true, "userExists(u2)");
    same(await service.userExists("nobody"), false, "userExists(nobody)");
  });

  const g = service.group("g");
  await op("group.addConnection, groupExists, group.sendToAll, group.listConnections", async () => {
    same(await service.groupExists("g"), false, "groupExists before");
    await g.addConnection(u1.id);
    same(await service.groupExists("g"), true, "groupExists after");
    await g.sendToAll("to-g", { contentType: "text/plain" });
    await u1.got((f) => f.from === "group" && f.group === "g" && f.data === "to-g", "group message");
    await quiet(u2, (f) => f.data === "to-g", "group message to a non-member");
    const members = [];
    for await (const m of await g.listConnections()) members.push(m);
    same(members, [{ connectionId: u1.id, userId: "u1" }], "listConnections");
  });

  await op("group.sendToAll excluded + filter", async () => {
    await g.addConnection(u2.id);
    await g.sendToAll("g-not-u1", { contentType: "text/plain", excludedConnections: [u1.id] });
    await g.sendToAll("g-u1-only", { contentType: "text/plain", filter: "userId eq 'u1'" });
    await u2.got((f) => f.data === "g-not-u1", "excluded");
    await u1.got((f) => f.data === "g-u1-only", "filter");
    await quiet(u1, (f) => f.data === "g-not-u1", "excluded connection");
    await quiet(u2, (f) => f.data === "g-u1-only", "filtered-out connection");
  });

  await op("group.listConnections paged (maxPageSize 1, top)", async () => {
    await g.addConnection(u3.id);
    const all = [];
    for await (const m of await g.listConnections({ maxPageSize: 1 })) all.push(m.connectionId);
    same(all.sort(), [u1.id, u2.id, u3.id].sort(), "all members across pages");
    const top = [];
    for await (const m of await g.listConnections({ maxPageSize: 1, top: 2 })) top.push(m.connectionId);
    same(top.length, 2, "top 2");
  });

  await op("group.removeConnection", async () => {
    await g.removeConnection(u3.id);
    await g.sendToAll("after-remove", { contentType: "text/plain" });
    await u1.got((f) => f.data === "after-remove", "member still gets");
    await quiet(u3, (f) => f.data === "after-remove", "removed connection");
  });

  await op("group.addUser, group.removeUser", async () => {
    const h = service.group("h");
    await h.addUser("u3");
    await h.sendToAll("to-h", { contentType: "text/plain" });
    await u3.got((f) => f.group === "h" && f.data === "to-h", "user's connection joined");
    await h.removeUser("u3");
    same(await service.groupExists("h"), false, "h empty after removeUser");
  });

  await op("addConnectionsToGroups, removeConnectionsFromGroups (filter)", async () => {
    await service.addConnectionsToGroups(["f1", "f2"], "userId eq 'u2' or userId eq 'u3'");
    await service.group("f2").sendToAll("to-f2", { contentType: "text/plain" });
    await u2.got((f) => f.group === "f2" && f.data === "to-f2", "u2 in f2");
    await u3.got((f) => f.group === "f2" && f.data === "to-f2", "u3 in f2");
    await quiet(u1, (f) => f.data === "to-f2", "u1 not in f2");
    await service.sendToAll("f1-not-u3", { contentType: "text/plain", filter: "'f1' in groups and not(userId eq 'u3')" });
    await u2.got((f) => f.from === "server" && f.data === "f1-not-u3", "filter on groups");
    await quiet(u3, (f) => f.data === "f1-not-u3", "filtered out by userId");
    await quiet(u1, (f) => f.data === "f1-not-u3", "filtered out by groups");
    await service.removeConnectionsFromGroups(["f1", "f2"], "userId eq 'u2'");
    const f2 = [];
    for await (const m of await service.group("f2").listConnections()) f2.push(m.userId);
    same(f2, ["u3"], "f2 after removeConnectionsFromGroups");
  });

  await op("removeConnectionFromAllGroups, removeUserFromAllGroups", async () => {
    await service.removeConnectionFromAllGroups(u3.id);
    same(await service.groupExists("f1"), false, "f1 empty");
    await service.removeUserFromAllGroups("u2");
    const left = [];
    for await (const m of await g.listConnections()) left.push(m.userId);
    same(left, ["u1"], "g after removeUserFromAllGroups");
  });

  await op("grantPermission, hasPermission, revokePermission", async () => {
    const before = await u1.send({ type: "sendToGroup", group: "p", dataType: "text", data: "x" });
    same(before.success, false, "sendToGroup without permission");
    same(before.error.name, "Forbidden", "error name");
    same(await service.hasPermission(u1.id, "sendToGroup", { targetName: "p" }), false, "hasPermission before");
    await service.grantPermission(u1.id, "sendToGroup", { targetName: "p" });
    same(await service.hasPermission(u1.id, "sendToGroup", { targetName: "p" }), true, "hasPermission after grant");
    same((await u1.send({ type: "sendToGroup", group: "p", dataType: "text", data: "x" })).success, true, "sendToGroup after grant");
    await service.grantPermission(u1.id, "joinLeaveGroup");
    same(await service.hasPermission(u1.id, "joinLeaveGroup", { targetName: "any" }), true, "joinLeaveGroup (all groups) covers any group");
    same((await u1.send({ type: "joinGroup", group: "any" })).success, true, "joinGroup after grant");
    await service.revokePermission(u1.id, "sendToGroup", { targetName: "p" });
    same(await service.hasPermission(u1.id, "sendToGroup", { targetName: "p" }), false, "hasPermission after revoke");
    same((await u1.send({ type: "sendToGroup", group: "p", dataType: "text", data: "x" })).error?.name, "Forbidden", "sendToGroup after revoke");
  });

  await op("getClientAccessToken (roles, groups, expiry) → connect", async () => {
    const t = await service.getClientAccessToken({
      userId: "tok",
      roles: ["webpubsub.joinLeaveGroup.tg2"],
      groups: ["tg"],
      expirationTimeInMinutes: 5,
    });
    check(t.url.startsWith("ws://") && t.url.includes(`/client/hubs/${HUB}?access_token=`), `client URL ${t.url}`);
    const ws = new WebSocket(t.url, "json.webpubsub.azure.v1");
    const frames = [];
    ws.on("message", (d) => frames.push(JSON.parse(d.toString())));
    const connected = await until(() => frames.find((f) => f.event === "connected"), T, "tok connected");
    same(connected.userId, "tok", "userId from the token");
    same(await service.groupExists("tg"), true, "the token's group is joined");
    await service.group("tg").sendToAll("to-tg", { contentType: "text/plain" });
    await until(() => frames.find((f) => f.type === "message" && f.group === "tg" && f.data === "to-tg"), T, "group message via the token's group");
    ws.send(JSON.stringify({ type: "joinGroup", group: "tg2", ackId: 1 }));
    ws.send(JSON.stringify({ type: "joinGroup", group: "tg3", ackId: 2 }));
    const a1 = await until(() => frames.find((f) => f.type === "ack" && f.ackId === 1), T, "ack 1");
    const a2 = await until(() => frames.find((f) => f.type === "ack" && f.ackId === 2), T, "ack 2");
    same(a1.success, true, "the token's group role allows tg2");
    same(a2.error?.name, "Forbidden", "but not tg3");
    ws.close(1000);
    await until(async () => !(await service.userExists("tok")), T, "tok gone after its close");
  });

  await op("reliable and plain receivers; messageTtlSeconds", async () => {
    const { url } = await service.getClientAccessToken({ userId: "rel" });
    const rel = new WebSocket(url, "json.reliable.webpubsub.azure.v1");
    const relFrames = [];
    rel.on("message", (d) => relFrames.push(JSON.parse(d.toString())));
    const c = await until(() => relFrames.find((f) => f.event === "connected"), T, "reliable connected");
    check(typeof c.reconnectionToken === "string" && c.reconnectionToken.length > 0, "reconnectionToken");
    const plainUrl = (await service.getClientAccessToken({ userId: "raw" })).url;
    const raw = new WebSocket(plainUrl);
    const rawFrames = [];
    raw.on("message", (d, isBinary) => rawFrames.push(isBinary ? { binary: [...d] } : d.toString()));
    await new Promise((res, rej) => raw.once("open", res).once("error", rej));
    await service.sendToAll("ttl", { contentType: "text/plain", messageTtlSeconds: 30, filter: "userId eq 'rel' or userId eq 'raw'" });
    await service.sendToUser("raw", new Uint8Array([5]).buffer);
    await service.sendToUser("rel", { r: 1 });
    const msgs = () => relFrames.filter((f) => f.type === "message");
    await until(() => msgs().some((f) => f.data === "ttl") && msgs().some((f) => f.data?.r === 1), T, "reliable messages");
    // (on a hub with the chat function, room notices are sequenced too)
    const seqs = msgs().map((f) => f.sequenceId);
    same(seqs, seqs.map((_, i) => i + 1), "reliable sequence ids: 1, 2, 3, …");
    await until(() => rawFrames.includes("ttl") && rawFrames.some((f) => f.binary?.join() === "5"), T, "plain frames");
    await quiet(u1, (f) => f.data === "ttl", "filtered ttl message");
    rel.close(1000);
    raw.close(1000);
    await until(async () => !(await service.userExists("rel")) && !(await service.userExists("raw")), T, "both gone");
  });

  await op("a wrong access key is refused (401)", async () => {
    const bad = new WebPubSubServiceClient(CS.replace(/AccessKey=[^;]+/, "AccessKey=abcdefghijklmnopqrstuvwxyz0123456789abcdefgh"), HUB, { allowInsecureConnection: true });
    const err = await bad.sendToAll("x", { contentType: "text/plain" }).then(() => null, (e) => e);
    same(err?.statusCode, 401, "status with a wrong key");
    await quiet(u1, (f) => f.data === "x" && f.from === "server", "a refused send");
  });

  await op("close ops with excluded", async () => {
    const k1 = await observer("k");
    const k2 = await observer("k");
    await service.closeUserConnections("k", { reason: "not k2", excluded: [k2.id] });
    await until(() => k1.closeCode !== null, T, "k1 closed");
    await sleep(150);
    same(k2.closeCode, null, "excluded k2 stays open");
    await service.group("kg").addConnection(k2.id);
    await service.group("kg").addConnection(u2.id);
    await service.group("kg").closeAllConnections({ reason: "kg", excluded: [u2.id] });
    await until(() => k2.closeCode !== null, T, "k2 closed (group)");
    same(u2.closeCode, null, "excluded u2 stays open");
  });

  await op("closeConnection (reason)", async () => {
    await service.closeConnection(u3.id, { reason: "bye u3" });
    await until(() => u3.closeCode !== null, T, "u3 closed");
    same(u3.closeCode, 1008, "close code");
    check(u3.frames.some((f) => f.type === "system" && f.event === "disconnected" && f.message === "bye u3"), "disconnected frame with the reason");
    await until(async () => !(await service.connectionExists(u3.id)), T, "u3 gone");
  });

  await op("closeUserConnections, group.closeAllConnections, closeAllConnections", async () => {
    const v1 = await observer("v");
    const v2 = await observer("w");
    const v3 = await observer("x");
    await service.closeUserConnections("v", { reason: "user" });
    await until(() => v1.closeCode !== null, T, "v closed");
    await service.group("gx").addConnection(v2.id);
    await service.group("gx").closeAllConnections({ reason: "group" });
    await until(() => v2.closeCode !== null, T, "w closed (group)");
    same(v3.closeCode, null, "x still open");
    await service.closeAllConnections({ reason: "all but x", excluded: [v3.id] });
    await until(() => [u1, u2].every((o) => o.closeCode !== null), T, "all but the excluded closed");
    same(v3.closeCode, null, "excluded x still open");
    await service.closeAllConnections({ reason: "all" });
    await until(() => [u1, u2, v3].every((o) => o.closeCode !== null), T, "everyone closed");
    same(await service.userExists("u1"), false, "no users left");
  });

  return { operations: done };
}, 60000);
