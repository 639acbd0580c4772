-- replay: put a dead-lettered job back at the tail of its recipient's lane.
-- KEYS[1] dlq   KEYS[2] st   KEYS[3] lane:<r>   KEYS[4] ready
-- ARGV[1] now override   ARGV[2] job id   ARGV[3] recipient   ARGV[4] grace ms
-- Returns {"replayed", publish} | {"notfound"}
if redis.call('ZREM', KEYS[1], ARGV[2]) == 0 then return {'notfound'} end
local raw = redis.call('HGET', KEYS[2], ARGV[2])
if not raw then return {'notfound'} end
local st = cjson.decode(raw)
st.s = 'queued'; st.a = 0; st.u = now_ms; st.replayed = (st.replayed or 0) + 1; st.h = nil; st.n = nil
redis.call('HSET', KEYS[2], ARGV[2], cjson.encode(st))
redis.call('RPUSH', KEYS[3], ARGV[2])
local publish = 0
if not redis.call('ZSCORE', KEYS[4], ARGV[3]) then
  redis.call('ZADD', KEYS[4], now_ms + tonumber(ARGV[4]), ARGV[3])
  publish = 1
end
return {'replayed', publish}
