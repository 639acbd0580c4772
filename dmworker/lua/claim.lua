-- claim: take the members of a global schedule whose time has come, so that one process works on
-- each (housekeeping of accounts); a claimed member comes back after the lease unless rescheduled.
-- KEYS[1] the schedule (ZSET member -> due ms)
-- ARGV[1] now override   ARGV[2] lease ms   ARGV[3] at most this many
-- Returns {now_ms, member...}
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now_ms, 'LIMIT', 0, tonumber(ARGV[3]))
for _, m in ipairs(due) do redis.call('ZADD', KEYS[1], now_ms + tonumber(ARGV[2]), m) end
local out = {now_ms}
for _, m in ipairs(due) do out[#out + 1] = m end
return out
