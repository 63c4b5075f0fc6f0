-- Allocation no longer stores one row per request and window (10 million requests made
-- that the largest write of a run): a request's cost is recomputed on lookup from the usage
-- records, replica_window and the calibration of the run (metering/request_cost.py).
-- cost_hourly keeps the FOCUS grain (hour x replica x pool x tenant x model x upstream); the
-- feature and API-key breakdown for filtered reports lives in cost_detail: per hour, tenant
-- and model, by feature (dim 'feature') and by API key (dim 'api_key'), all replicas
-- together, idle share precomputed. Existing rows are carried over.
CREATE TABLE cost_detail (
    hour TIMESTAMP NOT NULL,
    tenant VARCHAR NOT NULL,
    model VARCHAR NOT NULL,
    dim VARCHAR NOT NULL,
    key VARCHAR NOT NULL,
    upstream VARCHAR NOT NULL,
    cost_micro BIGINT NOT NULL,
    idle_share_micro BIGINT NOT NULL,
    requests BIGINT NOT NULL,
    prompt_tokens BIGINT NOT NULL,
    cached_prompt_tokens BIGINT NOT NULL,
    completion_tokens BIGINT NOT NULL,
    gpu_s DOUBLE NOT NULL,
    energy_j DOUBLE NOT NULL
);

INSERT INTO cost_detail
SELECT c.hour, c.tenant, c.model, d.dim, CASE d.dim WHEN 'feature' THEN c.feature
                                                ELSE c.api_key_id END,
       c.upstream, sum(c.cost_micro),
       sum(CASE WHEN r.allocated_micro > 0
                THEN floor(r.idle_micro * c.cost_micro / r.allocated_micro) ELSE 0 END)::BIGINT,
       sum(c.requests), sum(c.prompt_tokens), sum(c.cached_prompt_tokens),
       sum(c.completion_tokens), sum(c.gpu_s), sum(c.energy_j)
FROM cost_hourly c
CROSS JOIN (VALUES ('feature'), ('api_key')) d(dim)
LEFT JOIN replica_hourly r ON r.hour = c.hour AND r.replica = c.replica
GROUP BY ALL
ORDER BY 1;

CREATE TABLE cost_hourly_v4 (
    hour TIMESTAMP NOT NULL,
    replica VARCHAR NOT NULL,
    pool VARCHAR NOT NULL,
    tenant VARCHAR NOT NULL,
    model VARCHAR NOT NULL,
    upstream VARCHAR NOT NULL,
    cost_micro BIGINT NOT NULL,
    requests BIGINT NOT NULL,
    prompt_tokens BIGINT NOT NULL,
    cached_prompt_tokens BIGINT NOT NULL,
    completion_tokens BIGINT NOT NULL,
    gpu_s DOUBLE NOT NULL,
    energy_j DOUBLE NOT NULL
);

INSERT INTO cost_hourly_v4
SELECT hour, replica, pool, tenant, model, upstream, sum(cost_micro), sum(requests),
       sum(prompt_tokens), sum(cached_prompt_tokens), sum(completion_tokens), sum(gpu_s),
       sum(energy_j)
FROM cost_hourly
GROUP BY ALL
ORDER BY hour;

DROP TABLE cost_hourly;
ALTER TABLE cost_hourly_v4 RENAME TO cost_hourly;
DROP TABLE request_window;
