-- write.lua: the write of every read-check-write strategy (`naive`, `lock`,
-- `redlock`) and the `sql` strategy's mirror, refused when it would land in
-- another sale than the one its decision was made in.
--
-- The caller's guard (or none, for `naive`) protected the read and the check;
-- this script only makes the storage refuse a writer whose sale was restocked
-- since it read (generation changed), and, for `lock`, a writer whose lock
-- expired and was taken by a newer holder (the fencing-token rule). No check
-- of the stock happens here.
--
-- KEYS[1] stock    KEYS[2] meta    KEYS[3] buyers    KEYS[4] orders
-- KEYS[5] fence
-- ARGV[1] the sale's generation, as the writer read it
-- ARGV[2] the writer's fencing token, or '' when it holds none
-- ARGV[3] the new stock value (computed under the caller's guard), or '' to
--         decrement (the `sql` mirror: SQL already decided)
-- ARGV[4] user_id
-- ARGV[5..] the order entry's fields, name/value pairs
--
-- Returns 1 if written, 0 if refused to a superseded fencing token, -1 if
-- refused because the sale was restocked (nothing written either way).

if redis.call('HGET', KEYS[2], 'generation') ~= ARGV[1] then
  return -1
end
if ARGV[2] ~= '' and redis.call('GET', KEYS[5]) ~= ARGV[2] then
  return 0
end
if ARGV[3] == '' then
  redis.call('DECR', KEYS[1])
else
  redis.call('SET', KEYS[1], ARGV[3])
end
redis.call('HINCRBY', KEYS[3], ARGV[4], 1)
redis.call('XADD', KEYS[4], '*', unpack(ARGV, 5))
return 1
