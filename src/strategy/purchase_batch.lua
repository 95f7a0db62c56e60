-- purchase_batch.lua: a batch of purchases of one item as one atomic script
-- (the `lua-batch` strategy). Each purchase gets the same checks, in the same
-- order, as purchase.lua, one after another in the batch's order: a user's
-- second purchase in a batch sees the first.
--
-- KEYS[1] stock    KEYS[2] meta    KEYS[3] buyers    KEYS[4] orders
-- ARGV[1] strategy    the name the purchases gave
-- then per purchase, three values: user_id, order_id, created_ms
--
-- Returns one {code, value} per purchase, with purchase.lua's codes:
--   {0, remaining} purchased, {1, 0} sold out, {2, limit} limit reached,
--   {3, 0} item not found, {4, strategy} bound to another strategy.
--
-- Nothing is written unless every write can succeed: the keys' types are
-- checked first, so a wrong-typed key fails the whole batch with an error
-- before the first write, instead of half-way through it (Redis does not
-- roll a script back).

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

local n = (#ARGV - 1) / 3
local out = {}
local function all(reply)
  for i = 1, n do
    out[i] = reply
  end
  return out
end

local meta = redis.call('HMGET', KEYS[2], 'per_user_limit', 'generation', 'strategy')
local limit = tonumber(meta[1])
if not limit then
  return all({3, 0})
end
if not meta[3] then
  redis.call('HSET', KEYS[2], 'strategy', ARGV[1])
elseif meta[3] ~= ARGV[1] then
  return all({4, meta[3]})
end
local stock = tonumber(redis.call('GET', KEYS[1]) or '0')
for i = 1, n do
  local user = ARGV[3 * i - 1]
  local held = tonumber(redis.call('HGET', KEYS[3], user) or '0')
  if held >= limit then
    out[i] = {2, limit}
  elseif stock <= 0 then
    out[i] = {1, 0}
  else
    stock = redis.call('DECR', KEYS[1])
    redis.call('HINCRBY', KEYS[3], user, 1)
    redis.call('XADD', KEYS[4], '*',
      'order_id', ARGV[3 * i], 'user_id', user, 'strategy', ARGV[1],
      'created_ms', ARGV[3 * i + 1], 'generation', meta[2])
    out[i] = {0, stock}
  end
end
return out
