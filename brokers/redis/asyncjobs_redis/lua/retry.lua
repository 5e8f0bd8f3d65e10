-- Replace a leased job by its next attempt, in one step: the old lease ends exactly when the
-- new body is stored, scheduled after delay ms (<= 0: ready now, at the back). The next body
-- starts at delivery count 0. KEYS: one queue's keys. ARGV: handle, token, body, delay ms.
-- Returns 1, or 0 (nothing stored) for a stale token.
local ready, sched, lease, jobs, tok, dc, ts, wake = qkeys(1)
local handle, token, body, delay = ARGV[1], ARGV[2], ARGV[3], tonumber(ARGV[4])
if redis.call('HGET', tok, handle) ~= token then
  return 0
end
local now = now_ms()
redis.call('ZREM', lease, handle)
redis.call('HDEL', tok, handle)
redis.call('HDEL', dc, handle)
redis.call('HSET', jobs, handle, body)
if delay > 0 then
  redis.call('ZADD', sched, now + delay, handle)
else
  redis.call('RPUSH', ready, handle)
  redis.call('HSET', ts, handle, now)
end
signal(wake)
return 1
