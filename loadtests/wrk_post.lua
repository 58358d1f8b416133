-- wrk script: POST one fixed body (read from a file) and print a JSON summary line.
-- usage: wrk -t1 -c32 -d10s --latency -s wrk_post.lua URL -- BODY_FILE CONTENT_TYPE
local body, content_type

init = function(args)
  local f = assert(io.open(args[1], "rb"))
  body = f:read("*all")
  f:close()
  content_type = args[2]
end

request = function()
  return wrk.format("POST", nil, { ["Content-Type"] = content_type }, body)
end

done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'WRK_JSON {"requests": %d, "duration_us": %d, "socket_errors": %d, "non_2xx": %d, ' ..
    '"p50_us": %d, "p90_us": %d, "p99_us": %d, "mean_us": %.1f}\n',
    summary.requests, summary.duration, e.connect + e.read + e.write + e.timeout, e.status,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.mean))
end
