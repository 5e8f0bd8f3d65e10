-- Shared prelude, prepended to every script of this directory.
-- A queue's job keys arrive as KEYS in this order, N_KEYS per queue:
--   ready (list of handles), sched (zset handle -> due ms), lease (zset handle -> deadline ms),
--   jobs (hash handle -> body), tok (hash handle -> lease token), dc (hash handle -> deliveries),
--   ts (hash handle -> ms it became ready), wake (list: a signal for blocked fetchers),
--   uniques (hash handle -> the unique key it holds, for jobs enqueued with one),
--   missing (hash handle -> ms a handle was first found ready without a body).
-- Times are the server's clock in milliseconds, so every consumer compares against one clock.
local N_KEYS = 10
local CHUNK = 1000

local function qkeys(qi)
  local b = (qi - 1) * N_KEYS
  return KEYS[b + 1], KEYS[b + 2], KEYS[b + 3], KEYS[b + 4], KEYS[b + 5], KEYS[b + 6], KEYS[b + 7], KEYS[b + 8],
    KEYS[b + 9], KEYS[b + 10]
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

-- HMGET over a list of any length.
local function hmget(key, fields)
  local values = {}
  for i = 1, #fields, CHUNK do
    local part = redis.call('HMGET', key, unpack(fields, i, math.min(i + CHUNK - 1, #fields)))
    for j = 1, #part do values[#values + 1] = part[j] end
  end
  return values
end

-- Group (queue index, handle, token) triples of ARGV from position `first`: per queue, the
-- handles, tokens and the result position of each, and the result list (all 0 to start).
local function by_queue(nq, first)
  local groups, result = {}, {}
  for qi = 1, nq do
    groups[qi] = {handles = {}, tokens = {}, at = {}}
  end
  for i = first, #ARGV, 3 do
    local g = groups[tonumber(ARGV[i])]
    g.handles[#g.handles + 1] = ARGV[i + 1]
    g.tokens[#g.tokens + 1] = ARGV[i + 2]
    result[#result + 1] = 0
    g.at[#g.at + 1] = #result
  end
  return groups, result
end

-- The handles of a group whose lease the given token still holds (each once), marking them 1.
local function held(tok, g, result)
  local current = hmget(tok, g.handles)
  local out, seen = {}, {}
  for j = 1, #g.handles do
    local handle = g.handles[j]
    if current[j] == g.tokens[j] and not seen[handle] then
      seen[handle] = true
      out[#out + 1] = handle
      result[g.at[j]] = 1
    end
  end
  return out
end

-- Fetch and ack may be sent twice (a lost reply): each call carries a request name, and the
-- script keeps what it did under the consumer's record key with that name, for a lease length,
-- so the same request sent again gets the same answer (see resend.py).

-- A job leaves for good (acked or dead): forget which unique key it held; ``free``: also let the
-- key go, if this job still holds it (a dead job's key may be enqueued again).
local function drop_unique(uniques, handle, free)
  local key = redis.call('HGET', uniques, handle)
  if key then
    redis.call('HDEL', uniques, handle)
    if free and redis.call('GET', key) == handle then redis.call('DEL', key) end
  end
end

-- Move a job's body to the dead letters under dead_id (``ID.N`` when ``ID`` is taken: a job id
-- dead twice keeps both letters), with its info. Returns the id it got.
local function bury(dead, dead_body, dead_info, dead_seq, dead_id, body, info)
  local seq = redis.call('INCR', dead_seq)
  if redis.call('ZSCORE', dead, dead_id) then dead_id = dead_id .. '.' .. seq end
  redis.call('ZADD', dead, seq, dead_id)
  redis.call('HSET', dead_body, dead_id, body)
  redis.call('HSET', dead_info, dead_id, info)
  return dead_id
end
