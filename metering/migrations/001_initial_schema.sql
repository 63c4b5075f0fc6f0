-- Usage records (one per inference; request_id is the idempotency key).
CREATE TABLE usage (
    request_id VARCHAR PRIMARY KEY,
    tenant VARCHAR NOT NULL,
    api_key_id VARCHAR NOT NULL,
    model VARCHAR NOT NULL,
    pool VARCHAR NOT NULL,
    replica VARCHAR NOT NULL,
    endpoint VARCHAR NOT NULL,
    stream BOOLEAN NOT NULL,
    status VARCHAR NOT NULL,
    http_status INTEGER NOT NULL,
    finish_reason VARCHAR,
    started_at TIMESTAMP NOT NULL,
    first_token_at TIMESTAMP,
    finished_at TIMESTAMP NOT NULL,
    queue_s DOUBLE,
    prompt_tokens BIGINT NOT NULL,
    cached_prompt_tokens BIGINT NOT NULL,
    completion_tokens BIGINT NOT NULL,
    ttft_s DOUBLE,
    itl_mean_s DOUBLE,
    itl_p50_s DOUBLE,
    itl_max_s DOUBLE,
    e2e_s DOUBLE,
    upstream VARCHAR NOT NULL,
    tags MAP(VARCHAR, VARCHAR),
    feature VARCHAR NOT NULL,
    received_at TIMESTAMP NOT NULL
);

-- GPU / MIG telemetry samples, keyed by (node, gpu_uuid, mig_uuid, ts).
CREATE TABLE gpu_samples (
    ts TIMESTAMP NOT NULL,
    node VARCHAR NOT NULL,
    gpu_uuid VARCHAR NOT NULL,
    mig_uuid VARCHAR NOT NULL,
    gpu_model VARCHAR NOT NULL,
    mig_profile VARCHAR NOT NULL,
    replica VARCHAR NOT NULL,
    util_pct DOUBLE NOT NULL,
    mem_used_bytes BIGINT NOT NULL,
    mem_total_bytes BIGINT NOT NULL,
    power_w DOUBLE NOT NULL,
    energy_j DOUBLE NOT NULL,
    temp_c DOUBLE NOT NULL,
    sm_clock_mhz DOUBLE NOT NULL,
    received_at TIMESTAMP NOT NULL,
    PRIMARY KEY (node, gpu_uuid, mig_uuid, ts)
);

-- Records rejected at ingest, kept with the reason (never silently dropped).
CREATE SEQUENCE dead_letter_id;
CREATE TABLE dead_letter (
    id BIGINT PRIMARY KEY DEFAULT nextval('dead_letter_id'),
    kind VARCHAR NOT NULL,
    received_at TIMESTAMP NOT NULL,
    batch_index INTEGER NOT NULL,
    field VARCHAR NOT NULL,
    error VARCHAR NOT NULL,
    payload VARCHAR
);

-- Allocation output: one row per replica and window.
CREATE TABLE replica_window (
    replica VARCHAR NOT NULL,
    window_start TIMESTAMP NOT NULL,
    pool VARCHAR NOT NULL,
    model VARCHAR NOT NULL,
    gpu VARCHAR NOT NULL,
    pricing VARCHAR NOT NULL,
    gpu_equiv DOUBLE NOT NULL,
    provisioned_s DOUBLE NOT NULL,
    busy_s DOUBLE NOT NULL,
    energy_j DOUBLE NOT NULL,
    capacity_usd DOUBLE NOT NULL,
    energy_usd DOUBLE NOT NULL,
    cost_micro BIGINT NOT NULL,
    allocated_micro BIGINT NOT NULL,
    idle_micro BIGINT NOT NULL,
    prefill_tokens DOUBLE NOT NULL,
    decode_tokens DOUBLE NOT NULL,
    requests INTEGER NOT NULL
);

-- Allocation output: one row per request and window it was active in.
CREATE TABLE request_window (
    request_id VARCHAR NOT NULL,
    window_start TIMESTAMP NOT NULL,
    replica VARCHAR NOT NULL,
    tenant VARCHAR NOT NULL,
    cost_micro BIGINT NOT NULL,
    work DOUBLE NOT NULL,
    prefill_tokens DOUBLE NOT NULL,
    decode_tokens DOUBLE NOT NULL,
    gpu_s DOUBLE NOT NULL,
    energy_j DOUBLE NOT NULL
);

-- Hourly rollup of request_window by every reporting dimension.
CREATE TABLE cost_hourly (
    hour TIMESTAMP NOT NULL,
    replica VARCHAR NOT NULL,
    pool VARCHAR NOT NULL,
    tenant VARCHAR NOT NULL,
    model VARCHAR NOT NULL,
    feature VARCHAR NOT NULL,
    api_key_id VARCHAR NOT NULL,
    upstream VARCHAR NOT NULL,
    cost_micro BIGINT NOT NULL,
    requests BIGINT NOT NULL,
    prompt_tokens BIGINT NOT NULL,
    cached_prompt_tokens BIGINT NOT NULL,
    completion_tokens BIGINT NOT NULL,
    gpu_s DOUBLE NOT NULL,
    energy_j DOUBLE NOT NULL
);

-- Engine-time calibration: busy seconds ~ a * prefill tokens + b * decode tokens, per model.
CREATE TABLE calibration (
    model VARCHAR NOT NULL,
    computed_at TIMESTAMP NOT NULL,
    range_start TIMESTAMP NOT NULL,
    range_end TIMESTAMP NOT NULL,
    windows BIGINT NOT NULL,
    prefill_s_per_token DOUBLE NOT NULL,
    decode_s_per_token DOUBLE NOT NULL,
    r2 DOUBLE,
    rmse_s DOUBLE,
    source VARCHAR NOT NULL
);

CREATE TABLE allocation_runs (
    range_start TIMESTAMP NOT NULL,
    range_end TIMESTAMP NOT NULL,
    started_at TIMESTAMP NOT NULL,
    duration_s DOUBLE NOT NULL,
    replica_windows BIGINT NOT NULL,
    request_windows BIGINT NOT NULL,
    unpriced_requests BIGINT NOT NULL,
    cost_micro BIGINT NOT NULL,
    idle_micro BIGINT NOT NULL
);

CREATE TABLE budget_alerts (
    tenant VARCHAR NOT NULL,
    period VARCHAR NOT NULL,
    period_start TIMESTAMP NOT NULL,
    sent_at TIMESTAMP NOT NULL,
    projected_usd DOUBLE NOT NULL,
    limit_usd DOUBLE NOT NULL,
    delivered BOOLEAN NOT NULL,
    PRIMARY KEY (tenant, period, period_start)
);
