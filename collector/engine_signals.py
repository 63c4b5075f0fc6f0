"""Engine signals derived from an engine's Prometheus exposition (vLLM 0.32 names).

Pure arithmetic, no I/O: :class:`SignalDeriver` is fed one exposition text at a time with its
scrape time and returns :class:`EngineSignals` per model: gauges as read (summed over engine
cores; KV-cache use averaged), token and preemption rates from counter deltas (a counter that
went down was reset: its new value is the delta), TTFT / ITL quantiles from histogram bucket
deltas (linear interpolation inside the bucket, as PromQL's ``histogram_quantile``).
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass

from prometheus_client.parser import text_string_to_metric_families

from infermeter.kernel import vllm_wire
from infermeter.kernel.engine_signals import EngineSignals

__all__ = ["EngineSignals", "SignalDeriver", "counter_delta", "histogram_quantile"]

RUNNING = vllm_wire.NUM_REQUESTS_RUNNING
WAITING = vllm_wire.NUM_REQUESTS_WAITING
KV_USAGE = vllm_wire.KV_CACHE_USAGE_PERC
PROMPT_TOKENS = vllm_wire.PROMPT_TOKENS_TOTAL
GENERATION_TOKENS = vllm_wire.GENERATION_TOKENS_TOTAL
PREEMPTIONS = vllm_wire.NUM_PREEMPTIONS_TOTAL
TTFT = vllm_wire.TIME_TO_FIRST_TOKEN
ITL = vllm_wire.INTER_TOKEN_LATENCY
_COUNTERS = (PROMPT_TOKENS, GENERATION_TOKENS, PREEMPTIONS)
_HISTOGRAMS = (TTFT, ITL)


@dataclass(slots=True)
class _Snapshot:
    counters: dict[str, float]
    buckets: dict[str, list[tuple[float, float]]]  # sorted (le, cumulative count)


def counter_delta(previous: float, current: float) -> float:
    """Increase of a counter between two reads, treating a decrease as a reset."""
    return current if current < previous else current - previous


def histogram_quantile(q: float, buckets: list[tuple[float, float]]) -> float | None:
    """The ``q`` quantile of cumulative ``(le, count)`` buckets, or None when empty."""
    if not buckets or buckets[-1][1] <= 0:
        return None
    total = buckets[-1][1]
    rank = q * total
    prev_le, prev_count = 0.0, 0.0
    for le, count in buckets:
        if count >= rank:
            if math.isinf(le):
                return prev_le  # the highest finite bound, as PromQL does
            if count == prev_count:
                return le
            return prev_le + (le - prev_le) * (rank - prev_count) / (count - prev_count)
        prev_le, prev_count = le, count
    return prev_le


_WANTED = (RUNNING, WAITING, KV_USAGE, PROMPT_TOKENS, GENERATION_TOKENS, PREEMPTIONS,
           TTFT + "_bucket", ITL + "_bucket")  # fmt: skip


def _relevant(text: str) -> str:
    """Only the sample lines we use (client_python's parser is pure Python: ~16 ms for a
    full vLLM exposition, ~1 ms for these). Lines end at a line feed only (a label value may
    hold any other line separator) and may be indented, as in the parser."""
    keep = [line for line in text.split("\n") if line.lstrip(" \t").startswith(_WANTED)]
    keep.append("")
    return "\n".join(keep)


def parse_exposition(text: str) -> dict[str, tuple[dict[str, float], _Snapshot]]:
    """Per model: gauges, counters and cumulative histogram buckets summed over engines.
    Raises ``ValueError`` (only) for an exposition it cannot read."""
    gauges: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
    gauge_n: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    counters: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
    buckets: dict[str, dict[str, dict[float, float]]] = defaultdict(
        lambda: defaultdict(lambda: defaultdict(float))
    )
    for family in text_string_to_metric_families(_relevant(text)):
        for sample in family.samples:
            model = sample.labels.get("model_name", "")
            name = sample.name
            if name in (RUNNING, WAITING, KV_USAGE):
                gauges[model][name] += sample.value
                gauge_n[model][name] += 1
            elif name in _COUNTERS:
                counters[model][name] += sample.value
            elif name.endswith("_bucket") and name[: -len("_bucket")] in _HISTOGRAMS:
                if "le" not in sample.labels:
                    raise ValueError(f"{name} sample without an le label")
                le = float(sample.labels["le"])
                buckets[model][name[: -len("_bucket")]][le] += sample.value
    out: dict[str, tuple[dict[str, float], _Snapshot]] = {}
    for model in set(gauges) | set(counters) | set(buckets):
        g = dict(gauges[model])
        if gauge_n[model].get(KV_USAGE):
            g[KV_USAGE] = g[KV_USAGE] / gauge_n[model][KV_USAGE]
        snap = _Snapshot(
            counters=dict(counters[model]),
            buckets={h: sorted(b.items()) for h, b in buckets[model].items()},
        )
        out[model] = (g, snap)
    return out


class SignalDeriver:
    """Turns successive expositions of one engine into signals."""

    def __init__(self, pool: str, replica: str) -> None:
        self.pool = pool
        self.replica = replica
        self._previous: dict[str, tuple[float, _Snapshot]] = {}
        self.totals: dict[str, dict[str, float]] = {}

    def update(self, text: str, mono: float, wall: float) -> list[EngineSignals]:
        """Feed one exposition read at ``mono`` (monotonic) / ``wall`` (epoch seconds); raises
        ``ValueError`` for an exposition it cannot read."""
        parsed = parse_exposition(text)
        signals: list[EngineSignals] = []
        for model, (gauges, snap) in sorted(parsed.items()):
            self.totals[model] = dict(snap.counters)
            sig = EngineSignals(
                pool=self.pool,
                replica=self.replica,
                model=model,
                ts=wall,
                num_requests_running=gauges.get(RUNNING, 0.0),
                num_requests_waiting=gauges.get(WAITING, 0.0),
                kv_cache_usage_perc=gauges.get(KV_USAGE, 0.0),
            )
            previous = self._previous.get(model)
            if previous is not None and mono > previous[0]:
                self._rates(sig, previous[1], snap, mono - previous[0])
            self._previous[model] = (mono, snap)
            signals.append(sig)
        return signals

    @staticmethod
    def _rates(sig: EngineSignals, old: _Snapshot, new: _Snapshot, dt: float) -> None:
        def rate(name: str) -> float:
            if name not in new.counters:
                return 0.0
            return counter_delta(old.counters.get(name, 0.0), new.counters[name]) / dt

        sig.prompt_tokens_per_s = rate(PROMPT_TOKENS)
        sig.generation_tokens_per_s = rate(GENERATION_TOKENS)
        sig.preemptions_per_s = rate(PREEMPTIONS)
        for hist, p50, p95 in ((TTFT, "ttft_p50_s", "ttft_p95_s"), (ITL, "itl_p50_s", "itl_p95_s")):
            cur = new.buckets.get(hist)
            if not cur:
                continue
            before = dict(old.buckets.get(hist, []))
            reset = cur[-1][1] < before.get(math.inf, 0.0)
            delta = [(le, c if reset else c - before.get(le, 0.0)) for le, c in cur]
            setattr(sig, p50, histogram_quantile(0.5, delta))
            setattr(sig, p95, histogram_quantile(0.95, delta))
