-- Shared by wrk-w1.lua and wrk-w2.lua (loaded with dofile from $BENCH_DIR): the signed webhook
-- both workloads send, as the service sends a `message` user event, and the JSON report.
--
-- The signature is over the connection id only (ce-signature = sha256=hex(HMAC-SHA256(access key,
-- connection id))), so with a fixed connection id bench/run.py precomputes it once and passes it
-- in $BENCH_SIGNATURE. Other inputs: $BENCH_CONNECTION_ID, $BENCH_STATE (base64 connection state),
-- $BENCH_TEXT, $BENCH_PATH, $BENCH_HUB.
local M = {}

local function env(name, default)
  local v = os.getenv(name)
  if v == nil or v == "" then
    if default == nil then error("wrk script: $" .. name .. " is required") end
    return default
  end
  return v
end
M.env = env

M.hub = env("BENCH_HUB", "chat")
M.path = env("BENCH_PATH", "/eventhandler")
M.connection_id = env("BENCH_CONNECTION_ID", "bench-conn-0")
M.body = env("BENCH_TEXT", "hello from wrk")
M.fixed_time = "2024-05-01T10:00:00Z"

-- Header order as the service sends them; ce-time and ce-id are added per workload.
M.headers = {
  { "Content-Type", "text/plain" },
  { "ce-specversion", "1.0" },
  { "ce-awpsversion", "1.0" },
  { "ce-type", "azure.webpubsub.user.message" },
  { "ce-source", "/hubs/" .. M.hub .. "/client/" .. M.connection_id },
  { "ce-signature", env("BENCH_SIGNATURE") },
  { "ce-userId", env("BENCH_USER", "bench-user") },
  { "ce-connectionId", M.connection_id },
  { "ce-hub", M.hub },
  { "ce-eventName", "message" },
  { "ce-connectionState", env("BENCH_STATE", "eyJyb29tIjoibG9iYnkifQ==") },
  { "WebHook-Request-Origin", env("BENCH_ORIGIN", "127.0.0.1") },
}

-- One line on stdout, `BENCH_JSON {...}`, that bench/run.py parses. Times in microseconds.
function M.report(summary, latency, extra)
  local e = summary.errors
  local fields = {
    { "duration_us", summary.duration },
    { "requests", summary.requests },
    { "bytes", summary.bytes },
    { "err_connect", e.connect },
    { "err_read", e.read },
    { "err_write", e.write },
    { "err_status", e.status },
    { "err_timeout", e.timeout },
    { "lat_mean_us", latency.mean },
    { "lat_max_us", latency.max },
    { "lat_p50_us", latency:percentile(50) },
    { "lat_p90_us", latency:percentile(90) },
    { "lat_p99_us", latency:percentile(99) },
    { "lat_p999_us", latency:percentile(99.9) },
  }
  for _, kv in ipairs(extra or {}) do fields[#fields + 1] = kv end
  local parts = {}
  for _, kv in ipairs(fields) do
    parts[#parts + 1] = string.format('"%s":%.17g', kv[1], kv[2])
  end
  io.write("BENCH_JSON {" .. table.concat(parts, ",") .. "}\n")
end

return M
