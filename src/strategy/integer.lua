-- integer.lua: prepended to purchase.lua and purchase_batch.lua when they are
-- loaded (scripts cannot import), so both read a stored count the same way.
--
-- integer(value, what, whose): the number `value` holds, 0 for a missing
-- value; or nil and an error reply naming `what` (and `whose`, when given).
-- Only what Redis's own integer commands accept, and Lua holds exactly: '0',
-- or an optional minus and at most 15 digits with no leading zero. DECR,
-- DECRBY and HINCRBY refuse "1.5", "5 ", "05" and values past 64 bits, all of
-- which Lua's tonumber reads; a write the script makes after its first one
-- must not fail on them (Redis does not roll a script back), and past 15
-- digits a Lua number is no longer exact. The stock is at most 10^9 and a
-- per-user limit at most 10^6, so a real count always passes.
-- `what` and `whose` are joined only for the error: the scripts call this
-- once per buyer, and a string built per call is a cost Redis pays on every
-- purchase.
local function integer(value, what, whose)
  if value and value ~= '0' then
    local digits = string.match(value, '^-?([1-9]%d*)$')
    if not digits or #digits > 15 then
      if whose then
        what = what .. ' ' .. whose
      end
      return nil, redis.error_reply('ERR ' .. what .. ' is not an integer of at most 15 digits: ' .. tostring(value))
    end
  end
  return tonumber(value or '0')
end
