-- W2: the full chat path. Every request is a NEW message: its ce-id is unique across the whole
-- bench run ($BENCH_RUN_TAG, the wrk thread number and a per-thread counter), so the handler
-- stores and broadcasts each one (a repeated ce-id would be deduplicated). ce-time is the current
-- second, as the service sends it, so message ids (time first) arrive in time order as in real
-- traffic.
--
-- Per thread it counts requests sent, responses, 2xx answers, and writes the message id of every
-- 2xx answer ({"type":"stored","id":"..."}) to $BENCH_ACK_DIR/acked-<tag>-<thread>.txt, so the
-- run can check afterwards that every acknowledged message is in the store.
local common = dofile((os.getenv("BENCH_DIR") or "bench") .. "/wrk-common.lua")

local run_tag = common.env("BENCH_RUN_TAG")
local ack_dir = common.env("BENCH_ACK_DIR")
local threads = {}

function setup(thread)
  threads[#threads + 1] = thread
  thread:set("tid", #threads)
end

function init(args)
  sent, responses, ok, noid = 0, 0, 0, 0
  local lines = { "POST " .. common.path .. " HTTP/1.1", "Host: " .. wrk.host .. ":" .. tostring(wrk.port) }
  for _, h in ipairs(common.headers) do
    lines[#lines + 1] = h[1] .. ": " .. h[2]
  end
  lines[#lines + 1] = "Content-Length: " .. #common.body
  prefix = table.concat(lines, "\r\n") .. "\r\nce-time: "
  id_prefix = "\r\nce-id: " .. run_tag .. "-" .. tid .. "-"
  last_second, time_text = -1, ""
  suffix = "\r\n\r\n" .. common.body
  ackfile = assert(io.open(ack_dir .. "/acked-" .. run_tag .. "-" .. tid .. ".txt", "w"))
end

function request()
  sent = sent + 1
  local now = os.time()
  if now ~= last_second then
    last_second, time_text = now, os.date("!%Y-%m-%dT%H:%M:%SZ", now)
  end
  return prefix .. time_text .. id_prefix .. sent .. suffix
end

function response(status, headers, body)
  responses = responses + 1
  if status >= 200 and status < 300 then
    ok = ok + 1
    local id = body and string.match(body, '"id":"([^"]+)"')
    if id then
      ackfile:write(id, "\n")
    else
      noid = noid + 1
    end
  end
end

function done(summary, latency, requests)
  local s = { sent = 0, responses = 0, ok = 0, noid = 0 }
  for _, t in ipairs(threads) do
    for k, _ in pairs(s) do
      s[k] = s[k] + (t:get(k) or 0)
    end
  end
  common.report(summary, latency, {
    { "sent", s.sent }, { "responses", s.responses }, { "ok", s.ok }, { "ok_without_id", s.noid },
  })
end
