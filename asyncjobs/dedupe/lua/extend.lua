-- Extend an owner's running claim (DedupeStore.extend).
-- KEYS[1] record hash, KEYS[2] history list; ARGV[1] owner, ARGV[2] lease seconds
-- Returns 1 when extended, 0 when the owner does not hold a running claim.
local rec = redis.call('HMGET', KEYS[1], 'status', 'owner', 'expires_at')
if rec[1] ~= 'running' or rec[2] ~= ARGV[1] then
  return 0
end
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local until_ = now + tonumber(ARGV[2])
local expires = math.max(tonumber(rec[3]) or 0, until_)
redis.call('HSET', KEYS[1], 'lease_until', string.format('%.6f', until_), 'expires_at', string.format('%.6f', expires))
local ms = math.ceil((expires - now) * 1000)
redis.call('PEXPIRE', KEYS[1], ms)
redis.call('PEXPIRE', KEYS[2], ms)
return 1
