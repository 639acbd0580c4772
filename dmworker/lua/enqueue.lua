-- enqueue: accept one job or an ordered batch of jobs for ONE recipient, atomically.
-- KEYS[1] jobs   KEYS[2] st   KEYS[3] lane:<r>   KEYS[4] ready   KEYS[5] sched
-- KEYS[6] fkey   KEYS[7] cor:<r>   KEYS[8] idem:<k> (or a dummy)   KEYS[9] stats   KEYS[10] win
-- ARGV[1] now override ('' = Redis TIME)   ARGV[2] recipient   ARGV[3] delay_ms ('' = none)
-- ARGV[4] at_ms ('' = none)   ARGV[5] idempotency ttl s (0 = no key)   ARGV[6] follow-up key ('')
-- ARGV[7] replace (0/1)   ARGV[8] cancel_on_reply (0/1)   ARGV[9] window limit ms (0 = no check)
-- ARGV[10] dispatch grace ms   ARGV[11] n   then n x (job id, job json, rate class)
-- Returns {"new", publish(0/1), due_ms, ids...} | {"dup", 0, 0, ids...} (idempotency key seen, or
--         this very call already ran: its first job id exists)
--       | {"keyexists", existing id} | {"window", closes_at_ms or -1}
local r = ARGV[2]
-- a retried call whose first run succeeded (its reply was lost): the same ids, never queued twice
if redis.call('HEXISTS', KEYS[1], ARGV[12]) == 1 then
  local out = {'dup', 0, 0}
  for i = 1, tonumber(ARGV[11]) do out[#out + 1] = ARGV[11 + 3 * i - 2] end
  return out
end
if tonumber(ARGV[5]) > 0 then
  local prev = redis.call('GET', KEYS[8])
  if prev then
    local out = {'dup', 0, 0}
    for _, id in ipairs(cjson.decode(prev)) do out[#out + 1] = id end
    return out
  end
end
local due = now_ms
if ARGV[4] ~= '' then due = tonumber(ARGV[4]) elseif ARGV[3] ~= '' then due = now_ms + tonumber(ARGV[3]) end
local limit = tonumber(ARGV[9])
if limit > 0 then
  local last = tonumber(redis.call('HGET', KEYS[10], r) or '-1')
  if last < 0 then return {'window', -1} end
  if due > last + limit then return {'window', last + limit} end
end
local key = ARGV[6]
if key ~= '' then
  local existing = redis.call('HGET', KEYS[6], key)
  if existing then
    local st = redis.call('HGET', KEYS[2], existing)
    local live = false
    if st then
      local s = cjson.decode(st).s
      live = (s == 'scheduled' or s == 'queued' or s == 'waiting')
    end
    if live and ARGV[7] ~= '1' then return {'keyexists', existing} end
    if live then
      local d = cjson.decode(st)
      d.s = 'cancelled'; d.u = now_ms; d.e = {kind = 'replaced', message = 'replaced by a newer follow-up with the same key'}
      redis.call('HSET', KEYS[2], existing, cjson.encode(d))
      redis.call('ZREM', KEYS[5], existing)
    end
  end
end
local n = tonumber(ARGV[11])
local scheduled = due > now_ms
local ids = {}
for i = 1, n do
  local id, job, rc = ARGV[11 + 3 * i - 2], ARGV[11 + 3 * i - 1], ARGV[11 + 3 * i]
  ids[#ids + 1] = id
  redis.call('HSET', KEYS[1], id, job)
  local st = {s = scheduled and 'scheduled' or 'queued', a = 0, rc = rc, c = now_ms, u = now_ms, r = r}
  if scheduled then st.d = due end
  if key ~= '' then st.k = key end
  if ARGV[8] == '1' then st.cor = 1; redis.call('SADD', KEYS[7], id) end
  redis.call('HSET', KEYS[2], id, cjson.encode(st))
  if scheduled then redis.call('ZADD', KEYS[5], due, id) else redis.call('RPUSH', KEYS[3], id) end
end
if key ~= '' then redis.call('HSET', KEYS[6], key, ids[1]) end
if tonumber(ARGV[5]) > 0 then redis.call('SET', KEYS[8], cjson.encode(ids), 'EX', tonumber(ARGV[5])) end
redis.call('HINCRBY', KEYS[9], 'accepted', n)
local publish = 0
if not scheduled and not redis.call('ZSCORE', KEYS[4], r) then
  redis.call('ZADD', KEYS[4], now_ms + tonumber(ARGV[10]), r)
  publish = 1
end
local out = {'new', publish, due}
for _, id in ipairs(ids) do out[#out + 1] = id end
return out
