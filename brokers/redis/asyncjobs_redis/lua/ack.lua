-- Remove finished jobs whose lease is still held by the given token. ARGV: n_queues, then per
-- job: queue index, handle, token. Returns one 1 (removed) or 0 (stale token) per job; a job
-- named twice in one call is removed (and reported) once.
local nq = tonumber(ARGV[1])
local groups, result = by_queue(nq, 2)
for qi = 1, nq do
  local _, _, lease, jobs, tok, dc = qkeys(qi)
  local g = groups[qi]
  if #g.handles > 0 then
    local done = held(tok, g, result)
    chunked('ZREM', lease, done)
    chunked('HDEL', tok, done)
    chunked('HDEL', jobs, done)
    chunked('HDEL', dc, done)
  end
end
return result
