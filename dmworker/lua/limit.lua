-- limit: one GCRA decision for (account, class), for callers outside a lane (conversation reads).
-- KEYS[1] rl
-- ARGV[1] now override   ARGV[2] class   ARGV[3] interval us   ARGV[4] burst
-- Returns {allowed 1/0, wait_us}
local interval, burst = tonumber(ARGV[3]), tonumber(ARGV[4])
local slow = tonumber(redis.call('HGET', KEYS[1], 'slow') or '1')
interval = math.floor(interval * slow)
local tat = tonumber(redis.call('HGET', KEYS[1], ARGV[2] .. ':tat') or '0')
if tat < now_us then tat = now_us end
local tolerance = (burst - 1) * interval
if tat - now_us > tolerance then return {0, tat - tolerance - now_us} end
redis.call('HSET', KEYS[1], ARGV[2] .. ':tat', tat + interval)
return {1, 0}
