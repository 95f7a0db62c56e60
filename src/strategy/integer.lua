-- integer.lua: prepended to purchase.lua and purchase_batch.lua when they are
-- loaded (scripts cannot import), so both read a stored count the same way.
--
-- integer(value, what, whose): the number `value` holds in Redis's own
-- integer syntax (DECR and HINCRBY refuse "1.5", "5 " and "1e3", which Lua's
-- tonumber accepts), 0 for a missing value; or nil and an error reply naming
-- `what` (and `whose`, when given). The two are joined only for the error:
-- the scripts call this once per buyer, and a string built per call is a
-- cost Redis pays on every purchase.
local function integer(value, what, whose)
  if value and not string.match(value, '^-?%d+$') then
    if whose then
      what = what .. ' ' .. whose
    end
    return nil, redis.error_reply('ERR ' .. what .. ' is not an integer: ' .. tostring(value))
  end
  return tonumber(value or '0')
end
