-- Cost allocation over one range of windows [$w_since::BIGINT, $w_until::BIGINT) (window index = epoch
-- microseconds // $window_us::BIGINT). Temp tables in order; see docs/metering.md "Allocation".
-- Inputs registered by metering/allocation.py: price_catalog, replica_config, managed_prices.

-- name: capacity
-- Each replica's priced capacity per window: GPUs / MIG slices seen in its GPU samples, or,
-- for configured replicas without samples in the range, the configured count for every window
-- from the replica's start (replica_start).
CREATE OR REPLACE TEMP TABLE alloc_capacity AS
WITH s AS (
    SELECT replica, node, gpu_uuid, mig_uuid, lower(gpu_model) AS gpu_lookup, mig_profile, ts,
           epoch_us(ts) // $window_us::BIGINT AS w,
           energy_j - lag(energy_j) OVER (
               PARTITION BY node, gpu_uuid, mig_uuid ORDER BY ts) AS de
    FROM gpu_samples
    WHERE replica <> '' AND ts >= make_timestamp($w_since::BIGINT * $window_us::BIGINT - $lookback_us::BIGINT)
      AND ts < make_timestamp($w_until::BIGINT * $window_us::BIGINT)
), dev AS (
    SELECT replica, w, node, gpu_uuid, mig_uuid, any_value(gpu_lookup) AS gpu_lookup,
           any_value(mig_profile) AS mig_profile, sum(greatest(coalesce(de, 0), 0)) AS de
    FROM s
    WHERE w >= $w_since::BIGINT AND w < $w_until::BIGINT
    GROUP BY replica, w, node, gpu_uuid, mig_uuid
), sampled AS (
    SELECT d.replica, d.w,
           coalesce(any_value(rc.pool), '') AS pool,
           coalesce(any_value(rc.model), '') AS model,
           coalesce(min(pc.gpu), min(d.gpu_lookup)) AS gpu,
           coalesce(any_value(rc.pricing), 'on_demand') AS pricing,
           sum(coalesce(pc.fraction, 0)) AS gpu_equiv,
           sum(d.de * coalesce(pc.fraction, 1)) AS energy_j,
           sum(pc.usd_per_hour) * $window_us::BIGINT / 3.6e9 AS capacity_usd,
           bool_and(pc.usd_per_hour IS NOT NULL) AS priced
    FROM dev d
    LEFT JOIN replica_config rc ON rc.replica = d.replica
    LEFT JOIN price_catalog pc
        ON pc.lookup = d.gpu_lookup AND pc.mig_profile = d.mig_profile
       AND pc.pricing = coalesce(rc.pricing, 'on_demand')
    GROUP BY d.replica, d.w
), replica_start AS (
    -- a configured replica holds capacity from its configured `since`; else from the earlier
    -- of when the service first ran with it and its first usage record; else (never seen by
    -- a service: a backfill) from the start of the range
    SELECT rc.replica,
           coalesce(epoch_us(rc.since),
                    CASE WHEN s.first_seen IS NOT NULL
                         THEN least(epoch_us(s.first_seen),
                                    coalesce(epoch_us(u.first_start), epoch_us(s.first_seen)))
                    END) AS start_us
    FROM replica_config rc
    LEFT JOIN (SELECT replica, min(first_seen) AS first_seen FROM replica_config_seen
               GROUP BY replica) s ON s.replica = rc.replica
    LEFT JOIN (SELECT replica, min(started_at) AS first_start FROM usage
               WHERE replica IN (SELECT replica FROM replica_config) GROUP BY replica) u
        ON u.replica = rc.replica
), configured AS (
    SELECT rc.replica, t.w, rc.pool, rc.model, coalesce(pc.gpu, rc.gpu) AS gpu, rc.pricing,
           rc.count * coalesce(pc.fraction, 0) AS gpu_equiv, 0.0 AS energy_j,
           rc.count * pc.usd_per_hour * $window_us::BIGINT / 3.6e9 AS capacity_usd,
           pc.usd_per_hour IS NOT NULL AS priced
    FROM replica_config rc
    CROSS JOIN (SELECT unnest(range($w_since::BIGINT, $w_until::BIGINT)) AS w) t
    LEFT JOIN price_catalog pc
        ON pc.lookup = lower(rc.gpu) AND pc.mig_profile = rc.mig_profile
       AND pc.pricing = rc.pricing
    LEFT JOIN replica_start st ON st.replica = rc.replica
    WHERE rc.replica NOT IN (SELECT DISTINCT replica FROM dev)
      AND (st.start_us IS NULL OR (t.w + 1) * $window_us::BIGINT > st.start_us)
), unioned AS (
    SELECT * FROM sampled UNION ALL SELECT * FROM configured
)
SELECT replica, w, pool, model, gpu, pricing, gpu_equiv, $window_us::BIGINT / 1e6 AS provisioned_s,
       energy_j, coalesce(capacity_usd, 0) AS capacity_usd,
       CASE WHEN $price_energy THEN energy_j / 3.6e6 * $usd_per_kwh ELSE 0 END AS energy_usd,
       round((coalesce(capacity_usd, 0)
              + CASE WHEN $price_energy THEN energy_j / 3.6e6 * $usd_per_kwh ELSE 0 END)
             * $overhead * 1e6)::BIGINT AS cost_micro,
       priced
FROM unioned;

-- name: profiles
-- The distinct (replica, tenant, model, feature, API key, pool) of the requests a run or a
-- lookup reads (statement `requests`), numbered: requests carry the number, not the strings.
CREATE OR REPLACE TEMP TABLE alloc_profiles AS
SELECT (row_number() OVER (ORDER BY replica, tenant, model, feature, api_key_id, pool) - 1)
           AS profile, *
FROM (
    SELECT DISTINCT replica, tenant, model, feature, api_key_id, pool
    FROM usage
    WHERE upstream = 'self_hosted' AND status NOT IN ('throttled', 'cache_hit')
      AND replica <> '' AND ($replica = '' OR replica = $replica)
      AND finished_at >= make_timestamp($w_since::BIGINT * $window_us::BIGINT)
      AND started_at < make_timestamp($w_until::BIGINT * $window_us::BIGINT)
);

-- name: register_replicas
-- Record when the service first ran with each configured replica (replica_config).
INSERT INTO replica_config_seen
SELECT replica, CAST($now AS TIMESTAMP) FROM replica_config
WHERE replica NOT IN (SELECT replica FROM replica_config_seen);

-- name: requests
-- Self-hosted requests overlapping the range, as integer-microsecond intervals: queued until
-- x0, prefill [x0, p1], decode [d0, f] (without a first token both phases span [x0, f]).
-- Read into numpy (metering/window_costs.py does the arithmetic); h orders tied starts.
-- $replica: '' for a run, one replica for a request lookup (which also wants the ids).
WITH base AS (
    SELECT p.profile, CASE WHEN $with_id THEN u.request_id END AS request_id,
           hash(u.request_id) AS h,
           greatest(u.prompt_tokens - u.cached_prompt_tokens, 0)::DOUBLE AS prefill,
           u.completion_tokens::DOUBLE AS decode,
           u.prompt_tokens, u.cached_prompt_tokens, u.completion_tokens,
           epoch_us(u.finished_at) AS f,
           least(epoch_us(u.started_at) + coalesce(round(u.queue_s * 1e6), 0)::BIGINT,
                 epoch_us(u.finished_at)) AS x0,
           epoch_us(u.first_token_at) AS ft
    FROM usage u
    JOIN alloc_profiles p USING (replica, tenant, model, feature, api_key_id, pool)
    WHERE u.upstream = 'self_hosted' AND u.status NOT IN ('throttled', 'cache_hit')
      AND u.replica <> '' AND ($replica = '' OR u.replica = $replica)
      AND u.finished_at >= make_timestamp($w_since::BIGINT * $window_us::BIGINT)
      AND u.started_at < make_timestamp($w_until::BIGINT * $window_us::BIGINT)
)
SELECT profile, request_id, h, prefill, decode, prompt_tokens, cached_prompt_tokens,
       completion_tokens, x0, f,
       CASE WHEN ft IS NULL THEN f ELSE least(greatest(ft, x0), f) END AS p1,
       CASE WHEN ft IS NULL THEN x0 ELSE least(greatest(ft, x0), f) END AS d0
FROM base;

-- name: profile_rows
SELECT * FROM alloc_profiles ORDER BY profile;

-- name: capacity_rows
SELECT replica, w, pool, model, gpu, pricing, gpu_equiv, provisioned_s, energy_j,
       capacity_usd, energy_usd, cost_micro, priced
FROM alloc_capacity;

-- name: managed
-- Requests served by a managed API: priced at the catalog's token prices, in the window where
-- they finished.
CREATE OR REPLACE TEMP TABLE alloc_managed AS
SELECT u.request_id, (epoch_us(u.finished_at) // $window_us::BIGINT) AS w,
       make_timestamp(epoch_us(u.finished_at) // 3600000000 * 3600000000) AS hour, u.pool,
       u.tenant, u.model, u.feature, u.api_key_id,
       round(u.prompt_tokens * mp.input_per_mtok
             + u.completion_tokens * mp.output_per_mtok)::BIGINT AS cost_micro,
       u.prompt_tokens, u.cached_prompt_tokens, u.completion_tokens
FROM usage u JOIN managed_prices mp ON mp.model = u.model
WHERE u.upstream = 'managed' AND u.status NOT IN ('throttled', 'cache_hit')
  AND u.finished_at >= make_timestamp($w_since::BIGINT * $window_us::BIGINT)
  AND u.finished_at < make_timestamp($w_until::BIGINT * $window_us::BIGINT);

-- name: clear_replica_windows
DELETE FROM replica_window
WHERE window_start >= make_timestamp($w_since::BIGINT * $window_us::BIGINT)
  AND window_start < make_timestamp($w_until::BIGINT * $window_us::BIGINT);

-- name: insert_replica_windows
-- alloc_replicas: one row per capacity row, from metering/window_costs.py.
INSERT INTO replica_window
SELECT replica, make_timestamp(w * $window_us::BIGINT), pool, model, gpu, pricing, gpu_equiv,
       provisioned_s, busy_s, energy_j, capacity_usd, energy_usd, cost_micro,
       allocated_micro, cost_micro - allocated_micro, prefill_tokens, decode_tokens, requests
FROM alloc_replicas
ORDER BY w;

-- name: clear_hourly
DELETE FROM cost_hourly
WHERE hour >= make_timestamp($w_since::BIGINT * $window_us::BIGINT)
  AND hour < make_timestamp($w_until::BIGINT * $window_us::BIGINT);

-- name: hourly
-- Hourly cost at the FOCUS grain (the range is whole hours, see allocation.py): cost and
-- GPU-seconds in the windows they were spent; requests and tokens in the window the request
-- finished. alloc_rows / alloc_names: the priced request-windows as integer codes.
INSERT INTO cost_hourly
WITH g AS (
    SELECT hour, rep, pool, tenant, model, sum(cost_micro) AS cost, sum(requests) AS n,
           sum(prompt_tokens) AS p, sum(cached_prompt_tokens) AS c,
           sum(completion_tokens) AS o, sum(gpu_s) AS gpu_s, sum(energy_j) AS energy_j
    FROM alloc_rows
    GROUP BY ALL
)
SELECT make_timestamp(g.hour * 3600000000) AS hour, r.name, p.name, t.name, m.name,
       'self_hosted', g.cost, g.n, g.p, g.c, g.o, g.gpu_s, g.energy_j
FROM g
JOIN alloc_names r ON r.dim = 'replica' AND r.code = g.rep
JOIN alloc_names p ON p.dim = 'pool' AND p.code = g.pool
JOIN alloc_names t ON t.dim = 'tenant' AND t.code = g.tenant
JOIN alloc_names m ON m.dim = 'model' AND m.code = g.model
UNION ALL
SELECT hour, '', pool, tenant, model, 'managed', sum(cost_micro), count(*),
       sum(prompt_tokens), sum(cached_prompt_tokens), sum(completion_tokens), 0, 0
FROM alloc_managed
GROUP BY ALL
ORDER BY hour;

-- name: clear_detail
DELETE FROM cost_detail
WHERE hour >= make_timestamp($w_since::BIGINT * $window_us::BIGINT)
  AND hour < make_timestamp($w_until::BIGINT * $window_us::BIGINT);

-- name: insert_detail
-- Hourly cost per tenant and model by feature and by API key (all replicas together), for
-- reports filtered by tenant or model and for the feature / key rollups. idle_share_micro:
-- the rows' share of their replica-hours' idle cost (idle x cost / allocated of each
-- replica-hour, summed, floored).
INSERT INTO cost_detail
WITH g AS (
    SELECT hour, tenant, model, feature, api_key_id, sum(cost_micro) AS cost,
           sum(idle_share) AS idle, sum(requests) AS n, sum(prompt_tokens) AS p,
           sum(cached_prompt_tokens) AS c, sum(completion_tokens) AS o, sum(gpu_s) AS gpu_s,
           sum(energy_j) AS energy_j
    FROM alloc_rows
    GROUP BY GROUPING SETS ((hour, tenant, model, feature), (hour, tenant, model, api_key_id))
)
SELECT make_timestamp(g.hour * 3600000000) AS hour, t.name, m.name,
       CASE WHEN g.feature IS NOT NULL THEN 'feature' ELSE 'api_key' END,
       coalesce(f.name, k.name), 'self_hosted', g.cost, floor(g.idle)::BIGINT, g.n, g.p, g.c,
       g.o, g.gpu_s, g.energy_j
FROM g
JOIN alloc_names t ON t.dim = 'tenant' AND t.code = g.tenant
JOIN alloc_names m ON m.dim = 'model' AND m.code = g.model
LEFT JOIN alloc_names f ON f.dim = 'feature' AND f.code = g.feature
LEFT JOIN alloc_names k ON k.dim = 'api_key_id' AND k.code = g.api_key_id
UNION ALL
SELECT hour, tenant, model, d.dim, CASE d.dim WHEN 'feature' THEN feature ELSE api_key_id END,
       'managed', sum(cost_micro), 0, count(*), sum(prompt_tokens), sum(cached_prompt_tokens),
       sum(completion_tokens), 0, 0
FROM alloc_managed CROSS JOIN (VALUES ('feature'), ('api_key')) d(dim)
GROUP BY ALL
ORDER BY hour;

-- name: clear_replica_hourly
DELETE FROM replica_hourly
WHERE hour >= make_timestamp($w_since::BIGINT * $window_us::BIGINT)
  AND hour < make_timestamp($w_until::BIGINT * $window_us::BIGINT);

-- name: insert_replica_hourly
INSERT INTO replica_hourly
SELECT date_trunc('hour', window_start) AS hour, replica, any_value(pool), sum(cost_micro),
       sum(allocated_micro), sum(idle_micro), sum(busy_s), sum(provisioned_s),
       sum(gpu_equiv * provisioned_s), sum(energy_j)
FROM replica_window
WHERE window_start >= make_timestamp($w_since::BIGINT * $window_us::BIGINT)
  AND window_start < date_trunc('hour', make_timestamp($w_until::BIGINT * $window_us::BIGINT - 1))
                     + INTERVAL 1 HOUR
GROUP BY ALL
ORDER BY hour;

-- name: clear_rollup_hours
DELETE FROM cost_rollup
WHERE grain = 'hour'
  AND bucket >= make_timestamp($w_since::BIGINT * $window_us::BIGINT)
  AND bucket < make_timestamp($w_until::BIGINT * $window_us::BIGINT);

-- name: insert_rollup_hours
-- Per hour, by each reporting dimension. Tenant, model, pool and model x tenant from
-- cost_hourly, each key's share of the idle cost computed per replica-hour (floor of idle x
-- key cost / allocated) and summed; feature and API key from cost_detail. Pool rows keep
-- their replica (the by-replica report reads them); the other dimensions are summed over
-- replicas: replica '*' for self-hosted, '' for managed.
INSERT INTO cost_rollup
WITH per_replica AS (
    SELECT hour, replica, 'tenant' AS dim, tenant AS key, cost_micro, requests, prompt_tokens,
           cached_prompt_tokens, completion_tokens, gpu_s, energy_j
    FROM cost_hourly
    WHERE hour >= make_timestamp($w_since::BIGINT * $window_us::BIGINT)
      AND hour < make_timestamp($w_until::BIGINT * $window_us::BIGINT)
    UNION ALL
    SELECT hour, replica, 'model', model, cost_micro, requests, prompt_tokens,
           cached_prompt_tokens, completion_tokens, gpu_s, energy_j
    FROM cost_hourly
    WHERE hour >= make_timestamp($w_since::BIGINT * $window_us::BIGINT)
      AND hour < make_timestamp($w_until::BIGINT * $window_us::BIGINT)
    UNION ALL
    SELECT hour, replica, 'pool', pool, cost_micro, requests, prompt_tokens,
           cached_prompt_tokens, completion_tokens, gpu_s, energy_j
    FROM cost_hourly
    WHERE hour >= make_timestamp($w_since::BIGINT * $window_us::BIGINT)
      AND hour < make_timestamp($w_until::BIGINT * $window_us::BIGINT)
    UNION ALL
    SELECT hour, replica, 'model_tenant', model || chr(31) || tenant, cost_micro, requests,
           prompt_tokens, cached_prompt_tokens, completion_tokens, gpu_s, energy_j
    FROM cost_hourly
    WHERE hour >= make_timestamp($w_since::BIGINT * $window_us::BIGINT)
      AND hour < make_timestamp($w_until::BIGINT * $window_us::BIGINT)
), keyed AS (
    SELECT hour, replica, dim, key, sum(cost_micro) AS cost, sum(requests) AS requests,
           sum(prompt_tokens) AS prompt_tokens, sum(cached_prompt_tokens) AS cached,
           sum(completion_tokens) AS completion_tokens, sum(gpu_s) AS gpu_s,
           sum(energy_j) AS energy_j
    FROM per_replica
    GROUP BY ALL
), shared AS (
    SELECT k.*,
           CASE WHEN r.allocated_micro > 0
                THEN floor(r.idle_micro * k.cost / r.allocated_micro) ELSE 0 END::BIGINT
               AS idle_share
    FROM keyed k
    LEFT JOIN replica_hourly r ON r.hour = k.hour AND r.replica = k.replica
)
SELECT 'hour', hour, dim, key,
       CASE WHEN dim = 'pool' OR replica = '' THEN replica ELSE '*' END AS rep,
       sum(cost), sum(idle_share), sum(requests), sum(prompt_tokens), sum(cached),
       sum(completion_tokens), sum(gpu_s), sum(energy_j)
FROM shared
GROUP BY ALL
UNION ALL
SELECT 'hour', hour, dim, key, CASE WHEN upstream = 'managed' THEN '' ELSE '*' END,
       sum(cost_micro), sum(idle_share_micro), sum(requests), sum(prompt_tokens),
       sum(cached_prompt_tokens), sum(completion_tokens), sum(gpu_s), sum(energy_j)
FROM cost_detail
WHERE hour >= make_timestamp($w_since::BIGINT * $window_us::BIGINT)
  AND hour < make_timestamp($w_until::BIGINT * $window_us::BIGINT)
GROUP BY ALL
ORDER BY 2;

-- name: clear_rollup_days
DELETE FROM cost_rollup
WHERE grain = 'day'
  AND bucket >= date_trunc('day', make_timestamp($w_since::BIGINT * $window_us::BIGINT))
  AND bucket < make_timestamp($w_until::BIGINT * $window_us::BIGINT);

-- name: insert_rollup_days
INSERT INTO cost_rollup
SELECT 'day', CAST(date_trunc('day', bucket) AS TIMESTAMP) AS day, dim, key, replica,
       sum(cost_micro), sum(idle_share_micro), sum(requests), sum(prompt_tokens), sum(cached_prompt_tokens),
       sum(completion_tokens), sum(gpu_s), sum(energy_j)
FROM cost_rollup
WHERE grain = 'hour'
  AND bucket >= date_trunc('day', make_timestamp($w_since::BIGINT * $window_us::BIGINT))
  AND bucket < date_trunc('day', make_timestamp($w_until::BIGINT * $window_us::BIGINT - 1))
               + INTERVAL 1 DAY
GROUP BY ALL
ORDER BY day;
