-- dispatch: claim the lanes whose look-at time has come, so one process publishes each once.
-- KEYS[1] ready
-- ARGV[1] now override   ARGV[2] grace ms (how long before a claimed lane may be claimed again)
-- ARGV[3] max lanes
-- Returns {next_score_or_-1, now_ms, recipient...}: the claimed recipients and the earliest
-- score still in the set after claiming (so the caller knows how long it may sleep).
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now_ms, 'LIMIT', 0, tonumber(ARGV[3]))
local grace = tonumber(ARGV[2])
for _, r in ipairs(due) do redis.call('ZADD', KEYS[1], now_ms + grace, r) end
local first = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
local out = {first[2] and tonumber(first[2]) or -1, now_ms}
for _, r in ipairs(due) do out[#out + 1] = r end
return out
