-- inbound: a user's event arrived (webhook): de-duplicate, open the window, cancel on reply.
-- KEYS[1..8] account block (see _lifecycle.lua)   KEYS[9] evt:<event id>   KEYS[10] win
-- KEYS[11] wint (window times, for retention)   KEYS[12] cor:<r> (the per-user set older versions
-- kept; read and removed)
-- ARGV[1..4] clock and retention   ARGV[5] the user (lane)   ARGV[6] event time ms (Meta's)
-- ARGV[7] opens window (0/1)   ARGV[8] cancels follow-ups (0/1)   ARGV[9] dedupe ttl s
-- A reply cancels only the cancel-on-reply follow-ups created BEFORE the reply's own time; an event
-- older than the de-duplication window is refused outright (a replay could not be recognised).
-- Returns {"dup"} | {"old"} | {"ok", cancelled count, cancelled ids...}
local r, ts = ARGV[5], tonumber(ARGV[6])
if ts < now_ms - tonumber(ARGV[9]) * 1000 then return {'old'} end
if redis.call('SET', KEYS[9], 1, 'NX', 'EX', tonumber(ARGV[9])) == false then return {'dup'} end
if ARGV[7] == '1' then
  local last = tonumber(redis.call('HGET', KEYS[10], r) or '0')
  if ts > last then
    redis.call('HSET', KEYS[10], r, I(ts))
    redis.call('ZADD', KEYS[11], ts, r)
  end
end
local out = {'ok', 0}
if ARGV[8] == '1' then
  local entries = redis.call('ZRANGEBYLEX', K.cor, '[' .. r .. '|', '[' .. r .. '|\255')
  for _, id in ipairs(redis.call('SMEMBERS', KEYS[12])) do entries[#entries + 1] = r .. '|' .. id end
  redis.call('DEL', KEYS[12])
  for _, entry in ipairs(entries) do
    local id = string.sub(entry, #r + 2)
    local st = st_get(id)
    if not st then
      redis.call('ZREM', K.cor, entry)
    elseif LIVE[st.state] and tonumber(st.created_ms) < ts then
      local n = cancel_unit(id, 'cancelled_by_reply', 'the user replied before the follow-up was due', now_ms)
      if n > 0 then
        out[2] = out[2] + n
        out[#out + 1] = id
      end
    end
  end
end
return out
