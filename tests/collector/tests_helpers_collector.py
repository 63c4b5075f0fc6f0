"""Small helpers shared by the collector tests."""

from __future__ import annotations


def sse_frames(raw: bytes) -> list[str]:
    """The ``data:`` payloads of an SSE body, in order."""
    out = []
    for frame in raw.decode().split("\n\n"):
        if frame.startswith("data: "):
            out.append(frame[len("data: ") :])
    return out


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])
