-- lifecycle.lua: an order's one move out of `reserved` (reserve.lua): paid
-- by its buyer, cancelled by its buyer, or expired by the server once its
-- payment deadline has passed. One script, so every move of one order is
-- serialised by Redis: a pay and an expiry at the same moment end in one
-- state, and a unit comes back at most once. The order's entry leaves
-- `reserved` and `deadlines` and its end is recorded in `settled` in the
-- same step.
--
-- KEYS[1] stock    KEYS[2] meta    KEYS[3] buyers    KEYS[4] reserved
-- KEYS[5] deadlines    KEYS[6] settled    KEYS[7] moves (stream)
-- ARGV[1] 'pay' or 'cancel': ARGV[2] the order id, ARGV[3] the user asking.
--   Returns {code, state}:
--     0, state   moved now, to state ('paid' or 'cancelled')
--     1, state   this user's order was already moved to `state` by this same
--                action: a retry after a lost reply, answered the same
--     2, state   the order already ended otherwise ('paid', 'cancelled' or
--                'expired'): refused. A pay or cancel that finds the deadline
--                passed expires the order here, and answers 2, 'expired'
--     3, ''      no order of this id was reserved in this item
--     4, ''      the order is another user's: nothing changed
-- ARGV[1] 'expire': ARGV[2] at most this many due orders.
--   Returns {expired, lag_max_ms, due_left}: the orders expired now; how
--   late (after its deadline) the most overdue of them was; 1 if more due
--   orders wait than this call took.
--
-- A cancelled or expired order of the current sale gives its unit back:
-- the stock rises by one, the buyer's count falls by one, and the sale's
-- `returned` count rises by one (write.lua adds the returns that land
-- between a read-check-write strategy's read and its write). An order of an
-- earlier sale (restocked since) ends the same way but gives nothing back:
-- the restock set the stock anew. A paid order of the current sale raises
-- the sale's `paid` count. Every move is appended to the item's moves
-- stream (orders/moves.rs: `<id> <state> <at_ms>`), in the same step, for
-- the persister to apply to the order's SQL row.
-- settled_value and wrong_type come from reserve.lua, prepended at load.

local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

-- The order line's buyer and sale (order_log.rs: `<id> <user> <strategy>
-- <created_ms> <generation>`).
local function parse(line)
  return string.match(line, '^%d+ (%S+) %S+ %d+ (%d+)$')
end

-- Moves reserved order `id` (its log line `line`) to `state`, at `at` (ms).
local function settle(id, line, state, generation, at)
  local user, of = parse(line)
  if not user then
    return redis.error_reply('ERR reserved order ' .. id .. ' has an unreadable line: ' .. line)
  end
  redis.call('HDEL', KEYS[4], id)
  redis.call('ZREM', KEYS[5], id)
  redis.call('HSET', KEYS[6], id, settled_value(state, user, of))
  redis.call('XADD', KEYS[7], '*', 'move', id .. ' ' .. state .. ' ' .. at)
  if of ~= generation then
    return nil
  end
  if state == 'paid' then
    redis.call('HINCRBY', KEYS[2], 'paid', 1)
  else
    redis.call('INCR', KEYS[1])
    redis.call('HINCRBY', KEYS[3], user, -1)
    redis.call('HINCRBY', KEYS[2], 'returned', 1)
  end
  return nil
end

-- Every key this script writes, type-checked before its first write:
-- Redis does not roll a script back, and a move half made (the order ended,
-- its unit not back) would be a unit lost. wrong_type comes from
-- reserve.lua.
local kinds = {'string', 'hash', 'hash', 'hash', 'zset', 'hash', 'stream'}
for i, kind in ipairs(kinds) do
  local wrong = wrong_type(KEYS[i], kind)
  if wrong then
    return wrong
  end
end

local generation = redis.call('HGET', KEYS[2], 'generation') or ''
local now = now_ms()

if ARGV[1] == 'expire' then
  local due = redis.call('ZRANGE', KEYS[5], '-inf', now, 'BYSCORE', 'LIMIT', 0, tonumber(ARGV[2]) + 1,
    'WITHSCORES')
  local expired, lag_max, left = 0, 0, 0
  for i = 1, #due, 2 do
    if expired == tonumber(ARGV[2]) then
      left = 1
      break
    end
    local id = due[i]
    local line = redis.call('HGET', KEYS[4], id)
    if line then
      local err = settle(id, line, 'expired', generation, now)
      if err then
        return err
      end
      expired = expired + 1
      local lag = now - tonumber(due[i + 1])
      if lag > lag_max then
        lag_max = lag
      end
    else
      -- A deadline whose reservation is gone ended already: drop it.
      redis.call('ZREM', KEYS[5], id)
    end
  end
  return {expired, lag_max, left}
end

local id, user = ARGV[2], ARGV[3]
local line = redis.call('HGET', KEYS[4], id)
if not line then
  local ended = redis.call('HGET', KEYS[6], id)
  if not ended then
    return {3, ''}
  end
  local state, owner = string.match(ended, '^(%S+) (%S+) ')
  if owner ~= user then
    return {4, ''}
  end
  local same = (ARGV[1] == 'pay' and state == 'paid') or (ARGV[1] == 'cancel' and state == 'cancelled')
  return {same and 1 or 2, state}
end
local owner = parse(line)
if owner ~= user then
  return {4, ''}
end
local deadline = tonumber(redis.call('ZSCORE', KEYS[5], id))
if deadline and deadline <= now then
  local err = settle(id, line, 'expired', generation, now)
  if err then
    return err
  end
  return {2, 'expired'}
end
local state = ARGV[1] == 'pay' and 'paid' or 'cancelled'
local err = settle(id, line, state, generation, now)
if err then
  return err
end
return {0, state}
