"""A small process supervisor for ``infermeter up``: start services, wait, stop them all.

Each service is a :class:`ServiceSpec` (a name, the argv of a child process, the URL that
answers when it is ready). :class:`Supervisor` checks every port is free before starting
anything (a taken port is a :class:`PortInUse` naming it), starts the children in their own
process groups with output to one log file each, waits for every health URL, prints where
each listens, then waits for Ctrl-C / SIGTERM or a child's death and stops them all
(SIGTERM, then SIGKILL after a grace period). Later services (collector, metering, gateway,
...) join by adding specs.
"""

from __future__ import annotations

import contextlib
import errno
import os
import signal
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

from serving.errors import EngineError, PortInUse


@dataclass(frozen=True)
class ServiceSpec:
    """One child process of ``infermeter up``."""

    name: str
    argv: Sequence[str]
    health_url: str
    host: str
    port: int
    description: str = ""
    env: dict[str, str] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"


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


def http_ok(url: str, timeout: float = 1.0) -> bool:
    """True when ``url`` answers 2xx."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return 200 <= resp.status < 300
    except (urllib.error.URLError, OSError):
        return False


class Supervisor:
    """Starts, watches and stops a list of services."""

    def __init__(
        self,
        specs: Sequence[ServiceSpec],
        *,
        log_dir: Path,
        startup_timeout: float = 60.0,
        stop_timeout: float = 10.0,
        out: TextIO | None = None,
        probe: Callable[[str], bool] = http_ok,
    ) -> None:
        self.specs = list(specs)
        self.log_dir = log_dir
        self.startup_timeout = startup_timeout
        self.stop_timeout = stop_timeout
        self.out = out
        self.probe = probe
        self.children: dict[str, subprocess.Popen[bytes]] = {}
        self._stop = threading.Event()

    def _print(self, text: str) -> None:
        if self.out is not None:
            print(text, file=self.out, flush=True)

    def log_path(self, spec: ServiceSpec) -> Path:
        return self.log_dir / f"{spec.name}.log"

    def check_ports(self) -> None:
        for spec in self.specs:
            check_port_free(spec.host, spec.port, spec.name)

    def start(self) -> None:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        for spec in self.specs:
            with self.log_path(spec).open("wb") as log:
                self.children[spec.name] = subprocess.Popen(
                    list(spec.argv),
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                    env={**os.environ, **spec.env},
                    start_new_session=True,  # our signals reach them only through us
                )

    def _log_tail(self, spec: ServiceSpec, lines: int = 8) -> str:
        try:
            text = self.log_path(spec).read_text(encoding="utf-8", errors="replace")
        except OSError:
            return ""
        return "\n".join(text.strip().splitlines()[-lines:])

    def wait_healthy(self) -> None:
        """Block until every service answers its health URL; EngineError if one cannot."""
        deadline = time.monotonic() + self.startup_timeout
        pending = list(self.specs)
        while pending:
            for spec in list(pending):
                code = self.children[spec.name].poll()
                if code is not None:
                    raise EngineError(
                        f"{spec.name} exited with code {code} while starting; log "
                        f"{self.log_path(spec)}:\n{self._log_tail(spec)}"
                    )
                if self.probe(spec.health_url):
                    pending.remove(spec)
            if pending and time.monotonic() > deadline:
                names = ", ".join(s.name for s in pending)
                raise EngineError(
                    f"not healthy after {self.startup_timeout:.0f} s: {names} "
                    f"(logs in {self.log_dir})"
                )
            if pending:
                time.sleep(0.1)

    def table(self) -> str:
        width = max(len(s.name) for s in self.specs)
        rows = [f"  {'SERVICE'.ljust(width)}  {'ADDRESS'.ljust(24)}  WHAT"]
        rows += [f"  {s.name.ljust(width)}  {s.url.ljust(24)}  {s.description}" for s in self.specs]
        return "\n".join(rows)

    def request_stop(self, *_: object) -> None:
        """Signal handler: ask :meth:`run` to stop everything."""
        self._stop.set()

    def stop(self) -> None:
        """SIGTERM every child, wait, then SIGKILL what is left."""
        for child in self.children.values():
            if child.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    child.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + self.stop_timeout
        for child in self.children.values():
            try:
                child.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait(timeout=5)

    def run(self) -> int:
        """Start all, print the table, wait for a signal or a death, stop all; exit code."""
        self.check_ports()
        previous = {
            sig: signal.signal(sig, self.request_stop) for sig in (signal.SIGINT, signal.SIGTERM)
        }
        try:
            self.start()
            self.wait_healthy()
            self._print(
                f"infermeter up: {len(self.specs)} services running (Ctrl-C stops them all)\n"
                f"{self.table()}\n  logs: {self.log_dir}"
            )
            while not self._stop.wait(0.2):
                for spec in self.specs:
                    code = self.children[spec.name].poll()
                    if code is not None:
                        self._print(
                            f"infermeter up: {spec.name} exited with code {code}; stopping all"
                            f"\n{self._log_tail(spec)}"
                        )
                        return 1
            self._print("infermeter up: stopping")
            return 0
        finally:
            self.stop()
            for sig, handler in previous.items():
                signal.signal(sig, handler)
