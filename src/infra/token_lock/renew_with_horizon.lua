-- renew_with_horizon.lua: extend a worker lease we still hold, and raise its horizon.
--
-- KEYS[1] the lease key    KEYS[2] the number's horizon key
-- ARGV[1] our token    ARGV[2] lease TTL in milliseconds
-- ARGV[3] the new horizon: Unix ms past which we will mint nothing until the
--         next renewal (the start of this renewal plus the TTL)
--
-- Returns 1 if extended, 0 if the lease is gone or someone else's.
-- The horizon key has no TTL: it outlives the lease on purpose, so whoever
-- takes the number next knows how far ids were minted with it.

if redis.call('GET', KEYS[1]) ~= ARGV[1] then
  return 0
end
redis.call('PEXPIRE', KEYS[1], ARGV[2])
if tonumber(ARGV[3]) > tonumber(redis.call('GET', KEYS[2]) or '0') then
  redis.call('SET', KEYS[2], ARGV[3])
end
return 1
