-- Queries behind the reports, the HTTP API and the CLI. Time ranges are [$since, $until).

-- name: latest_fit_calibration
SELECT model, prefill_s_per_token, decode_s_per_token, windows, source, r2, rmse_s
FROM calibration
WHERE source = 'fit'
QUALIFY row_number() OVER (PARTITION BY model ORDER BY computed_at DESC, range_end DESC) = 1;

-- name: calibration_history
SELECT model, computed_at, range_start, range_end, windows, prefill_s_per_token,
       decode_s_per_token, r2, rmse_s, source
FROM calibration
WHERE ($model = '' OR model = $model)
ORDER BY computed_at DESC, model
LIMIT $limit;

-- name: latest_calibration
SELECT model, prefill_s_per_token, decode_s_per_token, windows, source, r2, rmse_s, computed_at
FROM calibration
QUALIFY row_number() OVER (PARTITION BY model ORDER BY computed_at DESC, range_end DESC) = 1
ORDER BY model;

-- name: cost_by
-- Cost per bucket and key from the hourly detail, for filtered reports (__DIM__ and
-- __BUCKET__ are whitelisted by metering/reports.py). Idle is shared per replica-hour in
-- proportion to each key's allocated cost, as in the rollups.
WITH c AS (
    SELECT hour, replica, __DIM__ AS key, sum(cost_micro) AS cost,
           sum(requests) AS requests, sum(prompt_tokens) AS prompt_tokens,
           sum(cached_prompt_tokens) AS cached_prompt_tokens,
           sum(completion_tokens) AS completion_tokens, sum(gpu_s) AS gpu_s,
           sum(energy_j) AS energy_j
    FROM cost_hourly
    WHERE hour >= $since AND hour < $until AND ($tenant = '' OR tenant = $tenant)
      AND ($model = '' OR model = $model)
    GROUP BY ALL
)
SELECT __BUCKET__ AS bucket, c.key, sum(c.cost) AS cost_micro,
       sum(CASE WHEN $share_idle AND r.allocated_micro > 0 AND c.replica <> ''
                THEN floor(r.idle_micro * c.cost / r.allocated_micro) ELSE 0 END)::BIGINT
           AS idle_share_micro,
       sum(c.requests), sum(c.prompt_tokens), sum(c.cached_prompt_tokens),
       sum(c.completion_tokens), sum(c.gpu_s), sum(c.energy_j) / 3.6e6
FROM c LEFT JOIN replica_hourly r USING (hour, replica)
GROUP BY ALL
ORDER BY bucket, cost_micro DESC, c.key;

-- name: cost_by_detail
-- Cost per bucket and feature or API key ($dim), filtered by tenant or model, from the
-- hourly detail (idle share precomputed per replica-hour by allocation).
SELECT __BUCKET__ AS bucket, c.key, sum(c.cost_micro) AS cost_micro,
       CASE WHEN $share_idle THEN sum(c.idle_share_micro) ELSE 0 END::BIGINT,
       sum(c.requests), sum(c.prompt_tokens), sum(c.cached_prompt_tokens),
       sum(c.completion_tokens), sum(c.gpu_s), sum(c.energy_j) / 3.6e6
FROM cost_detail c
WHERE c.hour >= $since AND c.hour < $until AND c.dim = $dim
  AND ($tenant = '' OR c.tenant = $tenant) AND ($model = '' OR c.model = $model)
GROUP BY ALL
ORDER BY bucket, cost_micro DESC, c.key;

-- name: idle_by
-- Idle cost per bucket and replica (or pool): capacity no request used, and how much of it
-- was shared back to tenants when share_idle is on.
WITH w AS (
    SELECT __BUCKET_W__ AS bucket, __IDLE_DIM__ AS key, sum(cost_micro) AS cost,
           sum(allocated_micro) AS allocated, sum(idle_micro) AS idle,
           sum(busy_s) AS busy_s, sum(provisioned_s) AS provisioned_s,
           sum(gpu_equiv * provisioned_s) AS gpu_s, sum(energy_j) / 3.6e6 AS kwh
    FROM replica_window
    WHERE window_start >= $since AND window_start < $until
    GROUP BY ALL
)
SELECT bucket, key, cost, allocated, idle, busy_s, provisioned_s, gpu_s, kwh
FROM w
ORDER BY bucket, key;

-- name: request_record
SELECT * FROM usage WHERE request_id = $request_id;

-- name: request_replica_windows
-- The allocated windows of a replica that overlap a request's [x0, f) (windows are at most an
-- hour long; the constant bound lets DuckDB skip row groups by window_start).
SELECT replica, window_start, pool, model, gpu, pricing, gpu_equiv, provisioned_s, energy_j,
       capacity_usd, energy_usd, cost_micro, allocated_micro
