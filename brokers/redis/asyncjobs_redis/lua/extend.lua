-- Push back the deadline of each lease still held by its token. ARGV: n_queues, lease ms, then
-- per lease: queue index, handle, token. Returns one 1 (extended) or 0 (lost) per lease.
local lease_ms = tonumber(ARGV[2])
local deadline = now_ms() + lease_ms
local result = {}
for i = 3, #ARGV, 3 do
  local _, _, lease, _, tok = qkeys(tonumber(ARGV[i]))
  local handle = ARGV[i + 1]
  if redis.call('HGET', tok, handle) == ARGV[i + 2] then
    redis.call('ZADD', lease, 'XX', deadline, handle)
    result[#result + 1] = 1
  else
    result[#result + 1] = 0
  end
end
return result
