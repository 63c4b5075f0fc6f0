"""A small process supervisor for ``infermeter up``: start services in stages, stop in reverse.

Each service is a :class:`ServiceSpec` (a name, the argv of a child process, the port it binds
and the URL that answers once it is ready). :class:`Supervisor` checks every port is free
before starting anything (a taken port is a :class:`PortInUse` naming the port and the
service), then starts the services stage by stage: every service of a stage is started at
once, and the next stage starts when all of them answer their health URL, with one progress
line per service. Children run in their own process groups (a terminal's Ctrl-C reaches only
the supervisor) with output to one log file each; on Linux the kernel sends them SIGTERM if
the supervisor itself dies. On Ctrl-C / SIGTERM, or when a child dies, it stops the stages
in reverse order: SIGTERM to a stage's children, wait for them (their graceful shutdown:
collectors ship their spools, metering closes its store), SIGKILL what is left after the
service's stop timeout, then the previous stage. A service's ``stop_rank``
can hold it back further (metering stops after everything that ships to it).
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from itertools import groupby
from pathlib import Path
from typing import TextIO

from infermeter.kernel.errors import PortInUse
from infermeter.serving.errors import EngineError

PR_SET_PDEATHSIG = 1  # linux/prctl.h


@dataclass(frozen=True)
class ServiceSpec:
    """One child process of ``infermeter up``.

    ``port`` None: the service binds nothing (e.g. the traffic generator); ``health_url``
    None: it is ready once started. Lower ``stage`` values start first and stop last.
    """

    name: str
    argv: Sequence[str]
    health_url: str | None
    host: str
    port: int | None
    description: str = ""
    env: dict[str, str] = field(default_factory=dict)
    stage: int = 0
    startup_timeout: float | None = None  # default: the supervisor's
    stop_timeout: float = 10.0
    stop_rank: int | None = None  # lower stops later; default: the stage
    port_option: str = ""  # how the user moves this port, named when it is taken

    @property
    def stop_order(self) -> int:
        return self.stage if self.stop_rank is None else self.stop_rank

    @property
    def url(self) -> str:
        if self.port is None:
            return "-"
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"


def check_port_free(host: str, port: int, what: str) -> None:
    """Raise PortInUse if host:port cannot be bound right now."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise PortInUse(host, port, what) from exc
            raise


def die_with_parent() -> None:
    """``preexec_fn``: on Linux, have the kernel SIGTERM the child when the supervisor dies
    (even by SIGKILL), so that no service outlives ``up``; a no-op elsewhere."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def http_ok(url: str, timeout: float = 1.0) -> bool:
    """True when ``url`` answers 2xx."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return 200 <= resp.status < 300
    except (urllib.error.URLError, OSError):
        return False


class Interrupted(Exception):
    """Ctrl-C / SIGTERM arrived while the services were starting."""


