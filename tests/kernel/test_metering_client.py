"""The kernel's metering client against real servers on loopback: the real metering app
(in-memory DuckDB) for the wire, a scripted server for failures (retries with injected jitter
and sleep, nothing sleeps for real)."""

from __future__ import annotations

import socket
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from infermeter.kernel.errors import (
    InfermeterError,
    MeteringRefused,
    MeteringReplyError,
    MeteringUnavailable,
)
from infermeter.kernel.metering_client import Backoff, MeteringClient
from infermeter.kernel.metering_wire import (
    USAGE_PATH,
    Rate,
    Rejection,
    parse_ingest_reply,
    parse_rates,
)
from infermeter.kernel.openai_errors import error_body
from infermeter.kernel.records import UsageRecord
from infermeter.metering.api import create_app
from infermeter.metering.service import MeteringService
from infermeter.metering.settings import MeteringSettings, ReplicaSettings
from tests.conftest import ManualClock, ServerThread, free_port

INGEST, READ = "ingest-secret", "read-secret"
T0 = datetime(2026, 11, 2, 0, 0, tzinfo=UTC)


def record(i: int, **kw: Any) -> UsageRecord:
    start = T0 + timedelta(minutes=1, seconds=i * 3)
    fields: dict[str, Any] = {"replica": "r1", "prompt_tokens": 400, "completion_tokens": 60}
    fields.update(kw)
    return UsageRecord(f"kc-{i}", "acme", "llama", start, start + timedelta(seconds=2), **fields)


@pytest.fixture
def metering(serve: Callable[..., ServerThread]) -> Iterator[str]:
    settings = MeteringSettings(
        storage="duckdb:///:memory:",
        ingest_token=INGEST,
        read_token=READ,
        replicas={"r1": ReplicaSettings(gpu="h100-sxm", pool="gpu", model="llama")},
        allocate_every_s=0,
    )
    service = MeteringService(settings, now=ManualClock((T0 + timedelta(hours=2)).timestamp()))
    try:
        yield serve(create_app(service, start_loop=False)).url
    finally:
        service.stop()


class Sleeps:
    """An injected sleep: records each delay and returns at once."""

    def __init__(self) -> None:
        self.delays: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.delays.append(seconds)


@dataclass
class Scripted:
    """A loopback server answering each call with the next scripted (status, body)."""

    answers: list[tuple[int, bytes]]
    seen: list[dict[str, str]] = field(default_factory=list)

    def app(self) -> Starlette:
        async def handle(request: Request) -> Response:
            self.seen.append({"method": request.method, **dict(request.headers)})
            await request.body()
            status, body = self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]
            return Response(body, status, media_type="application/json")

        return Starlette(
            routes=[
                Route("/v1/usage", handle, methods=["POST"]),
                Route("/v1/rates", handle, methods=["GET"]),
            ]
        )


OK_REPLY = orjson.dumps({"accepted": 1, "duplicates": 0, "rejected": []})
UNAVAILABLE = (503, error_body(503, "store error", "storage_unavailable"))


# -- against the real metering app ---------------------------------------------------------


async def test_ships_usage_reads_rejections_and_duplicates(metering: str) -> None:
    async with MeteringClient(metering, INGEST) as client:
        reply = await client.post_usage([record(i) for i in range(3)])
        assert (reply.accepted, reply.duplicates, reply.rejected) == (3, 0, ())
        again = await client.post_usage([record(i) for i in range(3)])
        assert (again.accepted, again.duplicates) == (0, 3)
        bad = orjson.dumps({**record(9).to_json(), "completion_tokens": "many"})
        mixed = await client.post_batch(USAGE_PATH, [orjson.dumps(record(4).to_json()), bad])
    assert mixed.accepted == 1
    assert mixed.rejected == (Rejection(1, "completion_tokens", "must be an integer"),)


async def test_unreadable_batch_is_refused_at_once_naming_the_field(metering: str) -> None:
    sleeps = Sleeps()
    async with MeteringClient(metering, INGEST, sleep=sleeps) as client:
        with pytest.raises(MeteringRefused) as info:
            await client.post_batch(USAGE_PATH, [b"{oops"])
    assert info.value.status == 400 and info.value.field == "body"
    assert "field body" in str(info.value) and isinstance(info.value, InfermeterError)
    assert sleeps.delays == []  # not retried


async def test_wrong_token_is_refused(metering: str) -> None:
    async with MeteringClient(metering, "wrong", sleep=Sleeps()) as client:
        with pytest.raises(MeteringRefused) as info:
            await client.post_usage([record(0)])
        assert info.value.status == 401 and "401" in str(info.value)
        with pytest.raises(MeteringRefused):
            await client.rates()


async def test_rates_parse_into_the_typed_table(metering: str) -> None:
    async with MeteringClient(metering, READ) as client:
        rates = await client.rates()
    assert rates.default is not None and rates.default.usd_per_gpu_second > 0
    assert rates.default.usd_per_prompt_token > 0 and rates.default.calibration == "default"
    assert rates.for_model("never-seen") == rates.default
    assert rates.as_of is not None and rates.as_of.tzinfo is not None
    assert rates.invalid == {}


# -- failures against a scripted server ----------------------------------------------------


