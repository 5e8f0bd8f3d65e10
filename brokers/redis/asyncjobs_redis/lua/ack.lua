-- Remove finished jobs whose lease is still held by the given token. KEYS: the queues' keys, then
-- the consumer's ack record. ARGV: n_queues, request name, replay (1: this request was sent
-- before and its reply lost), record ms, then per job: queue index, handle, token.
-- Returns one 1 (removed) or 0 (stale token) per job; a job named twice in one call is removed
-- (and reported) once. The answer is kept in the record with the request's name: a replayed
-- request whose record is still there gets the first answer.
local nq, name = tonumber(ARGV[1]), ARGV[2]
local record = KEYS[nq * N_KEYS + 1]
if ARGV[3] == '1' then
  local first = redis.call('GET', record)
  if first and string.sub(first, 1, #name + 1) == name .. '|' then
    local result = {}
    for i = #name + 2, #first do result[#result + 1] = tonumber(string.sub(first, i, i)) end
    return result
  end
end
local groups, result = by_queue(nq, 5)
for qi = 1, nq do
  local _, _, lease, jobs, tok, dc, _, _, uniques = qkeys(qi)
  local g = groups[qi]
  if #g.handles > 0 then
    local done = held(tok, g, result)
    chunked('ZREM', lease, done)
    chunked('HDEL', tok, done)
    chunked('HDEL', jobs, done)
    chunked('HDEL', dc, done)
    chunked('HDEL', uniques, done)  -- a done job's unique key is kept for its TTL
  end
end
redis.call('SET', record, name .. '|' .. table.concat(result), 'PX', tonumber(ARGV[4]))
return result
