-- wrk script: "append a visit and predict" against medchange.
-- Each request appends one visit to a random patient of the group. Env:
--   BENCH_PATIENTS  file with one patient id per line
--   BENCH_BODIES    file with one JSON visit body per line
--   BENCH_KEY       API key
--   BENCH_QUERY     query string, e.g. "?replay=true" (default none)
--   BENCH_RATE      target requests/s over all connections (0: as fast as possible)
--   BENCH_CONNS     connections (to spread the rate)
local function lines(path)
  local t = {}
  for l in io.lines(path) do if #l > 0 then t[#t + 1] = l end end
  return t
end

local patients, bodies, query, key
local delay_ms = 0
counts = { n = 0, model = 0, db = 0, total = 0, bad = 0 }  -- global: read by done() through thread:get
local threads = {}

function setup(thread)
  table.insert(threads, thread)
end

function init(args)
  patients = lines(os.getenv("BENCH_PATIENTS"))
  bodies = lines(os.getenv("BENCH_BODIES"))
  query = os.getenv("BENCH_QUERY") or ""
  key = os.getenv("BENCH_KEY")
  local rate = tonumber(os.getenv("BENCH_RATE") or "0")
  local conns = tonumber(os.getenv("BENCH_CONNS") or "1")
  if rate > 0 then delay_ms = 1000 * conns / rate end
  math.randomseed(os.time() + tonumber(tostring({}):sub(8), 16) % 100000)
  wrk.method = "POST"
  wrk.headers["Content-Type"] = "application/json"
  wrk.headers["Authorization"] = "Bearer " .. key
end

function delay()
  if delay_ms == 0 then return 0 end
  -- Poisson-ish arrivals around the target rate.
  return math.floor(-math.log(1 - math.random()) * delay_ms)
end

function request()
  local p = patients[math.random(#patients)]
  local b = bodies[math.random(#bodies)]
  return wrk.format(nil, "/v1/patients/" .. p .. "/visits" .. query, nil, b)
end

function response(status, headers, body)
  if status ~= 201 then counts.bad = counts.bad + 1; return end
  local m = body:match('"model_us":(%d+)')
  if m then
    counts.n = counts.n + 1
    counts.model = counts.model + tonumber(m)
    counts.db = counts.db + tonumber(body:match('"database_us":(%d+)'))
    counts.total = counts.total + tonumber(body:match('"total_us":(%d+)'))
  end
end

function done(summary, latency, requests)
  local n, model, db, total, bad = 0, 0, 0, 0, 0
  for _, t in ipairs(threads) do
    local c = t:get("counts")
    n = n + c.n; model = model + c.model; db = db + c.db; total = total + c.total; bad = bad + c.bad
  end
  n = math.max(n, 1)
  io.write(string.format(
    "RESULT requests=%d errors=%d non201=%d rps=%.1f p50_ms=%.2f p90_ms=%.2f p99_ms=%.2f max_ms=%.2f model_us=%.0f db_us=%.0f server_us=%.0f\n",
    summary.requests, summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout,
    bad, summary.requests / (summary.duration / 1e6),
    latency:percentile(50) / 1000, latency:percentile(90) / 1000, latency:percentile(99) / 1000, latency.max / 1000,
    model / n, db / n, total / n))
end
