"""Collector proxy overhead: direct vs bare passthrough vs collector vs LiteLLM, one run.

Everything runs on 127.0.0.1 against ONE simulator in fast mode (``--time-scale 0``):

* ``direct``     client → simulator
* ``bare``       client → bare aiohttp passthrough (no accounting; the yardstick, built here)
* ``collector``  client → ``infermeter collector`` with its defaults (usage forced and
                 stripped, records, Prometheus, engine scraper), no metering URL
* ``durable``    the same collector shipping to a loopback metering sink, with the spool and
                 ``durable_ack`` (each response ends once its record is fsync'd)
* ``litellm``    client → LiteLLM proxy 1.100.0 in its own virtualenv
                 (``tests/benchmarks/setup_litellm.sh``; left out when absent)

Streaming chat completions of 32 tokens at 1, 64 and 256 concurrent streams, bounded by
count and time, in interleaved rounds (direct, bare, collector, ... again) so that load from
elsewhere on the machine hits every path alike; figures are the median over rounds. Then a
non-streaming run at 64 for the maximum sustained requests/s. Added latency = a percentile
through the proxy minus the same percentile direct. Also the CPU each proxy process group
spent per request (robust to a shared machine). Prints Markdown; never asserts timings.

Run: ``./dev.sh bench`` or ``.venv/bin/pytest tests/benchmarks/test_collector_overhead.py -s``
(or ``.venv/bin/python tests/benchmarks/test_collector_overhead.py``). Sizes via BENCH_* env.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import httpx

from tests.conftest import free_port

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
PY = sys.executable
LITELLM_VENV = Path(os.environ.get("LITELLM_VENV", Path.home() / ".cache/infermeter/litellm-venv"))
LITELLM = LITELLM_VENV / "bin" / "litellm"
PLAN = [  # (concurrency, requests per round, time cap per round in s)
    (1, int(os.environ.get("BENCH_N1", "300")), 20.0),
    (64, int(os.environ.get("BENCH_N64", "2000")), 25.0),
    (256, int(os.environ.get("BENCH_N256", "3000")), 30.0),
]
THROUGHPUT = (64, int(os.environ.get("BENCH_NTHROUGHPUT", "4000")), 15.0)
PACED = (16, int(os.environ.get("BENCH_NPACED", "160")), 30.0)  # real-time simulator: ITL check
ROUNDS = int(os.environ.get("BENCH_ROUNDS", "3"))
CLK_TCK = os.sysconf("SC_CLK_TCK")


def group_cpu_s(pgid: int) -> float:
    """User + system CPU seconds of every live process in process group ``pgid``."""
    total = 0.0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid:  # fields after "comm)": state ppid pgrp ...
            total += (int(fields[11]) + int(fields[12])) / CLK_TCK
    return total


@contextmanager
def process(argv: list[str], ready: str, env: dict[str, str] | None = None) -> Iterator[int]:
    """Start ``argv`` in its own process group, wait for ``ready``; yields the group id."""
    log = tempfile.NamedTemporaryFile(prefix="bench-", suffix=".log", delete=False)  # noqa: SIM115
    proc = subprocess.Popen(
        argv, cwd=REPO, stdout=log, stderr=subprocess.STDOUT,
        env={**os.environ, **(env or {})}, start_new_session=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"{argv[:3]} exited: {Path(log.name).read_text()[-2000:]}")
            try:
                if httpx.get(ready, timeout=1.0).status_code < 500:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"{ready} not ready: {Path(log.name).read_text()[-2000:]}")
            time.sleep(0.2)
        yield proc.pid
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


def load(
    url: str, concurrency: int, count: int, cap: float, mode: str = "stream"
) -> dict[str, Any]:
    argv = [PY, str(HERE / "collector_load_client.py"), url, str(concurrency), str(count),
            str(cap), mode]  # fmt: skip
    out = subprocess.run(argv, capture_output=True, text=True, timeout=cap + 120, check=True)
    return dict(json.loads(out.stdout.strip().splitlines()[-1]))


def median(values: list[float]) -> float:
    ordered = sorted(values)
    mid = len(ordered) // 2
    return ordered[mid] if len(ordered) % 2 else (ordered[mid - 1] + ordered[mid]) / 2


def combine(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Median over rounds of every figure; counts and errors summed."""
    out = dict(runs[0])
    for key in runs[0]:
        if key.endswith("_ms") or key in ("rps", "cpu_us"):
            out[key] = median([r[key] for r in runs])
    out["ok"] = sum(r["ok"] for r in runs)
    out["errors"] = sum(sum(r["errors"].values()) for r in runs)
    return out


