-- end_jobs: end the given jobs (and the rest of their units) that have not been sent: cancelled,
-- or failed without a dead letter (an account removed with its queue, a person forgotten).
-- KEYS[1..8] account block (see _lifecycle.lua)
-- ARGV[1..4] clock and retention   ARGV[5] 'cancelled' | 'failed'   ARGV[6] error kind
-- ARGV[7] message   ARGV[8..] job ids
-- Returns the number of jobs ended.
local n = 0
for i = 8, #ARGV do
  local id = ARGV[i]
  if ARGV[5] == 'cancelled' then
    n = n + cancel_unit(id, ARGV[6], ARGV[7], now_ms)
  else
    local st = st_get(id)
    if st then
      for _, m in ipairs(members(id, st)) do
        local o = (m == id) and st or st_get(m)
        if o and LIVE[o.state] then
          finish(m, o, 'failed', {kind = ARGV[6], message = ARGV[7]}, false, now_ms)
          n = n + 1
        end
      end
    end
  end
end
return n
