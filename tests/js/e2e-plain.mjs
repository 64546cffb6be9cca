// A plain WebSocket client (npm `ws`, no subprotocol) against the emulator + chat function:
// no envelope at all — every frame is a `message` user event, the handler's reply comes back as
// one raw frame; REST sends arrive raw; `webpubsub_mode=sendToGroup` publishes every frame.
// Hub ECHO_HUB's handler echoes each frame (binary too); a failed handler closes with 1011.
// env: CS (emulator connection string), HUB, FN (function base URL), ECHO_HUB (default echo).
import WebSocket from "ws";
import { WebPubSubServiceClient } from "@azure/web-pubsub";
import { check, run, same, step, until } from "./e2e-lib.mjs";

const CS = process.env.CS;
const HUB = process.env.HUB || "chat";
const FN = process.env.FN;
const ECHO_HUB = process.env.ECHO_HUB || "echo";
const T = 5000;

run(async () => {
  const service = new WebPubSubServiceClient(CS, HUB, { allowInsecureConnection: true });
  const open = async (userId, query = "", opts = {}) => {
    const { url } = await service.getClientAccessToken({ userId, ...opts });
    const ws = new WebSocket(url + query);
    const o = { ws, frames: [], protocol: null, closeCode: null };
    ws.on("message", (d, isBinary) => o.frames.push(isBinary ? { binary: [...d] } : d.toString()));
    ws.on("close", (code) => (o.closeCode = code));
    await new Promise((res, rej) => {
      ws.once("open", res);
      ws.once("error", rej);
    });
    o.protocol = ws.protocol;
    return o;
  };
  const out = {};

  step("connect without a subprotocol");
  const p = await open("plain", "&room=lobby");
  same(p.protocol, "", "no subprotocol in the 101");
  const watcher = await open("watcher", "&room=lobby");

  step("a text frame is a message event; the reply comes back as one text frame");
  p.ws.send("hello plain");
  const reply = await until(() => p.frames.find((f) => typeof f === "string" && f.includes('"stored"')), T, "the handler's reply frame");
  const stored = JSON.parse(reply);
  same(stored.type, "stored", "reply type");
  check(!p.frames.some((f) => typeof f === "string" && f.includes('"type":"system"')), "no connected/system frames for a plain client");
  out.reply = stored;
  const hist = await (await fetch(`${FN}/api/messages?room=lobby`)).json();
  check(hist.messages.some((m) => m.text === "hello plain" && m.from === "plain"), "message stored by the function");
  await until(() => watcher.frames.some((f) => typeof f === "string" && f.includes("hello plain")), T, "room broadcast as a raw frame");

  step("REST sends arrive raw: text, JSON text, binary");
  await service.sendToUser("plain", "raw text", { contentType: "text/plain" });
  await service.sendToUser("plain", { k: "v" });
  await service.sendToUser("plain", new Uint8Array([9, 9]).buffer);
  await until(() => p.frames.includes("raw text"), T, "text frame");
  await until(() => p.frames.includes('{"k":"v"}'), T, "json as text frame");
  await until(() => p.frames.some((f) => f.binary && f.binary.join() === "9,9"), T, "binary frame");

  step("webpubsub_mode=sendToGroup publishes every frame to the group");
  const pub = await open("pub", "&webpubsub_mode=sendToGroup&group=lobby", { roles: ["webpubsub.sendToGroup.lobby"] });
  pub.ws.send("to the room");
  await until(() => watcher.frames.includes("to the room"), T, "group frame to a member");

  step("hub echo: a binary frame is an octet-stream message event, echoed back as a binary frame");
  const echoService = new WebPubSubServiceClient(CS, ECHO_HUB, { allowInsecureConnection: true });
  const openEcho = async (userId) => {
    const { url } = await echoService.getClientAccessToken({ userId });
    const ws = new WebSocket(url);
    const o = { ws, frames: [], closeCode: null };
    ws.on("message", (d, isBinary) => o.frames.push(isBinary ? { binary: [...d] } : d.toString()));
    ws.on("close", (code) => (o.closeCode = code));
    await new Promise((res, rej) => {
      ws.once("open", res);
      ws.once("error", rej);
    });
    return o;
  };
  const e = await openEcho("echo-plain");
  e.ws.send(Buffer.from([0, 1, 2, 255]));
  await until(() => e.frames.some((f) => f.binary && f.binary.join() === "0,1,2,255"), T, "binary echo frame");
  e.ws.send("plain text");
  await until(() => e.frames.includes("plain text"), T, "text echo frame");

  step("a failed handler closes a plain client (1011): the chat function refuses binary messages");
  const bad = await open("binary-sender", "&room=lobby");
  bad.ws.send(Buffer.from([1, 2, 3]));
  await until(() => bad.closeCode !== null, T, "closed after the handler's 400");
  same(bad.closeCode, 1011, "close code for a failed handler");
  same(p.closeCode, null, "other plain clients stay open");
  p.ws.send("still here");
  await until(() => watcher.frames.some((f) => typeof f === "string" && f.includes("still here")), T, "others still served");

  step("close");
  for (const o of [p, watcher, pub, e]) o.ws.close(1000);
  await until(() => [p, watcher, pub, e].every((o) => o.closeCode !== null), T, "closed");
  out.closeCode = p.closeCode;
  return out;
}, 30000);
