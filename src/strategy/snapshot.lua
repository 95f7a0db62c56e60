-- snapshot.lua: what every read-check-write strategy reads before deciding,
-- and the sale's strategy binding.
--
-- KEYS[1] meta     hash: per_user_limit, generation, strategy (absent: no such item)
-- KEYS[2] buyers   hash user_id -> units held
-- KEYS[3] stock    string integer
-- ARGV[1] user_id
-- ARGV[2] the strategy this purchase names
--
-- Returns {per_user_limit, generation, strategy, held, stock, bound_now}; all
-- nil when the item does not exist (nothing is written then). bound_now is 1
-- when this call bound the sale: a caller that WATCHes the meta hash knows its
-- transaction will abort and reads again instead.
--
-- A sale not yet bound to a strategy is bound here to the one this purchase
-- names: the first purchase of a sale binds it, whatever its outcome. The
-- binding is a single HSET inside a script, so of two first purchases naming
-- different strategies exactly one binds, on any instance.

local meta = redis.call('HMGET', KEYS[1], 'per_user_limit', 'generation', 'strategy')
if not meta[1] then
  return {false, false, false, false, false, 0}
end
local bound = meta[3]
local bound_now = 0
if not bound then
  redis.call('HSET', KEYS[1], 'strategy', ARGV[2])
  bound = ARGV[2]
  bound_now = 1
end
return {meta[1], meta[2], bound, redis.call('HGET', KEYS[2], ARGV[1]), redis.call('GET', KEYS[3]),
  bound_now}
