-- step: the hot path of a lane. In ONE call: record the outcome of the previous send, then
-- check the account pause, skip cancelled jobs, honour the lane hold (typing pause, retry
-- backoff), take a rate-limiter decision (GCRA on the Redis clock) and hand out the next job.
-- KEYS[1] lane:<r>  KEYS[2] lease:<r>  KEYS[3] ready  KEYS[4] jobs  KEYS[5] st  KEYS[6] hold
-- KEYS[7] rl  KEYS[8] pause  KEYS[9] win  KEYS[10] dlq  KEYS[11] done  KEYS[12] stats
-- KEYS[13] cmt  KEYS[14] cor:<r>  KEYS[15] fkey  KEYS[16] usage
-- ARGV[1] now override  ARGV[2] recipient  ARGV[3] holder token  ARGV[4] 'acquire'|'continue'
-- ARGV[5] lease ms  ARGV[6] previous job id ('')  ARGV[7] previous outcome JSON ('')
-- ARGV[8] yield after the outcome (0/1)  ARGV[9] token fingerprint  ARGV[10] burst
-- ARGV[11] per-thread min interval us (0 = off)  ARGV[12..] class, interval us, class, interval us...
-- Returns {'job', id, job json, state before, attempts, window ms|'', comment state|'', now ms}
--       | {'wait', until ms, why} | {'empty'} | {'busy'} | {'lost'} | {'yield'}
local function I(x) return string.format('%d', x) end
local r, token = ARGV[2], ARGV[3]
local lease_ms = tonumber(ARGV[5])

-- the lease is '<holder>|<expiry ms>' (expiry on the script clock; PX only collects garbage)
local function holder()
  local cur = redis.call('GET', KEYS[2])
  if not cur then return nil, 0 end
  local tok, exp = string.match(cur, '^(.*)|(%d+)$')
  return tok, tonumber(exp or '0')
end
local function renew()
  redis.call('SET', KEYS[2], token .. '|' .. I(now_ms + lease_ms), 'PX', lease_ms * 2 + 60000)
end
if ARGV[4] == 'acquire' then
  local tok, exp = holder()
  if tok and tok ~= token and exp > now_ms then return {'busy'} end
  renew()
end

local pause = redis.call('HMGET', KEYS[8], 'until', 'reason', 'probe', 'probe_until', 'token_fp', 'fails')

-- 1. the outcome of the previous send (fenced by the holder token stored in the job status)
local prev = ARGV[6]
if prev ~= '' then
  local raw = redis.call('HGET', KEYS[5], prev)
  local st = raw and cjson.decode(raw)
  if st and st.s == 'sending' and st.h == token then
    local o = cjson.decode(ARGV[7])
    local finished = false
    st.u = now_ms
    st.h = nil
    if o.err then st.e = o.err end
    if o.o == 'sent' then
      st.s = 'sent'; st.m = o.mid; st.sent = now_ms; finished = true
      redis.call('HINCRBY', KEYS[12], 'sent', 1)
      if o.hold_ms and o.hold_ms > 0 then redis.call('HSET', KEYS[6], r, I(now_ms + o.hold_ms)) end
      if o.cmt then redis.call('HSET', KEYS[13], o.cmt, 'used') end
      if pause[3] == prev then redis.call('DEL', KEYS[8]); pause = {} end
    elseif o.o == 'failed' then
      st.s = 'failed'; finished = true
      if o.dead then st.dead = 1; redis.call('ZADD', KEYS[10], now_ms, prev) end
      redis.call('HINCRBY', KEYS[12], 'failed', 1)
      if o.token_invalid then
        redis.call('HSET', KEYS[8], 'until', I(now_ms + 315360000000), 'reason', 'token_invalid',
          'probe', '', 'probe_until', '0', 'token_fp', ARGV[9], 'fails', '1',
          'detail', o.err and o.err.message or '')
        pause = redis.call('HMGET', KEYS[8], 'until', 'reason', 'probe', 'probe_until', 'token_fp', 'fails')
      elseif pause[3] == prev then redis.call('DEL', KEYS[8]); pause = {} end
    elseif o.o == 'retry' then
      st.s = 'waiting'; st.n = now_ms + o.delay_ms
      redis.call('HSET', KEYS[6], r, I(st.n))
      redis.call('HINCRBY', KEYS[12], 'retried', 1)
      if pause[3] == prev then redis.call('DEL', KEYS[8]); pause = {} end
    elseif o.o == 'throttled' then
      local fails = tonumber(pause[6] or '0') or 0
      local pms = o.pause_ms or math.min(o.pause_base_ms * math.pow(2, fails), o.pause_cap_ms)
      st.s = 'waiting'; st.a = (st.a or 1) - 1; st.n = now_ms + pms
      redis.call('HSET', KEYS[8], 'until', I(now_ms + pms), 'reason', o.reason or 'throttled',
        'probe', '', 'probe_until', '0', 'token_fp', '', 'fails', I(fails + 1),
        'detail', o.err and o.err.message or '', 'since', I(now_ms))
      redis.call('HINCRBY', KEYS[12], 'throttled', 1)
      pause = redis.call('HMGET', KEYS[8], 'until', 'reason', 'probe', 'probe_until', 'token_fp', 'fails')
    end
    if o.kind then redis.call('HINCRBY', KEYS[12], o.o .. ':' .. o.kind, 1) end
    if o.lat then
      redis.call('HINCRBY', KEYS[12], 'lat:' .. o.lat, 1)
      redis.call('HINCRBYFLOAT', KEYS[12], 'lat_sum_s', o.lat_s)
    end
    if o.slow then redis.call('HSET', KEYS[7], 'slow', tostring(o.slow)) end
    if o.usage_pct then redis.call('HSET', KEYS[16], 'call_count_pct', I(o.usage_pct), 'at', I(now_ms)) end
    if finished then
      if redis.call('LINDEX', KEYS[1], 0) == prev then redis.call('LPOP', KEYS[1]) end
      if not st.dead then redis.call('ZADD', KEYS[11], now_ms, prev) end
      if st.cor then redis.call('SREM', KEYS[14], prev) end
      if st.k and redis.call('HGET', KEYS[15], st.k) == prev then redis.call('HDEL', KEYS[15], st.k) end
    end
    redis.call('HSET', KEYS[5], prev, cjson.encode(st))
  end
