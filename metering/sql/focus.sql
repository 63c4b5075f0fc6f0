-- FOCUS 1.0 rows for [$since, $until): one per tenant x model x replica x hour, plus one
-- idle row per replica-hour (SubAccountId null, tag infermeter:idle), so the export sums to
-- the replicas' cost. Column list and allowed values: FOCUS 1.0 (focus-validator 1.0 rules).

-- name: focus_rows
CREATE OR REPLACE TEMP TABLE focus_export AS
WITH usage_rows AS (
    SELECT c.hour, c.replica, c.pool, c.tenant, c.model, c.upstream,
           sum(c.cost_micro) / 1e6 AS cost, sum(c.gpu_s) / 3600.0 AS gpu_h,
           sum(c.prompt_tokens + c.completion_tokens) AS tokens, sum(c.requests) AS requests,
           false AS idle
    FROM cost_hourly c
    WHERE c.hour >= $since AND c.hour < $until
    GROUP BY ALL
), idle_rows AS (
    SELECT date_trunc('hour', window_start) AS hour, replica, any_value(pool) AS pool,
           NULL AS tenant, any_value(model) AS model, 'self_hosted' AS upstream,
           sum(idle_micro) / 1e6 AS cost,
           sum(gpu_equiv * (provisioned_s - busy_s)) / 3600.0 AS gpu_h,
           0 AS tokens, 0 AS requests, true AS idle
    FROM replica_window
    WHERE window_start >= $since AND window_start < $until
    GROUP BY ALL
    HAVING sum(idle_micro) > 0
), rows AS (
    SELECT * FROM usage_rows UNION ALL SELECT * FROM idle_rows
), priced AS (
    SELECT r.*, rc.gpu, rc.pricing
    FROM rows r
    LEFT JOIN (SELECT replica, date_trunc('hour', window_start) AS hour, any_value(gpu) AS gpu,
                      any_value(pricing) AS pricing
               FROM replica_window
               WHERE window_start >= $since AND window_start < $until
               GROUP BY ALL) rc USING (replica, hour)
)
SELECT
    NULL::VARCHAR AS AvailabilityZone,
    round(cost, 6)::DECIMAL(18, 6) AS BilledCost,
    $account_id AS BillingAccountId,
    $account_name AS BillingAccountName,
    $currency AS BillingCurrency,
    date_trunc('month', hour) + INTERVAL 1 MONTH AS BillingPeriodEnd,
    date_trunc('month', hour) AS BillingPeriodStart,
    'Usage' AS ChargeCategory,
    NULL::VARCHAR AS ChargeClass,
    CASE WHEN idle THEN 'Idle GPU capacity of replica ' || replica
         WHEN upstream = 'managed' THEN 'Managed API tokens for ' || tenant || ', model ' || model
         ELSE 'GPU inference for ' || tenant || ', model ' || model || ' on ' || replica END
        AS ChargeDescription,
    'Usage-Based' AS ChargeFrequency,
    hour + INTERVAL 1 HOUR AS ChargePeriodEnd,
    hour AS ChargePeriodStart,
    NULL::VARCHAR AS CommitmentDiscountCategory,
    NULL::VARCHAR AS CommitmentDiscountId,
    NULL::VARCHAR AS CommitmentDiscountName,
    NULL::VARCHAR AS CommitmentDiscountStatus,
    NULL::VARCHAR AS CommitmentDiscountType,
    round(CASE WHEN upstream = 'managed' THEN tokens ELSE gpu_h END, 9)::DECIMAL(24, 9)
        AS ConsumedQuantity,
    CASE WHEN upstream = 'managed' THEN 'Tokens' ELSE 'GPU-Hours' END AS ConsumedUnit,
    round(cost, 6)::DECIMAL(18, 6) AS ContractedCost,
    round(CASE WHEN upstream = 'managed' THEN cost / nullif(tokens, 0)
               ELSE cost / nullif(gpu_h, 0) END, 9)::DECIMAL(24, 9) AS ContractedUnitPrice,
    round(cost, 6)::DECIMAL(18, 6) AS EffectiveCost,
    $issuer AS InvoiceIssuer,
    round(cost, 6)::DECIMAL(18, 6) AS ListCost,
    round(CASE WHEN upstream = 'managed' THEN cost / nullif(tokens, 0)
               ELSE cost / nullif(gpu_h, 0) END, 9)::DECIMAL(24, 9) AS ListUnitPrice,
    CASE coalesce(pricing, 'on_demand') WHEN 'reserved' THEN 'Committed'
         WHEN 'spot' THEN 'Dynamic' ELSE 'Standard' END AS PricingCategory,
    round(CASE WHEN upstream = 'managed' THEN tokens ELSE gpu_h END, 9)::DECIMAL(24, 9)
        AS PricingQuantity,
    CASE WHEN upstream = 'managed' THEN 'Tokens' ELSE 'GPU-Hours' END AS PricingUnit,
    $provider AS Provider,
    $provider AS Publisher,
    NULL::VARCHAR AS RegionId,
    NULL::VARCHAR AS RegionName,
    nullif(replica, '') AS ResourceId,
    nullif(replica, '') AS ResourceName,
    CASE WHEN upstream = 'managed' THEN 'Managed LLM API' ELSE 'LLM Inference Replica' END
        AS ResourceType,
    'AI and Machine Learning' AS ServiceCategory,
    CASE WHEN upstream = 'managed' THEN 'Managed LLM API' ELSE 'Self-hosted LLM Inference' END
        AS ServiceName,
    coalesce(gpu, CASE WHEN upstream = 'managed' THEN model END) AS SkuId,
    coalesce(gpu || ':' || coalesce(pricing, 'on_demand'),
             CASE WHEN upstream = 'managed' THEN model END) AS SkuPriceId,
    tenant AS SubAccountId,
    tenant AS SubAccountName,
    to_json(CASE WHEN idle
        THEN MAP {'infermeter:pool': pool, 'infermeter:model': model, 'infermeter:idle': 'true'}
        ELSE MAP {'infermeter:pool': pool, 'infermeter:model': model,
                  'infermeter:requests': requests::VARCHAR,
                  'infermeter:tokens': tokens::VARCHAR} END)::VARCHAR AS Tags
FROM priced
ORDER BY ChargePeriodStart, ResourceId, SubAccountId NULLS LAST, Tags;
