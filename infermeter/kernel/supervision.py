"""Background tasks that restart when they fail, with backoff, and say so.

A service's loops (record consumer, shippers, scrapers) must outlive a bug or a fault they
did not expect: :func:`supervised` runs one, and when it raises (anything but cancellation)
logs the error, calls ``on_restart(name)`` (a metric) and starts it again after an
exponential backoff; a run that lasted ``healthy_s`` resets the backoff.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable


async def supervised(
    name: str,
    run: Callable[[], Awaitable[None]],
    *,
    on_restart: Callable[[str], None],
    log: logging.Logger,
    initial_s: float = 0.5,
    max_s: float = 30.0,
    healthy_s: float = 60.0,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    mono: Callable[[], float] = time.monotonic,
) -> None:
    """Run ``run()`` until cancelled, restarting it after each failure."""
    delay = initial_s
    while True:
        started = mono()
        try:
            await run()
            log.error("background task %s returned; restarting it", name)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("background task %s failed; restarting in %.1f s", name, delay)
        on_restart(name)
        if mono() - started >= healthy_s:
            delay = initial_s
        await sleep(delay)
        delay = min(max_s, delay * 2)
