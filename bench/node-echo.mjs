// W1 peer: the official @azure/web-pubsub-express handler in an express app that echoes every
// user event back to the sender -- the shape of Microsoft's quickstart. Like the quickstart it
// does NOT verify ce-signature (the package has no such option); hubhook's echo example does.
//
// Env (same names as hubhook): PORT (8080), HUBHOOK_BIND (127.0.0.1), WEBPUBSUB_HUB (chat),
// HUBHOOK_EVENT_PATH (/eventhandler).
import express from "express";
import { WebPubSubEventHandler } from "@azure/web-pubsub-express";

const hub = process.env.WEBPUBSUB_HUB ?? "chat";
const port = Number(process.env.PORT ?? 8080);
const bind = process.env.HUBHOOK_BIND ?? "127.0.0.1";
const path = process.env.HUBHOOK_EVENT_PATH ?? "/eventhandler";

const handler = new WebPubSubEventHandler(hub, {
  path,
  handleConnect: (req, res) => res.success(),
  handleUserEvent: (req, res) => {
    // res.success sends strings and Buffers as they are; a JSON payload is serialised back.
    const data = req.dataType === "json" ? JSON.stringify(req.data) : req.data;
    res.success(data, req.dataType);
  },
});

const app = express();
app.use(handler.getMiddleware());
app.listen(port, bind, () => {
  console.error(`node-echo listening on http://${bind}:${port}${path}`);
});
