-- reference.lua: the issue's reference purchase (examples/reference.rs), one
-- GET and one DECR; bench/redis/floor.sh prices it beside purchase.lua.
local s = tonumber(redis.call('GET', KEYS[1]) or '0')
if s > 0 then
  return redis.call('DECR', KEYS[1])
end
return -1
