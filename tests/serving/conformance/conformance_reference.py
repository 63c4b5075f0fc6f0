"""What real vLLM 0.32 looks like, and how to compare a live engine with it.

The reference is the captured output of real vLLM in ``tests/vllm_0_32_captures/``: response
*shapes* (keys and value types), SSE framing, metric families (type, labels, buckets). The
helpers here parse live output and list the differences as readable strings, so a failing
conformance test says exactly which key, chunk or metric differs.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import VLLM_ARTIFACTS

CAPTURES = VLLM_ARTIFACTS
SERVED_MODEL = "tiny-llama"
MAX_MODEL_LEN = 512
DONE = "[DONE]"
ID_PATTERNS = {
    "text_completion": re.compile(r"^cmpl-[0-9a-f]{16}$"),
    "chat.completion": re.compile(r"^chatcmpl-[0-9a-f]{16}$"),
    "chat.completion.chunk": re.compile(r"^chatcmpl-[0-9a-f]{16}$"),
}
# The metric families the collector, the throttle and the dashboards read.
FAMILIES_THAT_MATTER = (
    "vllm:request_success",
    "vllm:prompt_tokens",
    "vllm:generation_tokens",
    "vllm:num_requests_running",
    "vllm:num_requests_waiting",
    "vllm:kv_cache_usage_perc",
    "vllm:num_preemptions",
    "vllm:time_to_first_token_seconds",
    "vllm:inter_token_latency_seconds",
    "vllm:e2e_request_latency_seconds",
    "vllm:request_queue_time_seconds",
    "vllm:request_prefill_time_seconds",
    "vllm:request_decode_time_seconds",
    "vllm:request_inference_time_seconds",
    "vllm:request_time_per_output_token_seconds",
    "vllm:request_prompt_tokens",
    "vllm:request_generation_tokens",
    "vllm:prefix_cache_queries",
    "vllm:prefix_cache_hits",
    "vllm:iteration_tokens_total",
)
FINISHED_REASONS = frozenset({"stop", "length", "abort", "error", "repetition"})


def capture_json(name: str) -> Any:
    """A captured JSON body."""
    return json.loads((CAPTURES / name).read_text(encoding="utf-8"))


def capture_text(name: str) -> str:
    return (CAPTURES / name).read_text(encoding="utf-8")


# ---- shapes ----------------------------------------------------------------------------------


def _type_name(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int):
        return "int"
    if isinstance(value, float):
        return "float"
    if isinstance(value, str):
        return "str"
    if isinstance(value, list):
        return "list"
    return "object"


def shape_diff(actual: Any, reference: Any, path: str = "$") -> list[str]:
    """Differences in keys and value types between ``actual`` and ``reference``.

    A ``null`` in the reference fixes the key, not its type (it is null only in that capture).
    Lists are compared through their first elements when both have one.
    """
    ref_type, act_type = _type_name(reference), _type_name(actual)
    if ref_type == "null":
        return []
    if ref_type != act_type:
        return [f"{path}: {act_type} where vLLM has {ref_type}"]
    if isinstance(reference, dict):
        diffs = [f"{path}.{k}: missing" for k in reference if k not in actual]
        diffs += [f"{path}.{k}: not in vLLM's response" for k in actual if k not in reference]
        for key in reference.keys() & actual.keys():
            diffs += shape_diff(actual[key], reference[key], f"{path}.{key}")
        return diffs
    if isinstance(reference, list) and reference and actual:
        return shape_diff(actual[0], reference[0], f"{path}[0]")
    return []


# ---- server-sent events ------------------------------------------------------------------------


@dataclass
class SseStream:
    """A parsed ``text/event-stream`` body: JSON payloads, [DONE] seen, framing errors."""

    chunks: list[dict[str, Any]]
    done: bool
    framing_errors: list[str]

    @property
    def usage_chunks(self) -> list[dict[str, Any]]:
        return [c for c in self.chunks if c.get("usage")]

    @property
    def choice_chunks(self) -> list[dict[str, Any]]:
        return [c for c in self.chunks if c.get("choices")]


def parse_sse(raw: str) -> SseStream:
    """Split an SSE body into events and check vLLM's framing.

    vLLM sends each event as one ``data: <json>`` line followed by a blank line, and ends
    with ``data: [DONE]``; nothing else (no ``event:``/``id:`` fields, no comments).
    """
    errors: list[str] = []
    if not raw.endswith("\n\n"):
        errors.append("stream does not end with a blank line")
    blocks = raw.split("\n\n")
    if blocks and blocks[-1] == "":
        blocks.pop()
    chunks: list[dict[str, Any]] = []
    done = False
    for i, block in enumerate(blocks):
        if "\n" in block:
            errors.append(f"event {i} has several lines: {block[:80]!r}")
            continue
        if not block.startswith("data: "):
            errors.append(f"event {i} is not a `data: ` line: {block[:80]!r}")
            continue
        payload = block[len("data: ") :]
        if payload == DONE:
            if i != len(blocks) - 1:
                errors.append(f"data: [DONE] is event {i} of {len(blocks)}, not the last")
            done = True
            continue
        try:
            chunks.append(json.loads(payload))
        except ValueError:
            errors.append(f"event {i} is not JSON: {payload[:80]!r}")
    if not done:
        errors.append("no final `data: [DONE]`")
    return SseStream(chunks, done, errors)


def chunk_text(chunk: dict[str, Any]) -> str:
    """The generated text in one streamed chunk (completions ``text``, chat ``delta.content``)."""
    if not chunk.get("choices"):
        return ""
    choice = chunk["choices"][0]
    if "text" in choice:
        return str(choice["text"] or "")
    return str((choice.get("delta") or {}).get("content") or "")


# ---- metrics -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class FamilyInfo:
    """What matters about one metric family for conformance."""

    name: str
    type: str
    label_names: frozenset[str]
    label_values: dict[str, frozenset[str]]
    buckets: tuple[float, ...]


def families(exposition: str) -> dict[str, FamilyInfo]:
    """Metric families of a Prometheus text exposition, by family name."""
    result: dict[str, FamilyInfo] = {}
    for fam in text_string_to_metric_families(exposition):
        labels: dict[str, set[str]] = {}
        buckets: list[float] = []
        for sample in fam.samples:
            if sample.name.endswith("_created"):
                continue
            for key, value in sample.labels.items():
                if key == "le":
                    if float(value) not in buckets:
                        buckets.append(float(value))
                else:
                    labels.setdefault(key, set()).add(value)
        result[fam.name] = FamilyInfo(
            name=fam.name,
            type=fam.type,
            label_names=frozenset(labels),
            label_values={k: frozenset(v) for k, v in labels.items()},
            buckets=tuple(buckets),
        )
    return result


def reference_families() -> dict[str, FamilyInfo]:
    """The families of real vLLM's ``/metrics`` on a fresh server."""
    return families(capture_text("metrics_before_any_request.txt"))


def samples(exposition: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Every sample of an exposition: (sample name, labels) -> value."""
    out: dict[tuple[str, frozenset[tuple[str, str]]], float] = {}
    for fam in text_string_to_metric_families(exposition):
        for sample in fam.samples:
            out[(sample.name, frozenset(sample.labels.items()))] = float(sample.value)
    return out


def total(
    values: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str, **labels: str
) -> float:
    """Sum of the samples called ``name`` whose labels include ``labels``."""
    want = set(labels.items())
    return sum(v for (n, lab), v in values.items() if n == name and want <= lab)
