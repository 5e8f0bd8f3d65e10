-- Swap a dead letter for a ready job with the given body, in one step. KEYS: as dead_letter.
-- ARGV: dead id, body, the job id the body carries ('' when it has none it can read), the
-- unique part of the new job's handle. A body without a readable id keeps the id the dead letter
-- had (without the ``.N`` a repeated id got), so it dies again under the same name.
-- Returns 1, or 0 when the dead letter is gone.
local ready, _, _, jobs, _, _, ts, wake = qkeys(1)
local dead, dead_body, dead_info = KEYS[N_KEYS + 1], KEYS[N_KEYS + 2], KEYS[N_KEYS + 3]
local dead_id, body, job_id, suffix = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local seq = redis.call('ZSCORE', dead, dead_id)
if not seq then
  return 0
end
if job_id == '' then
  job_id = dead_id
  local base, n = string.match(dead_id, '^(.*)%.(%d+)$')
  if base and tonumber(n) == tonumber(seq) then job_id = base end
end
local handle = job_id .. '|' .. suffix
redis.call('ZREM', dead, dead_id)
redis.call('HDEL', dead_body, dead_id)
redis.call('HDEL', dead_info, dead_id)
redis.call('HSET', jobs, handle, body)
redis.call('RPUSH', ready, handle)
redis.call('HSET', ts, handle, now_ms())
signal(wake)
return 1
