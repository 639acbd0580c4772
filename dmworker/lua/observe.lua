-- observe: something happened to a message we sent (the echo of it, a reaction to it): note it on
-- the job's timeline.
-- KEYS[1..8] account block (see _lifecycle.lua)
-- ARGV[1..4] clock and retention   ARGV[5] Meta's message id   ARGV[6] what (echo | reaction)
-- ARGV[7] detail
-- Returns the job id, or '' when the message is not one of ours (or is forgotten).
local id = redis.call('HGET', K.mids, ARGV[5])
local st = id and st_get(id)
if not st then return '' end
note(st, ARGV[6], ARGV[7])
st_put(id, st)
return id
