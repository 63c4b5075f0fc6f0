-- Cost allocation over one range of windows [$w_since::BIGINT, $w_until::BIGINT) (window index = epoch
-- microseconds // $window_us::BIGINT). Temp tables in order; see docs/metering.md "Allocation".
-- Inputs registered by metering/allocation.py: price_catalog, replica_config, managed_prices.

-- name: capacity
-- Each replica's priced capacity per window: GPUs / MIG slices seen in its GPU samples, or,
-- for configured replicas without samples in the range, the configured count for every window.
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
    WHERE rc.replica NOT IN (SELECT DISTINCT replica FROM dev)
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

-- name: requests
-- Self-hosted requests overlapping the range, as integer-microsecond intervals: queued until
-- x0, prefill [x0, p1], decode [d0, f] (without a first token both phases span [x0, f]).
CREATE OR REPLACE TEMP TABLE alloc_req AS
WITH base AS (
    SELECT row_number() OVER () AS rid, request_id, replica, tenant, model, feature, api_key_id, pool, upstream,
           greatest(prompt_tokens - cached_prompt_tokens, 0)::DOUBLE AS prefill,
           completion_tokens::DOUBLE AS decode,
           prompt_tokens, cached_prompt_tokens, completion_tokens,
           epoch_us(finished_at) AS f,
           least(epoch_us(started_at) + coalesce(round(queue_s * 1e6), 0)::BIGINT,
                 epoch_us(finished_at)) AS x0,
           epoch_us(first_token_at) AS ft
    FROM usage
    WHERE upstream = 'self_hosted' AND status NOT IN ('throttled', 'cache_hit')
      AND replica <> ''
      AND finished_at >= make_timestamp($w_since::BIGINT * $window_us::BIGINT)
      AND started_at < make_timestamp($w_until::BIGINT * $window_us::BIGINT)
)
SELECT *,
       CASE WHEN ft IS NULL THEN f ELSE least(greatest(ft, x0), f) END AS p1,
       CASE WHEN ft IS NULL THEN x0 ELSE least(greatest(ft, x0), f) END AS d0,
       x0 // $window_us::BIGINT AS w0,
       greatest(x0, f - 1) // $window_us::BIGINT AS w1
FROM base;

-- name: request_windows
-- One row per request and window it overlaps, with its prefill / decode tokens pro-rated by
-- the overlap of each phase with the window.
CREATE OR REPLACE TEMP TABLE alloc_rw AS
SELECT r.rid, r.replica, t.w, r.model,
       greatest(least(r.f, (t.w + 1) * $window_us::BIGINT)
                - greatest(r.x0, t.w * $window_us::BIGINT), 0) AS ov_us,
       r.prefill * CASE WHEN r.p1 > r.x0
           THEN greatest(least(r.p1, (t.w + 1) * $window_us::BIGINT)
                         - greatest(r.x0, t.w * $window_us::BIGINT), 0)::DOUBLE / (r.p1 - r.x0)
           ELSE (r.x0 // $window_us::BIGINT = t.w)::INTEGER END AS p_tok,
       r.decode * CASE WHEN r.f > r.d0
           THEN greatest(least(r.f, (t.w + 1) * $window_us::BIGINT)
                         - greatest(r.d0, t.w * $window_us::BIGINT), 0)::DOUBLE / (r.f - r.d0)
           ELSE (greatest(r.f - 1, r.x0) // $window_us::BIGINT = t.w)::INTEGER END AS d_tok,
       (r.w1 = t.w) AS is_last
FROM alloc_req r,
     unnest(range(greatest(r.w0, $w_since::BIGINT), least(r.w1, $w_until::BIGINT - 1) + 1)) AS t(w);

-- name: replica_index
CREATE OR REPLACE TEMP TABLE alloc_reps AS
SELECT replica, (row_number() OVER (ORDER BY replica) - 1)::BIGINT AS rep
FROM (SELECT DISTINCT replica FROM alloc_req);

-- name: busy_intervals
-- Request intervals per replica in start order, for the union (islands) computed by
-- metering/busy.py.
SELECT p.rep, r.x0, r.f
FROM alloc_req r JOIN alloc_reps p USING (replica)
WHERE r.f > r.x0
ORDER BY p.rep, r.x0;

-- name: busy
-- Engine busy time per replica and window (union of request intervals, from metering/busy.py).
CREATE OR REPLACE TEMP TABLE alloc_busy AS
SELECT p.replica, b.w, sum(b.busy_us) AS busy_us
FROM alloc_busy_raw b JOIN alloc_reps p USING (rep)
GROUP BY p.replica, b.w;

-- name: calibration_sums
-- Normal-equation sums for busy_s ~ a * prefill + b * decode per model, over replica-windows
-- that served one model and were busy.
WITH win AS (
    SELECT rw.replica, rw.w, min(rw.model) AS model, count(DISTINCT rw.model) AS models,
           sum(rw.p_tok) AS p, sum(rw.d_tok) AS d
    FROM alloc_rw rw
    GROUP BY rw.replica, rw.w
)
SELECT win.model, count(*) AS n,
       sum(p * p) AS pp, sum(p * d) AS pd, sum(d * d) AS dd,
       sum(p * b.busy_us / 1e6) AS pb, sum(d * b.busy_us / 1e6) AS db,
       sum((b.busy_us / 1e6) ^ 2) AS bb, sum(b.busy_us / 1e6) AS b_sum
FROM win JOIN alloc_busy b USING (replica, w)
WHERE win.models = 1 AND b.busy_us > 0 AND (p > 0 OR d > 0)
GROUP BY win.model
ORDER BY win.model;

-- name: shares
-- Split each replica-window's busy cost over its requests by work, in integer micro-dollars,
-- with a largest-remainder step so the parts sum exactly to the allocated total.
CREATE OR REPLACE TEMP TABLE alloc_share AS
WITH rw AS (
    SELECT x.rid, x.replica, x.w, x.ov_us, x.p_tok, x.d_tok, x.is_last,
           x.p_tok * cw.a + x.d_tok * cw.b AS work
    FROM alloc_rw x JOIN alloc_weights cw ON cw.model = x.model
), tot AS (
    SELECT replica, w, sum(work) AS work_sum, sum(ov_us) AS ov_sum, count(*) AS n
    FROM rw GROUP BY replica, w
), win AS (
    SELECT c.replica, c.w, c.cost_micro, c.provisioned_s, c.gpu_equiv, c.energy_j,
           least(coalesce(b.busy_us, 0) / 1e6, c.provisioned_s) AS busy_s
    FROM alloc_capacity c LEFT JOIN alloc_busy b USING (replica, w)
    WHERE c.priced
), base AS (
    SELECT rw.rid, rw.replica, rw.w, rw.work, rw.p_tok, rw.d_tok, rw.is_last,
           win.busy_s, win.provisioned_s, win.gpu_equiv, win.energy_j,
           win.cost_micro - round(win.cost_micro * (win.provisioned_s - win.busy_s)
                                  / win.provisioned_s)::BIGINT AS alloc_total,
           CASE WHEN tot.work_sum > 0 THEN rw.work / tot.work_sum
                WHEN tot.ov_sum > 0 THEN rw.ov_us / tot.ov_sum
                ELSE 1.0 / tot.n END AS share
    FROM rw JOIN tot USING (replica, w) JOIN win USING (replica, w)
), floored AS (
    SELECT *, alloc_total * share AS exact, floor(alloc_total * share)::BIGINT AS fl
    FROM base
), ranked AS (
    SELECT *,
           alloc_total - sum(fl) OVER (PARTITION BY replica, w) AS deficit,
           row_number() OVER (PARTITION BY replica, w ORDER BY exact - fl DESC, rid) AS rk
    FROM floored
)
SELECT rid, replica, w, work, p_tok, d_tok, is_last, share,
       fl + (rk <= deficit)::BIGINT AS cost_micro,
       share * gpu_equiv * busy_s AS gpu_s,
       share * energy_j * busy_s / provisioned_s AS energy_j
FROM ranked;

-- name: share_coverage
-- Request-windows, and those in a priced replica-window (the rows of alloc_share): equal
-- counts mean no request is unpriced, and the anti-join below need not run.
SELECT (SELECT count(*) FROM alloc_rw), (SELECT count(*) FROM alloc_share);

-- name: unpriced_requests
-- Requests with a window on a replica-window without a known price.
SELECT count(DISTINCT rid) FROM alloc_rw rw
WHERE NOT EXISTS (SELECT 1 FROM alloc_capacity c
                  WHERE c.priced AND c.replica = rw.replica AND c.w = rw.w);

-- name: clear_request_windows
DELETE FROM request_window
WHERE window_start >= make_timestamp($w_since::BIGINT * $window_us::BIGINT)
  AND window_start < make_timestamp($w_until::BIGINT * $window_us::BIGINT);

-- name: clear_replica_windows
DELETE FROM replica_window
WHERE window_start >= make_timestamp($w_since::BIGINT * $window_us::BIGINT)
  AND window_start < make_timestamp($w_until::BIGINT * $window_us::BIGINT);

-- name: insert_replica_windows
INSERT INTO replica_window
SELECT c.replica, make_timestamp(c.w * $window_us::BIGINT), c.pool,
       coalesce(nullif(c.model, ''), m.model, ''), c.gpu, c.pricing, c.gpu_equiv,
       c.provisioned_s, least(coalesce(b.busy_us, 0) / 1e6, c.provisioned_s), c.energy_j,
       c.capacity_usd, c.energy_usd, c.cost_micro,
       coalesce(s.allocated, 0),
       c.cost_micro - coalesce(s.allocated, 0),
       coalesce(s.p, 0), coalesce(s.d, 0), coalesce(s.n, 0)
FROM alloc_capacity c
LEFT JOIN alloc_busy b USING (replica, w)
LEFT JOIN (SELECT replica, w, sum(cost_micro) AS allocated, sum(p_tok) AS p, sum(d_tok) AS d,
                  count(*) AS n
           FROM alloc_share GROUP BY replica, w) s USING (replica, w)
LEFT JOIN alloc_models m USING (replica);

-- name: models
CREATE OR REPLACE TEMP TABLE alloc_models AS
SELECT replica, min(model) AS model FROM alloc_req GROUP BY replica;

-- name: insert_request_windows
INSERT INTO request_window
SELECT r.request_id, make_timestamp(s.w * $window_us::BIGINT), s.replica, r.tenant,
       s.cost_micro, s.work, s.p_tok, s.d_tok, s.gpu_s, s.energy_j
FROM alloc_share s JOIN alloc_req r USING (rid)
ORDER BY s.w;

-- name: managed
-- Requests served by a managed API: priced at the catalog's token prices, in the window where
-- they finished.
CREATE OR REPLACE TEMP TABLE alloc_managed AS
SELECT u.request_id, (epoch_us(u.finished_at) // $window_us::BIGINT) AS w, u.pool, u.tenant,
       u.model, u.feature, u.api_key_id,
       round(u.prompt_tokens * mp.input_per_mtok
             + u.completion_tokens * mp.output_per_mtok)::BIGINT AS cost_micro,
       u.prompt_tokens, u.cached_prompt_tokens, u.completion_tokens
FROM usage u JOIN managed_prices mp ON mp.model = u.model
WHERE u.upstream = 'managed' AND u.status NOT IN ('throttled', 'cache_hit')
  AND u.finished_at >= make_timestamp($w_since::BIGINT * $window_us::BIGINT)
  AND u.finished_at < make_timestamp($w_until::BIGINT * $window_us::BIGINT);

-- name: insert_managed
INSERT INTO request_window
SELECT request_id, make_timestamp(w * $window_us::BIGINT), '', tenant, cost_micro, 0,
       prompt_tokens - cached_prompt_tokens, completion_tokens, 0, 0
FROM alloc_managed;

-- name: clear_hourly
DELETE FROM cost_hourly
WHERE hour >= make_timestamp($w_since::BIGINT * $window_us::BIGINT)
  AND hour < make_timestamp($w_until::BIGINT * $window_us::BIGINT);

-- name: hourly
-- Hourly rollup by every reporting dimension (the range is whole hours, see allocation.py).
-- Requests and tokens count in the window the request finished; cost and GPU-seconds in the
-- windows they were spent. Written straight into cost_hourly (clear_hourly emptied the range);
-- insert_rollup_hours reads the range back from there.
INSERT INTO cost_hourly
SELECT hour, replica, pool, tenant, model, feature, api_key_id, upstream,
       sum(cost_micro) AS cost_micro, sum(requests) AS requests,
       sum(prompt_tokens) AS prompt_tokens, sum(cached_prompt_tokens) AS cached_prompt_tokens,
       sum(completion_tokens) AS completion_tokens, sum(gpu_s) AS gpu_s,
       sum(energy_j) AS energy_j
FROM (
    SELECT make_timestamp((s.w * $window_us::BIGINT // 3600000000) * 3600000000) AS hour,
           s.replica, r.pool, r.tenant, r.model, r.feature, r.api_key_id,
           'self_hosted' AS upstream, s.cost_micro, s.is_last::INTEGER AS requests,
           CASE WHEN s.is_last THEN r.prompt_tokens ELSE 0 END AS prompt_tokens,
           CASE WHEN s.is_last THEN r.cached_prompt_tokens ELSE 0 END AS cached_prompt_tokens,
           CASE WHEN s.is_last THEN r.completion_tokens ELSE 0 END AS completion_tokens,
           s.gpu_s, s.energy_j
    FROM alloc_share s JOIN alloc_req r USING (rid)
    UNION ALL
    SELECT make_timestamp((w * $window_us::BIGINT // 3600000000) * 3600000000), '', pool,
           tenant, model, feature, api_key_id, 'managed', cost_micro, 1, prompt_tokens,
           cached_prompt_tokens, completion_tokens, 0, 0
    FROM alloc_managed
)
GROUP BY ALL;

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
-- One pass with grouping sets: per hour and replica, by each reporting dimension.
INSERT INTO cost_rollup
WITH g AS (
    SELECT hour, replica, tenant, model, feature, api_key_id, pool,
           GROUPING(tenant, model, feature, api_key_id, pool) AS gid,
           sum(cost_micro) AS cost, sum(requests) AS requests,
           sum(prompt_tokens) AS prompt_tokens, sum(cached_prompt_tokens) AS cached,
           sum(completion_tokens) AS completion_tokens, sum(gpu_s) AS gpu_s,
           sum(energy_j) AS energy_j
    FROM cost_hourly
    WHERE hour >= make_timestamp($w_since::BIGINT * $window_us::BIGINT)
      AND hour < make_timestamp($w_until::BIGINT * $window_us::BIGINT)
    GROUP BY GROUPING SETS ((hour, replica, tenant), (hour, replica, model),
                            (hour, replica, feature), (hour, replica, api_key_id),
                            (hour, replica, pool), (hour, replica, model, tenant))
), k AS (
    SELECT *,
           CASE gid WHEN 15 THEN 'tenant' WHEN 23 THEN 'model' WHEN 27 THEN 'feature'
                    WHEN 29 THEN 'api_key' WHEN 30 THEN 'pool' ELSE 'model_tenant' END AS dim,
           CASE gid WHEN 15 THEN tenant WHEN 23 THEN model WHEN 27 THEN feature
                    WHEN 29 THEN api_key_id WHEN 30 THEN pool
                    ELSE model || chr(31) || tenant END AS key
    FROM g
)
SELECT 'hour', k.hour, k.dim, k.key, k.replica, k.cost,
       CASE WHEN r.allocated_micro > 0 THEN floor(r.idle_micro * k.cost / r.allocated_micro)
            ELSE 0 END::BIGINT,
       k.requests, k.prompt_tokens, k.cached, k.completion_tokens, k.gpu_s, k.energy_j
FROM k
LEFT JOIN replica_hourly r ON r.hour = k.hour AND r.replica = k.replica
ORDER BY k.hour;

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
