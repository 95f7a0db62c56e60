-- release_unused.lua: release the `lock` strategy's lock after a refusal
-- (sold out, limit reached), handing back the fencing token unused, so that a
-- refused purchase leaves no trace in Redis.
--
-- While we hold the lock nobody else can have taken a token, so if the fence
-- still shows ours, undoing our INCR restores it exactly (and deletes it if
-- our INCR created it). Reissuing the number is safe: we never wrote.
--
-- KEYS[1] the lock key    KEYS[2] the fence counter
-- ARGV[1] our token       ARGV[2] our fencing token
--
-- Returns 1 if the lock was ours, 0 if it had expired (nothing undone then).

if redis.call('GET', KEYS[1]) ~= ARGV[1] then
  return 0
end
redis.call('DEL', KEYS[1])
if redis.call('GET', KEYS[2]) == ARGV[2] then
  if redis.call('DECR', KEYS[2]) <= 0 then
    redis.call('DEL', KEYS[2])
  end
end
return 1
