"""The one asyncio task that drives the engine, paced by the time scale.

``time_scale`` maps model time to wall time: 1.0 runs every step for as long as the
performance model says, 0.5 twice as fast, 0 does not wait at all (each step only yields to
the event loop, so HTTP handlers run between steps). The sleep function and the wall clock
are injected, so tests run the loop without real waiting.

Model time is the engine's clock. With ``time_scale > 0`` it is the scaled wall clock
(``origin + (wall() - wall_origin) / time_scale``); with 0 the engine runs in pure virtual
time. The tokens of a step are released when the step ends, after the sleep.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

from infermeter.serving.simulator.engine import Engine

Sleep = Callable[[float], Awaitable[None]]


class ScaledClock:
    """Model time from a wall clock: ``origin + (wall() - wall_origin) / time_scale``."""

    def __init__(self, time_scale: float, wall: Callable[[], float] = time.monotonic) -> None:
        if time_scale <= 0:
            raise ValueError("ScaledClock needs time_scale > 0; use virtual time for 0")
        self.time_scale = time_scale
        self.wall = wall
        self.wall_origin = wall()

    def __call__(self) -> float:
        return (self.wall() - self.wall_origin) / self.time_scale


def model_clock(
    time_scale: float, wall: Callable[[], float] = time.monotonic
) -> ScaledClock | None:
    """The engine clock for ``time_scale`` (None = pure virtual time when it is 0)."""
    return ScaledClock(time_scale, wall) if time_scale > 0 else None


class EngineLoop:
    """Runs ``engine`` steps back to back while it has work, sleeping per the time scale."""

    def __init__(
        self,
        engine: Engine,
        *,
        time_scale: float,
        sleep: Sleep = asyncio.sleep,
        wall: Callable[[], float] = time.monotonic,
        yield_interval_s: float = 0.01,
    ) -> None:
        if time_scale < 0:
            raise ValueError(f"time_scale must be >= 0, got {time_scale}")
        self.engine = engine
        self.time_scale = time_scale
        self.sleep = sleep
        self._wake = asyncio.Event()
        self._stopped = False
        self._task: asyncio.Task[None] | None = None
        self.wall = wall
        self.yield_interval_s = yield_interval_s

    def wake(self) -> None:
        """Tell the loop new work arrived (call after ``engine.add``)."""
        self._wake.set()

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self.run())

    async def stop(self) -> None:
        self._stopped = True
        self._wake.set()
        if self._task is not None:
            await self._task
            self._task = None

    async def run(self) -> None:
        """Step until stopped; wait for :meth:`wake` while idle."""
        engine = self.engine
        wall = self.wall
        last_yield = wall()
        while not self._stopped:
            step = engine.schedule()
            if step is None:
                self._wake.clear()
                await self._wake.wait()
                last_yield = wall()
                continue
            delay = self._delay(step.end)
            if delay > 0:
                await self.sleep(delay)
                last_yield = wall()
            elif wall() - last_yield >= self.yield_interval_s:
                await self.sleep(0)
                last_yield = wall()
            engine.complete(step)

    def _delay(self, step_end: float) -> float:
        """Wall seconds until the step's end (0 in virtual time)."""
        clock = self.engine.clock
        if self.time_scale == 0 or clock is None:
            return 0.0
        return max(0.0, (step_end - clock()) * self.time_scale)
