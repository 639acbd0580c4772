-- enqueue: accept one job or an ordered unit of jobs (a sequence) for ONE lane, atomically.
-- KEYS[1..8] account block (see _lifecycle.lua)   KEYS[9] lane:<r>   KEYS[10] ready (unused: the
-- prelude's lane-scheduling keys decide)
-- KEYS[11] idem:<k> (or a dummy)   KEYS[12] win
-- ARGV[1..4] clock and retention (see _lifecycle.lua)   ARGV[5] lane (recipient, 'c:<id>' for a
-- private reply)   ARGV[6] delay ms ('' = none)   ARGV[7] at ms ('' = none)
-- ARGV[8] idempotency ttl s (0 = no key)   ARGV[9] follow-up key ('')   ARGV[10] replace (0/1)
-- ARGV[11] cancel_on_reply (0/1)   ARGV[12] window limit ms (0 = no check)   ARGV[13] dispatch grace ms
-- ARGV[14] ttl ms ('' = none)   ARGV[15] expires_at ms ('' = none)   ARGV[16] maximum age ms
-- ARGV[17] request fingerprint (for the idempotency key)   ARGV[18] priority (h | n | l)
-- ARGV[19] backlog limit: due jobs the account may have queued (0 = no limit)   ARGV[20] n
-- then n x (job id, job json, rate class) from ARGV[21]
-- Returns {"new", publish(0/1), due_ms, ids...}
--       | {"dup", 0, 0, ids...} (idempotency key seen with the same request, or this very call
--         already ran: its first job id exists)
--       | {"idemconflict", 0, 0, ids...} (idempotency key seen with a different request)
--       | {"keyexists", existing id} | {"window", closes_at_ms or -1} | {"expiry", due_ms}
--       | {"backlog", jobs over the limit} (a follow-up counts when it comes due, not before)
local lane = ARGV[5]
local n = tonumber(ARGV[20])
local prio = ARGV[18]
local function arg(i, j) return ARGV[20 + 3 * (i - 1) + j] end
-- a retried call whose first run succeeded (its reply was lost): the same ids, never queued twice
if redis.call('HEXISTS', K.jobs, arg(1, 1)) == 1 then
  local out = {'dup', 0, 0}
  for i = 1, n do out[#out + 1] = arg(i, 1) end
  return out
end
if tonumber(ARGV[8]) > 0 then
  local prev = redis.call('GET', KEYS[11])
  if prev then
    local rec = cjson.decode(prev)
    local ids, fp = rec, nil
    if rec.ids then ids, fp = rec.ids, rec.fp end
    local out = {(fp and fp ~= ARGV[17]) and 'idemconflict' or 'dup', 0, 0}
    for _, id in ipairs(ids) do out[#out + 1] = id end
    return out
  end
end
local due = now_ms
if ARGV[7] ~= '' then due = tonumber(ARGV[7]) elseif ARGV[6] ~= '' then due = now_ms + tonumber(ARGV[6]) end
if due < now_ms then due = now_ms end  -- 'at' in the past means now
local ttl_ms = ARGV[14] ~= '' and tonumber(ARGV[14]) or nil
local expires_at_ms = ARGV[15] ~= '' and tonumber(ARGV[15]) or nil
local expires = expiry(due, ttl_ms, expires_at_ms, tonumber(ARGV[16]))
if expires <= due then return {'expiry', I(due)} end
local limit = tonumber(ARGV[12])
if limit > 0 then
  local last = tonumber(redis.call('HGET', KEYS[12], lane) or '-1')
  if last < 0 then return {'window', -1} end
  if due > last + limit then return {'window', I(last + limit)} end
end
local key = ARGV[9]
if key ~= '' then
  local existing = redis.call('HGET', K.fkey, key)
  if existing then
    local ex = st_get(existing)
    local live = false
    if ex then
      for _, m in ipairs(members(existing, ex)) do
        local o = (m == existing) and ex or st_get(m)
        if o and LIVE[o.state] then live = true end
      end
    end
    if live and ARGV[10] ~= '1' then return {'keyexists', existing} end
    if live then cancel_unit(existing, 'replaced', 'replaced by a newer follow-up with the same key', now_ms) end
  end
end
local scheduled = due > now_ms
local backlog = tonumber(ARGV[19])
if not scheduled and backlog > 0 then
  local over = tonumber(redis.call('HGET', K.stats, 'due_jobs') or '0') + n - backlog
  if over > 0 then return {'backlog', over} end
end
local was_empty = redis.call('LLEN', KEYS[9]) == 0
local ids = {}
local group = n > 1 and string.sub(arg(1, 1), 1, -4) or nil
for i = 1, n do
  local id = arg(i, 1)
  ids[#ids + 1] = id
  redis.call('HSET', K.jobs, id, arg(i, 2))
  local st = {state = scheduled and 'scheduled' or 'queued', attempts = 0, rate_class = arg(i, 3),
    kind = cjson.decode(arg(i, 2)).kind, lane = lane, created_ms = now_ms, updated_ms = now_ms,
    due_ms = due, expires_at_ms = expires, ttl_ms = ttl_ms, group = group, group_size = group and n or nil,
    priority = prio ~= 'n' and prio or nil}
  note(st, 'accepted')
  if scheduled then note(st, 'scheduled', I(due)) end
  if key ~= '' then st.key = key end
  if ARGV[11] == '1' then
    st.cancel_on_reply = true
    redis.call('ZADD', K.cor, 0, cor_member(st, id))
  end
  st_put(id, st)
  ix_add(id, st)
  if scheduled then redis.call('ZADD', K.sched, due, id) else redis.call('RPUSH', KEYS[9], id) end
end
if key ~= '' then redis.call('HSET', K.fkey, key, ids[1]) end
if tonumber(ARGV[8]) > 0 then
  redis.call('SET', KEYS[11], cjson.encode({ids = ids, fp = ARGV[17]}), 'EX', tonumber(ARGV[8]))
end
redis.call('HINCRBY', K.stats, 'accepted', n)
if not scheduled then redis.call('HINCRBY', K.stats, 'due_jobs', n) end
local publish = 0
if not scheduled then
  join_lane(lane, prio, was_empty)
  if admit(lane, tonumber(ARGV[13])) then publish = 1 end
end
local out = {'new', publish, I(due)}
for _, id in ipairs(ids) do out[#out + 1] = id end
return out
