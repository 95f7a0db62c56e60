-- bench/wrk/purchase-new-buyers.lua: wrk script for the purchase endpoint.
--
-- Sends POST with a distinct user_id on every request (so the per-user limit
-- never hides the strategy's cost), appended to the URL's query string, and
-- prints the count of each HTTP status at the end.
--
--   wrk -t2 -c64 -d10s -s bench/wrk/purchase-new-buyers.lua \
--       "http://127.0.0.1:8080/api/items/ITEM/purchase?strategy=lua"
--
-- The per-response callback costs wrk a little CPU; compare like with like.

local threads = {}

function setup(thread)
  thread:set("id", #threads)
  table.insert(threads, thread)
end

function init(args)
  statuses = {}
  counter = 0
  -- Unique across threads and across runs against the same item.
  prefix = "wrk" .. id .. "x" .. math.random(1, 1000000000) .. "x"
  separator = wrk.path:find("?", 1, true) and "&" or "?"
end

function request()
  counter = counter + 1
  return wrk.format("POST", wrk.path .. separator .. "user_id=" .. prefix .. counter)
end

function response(status, headers, body)
  statuses[status] = (statuses[status] or 0) + 1
end

function done(summary, latency, requests)
  local totals = {}
  for _, thread in ipairs(threads) do
    for status, n in pairs(thread:get("statuses")) do
      totals[status] = (totals[status] or 0) + n
    end
  end
  io.write("status counts:\n")
  for status, n in pairs(totals) do
    io.write(string.format("  %d: %d\n", status, n))
  end
end
