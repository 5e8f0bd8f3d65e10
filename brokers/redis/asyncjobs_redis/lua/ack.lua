-- Remove finished jobs whose lease is still held by the given token. ARGV: n_queues, then per
-- job: queue index, handle, token. Returns one 1 (removed) or 0 (stale token) per job.
local result = {}
for i = 2, #ARGV, 3 do
  local _, _, lease, jobs, tok, dc = qkeys(tonumber(ARGV[i]))
  local handle = ARGV[i + 1]
  if redis.call('HGET', tok, handle) == ARGV[i + 2] then
    redis.call('ZREM', lease, handle)
    redis.call('HDEL', tok, handle)
    redis.call('HDEL', jobs, handle)
    redis.call('HDEL', dc, handle)
    result[#result + 1] = 1
  else
    result[#result + 1] = 0
  end
end
return result
