-- key_record.lua: the Idempotency-Key record's one shape, prepended
-- to every script that reads or writes it (scripts cannot import): the
-- claim (idempotency_begin.lua), its release, and the commit step of every
-- strategy (purchase.lua, purchase_batch.lua, write.lua, optimistic's
-- MULTI). The record is a hash beside the item's keys:
--   state      'pending' (claimed by a request in flight) or 'done' (bought)
--   fp         the fingerprint of the request that claimed or bought
--   order      (done) the order id bought
--   remaining  (done) the units left after that purchase
--   body       (done, records of versions before the commit-point record
--              only) the 201's JSON body, replayed as it is
--
-- 'done' is written only by idem_commit, in the same atomic step (script or
-- MULTI) as the purchase's own writes, and every commit step first asks
-- idem_bought: a key that bought once can never buy again, whatever became
-- of its claim (expired, released after an error, never made).

-- {fp, order, remaining, body} when the key bought already; nil otherwise.
-- Its HMGET also fails on a record of the wrong type, before any write.
local function idem_bought(key)
  local r = redis.call('HMGET', key, 'state', 'fp', 'order', 'remaining', 'body')
  if r[1] == 'done' then
    return {r[2] or '', r[3] or '', r[4] or '', r[5] or ''}
  end
  return nil
end

-- Records the purchase of `order` (leaving `remaining`) for the key: the
-- commit point. `ttl` in milliseconds.
local function idem_commit(key, fp, order, remaining, ttl)
  redis.call('HSET', key, 'state', 'done', 'fp', fp, 'order', order, 'remaining', remaining)
  redis.call('PEXPIRE', key, ttl)
end

-- Drops a claim that bought nothing; a record that bought stays.
local function idem_release(key)
  if redis.call('HGET', key, 'state') ~= 'done' then
    redis.call('DEL', key)
  end
end