FROM replica_window
WHERE replica = $replica
  AND window_start > CAST($x0 AS TIMESTAMP) - INTERVAL 1 HOUR
  AND window_start <= CAST($f AS TIMESTAMP)
  AND window_start + to_microseconds(round(provisioned_s * 1e6)::BIGINT) > CAST($x0 AS TIMESTAMP)
  AND (window_start < CAST($f AS TIMESTAMP) OR CAST($x0 AS TIMESTAMP) = CAST($f AS TIMESTAMP))
ORDER BY window_start;

-- name: span_calibrations
-- The calibrations of the allocation runs that covered any window starting in [$first, $last],
-- oldest run first (metering/request_cost.py keeps, per window and model, the last one).
SELECT model, range_start, range_end, prefill_s_per_token, decode_s_per_token, source
FROM calibration
WHERE range_start <= $last AND range_end > $first
ORDER BY computed_at, rowid;

-- name: allocated_at
SELECT count(*) > 0 FROM allocation_runs WHERE range_start <= $at AND range_end > $at;

-- name: buy_vs_build
-- Self-hosted cost (allocated, and with the idle share: what was reserved) beside the token
-- volumes the managed prices are applied to, per model and tenant.
WITH c AS (
    SELECT model, tenant, replica, hour, sum(cost_micro) AS cost,
           sum(prompt_tokens) AS prompt_tokens, sum(completion_tokens) AS completion_tokens,
           sum(requests) AS requests
    FROM cost_hourly
    WHERE hour >= $since AND hour < $until AND upstream = 'self_hosted'
    GROUP BY ALL
), idle AS (
    SELECT date_trunc('hour', window_start) AS hour, replica, sum(idle_micro) AS idle
    FROM replica_window WHERE window_start >= $since AND window_start < $until GROUP BY ALL
), used AS (
    SELECT hour, replica, sum(cost) AS used FROM c GROUP BY ALL
)
SELECT c.model, c.tenant, sum(c.cost) AS cost_micro,
       sum(CASE WHEN u.used > 0 THEN floor(coalesce(i.idle, 0) * c.cost / u.used) ELSE 0 END)
           AS idle_share_micro,
       sum(c.prompt_tokens) AS prompt_tokens, sum(c.completion_tokens) AS completion_tokens,
       sum(c.requests) AS requests
FROM c JOIN used u USING (hour, replica) LEFT JOIN idle i USING (hour, replica)
GROUP BY c.model, c.tenant
ORDER BY c.model, c.tenant;

-- name: allocated_until
SELECT max(window_start) FROM replica_window;

-- name: model_rates
-- Per model over [$since, $until): replica $ per wall second, $ per GPU-second, idle share.
WITH m AS (
    SELECT replica, any_value(model) AS model FROM cost_hourly
    WHERE hour >= $since AND hour < $until AND upstream = 'self_hosted' AND replica <> ''
    GROUP BY replica
)
SELECT m.model, sum(rw.cost_micro) / 1e6 / nullif(sum(rw.provisioned_s), 0) AS usd_per_s,
       sum(rw.cost_micro) / 1e6 / nullif(sum(rw.gpu_equiv * rw.provisioned_s), 0)
           AS usd_per_gpu_s,
       sum(rw.idle_micro)::DOUBLE / nullif(sum(rw.cost_micro), 0) AS idle_fraction,
       count(DISTINCT rw.replica) AS replicas
FROM replica_window rw JOIN m USING (replica)
WHERE rw.window_start >= $since AND rw.window_start < $until
GROUP BY m.model
ORDER BY m.model;

-- name: fleet_rate
SELECT sum(cost_micro) / 1e6 / nullif(sum(provisioned_s), 0),
       sum(cost_micro) / 1e6 / nullif(sum(gpu_equiv * provisioned_s), 0),
       sum(idle_micro)::DOUBLE / nullif(sum(cost_micro), 0)
FROM replica_window WHERE window_start >= $since AND window_start < $until;

