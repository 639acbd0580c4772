-- step: the hot path of lanes. In ONE call: record the outcome of the previous send, then check
-- the account pause, skip ended jobs, expire what is too old, honour the lane hold (typing pause,
-- retry backoff), take a rate-limiter decision (GCRA on the Redis clock) and hand out the next job.
-- When the caller names the next lane of its Celery message (ARGV[16]) and this lane has no job to
-- hand out now (it is empty, waits, was handed back, was lost or is busy), that next lane is taken
-- and stepped in the same call exactly as a separate 'acquire' step would do it: a message of
-- one-message lanes costs one call per lane, not two.
-- When the caller asks for it (ARGV[18] > 0) and a lane ended in this call, lanes the account has
-- due and waiting for admission are claimed for the caller as a dispatcher would claim them for a
-- new message (high priority first, at most ARGV[18], within the admission budget; marked admitted,
-- so counted until they are taken; not only a whole group: the caller's thread is there already, no
-- message is to be paid for): its worker thread goes on with them instead of a Celery message.
-- KEYS[1..8] account block (see _lifecycle.lua)   KEYS[9] lane:<r>   KEYS[10] lease:<r>
-- KEYS[11] hold   KEYS[12] rl   KEYS[13] pause   KEYS[14] win   KEYS[15] cmt   KEYS[16] usage
-- KEYS[17] cmtt   KEYS[18] lane:<next>   KEYS[19] lease:<next> (18 and 19 only with a next lane)
-- ARGV[1..4] clock and retention   ARGV[5] lane   ARGV[6] holder token   ARGV[7] 'acquire'|'continue'
-- ARGV[8] lease ms   ARGV[9] previous job id ('')   ARGV[10] previous outcome JSON ('')
-- ARGV[11] yield after the outcome (0/1)   ARGV[12] fingerprint of this process's token ('' = none)
-- ARGV[13] burst   ARGV[14] per-thread min interval us (0 = off)   ARGV[15] usage slowdown decay ms
-- ARGV[16] next lane ('' = none)   ARGV[17] the next lane's holder token
-- ARGV[18] lanes to claim when a lane ends (0 = none)   ARGV[19] dispatch grace ms
-- ARGV[20..] class, interval us, class, interval us...
-- Returns, for one lane: {'job', id, job json, state before, attempts, window ms|'', comment state|'',
--   now ms} | {'wait', until ms, why} | {'empty'} | {'busy'} | {'lost'} | {'yield'};
-- with a next lane or lanes to claim: {this lane's reply, the next one's ({} when not taken), the
--   lanes claimed, 1 if an event was written else 0} (an event without an outcome to record: a
--   job that expired at the head of a lane the call took, which the caller then marks).
local lease_ms = tonumber(ARGV[8])
local TOKEN_FP, BURST, THREAD_US, USAGE_DECAY_MS = ARGV[12], tonumber(ARGV[13]), tonumber(ARGV[14]), tonumber(ARGV[15])
local HOLD, RL, PAUSE, WIN, CMT, USAGE, CMTT = KEYS[11], KEYS[12], KEYS[13], KEYS[14], KEYS[15], KEYS[16], KEYS[17]
local INTERVAL = {}
for i = 20, #ARGV, 2 do INTERVAL[ARGV[i]] = tonumber(ARGV[i + 1]) end
local PARK_MS = 315360000000      -- lanes of an account whose token was refused sleep until resumed
local TIMEOUTS_MAX, TIMEOUTS_WINDOW_MS, TIMEOUTS_PAUSE_MS = 5, 60000, 30000
local E2E_BUCKETS_S = {0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600}

-- what a retry's timeline entry names: the Graph error code, else the error's kind ('' if none;
-- a JSON null decodes to cjson.null, which is not nil)
local function err_tag(err)
  if type(err) ~= 'table' then return '' end
  for _, v in ipairs({err.code, err.kind}) do
    if v ~= nil and v ~= cjson.null then return tostring(v) end
  end
  return ''
end

local P_FIELDS = {'until', 'reason', 'probe', 'probe_until', 'token_fp', 'fails'}
local function read_pause()
  local v = redis.call('HMGET', PAUSE, unpack(P_FIELDS))
  return {untl = tonumber(v[1]), reason = v[2], probe = v[3], probe_until = tonumber(v[4] or '0'),
    token_fp = v[5], fails = tonumber(v[6] or '0') or 0}