def litellm_argv(upstream: str, port: int, work: Path) -> list[str]:
    cfg = work / "litellm.yaml"
    cfg.write_text(
        "model_list:\n  - model_name: bench\n    litellm_params:\n"
        f"      model: hosted_vllm/bench\n      api_base: {upstream}/v1\n      api_key: none\n"
        "litellm_settings:\n  drop_params: true\n"
    )
    return [str(LITELLM), "--config", str(cfg), "--host", "127.0.0.1", "--port", str(port),
            "--num_workers", "1", "--telemetry", "False"]  # fmt: skip


def run_benchmark() -> str:
    work = Path(tempfile.mkdtemp(prefix="collector-bench-"))
    empty = str(work / "empty.toml")
    Path(empty).write_text("")
    names = ("sim", "bare", "collector", "durable", "sink", "litellm", "paced_sim", "paced_bare",
             "paced_collector")  # fmt: skip
    port = {n: free_port() for n in names}
    url = {n: f"http://127.0.0.1:{p}" for n, p in port.items()}
    url["direct"] = url["sim"]
    sim = url["sim"]
    collector = [PY, "-m", "infermeter.collector", "--config", empty, "--upstream", sim,
    "--no-nvml",
                 "--log-level", "warning"]  # fmt: skip
    have_litellm = LITELLM.exists() and not os.environ.get("BENCH_SKIP_LITELLM")
    groups: dict[str, int] = {}
    results: dict[tuple[str, int], dict[str, Any]] = {}
    throughput: dict[str, dict[str, Any]] = {}
    with ExitStack() as stack:
        stack.enter_context(process(
            [PY, "-m", "infermeter", "engine", "simulate", "--config", empty, "--port",
             str(port["sim"]), "--served-model-name", "bench", "--time-scale", "0",
             "--max-num-seqs", "1024", "--output-tokens-median", "100000",
             "--log-level", "warning"], f"{sim}/health"))  # fmt: skip
        groups["bare"] = stack.enter_context(process(
            [PY, str(HERE / "collector_bare_proxy.py"), str(port["bare"]), sim],
            f"{url['bare']}/health"))  # fmt: skip
        groups["collector"] = stack.enter_context(
            process([*collector, "--port", str(port["collector"])], f"{url['collector']}/healthz")
        )
        stack.enter_context(process(
            [PY, str(HERE / "collector_bare_proxy.py"), str(port["sink"]), "sink"],
            f"{url['sink']}/health"))  # fmt: skip
        groups["durable"] = stack.enter_context(
            process(
                [
                    *collector,
                    "--port",
                    str(port["durable"]),
                    "--metering-url",
                    url["sink"],
                    "--spool-dir",
                    str(work / "spool"),
                    "--durable-ack",
                ],
                f"{url['durable']}/healthz",
            )
        )
        if have_litellm:
            env = {"LITELLM_LOCAL_MODEL_COST_MAP": "True", "LITELLM_LOG": "ERROR"}
            groups["litellm"] = stack.enter_context(process(
                litellm_argv(sim, port["litellm"], work),
                f"{url['litellm']}/health/liveliness", env=env))  # fmt: skip
        targets = ["direct", "bare", "collector", "durable"] + (["litellm"] if have_litellm else [])
        paced = url["paced_sim"]
        stack.enter_context(
            process(
                [
                    PY,
                    "-m",
                    "infermeter",
                    "engine",
                    "simulate",
                    "--config",
                    empty,
                    "--port",
                    str(port["paced_sim"]),
                    "--served-model-name",
                    "bench",
                    "--time-scale",
                    "1",
                    "--output-tokens-median",
                    "100000",
                    "--log-level",
                    "warning",
                ],
                f"{paced}/health",
            )
        )
        stack.enter_context(
            process(
                [PY, str(HERE / "collector_bare_proxy.py"), str(port["paced_bare"]), paced],
                f"{url['paced_bare']}/health",
            )
        )
        stack.enter_context(process(
            [PY, "-m", "infermeter.collector", "--config", empty, "--upstream", paced, "--no-nvml",
             "--log-level", "warning", "--port", str(port["paced_collector"])],
            f"{url['paced_collector']}/healthz"))  # fmt: skip
        url["paced_direct"] = paced

        def measured(name: str, c: int, n: int, cap: float, mode: str = "stream") -> dict[str, Any]:
            before = group_cpu_s(groups[name]) if name in groups else 0.0
            r = load(f"{url[name]}/v1/chat/completions", c, n, cap, mode)
            spent = group_cpu_s(groups[name]) - before if name in groups else 0.0
            r["cpu_us"] = spent / max(1, r["ok"]) * 1e6
            return r

        for name in targets:  # warm up connections and code paths
            load(f"{url[name]}/v1/chat/completions", 8, 100, 20.0)
        for concurrency, count, cap in PLAN:
            runs: dict[str, list[dict[str, Any]]] = {t: [] for t in targets}
            for rnd in range(ROUNDS):
                for name in targets:
                    if name == "litellm" and rnd > 0:
                        continue  # one bounded round: it is two orders of magnitude slower
                    runs[name].append(measured(name, concurrency, count, cap))
            for name in targets:
                results[(name, concurrency)] = combine(runs[name])
                print(name, concurrency, results[(name, concurrency)], flush=True)
        c, n, cap = THROUGHPUT
        for name in targets:
            throughput[name] = measured(name, c, n, cap, "whole")
        c, n, cap = PACED
        paced_runs: dict[str, list[dict[str, Any]]] = {t: [] for t in PACED_TARGETS}
        for _ in range(2):
            for name in PACED_TARGETS:
                paced_runs[name].append(
                    load(f"{url['paced_' + name]}/v1/chat/completions", c, n, cap)
                )
        paced_results = {name: combine(r) for name, r in paced_runs.items()}
        own = overhead_from_metrics(url["collector"])
    return report(results, throughput, targets, own) + "\n" + paced_report(paced_results)


