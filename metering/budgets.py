"""Tenant budgets: spend so far, burn rate, projected spend, and alerts on projected overrun.

For each configured tenant and period (UTC day, UTC month): ``spent`` is the allocated cost
since the period began (plus the idle share under ``share_idle``); the burn rate is the spend
of the trailing hour (daily) or trailing 24 hours (monthly) per second; ``projected`` is
``spent + burn x seconds left``. When ``projected > limit`` the budget *will exceed*: the
Prometheus gauge says so and, once per tenant, period and period start, a JSON alert is POSTed
to the configured webhook (delivery is recorded in ``budget_alerts``; a failed delivery is
retried on the next check).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx

from infermeter.metering.reports import Reports
from infermeter.metering.settings import BudgetSettings
from infermeter.metering.store import Store
from infermeter.metering.timeparse import end_of_month, iso, start_of_day, start_of_month

log = logging.getLogger(__name__)
PERIODS = ("daily", "monthly")


@dataclass(frozen=True, slots=True)
class PeriodState:
    """One tenant's budget state for one period."""

    period: str
    period_start: datetime
    period_end: datetime
    limit_usd: float
    spent_usd: float
    burn_usd_per_hour: float
    projected_usd: float

    @property
    def will_exceed(self) -> bool:
        return self.limit_usd > 0 and self.projected_usd > self.limit_usd

    def to_json(self) -> dict[str, Any]:
        return {
            "limit_usd": self.limit_usd or None,
            "spent_usd": round(self.spent_usd, 6),
            "projected_usd": round(self.projected_usd, 6),
            "burn_usd_per_hour": round(self.burn_usd_per_hour, 6),
            "will_exceed": self.will_exceed,
            "remaining_usd": round(self.limit_usd - self.spent_usd, 6) if self.limit_usd else None,
            "period_start": iso(self.period_start),
            "period_end": iso(self.period_end),
        }


class Budgets:
    """Budget state per tenant, and the alerting loop's single step :meth:`check`."""

    def __init__(
        self,
        store: Store,
        reports: Reports,
        budgets: Mapping[str, BudgetSettings],
        *,
        webhook: str = "",
        now: Callable[[], float],
        post: Callable[[str, dict[str, Any]], bool] | None = None,
    ) -> None:
        self.store = store
        self.reports = reports
        self.budgets = dict(budgets)
        self.webhook = webhook
        self.now = now
        self.post = post or _post_json
        self.last: dict[tuple[str, str], PeriodState] = {}
        self.alerts_sent = 0
        self.alerts_failed = 0

    def state(self, tenant: str) -> dict[str, Any]:
        """``GET /v1/budgets/{tenant}``: daily and monthly state (limits null when unset)."""
        now = datetime.fromtimestamp(self.now(), tz=UTC).replace(tzinfo=None)
        limits = self.budgets.get(tenant, BudgetSettings())
        out: dict[str, Any] = {"tenant": tenant, "as_of": iso(now)}
        allocated = self.reports.allocated_until()
        out["allocated_until"] = iso(allocated)
        for period in PERIODS:
            state = self._period(tenant, period, limits, now)
            self.last[(tenant, period)] = state
            out[period] = state.to_json()
        return out

    def _period(
        self, tenant: str, period: str, limits: BudgetSettings, now: datetime
    ) -> PeriodState:
        if period == "daily":
            start, end, trail = start_of_day(now), start_of_day(now) + timedelta(days=1), 3600.0
            limit = limits.daily_usd
        else:
            start, end, trail = start_of_month(now), end_of_month(now), 86400.0
            limit = limits.monthly_usd
        spent = self.reports.tenant_spend(tenant, start, now + timedelta(seconds=1))
        trail_start = max(start, now - timedelta(seconds=trail))
        trailing = self.reports.tenant_spend(tenant, trail_start, now + timedelta(seconds=1))
        elapsed = (now - trail_start).total_seconds()
        burn = trailing / elapsed if elapsed > 0 else 0.0
        projected = spent + burn * max((end - now).total_seconds(), 0.0)
        return PeriodState(period, start, end, limit, spent, burn * 3600.0, projected)

    def check(self) -> list[dict[str, Any]]:
        """Evaluate every configured budget; send one alert per newly projected overrun."""
        sent = []
        for tenant in sorted(self.budgets):
            state = self.state(tenant)
            for period in PERIODS:
                ps = self.last[(tenant, period)]
                if not ps.will_exceed or self._already_alerted(tenant, ps):
                    continue
                alert = {
                    "type": "infermeter.budget.will_exceed",
                    "tenant": tenant,
                    "period": period,
                    **state[period],
                    "as_of": state["as_of"],
                }
                delivered = bool(self.webhook) and self.post(self.webhook, alert)
                if delivered:
                    self.alerts_sent += 1
                elif self.webhook:
                    self.alerts_failed += 1
                self._record(tenant, ps, delivered)
                sent.append({**alert, "delivered": delivered})
        return sent

    def _already_alerted(self, tenant: str, ps: PeriodState) -> bool:
        cur = self.store.cursor()
        try:
            row = cur.execute(
                "SELECT delivered FROM budget_alerts WHERE tenant = ? AND period = ? "
                "AND period_start = ?",
                [tenant, ps.period, ps.period_start],
            ).fetchone()
        finally:
            cur.close()
        return bool(row and (row[0] or not self.webhook))

    def _record(self, tenant: str, ps: PeriodState, delivered: bool) -> None:
        now = datetime.fromtimestamp(self.now(), tz=UTC).replace(tzinfo=None)
        cur = self.store.cursor()
        try:
            cur.execute(
                "INSERT INTO budget_alerts VALUES (?, ?, ?, ?, ?, ?, ?) "
                "ON CONFLICT DO UPDATE SET sent_at = excluded.sent_at, "
                "projected_usd = excluded.projected_usd, delivered = excluded.delivered",
                [
                    tenant,
                    ps.period,
                    ps.period_start,
                    now,
                    ps.projected_usd,
                    ps.limit_usd,
                    delivered,
                ],
            )
        finally:
            cur.close()


def _post_json(url: str, payload: dict[str, Any]) -> bool:
    try:
        response = httpx.post(url, json=payload, timeout=5.0)
    except httpx.HTTPError as exc:
        log.warning("budget alert to %s failed: %s", url, exc)
        return False
    if response.status_code >= 300:
        log.warning("budget alert to %s answered %s", url, response.status_code)
        return False
    return True
