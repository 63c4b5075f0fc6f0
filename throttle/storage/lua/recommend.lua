-- recommend.lua: append a raw replica recommendation to a pool's history and return the
-- history within the stabilisation horizon (the HPA keeps the same list in memory).
-- KEYS[1] history  zset  member "<ts>:<value>" scored by ts
-- ARGV[1] ts  [2] value  [3] keep_s
-- Returns a flat list {member, score, ...} oldest first.
local ts = tonumber(ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', '(' .. string.format('%.17g', ts - tonumber(ARGV[3])))
redis.call('ZADD', KEYS[1], ARGV[1], ARGV[1] .. ':' .. ARGV[2])
redis.call('PEXPIRE', KEYS[1], math.max(1000, math.ceil(tonumber(ARGV[3]) * 1000) + 60000))
return redis.call('ZRANGE', KEYS[1], 0, -1, 'WITHSCORES')
