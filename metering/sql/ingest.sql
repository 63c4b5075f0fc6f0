-- Ingest of usage records. The stage table `usage_stage` has one row per record of the batch,
-- `ok` telling whether the row passed validation, and the typed columns of `usage`.

-- name: stage_usage_json
-- A JSON array of records or of CloudEvents envelopes (fields then come from `data`).
CREATE OR REPLACE TEMP TABLE usage_stage AS
WITH raw AS (
    SELECT * FROM read_json($path, format = 'array', maximum_object_size = 16777216, columns = {
        request_id: 'JSON', tenant: 'JSON', api_key_id: 'JSON', model: 'JSON', pool: 'JSON',
        replica: 'JSON', endpoint: 'JSON', stream: 'JSON', status: 'JSON', http_status: 'JSON',
        finish_reason: 'JSON', started_at: 'JSON', first_token_at: 'JSON', finished_at: 'JSON',
        queue_s: 'JSON', prompt_tokens: 'JSON', cached_prompt_tokens: 'JSON',
        completion_tokens: 'JSON', ttft_s: 'JSON', itl_mean_s: 'JSON', itl_p50_s: 'JSON',
        itl_max_s: 'JSON', e2e_s: 'JSON', upstream: 'JSON', tags: 'JSON',
        specversion: 'JSON', type: 'JSON', data: 'JSON'})
), rec AS MATERIALIZED (
    SELECT
        specversion IS NOT NULL AS is_event,
        type ->> '$' AS event_type,
        json_type(data) AS data_type,
        im_nz(CASE WHEN specversion IS NULL THEN request_id ELSE data -> '$.request_id' END) AS request_id,
        im_nz(CASE WHEN specversion IS NULL THEN tenant ELSE data -> '$.tenant' END) AS tenant,
        im_nz(CASE WHEN specversion IS NULL THEN api_key_id ELSE data -> '$.api_key_id' END) AS api_key_id,
        im_nz(CASE WHEN specversion IS NULL THEN model ELSE data -> '$.model' END) AS model,
        im_nz(CASE WHEN specversion IS NULL THEN pool ELSE data -> '$.pool' END) AS pool,
        im_nz(CASE WHEN specversion IS NULL THEN replica ELSE data -> '$.replica' END) AS replica,
        im_nz(CASE WHEN specversion IS NULL THEN endpoint ELSE data -> '$.endpoint' END) AS endpoint,
        im_nz(CASE WHEN specversion IS NULL THEN stream ELSE data -> '$.stream' END) AS stream,
        im_nz(CASE WHEN specversion IS NULL THEN status ELSE data -> '$.status' END) AS status,
        im_nz(CASE WHEN specversion IS NULL THEN http_status ELSE data -> '$.http_status' END) AS http_status,
        im_nz(CASE WHEN specversion IS NULL THEN finish_reason ELSE data -> '$.finish_reason' END) AS finish_reason,
        im_nz(CASE WHEN specversion IS NULL THEN started_at ELSE data -> '$.started_at' END) AS started_at,
        im_nz(CASE WHEN specversion IS NULL THEN first_token_at ELSE data -> '$.first_token_at' END) AS first_token_at,
        im_nz(CASE WHEN specversion IS NULL THEN finished_at ELSE data -> '$.finished_at' END) AS finished_at,
        im_nz(CASE WHEN specversion IS NULL THEN queue_s ELSE data -> '$.queue_s' END) AS queue_s,
        im_nz(CASE WHEN specversion IS NULL THEN prompt_tokens ELSE data -> '$.prompt_tokens' END) AS prompt_tokens,
        im_nz(CASE WHEN specversion IS NULL THEN cached_prompt_tokens ELSE data -> '$.cached_prompt_tokens' END) AS cached_prompt_tokens,
        im_nz(CASE WHEN specversion IS NULL THEN completion_tokens ELSE data -> '$.completion_tokens' END) AS completion_tokens,
        im_nz(CASE WHEN specversion IS NULL THEN ttft_s ELSE data -> '$.ttft_s' END) AS ttft_s,
        im_nz(CASE WHEN specversion IS NULL THEN itl_mean_s ELSE data -> '$.itl_mean_s' END) AS itl_mean_s,
        im_nz(CASE WHEN specversion IS NULL THEN itl_p50_s ELSE data -> '$.itl_p50_s' END) AS itl_p50_s,
        im_nz(CASE WHEN specversion IS NULL THEN itl_max_s ELSE data -> '$.itl_max_s' END) AS itl_max_s,
        im_nz(CASE WHEN specversion IS NULL THEN e2e_s ELSE data -> '$.e2e_s' END) AS e2e_s,
        im_nz(CASE WHEN specversion IS NULL THEN upstream ELSE data -> '$.upstream' END) AS upstream,
        im_nz(CASE WHEN specversion IS NULL THEN tags ELSE data -> '$.tags' END) AS tags
    FROM raw
), typed AS (
    SELECT
        (NOT is_event OR (event_type = 'infermeter.inference.v1' AND data_type = 'OBJECT'))
        AND im_req_str(request_id) AND im_req_str(tenant) AND im_req_str(model)
        AND im_opt_str(api_key_id) AND im_opt_str(pool) AND im_opt_str(replica)
        AND im_opt_str(endpoint)
        AND (stream IS NULL OR json_type(stream) = 'BOOLEAN')
        AND (status IS NULL OR (json_type(status) = 'VARCHAR'
             AND (status ->> '$') IN ('ok', 'error', 'client_abort', 'throttled', 'cache_hit')))
        AND (upstream IS NULL OR (json_type(upstream) = 'VARCHAR'
             AND (upstream ->> '$') IN ('self_hosted', 'managed')))
        AND im_opt_int(http_status)
        AND coalesce(TRY_CAST(http_status AS BIGINT), 200) BETWEEN 100 AND 599
        AND (finish_reason IS NULL OR json_type(finish_reason) = 'VARCHAR')
        AND im_ts_ok(started_at) AND im_ts_ok(finished_at)
        AND (first_token_at IS NULL OR im_ts_ok(first_token_at))
        AND im_opt_int(prompt_tokens) AND im_opt_int(cached_prompt_tokens)
        AND im_opt_int(completion_tokens)
        AND coalesce(TRY_CAST(cached_prompt_tokens AS BIGINT), 0)
            <= coalesce(TRY_CAST(prompt_tokens AS BIGINT), 0)
        AND im_opt_num(queue_s) AND im_opt_num(ttft_s) AND im_opt_num(itl_mean_s)
        AND im_opt_num(itl_p50_s) AND im_opt_num(itl_max_s) AND im_opt_num(e2e_s)
        AND im_tags_ok(tags)
        AND coalesce(im_ts(finished_at) >= im_ts(started_at), false) AS ok,
        request_id ->> '$' AS request_id,
        tenant ->> '$' AS tenant,
        coalesce(api_key_id ->> '$', '') AS api_key_id,
        model ->> '$' AS model,
        coalesce(pool ->> '$', '') AS pool,
        coalesce(replica ->> '$', '') AS replica,
        coalesce(endpoint ->> '$', '/v1/chat/completions') AS endpoint,
        coalesce(TRY_CAST(stream AS BOOLEAN), false) AS stream,
        coalesce(status ->> '$', 'ok') AS status,
        coalesce(TRY_CAST(http_status AS INTEGER), 200) AS http_status,
        finish_reason ->> '$' AS finish_reason,
        im_ts(started_at) AS started_at,
        im_ts(first_token_at) AS first_token_at,
        im_ts(finished_at) AS finished_at,
        TRY_CAST(queue_s AS DOUBLE) AS queue_s,
        coalesce(TRY_CAST(prompt_tokens AS BIGINT), 0) AS prompt_tokens,
        coalesce(TRY_CAST(cached_prompt_tokens AS BIGINT), 0) AS cached_prompt_tokens,
        coalesce(TRY_CAST(completion_tokens AS BIGINT), 0) AS completion_tokens,
        TRY_CAST(ttft_s AS DOUBLE) AS ttft_s,
        TRY_CAST(itl_mean_s AS DOUBLE) AS itl_mean_s,
        TRY_CAST(itl_p50_s AS DOUBLE) AS itl_p50_s,
        TRY_CAST(itl_max_s AS DOUBLE) AS itl_max_s,
        TRY_CAST(e2e_s AS DOUBLE) AS e2e_s,
        coalesce(upstream ->> '$', 'self_hosted') AS upstream,
        coalesce(TRY_CAST(tags AS MAP(VARCHAR, VARCHAR)), MAP {}) AS tags
    FROM rec
)
SELECT * FROM typed;

