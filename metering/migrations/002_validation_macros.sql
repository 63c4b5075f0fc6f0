-- Macros the vectorised ingest validation uses (metering/sql/ingest.sql). Each mirrors a
-- check of metering/contracts.py and is at least as strict: a row they accept is a row
-- parse_usage_record accepts with the same values; anything else takes the per-record path.
CREATE MACRO im_nz(x) AS CASE WHEN json_type(x) = 'NULL' THEN NULL ELSE x END;
CREATE MACRO im_req_str(x) AS
    coalesce(json_type(x) = 'VARCHAR' AND strlen(x ->> '$') BETWEEN 1 AND 512, false);
CREATE MACRO im_opt_str(x) AS
    x IS NULL OR coalesce(json_type(x) = 'VARCHAR' AND strlen(x ->> '$') <= 512, false);
CREATE MACRO im_opt_int(x) AS
    x IS NULL OR coalesce(json_type(x) IN ('UBIGINT', 'BIGINT') AND TRY_CAST(x AS BIGINT) >= 0, false);
CREATE MACRO im_opt_num(x) AS
    x IS NULL OR coalesce(
        json_type(x) IN ('UBIGINT', 'BIGINT', 'DOUBLE') AND TRY_CAST(x AS DOUBLE) >= 0, false);
CREATE MACRO im_ts_ok(x) AS coalesce(
    json_type(x) = 'VARCHAR'
    AND regexp_full_match(
        x ->> '$', '\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}:\d{2}(\.\d{1,6})?(Z|[+-]\d{2}:\d{2})')
    AND TRY_CAST(x ->> '$' AS TIMESTAMPTZ) IS NOT NULL, false);
CREATE MACRO im_ts(x) AS TRY_CAST(TRY_CAST(x ->> '$' AS TIMESTAMPTZ) AS TIMESTAMP);
CREATE MACRO im_tags_ok(x) AS x IS NULL OR coalesce(
    json_type(x) = 'OBJECT'
    AND len(json_keys(x)) <= 16
    AND coalesce(list_bool_and(list_transform(json_keys(x), k -> strlen(k) <= 128)), true)
    AND coalesce(list_bool_and(list_transform(
        json_extract(x, '$.*'), v -> json_type(v) = 'VARCHAR' AND strlen(v ->> '$') <= 128)), true)
    AND TRY_CAST(x AS MAP(VARCHAR, VARCHAR)) IS NOT NULL, false);
