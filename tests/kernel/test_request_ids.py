"""Request ids: 32 hex characters, ordered by the time they were minted."""

from __future__ import annotations

import random

from infermeter.kernel.request_ids import new_request_id


def test_ids_are_hex_and_sort_by_mint_time() -> None:
    rng = random.Random(7)
    times = [1_790_000_000.0 + i * 0.0015 for i in range(2000)]
    ids = [new_request_id(lambda t=t: t, rng) for t in times]  # type: ignore[misc]
    assert all(len(i) == 32 and int(i, 16) >= 0 for i in ids)
    assert ids == sorted(ids)  # later milliseconds sort later, whatever the random part
    assert len(set(ids)) == len(ids)
    assert ids[0][:12] == f"{int(times[0] * 1000):012x}"


def test_ids_minted_in_one_millisecond_differ() -> None:
    ids = {new_request_id(lambda: 1_790_000_000.0) for _ in range(10_000)}
    assert len(ids) == 10_000
