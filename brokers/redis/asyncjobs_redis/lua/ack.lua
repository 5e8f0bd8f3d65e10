-- Remove finished jobs whose lease is still held by the given token. KEYS: the queues' keys, the
-- record key of this request, then spent record keys (deleted). ARGV: n_queues, replay (1: this
-- request was sent before and its reply lost), record ms, then per job: queue index, handle,
-- token. Returns one 1 (removed) or 0 (stale token) per job; a job named twice in one call is
-- removed (and reported) once. A replayed request whose record is kept gets the first answer.
local nq = tonumber(ARGV[1])
local record = KEYS[nq * N_KEYS + 1]
spend(nq * N_KEYS + 2)
if ARGV[2] == '1' then
  local first = redis.call('GET', record)
  if first then
    local result = {}
    for i = 1, #first do result[i] = tonumber(string.sub(first, i, i)) end
    return result
  end
end
local groups, result = by_queue(nq, 4)
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
redis.call('SET', record, table.concat(result), 'PX', tonumber(ARGV[3]))
return result
