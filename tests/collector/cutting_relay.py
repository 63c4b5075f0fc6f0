"""A TCP relay on loopback that can cut a response mid-stream: an upstream that dies.

Bytes flow unchanged between the client (the collector) and the real engine; after
``cut_after`` response bytes of a connection the relay closes both sockets, exactly what a
crashed or OOM-killed engine looks like from the proxy's side. After ``hold_after`` response
bytes of a request starting with ``hold_request`` (counted from that request, so a kept-alive
connection that served a scrape first is no different) it stops forwarding, a stalled
network path: the proxy has not seen the end of the response however fast the engine is, so
what the proxy does when its client leaves first does not depend on the machine's speed.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading


class CuttingRelay:
    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.cut_after: int | None = None
        self.hold_after: int | None = None
        self.hold_request = b"POST /v1/completions "
        self.port = 0
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> CuttingRelay:
        self._thread.start()
        self._ready.wait(10)
        return self

    def stop(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        server = self._loop.run_until_complete(asyncio.start_server(self._handle, "127.0.0.1", 0))
        self.port = server.sockets[0].getsockname()[1]
        self._ready.set()
        self._loop.run_forever()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        limit, hold = self.cut_after, self.hold_after
        sent = 0
        hold_from: int | None = None  # response bytes sent when the held request went up

        async def upstream() -> None:
            nonlocal hold_from
            with contextlib.suppress(ConnectionError):
                while data := await reader.read(65536):
                    if hold is not None and data.startswith(self.hold_request):
                        hold_from = sent
                    up_writer.write(data)
                    await up_writer.drain()

        async def downstream() -> None:
            nonlocal sent
            with contextlib.suppress(ConnectionError):
                while data := await up_reader.read(65536):
                    if limit is not None and sent + len(data) > limit:
                        writer.write(data[: max(0, limit - sent)])
                        await writer.drain()
                        break
                    if hold is not None and hold_from is not None:
                        data = data[: max(0, hold_from + hold - sent)]
                    writer.write(data)
                    sent += len(data)
                    await writer.drain()

        tasks = [asyncio.ensure_future(upstream()), asyncio.ensure_future(downstream())]
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        for task in tasks:
            task.cancel()
        for w in (writer, up_writer):
            w.transport.abort()
