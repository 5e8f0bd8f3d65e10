-- Give leased jobs back to the front of ready at once; the delivery does not count. Stale
-- tokens are ignored. ARGV: n_queues, then per job: queue index, handle, token.
-- Returns how many were given back.
local now = now_ms()
local released = 0
for i = 2, #ARGV, 3 do
  local ready, _, lease, _, tok, dc, ts, wake = qkeys(tonumber(ARGV[i]))
  local handle = ARGV[i + 1]
  if redis.call('HGET', tok, handle) == ARGV[i + 2] then
    redis.call('ZREM', lease, handle)
    redis.call('HDEL', tok, handle)
    redis.call('HINCRBY', dc, handle, -1)
    redis.call('LPUSH', ready, handle)
    redis.call('HSET', ts, handle, now)
    signal(wake)
    released = released + 1
  end
end
return released
