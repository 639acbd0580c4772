-- cancel: cancel a job by id, or by follow-up key when ARGV[2] is ''.
-- KEYS[1] st   KEYS[2] sched   KEYS[3] fkey   KEYS[4] stats
-- ARGV[1] now override   ARGV[2] job id ('' = look up ARGV[3])   ARGV[3] follow-up key
-- ARGV[4] reason
-- Returns {"cancelled", id} | {"notfound", ''} | {"final", id, state} (already sent/failed/cancelled/sending)
local id = ARGV[2]
if id == '' then
  id = redis.call('HGET', KEYS[3], ARGV[3])
  if not id then return {'notfound', ''} end
end
local raw = redis.call('HGET', KEYS[1], id)
if not raw then return {'notfound', id} end
local st = cjson.decode(raw)
if st.s ~= 'scheduled' and st.s ~= 'queued' and st.s ~= 'waiting' then return {'final', id, st.s} end
st.s = 'cancelled'; st.u = now_ms; st.e = {kind = 'cancelled', message = ARGV[4]}
redis.call('HSET', KEYS[1], id, cjson.encode(st))
redis.call('ZREM', KEYS[2], id)
if st.k and redis.call('HGET', KEYS[3], st.k) == id then redis.call('HDEL', KEYS[3], st.k) end
redis.call('HINCRBY', KEYS[4], 'cancelled', 1)
return {'cancelled', id}
