-- take_with_horizon.lua: take a snowflake worker number if it is free, and read how
-- far its previous holders may have minted.
--
-- KEYS[1] the lease key    KEYS[2] the number's horizon key
-- ARGV[1] the taker's random token
-- ARGV[2] TTL in milliseconds: long enough for the taker's wait past the horizon
--
-- Returns the horizon (Unix ms; 0 when the number was never used) if the
-- number is now ours, -1 if it is ours but its horizon key is missing (lost
-- with Redis's data, or a Redis never seeded: how far it was used is unknown),
-- false if someone holds it. One script, so the horizon read is the one left
-- by the last holder before us, never an older one.

if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then
  local horizon = redis.call('GET', KEYS[2])
  if horizon then
    return tonumber(horizon)
  end
  return -1
end
return false
