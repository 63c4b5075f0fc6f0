"""The on-disk spool: order, durability across reopen, torn tails, bounds."""

from __future__ import annotations

from pathlib import Path

import pytest

from infermeter.kernel.errors import SpoolError
from infermeter.kernel.spool import Spool


def payloads(start: int, n: int) -> list[bytes]:
    return [f'{{"i":{i}}}'.encode() for i in range(start, start + n)]


def test_fifo_across_segments_and_reopen(tmp_path: Path) -> None:
    spool = Spool(tmp_path, segment_bytes=1024)
    for i in range(0, 300, 30):
        spool.append(payloads(i, 30))
    assert spool.pending == 300
    assert len(list(tmp_path.glob("*.seg"))) > 3
    got, pos = spool.peek(100)
    assert got == payloads(0, 100)
    spool.ack(pos, len(got))
    spool.close()
    again = Spool(tmp_path, segment_bytes=1024)
    assert again.pending == 200
    rest: list[bytes] = []
    while again.pending:
        batch, pos = again.peek(64)
        rest.extend(batch)
        again.ack(pos, len(batch))
    assert rest == payloads(100, 200)
    assert again.depth_bytes == 0
    assert len(list(tmp_path.glob("*.seg"))) == 1  # delivered segments are deleted


def test_torn_tail_is_dropped_on_open(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    spool.append(payloads(0, 3))
    spool.close()
    (seg,) = tmp_path.glob("*.seg")
    with open(seg, "ab") as fh:
        fh.write(b"\x00\x00\x01\x00garbage")  # a crash in the middle of a write
    reopened = Spool(tmp_path)
    assert reopened.pending == 3
    assert reopened.peek(10)[0] == payloads(0, 3)
    reopened.append(payloads(3, 1))
    assert reopened.peek(10)[0] == payloads(0, 4)


def test_bounded_with_near_full_warning(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    warned: list[tuple[int, int]] = []
    spool = Spool(
        tmp_path, max_bytes=4096, warn_fraction=0.5, on_near_full=lambda d, m: warned.append((d, m))
    )
    big = [b"x" * 500]
    while not warned:
        spool.append(big)
    assert spool.near_full and warned[0][1] == 4096
    assert "near full" in caplog.text
    with pytest.raises(SpoolError):
        for _ in range(10):
            spool.append(big)
    assert spool.depth_bytes <= 4096
    got, pos = spool.peek(1000)
    spool.ack(pos, len(got))
    assert not spool.near_full
    spool.append(big)  # room again once delivered


def test_corrupt_ack_file_is_reported(tmp_path: Path) -> None:
    (tmp_path / "ack").write_text("not numbers")
    with pytest.raises(SpoolError):
        Spool(tmp_path)


async def test_pipeline_counts_records_a_full_spool_refuses(tmp_path: Path) -> None:
    from prometheus_client import CollectorRegistry

    from infermeter.collector.pipeline import RecordPipeline
    from infermeter.collector.record import RequestRecord
    from infermeter.collector.request_metrics import RequestMetrics

    registry = CollectorRegistry()
    spool = Spool(tmp_path, max_bytes=4096)
    pipeline = RecordPipeline(
        RequestMetrics(registry), pool="p", replica="r", spool=spool, durable_ack=True
    )
    recs = [
        RequestRecord(request_id=f"r{i}", endpoint="/v1/completions", started_wall=1.8e9,
                      started_mono=1.0, model="m", finished_mono=2.0)
        for i in range(40)
    ]  # fmt: skip
    for rec in recs:
        pipeline.submit(rec)
        await pipeline.drain()
    assert all(rec.durable is not None and rec.durable.done() for rec in recs)  # never stuck
    kept = spool.pending
    assert 0 < kept < 40
    dropped = registry.get_sample_value(
        "infermeter_collector_records_dropped_total", {"reason": "spool_full"}
    )
    assert dropped == 40 - kept