end

if ARGV[4] == 'continue' and holder() ~= token then return {'lost'} end

local function wait(until_ms, why)
  redis.call('ZADD', KEYS[3], until_ms, r)
  redis.call('DEL', KEYS[2])
  return {'wait', I(until_ms), why}
end

if ARGV[8] == '1' then
  redis.call('ZADD', KEYS[3], now_ms, r)
  redis.call('DEL', KEYS[2])
  return {'yield'}
end

-- 2. the next live job at the head of the lane
local id, job, st
for _ = 1, 1000 do
  id = redis.call('LINDEX', KEYS[1], 0)
  if not id then
    redis.call('ZREM', KEYS[3], r)
    redis.call('DEL', KEYS[2])
    redis.call('HDEL', KEYS[6], r)
    return {'empty'}
  end
  local raw = redis.call('HGET', KEYS[5], id)
  job = redis.call('HGET', KEYS[4], id)
  if raw and job then
    st = cjson.decode(raw)
    if st.s == 'queued' or st.s == 'waiting' or st.s == 'sending' then break end
    if st.s == 'cancelled' then redis.call('ZADD', KEYS[11], now_ms, id) end
  end
  redis.call('LPOP', KEYS[1])
  st = nil
end
if not st then return wait(now_ms, 'skipped') end

-- 3. the account pause (throttle, policy block, bad token) and its single probe
local probe = false
if pause[1] then
  if pause[2] == 'token_invalid' and pause[5] ~= ARGV[9] then
    redis.call('DEL', KEYS[8])            -- the token was replaced: resume
  elseif tonumber(pause[1]) > now_ms then
    return wait(tonumber(pause[1]), 'paused:' .. (pause[2] or 'throttled'))
  elseif pause[3] ~= '' and pause[3] ~= id and tonumber(pause[4] or '0') > now_ms then
    return wait(now_ms + 250, 'probe')    -- another lane's probe is in flight
  else
    probe = true
  end
end

-- 4. the lane hold (typing pause, retry backoff)
local hold = redis.call('HGET', KEYS[6], r)
if hold then
  if tonumber(hold) > now_ms then return wait(tonumber(hold), 'hold') end
  redis.call('HDEL', KEYS[6], r)
end

-- 5. rate limits: per-thread pacing, then GCRA per (account, class)
local thread_us = tonumber(ARGV[11])
if thread_us > 0 then
  local last = tonumber(redis.call('HGET', KEYS[7], 'th:' .. r) or '0')
  if now_us < last + thread_us then return wait(math.ceil((last + thread_us) / 1000), 'thread') end
end
local interval = 0
for i = 12, #ARGV, 2 do
  if ARGV[i] == st.rc then interval = tonumber(ARGV[i + 1]) end
end
if interval > 0 then
  interval = math.floor(interval * tonumber(redis.call('HGET', KEYS[7], 'slow') or '1'))
  local burst = tonumber(ARGV[10])
  local tat = tonumber(redis.call('HGET', KEYS[7], st.rc .. ':tat') or '0')
  if tat < now_us then tat = now_us end
  local tolerance = (burst - 1) * interval
  if tat - now_us > tolerance then
    local wake = tat - tolerance
    local slot = tonumber(redis.call('HGET', KEYS[7], st.rc .. ':wake') or '0')
    if slot > wake then wake = slot end
    redis.call('HSET', KEYS[7], st.rc .. ':wake', I(wake + interval))
    redis.call('HINCRBY', KEYS[12], 'limiter_waits', 1)
    return wait(math.ceil(wake / 1000), 'rate')
  end
  redis.call('HSET', KEYS[7], st.rc .. ':tat', I(tat + interval))
end
if thread_us > 0 then redis.call('HSET', KEYS[7], 'th:' .. r, I(now_us)) end

-- 6. hand the job out
local before = st.s
st.s = 'sending'; st.a = (st.a or 0) + 1; st.h = token; st.u = now_ms; st.ts = now_ms
redis.call('HSET', KEYS[5], id, cjson.encode(st))
renew()
redis.call('ZADD', KEYS[3], now_ms + lease_ms, r)
if probe then redis.call('HSET', KEYS[8], 'probe', id, 'probe_until', I(now_ms + lease_ms)) end
local win = redis.call('HGET', KEYS[9], r) or ''
local cmt = ''
if string.sub(r, 1, 2) == 'c:' then cmt = redis.call('HGET', KEYS[13], string.sub(r, 3)) or '' end
return {'job', id, job, before, st.a, win, cmt, I(now_ms)}
