-- purchase.lua: the whole purchase as one atomic script (the `lua` strategy).
--
-- KEYS[1] stock    string integer, remaining units
-- KEYS[2] meta     hash with per_user_limit, generation and the sale's
--                  strategy binding (absent: no such item)
-- KEYS[3] buyers   hash user_id -> units held
-- KEYS[4] orders   stream, the item's order log
-- KEYS[5] reserved KEYS[6] deadlines   the reservation (reserve.lua), when
--                  the sale has a payment window
-- ARGV[1] user_id
-- ARGV[2] the order entry's head (order_log::head: order id, user, strategy
--         and time, each followed by a space): the script appends the
--         sale's generation and writes it as the entry's one field, 'order'
-- ARGV[3] strategy    the name this purchase gave: checked against the
--                     sale's binding
-- With an Idempotency-Key, also:
-- KEYS[7] the key's record (key_record.lua)
-- ARGV[4] the order id    ARGV[5] the request's fingerprint
-- ARGV[6] how long the record is kept (ms)
--
-- Returns {code, value} (the `lua` column of src/outcome.rs):
--   {0, remaining}     purchased: stock decremented, buyer counted, order appended
--   {1, 0}             sold out
--   {2, limit}         the user already holds `limit` units
--   {3, 0}             item not found
--   {4, strategy}      the sale is bound to another strategy (its name)
--   {5, bought}        the key bought already (idem_bought's reply): nothing
--                      written; checked first, so a repeat is answered
--                      whatever the stock or the limit say now
-- A sale with no binding yet is bound to ARGV[3] by its first purchase, as in
-- snapshot.lua. An error (a key or value of the wrong type) returns before
-- any write.

-- Nothing is written unless every write can succeed (Redis does not roll a
-- script back: a DECR without its order would be a unit lost). With no extra
-- calls: a key of the wrong type fails its read (HMGET, HGET, GET) before any
-- write; the values the writes rely on are checked here; and the order is
-- appended first, so an order log of the wrong type fails before the stock
-- moves. After the append nothing can fail.
-- integer(value, what, whose) comes from integer.lua, idem_bought and
-- idem_commit from key_record.lua, window_ms, reservable and reserve from
-- reserve.lua, all prepended at load. With a payment window, the
-- reservation's keys are type-checked before the append too. The
-- record's HMGET fails on a record of the wrong type, before any write.

local record = KEYS[7]
if record then
  local bought = idem_bought(record)
  if bought then
    return {5, bought}
  end
end

local meta = redis.call('HMGET', KEYS[2], 'per_user_limit', 'generation', 'strategy',
  'payment_window_ms')
local limit = tonumber(meta[1])
if not limit then
  return {3, 0}
end
if meta[3] and meta[3] ~= ARGV[3] then
  return {4, meta[3]}
end
local held, bad = integer(redis.call('HGET', KEYS[3], ARGV[1]), 'the units held by', ARGV[1])
if bad then
  return bad
end
local stock, bad_stock = integer(redis.call('GET', KEYS[1]), 'the stock')
if bad_stock then
  return bad_stock
end
-- Appended to the order entry: checked before the first write.
if not meta[2] then
  return redis.error_reply('ERR the sale has no generation')
end
local window, bad_window = window_ms(meta[4])
if bad_window then
  return bad_window
end
local wrong = window and reservable(KEYS[5], KEYS[6])
if wrong then
  return wrong
end
local refusal
if held >= limit then
  refusal = {2, limit}
elseif stock <= 0 then
  refusal = {1, 0}
else
  local line = ARGV[2] .. meta[2]
  redis.call('XADD', KEYS[4], '*', 'order', line)
  if window then
    reserve(KEYS[5], KEYS[6], window, line)
  end
end
-- The first attempt binds an unbound sale, whatever it answers.
if not meta[3] then
  redis.call('HSET', KEYS[2], 'strategy', ARGV[3])
end
if refusal then
  return refusal
end
local remaining = redis.call('DECR', KEYS[1])
redis.call('HINCRBY', KEYS[3], ARGV[1], 1)
if record then
  idem_commit(record, ARGV[5], ARGV[4], remaining, ARGV[6])
end
return {0, remaining}
