// The official @azure/web-pubsub-client against the emulator (+ chat function as event handler),
// one JSON subprotocol per run: connect, joinGroup, sendToGroup round trip (noEcho, binary),
// sendEvent (+ invokeEvent), server messages over REST, a dropped socket (reliable: silent
// recovery with replay; json: disconnected + a new connection with groups re-joined), sendEvent
// with every dataType (hub ECHO_HUB, whose handler echoes), Forbidden without a role, a REST
// closeConnection (1008 → a new connection), stop.
// env: CS (emulator connection string), HUB, ECHO_HUB (default echo), PROTOCOL (json | reliable).
import {
  WebPubSubClient,
  WebPubSubJsonProtocol,
  WebPubSubJsonReliableProtocol,
} from "@azure/web-pubsub-client";
import { WebPubSubServiceClient } from "@azure/web-pubsub";
import { check, portOf, run, same, sleep, step, tcpProxy, until, within } from "./e2e-lib.mjs";

const CS = process.env.CS;
const HUB = process.env.HUB || "chat";
const ECHO_HUB = process.env.ECHO_HUB || "echo";
const RELIABLE = process.env.PROTOCOL !== "json";
const T = 5000;

run(async () => {
  const service = new WebPubSubServiceClient(CS, HUB, { allowInsecureConnection: true });
  const emuPort = portOf(CS);
  const proxy = await tcpProxy(emuPort);
  const roles = ["webpubsub.joinLeaveGroup", "webpubsub.sendToGroup"];

  /** A client plus everything it observed. Alice goes through the proxy so it can be dropped. */
  const make = (user, viaProxy) => {
    const getClientAccessUrl = async () => {
      const t = await service.getClientAccessToken({ userId: user, roles });
      return viaProxy ? t.url.replace(`:${emuPort}/`, `:${proxy.port}/`) : t.url;
    };
    const protocol = RELIABLE ? WebPubSubJsonReliableProtocol() : WebPubSubJsonProtocol();
    const client = new WebPubSubClient({ getClientAccessUrl }, { protocol });
    const seen = { connected: [], disconnected: [], group: [], server: [], stopped: 0 };
    client.on("connected", (e) => seen.connected.push(e));
    client.on("disconnected", (e) => seen.disconnected.push(e));
    client.on("stopped", () => seen.stopped++);
    client.on("group-message", (e) => seen.group.push(e.message));
    client.on("server-message", (e) => seen.server.push(e.message));
    return { client, seen };
  };
  const groupData = (s) => s.group.map((m) => m.data);
  const has = (list, pred) => list.some(pred);
  const out = { protocol: RELIABLE ? "json.reliable.webpubsub.azure.v1" : "json.webpubsub.azure.v1" };

  step("connect alice (via proxy) and bob");
  const a = make("alice", true);
  const b = make("bob", false);
  await within(a.client.start(), T, "alice start");
  await within(b.client.start(), T, "bob start");
  await until(() => a.seen.connected.length && b.seen.connected.length, T, "connected events");
  const aId = a.seen.connected[0].connectionId;
  same(a.seen.connected[0].userId, "alice", "alice's userId");
  same(b.seen.connected[0].userId, "bob", "bob's userId");
  check(await service.connectionExists(aId), "REST connectionExists(alice)");

  step("joinGroup g1 (both)");
  same(await within(a.client.joinGroup("g1"), T, "alice join"), { ackId: 1, isDuplicated: false }, "join ack");
  await within(b.client.joinGroup("g1"), T, "bob join");

  step("sendToGroup round trip (json, echo to the sender)");
  await within(a.client.sendToGroup("g1", { n: 1 }, "json"), T, "sendToGroup json ack");
  await until(() => has(b.seen.group, (m) => m.data?.n === 1 && m.fromUserId === "alice" && m.group === "g1"), T, "bob gets {n:1}");
  await until(() => has(a.seen.group, (m) => m.data?.n === 1), T, "alice gets her own {n:1} (noEcho false)");

  step("sendToGroup noEcho");
  await within(a.client.sendToGroup("g1", "quiet", "text", { noEcho: true }), T, "noEcho ack");
  await until(() => groupData(b.seen).includes("quiet"), T, "bob gets quiet");
  await sleep(200);
  check(!groupData(a.seen).includes("quiet"), "alice must not get her noEcho message");

  step("leaveGroup, fireAndForget sendToGroup");
  await within(a.client.joinGroup("g2"), T, "alice joins g2");
  await within(b.client.joinGroup("g2"), T, "bob joins g2");
  await within(a.client.leaveGroup("g2"), T, "alice leaves g2");
  await b.client.sendToGroup("g2", "g2-after-leave", "text", { fireAndForget: true });
  await until(() => groupData(b.seen).includes("g2-after-leave"), T, "bob gets his fireAndForget g2 message");
  await sleep(200);
  check(!groupData(a.seen).includes("g2-after-leave"), "alice left g2: she must not get it");

  step("sendToGroup binary");
  await within(b.client.sendToGroup("g1", new Uint8Array([1, 2, 3]).buffer, "binary"), T, "binary ack");
  await until(() => has(a.seen.group, (m) => m.dataType === "binary" && [...new Uint8Array(m.data)].join() === "1,2,3"), T, "alice gets the bytes");

  step("sendEvent → chat function (stored, broadcast to the room)");
  const ack = await within(a.client.sendEvent("message", "hello from e2e", "text"), T, "sendEvent ack");
  same(ack.isDuplicated, false, "sendEvent ack");
  await until(() => has(a.seen.server, (m) => m.data?.type === "stored" && m.data.stored === true), T, "alice's stored reply");
  await until(() => has(b.seen.group, (m) => m.data?.type === "message" && m.data.text === "hello from e2e"), T, "bob gets the room broadcast");

  if (typeof a.client.invokeEvent === "function") {
    step("invokeEvent → invokeResponse");
    const r = await within(a.client.invokeEvent("message", "invoked", "text"), T, "invokeEvent");
    same(r.data?.type, "stored", "invokeEvent result");
    out.invoke = true;
  }

  step("server messages over REST (connection, user, all)");
  await service.sendToConnection(aId, "direct", { contentType: "text/plain" });
  await service.sendToUser("bob", { u: 1 });
  await service.sendToAll("all", { contentType: "text/plain" });
  await until(() => has(a.seen.server, (m) => m.data === "direct" && m.dataType === "text"), T, "alice gets direct");
  await until(() => has(b.seen.server, (m) => m.data?.u === 1 && m.dataType === "json"), T, "bob gets {u:1}");
  await until(() => has(a.seen.server, (m) => m.data === "all") && has(b.seen.server, (m) => m.data === "all"), T, "both get all");

  step("drop alice's socket");
  const dropped = proxy.drop();
  check(dropped >= 1, "the proxy had alice's socket");
  await service.group("g1").sendToAll("while-away", { contentType: "text/plain" });
  if (RELIABLE) {
    step("reliable: silent recovery, message sent while away is replayed");
    await until(() => groupData(a.seen).includes("while-away"), 15000, "alice gets the message sent while she was away");
    same(a.seen.connected.length, 1, "no new connected event after recovery");
    same(a.seen.disconnected.length, 0, "no disconnected event after recovery");
    check(await service.connectionExists(aId), "the same connection still exists");
    await within(a.client.sendToGroup("g1", "after-recovery", "text"), T, "send after recovery");
    await until(() => groupData(b.seen).includes("after-recovery"), T, "bob gets after-recovery");
    out.recovered = true;
    out.duplicates = groupData(a.seen).filter((d) => d === "while-away").length;
    same(out.duplicates, 1, "the replayed message arrives exactly once");
  } else {
    step("json: disconnected, then a new connection with g1 re-joined");
    await until(() => a.seen.disconnected.length >= 1, T, "alice's disconnected event");
    await until(() => a.seen.connected.length >= 2, 10000, "alice reconnected");
    const newId = a.seen.connected[1].connectionId;
    check(newId !== aId, "a new connection id after a drop on the json protocol");
    await until(async () => !(await service.connectionExists(aId)), T, "old connection gone");
    await service.group("g1").sendToAll("after-reconnect", { contentType: "text/plain" });
    await until(() => groupData(a.seen).includes("after-reconnect"), T, "auto-rejoined g1");
    out.reconnected = true;
  }

  step("sendEvent with each dataType (hub echo: the handler echoes the payload back)");
  const echoService = new WebPubSubServiceClient(CS, ECHO_HUB, { allowInsecureConnection: true });
  const e = new WebPubSubClient(
    { getClientAccessUrl: async () => (await echoService.getClientAccessToken({ userId: "echo-user" })).url },
    { protocol: RELIABLE ? WebPubSubJsonReliableProtocol() : WebPubSubJsonProtocol(), messageRetryOptions: { maxRetries: 1, retryDelayInMs: 100 } },
  );
  const echoed = [];
  e.on("server-message", (m) => echoed.push(m.message));
  await within(e.start(), T, "echo client start");
  const bytes = (m) => (m.data instanceof ArrayBuffer ? [...new Uint8Array(m.data)].join() : null);
  await within(e.sendEvent("echo", "plain words", "text"), T, "sendEvent text");
  await until(() => has(echoed, (m) => m.dataType === "text" && m.data === "plain words"), T, "text echoed");
  await within(e.sendEvent("echo", { deep: [1, { x: true }] }, "json"), T, "sendEvent json");
  await until(() => has(echoed, (m) => m.dataType === "json" && m.data?.deep?.[1]?.x === true), T, "json echoed");
  await within(e.sendEvent("echo", new Uint8Array([0, 1, 254]).buffer, "binary"), T, "sendEvent binary");
  await until(() => has(echoed, (m) => m.dataType === "binary" && bytes(m) === "0,1,254"), T, "binary echoed");
  await within(e.sendEvent("echo", new Uint8Array([8, 150, 1]).buffer, "protobuf"), T, "sendEvent protobuf");
  await until(() => has(echoed, (m) => m.dataType === "binary" && bytes(m) === "8,150,1"), T, "protobuf echoed (as octet-stream → binary)");
  const failed = await within(e.sendEvent("fail", "x", "text").then(() => null, (err) => err), T, "sendEvent to a failing handler");
  check(failed, "sendEvent must reject when the handler answers 500");
  same(failed.errorDetail?.name, "InternalServerError", "error name for a failing handler");
  await within(e.sendEvent("echo", "still open", "text"), T, "sendEvent after a failure");
  await until(() => has(echoed, (m) => m.data === "still open"), T, "connection kept after the failure");
  await e.sendEvent("echo", "fire and forget", "text", { fireAndForget: true });
  await until(() => has(echoed, (m) => m.data === "fire and forget"), T, "fireAndForget event still reaches the handler");
  const inv = await within(e.invokeEvent("echo", { q: 42 }, "json"), T, "invokeEvent json");
  same([inv.dataType, inv.data], ["json", { q: 42 }], "invokeEvent result");
  const invSilent = await within(e.invokeEvent("silent", "s", "text"), T, "invokeEvent answered 204");
  same(invSilent.data, undefined, "invokeEvent without a reply body");
  const invFail = await within(e.invokeEvent("fail", "x", "text").then(() => null, (err) => err), T, "invokeEvent to a failing handler");
  same(invFail?.name, "InvocationError", "invokeEvent failure type");
  same(invFail?.errorDetail?.name, "InternalServerError", "invokeEvent failure name");
  out.echoed = echoed.length;

  step("no role: joinGroup / sendToGroup are Forbidden (the function grants only its room)");
  const f = new WebPubSubClient(
    { getClientAccessUrl: async () => (await service.getClientAccessToken({ userId: "frank" })).url },
    { protocol: RELIABLE ? WebPubSubJsonReliableProtocol() : WebPubSubJsonProtocol(), messageRetryOptions: { maxRetries: 1, retryDelayInMs: 100 } },
  );
  await within(f.start(), T, "frank start");
  const denied = await within(f.joinGroup("g1").then(() => null, (err) => err), T, "joinGroup without role");
  check(denied, "joinGroup without a role must reject");
  same(denied.errorDetail?.name, "Forbidden", "joinGroup error name");
  const deniedSend = await within(f.sendToGroup("g1", "x", "text").then(() => null, (err) => err), T, "sendToGroup without role");
  same(deniedSend?.errorDetail?.name, "Forbidden", "sendToGroup error name");
  await within(f.joinGroup("lobby"), T, "joinGroup of the room the connect handler allowed");
  await within(f.sendToGroup("lobby", "frank here", "text"), T, "sendToGroup to the allowed room");
  check(!groupData(a.seen).includes("x"), "a forbidden send is not delivered");

  step("REST closeConnection: close 1008 → disconnected (with the reason), then a new connection");
  const bId = b.seen.connected[0].connectionId;
  await service.closeConnection(bId, { reason: "kicked by e2e" });
  await until(() => b.seen.disconnected.length >= 1, T, "bob's disconnected event");
  same(b.seen.disconnected[0].message?.message, "kicked by e2e", "the close reason reaches the client (disconnected message)");
  await until(() => b.seen.connected.length >= 2, 10000, "bob reconnected");
  const bNew = b.seen.connected[1].connectionId;
  check(bNew !== bId, "a closed connection comes back with a new id");
  same(await service.connectionExists(bId), false, "old connection gone");
  await service.group("g1").sendToAll("after-kick", { contentType: "text/plain" });
  await until(() => groupData(b.seen).includes("after-kick"), T, "bob re-joined g1 on the new connection");
  out.kicked = { from: bId, to: bNew };

  step("stop");
  const t0 = Date.now();
  a.client.stop();
  b.client.stop();
  e.stop();
  f.stop();
  await until(() => a.seen.stopped && b.seen.stopped, T, "stopped events");
  out.stopMs = Date.now() - t0;
  proxy.close();
  out.connectionId = aId;
  return out;
}, 60000);
