-- release_with_horizon.lua: give a worker number back on a clean stop.
--
-- KEYS[1] the lease key    KEYS[2] the number's horizon key
-- ARGV[1] our token    ARGV[2] the last millisecond we minted in (Unix ms)
--
-- Lowers the horizon from "renewal + TTL" to what was really used, so the
-- next holder waits only the skew margin. Safe: this holder waited past the
-- previous horizon before minting, so the value is at or above it.
-- Returns 1 if released, 0 if the lease was no longer ours (nothing changed).

if redis.call('GET', KEYS[1]) ~= ARGV[1] then
  return 0
end
redis.call('SET', KEYS[2], ARGV[2])
redis.call('DEL', KEYS[1])
return 1
