-- lifecycle prelude: a job's life, shared by every script that changes a job's state (BullMQ-style
-- includes: the same step is written once here and never copied). dmworker/lifecycle.py is the
-- Python side of the same contract (states, transitions, the status record's fields).
--
-- Every script that uses this prelude receives the ACCOUNT BLOCK as KEYS[1..8] and the retention
-- settings as ARGV[2..4]; its own keys start at KEYS[9] and its own arguments at ARGV[5]:
--   KEYS[1] jobs   KEYS[2] st   KEYS[3] sched   KEYS[4] fkey   KEYS[5] done   KEYS[6] dlq
--   KEYS[7] stats  KEYS[8] cor
--   ARGV[1] now override   ARGV[2] retention ms   ARGV[3] dead-letter retention ms
--   ARGV[4] dead-letter cap (count)
-- and, LAST, keys and arguments this prelude takes off (so each script's own KEYS and ARGV read as
-- its header says), in this order: the lane-scheduling keys ready (normal priority), readyh (high),
-- readyl (low), lprio (lane -> its priority, h or l; normal when absent), adm (lanes with a Celery
-- message outstanding -> ms it was published), held (lanes a worker holds -> lease expiry ms); then mids (message id -> job id), unseen (sent jobs
-- not yet seen: "<lane>|<sent ms, 13 digits>|<job id>", by lex range), events (the account's event
-- stream), ix (the dashboard's search index, below), hist (sends, failures and dead letters per
-- minute over the last hour); ARGV: the admission budget (lane messages an account may have outstanding; 0 = no
-- limit), then how long events are kept, ms (0 = no events).
local HIST, IX = table.remove(KEYS), table.remove(KEYS)
local EVENTS, UNSEEN, MIDS = table.remove(KEYS), table.remove(KEYS), table.remove(KEYS)
local HELD, ADM, LPRIO, READYL, READYH, READY = table.remove(KEYS), table.remove(KEYS), table.remove(KEYS),
  table.remove(KEYS), table.remove(KEYS), table.remove(KEYS)
local EVENTS_KEEP_MS = tonumber(table.remove(ARGV))
local ADMIT_MAX = tonumber(table.remove(ARGV))
local K = {jobs = KEYS[1], st = KEYS[2], sched = KEYS[3], fkey = KEYS[4], done = KEYS[5],
  dlq = KEYS[6], stats = KEYS[7], cor = KEYS[8], mids = MIDS, unseen = UNSEEN, events = EVENTS,
  ready = READY, readyh = READYH, readyl = READYL, lprio = LPRIO, adm = ADM, held = HELD, ix = IX, hist = HIST}
local ACCOUNT = string.match(KEYS[1], '{(.-)}') or ''
local RETENTION_MS, DLQ_RETENTION_MS, DLQ_MAX = tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local LIVE = {scheduled = true, queued = true, waiting = true}
local FINAL = {sent = true, failed = true, cancelled = true, expired = true, seen = true}
local HISTORY_MAX = 24
local function I(x) return string.format('%d', x) end

-- an event, written in the same call as the change it reports (XADD to the account's stream, trimmed
-- by age on the server's clock: MINID)
local EMITTED = 0  -- 1 once this call wrote an event (step.lua tells its caller, who marks the account)
local function emit(event)
  if EVENTS_KEEP_MS <= 0 then return end
  EMITTED = 1
  local t = redis.call('TIME')
  local server_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  event.account = ACCOUNT; event.created_ms = now_ms
  redis.call('XADD', K.events, 'MINID', '~', I(server_ms - EVENTS_KEEP_MS), '*', 'e', cjson.encode(event))
end

-- the job's timeline, kept in its status record (bounded: the first entry and the latest ones; a
-- repeat of the last entry only counts up): {ms, what, detail, count}
local function note(st, what, detail)
  local h = st.history or {}
  local last = h[#h]
  detail = detail or ''
  if last and last[2] == what and last[3] == detail then
    last[4] = (last[4] or 1) + 1
  else
    h[#h + 1] = {now_ms, what, detail}
    if #h > HISTORY_MAX then table.remove(h, 2) end
  end
  st.history = h
end

-- lanes and their priority: a lane waits in the ready set of its priority; between lanes, high goes
-- before normal before low (a lane itself stays FIFO)
local PRIO_RANK = {h = 3, n = 2, l = 1}
local function lane_prio(lane) return redis.call('HGET', K.lprio, lane) or 'n' end
local function ready_of(p) return (p == 'h' and K.readyh) or (p == 'l' and K.readyl) or K.ready end
local function set_prio(lane, p)
  if p == 'n' then redis.call('HDEL', K.lprio, lane) else redis.call('HSET', K.lprio, lane, p) end
end
-- a job of priority p joins lane: a new lane takes p; a waiting lane is raised to p if p is higher
local function join_lane(lane, p, was_empty)
  local cur = lane_prio(lane)
  if was_empty then
    local s = redis.call('ZSCORE', ready_of(cur), lane)
    set_prio(lane, p)
    if s and cur ~= p then redis.call('ZREM', ready_of(cur), lane); redis.call('ZADD', ready_of(p), s, lane) end
    return
  end
  if PRIO_RANK[p] <= PRIO_RANK[cur] then return end
  set_prio(lane, p)
  local s = redis.call('ZSCORE', ready_of(cur), lane)
  if s then redis.call('ZREM', ready_of(cur), lane); redis.call('ZADD', ready_of(p), s, lane) end
end

-- a lane has become ready: publish it now if the account's admission budget allows (its Celery
-- message is then outstanding until a worker takes it), else leave it due for a dispatcher, which
-- admits lanes as messages are taken. Returns whether to publish.
-- lanes of the account counted against its budget: messages outstanding, and lanes being worked on
-- (a worker holds them): an account whose sends hang cannot take more than its budget of threads
local function in_use(grace_ms)
  redis.call('ZREMRANGEBYSCORE', K.adm, '-inf', now_ms - 2 * grace_ms)  -- messages presumed lost
  redis.call('ZREMRANGEBYSCORE', K.held, '-inf', now_ms)            -- holders presumed dead
  return redis.call('ZCARD', K.adm) + redis.call('ZCARD', K.held)
end

local function admit(lane, grace_ms)
  local rq = ready_of(lane_prio(lane))
  if redis.call('ZSCORE', rq, lane) then return false end
  if ADMIT_MAX > 0 then
    if in_use(grace_ms) >= ADMIT_MAX then
      redis.call('ZADD', rq, now_ms, lane)
      return false
    end
    redis.call('ZADD', K.adm, now_ms, lane)
  end
  redis.call('ZADD', rq, now_ms + grace_ms, lane)
  return true
end

local function recipient_of(st)
  local lane = st.lane or ''
  if st.kind == 'private_reply' and string.sub(lane, 1, 2) == 'c:' then return string.sub(lane, 3) end
  return lane
end

local function job_event(kind, id, st, extra)
  local ev = {type = kind, job_id = id, recipient = recipient_of(st), kind = st.kind or cjson.null,
    state = st.state, message_id = st.message_id or cjson.null, attempts = st.attempts or 0,
    error = st.error or cjson.null}
  for k, v in pairs(extra or {}) do ev[k] = v end
  emit(ev)
end

local function unseen_member(st, id)
  return (st.lane or '') .. '|' .. string.format('%013d', tonumber(st.sent_ms or 0)) .. '|' .. id
end

-- status records written before the field names were spelled out (one-letter names) still load
local OLD_NAMES = {s = 'state', a = 'attempts', rc = 'rate_class', c = 'created_ms', u = 'updated_ms',
  r = 'lane', d = 'due_ms', k = 'key', cor = 'cancel_on_reply', e = 'error', m = 'message_id',
  sent = 'sent_ms', n = 'next_attempt_ms', h = 'holder', ts = 'sending_since_ms', p = 'promoted_ms',
  dead = 'dead_lettered', replayed = 'replays'}

local function st_get(id)
  local raw = redis.call('HGET', K.st, id)
  if not raw then return nil end
  local st = cjson.decode(raw)
  if st.s ~= nil and st.state == nil then
    local named = {}
    for k, v in pairs(st) do named[OLD_NAMES[k] or k] = v end
    if named.cancel_on_reply then named.cancel_on_reply = true end
    if named.dead_lettered then named.dead_lettered = true end
    st = named
  end
  return st
end

local function st_put(id, st) redis.call('HSET', K.st, id, cjson.encode(st)) end

-- the search index of the operator's dashboard: one lex-ordered ZSET per account, every member of
-- score 0 (dmworker/jobindex.py reads it and writes the same formats); written where a job is
-- accepted or changes state, removed with the job, so a search never scans Redis:
--   a|<created ms, 13 digits>|<id>           every job, by acceptance time
--   r|<lane>|<created>|<id>                   by recipient (lane: the IGSID, or c:<comment id>)
--   s|<bucket>|<created>|<id>                 by state: scheduled, pending (queued, waiting,
--                                             sending), sent, seen, failed, cancelled, expired, dead
--   k|<follow-up key>|<created>|<id>          by key (keyed jobs)
--   d|<error kind>|<dead-lettered ms>|<id>    dead letters by error
local function c13(ms) return string.format('%013d', tonumber(ms or 0)) end
local PENDING = {queued = true, waiting = true, sending = true}
local function bucket(st)
  if st.dead_lettered then return 'dead' end
  if PENDING[st.state] then return 'pending' end
  return st.state or 'pending'
end
local function error_kind(st)
  return (type(st.error) == 'table' and type(st.error.kind) == 'string' and st.error.kind) or 'unknown'
end
local function dead_member(id, st) return 'd|' .. error_kind(st) .. '|' .. c13(st.ended_ms) .. '|' .. id end
local function ix_add(id, st)
  local c = c13(st.created_ms)
  redis.call('ZADD', K.ix, 0, 'a|' .. c .. '|' .. id, 0, 'r|' .. (st.lane or '') .. '|' .. c .. '|' .. id,
    0, 's|' .. bucket(st) .. '|' .. c .. '|' .. id)
  if st.key then redis.call('ZADD', K.ix, 0, 'k|' .. st.key .. '|' .. c .. '|' .. id) end
end
-- st has changed state; `old` is its bucket before the change
local function ix_state(id, st, old)
  local new = bucket(st)
  if old == new then return end
  local c = c13(st.created_ms)
  redis.call('ZREM', K.ix, 's|' .. old .. '|' .. c .. '|' .. id)
  redis.call('ZADD', K.ix, 0, 's|' .. new .. '|' .. c .. '|' .. id)
end
local function ix_del(id, st)
  local c = c13(st.created_ms)
  redis.call('ZREM', K.ix, 'a|' .. c .. '|' .. id, 'r|' .. (st.lane or '') .. '|' .. c .. '|' .. id,
    's|' .. bucket(st) .. '|' .. c .. '|' .. id)
  if st.key then redis.call('ZREM', K.ix, 'k|' .. st.key .. '|' .. c .. '|' .. id) end
  if st.dead_lettered then redis.call('ZREM', K.ix, dead_member(id, st)) end
end

-- sends, failures and dead letters per minute, for the last hour: a ring of 60 fields per kind
-- ("<what>:<minute mod 60>" -> "<minute>:<count>"), the key expiring 2 h after its last write
local function tally(what, now)
  local m = math.floor(now / 60000)
  local f = what .. ':' .. (m % 60)
  local cur = redis.call('HGET', K.hist, f)
  local n = 0
  if cur then
    local pm, pc = string.match(cur, '^(%d+):(%d+)$')
    if tonumber(pm) == m then n = tonumber(pc) end
  end
  redis.call('HSET', K.hist, f, m .. ':' .. (n + 1))
  redis.call('PEXPIRE', K.hist, 7200000)
end

-- the ids of the unit (a sequence) a job belongs to: '<group>-00', '<group>-01', ...; a lone job is
-- its own unit
local function members(id, st)
  local n = tonumber(st.group_size or 1)
  if n <= 1 or not st.group then return {id} end
  local out = {}
  for i = 0, n - 1 do out[#out + 1] = st.group .. string.format('-%02d', i) end
  return out
end

local function cor_member(st, id) return (st.lane or '') .. '|' .. id end

-- a follow-up key stays bound to its unit until every job of the unit has ended
local function release_key(id, st)
  if not st.key then return end
  local unit = members(id, st)
  if redis.call('HGET', K.fkey, st.key) ~= unit[1] then return end
  for _, m in ipairs(unit) do
    if m ~= id then
      local o = st_get(m)
      if o and not FINAL[o.state] then return end
    end
  end
  redis.call('HDEL', K.fkey, st.key)
end

-- forget ended jobs past their retention: at most `limit` of each index (bounded work per call)
local function trim_some(now, limit)
  local n = 0
  for _, idx in ipairs({{K.done, RETENTION_MS}, {K.dlq, DLQ_RETENTION_MS}}) do
    local old = redis.call('ZRANGEBYSCORE', idx[1], '-inf', now - idx[2], 'LIMIT', 0, limit)
    for _, id in ipairs(old) do
      local st = st_get(id)
      if st then
        if type(st.message_id) == 'string' then redis.call('HDEL', K.mids, st.message_id) end
        if st.state == 'sent' then redis.call('ZREM', K.unseen, unseen_member(st, id)) end
        ix_del(id, st)
      end
      redis.call('HDEL', K.jobs, id)
      redis.call('HDEL', K.st, id)
      redis.call('ZREM', idx[1], id)
      n = n + 1
    end
  end
  return n
end

-- enter an end state: the one place that does what an end state implies
--   sent | failed | cancelled | expired: retention index (or the dead-letter set), off the follow-up
--   schedule, off the cancel-on-reply index, key released once the unit has ended, counters
local function finish(id, st, state, err, dead, now)
  if st.state ~= 'scheduled' then  -- it was counted among the account's due jobs
    if redis.call('HINCRBY', K.stats, 'due_jobs', -1) < 0 then redis.call('HSET', K.stats, 'due_jobs', 0) end
  end
  local was = bucket(st)
  st.state = state; st.updated_ms = now; st.ended_ms = now
  st.holder = nil; st.next_attempt_ms = nil
  if err then st.error = err end
  local mid = type(st.message_id) == 'string' and st.message_id or nil  -- typing: no message id
  note(st, state, err and err.kind or mid)
  if state == 'sent' then
    if mid then redis.call('HSET', K.mids, mid, id) end
    redis.call('ZADD', K.unseen, 0, unseen_member(st, id))
  end
  redis.call('ZREM', K.sched, id)
  if st.cancel_on_reply then redis.call('ZREM', K.cor, cor_member(st, id)) end
  if dead then
    st.dead_lettered = true
    redis.call('ZADD', K.dlq, now, id)
    if DLQ_MAX > 0 and redis.call('ZCARD', K.dlq) > DLQ_MAX then
      local oldest = redis.call('ZPOPMIN', K.dlq)
      if oldest[1] and oldest[1] ~= id then
        local gone = st_get(oldest[1])
        if gone then ix_del(oldest[1], gone) end
        redis.call('HDEL', K.jobs, oldest[1]); redis.call('HDEL', K.st, oldest[1])
        redis.call('HINCRBY', K.stats, 'dead_letters_dropped', 1)
      end
    end
  else
    redis.call('ZADD', K.done, now, id)
  end
  redis.call('HINCRBY', K.stats, state, 1)
  ix_state(id, st, was)
  if dead then redis.call('ZADD', K.ix, 0, dead_member(id, st)) end
  if state == 'sent' then tally('sent', now) elseif state == 'failed' or state == 'expired' then tally('failed', now) end
  if dead then tally('dead', now) end
  if err and err.kind and (state == 'failed' or state == 'expired') then
    redis.call('HINCRBY', K.stats, 'reason:' .. err.kind, 1)
  end
  st_put(id, st)
  release_key(id, st)
  job_event('job.' .. state, id, st, state == 'cancelled' and {why = err and err.kind or 'cancelled'} or nil)
  trim_some(now, 2)  -- every ending pays for up to two old ones: trimming keeps up with any send rate
end

-- cancel every job of `id`'s unit that has not been sent: {count, state of the first job not
-- cancelled ('' when all were)}
local function cancel_unit(id, kind, message, now)
  local st = st_get(id)
  if not st then return 0, 'notfound' end
  local n, other = 0, ''
  for _, m in ipairs(members(id, st)) do
    local o = (m == id) and st or st_get(m)
    if o and LIVE[o.state] then
      finish(m, o, 'cancelled', {kind = kind, message = message}, false, now)
      n = n + 1
    elseif o and other == '' then
      other = o.state
    end
  end
  return n, other
end

-- the expiry of a job that becomes due at `due`: its own ttl or expires_at, else the maximum age
local function expiry(due, ttl_ms, expires_at_ms, max_age_ms)
  if expires_at_ms then return expires_at_ms end
  return due + (ttl_ms or max_age_ms)
end

local function expired(st, now)
  return st.expires_at_ms ~= nil and now > tonumber(st.expires_at_ms)
end
