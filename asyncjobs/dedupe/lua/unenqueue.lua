-- Forget a pending record whose job the broker did not accept (DedupeStore.release_enqueue).
-- KEYS[1] record hash, KEYS[2] history list
if redis.call('HGET', KEYS[1], 'status') == 'pending' then
  redis.call('DEL', KEYS[1], KEYS[2])
  return 1
end
return 0
