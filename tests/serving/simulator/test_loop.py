"""The engine loop paces steps by the time scale, on an injected clock and sleep."""

from __future__ import annotations

import asyncio
import random

import pytest

from infermeter.serving.simulator.engine import FINISHED, SimRequest
from infermeter.serving.simulator.loop import EngineLoop, ScaledClock
from infermeter.serving.simulator.text import plan_completion
from tests.serving.simulator.simulator_helpers import make_engine


class FakeTime:
    """A wall clock that only moves when the loop sleeps."""

    def __init__(self) -> None:
        self.now = 100.0
        self.sleeps: list[float] = []

    def wall(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds
        await asyncio.sleep(0)


async def drive(time_scale: float) -> tuple[FakeTime, float, SimRequest]:
    fake = FakeTime()
    engine = make_engine()
    if time_scale > 0:
        engine.clock = ScaledClock(time_scale, fake.wall)
        engine.time = engine.clock()
    loop = EngineLoop(engine, time_scale=time_scale, sleep=fake.sleep, wall=fake.wall)
    req = SimRequest("r", 500, plan_completion(random.Random(1), 20, ignore_eos=True), 20)
    loop.start()
    engine.add(req)
    loop.wake()
    for _ in range(10_000):
        if req.status == FINISHED:
            break
        await asyncio.sleep(0)
    await loop.stop()
    return fake, engine.time, req


@pytest.mark.parametrize("time_scale", [1.0, 0.25])
async def test_loop_sleeps_model_time_times_scale(time_scale: float) -> None:
    fake, model_end, req = await drive(time_scale)
    assert req.status == FINISHED and req.num_output == 20
    slept = sum(fake.sleeps)
    assert slept == pytest.approx(model_end * time_scale, rel=1e-6)
    assert len([s for s in fake.sleeps if s > 0]) == 20  # one wait per step


async def test_time_scale_zero_never_waits() -> None:
    fake, model_end, req = await drive(0.0)
    assert req.num_output == 20
    assert model_end > 0  # virtual time still advanced by the model
    assert all(s == 0 for s in fake.sleeps)


def test_negative_time_scale_is_refused() -> None:
    with pytest.raises(ValueError, match="time_scale"):
        EngineLoop(make_engine(), time_scale=-1)
