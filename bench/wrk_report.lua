-- wrk script for the wsrelay benchmark: optional POST body, and a one-line JSON summary.
--   WRK_POST_BYTES=1048576 wrk -s wrk_report.lua ...   sends POST requests with that many bytes
-- The summary line starts with "WRKJSON " (bench.py parses it).
local post = tonumber(os.getenv("WRK_POST_BYTES") or "0") or 0
if post > 0 then
  wrk.method = "POST"
  wrk.body = string.rep("x", post)
  wrk.headers["Content-Type"] = "application/octet-stream"
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'WRKJSON {"requests":%d,"duration_us":%d,"bytes":%d,"connect_err":%d,"read_err":%d,' ..
    '"write_err":%d,"status_err":%d,"timeout_err":%d,"p50_us":%d,"p99_us":%d,"max_us":%d}\n',
    summary.requests, summary.duration, summary.bytes, e.connect, e.read, e.write, e.status,
    e.timeout, latency:percentile(50), latency:percentile(99), latency.max))
end
