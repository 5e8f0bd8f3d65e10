-- Shared prelude, prepended to every script of this directory.
-- A queue's job keys arrive as KEYS in this order, N_KEYS per queue:
--   ready (list of handles), sched (zset handle -> due ms), lease (zset handle -> deadline ms),
--   jobs (hash handle -> body), tok (hash handle -> lease token), dc (hash handle -> deliveries),
--   ts (hash handle -> ms it became ready), wake (list: a signal for blocked fetchers).
-- Times are the server's clock in milliseconds, so every consumer compares against one clock.
local N_KEYS = 8
local CHUNK = 1000

local function qkeys(qi)
  local b = (qi - 1) * N_KEYS
  return KEYS[b + 1], KEYS[b + 2], KEYS[b + 3], KEYS[b + 4], KEYS[b + 5], KEYS[b + 6], KEYS[b + 7], KEYS[b + 8]
end

local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

-- Run a variadic command over a list in chunks (Lua's unpack has a stack limit).
local function chunked(cmd, key, list)
  for i = 1, #list, CHUNK do
    redis.call(cmd, key, unpack(list, i, math.min(i + CHUNK - 1, #list)))
  end
end

-- Leave one signal for a blocked fetcher (at most one is kept: a fetcher that finds more ready
-- jobs than it takes leaves the signal again for the next one).
local function signal(wake)
  if redis.call('LLEN', wake) == 0 then
    redis.call('RPUSH', wake, '1')
  end
end