def overhead_from_metrics(base: str) -> tuple[float, float]:
    """(count, mean seconds) of the collector's own overhead histogram."""
    values: dict[str, float] = {}
    for line in httpx.get(f"{base}/metrics").text.splitlines():
        if line.startswith("infermeter_collector_overhead_seconds_"):
            name, _, value = line.rpartition(" ")
            values[name] = float(value)
    count = values.get("infermeter_collector_overhead_seconds_count", 0.0)
    total = values.get("infermeter_collector_overhead_seconds_sum", 0.0)
    return count, (total / count if count else 0.0)


def _added(r: dict[str, Any], base: dict[str, Any], key: str) -> str:
    p50 = r[f"{key}_p50_ms"] - base[f"{key}_p50_ms"]
    p99 = r[f"{key}_p99_ms"] - base[f"{key}_p99_ms"]
    return f"{p50:+.2f} / {p99:+.2f}"


def report(
    results: dict[tuple[str, int], dict[str, Any]],
    throughput: dict[str, dict[str, Any]],
    targets: list[str],
    own: tuple[float, float],
) -> str:
    lines = [
        "| streams | path | ok | req/s | TTFT p50 / p99 ms | E2E p50 / p99 ms | added TTFT "
        "p50 / p99 ms | added E2E p50 / p99 ms | ITL p50 / p99 ms | proxy CPU µs/req |",
        "|---:|---|---:|---:|---|---|---|---|---|---:|",
    ]
    for concurrency, _, _ in PLAN:
        base = results[("direct", concurrency)]
        for name in targets:
            r = results[(name, concurrency)]
            direct = name == "direct"
            err = f" ({r['errors']} err)" if r["errors"] else ""
            lines.append(
                f"| {concurrency} | {name} | {r['ok']}{err} | {r['rps']:.0f} "
                f"| {r['ttft_p50_ms']:.2f} / {r['ttft_p99_ms']:.2f} "
                f"| {r['e2e_p50_ms']:.2f} / {r['e2e_p99_ms']:.2f} "
                f"| {'—' if direct else _added(r, base, 'ttft')} "
                f"| {'—' if direct else _added(r, base, 'e2e')} "
                f"| {r['itl_p50_ms']:.3f} / {r['itl_p99_ms']:.3f} "
                f"| {'—' if direct else format(r['cpu_us'], '.0f')} |"
            )
    lines += [
        "",
        "| non-streaming, 64 concurrent | max sustained req/s | E2E p50 / p99 ms | CPU µs/req |",
        "|---|---:|---|---:|",
    ]
    for name in targets:
        t = throughput[name]
        cpu = "—" if name == "direct" else f"{t['cpu_us']:.0f}"
        lines.append(
            f"| {name} | {t['rps']:.0f} | {t['e2e_p50_ms']:.2f} / {t['e2e_p99_ms']:.2f} | {cpu} |"
        )
    lines += ["", f"collector's own overhead metric: {own[0]:.0f} requests, mean "
              f"{own[1] * 1e6:.0f} µs", ""]  # fmt: skip
    for concurrency, _, _ in PLAN:
        base = results[("direct", concurrency)]
        added = {
            name: {q: results[(name, concurrency)][f"e2e_{q}_ms"] - base[f"e2e_{q}_ms"]
                   for q in ("p50", "p99")}
            for name in targets if name != "direct"
        }  # fmt: skip
        for q in ("p50", "p99"):
            col, bare = added["collector"][q], added["bare"][q]
            text = (
                f"{concurrency} streams, added E2E {q}: collector {col:.2f} ms, bare {bare:.2f} ms"
            )
            text += f" (x{col / bare:.2f} of bare)" if bare > 0 else ""
            if "litellm" in added:
                lite = added["litellm"][q]
                text += f", LiteLLM {lite:.2f} ms (1/{lite / col:.0f} of it)" if col > 0 else ""
            lines.append(f"- {text}")
    return "\n".join(lines)


PACED_TARGETS = ("direct", "bare", "collector")


def paced_report(results: dict[str, dict[str, Any]]) -> str:
    c, _, _ = PACED
    lines = [
        "",
        f"| real-time simulator (H100 model, time scale 1), {c} streams | TTFT p50 / p99 ms "
        "| E2E p50 / p99 ms | ITL p50 / p99 ms |",
        "|---|---|---|---|",
    ]
    for name in PACED_TARGETS:
        r = results[name]
        lines.append(
            f"| {name} | {r['ttft_p50_ms']:.2f} / {r['ttft_p99_ms']:.2f} "
            f"| {r['e2e_p50_ms']:.2f} / {r['e2e_p99_ms']:.2f} "
            f"| {r['itl_p50_ms']:.3f} / {r['itl_p99_ms']:.3f} |"
        )
    return "\n".join(lines)


def test_collector_overhead() -> None:
    print()
    print(run_benchmark())


if __name__ == "__main__":
    print(run_benchmark())
