-- The newest dead letters. KEYS: dead, dead body, dead info. ARGV: limit.
-- Returns {id, body, info, ...}, newest first.
local ids = redis.call('ZREVRANGE', KEYS[1], 0, tonumber(ARGV[1]) - 1)
if #ids == 0 then
  return {}
end
local bodies = hmget(KEYS[2], ids)
local infos = hmget(KEYS[3], ids)
local out = {}
for i = 1, #ids do
  out[#out + 1] = ids[i]
  out[#out + 1] = bodies[i] or ''
  out[#out + 1] = infos[i] or '{}'
end
return out
