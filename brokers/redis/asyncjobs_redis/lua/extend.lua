-- Push back the deadline of each lease still held by its token. ARGV: n_queues, lease ms, then
-- per lease: queue index, handle, token. Returns one 1 (extended) or 0 (lost) per lease.
local nq, lease_ms = tonumber(ARGV[1]), tonumber(ARGV[2])
local deadline = now_ms() + lease_ms
local groups, result = by_queue(nq, 3)
for qi = 1, nq do
  local _, _, lease, _, tok = qkeys(qi)
  local g = groups[qi]
  if #g.handles > 0 then
    local kept = held(tok, g, result)
    local scored = {}
    for j = 1, #kept do
      scored[#scored + 1] = deadline
      scored[#scored + 1] = kept[j]
    end
    chunked('ZADD', lease, scored)  -- the lease is in the set while its token is current
  end
end
-- a lease named twice in one call is reported held both times
for qi = 1, nq do
  local g = groups[qi]
  local tokens = {}
  for j = 1, #g.handles do
    if result[g.at[j]] == 1 then tokens[g.handles[j]] = g.tokens[j] end
  end
  for j = 1, #g.handles do
    if tokens[g.handles[j]] == g.tokens[j] then result[g.at[j]] = 1 end
  end
end
return result
