-- resume: lift an account's pause and wake the lanes parked behind it, a batch per call.
-- KEYS[1] pause   KEYS[2] ready   KEYS[3] events (the account's event stream)   KEYS[4] readyh
-- KEYS[5] readyl
-- ARGV[1] now override   ARGV[2] 'any' (lift whatever pause) | 'token' (lift only a refused-token
-- pause, and only when ARGV[3] is a different, non-empty token fingerprint) | 'wake' (only wake)
-- ARGV[3] fingerprint of the token now configured   ARGV[4] at most this many lanes woken
-- ARGV[5] how long events are kept, ms (0 = no events)
-- Returns {lifted (0/1), lanes woken, lanes still parked}
local mode, fp = ARGV[2], ARGV[3]
local lifted = 0
if mode ~= 'wake' then
  local p = redis.call('HMGET', KEYS[1], 'reason', 'token_fp')
  if p[1] then
    if mode == 'any' or (p[1] == 'token_invalid' and fp ~= '' and fp ~= p[2]) then
      redis.call('DEL', KEYS[1])
      lifted = 1
      if tonumber(ARGV[5]) > 0 then
        local t = redis.call('TIME')
        local server_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
        local ev = {type = 'account.resumed', account = string.match(KEYS[1], '{(.-)}') or '',
          created_ms = now_ms, reason = p[1]}
        redis.call('XADD', KEYS[3], 'MINID', '~', string.format('%d', server_ms - tonumber(ARGV[5])), '*',
          'e', cjson.encode(ev))
      end
    end
  end
  if lifted == 0 then return {0, 0, 0} end
end
-- parked lanes sleep about ten years ahead (step.lua PARK_MS); anything a year out is parked
local woken, left = 0, 0
for _, rq in ipairs({KEYS[4], KEYS[2], KEYS[5]}) do
  local room = tonumber(ARGV[4]) - woken
  local parked = room > 0 and redis.call('ZRANGEBYSCORE', rq, now_ms + 31536000000, '+inf', 'LIMIT', 0, room)
    or {}
  for _, r in ipairs(parked) do redis.call('ZADD', rq, now_ms, r) end
  woken = woken + #parked
  left = left + redis.call('ZCOUNT', rq, now_ms + 31536000000, '+inf')
end
return {lifted, woken, left}
