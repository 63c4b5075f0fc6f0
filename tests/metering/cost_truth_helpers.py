"""The cost-accuracy harness: the simulator with its ground-truth ledger, a collector in front
of it and metering behind it, over real HTTP on 127.0.0.1, driven by a seeded mix of tenants.

All three share one *model clock* (wall seconds scaled by ``time_scale``, starting at a
window boundary two hours back), so the collector's timestamps, metering's windows and the
simulator's ledger speak the same seconds and a run of N modelled minutes takes
``N x time_scale`` real minutes. Truth per tenant = the ledger's GPU-seconds of its requests
x the replica's catalog price; metering's answer = its allocated cost per tenant.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx

from infermeter.collector.app import CollectorApp
from infermeter.collector.settings import CollectorSettings
from infermeter.kernel.price_catalog import load_catalog
from infermeter.kernel.tenancy import SECRET_HEADER, KeyEntry, TenantResolver, hash_key
from infermeter.metering.api import create_app as metering_app
from infermeter.metering.context_weights import ContextWeights
from infermeter.metering.service import MeteringService
from infermeter.metering.settings import MeteringSettings
from infermeter.serving.simulator.ledger import read_ledger
from infermeter.serving.simulator.server import create_app as simulator_app
from infermeter.serving.simulator.settings import SimulatorSettings
from tests.conftest import ServerThread

INGEST = "ingest-token"
HARNESS_SECRET = "harness-gateway-secret"
REPLICA = "sim-0"
SYSTEM = "You are the billing assistant of a large cloud provider. " * 180  # ~2,000 tokens


@dataclass(frozen=True)
class Tenant:
    name: str
    prompt_words: tuple[int, int]
    max_tokens: tuple[int, int]
    system: str = ""
    abort_p: float = 0.0
    weight: float = 1.0


TENANTS = (
    Tenant("prefill-heavy", (1500, 3000), (4, 16)),
    Tenant("decode-heavy", (20, 60), (200, 400)),
    Tenant("long-context", (6000, 7500), (48, 96)),
    Tenant("prefix-cache", (60, 200), (24, 64), system=SYSTEM),
    Tenant("aborts", (200, 800), (100, 300), abort_p=0.2),
)
WORDS = tuple("alpha beta gamma delta invoice usage tenant window replica token".split())  # noqa: SIM905


@dataclass
class CellResult:
    """One run: per tenant true and allocated micro-dollars, idle and the bill."""

    label: str
    true_micro: dict[str, float] = field(default_factory=dict)
    allocated_micro: dict[str, int] = field(default_factory=dict)
    # the same data allocated with every token weighing the same (no context weights)
    unweighted_micro: dict[str, int] = field(default_factory=dict)
    idle_true_micro: float = 0.0
    idle_micro: int = 0
    bill_micro: int = 0
    requests: int = 0

    def error(self, tenant: str, unweighted: bool = False) -> float:
        true = self.true_micro.get(tenant, 0.0)
        got = (self.unweighted_micro if unweighted else self.allocated_micro).get(tenant, 0)
        return (got - true) / true if true else 0.0

    def lines(self) -> list[str]:
        out = [f"{self.label}: {self.requests} requests, bill ${self.bill_micro / 1e6:.4f}"]
        for tenant in sorted(self.true_micro):
            out.append(
                f"  {tenant:14s} true ${self.true_micro[tenant] / 1e6:9.5f}  allocated "
                f"${self.allocated_micro.get(tenant, 0) / 1e6:9.5f}  error "
                f"{100 * self.error(tenant):+7.2f}%  (no context weights "
                f"{100 * self.error(tenant, unweighted=True):+7.2f}%)"
            )
        idle_err = (self.idle_micro - self.idle_true_micro) / max(self.idle_true_micro, 1e-9)
        out.append(
            f"  {'idle':14s} true ${self.idle_true_micro / 1e6:9.5f}  allocated "
            f"${self.idle_micro / 1e6:9.5f}  error {100 * idle_err:+7.2f}%"
        )
        total = sum(self.allocated_micro.values()) + self.idle_micro
        out.append(f"  books: allocated + idle = {total} µ$, bill = {self.bill_micro} µ$")
        return out


class ModelClock:
    """Seconds of modelled time: ``base + (monotonic - origin) / time_scale``."""

    def __init__(self, time_scale: float, base: float) -> None:
        self.time_scale = time_scale
        self.base = base
        self.origin = time.monotonic()
        self.ahead_s = 0.0

    def mono(self) -> float:
        return (time.monotonic() - self.origin) / self.time_scale

    def wall(self) -> float:
        return self.base + self.mono()

    def metering_now(self) -> float:
        """Metering's clock: the model clock, moved past the last window once the run is
        over (``ahead_s``) so that the window still filling is allocated too."""
        return self.wall() + self.ahead_s


@contextmanager
def stack(
    tmp: Path, gpu: str, time_scale: float, seed: int, max_num_seqs: int = 256
) -> Iterator[tuple[ModelClock, MeteringService, str, Path, CollectorApp]]:
    """Metering, simulator (with ledger) and collector, all on the model clock."""
    base = (int(time.time()) // 3600 - 2) * 3600.0
    clock = ModelClock(time_scale, base)
    name, _, mig = gpu.partition(":")
    since = datetime.fromtimestamp(base, tz=UTC).isoformat()
    settings = MeteringSettings.model_validate(
        {
            "storage": "duckdb:///:memory:",
            "ingest_token": INGEST,
            "allocate_every_s": 0,
            "replicas": {REPLICA: {"gpu": name, "mig_profile": mig, "count": 1, "since": since}},
        }
    )
    service = MeteringService(settings, now=clock.metering_now)
    ledger = tmp / "ledger.jsonl"
    sim = simulator_app(
        SimulatorSettings(
            gpu=gpu, time_scale=time_scale, ledger=str(ledger), seed=seed,
            max_num_seqs=max_num_seqs, enable_prompt_tokens_details=True,
        ),
        wall=time.monotonic,
        epoch=clock.wall,
    )  # fmt: skip
    resolver = TenantResolver(  # the harness names request ids, as the gateway does
        HARNESS_SECRET,
        {hash_key(f"sk-{t.name}"): KeyEntry(t.name, f"key-{t.name}") for t in TENANTS},
    )
    with ExitStack() as running:
        metering = running.enter_context(ServerThread(metering_app(service, start_loop=False)))
        engine = running.enter_context(ServerThread(sim))
        collector_settings = CollectorSettings(
            upstream=engine.url, metering_url=metering.url, ingest_token=INGEST,
            replica=REPLICA, spool_dir=str(tmp / "spool"), batch_interval_s=0.05,
            scrape_interval_s=3600, nvml=False,
        )  # fmt: skip
        collector = CollectorApp(
            collector_settings, resolver, nvml=None, telemetry=None,
            wall=clock.wall, mono=clock.mono,
        )  # fmt: skip
        proxy = running.enter_context(ServerThread(collector))
        yield clock, service, proxy.url, ledger, collector


def _prompt(rng: random.Random, tenant: Tenant) -> str:
    words = " ".join(rng.choice(WORDS) for _ in range(rng.randint(*tenant.prompt_words)))
    return tenant.system + words


async def _one(
    client: httpx.AsyncClient, url: str, rng: random.Random, owners: dict[str, str]
) -> None:
    tenant = rng.choices(TENANTS, weights=[t.weight for t in TENANTS])[0]
    rid = f"{tenant.name}-{rng.getrandbits(48):012x}"
    owners[rid] = tenant.name
    body = {
        "model": "llama-3.1-8b",
        "prompt": _prompt(rng, tenant),
        "max_tokens": rng.randint(*tenant.max_tokens),
        "ignore_eos": True,
        "stream": True,
    }
    headers = {
        "authorization": f"Bearer sk-{tenant.name}",
        "x-infermeter-request-id": rid,
        SECRET_HEADER: HARNESS_SECRET,
    }
    abort_after = rng.randint(2, 40) if rng.random() < tenant.abort_p else None
    async with client.stream("POST", url + "/v1/completions", json=body, headers=headers) as r:
        assert r.status_code == 200, await r.aread()
        frames = 0
        async for line in r.aiter_lines():
            if line.startswith("data: {"):
                frames += 1
                if abort_after is not None and frames >= abort_after:
                    return  # the client goes away mid-stream


async def _load(
    url: str, clock: ModelClock, concurrency: int, model_seconds: float, seed: int
) -> dict[str, str]:
    owners: dict[str, str] = {}
    limits = httpx.Limits(max_connections=concurrency + 4)
    async with httpx.AsyncClient(timeout=600, limits=limits) as client:

        async def worker(i: int) -> None:
            rng = random.Random(seed * 1000 + i)
            while clock.mono() < model_seconds:
                await _one(client, url, rng, owners)

        await asyncio.gather(*(worker(i) for i in range(concurrency)))
    return owners


def run_cell(
    tmp: Path,
    *,
    gpu: str,
    concurrency: int,
    model_seconds: float,
    time_scale: float,
    seed: int = 1,
    max_num_seqs: int = 256,
) -> CellResult:
    """One harness cell; returns truth and metering's allocation per tenant."""
    label = f"{gpu} x concurrency {concurrency} x {model_seconds / 60:g} min"
    with stack(tmp, gpu, time_scale, seed, max_num_seqs) as (clock, service, url, ledger, col):
        owners = asyncio.run(_load(url, clock, concurrency, model_seconds, seed))
        shipped = "infermeter_collector_shipped_records_total"
        deadline = time.monotonic() + 60
        while (col.registry.get_sample_value(shipped, {"kind": "usage"}) or 0) < len(owners):
            assert time.monotonic() < deadline, "the collector did not ship every record"
            time.sleep(0.05)
        end = clock.wall()
        clock.ahead_s = 60.0  # the run is over: every window it touched is closed
    totals = read_ledger(ledger)
    since = datetime.fromtimestamp(clock.base, tz=UTC).replace(tzinfo=None)
    until = since + timedelta(seconds=60 * (int((end - clock.base) // 60) + 1))
    result = service.allocate(since=since, until=until)
    report = service.reports.cost("tenant", since, until, granularity="total")
    name, _, mig = gpu.partition(":")
    usd_per_ns = load_catalog(None).usd_per_hour(name, mig) / 3600e9
    cell = CellResult(label, requests=len(owners))
    for rid, ns in totals.request_ns.items():
        tenant = owners.get(rid, "?")
        cell.true_micro[tenant] = cell.true_micro.get(tenant, 0.0) + ns * usd_per_ns * 1e6
    for row in report["rows"]:
        cell.allocated_micro[row["tenant"]] = round(row["cost_usd"] * 1e6)
    service.allocator.context = lambda _model: ContextWeights()
    service.allocate(since=since, until=until)
    for row in service.reports.cost("tenant", since, until, granularity="total")["rows"]:
        cell.unweighted_micro[row["tenant"]] = round(row["cost_usd"] * 1e6)
    cell.bill_micro, cell.idle_micro = result.cost_micro, result.idle_micro
    cell.idle_true_micro = cell.bill_micro - sum(cell.true_micro.values())
    return cell
