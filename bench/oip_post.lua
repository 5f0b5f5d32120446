-- wrk script for bench/bench_oip.py: POST the JSON body read from the file named by
-- $OIP_BODY_FILE (the same bytes for every server), and print one machine-readable
-- summary line at the end (latencies in microseconds, from wrk's own histogram).
--
--   OIP_BODY_FILE=body.json wrk -t1 -c16 -d8s -s bench/oip_post.lua http://127.0.0.1:PORT/v2/models/NAME/infer

local path = os.getenv("OIP_BODY_FILE")
local file = assert(io.open(path, "r"), "cannot read $OIP_BODY_FILE: " .. tostring(path))
wrk.method = "POST"
wrk.body = file:read("*a")
file:close()
wrk.headers["Content-Type"] = "application/json"

done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    "OIPBENCH requests=%d duration_us=%d status_errors=%d socket_errors=%d p50_us=%d p90_us=%d p99_us=%d max_us=%d\n",
    summary.requests, summary.duration, e.status, e.connect + e.read + e.write + e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max))
end
