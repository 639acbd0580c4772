-- replay: put a dead-lettered job back at the tail of its lane, with a fresh age and attempts.
-- KEYS[1..8] account block (see _lifecycle.lua)   KEYS[9] lane:<r>   KEYS[10] ready
-- ARGV[1..4] clock and retention   ARGV[5] job id   ARGV[6] lane   ARGV[7] grace ms
-- ARGV[8] maximum age ms
-- Returns {"replayed", publish} | {"notfound"} | {"notdead", state}
local id = ARGV[5]
local st = st_get(id)
if not st then redis.call('ZREM', K.dlq, id); return {'notfound'} end
if redis.call('ZREM', K.dlq, id) == 0 then return {'notdead', st.state} end
if st.dead_lettered then redis.call('ZREM', K.ix, dead_member(id, st)) end
local was = bucket(st)
st.state = 'queued'; st.attempts = 0; st.updated_ms = now_ms; st.due_ms = now_ms
st.replays = (st.replays or 0) + 1
st.dead_lettered = nil; st.holder = nil; st.next_attempt_ms = nil; st.ended_ms = nil
st.expires_at_ms = now_ms + (st.ttl_ms or tonumber(ARGV[8]))
note(st, 'replayed')
ix_state(id, st, was)
redis.call('HINCRBY', K.stats, 'due_jobs', 1)
st_put(id, st)
local was_empty = redis.call('LLEN', KEYS[9]) == 0
redis.call('RPUSH', KEYS[9], id)
join_lane(ARGV[6], st.priority or 'n', was_empty)
local publish = admit(ARGV[6], tonumber(ARGV[7])) and 1 or 0
return {'replayed', publish}
