-- Ingest of usage records. A batch is two views: `usage_batch`, one row per record with the
-- typed columns of `usage`, and `usage_checks`, whether each row passed validation (`ok`). Both
-- read the registered Arrow table (`*_from_arrow`) or the temp table the JSON reader fills
-- (`stage_usage_json`, then `*_from_json`).

-- name: stage_usage_json
-- A JSON array of records or of CloudEvents envelopes (fields then come from `data`). Each
-- field is read as its JSON text (`rec`), whose first character tells its JSON type: `"` a
-- string (unescaped by slicing, or by the JSON extractor when it holds a backslash), a digit or
-- `-` a number (an integer when it casts to BIGINT and back to the same text), `true`/`false`.
-- Plain string operations on the text, no JSON parsing per check; `typed` checks and converts
-- (durations finite and non-negative, times within years 1 to 9999 once in UTC).
CREATE OR REPLACE TEMP TABLE usage_json AS
WITH raw AS (
    SELECT * FROM read_json($path, format = 'array', maximum_object_size = 16777216, columns = {
        request_id: 'JSON', tenant: 'JSON', model: 'JSON', api_key_id: 'JSON', pool: 'JSON',
        replica: 'JSON', endpoint: 'JSON', stream: 'JSON', status: 'JSON', http_status: 'JSON',
        finish_reason: 'JSON', started_at: 'JSON', first_token_at: 'JSON', finished_at: 'JSON',
        queue_s: 'JSON', prompt_tokens: 'JSON', cached_prompt_tokens: 'JSON',
        completion_tokens: 'JSON', ttft_s: 'JSON', itl_mean_s: 'JSON', itl_p50_s: 'JSON',
        itl_max_s: 'JSON', e2e_s: 'JSON', upstream: 'JSON', tags: 'JSON', specversion: 'JSON',
        type: 'JSON', data: 'JSON'})
), rec AS (
    SELECT specversion IS NOT NULL AS is_event, type ->> '$' AS event_type,
        json_type(data) AS data_type,
        nullif((CASE WHEN specversion IS NULL THEN request_id ELSE data -> '$.request_id' END)::VARCHAR, 'null') AS request_id,
        nullif((CASE WHEN specversion IS NULL THEN tenant ELSE data -> '$.tenant' END)::VARCHAR, 'null') AS tenant,
        nullif((CASE WHEN specversion IS NULL THEN model ELSE data -> '$.model' END)::VARCHAR, 'null') AS model,
        nullif((CASE WHEN specversion IS NULL THEN api_key_id ELSE data -> '$.api_key_id' END)::VARCHAR, 'null') AS api_key_id,
        nullif((CASE WHEN specversion IS NULL THEN pool ELSE data -> '$.pool' END)::VARCHAR, 'null') AS pool,
        nullif((CASE WHEN specversion IS NULL THEN replica ELSE data -> '$.replica' END)::VARCHAR, 'null') AS replica,
        nullif((CASE WHEN specversion IS NULL THEN endpoint ELSE data -> '$.endpoint' END)::VARCHAR, 'null') AS endpoint,
        nullif((CASE WHEN specversion IS NULL THEN stream ELSE data -> '$.stream' END)::VARCHAR, 'null') AS stream,
        nullif((CASE WHEN specversion IS NULL THEN status ELSE data -> '$.status' END)::VARCHAR, 'null') AS status,
        nullif((CASE WHEN specversion IS NULL THEN http_status ELSE data -> '$.http_status' END)::VARCHAR, 'null') AS http_status,
        nullif((CASE WHEN specversion IS NULL THEN finish_reason ELSE data -> '$.finish_reason' END)::VARCHAR, 'null') AS finish_reason,
        nullif((CASE WHEN specversion IS NULL THEN started_at ELSE data -> '$.started_at' END)::VARCHAR, 'null') AS started_at,
        nullif((CASE WHEN specversion IS NULL THEN first_token_at ELSE data -> '$.first_token_at' END)::VARCHAR, 'null') AS first_token_at,
        nullif((CASE WHEN specversion IS NULL THEN finished_at ELSE data -> '$.finished_at' END)::VARCHAR, 'null') AS finished_at,
        nullif((CASE WHEN specversion IS NULL THEN queue_s ELSE data -> '$.queue_s' END)::VARCHAR, 'null') AS queue_s,
        nullif((CASE WHEN specversion IS NULL THEN prompt_tokens ELSE data -> '$.prompt_tokens' END)::VARCHAR, 'null') AS prompt_tokens,
        nullif((CASE WHEN specversion IS NULL THEN cached_prompt_tokens ELSE data -> '$.cached_prompt_tokens' END)::VARCHAR, 'null') AS cached_prompt_tokens,
        nullif((CASE WHEN specversion IS NULL THEN completion_tokens ELSE data -> '$.completion_tokens' END)::VARCHAR, 'null') AS completion_tokens,
        nullif((CASE WHEN specversion IS NULL THEN ttft_s ELSE data -> '$.ttft_s' END)::VARCHAR, 'null') AS ttft_s,
        nullif((CASE WHEN specversion IS NULL THEN itl_mean_s ELSE data -> '$.itl_mean_s' END)::VARCHAR, 'null') AS itl_mean_s,
        nullif((CASE WHEN specversion IS NULL THEN itl_p50_s ELSE data -> '$.itl_p50_s' END)::VARCHAR, 'null') AS itl_p50_s,
        nullif((CASE WHEN specversion IS NULL THEN itl_max_s ELSE data -> '$.itl_max_s' END)::VARCHAR, 'null') AS itl_max_s,
        nullif((CASE WHEN specversion IS NULL THEN e2e_s ELSE data -> '$.e2e_s' END)::VARCHAR, 'null') AS e2e_s,
        nullif((CASE WHEN specversion IS NULL THEN upstream ELSE data -> '$.upstream' END)::VARCHAR, 'null') AS upstream,
        nullif((CASE WHEN specversion IS NULL THEN tags ELSE data -> '$.tags' END)::VARCHAR, 'null') AS tags
    FROM raw
), ex AS (
    SELECT is_event, event_type, data_type,
        request_id AS request_id_r, CASE WHEN starts_with(request_id, '"') THEN CASE WHEN contains(request_id, '\') THEN request_id::JSON ->> '$' ELSE request_id[2:-2] END END AS request_id_s,
        tenant AS tenant_r, CASE WHEN starts_with(tenant, '"') THEN CASE WHEN contains(tenant, '\') THEN tenant::JSON ->> '$' ELSE tenant[2:-2] END END AS tenant_s,
        model AS model_r, CASE WHEN starts_with(model, '"') THEN CASE WHEN contains(model, '\') THEN model::JSON ->> '$' ELSE model[2:-2] END END AS model_s,
        api_key_id AS api_key_id_r, CASE WHEN starts_with(api_key_id, '"') THEN CASE WHEN contains(api_key_id, '\') THEN api_key_id::JSON ->> '$' ELSE api_key_id[2:-2] END END AS api_key_id_s,
        pool AS pool_r, CASE WHEN starts_with(pool, '"') THEN CASE WHEN contains(pool, '\') THEN pool::JSON ->> '$' ELSE pool[2:-2] END END AS pool_s,
        replica AS replica_r, CASE WHEN starts_with(replica, '"') THEN CASE WHEN contains(replica, '\') THEN replica::JSON ->> '$' ELSE replica[2:-2] END END AS replica_s,
        endpoint AS endpoint_r, CASE WHEN starts_with(endpoint, '"') THEN CASE WHEN contains(endpoint, '\') THEN endpoint::JSON ->> '$' ELSE endpoint[2:-2] END END AS endpoint_s,
        status AS status_r, CASE WHEN starts_with(status, '"') THEN CASE WHEN contains(status, '\') THEN status::JSON ->> '$' ELSE status[2:-2] END END AS status_s,
        upstream AS upstream_r, CASE WHEN starts_with(upstream, '"') THEN CASE WHEN contains(upstream, '\') THEN upstream::JSON ->> '$' ELSE upstream[2:-2] END END AS upstream_s,
        finish_reason AS finish_reason_r, CASE WHEN starts_with(finish_reason, '"') THEN CASE WHEN contains(finish_reason, '\') THEN finish_reason::JSON ->> '$' ELSE finish_reason[2:-2] END END AS finish_reason_s,
        started_at AS started_at_r, CASE WHEN starts_with(started_at, '"') THEN CASE WHEN contains(started_at, '\') THEN started_at::JSON ->> '$' ELSE started_at[2:-2] END END AS started_at_s,
        first_token_at AS first_token_at_r, CASE WHEN starts_with(first_token_at, '"') THEN CASE WHEN contains(first_token_at, '\') THEN first_token_at::JSON ->> '$' ELSE first_token_at[2:-2] END END AS first_token_at_s,
        finished_at AS finished_at_r, CASE WHEN starts_with(finished_at, '"') THEN CASE WHEN contains(finished_at, '\') THEN finished_at::JSON ->> '$' ELSE finished_at[2:-2] END END AS finished_at_s,
        http_status AS http_status_r, CASE WHEN TRY_CAST(http_status AS BIGINT)::VARCHAR = http_status THEN http_status::BIGINT END AS http_status_v,
        prompt_tokens AS prompt_tokens_r, CASE WHEN TRY_CAST(prompt_tokens AS BIGINT)::VARCHAR = prompt_tokens THEN prompt_tokens::BIGINT END AS prompt_tokens_v,
        cached_prompt_tokens AS cached_prompt_tokens_r, CASE WHEN TRY_CAST(cached_prompt_tokens AS BIGINT)::VARCHAR = cached_prompt_tokens THEN cached_prompt_tokens::BIGINT END AS cached_prompt_tokens_v,
        completion_tokens AS completion_tokens_r, CASE WHEN TRY_CAST(completion_tokens AS BIGINT)::VARCHAR = completion_tokens THEN completion_tokens::BIGINT END AS completion_tokens_v,
        queue_s AS queue_s_r, CASE WHEN NOT starts_with(queue_s, '"') THEN TRY_CAST(queue_s AS DOUBLE) END AS queue_s_v,
        ttft_s AS ttft_s_r, CASE WHEN NOT starts_with(ttft_s, '"') THEN TRY_CAST(ttft_s AS DOUBLE) END AS ttft_s_v,
        itl_mean_s AS itl_mean_s_r, CASE WHEN NOT starts_with(itl_mean_s, '"') THEN TRY_CAST(itl_mean_s AS DOUBLE) END AS itl_mean_s_v,
        itl_p50_s AS itl_p50_s_r, CASE WHEN NOT starts_with(itl_p50_s, '"') THEN TRY_CAST(itl_p50_s AS DOUBLE) END AS itl_p50_s_v,
        itl_max_s AS itl_max_s_r, CASE WHEN NOT starts_with(itl_max_s, '"') THEN TRY_CAST(itl_max_s AS DOUBLE) END AS itl_max_s_v,
        e2e_s AS e2e_s_r, CASE WHEN NOT starts_with(e2e_s, '"') THEN TRY_CAST(e2e_s AS DOUBLE) END AS e2e_s_v,
        stream AS stream_r, CASE stream WHEN 'true' THEN true WHEN 'false' THEN false END AS stream_v,
        tags AS tags_r, TRY_CAST(tags::JSON AS MAP(VARCHAR, JSON)) AS tags_j
    FROM rec
), typed AS (
    SELECT
        (NOT is_event OR (event_type = 'infermeter.inference.v1' AND data_type = 'OBJECT'))
        AND coalesce(strlen(request_id_s) BETWEEN 1 AND 512, false)
        AND coalesce(strlen(tenant_s) BETWEEN 1 AND 512, false)
        AND coalesce(strlen(model_s) BETWEEN 1 AND 512, false)
        AND (api_key_id_r IS NULL OR coalesce(strlen(api_key_id_s) <= 512, false))
        AND (pool_r IS NULL OR coalesce(strlen(pool_s) <= 512, false))
        AND (replica_r IS NULL OR coalesce(strlen(replica_s) <= 512, false))
        AND (endpoint_r IS NULL OR coalesce(strlen(endpoint_s) <= 512, false))
        AND (status_r IS NULL OR coalesce(status_s IN ('ok', 'error', 'client_abort', 'throttled', 'cache_hit'), false))
        AND (upstream_r IS NULL OR coalesce(upstream_s IN ('self_hosted', 'managed'), false))
        AND (finish_reason_r IS NULL OR finish_reason_s IS NOT NULL)
        AND (stream_r IS NULL OR stream_v IS NOT NULL)
        AND (http_status_r IS NULL OR coalesce(http_status_v >= 0, false))
        AND (prompt_tokens_r IS NULL OR coalesce(prompt_tokens_v >= 0, false))
        AND (cached_prompt_tokens_r IS NULL OR coalesce(cached_prompt_tokens_v >= 0, false))
        AND (completion_tokens_r IS NULL OR coalesce(completion_tokens_v >= 0, false))
        AND coalesce(http_status_v, 200) BETWEEN 100 AND 599
        AND coalesce(cached_prompt_tokens_v, 0) <= coalesce(prompt_tokens_v, 0)
        AND (queue_s_r IS NULL OR coalesce(isfinite(queue_s_v) AND queue_s_v >= 0, false))
        AND (ttft_s_r IS NULL OR coalesce(isfinite(ttft_s_v) AND ttft_s_v >= 0, false))
        AND (itl_mean_s_r IS NULL OR coalesce(isfinite(itl_mean_s_v) AND itl_mean_s_v >= 0, false))
        AND (itl_p50_s_r IS NULL OR coalesce(isfinite(itl_p50_s_v) AND itl_p50_s_v >= 0, false))
        AND (itl_max_s_r IS NULL OR coalesce(isfinite(itl_max_s_v) AND itl_max_s_v >= 0, false))
        AND (e2e_s_r IS NULL OR coalesce(isfinite(e2e_s_v) AND e2e_s_v >= 0, false))
        AND coalesce(regexp_full_match(started_at_s, '\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}:\d{2}(\.\d{1,6})?(Z|[+-]\d{2}:\d{2})') AND started_at_t BETWEEN TIMESTAMP '0001-01-01' AND TIMESTAMP '9999-12-31 23:59:59.999999', false)
        AND coalesce(regexp_full_match(finished_at_s, '\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}:\d{2}(\.\d{1,6})?(Z|[+-]\d{2}:\d{2})') AND finished_at_t BETWEEN TIMESTAMP '0001-01-01' AND TIMESTAMP '9999-12-31 23:59:59.999999', false)
        AND (first_token_at_r IS NULL OR coalesce(regexp_full_match(first_token_at_s, '\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}:\d{2}(\.\d{1,6})?(Z|[+-]\d{2}:\d{2})') AND first_token_at_t BETWEEN TIMESTAMP '0001-01-01' AND TIMESTAMP '9999-12-31 23:59:59.999999', false))
        AND (tags_r IS NULL OR coalesce(cardinality(tags_j) <= 16 AND coalesce(list_bool_and(list_transform(map_entries(tags_j), e -> coalesce(strlen(e.key) <= 128 AND starts_with(e.value, '"') AND strlen(e.value) <= 130, false))), true), false))
        AND coalesce(finished_at_t >= started_at_t, false) AS ok,
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
        started_at_t AS started_at,
        first_token_at_t AS first_token_at,
        finished_at_t AS finished_at,
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
        CASE WHEN tags_r IS NULL THEN MAP {} ELSE TRY_CAST(tags_r::JSON AS MAP(VARCHAR, VARCHAR)) END AS tags
    FROM (SELECT *,
        TRY_CAST(TRY_CAST(started_at_s AS TIMESTAMPTZ) AS TIMESTAMP) AS started_at_t,
        TRY_CAST(TRY_CAST(first_token_at_s AS TIMESTAMPTZ) AS TIMESTAMP) AS first_token_at_t,
        TRY_CAST(TRY_CAST(finished_at_s AS TIMESTAMPTZ) AS TIMESTAMP) AS finished_at_t
    FROM ex)
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
-- As `typed` above: durations finite (DuckDB orders NaN above every number, so `>= 0` alone
-- lets it through) and times within what every reader can hold (years 1 to 9999, UTC).
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
    AND started_at >= TIMESTAMP '0001-01-01' AND finished_at <= TIMESTAMP '9999-12-31 23:59:59.999999'
    AND coalesce(first_token_at BETWEEN TIMESTAMP '0001-01-01' AND TIMESTAMP '9999-12-31 23:59:59.999999', true)
    AND coalesce(prompt_tokens, 0) >= 0 AND coalesce(cached_prompt_tokens, 0) >= 0
    AND coalesce(completion_tokens, 0) >= 0
    AND coalesce(cached_prompt_tokens, 0) <= coalesce(prompt_tokens, 0)
    AND isfinite(coalesce(queue_s, 0)) AND coalesce(queue_s, 0) >= 0
    AND isfinite(coalesce(ttft_s, 0)) AND coalesce(ttft_s, 0) >= 0
    AND isfinite(coalesce(itl_mean_s, 0)) AND coalesce(itl_mean_s, 0) >= 0
    AND isfinite(coalesce(itl_p50_s, 0)) AND coalesce(itl_p50_s, 0) >= 0
    AND isfinite(coalesce(itl_max_s, 0)) AND coalesce(itl_max_s, 0) >= 0
    AND isfinite(coalesce(e2e_s, 0)) AND coalesce(e2e_s, 0) >= 0
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
FROM usage_batch
ORDER BY request_id;

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

-- name: insert_samples
INSERT INTO gpu_samples
SELECT ts, node, gpu_uuid, mig_uuid, gpu_model, mig_profile, replica, util_pct, mem_used_bytes,
       mem_total_bytes, power_w, energy_j, temp_c, sm_clock_mhz, $now
FROM samples_arrow
ON CONFLICT DO NOTHING;

-- name: insert_dead_letter
INSERT INTO dead_letter (kind, received_at, batch_index, field, error, payload)
SELECT kind, $now, batch_index, field, error, payload FROM dead_letter_arrow;

-- name: conflicting_duplicates
-- Rows of the batch whose id is already stored for *another* request (the content differs):
-- a replay is identical and silently ignored; a conflict is kept in the dead-letter table.
SELECT b.request_id,
       to_json(b)::VARCHAR AS payload,
       printf('conflict: id stored for another request (stored tenant=%s model=%s '
              || 'started_at=%s tokens=%d/%d)', u.tenant, u.model, u.started_at::VARCHAR,
              u.prompt_tokens, u.completion_tokens) AS error
FROM usage_batch b
JOIN usage u ON u.request_id = b.request_id AND u.started_at BETWEEN $lo AND $hi
WHERE b.tenant IS DISTINCT FROM u.tenant OR b.model IS DISTINCT FROM u.model
   OR b.replica IS DISTINCT FROM u.replica OR b.started_at IS DISTINCT FROM u.started_at
   OR b.finished_at IS DISTINCT FROM u.finished_at
   OR b.prompt_tokens IS DISTINCT FROM u.prompt_tokens
   OR b.cached_prompt_tokens IS DISTINCT FROM u.cached_prompt_tokens
   OR b.completion_tokens IS DISTINCT FROM u.completion_tokens
   OR b.status IS DISTINCT FROM u.status
ORDER BY b.request_id;
