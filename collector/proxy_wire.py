"""The proxy's HTTP plumbing: which headers travel, whole JSON replies, request bodies, and
noticing a client that goes away (no metering here: see :mod:`infermeter.collector.proxy`)."""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp

from infermeter.kernel.asgi import Message, Receive, Scope, send_json

__all__ = ["DisconnectWatch", "forward_headers", "response_headers", "send_json"]

HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "host",
        "content-length",
        "x-infermeter-gateway-secret",
    }
)
HOP_BY_HOP_RESPONSE = frozenset(
    {b"connection", b"keep-alive", b"transfer-encoding", b"trailer", b"upgrade"}
)


def forward_headers(scope: Scope) -> tuple[list[tuple[str, str]], dict[str, str]]:
    out: list[tuple[str, str]] = []
    lower: dict[str, str] = {}
    for raw_name, raw_value in scope["headers"]:
        name = raw_name.decode("latin-1").lower()
        value = raw_value.decode("latin-1")
        lower[name] = value
        if name not in HOP_BY_HOP:
            out.append((name, value))
    return out, lower


def response_headers(
    resp: aiohttp.ClientResponse, *, drop_length: bool
) -> list[tuple[bytes, bytes]]:
    out = []
    for name, value in resp.raw_headers:
        low = name.lower()
        if low in HOP_BY_HOP_RESPONSE or (drop_length and low == b"content-length"):
            continue
        out.append((low, value))
    return out


class DisconnectWatch:
    """Notices the client going away and cancels the upstream request.

    Started lazily: a waiter on ``receive()`` costs a task, so a stream starts one only once
    it outlives its first chunk (a client that leaves while the engine is still queueing or
    prefilling is noticed at the first token); non-streamed requests watch from the start.
    """

    __slots__ = ("aborted", "receive", "resp", "task", "watcher")

    def __init__(self, receive: Receive, task: asyncio.Task[Any] | None) -> None:
        self.receive = receive
        self.task = task
        self.resp: aiohttp.ClientResponse | None = None
        self.watcher: asyncio.Future[Message] | None = None
        self.aborted = False

    def start(self) -> None:
        if self.watcher is None:
            self.watcher = asyncio.ensure_future(self.receive())
            self.watcher.add_done_callback(self._fired)

    def _fired(self, fut: asyncio.Future[Message]) -> None:
        if fut.cancelled() or fut.exception() is not None:
            return
        if fut.result().get("type") != "http.disconnect":
            return
        self.aborted = True
        if self.resp is not None:
            self.resp.close()
        elif self.task is not None:
            self.task.cancel()

    def stop(self) -> None:
        if self.watcher is not None and not self.watcher.done():
            self.watcher.remove_done_callback(self._fired)
            self.watcher.cancel()
