"""Engine-time calibration: how many engine seconds one prefill token and one decode token
cost, fitted from the data.

For every replica-window that served one model and was busy, allocation measures the engine's
busy time ``B`` (the union of request intervals) and the prefill and decode tokens processed
in it (``P``, ``D``, pro-rated by overlap). Least squares through the origin,
``B ~ a*P + b*D``, gives ``a`` and ``b`` in seconds per token. The fit is used when it rests
on at least :data:`MIN_WINDOWS` windows, is well-conditioned and both coefficients are
non-negative; otherwise the model's last good fit, otherwise the documented defaults
(:data:`DEFAULT_PREFILL_S`, :data:`DEFAULT_DECODE_S`: decode 2.5x prefill per token, the
fallback ratio OpenCost uses).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

DEFAULT_PREFILL_S = 1.0e-4
DEFAULT_DECODE_S = 2.5e-4
MIN_WINDOWS = 30
MIN_CONDITION = 1e-9


@dataclass(frozen=True, slots=True)
class Sums:
    """Normal-equation sums over ``n`` windows (tokens P, D; busy seconds B)."""

    n: int
    pp: float
    pd: float
    dd: float
    pb: float
    db: float
    bb: float
    b_sum: float


@dataclass(frozen=True, slots=True)
class Calibration:
    """Seconds of engine time per prefill / decode token for one model, and how it was got."""

    model: str
    prefill_s_per_token: float
    decode_s_per_token: float
    windows: int
    source: str  # "fit" | "previous" | "default"
    r2: float | None = None
    rmse_s: float | None = None

    def to_json(self) -> dict[str, object]:
        return {
            "model": self.model,
            "prefill_s_per_token": self.prefill_s_per_token,
            "decode_s_per_token": self.decode_s_per_token,
            "windows": self.windows,
            "source": self.source,
            "r2": self.r2,
            "rmse_s": self.rmse_s,
        }


def default(model: str, windows: int = 0) -> Calibration:
    """The documented defaults, used when the data cannot support a fit."""
    return Calibration(model, DEFAULT_PREFILL_S, DEFAULT_DECODE_S, windows, "default")


def fit(model: str, sums: Sums) -> Calibration | None:
    """Least squares through the origin; None when the data cannot support a fit."""
    if sums.n < MIN_WINDOWS:
        return None
    det = sums.pp * sums.dd - sums.pd * sums.pd
    scale = sums.pp * sums.dd
    if scale <= 0 or det <= MIN_CONDITION * scale:
        return None
    a = (sums.pb * sums.dd - sums.db * sums.pd) / det
    b = (sums.db * sums.pp - sums.pb * sums.pd) / det
    if a < 0 or b < 0 or (a == 0 and b == 0):
        return None
    sse = (
        sums.bb
        - 2 * (a * sums.pb + b * sums.db)
        + a * a * sums.pp
        + 2 * a * b * sums.pd
        + b * b * sums.dd
    )
    sse = max(sse, 0.0)
    sst = sums.bb - sums.b_sum * sums.b_sum / sums.n
    r2 = 1.0 - sse / sst if sst > 0 else None
    return Calibration(model, a, b, sums.n, "fit", r2, math.sqrt(sse / sums.n))


def choose(model: str, sums: Sums | None, previous: Calibration | None) -> Calibration:
    """The calibration allocation uses: this fit, else the last good one, else defaults."""
    windows = sums.n if sums else 0
    fitted = fit(model, sums) if sums else None
    if fitted is not None:
        return fitted
    if previous is not None and previous.source == "fit":
        return Calibration(
            model,
            previous.prefill_s_per_token,
            previous.decode_s_per_token,
            windows,
            "previous",
            previous.r2,
            previous.rmse_s,
        )
    return default(model, windows)
