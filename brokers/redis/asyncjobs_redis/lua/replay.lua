-- Swap a dead letter for a ready job with the given body, in one step. KEYS: as dead_letter.
-- ARGV: dead id, body, handle of the new job. Returns 1, or 0 when the dead letter is gone.
local ready, _, _, jobs, _, _, ts, wake = qkeys(1)
local dead, dead_body, dead_info = KEYS[9], KEYS[10], KEYS[11]
local dead_id, body, handle = ARGV[1], ARGV[2], ARGV[3]
if redis.call('ZREM', dead, dead_id) == 0 then
  return 0
end
redis.call('HDEL', dead_body, dead_id)
redis.call('HDEL', dead_info, dead_id)
redis.call('HSET', jobs, handle, body)
redis.call('RPUSH', ready, handle)
redis.call('HSET', ts, handle, now_ms())
signal(wake)
return 1
