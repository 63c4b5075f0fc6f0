"""Property-based fuzzing of the collector's reading of an engine's Prometheus exposition
(``parse_exposition`` in collector/engine_signals.py: a line prefilter, then client_python's
parser, then per-model sums).

Random valid expositions (any metric names, the vLLM families among others with similar
names, labels whose values hold escaped quotes, backslashes and newlines and any other
Unicode, ``+Inf`` / ``-Inf`` / ``NaN`` values, timestamps, HELP and TYPE lines, histograms,
blank lines and indentation) are generated with the values they carry. Two oracles: the
generated values themselves, and ``prometheus_client.parser.text_string_to_metric_families``
over the *whole* text (no prefilter). Garbage raises nothing but ``ValueError``, the error the
scraper handles (collector/engine_scraper.py).
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

from hypothesis import HealthCheck, given, note, settings
from hypothesis import strategies as st
from prometheus_client.parser import text_string_to_metric_families

from infermeter.collector.engine_signals import SignalDeriver, parse_exposition
from infermeter.kernel import vllm_wire

FUZZ = settings(
    max_examples=250,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
GAUGES = (
    vllm_wire.NUM_REQUESTS_RUNNING,
    vllm_wire.NUM_REQUESTS_WAITING,
    vllm_wire.KV_CACHE_USAGE_PERC,
)
COUNTERS = (
    vllm_wire.PROMPT_TOKENS_TOTAL,
    vllm_wire.GENERATION_TOKENS_TOTAL,
    vllm_wire.NUM_PREEMPTIONS_TOTAL,
)
HISTOGRAMS = (vllm_wire.TIME_TO_FIRST_TOKEN, vllm_wire.INTER_TOKEN_LATENCY)
# Names near the wanted ones: a prefix filter must not confuse them.
NEIGHBOURS = (
    "vllm:num_requests_running_total",
    "vllm:num_requests_waiting_by_reason",
    "vllm:kv_cache_usage_perc_max",
    "vllm:prompt_tokens",
    "vllm:time_to_first_token_seconds_created",
    "vllm:inter_token_latency_seconds_sum",
    "vllm_num_requests_running",
    "process_cpu_seconds_total",
)

NAME = st.from_regex(r"[a-zA-Z_:][a-zA-Z0-9_:]{0,20}", fullmatch=True)
LABEL_NAME = st.from_regex(r"[a-zA-Z_][a-zA-Z0-9_]{0,10}", fullmatch=True).filter(
    lambda n: not n.startswith("__") and n not in ("le", "model_name", "quantile")
)
# Label values: anything, newlines and Unicode line separators included (escaped on the wire).
LABEL_VALUE = st.one_of(
    st.text(max_size=10),
    st.sampled_from(['a"b', "back\\slash", "new\nline", "\u2028", "\x85", "\r", "\x0c", "é 🦙"]),
)
VALUE = st.one_of(
    st.integers(-(2**53), 2**53),
    st.floats(allow_nan=True, allow_infinity=True),
    st.floats(0, 1e6),
)
HELP = st.text(max_size=30).filter(lambda t: not t.startswith(" ") and not t.endswith(" "))
MODEL = st.sampled_from(["tiny-llama", "m", "", 'q"w', "a\\b", "x\ny", "p\u2028q", "r\x85s"])


def escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def fmt(value: float) -> str:
    if isinstance(value, int):
        return str(value)
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(value)


@dataclass
class Exposition:
    lines: list[str] = field(default_factory=list)
    samples: list[tuple[str, dict[str, str], float]] = field(default_factory=list)

    def text(self) -> str:
        return "\n".join(self.lines) + "\n"


@st.composite
def expositions(draw: st.DrawFn) -> Exposition:
    exp = Exposition()
    indent = st.sampled_from(["", "", "", " ", "\t", "  \t"])

    def sample(name: str, labels: dict[str, str], value: float) -> None:
        body = ",".join(f'{k}="{escape(v)}"' for k, v in labels.items())
        gap = draw(st.sampled_from([" ", " ", "\t", "  "]))
        line = draw(indent) + name + (f"{{{body}}}" if labels or draw(st.booleans()) else "")
        line += gap + fmt(value)
        if draw(st.integers(0, 4)) == 0:
            line += gap + str(draw(st.integers(0, 2**41)))  # a timestamp (ms)
        exp.lines.append(line)
        exp.samples.append((name, labels, value))

    def labelsets(vllm: bool) -> list[dict[str, str]]:
        out = []
        for engine in range(draw(st.integers(1, 3))):
            labels = {k: draw(LABEL_VALUE) for k in draw(st.lists(LABEL_NAME, max_size=2))}
            if vllm:
                labels["engine"] = str(engine)
                if draw(st.integers(0, 7)):
                    labels["model_name"] = draw(MODEL)
            items = list(labels.items())
            out.append(dict(draw(st.permutations(items))) if items else {})
        return out

    families = draw(
        st.lists(
            st.one_of(
                st.tuples(st.sampled_from(GAUGES), st.just("gauge")),
                st.tuples(st.sampled_from(COUNTERS), st.just("counter")),
                st.tuples(st.sampled_from(HISTOGRAMS), st.just("histogram")),
                st.tuples(st.sampled_from(NEIGHBOURS), st.just("gauge")),
                st.tuples(NAME, st.sampled_from(["gauge", "counter", "untyped", "histogram"])),
            ),
            max_size=9,
            unique_by=lambda f: f[0],
        )
    )
    for name, kind in families:
        vllm = name.startswith("vllm:")
        if draw(st.booleans()):
            exp.lines.append("")
        if draw(st.booleans()):
            exp.lines.append(f"# HELP {name} {escape(draw(HELP))}".rstrip())
        if draw(st.booleans()) or kind == "histogram":
            exp.lines.append(f"# TYPE {name} {kind}")
        if kind == "histogram":
            for labels in labelsets(vllm):
                bounds = sorted(set(draw(st.lists(st.floats(0, 1e4), max_size=5))))
                count = 0
                for le in [*bounds, math.inf]:
                    count += draw(st.integers(0, 1000))
                    le_text = (
                        "+Inf" if le == math.inf else draw(st.sampled_from([repr(le), f"{le:g}"]))
                    )
                    sample(f"{name}_bucket", {**labels, "le": le_text}, count)
                sample(f"{name}_sum", labels, draw(st.floats(0, 1e6)))
                sample(f"{name}_count", labels, count)
        else:
            suffix = "_total" if kind == "counter" and not name.endswith("_total") else ""
            for labels in labelsets(vllm):
                sample(name + suffix, labels, draw(VALUE))
        if draw(st.integers(0, 5)) == 0:
            exp.lines.append("# a plain comment: " + escape(draw(HELP)))
    return exp


def aggregate(samples: Any) -> dict[str, Any]:
    """Per model, what parse_exposition must report: gauges summed (KV use averaged),
    counters summed, cumulative buckets summed per bound."""
    gauges: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    counters: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
    buckets: dict[str, dict[str, dict[float, float]]] = defaultdict(
        lambda: defaultdict(lambda: defaultdict(float))
    )
    for name, labels, value in samples:
        model = labels.get("model_name", "")
        if name in GAUGES:
            gauges[model][name].append(value)
        elif name in COUNTERS:
            counters[model][name] += value
        elif name.endswith("_bucket") and name.removesuffix("_bucket") in HISTOGRAMS:
            buckets[model][name.removesuffix("_bucket")][float(labels["le"])] += value
    out: dict[str, Any] = {}
    for model in set(gauges) | set(counters) | set(buckets):
        g: dict[str, float] = {}
        for name, values in gauges[model].items():
            total = 0.0
            for v in values:
                total += v
            g[name] = total / len(values) if name == vllm_wire.KV_CACHE_USAGE_PERC else total
        out[model] = (
            g,
            dict(counters[model]),
            {h: sorted(b.items()) for h, b in buckets[model].items()},
        )
    return out


def canonical(value: Any) -> Any:
    """Floats as their repr (so NaN equals NaN and 0.0 equals 0), containers recursively."""
    if isinstance(value, float | int) and not isinstance(value, bool):
        return "nan" if math.isnan(value) else repr(float(value))
    if isinstance(value, dict):
        return {canonical(k): canonical(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [canonical(v) for v in value]
    return value


def parsed(text: str) -> dict[str, Any]:
    return {
        model: (gauges, snap.counters, snap.buckets)
        for model, (gauges, snap) in parse_exposition(text).items()
    }


@FUZZ
@given(exp=expositions())
def test_parse_equals_the_generated_values_and_client_python(exp: Exposition) -> None:
    text = exp.text()
    note(text)
    reference = [
        (s.name, s.labels, s.value)
        for family in text_string_to_metric_families(text)
        for s in family.samples
    ]
    # the oracle reads the generated exposition as generated (the generator is valid) ...
    assert canonical(reference) == canonical(exp.samples)
    # ... and the collector's prefiltered parse reports exactly what both say
    assert canonical(parsed(text)) == canonical(aggregate(exp.samples))


@FUZZ
@given(exp=expositions(), later=expositions())
def test_deriver_reads_any_two_valid_expositions(exp: Exposition, later: Exposition) -> None:
    deriver = SignalDeriver("pool", "r0")
    first = deriver.update(exp.text(), 1.0, 1000.0)
    second = deriver.update(later.text(), 2.0, 1001.0)
    assert sorted(s.model for s in first) == sorted(aggregate(exp.samples))
    assert sorted(s.model for s in second) == sorted(aggregate(later.samples))


# Garbage: random text, and valid expositions with random edits (cut, duplicated, spliced).
GARBAGE_PIECES = st.sampled_from(
    [
        "vllm:num_requests_running",
        "vllm:time_to_first_token_seconds_bucket",
        "vllm:prompt_tokens_total",
        "{",
        "}",
        '"',
        "=",
        ",",
        "le=",
        'le="x"',
        'model_name="',
        " ",
        "\n",
        "\\",
        "# TYPE ",
        "# HELP ",
        " histogram",
        "+Inf",
        "NaN",
        "1e999",
        "0x1F",
        "1_000",
        "__name__",
        "\u2028",
    ]
)


WANTED = st.sampled_from([*GAUGES, *COUNTERS, *(h + "_bucket" for h in HISTOGRAMS)])
ODD_LABELS = st.sampled_from(
    ["", "{}", '{le="x"}', '{le=""}', '{le="+Inf"}', '{le="NaN"}', '{model_name="m"}', "{le=1}"]
)
ODD_VALUES = st.sampled_from(["1", "NaN", "-Inf", "x", "", "1 2 3", "1e400", "-1"])


@st.composite
def garbage(draw: st.DrawFn) -> str:
    style = draw(st.integers(0, 2))
    if style == 0:
        return "".join(draw(st.lists(st.one_of(GARBAGE_PIECES, st.text(max_size=4)), max_size=60)))
    if style == 1:  # wanted names with odd labels and values
        lines = draw(st.lists(st.tuples(WANTED, ODD_LABELS, ODD_VALUES), min_size=1, max_size=6))
        return "".join(f"{name}{labels} {value}\n" for name, labels, value in lines)
    text = draw(expositions()).text()
    for _ in range(draw(st.integers(1, 4))):
        at = draw(st.integers(0, len(text)))
        cut = draw(st.integers(0, 12))
        text = text[:at] + draw(st.one_of(GARBAGE_PIECES, st.just(""))) + text[at + cut :]
    return text


@FUZZ
@given(text=garbage())
def test_garbage_raises_only_value_error(text: str) -> None:
    deriver = SignalDeriver("pool", "r0")
    for mono in (1.0, 2.0):
        try:
            signals = deriver.update(text, mono, 1000.0 + mono)
        except ValueError:
            continue
        assert all(isinstance(s.model, str) for s in signals)
