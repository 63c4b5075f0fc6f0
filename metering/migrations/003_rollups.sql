-- Rollups the dashboard queries read: cost per (grain, bucket, dimension, key, replica), and
-- replica cost / idle per hour. Rebuilt by allocation for the hours and days a run touches.
CREATE TABLE cost_rollup (
    grain VARCHAR NOT NULL,          -- 'hour' | 'day'
    bucket TIMESTAMP NOT NULL,
    dim VARCHAR NOT NULL,            -- tenant | model | feature | api_key | pool | model_tenant
    key VARCHAR NOT NULL,
    replica VARCHAR NOT NULL,
    cost_micro BIGINT NOT NULL,
    -- this key's share of the replica's idle cost in the hour (floor of idle x cost/allocated)
    idle_share_micro BIGINT NOT NULL,
    requests BIGINT NOT NULL,
    prompt_tokens BIGINT NOT NULL,
    cached_prompt_tokens BIGINT NOT NULL,
    completion_tokens BIGINT NOT NULL,
    gpu_s DOUBLE NOT NULL,
    energy_j DOUBLE NOT NULL
);

CREATE TABLE replica_hourly (
    hour TIMESTAMP NOT NULL,
    replica VARCHAR NOT NULL,
    pool VARCHAR NOT NULL,
    cost_micro BIGINT NOT NULL,
    allocated_micro BIGINT NOT NULL,
    idle_micro BIGINT NOT NULL,
    busy_s DOUBLE NOT NULL,
    provisioned_s DOUBLE NOT NULL,
    gpu_s DOUBLE NOT NULL,
    energy_j DOUBLE NOT NULL
);
