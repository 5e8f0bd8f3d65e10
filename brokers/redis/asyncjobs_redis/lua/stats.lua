-- Counts of one queue without touching it. Due scheduled jobs and expired leases count as
-- ready (the next fetch makes them so). KEYS: one queue's keys, then dead.
-- Returns {ready, scheduled, in flight, dead, ms the oldest ready job waited (-1: none)}.
local ready, sched, lease, _, _, _, ts = qkeys(1)
local now = now_ms()
local due = redis.call('ZCOUNT', sched, '-inf', now)
local expired = redis.call('ZCOUNT', lease, '-inf', now)
local n_ready = redis.call('LLEN', ready)
local age = -1
if n_ready > 0 then
  local since = redis.call('HGET', ts, redis.call('LINDEX', ready, 0))
  if since then age = math.max(now - tonumber(since), 0) end
end
if due > 0 then
  local head = redis.call('ZRANGE', sched, 0, 0, 'WITHSCORES')
  age = math.max(age, now - tonumber(head[2]))
end
return {n_ready + due + expired, redis.call('ZCARD', sched) - due, redis.call('ZCARD', lease) - expired,
        redis.call('ZCARD', KEYS[N_KEYS + 1]), age}
