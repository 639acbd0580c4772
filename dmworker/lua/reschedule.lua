-- reschedule: after a dispatcher pass, set when each account it handled is next due (P:due),
-- unless a producer or worker lowered it meanwhile (then the earlier time stands).
-- KEYS[1] due (global: account -> ms it next has something to dispatch)
-- ARGV[1] now override   ARGV[2..] account, the score its claim set, next due ms (-1 = nothing)
-- Returns the earliest score left in the schedule (-1 when it is empty).
for i = 2, #ARGV, 3 do
  local account, claimed, nxt = ARGV[i], ARGV[i + 1], tonumber(ARGV[i + 2])
  local cur = redis.call('ZSCORE', KEYS[1], account)
  if cur and tonumber(cur) == tonumber(claimed) then
    if nxt < 0 then redis.call('ZREM', KEYS[1], account) else redis.call('ZADD', KEYS[1], nxt, account) end
  elseif nxt >= 0 then
    redis.call('ZADD', KEYS[1], 'LT', nxt, account)
  end
end
local first = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
return first[2] and first[2] or -1
