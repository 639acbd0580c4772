-- dispatch: claim the lanes whose look-at time has come (so one process publishes each once), and
-- list the follow-ups that are due (promote.lua moves them, exactly once).
-- KEYS[1] ready   KEYS[2] sched
-- ARGV[1] now override   ARGV[2] grace ms (how long before a claimed lane may be claimed again)
-- ARGV[3] max lanes   ARGV[4] max follow-ups
-- Returns {now_ms, next ready score or -1, next follow-up due or -1, lane count, recipient...,
--          due follow-up id...}
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now_ms, 'LIMIT', 0, tonumber(ARGV[3]))
local grace = tonumber(ARGV[2])
for _, r in ipairs(due) do redis.call('ZADD', KEYS[1], now_ms + grace, r) end
local first = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
local fu = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now_ms, 'LIMIT', 0, tonumber(ARGV[4]))
local nextfu = redis.call('ZRANGE', KEYS[2], 0, 0, 'WITHSCORES')
local out = {now_ms, first[2] and tonumber(first[2]) or -1, nextfu[2] and tonumber(nextfu[2]) or -1, #due}
for _, r in ipairs(due) do out[#out + 1] = r end
for _, id in ipairs(fu) do out[#out + 1] = id end
return out
