-- unlock.lua: release a token lock only if we still own it (compare-and-delete).
--
-- KEYS[1] the lock key
-- ARGV[1] the owner's random token
--
-- Returns 1 if the lock was ours and is now deleted; 0 if it had expired (and
-- perhaps been taken by someone else, whose lock is left alone).

if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
