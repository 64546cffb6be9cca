// The seed quickstart, unchanged, against `hubhook dev`, plus a second client in the same room.
// env: FN (function base URL, e.g. http://127.0.0.1:8081). Prints one JSON line with what happened.
import { WebPubSubClient, WebPubSubJsonProtocol } from "@azure/web-pubsub-client";

const FN = process.env.FN;
const protocol = process.env.PROTOCOL === "json" ? WebPubSubJsonProtocol() : undefined;
const timeout = (ms, what) => new Promise((_, rej) => setTimeout(() => rej(new Error(`timeout: ${what}`)), ms));
const negotiate = async (user) => (await (await fetch(`${FN}/negotiate?userId=${user}&room=lobby`)).json()).url;

async function main() {
  const out = {};
  // Second client first, so it sees alice join.
  const bob = new WebPubSubClient({ getClientAccessUrl: () => negotiate("bob") }, protocol ? { protocol } : {});
  const bobSaw = [];
  bob.on("group-message", (e) => bobSaw.push(e.message.data));
  await Promise.race([bob.start(), timeout(5000, "bob start")]);

  // --- the seed quickstart ---
  const client = new WebPubSubClient(await negotiate("alice"), protocol ? { protocol } : {});
  const connected = new Promise((res) => client.on("connected", (e) => { console.error(`Connection ${e.connectionId} is connected.`); res(e); }));
  const serverMessages = [];
  client.on("server-message", (e) => serverMessages.push(e.message.data));
  await Promise.race([client.start(), timeout(5000, "start")]);
  const c = await Promise.race([connected, timeout(5000, "connected event")]);
  out.connectionId = c.connectionId;
  out.userId = c.userId;
  const ack = await Promise.race([client.sendEvent("message", "sending custom event!", "text"), timeout(5000, "sendEvent ack")]);
  out.ack = ack;
  // --- end of the seed ---

  const deadline = Date.now() + 5000;
  while (Date.now() < deadline && !(bobSaw.some((m) => m && m.type === "message") && serverMessages.length > 0)) {
    await new Promise((r) => setTimeout(r, 25));
  }
  out.bobSaw = bobSaw;
  out.serverMessages = serverMessages;
  const stopped = new Promise((res) => client.on("stopped", res));
  client.stop();
  await Promise.race([stopped, timeout(5000, "stop")]);
  bob.stop();
  console.log(JSON.stringify(out));
}
main().then(() => process.exit(0), (e) => { console.error(String(e && e.stack || e)); process.exit(1); });
