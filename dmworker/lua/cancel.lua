-- cancel: cancel a job's unit (every step of its sequence not yet sent) by job id, or by follow-up key.
-- KEYS[1..8] account block (see _lifecycle.lua)
-- ARGV[1..4] clock and retention   ARGV[5] job id ('' = look up ARGV[6])   ARGV[6] follow-up key
-- ARGV[7] why (error kind: cancelled)   ARGV[8] message
-- Returns {"cancelled", id, count} | {"notfound", ''} | {"final", id, state} (nothing left to cancel:
-- the unit was already sent, failed, cancelled or expired, or is being sent right now)
local id = ARGV[5]
if id == '' then
  id = redis.call('HGET', K.fkey, ARGV[6])
  if not id then return {'notfound', ''} end
end
local n, other = cancel_unit(id, ARGV[7], ARGV[8], now_ms)
if other == 'notfound' then return {'notfound', id} end
if n == 0 then return {'final', id, other} end
return {'cancelled', id, n}
