-- dead_letter.lua: acknowledge one order-log entry the persister cannot store,
-- and keep it in the item's dead-letter stream as one or more letters (a
-- batch's entry with several conflicting orders: one letter each), in one
-- step.
--
-- KEYS[1] the order log the entry was read from
-- KEYS[2] the item's dead-letter stream
-- ARGV[1] the consumer group    ARGV[2] the entry's id
-- ARGV[3..] per letter: how many values follow, then its fields as
--           name/value pairs
--
-- Returns the letters kept if the entry was pending and is now acknowledged,
-- 0 if it was no longer pending (handled already): then nothing is added, so
-- an entry seen twice is never kept twice. A log renamed by a restock since
-- the read has no group here: the script fails, nothing changes, and the
-- entry is taken over later from the archive it was renamed to.

if redis.call('XACK', KEYS[1], ARGV[1], ARGV[2]) == 1 then
  local at, kept = 3, 0
  while at <= #ARGV do
    local values = tonumber(ARGV[at])
    redis.call('XADD', KEYS[2], '*', unpack(ARGV, at + 1, at + values))
    at = at + values + 1
    kept = kept + 1
  end
  return kept
end
return 0
