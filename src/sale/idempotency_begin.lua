-- idempotency_begin.lua: claim an Idempotency-Key for a purchase, or find
-- what an earlier request with the same key came to. The claim only answers
-- repeats quickly (409 in flight, a replayed 201): what keeps a key from
-- buying twice is the commit step's own check (key_record.lua).
--
-- KEYS[1] the key's record (hash, beside the item's keys)
-- KEYS[2] the item's meta hash
-- ARGV[1] the request's fingerprint (what the body asked for)
-- ARGV[2] how long a claim lives (ms)
--
-- Returns one of:
--   {'new'}                                   claimed: go ahead
--   {'missing'}                               no such item: nothing stored
--   {'pending', fp}                           a request with this key is in flight
--   {'done', {fp, order, remaining, body}}    the key bought (idem_bought)
-- idem_bought comes from key_record.lua, prepended at load.

local bought = idem_bought(KEYS[1])
if bought then
  return {'done', bought}
end
local claimed = redis.call('HGET', KEYS[1], 'fp')
if claimed then
  return {'pending', claimed}
end
if redis.call('EXISTS', KEYS[2]) == 0 then
  return {'missing'}
end
redis.call('HSET', KEYS[1], 'state', 'pending', 'fp', ARGV[1])
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return {'new'}
