-- seen: the user saw our messages up to one of them (Instagram's read.mid) or up to a time
-- (Messenger-style read.watermark): every sent job of that lane up to it becomes seen.
-- KEYS[1..8] account block (see _lifecycle.lua)
-- ARGV[1..4] clock and retention   ARGV[5] lane (the user)   ARGV[6] message id ('' = use ARGV[7])
-- ARGV[7] watermark ms ('')
-- Returns {count, job id...} of the jobs that became seen.
local lane = ARGV[5]
local upto
if ARGV[6] ~= '' then
  local id = redis.call('HGET', K.mids, ARGV[6])
  local st = id and st_get(id)
  if not st or st.lane ~= lane or (st.state ~= 'sent' and st.state ~= 'seen') then return {0} end
  upto = tonumber(st.sent_ms)
else
  upto = tonumber(ARGV[7])
end
local out = {0}
local entries = redis.call('ZRANGEBYLEX', K.unseen, '[' .. lane .. '|', '[' .. lane .. '|' .. string.format('%013d', upto) .. '|\255')
for _, entry in ipairs(entries) do
  local id = string.match(entry, '^.*|%d+|(.+)$')
  local st = id and st_get(id)
  if st and st.state == 'sent' then
    st.state = 'seen'; st.seen_ms = now_ms; st.updated_ms = now_ms
    note(st, 'seen')
    st_put(id, st)
    ix_state(id, st, 'sent')
    job_event('job.seen', id, st)
    out[1] = out[1] + 1
    out[#out + 1] = id
  end
  redis.call('ZREM', K.unseen, entry)
end
if out[1] > 0 then redis.call('HINCRBY', K.stats, 'seen', out[1]) end
return out
