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
-- ARGV[5], ARGV[6] the order entry's one field, name and value
-- With an Idempotency-Key, also:
-- KEYS[6] the key's record (key_record.lua)
-- ARGV[7] the order id    ARGV[8] the request's fingerprint
-- ARGV[9] how long the record is kept (ms)
--
-- Returns 1 if written, 0 if refused to a superseded fencing token, -1 if
-- refused because the sale was restocked, or idem_bought's reply, a table,
-- if the key bought already (nothing written in any of these cases). The
-- key is checked first: a repeat is answered whatever else changed.
-- idem_bought and idem_commit come from key_record.lua, prepended
-- at load.

local record = KEYS[6]
if record then
  local bought = idem_bought(record)
  if bought then
    return bought
  end
end

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
redis.call('XADD', KEYS[4], '*', ARGV[5], ARGV[6])
if record then
  local remaining = redis.call('GET', KEYS[1])
  idem_commit(record, ARGV[8], ARGV[7], remaining, ARGV[9])
end
return 1
