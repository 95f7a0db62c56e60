-- purchase_batch.lua: a batch of purchases of one item as one atomic script
-- (the `lua-batch` strategy). Each purchase gets the same checks, in the same
-- order, as purchase.lua, one after another in the batch's order: a user's
-- second purchase in a batch sees the first.
--
-- KEYS[1] stock    KEYS[2] meta    KEYS[3] buyers    KEYS[4] orders
-- KEYS[5] reserved KEYS[6] deadlines   the reservations (reserve.lua), when
--          the sale has a payment window
-- KEYS[7..] the Idempotency-Key records (key_record.lua) of the
--          purchases that carry a key, in the batch's order
-- ARGV[1] strategy    the name the purchases gave
-- ARGV[2] how long an Idempotency-Key record is kept (ms)
-- then per purchase, four values: user_id; the order entry's head
-- (order_log::head), to which the sale's generation is appended, as in
-- purchase.lua; and, for a purchase with a key, its order id and its
-- request's fingerprint ('' and '' without one)
--
-- Returns two values per purchase, in one flat list (code, value, code,
-- value, ...: a table per purchase cost Redis more to build and convert),
-- with purchase.lua's codes:
--   0, remaining: purchased    1, 0: sold out    2, limit: limit reached
--   3, 0: item not found       4, strategy: bound to another strategy
--   5, bought: the purchase's key bought already (idem_bought's reply),
--              by an earlier request or earlier in this batch
--
-- Nothing is written unless every write can succeed: the keys' types, the
-- stock and every buyer's count are checked first, so a bad key or value
-- fails the whole batch with an error before the first write, instead of
-- half-way through it (Redis does not roll a script back).

local function must_be(key, wanted)
  local kind = redis.call('TYPE', key)['ok']
  if kind ~= 'none' and kind ~= wanted then
    return redis.error_reply('WRONGTYPE ' .. key .. ' is a ' .. kind .. ', not a ' .. wanted)
  end
end
local wrong = must_be(KEYS[1], 'string') or must_be(KEYS[2], 'hash')
  or must_be(KEYS[3], 'hash') or must_be(KEYS[4], 'stream')
if wrong then
  return wrong
end

local ARGS = 4
local n = (#ARGV - 2) / ARGS
-- The i-th purchase's j-th value.
local function arg(i, j)
  return ARGV[2 + ARGS * (i - 1) + j]
end
local out = {}
local function all(code, value)
  for i = 1, n do
    out[2 * i - 1], out[2 * i] = code, value
  end
  return out
end

local meta = redis.call('HMGET', KEYS[2], 'per_user_limit', 'generation', 'strategy',
  'extra_orders', 'extra_orders_generation', 'payment_window_ms')
local limit = tonumber(meta[1])
if not limit then
  return all(3, 0)
end
if meta[3] and meta[3] ~= ARGV[1] then
  return all(4, meta[3])
end
-- Every value the loop relies on, read and checked before the first write:
-- a stock or a buyer count that is not an integer fails the batch here.
-- integer(value, what, whose) comes from integer.lua, idem_bought and
-- idem_commit from key_record.lua, both prepended at load.
local stock, bad = integer(redis.call('GET', KEYS[1]), 'the stock')
if bad then
  return bad
end
-- Appended to every entry: checked before the first write.
if not meta[2] then
  return redis.error_reply('ERR the sale has no generation')
end
-- window_ms, reservable and reserve come from reserve.lua, prepended at
-- load. With a window, the reservation's keys are type-checked here like
-- the others.
local window, bad_window = window_ms(meta[6])
if bad_window then
  return bad_window
end
wrong = window and reservable(KEYS[5], KEYS[6])
if wrong then
  return wrong
end
-- The orders this sale's log holds past one per entry (order_log.rs). A
-- count of another generation is a previous sale's, left by a restock
-- (an earlier version's restock knows nothing of it): this sale's starts
-- at 0. Checked here, as the stock is: a count that is no integer fails
-- the batch before its first write, and is never carried into the next.
local extra = 0
if meta[5] == meta[2] then
  local bad_extra
  extra, bad_extra = integer(meta[4], 'the extra orders')
  if bad_extra then
    return bad_extra
  end
end
local users = {}
-- The record of each purchase with a key; every record read once here, so
-- one of the wrong type fails the batch before the first write.
local records = {}
local keyed = 0
for i = 1, n do
  users[i] = arg(i, 1)
  if arg(i, 3) ~= '' then
    keyed = keyed + 1
    records[i] = KEYS[6 + keyed]
    idem_bought(records[i])
  end
end
local counts = redis.call('HMGET', KEYS[3], unpack(users))
local held = {}
-- What each buyer held before the batch: a buyer's first purchase in it
-- adds them to the one HSET at the end.
local counts_read = {}
for i = 1, n do
  local count, wrong_count = integer(counts[i], 'the units held by', users[i])
  if wrong_count then
    return wrong_count
  end
  held[users[i]] = count
  counts_read[users[i]] = count
end
-- The first purchase binds an unbound sale (as purchase.lua does), once
-- nothing can fail any more.
if not meta[3] then
  redis.call('HSET', KEYS[2], 'strategy', ARGV[1])
end

-- The stock and the buyers' counts are kept here and written once at the
-- end, one DECRBY and one HSET for the whole batch: a redis.call costs more
-- than the command it runs, and the script is atomic, so no one sees the
-- counts in between. The orders go to the log as one entry (order_log.rs):
-- one order as the one field `order`, which every version reads; several as
-- `orders`, one per line, with the sale's extra_orders raised by the orders
-- past the first (and tagged with the sale's generation), so the log's
-- length plus that count is what was sold.
-- Every write here was checked up front (the keys' types, the integers),
-- so none fails half-way: the Idempotency-Key records are written in the
-- loop, where a key repeated later in the batch sees its first purchase,
-- and the entry after it.
local sold = 0
local lines = {}
local bought = {}
for i = 1, n do
  local user = users[i]
  local key_bought = records[i] and idem_bought(records[i])
  if key_bought then
    out[2 * i - 1], out[2 * i] = 5, key_bought
  elseif held[user] >= limit then
    out[2 * i - 1], out[2 * i] = 2, limit
  elseif stock <= 0 then
    out[2 * i - 1], out[2 * i] = 1, 0
  else
    stock = stock - 1
    sold = sold + 1
    lines[sold] = arg(i, 2) .. meta[2]
    if records[i] then
      idem_commit(records[i], arg(i, 4), arg(i, 3), stock, ARGV[2])
    end
    if held[user] == counts_read[user] then
      bought[#bought + 1] = user
    end
    held[user] = held[user] + 1
    out[2 * i - 1], out[2 * i] = 0, stock
  end
end
if sold == 1 then
  redis.call('XADD', KEYS[4], '*', 'order', lines[1])
elseif sold > 1 then
  redis.call('XADD', KEYS[4], '*', 'orders', table.concat(lines, '\n'))
  redis.call('HSET', KEYS[2], 'extra_orders', extra + sold - 1, 'extra_orders_generation', meta[2])
end
if window then
  for i = 1, sold do
    reserve(KEYS[5], KEYS[6], window, lines[i])
  end
end
if sold > 0 then
  redis.call('DECRBY', KEYS[1], sold)
  local fields = {}
  for _, user in ipairs(bought) do
    fields[#fields + 1] = user
    fields[#fields + 1] = held[user]
  end
  redis.call('HSET', KEYS[3], unpack(fields))
end
return out
