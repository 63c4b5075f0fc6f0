"""Run schemathesis against a real infermeter server and report what broke its contract.

The one entry point is :func:`fuzz_service`::

    report = fuzz_service(
        app.openapi(),                      # the spec: a dict, or the URL of openapi.json
        server.url,                         # a real server on 127.0.0.1, auth ON
        headers={"Authorization": "Bearer t"},
        max_examples=25,                    # per operation and phase (hypothesis examples)
        time_budget_s=300,                  # a hang guard: size runs by examples
        exclude=["GET /metrics"],           # operation names "METHOD /path", skipped
    )
    report.assert_clean(min_operations=15, min_examples=300)

It runs schemathesis' own engine (what ``schemathesis run`` does) over every operation of
the spec: the examples, coverage (boundary and negative values, missing and wrong-typed
parameters, wrong methods) and fuzzing phases, with a fixed seed. Each response is checked
for :data:`CHECKS`: no 5xx, the status code is documented, the content type is documented,
the body matches the response schema, declared response headers conform, a request without
the auth headers is refused (``ignored_auth``), an undeclared method is 405, and a request
missing a required header is a 4xx. ``checks=`` replaces that list. Every request has a timeout
(``request_timeout_s``): a server that hangs shows up as a failure with status ``None``,
never as a hung test. ``phases=`` picks phases; stateful testing is off (no links in our specs).

The :class:`FuzzReport` says how many operations were exercised, how many requests were sent
(``examples``), the status codes seen, and every failure (operation, check, status, message);
``errors`` holds what stopped an operation from being tested at all (a schema schemathesis
cannot read, a refused connection, a request that timed out); ``out_of_time`` says the budget
stopped the run before every phase had finished. :meth:`FuzzReport.assert_clean` fails a test on any
failure or error, and when the run exercised fewer operations or examples than asked (so a
spec that yields nothing cannot pass).
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import schemathesis
from schemathesis.engine import events, from_schema
from schemathesis.engine.core import EventStream

# What every infermeter contract test checks (schemathesis' check names).
CHECKS: tuple[str, ...] = (
    "not_a_server_error",
    "status_code_conformance",
    "content_type_conformance",
    "response_schema_conformance",
    "response_headers_conformance",
    "ignored_auth",
    "unsupported_method",
    "missing_required_header",
)
PHASES: tuple[str, ...] = ("examples", "coverage", "fuzzing")
ALL_PHASES = ("examples", "coverage", "fuzzing", "stateful")


@dataclass(frozen=True)
class FuzzFailure:
    """One contract violation: which operation, which check, what the server answered."""

    operation: str
    check: str
    title: str
    status: int | None
    message: str
    curl: str

    def __str__(self) -> str:
        return f"{self.operation} [{self.check}] {self.status}: {self.title}: {self.message}"


@dataclass
class FuzzReport:
    """What one :func:`fuzz_service` run exercised and found."""

    operations: int = 0
    examples: int = 0
    statuses: Counter[int] = field(default_factory=Counter)
    failures: list[FuzzFailure] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    elapsed_s: float = 0.0
    stop_reason: str = ""
    out_of_time: bool = False
    tested: set[str] = field(default_factory=set)

    @property
    def server_errors(self) -> int:
        """Responses with a 5xx status."""
        return sum(n for status, n in self.statuses.items() if status >= 500)

    def summary(self) -> str:
        lines = [
            f"{self.operations} operations, {self.examples} examples, "
            f"{self.server_errors} 5xx, {len(self.failures)} failures, "
            f"{len(self.errors)} errors in {self.elapsed_s:.1f}s ({self.stop_reason}); "
            f"statuses {dict(sorted(self.statuses.items()))}"
        ]
        lines += [f"  FAIL {f}" for f in self.failures]
        lines += [f"  ERROR {e}" for e in self.errors]
        return "\n".join(lines)

    def assert_clean(self, *, min_operations: int, min_examples: int) -> None:
        """Fail (AssertionError with the summary) unless the run found nothing wrong and
        exercised at least ``min_operations`` operations with ``min_examples`` requests."""
        assert not self.failures and not self.errors, self.summary()
        assert self.operations >= min_operations, self.summary()
        assert self.examples >= min_examples, self.summary()


def fuzz_service(
    spec: dict[str, Any] | str,
    base_url: str,
    *,
    headers: Mapping[str, str],
    max_examples: int = 25,
    time_budget_s: float = 40.0,
    exclude: Sequence[str] = (),
    checks: Sequence[str] = CHECKS,
    phases: Sequence[str] = PHASES,
    request_timeout_s: float = 5.0,
    seed: int = 13,
    fill_budget: bool = False,
) -> FuzzReport:
    """Fuzz every operation of ``spec`` against the server at ``base_url`` (see the module
    docstring); returns the report, raises nothing for what the server does.

    One pass over the phases by default; ``fill_budget=True`` lets schemathesis keep drawing
    fresh fuzzing examples until ``time_budget_s`` is spent (deeper, always that long)."""
    budget: dict[str, Any] = {"max-time": max(1, int(time_budget_s))} if fill_budget else {}
    config = schemathesis.Config.from_dict(
        {
            **budget,
            "seed": seed,
            "base-url": base_url,
            "headers": dict(headers),
            "request-timeout": request_timeout_s,
            "workers": 1,
            "continue-on-failure": True,
            "warnings": False,
            "generation": {"max-examples": max_examples, "database": "none"},
            "checks": {
                "enabled": False,
                **{name: {"enabled": True} for name in checks},
            },
            "phases": {name: {"enabled": name in phases} for name in ALL_PHASES},
        }
    )
    schema: schemathesis.BaseSchema
    if isinstance(spec, str):
        schema = schemathesis.openapi.from_url(spec, config=config, headers=dict(headers))
    else:
        schema = schemathesis.openapi.from_dict(spec, config=config)
    if exclude:
        schema = schema.exclude(name=list(exclude))
    grace = 10.0 if fill_budget else 0.0  # schemathesis stops itself at max-time then
    return _collect(from_schema(schema).execute(), time.monotonic() + time_budget_s + grace)


def _collect(stream: EventStream, deadline: float) -> FuzzReport:
    """Fold the engine's events into a report; stop the engine once ``deadline`` passes."""
    report = FuzzReport()
    started = time.monotonic()
    seen: set[tuple[str, str, int | None, str]] = set()
    for event in stream:
        if time.monotonic() > deadline and not stream.stop_event.is_set():
            stream.stop()
            report.out_of_time = True
        if isinstance(event, events.ScenarioFinished):
            _record(report, event.recorder, seen)
        elif isinstance(event, events.NonFatalError):
            error = f"{event.label}: {event.info.title}: {event.info.message}"
            if error not in report.errors:
                report.errors.append(error)
        elif isinstance(event, events.FatalError):
            report.errors.append(f"fatal: {event.exception!r}")
        elif isinstance(event, events.EngineFinished):
            report.stop_reason = str(event.stop_reason)
    report.operations = len(report.tested)
    report.elapsed_s = time.monotonic() - started
    return report


def _record(report: FuzzReport, recorder: Any, seen: set[tuple[str, str, int | None, str]]) -> None:
    for case_id, interaction in recorder.interactions.items():
        report.examples += 1
        report.tested.add(recorder.label)
        response = interaction.response
        if response is not None:
            report.statuses[response.status_code] += 1
        for node in recorder.checks.get(case_id, []):
            info = node.failure_info
            if info is None:
                continue
            failure = info.failure
            status = response.status_code if response is not None else None
            key = (recorder.label, node.name, status, failure.title)
            if key in seen:  # one line per (operation, check, status, kind)
                continue
            seen.add(key)
            report.failures.append(
                FuzzFailure(
                    operation=recorder.label,
                    check=node.name,
                    title=failure.title,
                    status=status,
                    message=str(failure.message)[:500],
                    curl=info.code_sample,
                )
            )
