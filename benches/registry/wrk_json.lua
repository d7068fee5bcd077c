-- wrk script shared by every endpoint of benches/registry_bench.sh.
-- Env: WRK_METHOD (GET|POST, default GET), WRK_BODY (JSON body for POST).
-- Prints one JSON line (prefixed "WRKJSON ") with the summary, so the driver never parses
-- wrk's human-readable output.
local method = os.getenv("WRK_METHOD") or "GET"
local body = os.getenv("WRK_BODY")
wrk.method = method
if body and #body > 0 then
  wrk.body = body
  wrk.headers["Content-Type"] = "application/json"
end

done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'WRKJSON {"requests":%d,"duration_us":%d,"bytes":%d,' ..
    '"err_connect":%d,"err_read":%d,"err_write":%d,"err_status":%d,"err_timeout":%d,' ..
    '"lat_mean_us":%.1f,"lat_stdev_us":%.1f,"lat_p50_us":%d,"lat_p90_us":%d,' ..
    '"lat_p99_us":%d,"lat_max_us":%d}\n',
    summary.requests, summary.duration, summary.bytes,
    e.connect, e.read, e.write, e.status, e.timeout,
    latency.mean, latency.stdev, latency:percentile(50), latency:percentile(90),
    latency:percentile(99), latency.max))
end
