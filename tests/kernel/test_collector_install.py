"""The collector sidecar installs alone: build the wheel, install ``infermeter[collector]`` into
a fresh virtualenv, and run a collector from it in front of a simulator (from the project's
venv). The sidecar's install must not pull the dashboards' or metering's dependencies, and
the bare component names must not be importable from it."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import REPO, free_port, wait_http

HEAVY = {"streamlit", "pandas", "duckdb", "numpy", "torch", "pyarrow"}
MODEL = "sim-install"


def _run(cmd: list[str], cwd: Path, timeout: float = 600) -> str:
    result = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, f"{cmd}: {result.stdout}\n{result.stderr}"
    return result.stdout


def _source_copy(dest: Path) -> Path:
    """The project's files (tracked and not ignored, symlinks kept) copied to ``dest``, so
    that building the wheel leaves nothing in the checkout."""
    listing = _run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                   cwd=REPO)  # fmt: skip
    for name in filter(None, listing.split("\0")):
        source, target = REPO / name, dest / name
        if not source.exists() and not source.is_symlink():
            continue  # deleted in the work tree, not yet committed
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source, target, follow_symlinks=False)
    return dest


def _size_on_disk(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file() and not f.is_symlink())


@pytest.fixture(scope="module")
def sidecar_venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh virtualenv holding only ``infermeter[collector]`` from the built wheel."""
    work = tmp_path_factory.mktemp("collector-install")
    _run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
         "-w", str(work / "dist"), str(_source_copy(work / "src"))],
        cwd=work,
    )  # fmt: skip
    (wheel,) = (work / "dist").glob("infermeter-*.whl")
    venv = work / "venv"
    _run([sys.executable, "-m", "venv", str(venv)], cwd=work)
    _run([str(venv / "bin" / "pip"), "install", "-q", f"{wheel}[collector]"], cwd=work)
    return venv


def _distributions(venv: Path) -> dict[str, str]:
    listing = _run([str(venv / "bin" / "pip"), "list", "--format=json"], cwd=venv)
    return {d["name"].lower().replace("_", "-"): d["version"] for d in json.loads(listing)}


def test_collector_extra_brings_only_the_sidecar_dependencies(sidecar_venv: Path) -> None:
    dists = _distributions(sidecar_venv)
    assert "infermeter" in dists and {"aiohttp", "prometheus-client"} <= set(dists)
    assert not HEAVY & set(dists), f"the sidecar install pulled {sorted(HEAVY & set(dists))}"
    print(
        f"\n[collector] install: {_size_on_disk(sidecar_venv) / 2**20:.1f} MiB on disk, "
        f"{len(dists)} distributions: {', '.join(f'{k}=={v}' for k, v in sorted(dists.items()))}"
    )


def test_only_the_namespace_is_importable(sidecar_venv: Path, tmp_path: Path) -> None:
    python = str(sidecar_venv / "bin" / "python")
    for bare in ("collector", "metering", "throttle", "serving", "dashboards"):
        result = subprocess.run([python, "-c", f"import {bare}"], cwd=tmp_path, capture_output=True)
        assert result.returncode != 0, f"`import {bare}` works from the installed wheel"
    code = "import infermeter.collector.app, infermeter.kernel.records; print('ok')"
    assert _run([python, "-c", code], cwd=tmp_path).strip() == "ok"


@pytest.fixture
def simulator() -> Iterator[str]:
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "infermeter", "engine", "simulate", "--port", str(port),
         "--served-model-name", MODEL, "--time-scale", "0"],
        cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        wait_http(f"http://127.0.0.1:{port}/health")
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(timeout=20)


def test_installed_collector_meters_a_streamed_request(
    sidecar_venv: Path, simulator: str, tmp_path: Path
) -> None:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("INFERMETER", "PYTHON"))}
    proc = subprocess.Popen(
        [str(sidecar_venv / "bin" / "infermeter"), "collector", "--upstream", simulator,
         "--port", str(port), "--spool-dir", str(tmp_path / "spool"), "--no-nvml",
         "--scrape-interval", "0.2", "--log-level", "warning"],
        cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        wait_http(url + "/healthz")
        body = {"model": MODEL, "prompt": "hello there", "max_tokens": 7, "stream": True}
        with httpx.stream("POST", url + "/v1/completions", json=body, timeout=30) as resp:
            assert resp.status_code == 200
            frames = [line for line in resp.iter_lines() if line.startswith("data: {")]
        assert frames and all('"usage"' not in f or '"choices":[]' not in f for f in frames)
        deadline = time.monotonic() + 20
        while True:  # the record is counted off the request path: wait for it
            metrics = httpx.get(url + "/metrics", timeout=5).text
            completion = _sample(metrics, "infermeter_completion_tokens_total")
            if completion or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        assert completion == 7.0
        assert _sample(metrics, "infermeter_prompt_tokens_total") > 0
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=20)
        assert proc.returncode == 0 or not err, err.decode(errors="replace")


def _sample(exposition: str, name: str) -> float:
    """The sum of every sample of ``name`` (all label sets)."""
    total = 0.0
    for line in exposition.splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            total += float(line.rsplit(" ", 1)[1])
    return total
