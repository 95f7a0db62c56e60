-- idempotency_begin.lua: claim an Idempotency-Key for a purchase, or find
-- what an earlier request with the same key came to.
--
-- KEYS[1] the key's record (hash, beside the item's keys)
-- KEYS[2] the item's meta hash
-- ARGV[1] the request's fingerprint (what the body asked for)
-- ARGV[2] how long a claim lives before its outcome is recorded (ms)
--
-- Returns one of:
--   {'new'}                       claimed: go ahead, then record the outcome
--   {'missing'}                   no such item: nothing stored
--   {'pending', fp}               an earlier request with this key is in flight
--   {'done', fp, status, body}    an earlier request's recorded response

local record = redis.call('HMGET', KEYS[1], 'state', 'fp', 'status', 'body')
if record[1] then
  return {record[1], record[2] or '', record[3] or '', record[4] or ''}
end
if redis.call('EXISTS', KEYS[2]) == 0 then
  return {'missing'}
end
redis.call('HSET', KEYS[1], 'state', 'pending', 'fp', ARGV[1])
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return {'new'}
