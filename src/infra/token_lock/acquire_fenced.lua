-- acquire_fenced.lua: take the `lock` strategy's lock and a fencing token.
--
-- KEYS[1] the lock key
-- KEYS[2] the item's fence counter
-- ARGV[1] the taker's random token
-- ARGV[2] lock TTL in milliseconds
--
-- Returns the fencing token (each holder gets a larger number than every
-- holder before it) if the lock was free, or false if someone holds it.

if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then
  return redis.call('INCR', KEYS[2])
end
return false
