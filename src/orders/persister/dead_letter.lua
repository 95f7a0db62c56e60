-- dead_letter.lua: acknowledge one order-log entry the persister cannot store,
-- and keep it in the item's dead-letter stream, in one step.
--
-- KEYS[1] the order log the entry was read from
-- KEYS[2] the item's dead-letter stream
-- ARGV[1] the consumer group    ARGV[2] the entry's id
-- ARGV[3..] the dead letter's fields, name/value pairs
--
-- Returns 1 if the entry was pending and is now acknowledged and kept, 0 if
-- it was no longer pending (handled already): then nothing is added, so an
-- entry seen twice is never kept twice. A log renamed by a restock since the
-- read has no group here: the script fails, nothing changes, and the entry is
-- taken over later from the archive it was renamed to.

if redis.call('XACK', KEYS[1], ARGV[1], ARGV[2]) == 1 then
  redis.call('XADD', KEYS[2], '*', unpack(ARGV, 3))
  return 1
end
return 0