-- name: stage_usage_arrow
-- A typed Arrow batch (registered as `usage_arrow`, columns already cast by the caller).
CREATE OR REPLACE TEMP TABLE usage_stage AS
SELECT
    request_id IS NOT NULL AND strlen(request_id) BETWEEN 1 AND 512
    AND tenant IS NOT NULL AND strlen(tenant) BETWEEN 1 AND 512
    AND model IS NOT NULL AND strlen(model) BETWEEN 1 AND 512
    AND strlen(coalesce(api_key_id, '')) <= 512 AND strlen(coalesce(pool, '')) <= 512
    AND strlen(coalesce(replica, '')) <= 512 AND strlen(coalesce(endpoint, '')) <= 512
    AND coalesce(status, 'ok') IN ('ok', 'error', 'client_abort', 'throttled', 'cache_hit')
    AND coalesce(upstream, 'self_hosted') IN ('self_hosted', 'managed')
    AND coalesce(http_status, 200) BETWEEN 100 AND 599
    AND started_at IS NOT NULL AND finished_at IS NOT NULL AND finished_at >= started_at
    AND coalesce(prompt_tokens, 0) >= 0 AND coalesce(cached_prompt_tokens, 0) >= 0
    AND coalesce(completion_tokens, 0) >= 0
    AND coalesce(cached_prompt_tokens, 0) <= coalesce(prompt_tokens, 0)
    AND coalesce(queue_s, 0) >= 0 AND coalesce(ttft_s, 0) >= 0 AND coalesce(itl_mean_s, 0) >= 0
    AND coalesce(itl_p50_s, 0) >= 0 AND coalesce(itl_max_s, 0) >= 0 AND coalesce(e2e_s, 0) >= 0
    AND coalesce(cardinality(tags), 0) <= 16
    AND coalesce(list_bool_and(list_transform(map_keys(tags), k -> strlen(k) <= 128)), true)
    AND coalesce(list_bool_and(list_transform(map_values(tags),
        v -> v IS NOT NULL AND strlen(v) <= 128)), true) AS ok,
    request_id, tenant, coalesce(api_key_id, '') AS api_key_id, model,
    coalesce(pool, '') AS pool, coalesce(replica, '') AS replica,
    coalesce(endpoint, '/v1/chat/completions') AS endpoint, coalesce(stream, false) AS stream,
    coalesce(status, 'ok') AS status, coalesce(http_status, 200)::INTEGER AS http_status,
    finish_reason, started_at, first_token_at, finished_at, queue_s,
    coalesce(prompt_tokens, 0) AS prompt_tokens,
    coalesce(cached_prompt_tokens, 0) AS cached_prompt_tokens,
    coalesce(completion_tokens, 0) AS completion_tokens,
    ttft_s, itl_mean_s, itl_p50_s, itl_max_s, e2e_s,
    coalesce(upstream, 'self_hosted') AS upstream, coalesce(tags, MAP {}) AS tags
