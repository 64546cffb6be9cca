-- W1: the same signed `message` webhook (text/plain) on every request; the handler echoes it.
-- Static request (no per-request Lua), so the load generator costs as little as it can.
local common = dofile((os.getenv("BENCH_DIR") or "bench") .. "/wrk-common.lua")

wrk.method = "POST"
wrk.path = common.path
wrk.body = common.body
for _, h in ipairs(common.headers) do
  wrk.headers[h[1]] = h[2]
end
wrk.headers["ce-time"] = common.fixed_time
wrk.headers["ce-id"] = "w1-fixed-event"

function done(summary, latency, requests)
  common.report(summary, latency, nil)
end
