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
-- KEYS[5] fence    KEYS[6] reserved    KEYS[7] deadlines
-- ARGV[1] the sale's generation, as the writer read it
-- ARGV[2] the writer's fencing token, or '' when it holds none
-- ARGV[3] the new stock value (computed under the caller's guard), or '' to
--         decrement (the `sql` mirror: SQL already decided)
-- ARGV[4] the sale's `returned` count as the writer read it with the stock,
--         or '' (`naive`) to store ARGV[3] as it is
-- ARGV[5] user_id
-- ARGV[6], ARGV[7] the order entry's one field, name and value
-- With an Idempotency-Key, also:
-- KEYS[8] the key's record (key_record.lua)
-- ARGV[8] the order id    ARGV[9] the request's fingerprint
-- ARGV[10] how long the record is kept (ms)
--
-- Units returned (lifecycle.lua: a cancel or an expiry) between the read and
-- this write are added to the value stored: a return is an INCR that no
-- guard of these strategies excludes, and storing the value as read would
-- throw it away. `naive` sends no count and loses them: its lesson.
--
-- In a sale with a payment window the order is reserved (reserve.lua), the
-- `sql` mirror's too: its return reaches SQL's stock through the persister
-- (db.rs, apply_moves).
--
-- Returns 1 if written, 0 if refused to a superseded fencing token, -1 if
-- refused because the sale was restocked, or idem_bought's reply, a table,
-- if the key bought already (nothing written in any of these cases). The
-- key is checked first: a repeat is answered whatever else changed.
-- idem_bought and idem_commit come from key_record.lua, window_ms,
-- reservable and reserve from reserve.lua, prepended at load.

local record = KEYS[8]
if record then
  local bought = idem_bought(record)
  if bought then
    return bought
  end
end

local meta = redis.call('HMGET', KEYS[2], 'generation', 'returned', 'payment_window_ms')
if meta[1] ~= ARGV[1] then
  return -1
end
if ARGV[2] ~= '' and redis.call('GET', KEYS[5]) ~= ARGV[2] then
  return 0
end
local window, bad_window = window_ms(meta[3])
if bad_window then
  return bad_window
end
-- The keys a window adds, checked before the first write (reserve.lua).
local wrong = window and reservable(KEYS[6], KEYS[7])
if wrong then
  return wrong
end
if ARGV[3] == '' then
  redis.call('DECR', KEYS[1])
else
  local stock = tonumber(ARGV[3])
  if ARGV[4] ~= '' then
    stock = stock + (tonumber(meta[2] or '0') - tonumber(ARGV[4]))
  end
  redis.call('SET', KEYS[1], stock)
end
redis.call('HINCRBY', KEYS[3], ARGV[5], 1)
redis.call('XADD', KEYS[4], '*', ARGV[6], ARGV[7])
if window then
  reserve(KEYS[6], KEYS[7], window, ARGV[7])
end
if record then
  local remaining = redis.call('GET', KEYS[1])
  idem_commit(record, ARGV[9], ARGV[8], remaining, ARGV[10])
end
return 1
