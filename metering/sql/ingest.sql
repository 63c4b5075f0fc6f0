-- Ingest of usage records. A batch is two views: `usage_batch`, one row per record with the
-- typed columns of `usage`, and `usage_checks`, whether each row passed validation (`ok`). Both
-- read the registered Arrow table (`*_from_arrow`) or the temp table the JSON reader fills
-- (`stage_usage_json`, then `*_from_json`).

-- name: stage_usage_json
-- A JSON array of records or of CloudEvents envelopes (fields then come from `data`). Each
-- JSON value is extracted, typed and parsed once (CTE `ex`); `typed` checks and converts.
CREATE OR REPLACE TEMP TABLE usage_json AS
WITH raw AS (
    SELECT * FROM read_json($path, format = 'array', maximum_object_size = 16777216, columns = {
        request_id: 'JSON', tenant: 'JSON', model: 'JSON', api_key_id: 'JSON', pool: 'JSON',
        replica: 'JSON', endpoint: 'JSON', stream: 'JSON', status: 'JSON', http_status:
        'JSON', finish_reason: 'JSON', started_at: 'JSON', first_token_at: 'JSON',
        finished_at: 'JSON', queue_s: 'JSON', prompt_tokens: 'JSON', cached_prompt_tokens:
        'JSON', completion_tokens: 'JSON', ttft_s: 'JSON', itl_mean_s: 'JSON', itl_p50_s:
        'JSON', itl_max_s: 'JSON', e2e_s: 'JSON', upstream: 'JSON', tags: 'JSON',
        specversion: 'JSON', type: 'JSON', data: 'JSON'})
), rec AS MATERIALIZED (
    SELECT
        specversion IS NOT NULL AS is_event,
        type ->> '$' AS event_type,
        json_type(data) AS data_type,
        im_nz(CASE WHEN specversion IS NULL THEN request_id ELSE data -> '$.request_id' END) AS request_id,
        im_nz(CASE WHEN specversion IS NULL THEN tenant ELSE data -> '$.tenant' END) AS tenant,
        im_nz(CASE WHEN specversion IS NULL THEN model ELSE data -> '$.model' END) AS model,
        im_nz(CASE WHEN specversion IS NULL THEN api_key_id ELSE data -> '$.api_key_id' END) AS api_key_id,
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
), ex AS (
    SELECT is_event, event_type, data_type,
        json_type(request_id) AS request_id_t, request_id ->> '$' AS request_id_s,
        json_type(tenant) AS tenant_t, tenant ->> '$' AS tenant_s,
        json_type(model) AS model_t, model ->> '$' AS model_s,
        json_type(api_key_id) AS api_key_id_t, api_key_id ->> '$' AS api_key_id_s,
        json_type(pool) AS pool_t, pool ->> '$' AS pool_s,
        json_type(replica) AS replica_t, replica ->> '$' AS replica_s,
        json_type(endpoint) AS endpoint_t, endpoint ->> '$' AS endpoint_s,
        json_type(status) AS status_t, status ->> '$' AS status_s,
        json_type(upstream) AS upstream_t, upstream ->> '$' AS upstream_s,
        json_type(finish_reason) AS finish_reason_t, finish_reason ->> '$' AS finish_reason_s,
        json_type(started_at) AS started_at_t, started_at ->> '$' AS started_at_s,
        TRY_CAST(TRY_CAST(started_at ->> '$' AS TIMESTAMPTZ) AS TIMESTAMP) AS started_at_v,
        json_type(first_token_at) AS first_token_at_t, first_token_at ->> '$' AS first_token_at_s,
        TRY_CAST(TRY_CAST(first_token_at ->> '$' AS TIMESTAMPTZ) AS TIMESTAMP) AS first_token_at_v,
        json_type(finished_at) AS finished_at_t, finished_at ->> '$' AS finished_at_s,
        TRY_CAST(TRY_CAST(finished_at ->> '$' AS TIMESTAMPTZ) AS TIMESTAMP) AS finished_at_v,
        json_type(http_status) AS http_status_t, TRY_CAST(http_status AS BIGINT) AS http_status_v,
        json_type(prompt_tokens) AS prompt_tokens_t, TRY_CAST(prompt_tokens AS BIGINT) AS prompt_tokens_v,
        json_type(cached_prompt_tokens) AS cached_prompt_tokens_t, TRY_CAST(cached_prompt_tokens AS BIGINT) AS cached_prompt_tokens_v,
        json_type(completion_tokens) AS completion_tokens_t, TRY_CAST(completion_tokens AS BIGINT) AS completion_tokens_v,
        json_type(queue_s) AS queue_s_t, TRY_CAST(queue_s AS DOUBLE) AS queue_s_v,
        json_type(ttft_s) AS ttft_s_t, TRY_CAST(ttft_s AS DOUBLE) AS ttft_s_v,
        json_type(itl_mean_s) AS itl_mean_s_t, TRY_CAST(itl_mean_s AS DOUBLE) AS itl_mean_s_v,
        json_type(itl_p50_s) AS itl_p50_s_t, TRY_CAST(itl_p50_s AS DOUBLE) AS itl_p50_s_v,
        json_type(itl_max_s) AS itl_max_s_t, TRY_CAST(itl_max_s AS DOUBLE) AS itl_max_s_v,
        json_type(e2e_s) AS e2e_s_t, TRY_CAST(e2e_s AS DOUBLE) AS e2e_s_v,
        json_type(stream) AS stream_t, TRY_CAST(stream AS BOOLEAN) AS stream_v,
        tags, TRY_CAST(tags AS MAP(VARCHAR, VARCHAR)) AS tags_v
    FROM rec
), typed AS (
    SELECT
        (NOT is_event OR (event_type = 'infermeter.inference.v1' AND data_type = 'OBJECT'))
        AND coalesce(request_id_t = 'VARCHAR' AND strlen(request_id_s) BETWEEN 1 AND 512, false)
        AND coalesce(tenant_t = 'VARCHAR' AND strlen(tenant_s) BETWEEN 1 AND 512, false)
        AND coalesce(model_t = 'VARCHAR' AND strlen(model_s) BETWEEN 1 AND 512, false)
        AND (api_key_id_t IS NULL OR coalesce(api_key_id_t = 'VARCHAR' AND strlen(api_key_id_s) <= 512, false))
        AND (pool_t IS NULL OR coalesce(pool_t = 'VARCHAR' AND strlen(pool_s) <= 512, false))
        AND (replica_t IS NULL OR coalesce(replica_t = 'VARCHAR' AND strlen(replica_s) <= 512, false))
        AND (endpoint_t IS NULL OR coalesce(endpoint_t = 'VARCHAR' AND strlen(endpoint_s) <= 512, false))
        AND (stream_t IS NULL OR stream_t = 'BOOLEAN')
        AND (status_t IS NULL OR (status_t = 'VARCHAR'
             AND status_s IN ('ok', 'error', 'client_abort', 'throttled', 'cache_hit')))
        AND (upstream_t IS NULL OR (upstream_t = 'VARCHAR' AND upstream_s IN ('self_hosted', 'managed')))
        AND (finish_reason_t IS NULL OR finish_reason_t = 'VARCHAR')
        AND (http_status_t IS NULL OR coalesce(http_status_t IN ('UBIGINT', 'BIGINT') AND http_status_v >= 0, false))
        AND (prompt_tokens_t IS NULL OR coalesce(prompt_tokens_t IN ('UBIGINT', 'BIGINT') AND prompt_tokens_v >= 0, false))
        AND (cached_prompt_tokens_t IS NULL OR coalesce(cached_prompt_tokens_t IN ('UBIGINT', 'BIGINT') AND cached_prompt_tokens_v >= 0, false))
        AND (completion_tokens_t IS NULL OR coalesce(completion_tokens_t IN ('UBIGINT', 'BIGINT') AND completion_tokens_v >= 0, false))
        AND coalesce(http_status_v, 200) BETWEEN 100 AND 599
        AND coalesce(cached_prompt_tokens_v, 0) <= coalesce(prompt_tokens_v, 0)
        AND (queue_s_t IS NULL OR coalesce(queue_s_t IN ('UBIGINT', 'BIGINT', 'DOUBLE') AND queue_s_v >= 0, false))
        AND (ttft_s_t IS NULL OR coalesce(ttft_s_t IN ('UBIGINT', 'BIGINT', 'DOUBLE') AND ttft_s_v >= 0, false))
        AND (itl_mean_s_t IS NULL OR coalesce(itl_mean_s_t IN ('UBIGINT', 'BIGINT', 'DOUBLE') AND itl_mean_s_v >= 0, false))
        AND (itl_p50_s_t IS NULL OR coalesce(itl_p50_s_t IN ('UBIGINT', 'BIGINT', 'DOUBLE') AND itl_p50_s_v >= 0, false))
        AND (itl_max_s_t IS NULL OR coalesce(itl_max_s_t IN ('UBIGINT', 'BIGINT', 'DOUBLE') AND itl_max_s_v >= 0, false))
        AND (e2e_s_t IS NULL OR coalesce(e2e_s_t IN ('UBIGINT', 'BIGINT', 'DOUBLE') AND e2e_s_v >= 0, false))
        AND coalesce(started_at_t = 'VARCHAR' AND started_at_v IS NOT NULL
             AND regexp_full_match(started_at_s, '\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}:\d{2}(\.\d{1,6})?(Z|[+-]\d{2}:\d{2})'), false)
        AND (first_token_at_t IS NULL OR coalesce(first_token_at_t = 'VARCHAR' AND first_token_at_v IS NOT NULL
             AND regexp_full_match(first_token_at_s, '\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}:\d{2}(\.\d{1,6})?(Z|[+-]\d{2}:\d{2})'), false))
        AND coalesce(finished_at_t = 'VARCHAR' AND finished_at_v IS NOT NULL
             AND regexp_full_match(finished_at_s, '\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}:\d{2}(\.\d{1,6})?(Z|[+-]\d{2}:\d{2})'), false)
        AND im_tags_ok(tags)
        AND coalesce(finished_at_v >= started_at_v, false) AS ok,
        request_id_s AS request_id,
        tenant_s AS tenant,
        coalesce(api_key_id_s, '') AS api_key_id,
        model_s AS model,
        coalesce(pool_s, '') AS pool,
        coalesce(replica_s, '') AS replica,
        coalesce(endpoint_s, '/v1/chat/completions') AS endpoint,
        coalesce(stream_v, false) AS stream,
        coalesce(status_s, 'ok') AS status,
        coalesce(http_status_v, 200)::INTEGER AS http_status,
        finish_reason_s AS finish_reason,
        started_at_v AS started_at,
        first_token_at_v AS first_token_at,
        finished_at_v AS finished_at,
        queue_s_v AS queue_s,
        coalesce(prompt_tokens_v, 0) AS prompt_tokens,
        coalesce(cached_prompt_tokens_v, 0) AS cached_prompt_tokens,
        coalesce(completion_tokens_v, 0) AS completion_tokens,
        ttft_s_v AS ttft_s,
        itl_mean_s_v AS itl_mean_s,
        itl_p50_s_v AS itl_p50_s,
        itl_max_s_v AS itl_max_s,
        e2e_s_v AS e2e_s,
        coalesce(upstream_s, 'self_hosted') AS upstream,
        coalesce(tags_v, MAP {}) AS tags
    FROM ex
)
SELECT * FROM typed;

