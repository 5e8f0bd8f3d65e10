-- Store many jobs atomically. ARGV: n_queues, then per job: queue index, handle, body,
-- delay ms (<= 0: ready now), unique TTL ms (> 0: the next unique key of KEYS guards it).
-- Unique keys follow the queues' keys in KEYS, one per job that has a TTL, in job order.
-- Returns one 1 (stored) or 0 (unique key taken) per job.
local nq = tonumber(ARGV[1])
local now = now_ms()
local next_unique = nq * N_KEYS + 1
local result = {}
local per_queue = {}
for qi = 1, nq do
  per_queue[qi] = {ready = {}, bodies = {}, since = {}, sched = {}, uniques = {}}
end
for i = 2, #ARGV, 5 do
  local qi, handle, body = tonumber(ARGV[i]), ARGV[i + 1], ARGV[i + 2]
  local delay, ttl = tonumber(ARGV[i + 3]), tonumber(ARGV[i + 4])
  local stored = 1
  if ttl > 0 then
    local ukey = KEYS[next_unique]
    next_unique = next_unique + 1
    if redis.call('SET', ukey, handle, 'NX', 'PX', ttl) then
      local u = per_queue[qi].uniques
      u[#u + 1] = handle
      u[#u + 1] = ukey
    else
      stored = 0
    end
  end
  if stored == 1 then
    local q = per_queue[qi]
    q.bodies[#q.bodies + 1] = handle
    q.bodies[#q.bodies + 1] = body
    if delay > 0 then
      q.sched[#q.sched + 1] = now + delay
      q.sched[#q.sched + 1] = handle
    else
      q.ready[#q.ready + 1] = handle
      q.since[#q.since + 1] = handle
      q.since[#q.since + 1] = now
    end
  end
  result[#result + 1] = stored
end
for qi = 1, nq do
  local ready, sched, _, jobs, _, _, ts, wake, uniques = qkeys(qi)
  local q = per_queue[qi]
  chunked('HSET', jobs, q.bodies)
  chunked('HSET', uniques, q.uniques)
  chunked('ZADD', sched, q.sched)
  if #q.ready > 0 then
    chunked('RPUSH', ready, q.ready)
    chunked('HSET', ts, q.since)
  end
  if #q.bodies > 0 then
    signal(wake)  -- scheduled jobs too: a blocked fetcher learns the new earliest due time
  end
end
return result
