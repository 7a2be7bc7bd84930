-- wrk script: "append a visit and predict" against medchange.
-- Each request appends one visit to a random patient of the group. Env:
--   BENCH_PATIENTS  file with one patient id per line
--   BENCH_BODIES    file with one JSON visit body per line
--   BENCH_KEY       API key
--   BENCH_QUERY     query string, e.g. "?replay=true" (default none)
--   BENCH_RATE      target requests/s over all threads (0: as fast as possible)
--   BENCH_THREADS   wrk threads (each offers BENCH_RATE / BENCH_THREADS)
-- With a rate, each thread schedules Poisson arrivals on a clock (open
-- loop): a request is sent at its scheduled time, or at once when the
-- thread is behind, so the offered load does not drop when latency grows.
local function lines(path)
  local t = {}
  for l in io.lines(path) do if #l > 0 then t[#t + 1] = l end end
  return t
end

local ffi = require("ffi")
ffi.cdef[[
  typedef struct { long tv_sec; long tv_nsec; } medchange_timespec;
  int clock_gettime(int clk_id, medchange_timespec *tp);
]]
local ts = ffi.new("medchange_timespec")
local function now_ms()
  ffi.C.clock_gettime(1, ts) -- CLOCK_MONOTONIC
  return tonumber(ts.tv_sec) * 1000 + tonumber(ts.tv_nsec) / 1e6
end

local patients, bodies, query, key
local gap_ms = 0      -- mean time between arrivals of this thread
local next_ms = nil   -- when this thread's next request is due
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
  local threads_n = tonumber(os.getenv("BENCH_THREADS") or "1")
  if rate > 0 then gap_ms = 1000 * threads_n / rate end
  math.randomseed(os.time() + tonumber(tostring({}):sub(8), 16) % 100000)
  wrk.method = "POST"
  wrk.headers["Content-Type"] = "application/json"
  wrk.headers["Authorization"] = "Bearer " .. key
end

function delay()
  if gap_ms == 0 then return 0 end
  local now = now_ms()
  if next_ms == nil then next_ms = now end
  next_ms = next_ms + -math.log(1 - math.random()) * gap_ms
  local wait = next_ms - now
  if wait <= 0 then return 0 end
  return math.floor(wait)
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
