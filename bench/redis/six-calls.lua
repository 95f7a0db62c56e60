-- six-calls.lua: purchase.lua's six commands on the same keys and arguments,
-- with none of its checks or branches: what one `lua` purchase costs Redis
-- before any logic of its own (bench/redis/floor.sh).
local meta = redis.call('HMGET', KEYS[2], 'per_user_limit', 'generation', 'strategy')
redis.call('HGET', KEYS[3], ARGV[1])
redis.call('GET', KEYS[1])
redis.call('XADD', KEYS[4], '*', 'order', ARGV[2] .. meta[2])
local remaining = redis.call('DECR', KEYS[1])
redis.call('HINCRBY', KEYS[3], ARGV[1], 1)
return {0, remaining}
