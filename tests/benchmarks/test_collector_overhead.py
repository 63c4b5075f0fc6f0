"""Collector proxy overhead: direct vs bare passthrough vs collector vs LiteLLM, one run.

Everything runs on 127.0.0.1 against ONE simulator in fast mode (``--time-scale 0``):

* ``direct``    client → simulator
* ``bare``      client → bare aiohttp passthrough (no accounting; built here as a yardstick)
* ``collector`` client → ``infermeter collector`` (defaults: usage forced + stripped, records,
                Prometheus, engine scraper; no metering URL, so no spool)
* ``litellm``   client → LiteLLM proxy 1.100.0 in its own virtualenv
                (``tests/benchmarks/setup_litellm.sh``; left out when absent)

Streaming chat completions of 32 tokens at 1, 64 and 256 concurrent streams, bounded by
count and time, then a non-streaming run at 64 for the maximum sustained requests/s. Added
latency = percentile through the proxy minus the same percentile direct. Each process (load
client, simulator, proxies) is its own; they all share this machine's cores, so figures are
relative: compare rows of one run only. Prints a Markdown table; never asserts timings.

Run: ``./dev.sh bench`` or ``.venv/bin/pytest tests/benchmarks/test_collector_overhead.py -s``
(or ``.venv/bin/python tests/benchmarks/test_collector_overhead.py``).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
PY = sys.executable
LITELLM = (
    Path(os.environ.get("LITELLM_VENV", Path.home() / ".cache/infermeter/litellm-venv"))
    / "bin/litellm"
)
PLAN = [  # (concurrency, request count, time cap in s)
    (1, int(os.environ.get("BENCH_N1", "300")), 20.0),
    (64, int(os.environ.get("BENCH_N64", "2000")), 25.0),
    (256, int(os.environ.get("BENCH_N256", "3000")), 30.0),
]
THROUGHPUT = (64, int(os.environ.get("BENCH_NTHROUGHPUT", "4000")), 15.0)
ROUNDS = int(os.environ.get("BENCH_ROUNDS", "2"))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_ready(url: str, proc: subprocess.Popen[Any], timeout: float = 90.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{url}: process exited with {proc.returncode}")
        try:
            if httpx.get(url, timeout=1.0).status_code < 500:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"{url} not ready after {timeout} s")


@contextmanager
def process(
    argv: list[str], ready: str, env: dict[str, str] | None = None, cwd: Path = REPO
) -> Iterator[None]:
    log = tempfile.NamedTemporaryFile(prefix="bench-", suffix=".log", delete=False)  # noqa: SIM115
    proc = subprocess.Popen(argv, cwd=cwd, stdout=log, stderr=subprocess.STDOUT,
                            env={**os.environ, **(env or {})}, start_new_session=True)  # fmt: skip
    try:
        wait_ready(ready, proc)
        yield
    except RuntimeError:
        print(Path(log.name).read_text()[-3000:], file=sys.stderr)
        raise
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
    out = subprocess.run(
        [PY, str(HERE / "collector_load_client.py"), url, str(concurrency), str(count), str(cap), mode],
        capture_output=True, text=True, timeout=cap + 120, check=True,
    )  # fmt: skip
    return dict(json.loads(out.stdout.strip().splitlines()[-1]))


def litellm_config(upstream: str, directory: Path) -> Path:
    cfg = directory / "litellm.yaml"
    cfg.write_text(
        "model_list:\n"
        "  - model_name: bench\n"
        "    litellm_params:\n"
        "      model: hosted_vllm/bench\n"
        f"      api_base: {upstream}/v1\n"
        "      api_key: none\n"
        "litellm_settings:\n"
        "  drop_params: true\n"
    )
    return cfg


def overhead_from_metrics(url: str) -> tuple[float, float]:
    """(count, mean seconds) of the collector's own overhead histogram."""
    text = httpx.get(f"{url}/metrics").text
    values = {}
    for line in text.splitlines():
        if line.startswith("infermeter_collector_overhead_seconds_"):
            name, _, value = line.rpartition(" ")
            values[name] = float(value)
    count = values.get("infermeter_collector_overhead_seconds_count", 0.0)
    total = values.get("infermeter_collector_overhead_seconds_sum", 0.0)
    return count, (total / count if count else 0.0)


