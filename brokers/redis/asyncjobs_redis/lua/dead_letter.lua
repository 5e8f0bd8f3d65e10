-- Move a leased job, body intact, to the dead letters under dead_id with its info, in one step.
-- KEYS: one queue's keys, then dead (zset id -> sequence), dead body hash, dead info hash,
-- dead sequence counter. ARGV: handle, token, dead id, info JSON.
-- Returns 1, or 0 (nothing moved) for a stale token.
local _, _, lease, jobs, tok, dc = qkeys(1)
local dead, dead_body, dead_info, dead_seq = KEYS[9], KEYS[10], KEYS[11], KEYS[12]
local handle, token, dead_id, info = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
if redis.call('HGET', tok, handle) ~= token then
  return 0
end
local body = redis.call('HGET', jobs, handle) or ''
redis.call('ZREM', lease, handle)
redis.call('HDEL', tok, handle)
redis.call('HDEL', jobs, handle)
redis.call('HDEL', dc, handle)
redis.call('ZADD', dead, redis.call('INCR', dead_seq), dead_id)
redis.call('HSET', dead_body, dead_id, body)
redis.call('HSET', dead_info, dead_id, info)
return 1