async def test_5xx_then_success_is_retried_after_jittered_backoff(
    serve: Callable[..., ServerThread],
) -> None:
    server = Scripted([UNAVAILABLE, (429, b"slow down"), (200, OK_REPLY)])
    sleeps = Sleeps()
    client = MeteringClient(
        serve(server.app()).url,
        "tok",
        attempts=3,
        backoff=Backoff(initial_s=0.1, max_s=1.0, jitter=0.5),
        random=lambda: 0.5,
        sleep=sleeps,
    )
    async with client:
        reply = await client.post_usage([record(0)])
    assert reply.accepted == 1 and len(server.seen) == 3
    assert sleeps.delays == pytest.approx([0.075, 0.15])  # cap * (1 - 0.5 * random())
    assert {s["authorization"] for s in server.seen} == {"Bearer tok"}
    assert server.seen[0]["content-type"] == "application/json"


async def test_every_attempt_failing_is_unavailable(serve: Callable[..., ServerThread]) -> None:
    server = Scripted([UNAVAILABLE])
    sleeps = Sleeps()
    async with MeteringClient(serve(server.app()).url, attempts=4, sleep=sleeps) as client:
        with pytest.raises(MeteringUnavailable) as info:
            await client.rates()
    assert info.value.status == 503 and info.value.attempts == 4
    assert "store error" in str(info.value) and len(server.seen) == 4
    assert len(sleeps.delays) == 3 and "authorization" not in server.seen[0]


async def test_4xx_is_not_retried_and_names_the_field(serve: Callable[..., ServerThread]) -> None:
    refused = error_body(422, "must be an array", "invalid_batch", "records")
    server = Scripted([(422, refused), (200, OK_REPLY)])
    sleeps = Sleeps()
    async with MeteringClient(serve(server.app()).url, sleep=sleeps) as client:
        with pytest.raises(MeteringRefused) as info:
            await client.post_usage([record(0)])
    assert (info.value.status, info.value.field, info.value.message) == (
        422,
        "records",
        "must be an array",
    )
    assert len(server.seen) == 1 and sleeps.delays == []


async def test_unreadable_success_body_is_a_reply_error(
    serve: Callable[..., ServerThread],
) -> None:
    server = Scripted([(200, b'{"models": []}')])
    async with MeteringClient(serve(server.app()).url) as client:
        with pytest.raises(MeteringReplyError) as info:
            await client.rates()
        assert info.value.field == "models"
        server.answers = [(200, b"<html>")]
        with pytest.raises(MeteringReplyError) as html:
            await client.post_usage([record(0)])
        assert html.value.field == "body"


async def test_nothing_listening_and_silent_peer_are_unavailable() -> None:
    sleeps = Sleeps()
    async with MeteringClient(f"http://127.0.0.1:{free_port()}", sleep=sleeps) as client:
        with pytest.raises(MeteringUnavailable) as refused:
            await client.rates()
    assert refused.value.status is None and refused.value.attempts == 3 and len(sleeps.delays) == 2
    with socket.socket() as silent:  # accepts connections, never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        url = f"http://127.0.0.1:{silent.getsockname()[1]}"
        async with MeteringClient(url, timeout_s=0.2, attempts=1) as client:
            with pytest.raises(MeteringUnavailable) as timed_out:
                await client.post_usage([record(0)])
    assert "Timeout" in timed_out.value.reason


# -- the wire parsers ----------------------------------------------------------------------


def test_rates_parser_keeps_good_models_and_names_bad_fields() -> None:
    rates = parse_rates(
        {
            "models": {
                "good": {"usd_per_prompt_token": 1e-7, "usd_per_completion_token": 4e-6},
                "text": {"usd_per_prompt_token": "cheap"},
                "negative": {"usd_per_completion_token": -1},
                "list": [1, 2],
            },
            "as_of": 0,
        }
    )
    assert rates.models == {"good": Rate(1e-7, 4e-6, 0.0, "")}
    assert rates.models["good"].cost(10, 2) == pytest.approx(10 * 1e-7 + 2 * 4e-6)
    assert set(rates.invalid) == {"text", "negative", "list"}
    assert "models.text.usd_per_prompt_token" in rates.invalid["text"]
    assert rates.default is None and rates.for_model("other") is None
    assert rates.as_of == datetime(1970, 1, 1, tzinfo=UTC)
    for body, name in (([], "body"), ({}, "models"), ({"models": {}, "as_of": "soon"}, "as_of")):
        with pytest.raises(MeteringReplyError) as info:
            parse_rates(body)
        assert info.value.field == name


def test_ingest_reply_parser_names_bad_fields() -> None:
    assert parse_ingest_reply({"accepted": 2}).duplicates == 0
    for body, name in (
        ("ok", "body"),
        ({"accepted": -1}, "accepted"),
        ({"rejected": {}}, "rejected"),
        ({"rejected": [{"index": "one"}]}, "rejected[0].index"),
    ):
        with pytest.raises(MeteringReplyError) as info:
            parse_ingest_reply(body)
        assert info.value.field == name


def test_backoff_grows_to_its_cap_with_bounded_jitter() -> None:
    backoff = Backoff(initial_s=0.5, max_s=4.0, jitter=0.5)
    assert [backoff.delay(n, lambda: 0.0) for n in range(5)] == [0.5, 1.0, 2.0, 4.0, 4.0]
    assert backoff.delay(1, lambda: 0.999) == pytest.approx(0.5005)
    assert backoff.delay(10_000, lambda: 0.0) == 4.0  # no overflow after a long outage
