-- shared prelude (prepended to every script by dmworker/scripts.py)
-- now_ms/now_us: ARGV[1] when given (tests inject time), else the Redis server's clock.
local function _clock(override)
  if override and override ~= '' then
    local ms = tonumber(override)
    return ms, ms * 1000
  end
  local t = redis.call('TIME')
  local us = tonumber(t[1]) * 1000000 + tonumber(t[2])
  return math.floor(us / 1000), us
end
local now_ms, now_us = _clock(ARGV[1])