end
local pause = read_pause()  -- the account's pause: kept current by the functions that change it
local function set_pause(untl, reason, fails, fp, detail)
  redis.call('HSET', PAUSE, 'until', I(untl), 'reason', reason, 'probe', '', 'probe_until', '0',
    'token_fp', fp or '', 'fails', I(fails), 'detail', detail or '', 'since', I(now_ms))
  pause = read_pause()
  emit({type = reason == 'token_invalid' and 'account.reauth_required' or 'account.paused',
    reason = reason, until_ms = reason == 'token_invalid' and cjson.null or untl, detail = detail or ''})
end

-- the probe after a pause got an answer that is not a throttle: the pause is over
local function end_pause()
  local reason, probe_until = pause.reason, pause.probe_until
  redis.call('DEL', PAUSE)
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

-- one lane: r, its list and lease keys, the holder's token; mode 'acquire' | 'continue'; the
-- previous job's id and outcome JSON ('' when none); give_back: hand the lane back after the outcome
local function step_lane(r, LANE, LEASE, token, mode, prev, outcome, give_back)
  -- the lease is '<holder>|<expiry ms>' (expiry on the script clock; PX only collects garbage)
  local function holder()
    local cur = redis.call('GET', LEASE)
    if not cur then return nil, 0 end
    local tok, exp = string.match(cur, '^(.*)|(%d+)$')
    return tok, tonumber(exp or '0')
  end
  local function renew()
    redis.call('SET', LEASE, token .. '|' .. I(now_ms + lease_ms), 'PX', lease_ms * 2 + 60000)
  end
  local RQ = ready_of(lane_prio(r))   -- the ready set of this lane's priority
  if mode == 'acquire' then
    redis.call('ZREM', K.adm, r)       -- the lane's Celery message has been taken
    local tok, exp = holder()
    if tok and tok ~= token and exp > now_ms then return {'busy'} end
    renew()
  end

  -- 1. the outcome of the previous send (fenced by the holder token stored in the job status)
  if prev ~= '' then
    local st = st_get(prev)
    if st and st.state == 'sending' and st.holder == token then
      local o = cjson.decode(outcome)
      local was_probe = pause.probe == prev
      st.updated_ms = now_ms
      st.holder = nil
      if o.err then st.error = o.err end
      if o.o == 'sent' then
        st.message_id = o.mid; st.sent_ms = now_ms
        if o.hold_ms and o.hold_ms > 0 then redis.call('HSET', HOLD, r, I(now_ms + o.hold_ms)) end
        if o.cmt then
          redis.call('HSET', CMT, o.cmt, 'used')
          if not redis.call('ZSCORE', CMTT, o.cmt) then redis.call('ZADD', CMTT, now_ms, o.cmt) end
        end
        if was_probe then end_pause() end
        local e2e = (now_ms - tonumber(st.due_ms or st.created_ms or now_ms)) / 1000
        local bucket = '+Inf'
        for _, b in ipairs(E2E_BUCKETS_S) do if e2e <= b then bucket = tostring(b); break end end
        redis.call('HINCRBY', K.stats, 'e2e:' .. bucket, 1)
        redis.call('HINCRBYFLOAT', K.stats, 'e2e_sum_s', e2e)
        redis.call('HINCRBY', K.stats, 'e2e_count', 1)
        if redis.call('LINDEX', LANE, 0) == prev then redis.call('LPOP', LANE) end
        finish(prev, st, 'sent', nil, false, now_ms)
      elseif o.o == 'failed' then
        if was_probe then end_pause() end
        if redis.call('LINDEX', LANE, 0) == prev then redis.call('LPOP', LANE) end
        finish(prev, st, 'failed', o.err, o.dead, now_ms)
      elseif o.o == 'retry' then
        if o.timeout then
          -- sends of this account time out: after TIMEOUTS_MAX in TIMEOUTS_WINDOW_MS, pause the
          -- account (not the cluster) instead of letting its hung calls hold worker threads
          local t = redis.call('HMGET', RL, 'timeouts', 'timeouts_since')
          local n, since = tonumber(t[1] or '0'), tonumber(t[2] or '0')
          if now_ms - since > TIMEOUTS_WINDOW_MS then n, since = 0, now_ms end
          n = n + 1
          redis.call('HSET', RL, 'timeouts', I(n), 'timeouts_since', I(since))
          if n >= TIMEOUTS_MAX and not (pause.untl and pause.untl > now_ms) then
            set_pause(now_ms + TIMEOUTS_PAUSE_MS, 'timeouts', 0, '', o.err.message)
            redis.call('HDEL', RL, 'timeouts', 'timeouts_since')
          end
        end
        st.state = 'waiting'; st.next_attempt_ms = now_ms + o.delay_ms
        note(st, 'retry', o.timeout and 'timeout' or err_tag(o.err))
        redis.call('HSET', HOLD, r, I(st.next_attempt_ms))
        redis.call('HINCRBY', K.stats, 'retried', 1)
        if was_probe then end_pause() end
        st_put(prev, st)
      elseif o.o == 'throttled' then
        -- concurrent throttled answers join one pause; only a failed probe escalates it
        local held = pause.reason == 'token_invalid' or pause.reason == 'disabled' or pause.reason == 'removed'
        local active = pause.untl ~= nil and (pause.untl > now_ms or held)
        if active and not was_probe then
          if o.pause_ms and now_ms + o.pause_ms > pause.untl then
            redis.call('HSET', PAUSE, 'until', I(now_ms + o.pause_ms)); pause = read_pause()
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
        local fp = (o.fp and o.fp ~= '') and o.fp or TOKEN_FP  -- the token that was refused
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
      if o.slow then redis.call('HSET', RL, 'slow', tostring(o.slow), 'slow_at', I(now_ms)) end
      if o.usage_pct then redis.call('HSET', USAGE, 'call_count_pct', I(o.usage_pct), 'at', I(now_ms)) end
    end
  end

  if mode == 'continue' and holder() ~= token then return {'lost'} end

  local function wait(until_ms, why)
    redis.call('ZADD', RQ, until_ms, r)
    redis.call('ZREM', K.held, r)
    redis.call('DEL', LEASE)
    return {'wait', I(until_ms), why}
  end

  if give_back then  -- handed back: its holder publishes it again (looked at after a lease if lost)
    redis.call('ZADD', RQ, now_ms + lease_ms, r)
    redis.call('ZADD', K.adm, now_ms, r)
    redis.call('ZREM', K.held, r)
    redis.call('DEL', LEASE)
    return {'yield'}
  end

  -- 2. the next live job at the head of the lane (ended jobs are dropped, too-old ones expire)
  local id, job, st
  for _ = 1, 1000 do
    id = redis.call('LINDEX', LANE, 0)
    if not id then
      redis.call('ZREM', RQ, r)
      redis.call('HDEL', K.lprio, r)
      redis.call('HDEL', RL, 'rs:' .. r)
      redis.call('ZREM', K.held, r)
      redis.call('DEL', LEASE)
      redis.call('HDEL', HOLD, r)
      redis.call('HDEL', RL, 'th:' .. r)
      return {'empty'}
    end
    st = st_get(id)
    job = redis.call('HGET', K.jobs, id)
    if st and job and (LIVE[st.state] or st.state == 'sending') then
      if not expired(st, now_ms) then break end
      finish(id, st, 'expired', {kind = 'expired', message = 'not sent before it expired'}, false, now_ms)
    end
    redis.call('LPOP', LANE)
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
      if TOKEN_FP == '' or TOKEN_FP == pause.token_fp then
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
  local hold = redis.call('HGET', HOLD, r)
  if hold then
    if tonumber(hold) > now_ms then return wait(tonumber(hold), 'hold') end
    redis.call('HDEL', HOLD, r)
  end

  -- 5. rate limits: per-thread pacing, then GCRA per (account, class)
  if THREAD_US > 0 then
    local last = tonumber(redis.call('HGET', RL, 'th:' .. r) or '0')
    if now_us < last + THREAD_US then return wait(math.ceil((last + THREAD_US) / 1000), 'thread') end
  end
  local interval = INTERVAL[st.rate_class] or 0
  if interval > 0 then
    local sl = redis.call('HMGET', RL, 'slow', 'slow_at')
    local slow = tonumber(sl[1] or '1')
    if slow > 1 then  -- Meta's usage report fades when it is not repeated
      local left = 1 - (now_ms - tonumber(sl[2] or '0')) / USAGE_DECAY_MS
      slow = 1 + (slow - 1) * math.max(0, left)
    end
    interval = math.floor(interval * slow)
    local tat = tonumber(redis.call('HGET', RL, st.rate_class .. ':tat') or '0')
    if tat < now_us then tat = now_us end
    local tolerance = (BURST - 1) * interval
    if tat - now_us > tolerance then
      -- a lane that must wait gets its own future slot; high-priority lanes take slots ahead of the
      -- ones normal and low lanes hold; a reservation further ahead than the admitted lanes can
      -- need is stale (cancelled work) and does not push later sends back
      local wake = tat - tolerance
      local horizon = now_us + interval * math.max(BURST, ADMIT_MAX, 1)
      local held = tonumber(redis.call('HGET', RL, 'rs:' .. r) or '0')
      if held > now_us and held <= horizon then
        wake = math.max(wake, held)  -- this lane already holds a slot: keep it, reserve no other
      else
        local wkey = st.rate_class .. ':wake' .. ((RQ == K.readyh) and 'h' or '')
        local slot = tonumber(redis.call('HGET', RL, wkey) or '0')
        if slot > horizon then slot = horizon end
        if slot > wake then wake = slot end
        redis.call('HSET', RL, wkey, I(wake + interval))
      end
      redis.call('HSET', RL, 'rs:' .. r, I(wake))
      redis.call('HINCRBY', K.stats, 'limiter_waits', 1)
      return wait(math.ceil(wake / 1000), 'rate')
    end
    redis.call('HSET', RL, st.rate_class .. ':tat', I(tat + interval))
    redis.call('HDEL', RL, 'rs:' .. r)
  end
  if THREAD_US > 0 then redis.call('HSET', RL, 'th:' .. r, I(now_us)) end

  -- 6. hand the job out
  local before = st.state
  st.state = 'sending'; st.attempts = (st.attempts or 0) + 1; st.holder = token; st.updated_ms = now_ms
  st.sending_since_ms = now_ms; st.next_attempt_ms = nil
  note(st, 'attempt', tostring(st.attempts))
  st_put(id, st)
  renew()
  redis.call('ZADD', RQ, now_ms + lease_ms, r)
  redis.call('ZADD', K.held, now_ms + lease_ms, r)
  if probe then redis.call('HSET', PAUSE, 'probe', id, 'probe_until', I(now_ms + lease_ms)) end
  local win = redis.call('HGET', WIN, r) or ''
  local cmt = ''
  if string.sub(r, 1, 2) == 'c:' then cmt = redis.call('HGET', CMT, string.sub(r, 3)) or '' end
  return {'job', id, job, before, st.attempts, win, cmt, I(now_ms)}
