-- trim: forget what can no longer matter, in bounded work per call: ended jobs past the retention,
-- dead letters past theirs, windows and comment records older than `keep` (7 days: the longest
-- window, HUMAN_AGENT, and the private-reply window).
-- KEYS[1..8] account block (see _lifecycle.lua)   KEYS[9] win   KEYS[10] wint   KEYS[11] cmt
-- KEYS[12] cmtt
-- ARGV[1..4] clock and retention   ARGV[5] at most this many of each kind   ARGV[6] keep ms
-- Returns {removed, next ms something becomes old enough to remove (-1: nothing left to expire),
--          jobs still live (0/1)}
local limit, keep = tonumber(ARGV[5]), tonumber(ARGV[6])
local removed = trim_some(now_ms, limit)
if redis.call('EXISTS', K.events) == 1 then  -- events older than their retention (the server's clock)
  local t = redis.call('TIME')
  local server_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  removed = removed + redis.call('XTRIM', K.events, 'MINID', I(server_ms - EVENTS_KEEP_MS))
end
for _, pair in ipairs({{KEYS[9], KEYS[10]}, {KEYS[11], KEYS[12]}}) do
  local old = redis.call('ZRANGEBYSCORE', pair[2], '-inf', now_ms - keep, 'LIMIT', 0, limit)
  for _, member in ipairs(old) do
    redis.call('HDEL', pair[1], member)
    redis.call('ZREM', pair[2], member)
    removed = removed + 1
  end
  -- records written before the time index existed: sample a few, index or drop them
  if redis.call('HLEN', pair[1]) > redis.call('ZCARD', pair[2]) then
    local sample = redis.call('HRANDFIELD', pair[1], 10, 'WITHVALUES')
    for i = 1, #sample, 2 do
      local member, t = sample[i], tonumber(sample[i + 1])
      if not redis.call('ZSCORE', pair[2], member) then
        if t == nil then t = now_ms end  -- 'used' comments of unknown age: keep another `keep`
        if t < now_ms - keep then
          redis.call('HDEL', pair[1], member); removed = removed + 1
        else
          redis.call('ZADD', pair[2], t, member)
        end
      end
    end
  end
end
local nxt = -1
local function consider(key, age)
  local first = redis.call('ZRANGE', key, 0, 0, 'WITHSCORES')
  if first[2] then
    local t = tonumber(first[2]) + age
    if nxt < 0 or t < nxt then nxt = t end
  end
end
consider(K.done, RETENTION_MS); consider(K.dlq, DLQ_RETENTION_MS)
consider(KEYS[10], keep); consider(KEYS[12], keep)
if redis.call('EXISTS', K.events) == 1 and (nxt < 0 or now_ms + EVENTS_KEEP_MS < nxt) then
  nxt = now_ms + math.max(EVENTS_KEEP_MS, 1000)
end
if redis.call('HLEN', KEYS[9]) > redis.call('ZCARD', KEYS[10]) or
   redis.call('HLEN', KEYS[11]) > redis.call('ZCARD', KEYS[12]) then
  if nxt < 0 or now_ms + 60000 < nxt then nxt = now_ms + 60000 end  -- unindexed records remain
end
local live = redis.call('HLEN', K.st) > redis.call('ZCARD', K.done) + redis.call('ZCARD', K.dlq)
if nxt >= 0 and nxt <= now_ms then nxt = now_ms end
return {removed, I(nxt), live and 1 or 0}
