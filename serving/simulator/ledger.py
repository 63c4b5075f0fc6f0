"""The simulator's ground-truth ledger: what each request really cost the (modelled) GPU.

Off by default (``--ledger PATH``); metering never reads it: it exists so that tests and the
cost-accuracy benchmark can compare metering's allocation with the truth. Per engine step the
ledger takes the step's modelled duration and splits it over the requests scheduled in it by
the roofline's binding resource (:meth:`PerformanceModel.step_shares`): each request's share
of the step's FLOPs when the step is compute-bound, of its memory reads when memory-bound (the
weights by tokens, the KV cache by the context each request reads), the fixed per-step
overhead and all-reduce time by tokens. Recomputing a preempted request's context is charged
to it (the recomputation is its prefill tokens in later steps); prompt tokens found in the
prefix cache are not computed, so not charged. Durations are integer nanoseconds, each step's
split by cumulative rounding so the shares sum to the step exactly: per replica, the requests'
GPU time sums to its busy time exactly, and busy + idle = wall time exactly.

Written as JSON lines, one per step (``{"t0": ns, "ns": duration, "r": [[request, ns], ...]}``)
after a first line describing the replica, buffered and flushed every ``flush_every`` steps
and on close; :func:`read_ledger` sums a file back.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import orjson

from infermeter.capacity.perf_model import PerformanceModel

NS = 1_000_000_000


class StepLedger:
    """Appends each step's split to a JSON-lines file."""

    def __init__(self, path: str | Path, perf: PerformanceModel, flush_every: int = 256) -> None:
        self.path = Path(path)
        self.perf = perf
        self._file: IO[bytes] | None = self.path.open("ab")
        self._lines: list[bytes] = []
        self._flush_every = flush_every
        header = {"gpu": perf.gpu.name, "model": perf.model.name, "tp": perf.tp}
        self._lines.append(orjson.dumps({"replica": header}))

    def record(
        self,
        start_s: float,
        end_s: float,
        requests: Sequence[str],
        tokens: Sequence[int],
        pairs: Sequence[float],
        context: Sequence[float],
    ) -> None:
        """One step from ``start_s`` to ``end_s`` (engine time, seconds). Both ends are
        rounded to the nanosecond, so consecutive steps never overlap."""
        t0 = round(start_s * NS)
        total_ns = round(end_s * NS) - t0
        shares = self.perf.step_shares(tokens, pairs, context)
        parts = split_ns(total_ns, shares)
        line = {"t0": t0, "ns": total_ns, "r": list(zip(requests, parts, strict=True))}
        self._lines.append(orjson.dumps(line))
        if len(self._lines) >= self._flush_every:
            self.flush()

    def flush(self) -> None:
        """Write what is buffered."""
        if self._file is None or not self._lines:
            return
        self._file.write(b"\n".join(self._lines) + b"\n")
        self._file.flush()
        self._lines = []

    def close(self) -> None:
        """Flush and close the file (idempotent)."""
        self.flush()
        if self._file is not None:
            self._file.close()
            self._file = None


def split_ns(total: int, shares: Sequence[float]) -> list[int]:
    """``total`` nanoseconds split in proportion to ``shares``, exactly (cumulative rounding:
    the parts sum to ``total`` and each is within 1 ns of its exact share)."""
    whole = sum(shares)
    if whole <= 0:
        shares, whole = [1.0] * len(shares), float(len(shares))
    out, running, given = [], 0.0, 0
    for share in shares:
        running += share
        upto = total if running >= whole else int(total * running / whole)
        out.append(upto - given)
        given = upto
    return out


@dataclass
class LedgerTotals:
    """A ledger file summed: each request's GPU nanoseconds, busy and wall time."""

    request_ns: dict[str, int] = field(default_factory=dict)
    busy_ns: int = 0
    first_ns: int | None = None
    last_ns: int = 0
    steps: int = 0

    @property
    def wall_ns(self) -> int:
        """From the first step's start to the last step's end."""
        return 0 if self.first_ns is None else self.last_ns - self.first_ns

    @property
    def idle_ns(self) -> int:
        return self.wall_ns - self.busy_ns


def read_ledger(path: str | Path) -> LedgerTotals:
    """Sum a ledger file (tests and benchmarks only)."""
    totals = LedgerTotals()
    with Path(path).open("rb") as handle:
        for raw in handle:
            line = orjson.loads(raw)
            if "replica" in line:
                continue
            t0, ns = line["t0"], line["ns"]
            totals.steps += 1
            totals.busy_ns += ns
            totals.first_ns = t0 if totals.first_ns is None else min(totals.first_ns, t0)
            totals.last_ns = max(totals.last_ns, t0 + ns)
            for request, part in line["r"]:
                totals.request_ns[request] = totals.request_ns.get(request, 0) + part
    return totals