-- name: batch_from_json
CREATE OR REPLACE TEMP VIEW usage_batch AS SELECT * EXCLUDE (ok) FROM usage_json;

-- name: checks_from_json
CREATE OR REPLACE TEMP VIEW usage_checks AS SELECT ok, request_id, started_at FROM usage_json;

-- name: batch_from_arrow
-- A typed Arrow batch (registered as `usage_arrow`, columns already cast by the caller) with
-- the defaults applied. A view: the rows are read twice (checks, insert) and never copied. The
-- checks are a separate view so the insert's plan has no join (the `IN` lists become one) and
-- DuckDB writes a large batch straight into compressed row groups.
CREATE OR REPLACE TEMP VIEW usage_batch AS
SELECT
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

-- name: checks_from_arrow
CREATE OR REPLACE TEMP VIEW usage_checks AS
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
    request_id, started_at
FROM usage_arrow;

-- name: batch_summary
-- Rows, invalid rows, distinct ids and the started_at range of the batch's valid rows.
SELECT count(*) AS rows, count(*) FILTER (WHERE NOT ok) AS bad,
       count(DISTINCT request_id) AS ids,
       min(started_at) FILTER (WHERE ok) AS lo, max(started_at) FILTER (WHERE ok) AS hi
FROM usage_checks;

