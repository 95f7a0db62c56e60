-- fenced_write.lua: the `lock` strategy's write, refused to a stale holder.
--
-- The lock already protected the read and the check; this only makes the
-- storage refuse a writer whose lock expired and was taken by a newer holder
-- (the fencing-token rule). No check of the stock happens here.
--
-- KEYS[1] stock    KEYS[2] buyers    KEYS[3] orders    KEYS[4] fence
-- ARGV[1] the writer's fencing token
-- ARGV[2] the new stock value (computed under the lock)
-- ARGV[3] user_id
-- ARGV[4..] the order entry's fields, name/value pairs
--
-- Returns 1 if written, 0 if refused because a newer token exists.

if redis.call('GET', KEYS[4]) ~= ARGV[1] then
  return 0
end
redis.call('SET', KEYS[1], ARGV[2])
redis.call('HINCRBY', KEYS[2], ARGV[3], 1)
redis.call('XADD', KEYS[3], '*', unpack(ARGV, 4))
return 1
