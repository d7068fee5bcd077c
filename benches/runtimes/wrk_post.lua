-- wrk script for benches/torch_compare.sh: POSTs the JSON file named by $WRK_BODY (the same
-- bytes on every request, keep-alive connections) and prints one machine-readable line:
--   WRK_RESULT {"requests": …, "duration_us": …, "errors": …, "status_errors": …,
--               "p50_us": …, "p90_us": …, "p99_us": …, "mean_us": …, "max_us": …}
-- wrk's own report (with --latency) is printed above it. The body is set once, so wrk sends
-- requests from C without calling into Lua per request.
local path = os.getenv("WRK_BODY")
assert(path, "set WRK_BODY to the request body's file")
local f = assert(io.open(path, "rb"))
wrk.method = "POST"
wrk.body = f:read("*a")
f:close()
wrk.headers["Content-Type"] = "application/json"

function done(summary, latency, requests)
    local e = summary.errors
    io.write(string.format(
        'WRK_RESULT {"requests": %d, "duration_us": %d, "errors": %d, "status_errors": %d, ' ..
        '"p50_us": %.0f, "p90_us": %.0f, "p99_us": %.0f, "mean_us": %.2f, "max_us": %.0f}\n',
        summary.requests, summary.duration, e.connect + e.read + e.write + e.status + e.timeout, e.status,
        latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.mean, latency.max))
end
