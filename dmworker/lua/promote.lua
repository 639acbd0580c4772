-- promote: move due follow-ups into the tail of their lane, each exactly once; expire the ones whose
-- time ran out before they could be promoted.
-- KEYS[1..8] account block (see _lifecycle.lua)   KEYS[9] ready   KEYS[9+i] lane of the i-th job
-- ARGV[1..4] clock and retention   ARGV[5] grace ms   ARGV[6] n   then n x (job id, lane)
-- Returns {promoted count, lane to publish...}
local n = tonumber(ARGV[6])
local promoted, publish = 0, {}
for i = 1, n do
  local id, r = ARGV[5 + 2 * i], ARGV[6 + 2 * i]
  if redis.call('ZREM', K.sched, id) == 1 then
    local st = st_get(id)
    if st and st.state == 'scheduled' then
      if expired(st, now_ms) then
        finish(id, st, 'expired', {kind = 'expired', message = 'not sent before it expired'}, false, now_ms)
      else
        st.state = 'queued'; st.updated_ms = now_ms; st.promoted_ms = now_ms
        note(st, 'promoted')
        st_put(id, st)
        ix_state(id, st, 'scheduled')
        local was_empty = redis.call('LLEN', KEYS[9 + i]) == 0
        redis.call('RPUSH', KEYS[9 + i], id)
        promoted = promoted + 1
        redis.call('HINCRBY', K.stats, 'due_jobs', 1)
        join_lane(r, st.priority or 'n', was_empty)
        if admit(r, tonumber(ARGV[5])) then publish[#publish + 1] = r end
      end
    end
  end
end
local out = {promoted}
for _, r in ipairs(publish) do out[#out + 1] = r end
return out
