-- Delete the given dead letters, or all of them when no id is given. KEYS: dead, dead body,
-- dead info. ARGV: ids. Returns how many were deleted.
local dead, dead_body, dead_info = KEYS[1], KEYS[2], KEYS[3]
if #ARGV == 0 then
  local count = redis.call('ZCARD', dead)
  redis.call('DEL', dead, dead_body, dead_info)
  return count
end
local count = 0
for i = 1, #ARGV do
  if redis.call('ZREM', dead, ARGV[i]) == 1 then
    redis.call('HDEL', dead_body, ARGV[i])
    redis.call('HDEL', dead_info, ARGV[i])
    count = count + 1
  end
end
return count