end

-- up to n lanes a dispatcher would admit now (dispatch.lua's order and budget), for the caller
local function claim(n, grace)
  local room = n
  if ADMIT_MAX > 0 then
    room = math.min(n, ADMIT_MAX - in_use(grace))
  end
  local out = {}
  for _, rq in ipairs({K.readyh, K.ready, K.readyl}) do
    local left = room - #out
    if left <= 0 then break end
    for _, lane in ipairs(redis.call('ZRANGEBYSCORE', rq, '-inf', now_ms, 'LIMIT', 0, left)) do
      redis.call('ZADD', rq, now_ms + grace, lane)
      if not redis.call('ZSCORE', K.adm, lane) then
        redis.call('ZADD', K.adm, now_ms, lane)
        out[#out + 1] = lane
      end
    end
  end
  return out
end

local got = step_lane(ARGV[5], KEYS[9], KEYS[10], ARGV[6], ARGV[7], ARGV[9], ARGV[10], ARGV[11] == '1')
local want = tonumber(ARGV[18])
if ARGV[16] == '' and want == 0 and (EMITTED == 0 or ARGV[9] ~= '') then return got end
local nxt = {}
if ARGV[16] ~= '' and got[1] ~= 'job' then
  nxt = step_lane(ARGV[16], KEYS[18], KEYS[19], ARGV[17], 'acquire', '', '', false)
end
local claimed = {}
if want > 0 and got[1] ~= 'job' then claimed = claim(want, tonumber(ARGV[19])) end
return {got, nxt, claimed, EMITTED}
