-- usage.lua: read a tenant's state in one round trip (no writes).
-- KEYS[1] tat  KEYS[2] leases  KEYS[3] day  KEYS[4] month  KEYS[5..] fair hash of each pool
-- ARGV[1] now  [2] rate_per_s  [3] burst  [4] tenant
-- Returns {remaining, reset_s, in_flight, day_spent, month_spent, counter of each pool ("")}.
local now = tonumber(ARGV[1])
local rate = tonumber(ARGV[2])
local burst = tonumber(ARGV[3])
local function f(x) return string.format('%.17g', x) end
local remaining, reset = 1e308, 0
if rate > 0 then
  local t = 1 / rate
  local tat = tonumber(redis.call('GET', KEYS[1]) or ARGV[1])
  local ahead = math.max(0, tat - now)
  remaining = math.max(0, (burst * t - ahead) / t)
  reset = ahead
end
local out = {f(remaining), f(reset), tostring(redis.call('ZCOUNT', KEYS[2], '(' .. f(now), '+inf')),
  redis.call('GET', KEYS[3]) or '0', redis.call('GET', KEYS[4]) or '0'}
for i = 5, #KEYS do
  out[#out + 1] = redis.call('HGET', KEYS[i], ARGV[4]) or ''
end
return out
