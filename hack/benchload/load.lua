-- wrk script of hack/benchload. BENCHLOAD_MODE says what to send:
--   authorize    GET /authorize, rotating through the keys of BENCHLOAD_KEYS
--   tokenreview  POST /tokenreview, a TokenReview for each key in turn
--   wrongkey     GET /authorize with keys nobody minted, counting statuses
-- BENCHLOAD_KEYS names a file of raw keys, one a line: keys are never on a
-- command line. done() prints one line, BENCHLOAD {json}, for the program.

local mode = os.getenv("BENCHLOAD_MODE") or "authorize"
local requests = {}
local next = 0
local threads = {}

-- Read by done() through thread:get, so it must be a global.
statuses = {}

function setup(thread)
  table.insert(threads, thread)
end

function init(args)
  local f = assert(io.open(os.getenv("BENCHLOAD_KEYS"), "r"))
  for key in f:lines() do
    if key ~= "" then
      if mode == "tokenreview" then
        local body = '{"apiVersion":"authentication.k8s.io/v1","kind":"TokenReview",' ..
          '"spec":{"token":"' .. key .. '","audiences":["latchkey.dev"]}}'
        table.insert(requests, wrk.format("POST", "/tokenreview", {["Content-Type"] = "application/json"}, body))
      else
        table.insert(requests, wrk.format("GET", "/authorize", {["Authorization"] = "Bearer " .. key}))
      end
    end
  end
  f:close()
end

function request()
  next = next % #requests + 1
  return requests[next]
end

-- Only the wrong-key load counts statuses: a response hook makes wrk parse
-- every response, which would slow the valid loads' client.
if mode == "wrongkey" then
  function response(status, headers, body)
    statuses[status] = (statuses[status] or 0) + 1
  end
end

function done(summary, latency, requests)
  local mix = {}
  for _, t in ipairs(threads) do
    for status, n in pairs(t:get("statuses") or {}) do
      mix[status] = (mix[status] or 0) + n
    end
  end
  local parts = {}
  for status, n in pairs(mix) do
    table.insert(parts, string.format('"%d":%d', status, n))
  end
  local e = summary.errors
  io.write(string.format(
    'BENCHLOAD {"requests":%d,"duration_us":%d,"p50_us":%d,"p99_us":%d,' ..
    '"errors":{"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d},"statuses":{%s}}\n',
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(99),
    e.connect, e.read, e.write, e.status, e.timeout, table.concat(parts, ",")))
end
