-- purchase.lua: the whole purchase as one atomic script (the `lua` strategy).
--
-- KEYS[1] stock    string integer, remaining units
-- KEYS[2] meta     hash with per_user_limit, generation and the sale's
--                  strategy binding (absent: no such item)
-- KEYS[3] buyers   hash user_id -> units held
-- KEYS[4] orders   stream, the item's order log
-- ARGV[1] user_id
-- ARGV[2] order_id    (decimal snowflake, minted by the caller)
-- ARGV[3] strategy    the name this purchase gave: checked against the
--                     sale's binding, and written into the order entry
-- ARGV[4] created_ms  the order id's own timestamp
--
-- Returns {code, value}:
--   {0, remaining}     purchased: stock decremented, buyer counted, order appended
--   {1, 0}             sold out
--   {2, limit}         the user already holds `limit` units
--   {3, 0}             item not found
--   {4, strategy}      the sale is bound to another strategy (its name)
-- A sale with no binding yet is bound to ARGV[3] by its first purchase, as in
-- snapshot.lua. Every rejection returns before any other write.

local meta = redis.call('HMGET', KEYS[2], 'per_user_limit', 'generation', 'strategy')
local limit = tonumber(meta[1])
if not limit then
  return {3, 0}
end
if not meta[3] then
  redis.call('HSET', KEYS[2], 'strategy', ARGV[3])
elseif meta[3] ~= ARGV[3] then
  return {4, meta[3]}
end
local held = tonumber(redis.call('HGET', KEYS[3], ARGV[1]) or '0')
if held >= limit then
  return {2, limit}
end
local stock = tonumber(redis.call('GET', KEYS[1]) or '0')
if stock <= 0 then
  return {1, 0}
end
local remaining = redis.call('DECR', KEYS[1])
redis.call('HINCRBY', KEYS[3], ARGV[1], 1)
redis.call('XADD', KEYS[4], '*',
  'order_id', ARGV[2], 'user_id', ARGV[1], 'strategy', ARGV[3], 'created_ms', ARGV[4],
  'generation', meta[2])
return {0, remaining}
