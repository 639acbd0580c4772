-- limit: one GCRA decision for (account, class), for callers outside a lane (conversation reads).
-- KEYS[1] rl
-- ARGV[1] now override   ARGV[2] class   ARGV[3] interval us   ARGV[4] burst
-- ARGV[5] usage slowdown decay ms
-- Returns {allowed 1/0, wait_us}
local interval, burst = tonumber(ARGV[3]), tonumber(ARGV[4])
local sl = redis.call('HMGET', KEYS[1], 'slow', 'slow_at')
local slow = tonumber(sl[1] or '1')
if slow > 1 then
  slow = 1 + (slow - 1) * math.max(0, 1 - (now_ms - tonumber(sl[2] or '0')) / tonumber(ARGV[5]))
end
interval = math.floor(interval * slow)
local tat = tonumber(redis.call('HGET', KEYS[1], ARGV[2] .. ':tat') or '0')
if tat < now_us then tat = now_us end
local tolerance = (burst - 1) * interval
if tat - now_us > tolerance then return {0, tat - tolerance - now_us} end
redis.call('HSET', KEYS[1], ARGV[2] .. ':tat', string.format('%d', tat + interval))
return {1, 0}
