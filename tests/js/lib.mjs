// Helpers shared by the compat scripts (tokens.mjs, rest-capture.mjs, express-parse.mjs).

/** Reads all of stdin as UTF-8 text. */
export async function readStdin() {
  const chunks = [];
  for await (const c of process.stdin) chunks.push(c);
  return Buffer.concat(chunks).toString("utf8");
}

/** Decodes a JWT without verifying it: header, payload and the payload's key order. */
export function decodeJwt(token) {
  const [h, p] = token.split(".");
  const part = (s) => JSON.parse(Buffer.from(s, "base64url").toString("utf8"));
  const claims = part(p);
  return { header: part(h), claims, claimOrder: Object.keys(claims) };
}

/** Prints exactly one JSON line and exits (the SDK may keep sockets alive otherwise). */
export function emit(value, code = 0) {
  process.stdout.write(JSON.stringify(value) + "\n", () => process.exit(code));
}

/** Runs `main`; on failure prints {"error": ...} as the one line and exits 1. */
export function run(main) {
  main().then(
    (v) => emit(v),
    (e) => emit({ error: String(e && e.stack ? e.stack : e) }, 1),
  );
}
