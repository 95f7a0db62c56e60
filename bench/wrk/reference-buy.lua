-- wrk -t2 -c64 -d10s -s bench/wrk/reference-buy.lua http://127.0.0.1:18081 (examples/reference.rs)
request = function() return wrk.format("POST", "/buy") end
