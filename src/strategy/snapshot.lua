-- snapshot.lua: what a read-check-write strategy reads before it writes, and
-- the sale's strategy binding.
--
-- KEYS[1] meta     hash: per_user_limit, generation, strategy (absent: no such item)
-- KEYS[2] buyers   hash user_id -> units held
-- KEYS[3] stock    string integer
-- ARGV[1] user_id
-- ARGV[2] the strategy this purchase names
--
-- Returns {per_user_limit, generation, strategy, held, stock, returned,
-- payment_window_ms}; all nil when the item does not exist (nothing is
-- written then). `returned`
-- (units cancelled or expired back into this sale) goes with the stock to
-- write.lua, which keeps the returns that land between this read and the
-- write.
--
-- A sale not yet bound to a strategy is bound here to the one this purchase
-- names: the first purchase of a sale binds it, whatever its outcome. The
-- binding is a single HSET inside a script, so of two first purchases naming
-- different strategies exactly one binds, on any instance.

local meta = redis.call('HMGET', KEYS[1], 'per_user_limit', 'generation', 'strategy', 'returned',
  'payment_window_ms')
if not meta[1] then
  return {false, false, false, false, false, false, false}
end
local bound = meta[3]
if not bound then
  redis.call('HSET', KEYS[1], 'strategy', ARGV[2])
  bound = ARGV[2]
end
return {meta[1], meta[2], bound, redis.call('HGET', KEYS[2], ARGV[1]), redis.call('GET', KEYS[3]),
  meta[4], meta[5]}
