-- promote: move due follow-ups into the tail of their recipient's lane, each exactly once.
-- KEYS[1] sched   KEYS[2] st   KEYS[3] ready   KEYS[3+i] lane of the i-th job
-- ARGV[1] now override   ARGV[2] grace ms   ARGV[3] n   then n x (job id, recipient)
-- Returns {promoted count, recipient to publish...}
local n = tonumber(ARGV[3])
local promoted, publish = 0, {}
for i = 1, n do
  local id, r = ARGV[2 + 2 * i], ARGV[3 + 2 * i]
  if redis.call('ZREM', KEYS[1], id) == 1 then
    local raw = redis.call('HGET', KEYS[2], id)
    if raw then
      local st = cjson.decode(raw)
      if st.s == 'scheduled' then
        st.s = 'queued'; st.u = now_ms; st.p = now_ms
        redis.call('HSET', KEYS[2], id, cjson.encode(st))
        redis.call('RPUSH', KEYS[3 + i], id)
        promoted = promoted + 1
        if not redis.call('ZSCORE', KEYS[3], r) then
          redis.call('ZADD', KEYS[3], now_ms + tonumber(ARGV[2]), r)
          publish[#publish + 1] = r
        end
      end
    end
  end
end
local out = {promoted}
for _, r in ipairs(publish) do out[#out + 1] = r end
return out
