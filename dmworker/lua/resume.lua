-- resume: lift an account's pause and wake the lanes parked behind it, a batch per call.
-- KEYS[1] pause   KEYS[2] ready
-- ARGV[1] now override   ARGV[2] 'any' (lift whatever pause) | 'token' (lift only a refused-token
-- pause, and only when ARGV[3] is a different, non-empty token fingerprint) | 'wake' (only wake)
-- ARGV[3] fingerprint of the token now configured   ARGV[4] at most this many lanes woken
-- Returns {lifted (0/1), lanes woken, lanes still parked}
local mode, fp = ARGV[2], ARGV[3]
local lifted = 0
if mode ~= 'wake' then
  local p = redis.call('HMGET', KEYS[1], 'reason', 'token_fp')
  if p[1] then
    if mode == 'any' or (p[1] == 'token_invalid' and fp ~= '' and fp ~= p[2]) then
      redis.call('DEL', KEYS[1])
      lifted = 1
    end
  end
  if lifted == 0 then return {0, 0, 0} end
end
-- parked lanes sleep about ten years ahead (step.lua PARK_MS); anything a year out is parked
local parked = redis.call('ZRANGEBYSCORE', KEYS[2], now_ms + 31536000000, '+inf', 'LIMIT', 0, tonumber(ARGV[4]))
for _, r in ipairs(parked) do redis.call('ZADD', KEYS[2], now_ms, r) end
return {lifted, #parked, redis.call('ZCOUNT', KEYS[2], now_ms + 31536000000, '+inf')}