-- name: usage_keyed
-- Whether `usage` still has the `request_id` primary key (stores before migration 005).
SELECT count(*) > 0 FROM duckdb_constraints()
WHERE schema_name = 'main' AND table_name = 'usage' AND constraint_type = 'PRIMARY KEY';

-- name: stored_duplicates
-- Ids of the batch already stored. A re-sent record carries its original started_at, so only
-- the stored rows started within the batch's range are read (zone maps skip the rest).
SELECT count(*) FROM usage
WHERE started_at BETWEEN $lo AND $hi
  AND request_id IN (SELECT request_id FROM usage_batch);

-- name: insert_usage
-- Every row of `usage_batch` (all valid, ids distinct and not stored: the caller checked).
INSERT INTO usage
SELECT request_id, tenant, api_key_id, model, pool, replica, endpoint, stream, status,
       http_status, finish_reason, started_at, first_token_at, finished_at, queue_s,
       prompt_tokens, cached_prompt_tokens, completion_tokens, ttft_s, itl_mean_s, itl_p50_s,
       itl_max_s, e2e_s, upstream, tags, coalesce(tags['feature'], ''), $now
FROM usage_batch;

-- name: insert_usage_new
-- The rows of `usage_batch` whose id is not stored yet.
INSERT INTO usage
SELECT request_id, tenant, api_key_id, model, pool, replica, endpoint, stream, status,
       http_status, finish_reason, started_at, first_token_at, finished_at, queue_s,
       prompt_tokens, cached_prompt_tokens, completion_tokens, ttft_s, itl_mean_s, itl_p50_s,
       itl_max_s, e2e_s, upstream, tags, coalesce(tags['feature'], ''), $now
FROM usage_batch
WHERE request_id NOT IN (
    SELECT request_id FROM usage WHERE started_at BETWEEN $lo AND $hi);

-- name: insert_usage_keyed
-- A store whose `usage` keeps the primary key: the key decides what is new.
INSERT INTO usage
SELECT request_id, tenant, api_key_id, model, pool, replica, endpoint, stream, status,
       http_status, finish_reason, started_at, first_token_at, finished_at, queue_s,
       prompt_tokens, cached_prompt_tokens, completion_tokens, ttft_s, itl_mean_s, itl_p50_s,
       itl_max_s, e2e_s, upstream, tags, coalesce(tags['feature'], ''), $now
FROM usage_batch
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