-- name: latency
-- Latency percentiles and throughput per bucket (and per __GROUP__: '' , pool or replica,
-- substituted from a fixed list) from the usage records.
SELECT __BUCKET_U__ AS bucket, __GROUP__ AS grp, count(*) AS requests,
       count(*) FILTER (WHERE status = 'error') AS errors,
       count(*) FILTER (WHERE status = 'client_abort') AS aborts,
       quantile_cont(coalesce(ttft_s, epoch(first_token_at - started_at)), [0.5, 0.95, 0.99])
           AS ttft,
       quantile_cont(coalesce(e2e_s, epoch(finished_at - started_at)), [0.5, 0.95, 0.99]) AS e2e,
       quantile_cont(itl_p50_s, [0.5, 0.95]) AS itl,
       quantile_cont(queue_s, [0.5, 0.95]) AS queue,
       median(completion_tokens / nullif(epoch(finished_at - first_token_at), 0))
           AS tokens_per_s_per_request,
       sum(completion_tokens) AS completion_tokens, sum(prompt_tokens) AS prompt_tokens
FROM usage
WHERE finished_at >= $since AND finished_at < $until
  AND ($model = '' OR model = $model) AND ($tenant = '' OR tenant = $tenant)
  AND ($pool = '' OR pool = $pool) AND ($replica = '' OR replica = $replica)
  AND status NOT IN ('throttled', 'cache_hit')
GROUP BY ALL
ORDER BY bucket, grp;

-- name: gpu_series
SELECT __BUCKET_S__ AS bucket, replica, gpu_uuid, mig_uuid, any_value(gpu_model) AS gpu_model,
       any_value(mig_profile) AS mig_profile, avg(util_pct) AS util_pct,
       max(mem_used_bytes) AS mem_used_bytes, max(mem_total_bytes) AS mem_total_bytes,
       avg(power_w) AS power_w, max(energy_j) - min(energy_j) AS energy_j,
       max(temp_c) AS temp_c, count(*) AS samples
FROM gpu_samples
WHERE ts >= $since AND ts < $until AND ($replica = '' OR replica = $replica)
GROUP BY ALL
ORDER BY bucket, replica, gpu_uuid, mig_uuid;

-- name: cache_hits
SELECT tenant, model, count(*) AS hits, sum(prompt_tokens) AS prompt_tokens,
       sum(completion_tokens) AS completion_tokens
FROM usage
WHERE status = 'cache_hit' AND finished_at >= $since AND finished_at < $until
GROUP BY ALL
ORDER BY tenant, model;

-- name: status_counts
SELECT status, count(*) FROM usage
WHERE finished_at >= $since AND finished_at < $until GROUP BY ALL ORDER BY status;

-- name: cost_by_rollup
-- Cost per bucket and key from the rollups (__BUCKET__ / __KEY__ whitelisted in
-- metering/reports.py); idle shares were computed per replica-hour when the rollup was built.
SELECT __BUCKET__ AS b, __KEY__ AS k, sum(cost_micro) AS cost_micro,
       CASE WHEN $share_idle THEN sum(idle_share_micro) ELSE 0 END::BIGINT,
       sum(requests), sum(prompt_tokens), sum(cached_prompt_tokens), sum(completion_tokens),
       sum(gpu_s), sum(energy_j) / 3.6e6
FROM cost_rollup
WHERE grain = $grain AND dim = $dim AND bucket >= $since AND bucket < $until
GROUP BY ALL
ORDER BY b, cost_micro DESC, k;

-- name: idle_by_rollup
SELECT __BUCKET_H__ AS bucket, __IDLE_DIM__ AS key, sum(cost_micro), sum(allocated_micro),
       sum(idle_micro), sum(busy_s), sum(provisioned_s), sum(gpu_s), sum(energy_j) / 3.6e6
FROM replica_hourly
WHERE hour >= $since AND hour < $until
GROUP BY ALL
ORDER BY bucket, key;

-- name: buy_vs_build_rollup
SELECT key, sum(cost_micro), sum(idle_share_micro), sum(prompt_tokens), sum(completion_tokens),
       sum(requests)
FROM cost_rollup
WHERE grain = $grain AND dim = 'model_tenant' AND replica <> ''
  AND bucket >= $since AND bucket < $until
GROUP BY key
ORDER BY key;

-- name: tenant_spend_rollup
-- A tenant's cost from the hourly rollup in the hours [$h_since, $until) with its idle share
-- when shared; the hour $h_since counts for the fraction $first_fraction of it that lies in
-- the range (spend assumed even within that hour).
SELECT coalesce(sum(cost_micro * CASE WHEN bucket = $h_since THEN $first_fraction ELSE 1 END),
                0)::BIGINT,
       CASE WHEN $share_idle
            THEN coalesce(sum(idle_share_micro
                              * CASE WHEN bucket = $h_since THEN $first_fraction ELSE 1 END), 0)
            ELSE 0 END::BIGINT
FROM cost_rollup
WHERE grain = 'hour' AND dim = 'tenant' AND key = $tenant
  AND bucket >= $h_since AND bucket < $until;
