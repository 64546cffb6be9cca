// stdin: one JSON object, or a JSON array of them (then the output is an array, still one line).
//
// kind "client" (the default):
//   {"connectionString","hub","userId"?,"roles"?,"groups"?,"expirationTimeInMinutes"?,
//    "clientProtocol"? ("default" | "mqtt" | "socketio")}
//   → new WebPubSubServiceClient(connectionString, hub).getClientAccessToken({...}), decoded:
//   {token, url, baseUrl, header, claims, claimOrder}
//
// kind "rest": {"kind":"rest","connectionString","url","method"?}
//   → the bearer token @azure/web-pubsub puts on a REST request to `url` (its internal
//   webPubSubKeyCredentialPolicy, run on a request for exactly that URL; nothing is sent):
//   {token, authorization, header, claims, claimOrder}
import { WebPubSubServiceClient } from "@azure/web-pubsub";
import { decodeJwt, readStdin, run } from "./lib.mjs";

// Neither module is exported by the package (its "exports" map has only "."), so they are loaded
// by file URL next to the package's entry point: this is the SDK's own code, not a copy.
const sdkDir = new URL(".", import.meta.resolve("@azure/web-pubsub"));
const { webPubSubKeyCredentialPolicy } = await import(new URL("webPubSubCredentialPolicy.js", sdkDir));
const { parseConnectionString } = await import(new URL("parseConnectionString.js", sdkDir));

async function client(input) {
  const c = new WebPubSubServiceClient(input.connectionString, input.hub);
  const options = {};
  for (const k of ["userId", "roles", "groups", "expirationTimeInMinutes", "clientProtocol"]) {
    if (input[k] !== undefined) options[k] = input[k];
  }
  const { token, url, baseUrl } = await c.getClientAccessToken(options);
  const { header, claims, claimOrder } = decodeJwt(token);
  return { token, url, baseUrl, header, claims, claimOrder };
}

async function rest(input) {
  const { credential } = parseConnectionString(input.connectionString);
  const policy = webPubSubKeyCredentialPolicy(credential);
  // The policy reads request.url and sets the Authorization header; a Map stands in for the
  // pipeline's HttpHeaders (get/set), so no transitive package is imported here.
  const request = { url: input.url, method: input.method ?? "POST", headers: new Map() };
  let authorization;
  await policy.sendRequest(request, async (req) => {
    authorization = req.headers.get("Authorization");
    return { request: req, status: 200, headers: new Map() };
  });
  const token = authorization.replace(/^Bearer /, "");
  const { header, claims, claimOrder } = decodeJwt(token);
  return { token, authorization, header, claims, claimOrder };
}

function one(input) {
  const kind = input.kind ?? "client";
  if (kind === "client") return client(input);
  if (kind === "rest") return rest(input);
  throw new Error(`unknown kind ${JSON.stringify(kind)} (expected "client" or "rest")`);
}

run(async () => {
  const input = JSON.parse(await readStdin());
  if (!Array.isArray(input)) return one(input);
  const out = [];
  for (const i of input) out.push(await one(i));
  return out;
});
