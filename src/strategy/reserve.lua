-- reserve.lua: a purchase's reservation, prepended to every commit step that
-- appends an order (purchase.lua, purchase_batch.lua, write.lua, and on its
-- own inside optimistic's MULTI): scripts cannot import. The order's one
-- shape is src/sale/lifecycle.rs's.
--
-- A sale restocked with a payment window (meta's payment_window_ms) sells
-- reserved units: each order is held as `reserved` until it is paid,
-- cancelled or expired (lifecycle.lua). Here it is recorded in two keys of
-- the item: `reserved` (order id -> the order's log line, which names the
-- buyer and the sale) and `deadlines` (order id scored by its payment
-- deadline). The deadline is Redis's clock plus the window: one clock for
-- every instance, which an instance's own clock jumping cannot move.
--
-- window_ms(value): the window as the sale's meta holds it, checked before
-- the caller's first write (nil: no window; the order is final); or nil and
-- an error reply. reserve(reserved, deadlines, window, line): records the
-- order `line` (`<id> <user> ...`); two writes, after the caller's checks.
-- wrong_type(key, wanted): an error reply if `key` holds another type than
-- `wanted` (absent is fine); reservable(reserved, deadlines): the same for
-- both reservation keys. Callers ask before their first write, since Redis
-- does not roll a script back (keys of the wrong type are only ever written
-- by hand).
-- settled_value(state, user, generation): what the item's `settled` hash
-- holds for an order that left `reserved`.

local function window_ms(value)
  if value == false or value == nil then
    return nil
  end
  if not string.match(value, '^[1-9]%d?%d?%d?%d?%d?%d?%d?%d?$') then
    return nil, redis.error_reply('ERR the payment window is not a whole number of ms: ' .. tostring(value))
  end
  return tonumber(value)
end

local function wrong_type(key, wanted)
  local kind = redis.call('TYPE', key)['ok']
  if kind ~= 'none' and kind ~= wanted then
    return redis.error_reply('WRONGTYPE ' .. key .. ' is a ' .. kind .. ', not a ' .. wanted)
  end
  return nil
end

local function reservable(reserved, deadlines)
  return wrong_type(reserved, 'hash') or wrong_type(deadlines, 'zset')
end

local function reserve(reserved, deadlines, window, line)
  local now = redis.call('TIME')
  local deadline = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000) + window
  local id = string.match(line, '^(%d+) ')
  redis.call('HSET', reserved, id, line)
  redis.call('ZADD', deadlines, deadline, id)
end

local function settled_value(state, user, generation)
  return state .. ' ' .. user .. ' ' .. generation
end
