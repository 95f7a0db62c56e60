-- raise_horizon.lua: raise a horizon key to ARGV[1], never lower it.
--
-- KEYS[1] the horizon key
-- ARGV[1] the new horizon (Unix ms)
--
-- One key, so it is legal on a Redis Cluster whatever slot the key is in; a
-- stale or late writer can only ever make the next taker wait longer.

if tonumber(ARGV[1]) > tonumber(redis.call('GET', KEYS[1]) or '0') then
  redis.call('SET', KEYS[1], ARGV[1])
end
return 1
