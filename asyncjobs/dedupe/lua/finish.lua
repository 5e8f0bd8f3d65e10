-- Complete or release an owner's claim (DedupeStore.complete / DedupeStore.release).
-- KEYS[1] record hash, KEYS[2] history list
-- ARGV[1] owner, ARGV[2] new status, ARGV[3] ttl seconds, ARGV[4] error, ARGV[5] history limit
-- Returns 1 when done, 0 when the owner does not hold the claim.
local rec = redis.call('HMGET', KEYS[1], 'status', 'owner', 'job_id', 'attempt')
if not rec[1] or rec[2] ~= ARGV[1] then
  return 0
end
if rec[1] ~= 'running' then
  if rec[1] == 'done' and ARGV[2] == 'done' then return 1 end
  return 0
end
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local ttl = tonumber(ARGV[3])
redis.call('HSET', KEYS[1], 'status', ARGV[2], 'updated_at', string.format('%.6f', now),
  'expires_at', string.format('%.6f', now + ttl))
redis.call('HDEL', KEYS[1], 'lease_until')
local entry = {event = ARGV[2], at = now, owner = ARGV[1], job_id = rec[3], attempt = tonumber(rec[4])}
if ARGV[4] ~= '' then entry['error'] = ARGV[4] end
redis.call('RPUSH', KEYS[2], cjson.encode(entry))
redis.call('LTRIM', KEYS[2], -tonumber(ARGV[5]), -1)
local ms = math.ceil(ttl * 1000)
redis.call('PEXPIRE', KEYS[1], ms)
redis.call('PEXPIRE', KEYS[2], ms)
return 1
