-- Claim an idempotency key for one attempt (see asyncjobs.dedupe.store.DedupeStore.claim).
-- KEYS[1] record hash, KEYS[2] history list
-- ARGV[1] owner, ARGV[2] lease seconds, ARGV[3] ttl seconds, ARGV[4] job id, ARGV[5] attempt, ARGV[6] history limit
-- Returns {outcome, lease_until, record fields...}: outcome is claimed, done or running.
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local rec = redis.call('HMGET', KEYS[1], 'status', 'owner', 'lease_until')
local status, owner, lease_until = rec[1], rec[2], tonumber(rec[3])
if status == 'done' then
  return {'done', rec[3] or ''}
end
if status == 'running' and owner ~= ARGV[1] and lease_until and lease_until > now then
  return {'running', rec[3]}
end
local until_ = now + tonumber(ARGV[2])
local expires = math.max(now + tonumber(ARGV[3]), until_)
local fmt = '%.6f'
redis.call('HSET', KEYS[1], 'status', 'running', 'owner', ARGV[1], 'job_id', ARGV[4], 'attempt', ARGV[5],
  'updated_at', string.format(fmt, now), 'lease_until', string.format(fmt, until_),
  'expires_at', string.format(fmt, expires))
if not status then
  redis.call('HSET', KEYS[1], 'created_at', string.format(fmt, now))
end
redis.call('RPUSH', KEYS[2], cjson.encode({event = 'claimed', at = now, owner = ARGV[1], job_id = ARGV[4],
  attempt = tonumber(ARGV[5]), lease_until = until_}))
redis.call('LTRIM', KEYS[2], -tonumber(ARGV[6]), -1)
local ms = math.ceil((expires - now) * 1000)
redis.call('PEXPIRE', KEYS[1], ms)
redis.call('PEXPIRE', KEYS[2], ms)
return {'claimed', string.format(fmt, until_)}
