"""A loopback implementation of metering's ingest contract (docs/api-contracts.md) for tests.

``POST /v1/usage`` and ``POST /v1/gpu-samples`` take a JSON array, need the bearer token,
validate each item with the metering contract's own parsers, store each key once and answer
``{"accepted", "duplicates", "rejected"}``. ``down = True`` makes it answer 503 (metering
unavailable) so tests can exercise the spool.
"""

from __future__ import annotations

import json
import threading
from typing import Any

from infermeter.kernel.records import parse_gpu_sample, parse_usage_record
from infermeter.metering.errors import RecordError


class UsageReceiver:
    def __init__(self, token: str = "ingest-token") -> None:
        self.token = token
        self.down = False
        self.usage: dict[str, dict[str, Any]] = {}
        self.order: list[str] = []
        self.samples: dict[tuple[str, str, str, str], dict[str, Any]] = {}
        self.batches = 0
        self.duplicates = 0
        self.refused = 0
        self._lock = threading.Lock()

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        body = b""
        while True:
            msg = await receive()
            body += msg.get("body", b"")
            if not msg.get("more_body"):
                break
        headers = {k.decode(): v.decode() for k, v in scope["headers"]}
        status, answer = self._handle(scope["path"], headers, body)
        raw = json.dumps(answer).encode()
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [(b"content-type", b"application/json")],
            }
        )
        await send({"type": "http.response.body", "body": raw})

    def _handle(self, path: str, headers: dict[str, str], body: bytes) -> tuple[int, Any]:
        if self.down:
            self.refused += 1
            return 503, {"error": {"message": "metering unavailable", "code": 503}}
        if headers.get("authorization") != f"Bearer {self.token}":
            return 401, {"error": {"message": "bad token", "code": 401}}
        items = json.loads(body)
        accepted = duplicates = 0
        rejected = []
        with self._lock:
            self.batches += 1
            for i, item in enumerate(items):
                try:
                    if path == "/v1/usage":
                        rec = parse_usage_record(item)
                        key: Any = rec.request_id
                        store: dict[Any, Any] = self.usage
                    else:
                        sample = parse_gpu_sample(item)
                        key = (sample.node, sample.gpu_uuid, sample.mig_uuid, item["ts"])
                        store = self.samples
                except RecordError as exc:
                    rejected.append({"index": i, "field": exc.field, "error": exc.message})
                    continue
                if key in store:
                    duplicates += 1
                    self.duplicates += 1
                    continue
                store[key] = item
                if path == "/v1/usage":
                    self.order.append(key)
                accepted += 1
        return 200, {"accepted": accepted, "duplicates": duplicates, "rejected": rejected}