class Supervisor:
    """Starts, watches and stops a list of services."""

    def __init__(
        self,
        specs: Sequence[ServiceSpec],
        *,
        log_dir: Path,
        startup_timeout: float = 60.0,
        out: TextIO | None = None,
        probe: Callable[[str], bool] = http_ok,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        names = [s.name for s in specs]
        if len(set(names)) != len(names):
            raise ValueError(f"service names must be unique: {names}")
        self.specs = sorted(specs, key=lambda s: s.stage)
        self.log_dir = log_dir
        self.startup_timeout = startup_timeout
        self.out = out
        self.probe = probe
        self.clock = clock
        self.children: dict[str, subprocess.Popen[bytes]] = {}
        self._stop = threading.Event()

    def _print(self, text: str) -> None:
        if self.out is not None:
            print(text, file=self.out, flush=True)

    def stages(self) -> list[list[ServiceSpec]]:
        """The services grouped by stage, in start order."""
        return [list(group) for _, group in groupby(self.specs, key=lambda s: s.stage)]

    def log_path(self, spec: ServiceSpec) -> Path:
        return self.log_dir / f"{spec.name}.log"

    def check_ports(self) -> None:
        """PortInUse naming the first taken port (and a port listed twice)."""
        seen: dict[tuple[str, int], str] = {}
        for spec in self.specs:
            if spec.port is None:
                continue
            key = (spec.host, spec.port)
            if key in seen:
                raise PortInUse(spec.host, spec.port, f"{spec.name} (also given to {seen[key]})")
            seen[key] = spec.name
            hint = f" (set by {spec.port_option})" if spec.port_option else ""
            check_port_free(spec.host, spec.port, spec.name + hint)

    def _start(self, spec: ServiceSpec) -> None:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        with self.log_path(spec).open("ab") as log:
            self.children[spec.name] = subprocess.Popen(
                list(spec.argv),
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env={**os.environ, **spec.env},
                start_new_session=True,  # our signals reach them only through us
                preexec_fn=die_with_parent if sys.platform == "linux" else None,
            )

    def _log_tail(self, spec: ServiceSpec, lines: int = 8) -> str:
        try:
            text = self.log_path(spec).read_text(encoding="utf-8", errors="replace")
        except OSError:
            return ""
        return "\n".join(text.strip().splitlines()[-lines:])

    def _wait_stage(self, stage: list[ServiceSpec], started: float) -> None:
        pending = list(stage)
        while pending:
            if self._stop.is_set():
                raise Interrupted
            for spec in list(pending):
                code = self.children[spec.name].poll()
                if code is not None:
                    raise EngineError(
                        f"{spec.name} exited with code {code} while starting; log "
                        f"{self.log_path(spec)}:\n{self._log_tail(spec)}"
                    )
                if spec.health_url is None or self.probe(spec.health_url):
                    pending.remove(spec)
                    took = self.clock() - started
                    self._print(f"  ready    {spec.name:<13} {spec.url:<24} ({took:.1f} s)")
                    continue
                limit = spec.startup_timeout or self.startup_timeout
                if self.clock() - started > limit:
                    raise EngineError(
                        f"{spec.name} not healthy after {limit:.0f} s at {spec.health_url}; "
                        f"log {self.log_path(spec)}:\n{self._log_tail(spec)}"
                    )
            if pending:
                self._stop.wait(0.1)

    def start_all(self) -> None:
        """Start every stage in order, each once the previous one is healthy."""
        for stage in self.stages():
            started = self.clock()
            for spec in stage:
                self._print(f"  starting {spec.name:<13} {spec.description}")
                self._start(spec)
            self._wait_stage(stage, started)

    def table(self) -> str:
        width = max(len(s.name) for s in self.specs)
        rows = [f"  {'SERVICE'.ljust(width)}  {'ADDRESS'.ljust(24)}  WHAT"]
        rows += [f"  {s.name.ljust(width)}  {s.url.ljust(24)}  {s.description}" for s in self.specs]
        return "\n".join(rows)

    def request_stop(self, *_: object) -> None:
        """Signal handler: ask :meth:`run` to stop everything."""
        self._stop.set()

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    def stop_groups(self) -> list[list[ServiceSpec]]:
        """The services grouped by stop rank, in stop order (reverse of the start order)."""
        ordered = sorted(self.specs, key=lambda s: -s.stop_order)
        return [list(group) for _, group in groupby(ordered, key=lambda s: s.stop_order)]

    def stop(self) -> None:
        """Stop group by group: SIGTERM, wait, SIGKILL after the service's stop timeout."""
        for group in self.stop_groups():
            running = [s for s in group if s.name in self.children]
            began = self.clock()
            for spec in running:
                child = self.children[spec.name]
                if child.poll() is None:
                    with contextlib.suppress(ProcessLookupError):
                        child.send_signal(signal.SIGTERM)
            for spec in running:
                child = self.children[spec.name]
                try:
                    child.wait(timeout=spec.stop_timeout)
                except subprocess.TimeoutExpired:
                    self._print(f"  {spec.name} did not stop in {spec.stop_timeout:.0f} s: killed")
                    with contextlib.suppress(ProcessLookupError):
                        os.killpg(child.pid, signal.SIGKILL)
                    child.wait(timeout=5)
                took = self.clock() - began
                self._print(f"  stopped  {spec.name:<13} ({took:.1f} s)")

    def run(self, on_ready: Callable[[], None] | None = None) -> int:
        """Start all, call ``on_ready``, wait for a signal or a death, stop all; exit code."""
        self.check_ports()
        previous = {
            sig: signal.signal(sig, self.request_stop) for sig in (signal.SIGINT, signal.SIGTERM)
        }
        try:
            try:
                self.start_all()
            except Interrupted:
                self._print("infermeter up: interrupted while starting; stopping")
                return 0
            if on_ready is not None:
                on_ready()
            while not self._stop.wait(0.2):
                for spec in self.specs:
                    code = self.children[spec.name].poll()
                    if code is not None:
                        self._print(
                            f"infermeter up: {spec.name} exited with code {code}; stopping all"
                            f"\n{self._log_tail(spec)}"
                        )
                        return 1
            self._print("infermeter up: stopping (in reverse order; usage records are flushed)")
            return 0
        finally:
            self.stop()
            for sig, handler in previous.items():
                signal.signal(sig, handler)