def best(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Median-of-rounds per figure (robust to one noisy round)."""
    if len(runs) == 1:
        return runs[0]
    out = dict(runs[0])
    for key in runs[0]:
        if key.endswith("_ms") or key == "rps":
            vals = sorted(r[key] for r in runs)
            out[key] = (
                vals[len(vals) // 2]
                if len(vals) % 2
                else (vals[len(vals) // 2 - 1] + vals[len(vals) // 2]) / 2
            )
    out["ok"] = sum(r["ok"] for r in runs)
    return out


def run_benchmark() -> str:
    ports = {name: free_port() for name in ("sim", "bare", "collector", "litellm")}
    sim = f"http://127.0.0.1:{ports['sim']}"
    urls = {
        "direct": sim,
        "bare": f"http://127.0.0.1:{ports['bare']}",
        "collector": f"http://127.0.0.1:{ports['collector']}",
        "litellm": f"http://127.0.0.1:{ports['litellm']}",
    }
    work = Path(tempfile.mkdtemp(prefix="collector-bench-"))
    (work / "empty.toml").write_text("")
    results: dict[tuple[str, int], dict[str, Any]] = {}
    throughput: dict[str, dict[str, Any]] = {}
    with (
        process([PY, "-m", "serving", "engine", "simulate", "--config", str(work / "empty.toml"),
                 "--port", str(ports["sim"]), "--served-model-name", "bench", "--time-scale", "0",
                 "--max-num-seqs", "1024", "--output-tokens-median", "100000", "--log-level", "warning"],
                f"{sim}/health"),
        process([PY, str(HERE / "collector_bare_proxy.py"), str(ports["bare"]), sim], f"{urls['bare']}/health"),
        process([PY, "-m", "collector", "--config", str(work / "empty.toml"), "--upstream", sim,
                 "--port", str(ports["collector"]), "--no-nvml", "--log-level", "warning"],
                f"{urls['collector']}/healthz"),
        litellm_process(sim, ports["litellm"], work) as have_litellm,
    ):  # fmt: skip
        targets = ["direct", "bare", "collector"] + (["litellm"] if have_litellm else [])
        for name in targets:  # warm up connections and code paths
            load(f"{urls[name]}/v1/chat/completions", 8, 100, 20.0)
        for concurrency, count, cap in PLAN:
            for name in targets:
                rounds = 1 if name == "litellm" else ROUNDS
                runs = [load(f"{urls[name]}/v1/chat/completions", concurrency, count, cap)
                        for _ in range(rounds)]  # fmt: skip
                results[(name, concurrency)] = best(runs)
                print(name, concurrency, results[(name, concurrency)], flush=True)
        c, n, cap = THROUGHPUT
        for name in targets:
            throughput[name] = load(f"{urls[name]}/v1/chat/completions", c, n, cap, "whole")
            print("throughput", name, throughput[name], flush=True)
        own = overhead_from_metrics(urls["collector"])
    return report(results, throughput, targets, own)


@contextmanager
def litellm_process(sim: str, port: int, work: Path) -> Iterator[bool]:
    if os.environ.get("BENCH_SKIP_LITELLM") or not LITELLM.exists():
        print(
            f"LiteLLM not installed at {LITELLM}: run tests/benchmarks/setup_litellm.sh",
            file=sys.stderr,
        )
        yield False
        return
    env = {
        "LITELLM_LOCAL_MODEL_COST_MAP": "True",
        "LITELLM_LOG": "ERROR",
        "DISABLE_SCHEMA_UPDATE": "true",
    }
    argv = [str(LITELLM), "--config", str(litellm_config(sim, work)), "--host", "127.0.0.1",
            "--port", str(port), "--num_workers", "1", "--telemetry", "False"]  # fmt: skip
    with process(argv, f"http://127.0.0.1:{port}/health/liveliness", env=env, cwd=work):
        yield True


def report(results: dict[tuple[str, int], dict[str, Any]], throughput: dict[str, dict[str, Any]],
           targets: list[str], own: tuple[float, float]) -> str:  # fmt: skip
    lines = [
        "| streams | path | ok | req/s | TTFT p50 / p99 ms | E2E p50 / p99 ms | added TTFT p50 / p99 ms "
        "| added E2E p50 / p99 ms | ITL p50 / p99 ms |",
        "|---:|---|---:|---:|---|---|---|---|---|",
    ]
    for concurrency, _, _ in PLAN:
        base = results[("direct", concurrency)]
        for name in targets:
            r = results[(name, concurrency)]
            added = "—" if name == "direct" else (
                f"{r['ttft_p50_ms'] - base['ttft_p50_ms']:+.2f} / {r['ttft_p99_ms'] - base['ttft_p99_ms']:+.2f}",
                f"{r['e2e_p50_ms'] - base['e2e_p50_ms']:+.2f} / {r['e2e_p99_ms'] - base['e2e_p99_ms']:+.2f}",
            )  # fmt: skip
            add_ttft, add_e2e = ("—", "—") if added == "—" else added
            err = f" (+{sum(r['errors'].values())} err)" if r["errors"] else ""
            lines.append(
                f"| {concurrency} | {name} | {r['ok']}{err} | {r['rps']:.0f} | {r['ttft_p50_ms']:.2f} / "
                f"{r['ttft_p99_ms']:.2f} | {r['e2e_p50_ms']:.2f} / {r['e2e_p99_ms']:.2f} | {add_ttft} | "
                f"{add_e2e} | {r['itl_p50_ms']:.3f} / {r['itl_p99_ms']:.3f} |"
            )
    lines += [
        "",
        "| non-streaming, 64 concurrent | max sustained req/s | E2E p50 / p99 ms |",
        "|---|---:|---|",
    ]
    for name in targets:
        t = throughput[name]
        lines.append(f"| {name} | {t['rps']:.0f} | {t['e2e_p50_ms']:.2f} / {t['e2e_p99_ms']:.2f} |")
    lines.append("")
    lines.append(
        f"collector's own overhead metric: {own[0]:.0f} requests, mean {own[1] * 1e6:.0f} µs"
    )
    for concurrency, _, _ in PLAN:
        base = results[("direct", concurrency)]
        col = results[("collector", concurrency)]
        bare = results[("bare", concurrency)]
        added_col = col["e2e_p50_ms"] - base["e2e_p50_ms"]
        added_bare = bare["e2e_p50_ms"] - base["e2e_p50_ms"]
        line = f"{concurrency} streams: added E2E p50 collector {added_col:.2f} ms vs bare {added_bare:.2f} ms"
        if ("litellm", concurrency) in results:
            added_lite = results[("litellm", concurrency)]["e2e_p50_ms"] - base["e2e_p50_ms"]
            line += f" vs LiteLLM {added_lite:.2f} ms (ratio {added_col / added_lite if added_lite else float('nan'):.3f})"
        lines.append(line)
    return "\n".join(lines)


def test_collector_overhead() -> None:
    print()
    print(run_benchmark())


if __name__ == "__main__":
    print(run_benchmark())
