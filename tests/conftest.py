"""Shared fixtures: free ports, real servers on 127.0.0.1, a manual clock, promtool."""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn

from tests.real_vllm import START_TIMEOUT_S, STARTUP_SECONDS, start_real_vllm

REPO = Path(__file__).resolve().parents[1]
# Real vLLM 0.32 output captured from the CPU build (see its README.md), kept in the repo.
VLLM_ARTIFACTS = REPO / "tests" / "vllm_0_32_captures"


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    return free_ports(1)[0]


def free_ports(n: int) -> list[int]:
    """``n`` distinct TCP ports on 127.0.0.1 that nothing listens on right now."""
    socks = [socket.socket(socket.AF_INET, socket.SOCK_STREAM) for _ in range(n)]
    try:
        for sock in socks:
            sock.bind(("127.0.0.1", 0))
        return [int(sock.getsockname()[1]) for sock in socks]
    finally:
        for sock in socks:
            sock.close()


def free_port_range(span: int = 30) -> int:
    """A base port such that base .. base+span-1 are all free on 127.0.0.1 right now
    (for ``infermeter up``, which takes a range)."""
    for _ in range(200):
        base = free_port()
        if base + span <= 65000 and all(_port_is_free(p) for p in range(base, base + span)):
            return base
    raise RuntimeError(f"no {span} consecutive free ports")


def _port_is_free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def wait_until(condition: Callable[[], object], timeout: float = 15.0) -> None:
    """Poll ``condition`` until it holds; fail the test after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.02)


def wait_http(url: str, timeout: float = 30.0) -> None:
    """Poll ``url`` until it answers (any status) or raise after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            httpx.get(url, timeout=1.0)
            return
        except httpx.HTTPError as exc:
            last = exc
            time.sleep(0.05)
    raise TimeoutError(f"{url} did not answer within {timeout}s: {last}")


