-- Claim a key at enqueue time (DedupeStore.claim_enqueue).
-- KEYS[1] record hash, KEYS[2] history list; ARGV[1] ttl seconds, ARGV[2] history limit
-- Returns 1 when claimed (no record, or a dead one), 0 otherwise.
local status = redis.call('HGET', KEYS[1], 'status')
if status and status ~= 'dead' then
  return 0
end
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local ttl = tonumber(ARGV[1])
local fmt = '%.6f'
redis.call('HDEL', KEYS[1], 'owner', 'lease_until', 'job_id')
redis.call('HSET', KEYS[1], 'status', 'pending', 'attempt', '0', 'updated_at', string.format(fmt, now),
  'expires_at', string.format(fmt, now + ttl))
if not status then
  redis.call('HSET', KEYS[1], 'created_at', string.format(fmt, now))
end
redis.call('RPUSH', KEYS[2], cjson.encode({event = 'enqueued', at = now, attempt = 0}))
redis.call('LTRIM', KEYS[2], -tonumber(ARGV[2]), -1)
local ms = math.ceil(ttl * 1000)
redis.call('PEXPIRE', KEYS[1], ms)
redis.call('PEXPIRE', KEYS[2], ms)
return 1
