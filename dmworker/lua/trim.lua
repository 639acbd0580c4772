-- trim: forget finished jobs older than the retention (their status and payload).
-- KEYS[1] done   KEYS[2] jobs   KEYS[3] st
-- ARGV[1] now override   ARGV[2] retention ms   ARGV[3] max per call
-- Returns the number of jobs forgotten.
local old = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now_ms - tonumber(ARGV[2]), 'LIMIT', 0, tonumber(ARGV[3]))
for _, id in ipairs(old) do
  redis.call('HDEL', KEYS[2], id)
  redis.call('HDEL', KEYS[3], id)
  redis.call('ZREM', KEYS[1], id)
end
return #old
