"""Small helpers shared by the collector tests."""

from __future__ import annotations


def sse_frames(raw: bytes) -> list[str]:
    """The ``data:`` payloads of an SSE body, in order."""
    out = []
    for frame in raw.decode().split("\n\n"):
        if frame.startswith("data: "):
            out.append(frame[len("data: ") :])
    return out
