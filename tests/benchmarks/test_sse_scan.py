"""Stream accounting cost per frame (infermeter/kernel/sse_usage.py) on a real vLLM stream,
against the floor of one C-level pass (``bytes.count``) over the same frames.

Run: ``./dev.sh bench -k sse_scan`` (bounded: a fixed number of passes)."""

from __future__ import annotations

import time

from infermeter.kernel.sse_usage import SseUsageScanner
from tests.conftest import VLLM_ARTIFACTS

PASSES = 300


def test_sse_scan_cost_per_frame() -> None:
    raw = (VLLM_ARTIFACTS / "completions_stream_client_abort.sse").read_bytes()
    frames = [f + b"\n\n" for f in raw.split(b"\n\n") if f]
    t = time.perf_counter()
    for _ in range(PASSES):
        for frame in frames:
            frame.count(b"\n\ndata:")
    floor = (time.perf_counter() - t) / (PASSES * len(frames)) * 1e9
    t = time.perf_counter()
    for _ in range(PASSES):
        scanner = SseUsageScanner([])
        for frame in frames:
            scanner.feed(frame, 1.0)
    scan = (time.perf_counter() - t) / (PASSES * len(frames)) * 1e9
    t = time.perf_counter()
    for _ in range(PASSES):
        scanner = SseUsageScanner([], strip_usage=True)
        for frame in frames:
            scanner.feed(frame, 1.0)
    strip = (time.perf_counter() - t) / (PASSES * len(frames)) * 1e9
    assert scanner.token_frames > 100
    print(
        f"\nSSE-SCAN {len(frames)} frames x {PASSES}: bytes.count floor {floor:.0f} ns/frame, "
        f"scanner {scan:.0f} ns/frame, strip mode {strip:.0f} ns/frame"
    )
