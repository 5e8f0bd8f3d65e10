-- Move a leased job, body intact, to the dead letters under dead_id with its info, in one step
-- (``ID.N`` when a dead letter ``ID`` exists), and free the unique key it holds.
-- KEYS: one queue's keys, then dead (zset id -> sequence), dead body hash, dead info hash,
-- dead sequence counter. ARGV: handle, token, dead id, info JSON.
-- Returns 1, or 0 (nothing moved) for a stale token.
local _, _, lease, jobs, tok, dc, _, _, uniques = qkeys(1)
local dead, dead_body, dead_info, dead_seq = KEYS[N_KEYS + 1], KEYS[N_KEYS + 2], KEYS[N_KEYS + 3], KEYS[N_KEYS + 4]
local handle, token, dead_id, info = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
if redis.call('HGET', tok, handle) ~= token then
  return 0
end
local body = redis.call('HGET', jobs, handle) or ''
redis.call('ZREM', lease, handle)
redis.call('HDEL', tok, handle)
redis.call('HDEL', jobs, handle)
redis.call('HDEL', dc, handle)
drop_unique(uniques, handle, true)
bury(dead, dead_body, dead_info, dead_seq, dead_id, body, info)
return 1
