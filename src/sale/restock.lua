-- restock.lua: create an item or restock it, starting its sale over.
--
-- KEYS[1] stock    KEYS[2] meta    KEYS[3] buyers    KEYS[4] orders
-- KEYS[5] lock     KEYS[6] where to move the previous sale's order log
-- KEYS[7] the item's set of archived order logs
-- ARGV[1] stock    ARGV[2] per_user_limit
-- ARGV[3] lowest generation to issue: the one SQL issued for this restock,
--         so a Redis that lost its data (the embedded one, restarted) never
--         reuses a sale number that orders in SQL already carry
-- ARGV[4] the strategy the new sale is bound to, or '' to leave it unbound
--         (its first purchase binds it)
-- ARGV[5] the new sale's payment window in ms, or 0 for none (its orders
--         are final): lifecycle.rs
--
-- The previous sale's paid and returned counts go; its reserved orders stay
-- reserved until paid, cancelled or expired, and give no unit back to the
-- new sale (lifecycle.lua).
--
-- Returns {generation, created, archived}: the new sale's number (1 for a new
-- item), 1 if the item did not exist before, 1 if an order log was set aside.
--
-- The previous order log is renamed, not deleted, and registered for the
-- persister in this same script: orders that got a 201 are never thrown away,
-- whatever happens to the sale afterwards. The new generation is what fences
-- every purchase still in flight from the previous sale (write.lua).

local created = redis.call('EXISTS', KEYS[2]) == 0 and 1 or 0
local generation = redis.call('HINCRBY', KEYS[2], 'generation', 1)
if generation < tonumber(ARGV[3]) then
  generation = tonumber(ARGV[3])
  redis.call('HSET', KEYS[2], 'generation', generation)
end
local archived = redis.call('EXISTS', KEYS[4])
if archived == 1 then
  redis.call('RENAME', KEYS[4], KEYS[6])
  redis.call('SADD', KEYS[7], KEYS[6])
end
redis.call('DEL', KEYS[3], KEYS[5])
redis.call('SET', KEYS[1], ARGV[1])
redis.call('HSET', KEYS[2], 'initial_stock', ARGV[1], 'per_user_limit', ARGV[2])
redis.call('HDEL', KEYS[2], 'paid', 'returned')
if ARGV[5] == '0' then
  redis.call('HDEL', KEYS[2], 'payment_window_ms')
else
  redis.call('HSET', KEYS[2], 'payment_window_ms', ARGV[5])
end
if ARGV[4] == '' then
  redis.call('HDEL', KEYS[2], 'strategy')
else
  redis.call('HSET', KEYS[2], 'strategy', ARGV[4])
end
return {generation, created, archived}
