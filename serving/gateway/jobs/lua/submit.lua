-- submit.lua: accept a job unless its tenant already has ARGV[4] jobs queued or running
-- (``[gateway] max_jobs_per_tenant``), atomically across every gateway on this prefix: the
-- record, the ``queued`` event, the queue entry and the tenant's active-set member are
-- written together or not at all.
-- KEYS[1] P:active:<tenant>  set     ids of the tenant's unfinished jobs
-- KEYS[2] P:job:<id>         string  the job record (JSON)
-- KEYS[3] P:events:<id>      stream  the job's event log
-- KEYS[4] P:queue:<pool>     stream  the pool's queue (its consumer group already exists)
-- ARGV[1] job id  [2] job record (JSON)  [3] data of the queued event (JSON)  [4] limit
-- ARGV[5] prefix of job record keys ("P:job:")
-- At the limit, members whose record is gone (expired, deleted) or finished are forgotten
-- first, so a lost removal never keeps a tenant out for good.
-- Returns 1 when the job was accepted, 0 when the tenant is at its limit.
local limit = tonumber(ARGV[4])
if redis.call('SCARD', KEYS[1]) >= limit then
  for _, id in ipairs(redis.call('SMEMBERS', KEYS[1])) do
    local raw = redis.call('GET', ARGV[5] .. id)
    local done = not raw
    if raw then
      local status = cjson.decode(raw)['status']
      done = status == 'succeeded' or status == 'failed'
    end
    if done then redis.call('SREM', KEYS[1], id) end
  end
  if redis.call('SCARD', KEYS[1]) >= limit then return 0 end
end
redis.call('SET', KEYS[2], ARGV[2])
redis.call('XADD', KEYS[3], '*', 'type', 'queued', 'data', ARGV[3])
redis.call('XADD', KEYS[4], '*', 'job', ARGV[1])
redis.call('SADD', KEYS[1], ARGV[1])
return 1
