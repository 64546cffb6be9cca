// The seed quickstart, unchanged, against the emulator + chat function (`hubhook dev`), plus a
// second client in the same room that must see the join notice and the message broadcast.
// env: FN (function base URL, e.g. http://127.0.0.1:8081), PROTOCOL (json | reliable, default
// reliable: the client's default), CLIENT_URL (optional: the quickstart client uses this client
// access URL verbatim, as the seed does with the one `hubhook dev` prints; default: negotiate as
// alice). Prints one JSON line with what happened.
import { WebPubSubClient, WebPubSubJsonProtocol } from "@azure/web-pubsub-client";
import { run, step, until, within } from "./e2e-lib.mjs";

const FN = process.env.FN;
const options = process.env.PROTOCOL === "json" ? { protocol: WebPubSubJsonProtocol() } : {};
const negotiate = async (user) => {
  const res = await fetch(`${FN}/negotiate?userId=${user}&room=lobby`);
  if (!res.ok) throw new Error(`negotiate ${user}: ${res.status} ${await res.text()}`);
  return (await res.json()).url;
};

run(async () => {
  const out = {};
  step("bob starts (second client in the room)");
  const bob = new WebPubSubClient({ getClientAccessUrl: () => negotiate("bob") }, options);
  const bobSaw = [];
  bob.on("group-message", (e) => bobSaw.push(e.message.data));
  await within(bob.start(), 5000, "bob start");

  // --- the seed quickstart, as written ---
  step("quickstart: alice connects");
  const client = new WebPubSubClient(process.env.CLIENT_URL || (await negotiate("alice")), options);
  const connected = new Promise((resolve) =>
    client.on("connected", (e) => {
      console.error(`Connection ${e.connectionId} is connected.`);
      resolve(e);
    }),
  );
  const serverMessages = [];
  client.on("server-message", (e) => serverMessages.push(e.message.data));
  await within(client.start(), 5000, "client.start()");
  const c = await within(connected, 5000, "connected event");
  out.connectionId = c.connectionId;
  out.userId = c.userId;
  step("quickstart: sendEvent");
  out.ack = await within(client.sendEvent("message", "sending custom event!", "text"), 5000, "sendEvent ack");
  // --- end of the seed ---

  step("bob sees the join notice and the broadcast; alice gets the stored reply");
  await until(
    () =>
      bobSaw.some((m) => m && m.type === "joined" && m.connectionId === c.connectionId) &&
      bobSaw.some((m) => m && m.type === "message" && m.from === c.userId && m.text === "sending custom event!") &&
      serverMessages.length > 0,
    5000,
    "bob's join notice + broadcast and alice's server message",
  );
  out.bobSaw = bobSaw;
  out.serverMessages = serverMessages;

  step("stop");
  const stopped = new Promise((r) => client.on("stopped", r));
  const t0 = Date.now();
  client.stop();
  await within(stopped, 5000, "alice stopped");
  out.stopMs = Date.now() - t0;
  const bobStopped = new Promise((r) => bob.on("stopped", r));
  bob.stop();
  await within(bobStopped, 5000, "bob stopped");
  return out;
}, 30000);
