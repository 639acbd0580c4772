-- step: the hot path of a lane. In ONE call: record the outcome of the previous send, then check
-- the account pause, skip ended jobs, expire what is too old, honour the lane hold (typing pause,
-- retry backoff), take a rate-limiter decision (GCRA on the Redis clock) and hand out the next job.
-- KEYS[1..8] account block (see _lifecycle.lua)   KEYS[9] lane:<r>   KEYS[10] lease:<r>
-- KEYS[11] ready (unused: the prelude's lane-scheduling keys decide)   KEYS[12] hold   KEYS[13] rl
-- KEYS[14] pause   KEYS[15] win   KEYS[16] cmt   KEYS[17] usage   KEYS[18] cmtt
-- ARGV[1..4] clock and retention   ARGV[5] lane   ARGV[6] holder token   ARGV[7] 'acquire'|'continue'
-- ARGV[8] lease ms   ARGV[9] previous job id ('')   ARGV[10] previous outcome JSON ('')
-- ARGV[11] yield after the outcome (0/1)   ARGV[12] fingerprint of this process's token ('' = none)
-- ARGV[13] burst   ARGV[14] per-thread min interval us (0 = off)   ARGV[15] usage slowdown decay ms
-- ARGV[16..] class, interval us, class, interval us...
-- Returns {'job', id, job json, state before, attempts, window ms|'', comment state|'', now ms}
--       | {'wait', until ms, why} | {'empty'} | {'busy'} | {'lost'} | {'yield'}
local r, token = ARGV[5], ARGV[6]
local lease_ms = tonumber(ARGV[8])
local PARK_MS = 315360000000      -- lanes of an account whose token was refused sleep until resumed
local TIMEOUTS_MAX, TIMEOUTS_WINDOW_MS, TIMEOUTS_PAUSE_MS = 5, 60000, 30000
local E2E_BUCKETS_S = {0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600}

-- the lease is '<holder>|<expiry ms>' (expiry on the script clock; PX only collects garbage)
local function holder()
  local cur = redis.call('GET', KEYS[10])
  if not cur then return nil, 0 end
  local tok, exp = string.match(cur, '^(.*)|(%d+)$')
  return tok, tonumber(exp or '0')
end
local function renew()
  redis.call('SET', KEYS[10], token .. '|' .. I(now_ms + lease_ms), 'PX', lease_ms * 2 + 60000)
end
local RQ = ready_of(lane_prio(r))   -- the ready set of this lane's priority
if ARGV[7] == 'acquire' then
  redis.call('ZREM', K.adm, r)       -- the lane's Celery message has been taken
  local tok, exp = holder()
  if tok and tok ~= token and exp > now_ms then return {'busy'} end
  renew()
end

local P_FIELDS = {'until', 'reason', 'probe', 'probe_until', 'token_fp', 'fails'}
local function read_pause()
  local v = redis.call('HMGET', KEYS[14], unpack(P_FIELDS))
  return {untl = tonumber(v[1]), reason = v[2], probe = v[3], probe_until = tonumber(v[4] or '0'),
    token_fp = v[5], fails = tonumber(v[6] or '0') or 0}
end
local pause = read_pause()
local function set_pause(untl, reason, fails, fp, detail)
  redis.call('HSET', KEYS[14], 'until', I(untl), 'reason', reason, 'probe', '', 'probe_until', '0',
    'token_fp', fp or '', 'fails', I(fails), 'detail', detail or '', 'since', I(now_ms))
  pause = read_pause()
  emit({type = reason == 'token_invalid' and 'account.reauth_required' or 'account.paused',
    reason = reason, until_ms = reason == 'token_invalid' and cjson.null or untl, detail = detail or ''})
end

-- the probe after a pause got an answer that is not a throttle: the pause is over
local function end_pause()
  local reason, probe_until = pause.reason, pause.probe_until
  redis.call('DEL', KEYS[14])
  pause = read_pause()
  emit({type = 'account.resumed', reason = reason or 'throttled'})
  -- the lanes that slept until the probe's answer wake now, a budget's worth (the rest at their time)
  local room = math.max(ADMIT_MAX, 4)
  for _, rq in ipairs({K.readyh, K.ready, K.readyl}) do
    if room <= 0 then break end
    local sleeping = redis.call('ZRANGEBYSCORE', rq, '(' .. I(now_ms), I(probe_until or now_ms), 'LIMIT', 0, room)
    for _, lane in ipairs(sleeping) do redis.call('ZADD', rq, now_ms, lane) end
    room = room - #sleeping
  end
end

-- 1. the outcome of the previous send (fenced by the holder token stored in the job status)
local prev = ARGV[9]
if prev ~= '' then
  local st = st_get(prev)
  if st and st.state == 'sending' and st.holder == token then
    local o = cjson.decode(ARGV[10])
    local was_probe = pause.probe == prev
    st.updated_ms = now_ms
    st.holder = nil
    if o.err then st.error = o.err end
    if o.o == 'sent' then
      st.message_id = o.mid; st.sent_ms = now_ms
      if o.hold_ms and o.hold_ms > 0 then redis.call('HSET', KEYS[12], r, I(now_ms + o.hold_ms)) end
      if o.cmt then
        redis.call('HSET', KEYS[16], o.cmt, 'used')
        if not redis.call('ZSCORE', KEYS[18], o.cmt) then redis.call('ZADD', KEYS[18], now_ms, o.cmt) end
      end
      if was_probe then end_pause() end
      local e2e = (now_ms - tonumber(st.due_ms or st.created_ms or now_ms)) / 1000
      local bucket = '+Inf'
      for _, b in ipairs(E2E_BUCKETS_S) do if e2e <= b then bucket = tostring(b); break end end
      redis.call('HINCRBY', K.stats, 'e2e:' .. bucket, 1)
      redis.call('HINCRBYFLOAT', K.stats, 'e2e_sum_s', e2e)
      redis.call('HINCRBY', K.stats, 'e2e_count', 1)
      if redis.call('LINDEX', KEYS[9], 0) == prev then redis.call('LPOP', KEYS[9]) end
      finish(prev, st, 'sent', nil, false, now_ms)
    elseif o.o == 'failed' then
      if was_probe then end_pause() end
      if redis.call('LINDEX', KEYS[9], 0) == prev then redis.call('LPOP', KEYS[9]) end
      finish(prev, st, 'failed', o.err, o.dead, now_ms)
    elseif o.o == 'retry' then
      if o.timeout then
        -- sends of this account time out: after TIMEOUTS_MAX in TIMEOUTS_WINDOW_MS, pause the account
        -- (not the cluster) instead of letting its hung calls hold worker threads
        local t = redis.call('HMGET', KEYS[13], 'timeouts', 'timeouts_since')
        local n, since = tonumber(t[1] or '0'), tonumber(t[2] or '0')
        if now_ms - since > TIMEOUTS_WINDOW_MS then n, since = 0, now_ms end
        n = n + 1
        redis.call('HSET', KEYS[13], 'timeouts', I(n), 'timeouts_since', I(since))
        if n >= TIMEOUTS_MAX and not (pause.untl and pause.untl > now_ms) then
          set_pause(now_ms + TIMEOUTS_PAUSE_MS, 'timeouts', 0, '', o.err.message)
          redis.call('HDEL', KEYS[13], 'timeouts', 'timeouts_since')
        end
      end
      st.state = 'waiting'; st.next_attempt_ms = now_ms + o.delay_ms
      note(st, 'retry', o.err and (o.err.code or o.err.kind) and tostring(o.err.code or o.err.kind) or '')
      redis.call('HSET', KEYS[12], r, I(st.next_attempt_ms))
      redis.call('HINCRBY', K.stats, 'retried', 1)
      if was_probe then end_pause() end
      st_put(prev, st)
    elseif o.o == 'throttled' then
      -- concurrent throttled answers join one pause; only a failed probe escalates it
      local held = pause.reason == 'token_invalid' or pause.reason == 'disabled' or pause.reason == 'removed'
      local active = pause.untl ~= nil and (pause.untl > now_ms or held)
      if active and not was_probe then
        if o.pause_ms and now_ms + o.pause_ms > pause.untl then
          redis.call('HSET', KEYS[14], 'until', I(now_ms + o.pause_ms)); pause = read_pause()
        end
      else
        local level = pause.untl and pause.fails or 0
        if was_probe then level = level + 1 end
        local pms = o.pause_ms or math.min(o.pause_base_ms * math.pow(2, level), o.pause_cap_ms)
        set_pause(now_ms + pms, o.reason or 'throttled', level, '', o.err and o.err.message)
      end
      st.state = 'waiting'; st.attempts = math.max(0, (st.attempts or 1) - 1)
      st.next_attempt_ms = pause.untl
      note(st, 'throttled', o.reason or 'throttled')
      redis.call('HINCRBY', K.stats, 'throttled', 1)
      st_put(prev, st)
    elseif o.o == 'reauth' then
      -- Meta refused the token: hold the account (nothing is dead-lettered), refund the attempt
      local fp = (o.fp and o.fp ~= '') and o.fp or ARGV[12]  -- the token that was refused
      local operator_hold = pause.reason == 'disabled' or pause.reason == 'removed'  -- kept as set
      if not operator_hold and not (pause.reason == 'token_invalid' and pause.token_fp == fp) then
        set_pause(now_ms + PARK_MS, 'token_invalid', 0, fp, o.err and o.err.message)
      end
      st.state = 'waiting'; st.attempts = math.max(0, (st.attempts or 1) - 1); st.next_attempt_ms = nil
      note(st, 'token_refused')
      redis.call('HINCRBY', K.stats, 'token_refused', 1)
      st_put(prev, st)
    end
    if o.kind then redis.call('HINCRBY', K.stats, o.o .. ':' .. o.kind, 1) end
    if o.lat then
      redis.call('HINCRBY', K.stats, 'lat:' .. o.lat, 1)
      redis.call('HINCRBYFLOAT', K.stats, 'lat_sum_s', o.lat_s)
    end
    if o.slow then redis.call('HSET', KEYS[13], 'slow', tostring(o.slow), 'slow_at', I(now_ms)) end
    if o.usage_pct then redis.call('HSET', KEYS[17], 'call_count_pct', I(o.usage_pct), 'at', I(now_ms)) end
  end
end

if ARGV[7] == 'continue' and holder() ~= token then return {'lost'} end

local function wait(until_ms, why)
  redis.call('ZADD', RQ, until_ms, r)
  redis.call('ZREM', K.held, r)
  redis.call('DEL', KEYS[10])
  return {'wait', I(until_ms), why}
end

if ARGV[11] == '1' then  -- handed back: its holder publishes it again (looked at after a lease if lost)
  redis.call('ZADD', RQ, now_ms + lease_ms, r)
  redis.call('ZADD', K.adm, now_ms, r)
  redis.call('ZREM', K.held, r)
  redis.call('DEL', KEYS[10])
  return {'yield'}
end

-- 2. the next live job at the head of the lane (ended jobs are dropped, too-old ones expire)
local id, job, st
for _ = 1, 1000 do
  id = redis.call('LINDEX', KEYS[9], 0)
  if not id then
    redis.call('ZREM', RQ, r)
    redis.call('HDEL', K.lprio, r)
    redis.call('HDEL', KEYS[13], 'rs:' .. r)
    redis.call('ZREM', K.held, r)
    redis.call('DEL', KEYS[10])
    redis.call('HDEL', KEYS[12], r)
    redis.call('HDEL', KEYS[13], 'th:' .. r)
    return {'empty'}
  end
  st = st_get(id)
  job = redis.call('HGET', K.jobs, id)
  if st and job and (LIVE[st.state] or st.state == 'sending') then
    if not expired(st, now_ms) then break end
    finish(id, st, 'expired', {kind = 'expired', message = 'not sent before it expired'}, false, now_ms)
  end
  redis.call('LPOP', KEYS[9])
  st = nil
end
if not st then return wait(now_ms, 'skipped') end
local head_id = id
local plain_wait = wait
-- from here on the lane waits for its head job: its timeline says why (once per reason in a row)
wait = function(until_ms, why)
  note(st, 'waiting', why)
  st_put(head_id, st)
  return plain_wait(until_ms, why)
end

-- 3. the account pause (throttle, policy block, refused token) and its single probe
local probe = false
if pause.untl then
  if pause.reason == 'token_invalid' then
    -- only a different, non-empty token goes on (the resume check lifts the pause and wakes lanes)
    if ARGV[12] == '' or ARGV[12] == pause.token_fp then
      return wait(pause.untl, 'paused:token_invalid')
    end
  elseif pause.untl > now_ms then
    return wait(pause.untl, 'paused:' .. (pause.reason or 'throttled'))
  elseif pause.probe ~= '' and pause.probe ~= id and pause.probe_until > now_ms then
    return wait(pause.probe_until, 'probe')  -- another lane's probe is in flight: sleep until it ends
  else
    probe = true
  end
end

-- 4. the lane hold (typing pause, retry backoff)
local hold = redis.call('HGET', KEYS[12], r)
if hold then
  if tonumber(hold) > now_ms then return wait(tonumber(hold), 'hold') end
  redis.call('HDEL', KEYS[12], r)
end

-- 5. rate limits: per-thread pacing, then GCRA per (account, class)
local thread_us = tonumber(ARGV[14])
if thread_us > 0 then
  local last = tonumber(redis.call('HGET', KEYS[13], 'th:' .. r) or '0')
  if now_us < last + thread_us then return wait(math.ceil((last + thread_us) / 1000), 'thread') end
end
local interval = 0
for i = 16, #ARGV, 2 do
  if ARGV[i] == st.rate_class then interval = tonumber(ARGV[i + 1]) end
end
if interval > 0 then
  local sl = redis.call('HMGET', KEYS[13], 'slow', 'slow_at')
  local slow = tonumber(sl[1] or '1')
  if slow > 1 then  -- Meta's usage report fades when it is not repeated
    local left = 1 - (now_ms - tonumber(sl[2] or '0')) / tonumber(ARGV[15])
    slow = 1 + (slow - 1) * math.max(0, left)
  end
  interval = math.floor(interval * slow)
  local burst = tonumber(ARGV[13])
  local tat = tonumber(redis.call('HGET', KEYS[13], st.rate_class .. ':tat') or '0')
  if tat < now_us then tat = now_us end
  local tolerance = (burst - 1) * interval
  if tat - now_us > tolerance then
    -- a lane that must wait gets its own future slot; high-priority lanes take slots ahead of the
    -- ones normal and low lanes hold; a reservation further ahead than the admitted lanes can
    -- need is stale (cancelled work) and does not push later sends back
    local wake = tat - tolerance
    local horizon = now_us + interval * math.max(burst, ADMIT_MAX, 1)
    local held = tonumber(redis.call('HGET', KEYS[13], 'rs:' .. r) or '0')
    if held > now_us and held <= horizon then
      wake = math.max(wake, held)  -- this lane already holds a slot: keep it, reserve no other
    else
      local wkey = st.rate_class .. ':wake' .. ((RQ == K.readyh) and 'h' or '')
      local slot = tonumber(redis.call('HGET', KEYS[13], wkey) or '0')
      if slot > horizon then slot = horizon end
      if slot > wake then wake = slot end
      redis.call('HSET', KEYS[13], wkey, I(wake + interval))
    end
    redis.call('HSET', KEYS[13], 'rs:' .. r, I(wake))
    redis.call('HINCRBY', K.stats, 'limiter_waits', 1)
    return wait(math.ceil(wake / 1000), 'rate')
  end
  redis.call('HSET', KEYS[13], st.rate_class .. ':tat', I(tat + interval))
  redis.call('HDEL', KEYS[13], 'rs:' .. r)
end
if thread_us > 0 then redis.call('HSET', KEYS[13], 'th:' .. r, I(now_us)) end

-- 6. hand the job out
local before = st.state
st.state = 'sending'; st.attempts = (st.attempts or 0) + 1; st.holder = token; st.updated_ms = now_ms
st.sending_since_ms = now_ms; st.next_attempt_ms = nil
note(st, 'attempt', tostring(st.attempts))
st_put(id, st)
renew()
redis.call('ZADD', RQ, now_ms + lease_ms, r)
redis.call('ZADD', K.held, now_ms + lease_ms, r)
if probe then redis.call('HSET', KEYS[14], 'probe', id, 'probe_until', I(now_ms + lease_ms)) end
local win = redis.call('HGET', KEYS[15], r) or ''
local cmt = ''
if string.sub(r, 1, 2) == 'c:' then cmt = redis.call('HGET', KEYS[16], string.sub(r, 3)) or '' end
return {'job', id, job, before, st.attempts, win, cmt, I(now_ms)}
