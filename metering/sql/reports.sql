-- Queries behind the reports, the HTTP API and the CLI. Time ranges are [$since, $until).

-- name: latest_fit_calibration
SELECT model, prefill_s_per_token, decode_s_per_token, windows, source, r2, rmse_s
FROM calibration
WHERE source = 'fit'
QUALIFY row_number() OVER (PARTITION BY model ORDER BY computed_at DESC, range_end DESC) = 1;
