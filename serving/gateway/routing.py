"""Replica choice: least outstanding requests, refined by fresh engine signals.

Each replica counts the requests the gateway has in flight to it. When engine signals
(``vllm:num_requests_waiting``, ``vllm:kv_cache_usage_perc``) are fresher than
``max_age_s`` they refine the choice: waiting requests add to the load and a replica whose
KV cache is nearly full (>= :data:`KV_SATURATED`) is only chosen when all are. Stale signals
are ignored, so a dead poller degrades to plain least-outstanding, never to a wrong pick.
Ties rotate. Pure logic: the poller that fills the signals lives in :mod:`signals`.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from infermeter.kernel import vllm_wire

KV_SATURATED = 0.9


@dataclass(slots=True)
class ReplicaLoad:
    """One reading of a replica's engine gauges."""

    ts: float
    waiting: float = 0.0
    running: float = 0.0
    kv_cache_usage: float = 0.0


@dataclass(slots=True)
class Replica:
    """A self-hosted replica as the router sees it."""

    name: str
    url: str
    signals_url: str
    outstanding: int = 0
    signals: ReplicaLoad | None = None
    connect_failures: int = 0


class Router:
    """Pick a replica among a pool's replicas."""

    def __init__(
        self,
        replicas: Iterable[Replica],
        *,
        max_age_s: float = 5.0,
        now: Callable[[], float] = time.monotonic,
    ) -> None:
        self.replicas = list(replicas)
        self._max_age = max_age_s
        self._now = now
        self._tie = itertools.count()

    def fresh(self, replica: Replica) -> ReplicaLoad | None:
        """The replica's signals if fresh enough to use."""
        sig = replica.signals
        if sig is None or self._now() - sig.ts > self._max_age:
            return None
        return sig

    def _key(self, replica: Replica, tie: int) -> tuple[bool, float, float, int]:
        sig = self.fresh(replica)
        load = float(replica.outstanding)
        kv = 0.0
        if sig is not None:
            load += sig.waiting
            kv = sig.kv_cache_usage
        return (kv >= KV_SATURATED, load, kv, tie)

    def pick(self, exclude: frozenset[str] = frozenset()) -> Replica | None:
        """The least-loaded replica not in ``exclude`` (by name), or None."""
        candidates = [r for r in self.replicas if r.name not in exclude]
        if not candidates:
            return None
        start = next(self._tie)
        n = len(candidates)
        keyed = [(self._key(r, (i - start) % n), r) for i, r in enumerate(candidates)]
        return min(keyed, key=lambda item: item[0])[1]


def parse_engine_gauges(text: str, ts: float) -> ReplicaLoad:
    """Read vLLM's gauges from a Prometheus exposition (summed over engines; KV: max)."""
    sig = ReplicaLoad(ts=ts)
    for line in text.splitlines():
        if not line.startswith("vllm:"):
            continue
        name, _, rest = line.partition("{") if "{" in line else line.partition(" ")
        try:
            value = float(rest.rsplit(" ", 1)[-1] if "{" in line else rest.split()[0])
        except (ValueError, IndexError):
            continue
        if name == vllm_wire.NUM_REQUESTS_WAITING:
            sig.waiting += value
        elif name == vllm_wire.NUM_REQUESTS_RUNNING:
            sig.running += value
        elif name == vllm_wire.KV_CACHE_USAGE_PERC:
            sig.kv_cache_usage = max(sig.kv_cache_usage, value)
    return sig
