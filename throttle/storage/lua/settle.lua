-- settle.lua: replace a reservation's estimate by its actual cost, atomically (mirrors
-- MemoryStorage.settle_now): GCRA TAT moved by the difference from max(TAT, now) and never
-- below now, day/month spend and the pool's fair-share counter adjusted, the concurrency
-- lease freed.
-- The keys charged at admission are read from the record; reserve.lua builds every key of
-- one decision under the same hash tag, so they live in the same slot on Redis Cluster.
--
-- The actual cost is priced here, at the prices locked in the record (mirrors
-- throttle/algorithms/costs.py usage_cost).
-- KEYS[1] record  hash  written by reserve.lua
-- ARGV[1] prompt tokens  [2] cached prompt tokens  [3] completion tokens  [4] now
-- ARGV[5] reservation id
-- Returns {} when the record does not exist, else
--         {tenant, pool, estimate, actual, duplicate (0|1)} as strings.
local rec = redis.call('HMGET', KEYS[1], 'tenant', 'pool', 'estimate', 'weight', 'rate', 'tat',
  'leases', 'day', 'month', 'fair', 'settled', 'actual', 'pp', 'cp', 'cf', 'exp', 'inflight', 'backlog', 'pleases')
if not rec[1] or tonumber(rec[16]) <= tonumber(ARGV[4]) then return {} end
local function f(x) return string.format('%.17g', x) end
local tenant, pool = rec[1], rec[2]
if rec[11] == '1' then return {tenant, pool, rec[3], rec[12], '1'} end
local prompt = tonumber(ARGV[1])
local cached = math.min(tonumber(ARGV[2]), prompt)
local actual = ((prompt - cached) + cached * tonumber(rec[15])) * tonumber(rec[13])
  + tonumber(ARGV[3]) * tonumber(rec[14])
local now = tonumber(ARGV[4])
local delta = actual - tonumber(rec[3])
local rate = tonumber(rec[5])
if rate > 0 then
  -- a TAT in the past (or expired) is a full bucket: the difference applies from now, and
  -- a refund never goes below now (gcra.adjust; t = 1 / rate as in reserve.lua and memory)
  local tat = tonumber(redis.call('GET', rec[6]) or ARGV[4])
  local moved = math.max(math.max(tat, now) + delta * (1 / rate), now)
  redis.call('SET', rec[6], f(moved), 'PX', math.max(1, math.ceil((moved - now + 1) * 1000)))
end
for _, key in ipairs({rec[8], rec[9]}) do
  local spent = redis.call('GET', key)
  if spent then
    redis.call('SET', key, f(math.max(0, tonumber(spent) + delta)), 'KEEPTTL')
  end
end
local counter = redis.call('HGET', rec[10], tenant)
if counter then
  local value = f(math.max(0, tonumber(counter) + delta / tonumber(rec[4])))
  redis.call('HSET', rec[10], tenant, value)
  if redis.call('ZSCORE', rec[18], tenant) then redis.call('ZADD', rec[18], value, tenant) end
end
if redis.call('ZREM', rec[7], ARGV[5] .. '|' .. pool) == 1 then
  redis.call('ZREM', rec[19], ARGV[5] .. '|' .. tenant)
  if redis.call('HINCRBY', rec[17], tenant, -1) <= 0 then
    redis.call('HDEL', rec[17], tenant)
    redis.call('ZREM', rec[18], tenant)
  end
end
redis.call('HSET', KEYS[1], 'settled', '1', 'actual', f(actual))
return {tenant, pool, rec[3], f(actual), '0'}
