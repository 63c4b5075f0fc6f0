"""The reports that price tokens rather than split cost: the admission rates the gateway and
the throttle read (``GET /v1/rates``) and the calibration history behind them
(``GET /v1/calibration``). Mixed into :class:`infermeter.metering.reports.Reports`."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from infermeter.kernel.price_catalog import Catalog
from infermeter.metering.calibration import DEFAULT_DECODE_S, DEFAULT_PREFILL_S
from infermeter.metering.series import SeriesReports
from infermeter.metering.sql_files import query
from infermeter.metering.timeparse import iso

RATE_LOOKBACK = timedelta(hours=24)
DEFAULT_GPU = "h100-sxm"


class RateReports(SeriesReports):
    """Token prices per model for admission estimates, and the fits behind them."""

    catalog: Catalog
    share_idle: bool

    # -- rates -----------------------------------------------------------------------------
    def rates(self) -> dict[str, Any]:
        """Current price per model for admission estimates (``GET /v1/rates``)."""
        now = datetime.utcfromtimestamp(self.now())
        params = {"since": now - RATE_LOOKBACK, "until": now + timedelta(minutes=1)}
        calib = {row[0]: row for row in self._rows(query("reports", "latest_calibration"), {})}
        fleet = self._rows(query("reports", "fleet_rate"), params)
        usd_s, usd_gpu_s, idle_frac = fleet[0] if fleet else (None, None, None)
        if usd_s is None:
            usd_s = usd_gpu_s = self.catalog.usd_per_hour(DEFAULT_GPU) / 3600.0
            idle_frac = 0.0
        models: dict[str, Any] = {}
        for model, m_usd_s, m_gpu_s, m_idle, _replicas in self._rows(
            query("reports", "model_rates"), params
        ):
            models[model] = self._rate(calib.get(model), m_usd_s, m_gpu_s, m_idle or 0.0)
        for model in calib:
            models.setdefault(model, self._rate(calib[model], usd_s, usd_gpu_s, idle_frac or 0.0))
        return {
            "models": models,
            "default": self._rate(None, usd_s, usd_gpu_s, idle_frac or 0.0),
            "as_of": iso(now),
        }

    def _rate(
        self, calib: tuple[Any, ...] | None, usd_s: float, usd_gpu_s: float, idle_frac: float
    ) -> dict[str, Any]:
        a = calib[1] if calib else DEFAULT_PREFILL_S
        b = calib[2] if calib else DEFAULT_DECODE_S
        markup = 1.0 / (1.0 - idle_frac) if self.share_idle and idle_frac < 0.99 else 1.0
        return {
            "usd_per_prompt_token": a * usd_s * markup,
            "usd_per_completion_token": b * usd_s * markup,
            "usd_per_gpu_second": usd_gpu_s,
            "calibration": calib[4] if calib else "default",
        }

    # -- calibration -----------------------------------------------------------------------
    def calibration(self, model: str = "", limit: int = 50) -> dict[str, Any]:
        """Latest calibration per model and the history of fits."""
        latest = [
            {
                "model": r[0],
                "prefill_s_per_token": r[1],
                "decode_s_per_token": r[2],
                "windows": r[3],
                "source": r[4],
                "r2": r[5],
                "rmse_s": r[6],
                "computed_at": iso(r[7]),
            }
            for r in self._rows(query("reports", "latest_calibration"), {})
            if not model or r[0] == model
        ]
        history = [
            {
                "model": r[0],
                "computed_at": iso(r[1]),
                "range_start": iso(r[2]),
                "range_end": iso(r[3]),
                "windows": r[4],
                "prefill_s_per_token": r[5],
                "decode_s_per_token": r[6],
                "r2": r[7],
                "rmse_s": r[8],
                "source": r[9],
            }
            for r in self._rows(
                query("reports", "calibration_history"), {"model": model, "limit": limit}
            )
        ]
        return {"latest": latest, "history": history}
