-- reserve_alone.lua: reserve.lua on its own, for `optimistic`, whose commit
-- step is a MULTI (its watch on meta keeps the window read here the one the
-- purchase was decided under). window_ms and reserve come from reserve.lua,
-- prepended at load.
--
-- KEYS[1] meta    KEYS[2] reserved    KEYS[3] deadlines
-- ARGV[1] the order's log line, as the MULTI's XADD appended it
-- Returns 1 if the order was reserved, 0 if the sale has no payment window.

local window, bad_window = window_ms(redis.call('HGET', KEYS[1], 'payment_window_ms'))
if bad_window then
  return bad_window
end
if not window then
  return 0
end
-- Inside the MULTI, after its DECR, HINCRBY and XADD: a key of the wrong
-- type (written by hand) fails this script, and leaves the order appended
-- but unreserved, final. The other strategies check before they write.
local wrong = reservable(KEYS[2], KEYS[3])
if wrong then
  return wrong
end
reserve(KEYS[2], KEYS[3], window, ARGV[1])
return 1
