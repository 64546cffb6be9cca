// stdin: {"connectionString","hub","userId"?,"roles"?,"groups"?,"expirationTimeInMinutes"?}
//        (or a JSON array of such objects: then the output is an array, still one line)
// stdout (one JSON line): what @azure/web-pubsub's getClientAccessToken returns, decoded:
//   {token, url, baseUrl, header, claims, claimOrder}
import { WebPubSubServiceClient } from "@azure/web-pubsub";
import { decodeJwt, readStdin, run } from "./lib.mjs";

async function one(input) {
  const client = new WebPubSubServiceClient(input.connectionString, input.hub);
  const options = {};
  for (const k of ["userId", "roles", "groups", "expirationTimeInMinutes"]) {
    if (input[k] !== undefined) options[k] = input[k];
  }
  const { token, url, baseUrl } = await client.getClientAccessToken(options);
  const { header, claims, claimOrder } = decodeJwt(token);
  return { token, url, baseUrl, header, claims, claimOrder };
}

run(async () => {
  const input = JSON.parse(await readStdin());
  if (!Array.isArray(input)) return one(input);
  const out = [];
  for (const i of input) out.push(await one(i));
  return out;
});
