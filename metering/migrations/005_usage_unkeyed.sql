-- usage without the request_id primary key. Ingest keeps ids unique itself (a lookup
-- against the rows started in the batch's time range, under the ingest lock: see
-- metering/ingest.py), which costs a fraction of maintaining the ART index on every insert and
-- lets large batches be written straight into compressed row groups. Same columns, same order,
-- same NOT NULL columns; rows are rewritten ordered by started_at so zone maps prune by time.
CREATE TABLE usage_005 AS SELECT * FROM usage ORDER BY started_at;
DROP TABLE usage;
ALTER TABLE usage_005 RENAME TO usage;
ALTER TABLE usage ALTER COLUMN request_id SET NOT NULL;
ALTER TABLE usage ALTER COLUMN tenant SET NOT NULL;
ALTER TABLE usage ALTER COLUMN api_key_id SET NOT NULL;
ALTER TABLE usage ALTER COLUMN model SET NOT NULL;
ALTER TABLE usage ALTER COLUMN pool SET NOT NULL;
ALTER TABLE usage ALTER COLUMN replica SET NOT NULL;
ALTER TABLE usage ALTER COLUMN endpoint SET NOT NULL;
ALTER TABLE usage ALTER COLUMN stream SET NOT NULL;
ALTER TABLE usage ALTER COLUMN status SET NOT NULL;
ALTER TABLE usage ALTER COLUMN http_status SET NOT NULL;
ALTER TABLE usage ALTER COLUMN started_at SET NOT NULL;
ALTER TABLE usage ALTER COLUMN finished_at SET NOT NULL;
ALTER TABLE usage ALTER COLUMN prompt_tokens SET NOT NULL;
ALTER TABLE usage ALTER COLUMN cached_prompt_tokens SET NOT NULL;
ALTER TABLE usage ALTER COLUMN completion_tokens SET NOT NULL;
ALTER TABLE usage ALTER COLUMN upstream SET NOT NULL;
ALTER TABLE usage ALTER COLUMN feature SET NOT NULL;
ALTER TABLE usage ALTER COLUMN received_at SET NOT NULL;