FROM usage_arrow;

-- name: stage_summary
SELECT count(*) AS rows, count(*) FILTER (WHERE NOT ok) AS bad,
       count(DISTINCT request_id) AS ids
FROM usage_stage;

-- name: insert_usage
INSERT INTO usage
SELECT request_id, tenant, api_key_id, model, pool, replica, endpoint, stream, status,
       http_status, finish_reason, started_at, first_token_at, finished_at, queue_s,
       prompt_tokens, cached_prompt_tokens, completion_tokens, ttft_s, itl_mean_s, itl_p50_s,
       itl_max_s, e2e_s, upstream, tags, coalesce(tags['feature'], ''), $now
FROM usage_stage
WHERE ok
ON CONFLICT DO NOTHING;

-- name: insert_samples
INSERT INTO gpu_samples
SELECT ts, node, gpu_uuid, mig_uuid, gpu_model, mig_profile, replica, util_pct, mem_used_bytes,
       mem_total_bytes, power_w, energy_j, temp_c, sm_clock_mhz, $now
FROM samples_arrow
ON CONFLICT DO NOTHING;

-- name: insert_dead_letter
INSERT INTO dead_letter (kind, received_at, batch_index, field, error, payload)
SELECT kind, $now, batch_index, field, error, payload FROM dead_letter_arrow;
