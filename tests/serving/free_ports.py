"""Free loopback port ranges for tests that start ``infermeter up`` (which uses a range)."""

from __future__ import annotations

import socket


def free_port_range(span: int = 30) -> int:
    """A base port such that base .. base+span-1 are all free on 127.0.0.1 right now."""
    for _ in range(200):
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            base = int(probe.getsockname()[1])
        if base + span > 65000:
            continue
        if all(_free(port) for port in range(base, base + span)):
            return base
    raise RuntimeError(f"no {span} consecutive free ports")


def _free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True
