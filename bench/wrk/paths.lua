-- wrk script for bench/compare.py: one request per line of a precomputed list of paths.
--
--   wrk -t T -c C -d D -s bench/wrk/paths.lua URL -- LIST METHOD BODY_BYTES THREADS MODE
--
-- LIST        file with one request target per line ("/upload/dir/name?v=mac" or "/upload/x")
-- METHOD      PUT or GET
-- BODY_BYTES  size of the request body (PUT), 0 for none
-- THREADS     the -t value: thread k takes lines k, k+T, k+2T, ... so no path is used twice
-- MODE        "once": each line at most once (PUTs need a fresh path). When a thread has used
--             all of its lines it stops; the few requests already asked of it then go to
--             EXHAUSTED_PATH (a 404, counted and subtracted by compare.py).
--             "cycle": walk the list round and round (GETs of files uploaded beforehand).
--
-- done() prints one line "WRK_RESULT {json}" with the counts, the error classes and the
-- latency distribution (microseconds) that compare.py reads.

local EXHAUSTED_PATH = "/upload/.wrk-list-exhausted"

local threads = {}
local thread_count = 0

function setup(thread)
   thread:set("thread_index", thread_count)
   thread_count = thread_count + 1
   table.insert(threads, thread)
end

function init(args)
   local list_file, method = args[1], args[2]
   local body_bytes, nthreads = tonumber(args[3]), tonumber(args[4])
   cycle = args[5] == "cycle"
   paths = {}
   local n = 0
   for line in io.lines(list_file) do
      if line ~= "" then
         if n % nthreads == thread_index then
            paths[#paths + 1] = line
         end
         n = n + 1
      end
   end
   local body = nil
   if body_bytes > 0 then
      body = string.rep("b", body_bytes)
   end
   -- Small requests are built once here, so the client spends its time sending them;
   -- large ones (a 1 MiB body per line would not fit in memory) are built per request.
   request_method, request_body = method, body
   prebuilt = nil
   if body_bytes * #paths <= 256 * 1024 * 1024 then
      prebuilt = {}
      for i, path in ipairs(paths) do
         prebuilt[i] = wrk.format(method, path, nil, body)
      end
   end
   exhausted_request = wrk.format("GET", EXHAUSTED_PATH)
   next_index = 1
   issued = 0
   exhausted = 0
end

function request()
   if next_index > #paths then
      if cycle and #paths > 0 then
         next_index = 1
      else
         exhausted = exhausted + 1
         wrk.thread:stop()
         return exhausted_request
      end
   end
   local i = next_index
   next_index = i + 1
   issued = issued + 1
   if prebuilt then
      return prebuilt[i]
   end
   return wrk.format(request_method, paths[i], nil, request_body)
end

function done(summary, latency, requests)
   local issued_total, exhausted_total, lines_total = 0, 0, 0
   for _, thread in ipairs(threads) do
      issued_total = issued_total + (thread:get("issued") or 0)
      exhausted_total = exhausted_total + (thread:get("exhausted") or 0)
   end
   local e = summary.errors
   local parts = {
      string.format('"duration_us": %d', summary.duration),
      string.format('"requests": %d', summary.requests),
      string.format('"bytes": %d', summary.bytes),
      string.format('"errors_connect": %d', e.connect),
      string.format('"errors_read": %d', e.read),
      string.format('"errors_write": %d', e.write),
      string.format('"errors_status": %d', e.status),
      string.format('"errors_timeout": %d', e.timeout),
      string.format('"issued": %d', issued_total),
      string.format('"exhausted": %d', exhausted_total),
      string.format('"latency_min_us": %d', latency.min),
      string.format('"latency_max_us": %d', latency.max),
      string.format('"latency_mean_us": %.1f', latency.mean),
      string.format('"latency_stdev_us": %.1f', latency.stdev),
   }
   for _, p in ipairs({50, 90, 99, 99.9}) do
      parts[#parts + 1] = string.format('"p%s_us": %d', tostring(p), latency:percentile(p))
   end
   io.write("WRK_RESULT {" .. table.concat(parts, ", ") .. "}\n")
end
