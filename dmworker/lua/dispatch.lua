-- dispatch: claim the lanes whose look-at time has come (so one process publishes each once) —
-- high-priority lanes first, then normal, then low, no more than the account's admission budget
-- lets have a Celery message outstanding — and list the follow-ups that are due (promote.lua
-- moves them, exactly once).
-- KEYS[1] ready   KEYS[2] sched   KEYS[3] readyh   KEYS[4] readyl   KEYS[5] adm   KEYS[6] held
-- ARGV[1] now override   ARGV[2] grace ms (how long before a claimed lane may be claimed again)
-- ARGV[3] max lanes   ARGV[4] max follow-ups   ARGV[5] admission budget (0 = no limit)
-- ARGV[6] ms to look again when due lanes wait for the budget   ARGV[7] lanes per message
-- Returns {now_ms, next ready score or -1, next follow-up due or -1, lane count, 1 when due lanes
--          wait for the budget (else 0), lane..., due follow-up id...}
local grace, limit, budget = tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[5])
-- a lane whose message is still outstanding (a long queue) is not published again before two
-- graces: re-publishing does not multiply messages under a backlog
redis.call('ZREMRANGEBYSCORE', KEYS[5], '-inf', now_ms - 2 * grace)  -- messages presumed lost
if budget > 0 then
  redis.call('ZREMRANGEBYSCORE', KEYS[6], '-inf', now_ms)           -- holders presumed dead
  local free = budget - redis.call('ZCARD', KEYS[5]) - redis.call('ZCARD', KEYS[6])
  -- admit a backlog in groups (ARGV[7] lanes: one Celery message), not one lane at a time; a
  -- high-priority lane goes at the first free place
  if redis.call('ZCOUNT', KEYS[3], '-inf', now_ms) == 0 then
    local due_count = redis.call('ZCOUNT', KEYS[1], '-inf', now_ms) + redis.call('ZCOUNT', KEYS[4], '-inf', now_ms)
    if free < math.min(tonumber(ARGV[7]), due_count, budget) then free = 0 end
  end
  if free < limit then limit = math.max(0, free) end
end
local due, waiting = {}, false
for _, rq in ipairs({KEYS[3], KEYS[1], KEYS[4]}) do
  local left = limit - #due
  if left > 0 then
    for _, r in ipairs(redis.call('ZRANGEBYSCORE', rq, '-inf', now_ms, 'LIMIT', 0, left)) do
      redis.call('ZADD', rq, now_ms + grace, r)
      if not redis.call('ZSCORE', KEYS[5], r) then
        redis.call('ZADD', KEYS[5], now_ms, r)
        due[#due + 1] = r
      end
    end
  end
  if not waiting and redis.call('ZCOUNT', rq, '-inf', now_ms) > 0 then waiting = true end
end
local nxt = -1
for _, rq in ipairs({KEYS[3], KEYS[1], KEYS[4]}) do
  local first = redis.call('ZRANGE', rq, 0, 0, 'WITHSCORES')
  if first[2] and (nxt < 0 or tonumber(first[2]) < nxt) then nxt = tonumber(first[2]) end
end
if waiting then nxt = now_ms + tonumber(ARGV[6]) end  -- due lanes wait for messages to be taken
local fu = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now_ms, 'LIMIT', 0, tonumber(ARGV[4]))
local nextfu = redis.call('ZRANGE', KEYS[2], 0, 0, 'WITHSCORES')
local out = {now_ms, nxt, nextfu[2] and tonumber(nextfu[2]) or -1, #due, waiting and 1 or 0}
for _, r in ipairs(due) do out[#out + 1] = r end
for _, id in ipairs(fu) do out[#out + 1] = id end
return out
