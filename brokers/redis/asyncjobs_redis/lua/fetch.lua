-- Lease up to max_count jobs across the queues, in the order given (the consumer starts each fetch
-- with the next queue, so none starves). First, per queue: due scheduled
-- jobs join the back of ready and expired leases go back to the front (their token removed, so
-- the old holder can no longer extend or settle them).
-- KEYS: the queues' keys, then the consumer's fetch record.
-- ARGV: n_queues, max_count, lease ms, token prefix, last token number used, byte budget,
-- request name, replay (0: a new request; 1: sent before, its reply lost; 2: the same, but
-- lease nothing new).
-- Byte budget: no body is added once the bodies taken add up to it, except the first (a fetch
-- that finds a ready job always takes one, whatever its size).
-- The leases taken are kept in the record, with the request's name, for a lease length. A
-- replayed request whose record is there gets those of its leases back that it still holds
-- (deadline renewed, delivery count unchanged: a lost reply uses up no attempt), and leases
-- nothing new.
-- A handle found ready without a body (pushed before its body was written, or its body deleted)
-- is looked at again every GRACE_STEP ms, its body may be on its way; after GRACE ms it is
-- leased with delivery count 0 and an empty body, for the consumer to dead-letter it.
-- Returns {ms until the next scheduled job or lease deadline (-1: none known; only looked up
-- when nothing was taken), taken, then per delivery: queue index, handle, token, delivery
-- count (0: no body), body}.
local GRACE, GRACE_STEP = 2000, 250
local nq, want, lease_ms = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local prefix, seq, budget = ARGV[4], tonumber(ARGV[5]), tonumber(ARGV[6])
local name, replay = ARGV[7], tonumber(ARGV[8])
local record = KEYS[nq * N_KEYS + 1]
local now = now_ms()
local out = {-1, 0}
local got = 0
local next_due = -1

local function deliver(qi, handle, token, count, body)
  out[#out + 1] = qi
  out[#out + 1] = handle
  out[#out + 1] = token
  out[#out + 1] = count
  out[#out + 1] = body
  got = got + 1
end

if replay > 0 then
  local raw = redis.call('GET', record)
  local kept = raw and cmsgpack.unpack(raw)
  if kept and kept[1] == name then
    for i = 2, #kept, 3 do
      local qi, handle, token = kept[i], kept[i + 1], kept[i + 2]
      local _, _, lease, jobs, tok, dc = qkeys(qi)
      if redis.call('HGET', tok, handle) == token then
        redis.call('ZADD', lease, now + lease_ms, handle)
        deliver(qi, handle, token, tonumber(redis.call('HGET', dc, handle)) or 0,
                redis.call('HGET', jobs, handle) or '')
      end
    end
  end
  if got > 0 or replay == 2 then
    if got > 0 then redis.call('PEXPIRE', record, lease_ms) end
    out[1] = 0
    out[2] = got
    return out
  end
end
local taken_here = {name}

local function earliest(zset)
  local head = redis.call('ZRANGE', zset, 0, 0, 'WITHSCORES')
  if head[2] then
    local wait = math.max(tonumber(head[2]) - now, 0)
    if next_due < 0 or wait < next_due then next_due = wait end
  end
end

-- Lease the popped handles of one queue (a body-less one waits out its grace).
local function lease_all(qi, taken)
  local _, sched, lease, jobs, tok, dc, ts, _, _, missing = qkeys(qi)
  local bodies = hmget(jobs, taken)
  local deadline = now + lease_ms
  local tokens, deadlines = {}, {}
  local waiting = redis.call('HLEN', missing) > 0
  for i = 1, #taken do
    local handle, body, count = taken[i], bodies[i], 0
    if body then
      count = redis.call('HINCRBY', dc, handle, 1)
      if waiting then redis.call('HDEL', missing, handle) end
    else
      local first = tonumber(redis.call('HGET', missing, handle))
      if not first then
        first = now
        redis.call('HSET', missing, handle, now)
      end
      if now - first < GRACE then
        redis.call('ZADD', sched, now + GRACE_STEP, handle)
        count = -1
      else
        redis.call('HDEL', missing, handle)
        body = ''
      end
    end
    if count >= 0 then
      seq = seq + 1
      local token = prefix .. seq
      tokens[#tokens + 1] = handle
      tokens[#tokens + 1] = token
      deadlines[#deadlines + 1] = deadline
      deadlines[#deadlines + 1] = handle
      deliver(qi, handle, token, count, body)
      taken_here[#taken_here + 1] = qi
      taken_here[#taken_here + 1] = handle
      taken_here[#taken_here + 1] = token
    end
  end
  chunked('HDEL', ts, taken)
  chunked('HSET', tok, tokens)
  chunked('ZADD', lease, deadlines)
end

-- How many of the first `most` ready handles fit the byte budget (at least one when nothing was
-- taken yet); sizes are read without reading the bodies.
local function within_budget(ready, jobs, most)
  local n = 0
  for _, handle in ipairs(redis.call('LRANGE', ready, 0, most - 1)) do
    local size = redis.call('HSTRLEN', jobs, handle)
    if size > budget and got + n > 0 then
      budget = 0
      break
    end
    budget = budget - size
    n = n + 1
  end
  return n
end

for qi = 1, nq do
  local ready, sched, lease, jobs, tok, _, ts, wake = qkeys(qi)
  local due = redis.call('ZRANGEBYSCORE', sched, '-inf', now, 'WITHSCORES', 'LIMIT', 0, CHUNK)
  if #due > 0 then
    local handles, since = {}, {}
    for i = 1, #due, 2 do
      handles[#handles + 1] = due[i]
      since[#since + 1] = due[i]
      since[#since + 1] = due[i + 1]
    end
    redis.call('ZREM', sched, unpack(handles))
    redis.call('RPUSH', ready, unpack(handles))
    redis.call('HSET', ts, unpack(since))
  end
  local expired = redis.call('ZRANGEBYSCORE', lease, '-inf', now, 'LIMIT', 0, CHUNK)
  if #expired > 0 then
    local since = {}
    for i = 1, #expired do
      since[#since + 1] = expired[i]
      since[#since + 1] = now
    end
    redis.call('ZREM', lease, unpack(expired))
    redis.call('HDEL', tok, unpack(expired))
    for i = #expired, 1, -1 do redis.call('LPUSH', ready, expired[i]) end
    redis.call('HSET', ts, unpack(since))
  end
  if got < want and budget > 0 then
    local n = within_budget(ready, jobs, want - got)
    if n > 0 then lease_all(qi, redis.call('LPOP', ready, n)) end
  end
  if redis.call('LLEN', ready) > 0 then
    signal(wake)
    next_due = 0
  elseif got == 0 then  -- the caller waits: tell it for how long at most
    earliest(sched)
    earliest(lease)
  end
end
if #taken_here > 1 then
  redis.call('SET', record, cmsgpack.pack(taken_here), 'PX', lease_ms)
end
out[1] = next_due
out[2] = got
return out
