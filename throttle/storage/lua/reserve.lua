-- reserve.lua: one admission, atomically (mirrors throttle/algorithms/*.py and
-- throttle/storage/memory.py MemoryStorage.reserve).
-- Checks, in order: daily budget, monthly budget, concurrency lease, cost-weighted GCRA,
-- fair share (only when ARGV[14] pressure = 1); charges all of them only when all pass.
--
-- KEYS[1]  tat       string  GCRA theoretical arrival time of the tenant
-- KEYS[2]  leases    zset    "<reservation id>|<pool>" -> lease expiry (tenant's in-flight)
-- KEYS[3]  day       string  cost spent in the current UTC day
-- KEYS[4]  month     string  cost spent in the current UTC month
-- KEYS[5]  fair      hash    tenant -> VTC counter of the pool
-- KEYS[6]  seen      zset    tenant -> last time it asked in the pool (to forget idle ones)
-- KEYS[7]  record    hash    the reservation record (read by settle.lua)
-- KEYS[8]  inflight  hash    tenant -> leases held in the pool
-- KEYS[9]  backlog   zset    tenant -> counter, tenants with leases in the pool (VTC backlog)
-- KEYS[10] pleases   zset    "<reservation id>|<tenant>" -> lease expiry, the pool's leases
-- ARGV[1] now  [2] cost  [3] rate_per_s (0 = unlimited)  [4] burst  [5] concurrency (0 = none)
-- ARGV[6] lease_expires_at  [7] record_expires_at  [8] daily_budget  [9] day_end
-- ARGV[10] monthly_budget  [11] month_end  [12] tenant  [13] weight  [14] pressure (0|1)
-- ARGV[15] slack  [16] max_lead  [17] active_window_s  [18] fair_retry_s  [19] pool
-- ARGV[20] reservation id  [21] forget factor (a tenant idle that many windows is dropped)
-- ARGV[22] prompt price  [23] completion price  [24] cached prompt factor (locked for settle)
-- ARGV[25] key tag "{prefix}": leases of this tenant in *other* pools are released in
--          "<tag>:inflight:<pool>", "<tag>:backlog:<pool>" and "<tag>:pleases:<pool>", and
--          pool leases of other tenants in "<tag>:leases:<tenant>": keys of the same hash
--          slot as every KEYS[i] (all keys carry the tag).
-- Returns {allowed, reason, retry_after_s, remaining, reset_s, in_flight, day_spent,
--          month_spent, fair_counter, fair_floor ("" when alone), detail} as strings.
local now = tonumber(ARGV[1])
local cost = tonumber(ARGV[2])
local rate = tonumber(ARGV[3])
local burst = tonumber(ARGV[4])
local cap = tonumber(ARGV[5])
local tenant = ARGV[12]
local weight = tonumber(ARGV[13])
local pressure = ARGV[14] == '1'
local slack = tonumber(ARGV[15])
local max_lead = tonumber(ARGV[16])
local window = tonumber(ARGV[17])
local pool = ARGV[19]
local rid = ARGV[20]
local forget = tonumber(ARGV[21])
local tag = ARGV[25]

local function f(x) return string.format('%.17g', x) end
local function ms(seconds) return math.max(1, math.ceil(seconds * 1000)) end
local function release(p, who)
  local inflight = tag .. ':inflight:' .. p
  if redis.call('HINCRBY', inflight, who, -1) <= 0 then
    redis.call('HDEL', inflight, who)
    redis.call('ZREM', tag .. ':backlog:' .. p, who)
  end
end

-- expire leases of the pool (any tenant: a crashed gateway's leases lapse here), 64 at most
local lapsed = redis.call('ZRANGEBYSCORE', KEYS[10], '-inf', ARGV[1], 'LIMIT', 0, 64)
for _, member in ipairs(lapsed) do
  local lease_id, who = string.match(member, '^([^|]*)|(.*)$')
  redis.call('ZREM', KEYS[10], member)
  if redis.call('ZREM', tag .. ':leases:' .. who, lease_id .. '|' .. pool) == 1 then
    release(pool, who)
  end
end
-- expire this tenant's leases in every pool, count the rest
local expired = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', ARGV[1])
for _, member in ipairs(expired) do
  local lease_id, p = string.match(member, '^([^|]*)|(.*)$')
  redis.call('ZREM', KEYS[2], member)
  redis.call('ZREM', tag .. ':pleases:' .. p, lease_id .. '|' .. tenant)
  release(p, tenant)
end
local in_flight = redis.call('ZCARD', KEYS[2])
local day = tonumber(redis.call('GET', KEYS[3]) or '0')
local month = tonumber(redis.call('GET', KEYS[4]) or '0')
local tat = tonumber(redis.call('GET', KEYS[1]) or ARGV[1])

-- fair share: forget long-idle tenants (not backlogged ones), then the floor is the smallest
-- counter among the other backlogged tenants
local stale = redis.call('ZRANGEBYSCORE', KEYS[6], '-inf', '(' .. f(now - window * forget))
for _, name in ipairs(stale) do
  if redis.call('HEXISTS', KEYS[8], name) == 0 then
    redis.call('ZREM', KEYS[6], name)
    redis.call('HDEL', KEYS[5], name)
  end
end
local floor = nil
local lowest = redis.call('ZRANGE', KEYS[9], 0, 1, 'WITHSCORES')
if lowest[1] and lowest[1] ~= tenant then
  floor = tonumber(lowest[2])
elseif lowest[3] then
  floor = tonumber(lowest[4])
end
local backlogged = redis.call('HEXISTS', KEYS[8], tenant) == 1
local own = tonumber(redis.call('HGET', KEYS[5], tenant) or '0')
-- VTC lift: a tenant whose queue was empty rises to the floor
if (not backlogged) and floor ~= nil and floor > own then own = floor end
redis.call('HSET', KEYS[5], tenant, f(own))
if backlogged then redis.call('ZADD', KEYS[9], f(own), tenant) end
redis.call('ZADD', KEYS[6], f(now), tenant)
local fair_ttl = ms(window * forget)
redis.call('PEXPIRE', KEYS[5], fair_ttl)
redis.call('PEXPIRE', KEYS[6], fair_ttl)

-- GCRA state
local t = 0
if rate > 0 then t = 1 / rate end
local function gcra_state()
  if t == 0 then return 1e308, 0 end
  local ahead = math.max(0, tat - now)
  return math.max(0, (burst * t - ahead) / t), ahead
end

local floor_s = ''
if floor ~= nil then floor_s = f(floor) end
local function deny(reason, retry, detail)
  local remaining, reset = gcra_state()
  return {'0', reason, f(retry), f(remaining), f(reset), tostring(in_flight), f(day), f(month),
          f(own), floor_s, detail}
end

if tonumber(ARGV[8]) > 0 and day + cost > tonumber(ARGV[8]) then
  return deny('budget', tonumber(ARGV[9]) - now, 'daily')
end
if tonumber(ARGV[10]) > 0 and month + cost > tonumber(ARGV[10]) then
  return deny('budget', tonumber(ARGV[11]) - now, 'monthly')
end
if cap > 0 and in_flight >= cap then
  local first = redis.call('ZRANGE', KEYS[2], 0, 0, 'WITHSCORES')
  return deny('concurrency', math.max(0, tonumber(first[2]) - now), '')
end
local new_tat = tat
local remaining, reset = 1e308, 0
if t > 0 then
  local tau = burst * t
  local base = math.max(tat, now)
  new_tat = base + cost * t
  if not (new_tat - now <= tau or tat <= now) then
    return deny('rate', new_tat - now - tau, '')
  end
  remaining = math.max(0, (tau - (new_tat - now)) / t)
  reset = math.max(0, new_tat - now)
end
if pressure and floor ~= nil and own - floor > slack then
  return deny('fair_share', tonumber(ARGV[18]), '')
end

-- admit: charge everything
if t > 0 then
  redis.call('SET', KEYS[1], f(new_tat), 'PX', ms(new_tat - now + 1))
end
local lease_exp = tonumber(ARGV[6])
redis.call('ZADD', KEYS[2], f(lease_exp), rid .. '|' .. pool)
redis.call('ZADD', KEYS[10], f(lease_exp), rid .. '|' .. tenant)
redis.call('HINCRBY', KEYS[8], tenant, 1)
local lease_ttl = math.max(fair_ttl, ms(lease_exp - now + 60))
redis.call('PEXPIRE', KEYS[8], lease_ttl)
redis.call('PEXPIRE', KEYS[10], lease_ttl)
redis.call('PEXPIRE', KEYS[2], ms(lease_exp - now + 60))
in_flight = in_flight + 1
-- budget spend in double arithmetic, stored with %.17g (exact round trip), as memory.py
-- adds it: INCRBYFLOAT computes in long double and rounds differently
day = day + cost
redis.call('SET', KEYS[3], f(day), 'PX', ms(tonumber(ARGV[9]) - now + 3600))
month = month + cost
redis.call('SET', KEYS[4], f(month), 'PX', ms(tonumber(ARGV[11]) - now + 3600))
local charged = own + cost / weight
if floor ~= nil and max_lead > 0 then
  charged = math.min(charged, math.max(own, floor + max_lead))
end
own = charged
redis.call('HSET', KEYS[5], tenant, f(own))
redis.call('ZADD', KEYS[9], f(own), tenant)
redis.call('PEXPIRE', KEYS[9], lease_ttl)
redis.call('HSET', KEYS[7], 'tenant', tenant, 'pool', ARGV[19], 'estimate', ARGV[2],
  'weight', ARGV[13], 'rate', ARGV[3], 'tat', KEYS[1], 'leases', KEYS[2], 'day', KEYS[3],
  'month', KEYS[4], 'fair', KEYS[5], 'inflight', KEYS[8], 'backlog', KEYS[9], 'pleases', KEYS[10], 'pp', ARGV[22], 'cp', ARGV[23], 'cf', ARGV[24],
  'exp', ARGV[7], 'settled', '0')
redis.call('PEXPIRE', KEYS[7], ms(tonumber(ARGV[7]) - now))
return {'1', '', '0', f(remaining), f(reset), tostring(in_flight), f(day), f(month), f(own),
        floor_s, ''}
