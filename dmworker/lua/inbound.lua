-- inbound: a user's event arrived (webhook): de-duplicate, open the window, cancel on reply.
-- KEYS[1] evt:<event id>   KEYS[2] win   KEYS[3] cor:<r>   KEYS[4] st   KEYS[5] sched
-- KEYS[6] fkey   KEYS[7] stats
-- ARGV[1] now override   ARGV[2] recipient (the user)   ARGV[3] event time ms
-- ARGV[4] opens window (0/1)   ARGV[5] cancels follow-ups (0/1)   ARGV[6] dedupe ttl s
-- Returns {"dup"} | {"ok", cancelled count, cancelled ids...}
if redis.call('SET', KEYS[1], 1, 'NX', 'EX', tonumber(ARGV[6])) == false then return {'dup'} end
local r, ts = ARGV[2], tonumber(ARGV[3])
if ARGV[4] == '1' then
  local last = tonumber(redis.call('HGET', KEYS[2], r) or '0')
  if ts > last then redis.call('HSET', KEYS[2], r, ts) end
end
local out = {'ok', 0}
if ARGV[5] == '1' then
  for _, id in ipairs(redis.call('SMEMBERS', KEYS[3])) do
    local raw = redis.call('HGET', KEYS[4], id)
    if raw then
      local st = cjson.decode(raw)
      if st.s == 'scheduled' or st.s == 'queued' or st.s == 'waiting' then
        st.s = 'cancelled'; st.u = now_ms
        st.e = {kind = 'cancelled', message = 'the user replied before the follow-up was due'}
        redis.call('HSET', KEYS[4], id, cjson.encode(st))
        redis.call('ZREM', KEYS[5], id)
        if st.k and redis.call('HGET', KEYS[6], st.k) == id then redis.call('HDEL', KEYS[6], st.k) end
        out[2] = out[2] + 1
        out[#out + 1] = id
      end
    end
  end
  redis.call('DEL', KEYS[3])
  if out[2] > 0 then redis.call('HINCRBY', KEYS[7], 'cancelled', out[2]) end
end
return out