class ServerThread:
    """Run an ASGI app under a real uvicorn server on 127.0.0.1 in a background thread."""

    def __init__(self, app: Any, port: int | None = None, **uvicorn_kwargs: Any) -> None:
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(
            app, host="127.0.0.1", port=self.port, log_level="warning", **uvicorn_kwargs
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def start(self) -> ServerThread:
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError(f"server on port {self.port} did not start")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)

    def __enter__(self) -> ServerThread:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class ManualClock:
    """An injectable clock for tests: ``clock()`` returns the current time; ``advance`` moves it."""

    def __init__(self, start: float = 1_800_000_000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def manual_clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
def serve() -> Iterator[Callable[..., ServerThread]]:
    """Start ASGI apps on real loopback ports; all are stopped at teardown."""
    started: list[ServerThread] = []

    def _serve(app: Any, **kwargs: Any) -> ServerThread:
        server = ServerThread(app, **kwargs).start()
        started.append(server)
        return server

    yield _serve
    for server in reversed(started):
        server.stop()


def promtool_check(exposition: str) -> tuple[int, list[str]]:
    """Run ``promtool check metrics`` on an exposition; returns (exit code, lint findings)."""
    promtool = shutil.which("promtool")
    if promtool is None:
        raise RuntimeError("promtool not installed: run ./dev.sh test (apt package prometheus)")
    proc = subprocess.run(
        [promtool, "check", "metrics"],
        input=exposition,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    findings = [line for line in (proc.stdout + proc.stderr).splitlines() if line.strip()]
    return proc.returncode, findings


# promtool lint findings of real vLLM 0.32 (kept by the conformance suite, which checks them
# against real vLLM): `:` in every vllm: name, and `vllm:iteration_tokens_total`, a histogram
# named like a counter. Expositions reusing vLLM's names may get a subset of these, no more.
VLLM_PROMTOOL_BASELINE = REPO / "tests" / "serving" / "conformance" / "promtool_baseline.txt"


def vllm_promtool_findings() -> frozenset[str]:
    """The promtool findings real vLLM's /metrics gets, one string per finding line."""
    lines = VLLM_PROMTOOL_BASELINE.read_text(encoding="utf-8").splitlines()
    return frozenset(line for line in lines if line.strip() and not line.startswith("#"))


@pytest.fixture(scope="session")
def vllm_promtool_baseline() -> frozenset[str]:
    """Findings allowed by real vLLM's precedent: assert ``set(findings) <= baseline``."""
    return vllm_promtool_findings()


@pytest.fixture(scope="session")
def real_vllm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Base URL of the session's one real vLLM (CPU build, ``tiny-llama``, 512-token context)."""
    yield from start_real_vllm(tmp_path_factory.mktemp("real-vllm"), free_port())


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # Whichever test first asks for real vLLM pays its start: give it room on a busy machine.
    for item in items:
        if "real_vllm" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.timeout(START_TIMEOUT_S + 120))


def pytest_terminal_summary(terminalreporter: Any) -> None:
    for name, seconds in STARTUP_SECONDS.items():
        terminalreporter.write_line(f"{name} healthy after {seconds:.1f} s")


@pytest.fixture
def tmpfs(tmp_path: Path) -> Iterator[Callable[[str], Path]]:
    """Mount small tmpfs file systems of their own (``tmpfs("2m")``: the machine's real kernel
    file system, for disk-full faults; root only: the CI machine runs as root, elsewhere the
    test says so and skips). Unmounted at teardown."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root (the CI machine runs as root)")
    mounts: list[Path] = []

    def mount(size: str) -> Path:
        point = tmp_path / f"fs{len(mounts)}"
        point.mkdir()
        subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(point)], check=True
        )
        mounts.append(point)
        return point

    yield mount
    for point in mounts:
        subprocess.run(["umount", "-l", str(point)], check=False)


@pytest.fixture
def small_fs(tmpfs: Callable[[str], Path]) -> Path:
    """A 2 MiB tmpfs of its own (root only)."""
    return tmpfs("2m")


def fill(directory: Path) -> Path:
    """Fill the file system holding ``directory`` to ENOSPC; returns the filler file."""
    filler = directory / "filler"
    with open(filler, "wb") as fh, contextlib.suppress(OSError):
        while True:
            fh.write(b"\0" * 65536)
            fh.flush()
    return filler


class Ext4Disk:
    """A real ext4 file system on a loop device (an image file under the test's tmp_path),
    mounted at ``path``. :meth:`fail` makes the kernel turn it read-only under open files as
    it does after a disk error (``remount,abort``: every write then fails with EROFS);
    :meth:`repair` unmounts it (lazily: open files keep the failed one), checks a copy of it
    with ``e2fsck`` and mounts that at the same path, as an operator restoring the disk would."""

    def __init__(self, image: Path, path: Path) -> None:
        self.image, self.path = image, path
        self.copies: list[Path] = []
        subprocess.run(["truncate", "-s", "32M", str(image)], check=True)
        subprocess.run(["mkfs.ext4", "-q", str(image)], check=True)
        path.mkdir()
        self._mount()

    def _mount(self) -> None:
        subprocess.run(["mount", "-o", "loop", str(self.image), str(self.path)], check=True)

    def fail(self) -> None:
        subprocess.run(["mount", "-o", "remount,abort", str(self.path)], check=True)

    def repair(self) -> None:
        subprocess.run(["umount", "-l", str(self.path)], check=True)
        # a copy of the image: the failed file system lives on while files are open on it,
        # and a second mount of the same loop device would get that one back
        copy = self.image.with_name(f"{self.image.stem}-{len(self.copies)}.img")
        shutil.copyfile(self.image, copy)
        self.copies.append(copy)
        self.image = copy
        subprocess.run(["e2fsck", "-fy", str(self.image)], check=False, capture_output=True)
        self._mount()

    def unmount(self) -> None:
        subprocess.run(["umount", "-l", str(self.path)], check=False)


@pytest.fixture
def ext4_disk(tmp_path: Path) -> Iterator[Ext4Disk]:
    """An :class:`Ext4Disk` (root and loop devices: the CI machine has both; elsewhere the
    test says so and skips)."""
    if os.geteuid() != 0 or not shutil.which("mkfs.ext4") or not Path("/dev/loop-control").exists():
        pytest.skip("a loop-mounted ext4 needs root, mkfs.ext4 and loop devices (CI has them)")
    disk = Ext4Disk(tmp_path / "disk.img", tmp_path / "disk")
    try:
        yield disk
    finally:
        disk.unmount()
