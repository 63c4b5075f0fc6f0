"""The benchmark's yardstick: a bare aiohttp passthrough proxy with no accounting at all.

``python collector_bare_proxy.py PORT UPSTREAM``: aiohttp.web server + one aiohttp client
session, every request forwarded and every response chunk written as it arrives (what any
Python streaming proxy must do at minimum). The collector's added latency is compared to it.
"""

from __future__ import annotations

import sys

import aiohttp
from aiohttp import web

HOP = {"connection", "keep-alive", "transfer-encoding", "host", "content-length", "upgrade", "te"}


def make_app(upstream: str) -> web.Application:
    app = web.Application()

    async def start(app: web.Application) -> None:
        app["session"] = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0),
            auto_decompress=False,
            timeout=aiohttp.ClientTimeout(total=None),
        )

    async def stop(app: web.Application) -> None:
        await app["session"].close()

    async def forward(request: web.Request) -> web.StreamResponse:
        body = await request.read()
        headers = {k: v for k, v in request.headers.items() if k.lower() not in HOP}
        session: aiohttp.ClientSession = request.app["session"]
        async with session.request(
            request.method, upstream + request.rel_url.raw_path_qs, headers=headers, data=body
        ) as up:
            resp = web.StreamResponse(status=up.status)
            for k, v in up.headers.items():
                if k.lower() not in HOP:
                    resp.headers[k] = v
            await resp.prepare(request)
            async for chunk in up.content.iter_any():
                await resp.write(chunk)
            await resp.write_eof()
            return resp

    app.on_startup.append(start)
    app.on_cleanup.append(stop)
    app.router.add_route("*", "/{tail:.*}", forward)
    return app


def make_sink() -> web.Application:
    """``python collector_bare_proxy.py PORT sink``: accepts usage batches like metering."""
    app = web.Application()

    async def accept(request: web.Request) -> web.Response:
        items = await request.json()
        return web.json_response({"accepted": len(items), "duplicates": 0, "rejected": []})

    async def health(request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    app.router.add_post("/v1/usage", accept)
    app.router.add_post("/v1/gpu-samples", accept)
    app.router.add_get("/health", health)
    return app


if __name__ == "__main__":
    import uvloop

    uvloop.install()
    if sys.argv[2] == "sink":
        web.run_app(
            make_sink(), host="127.0.0.1", port=int(sys.argv[1]), access_log=None, print=None
        )
        sys.exit(0)
    web.run_app(
        make_app(sys.argv[2].rstrip("/")),
        host="127.0.0.1",
        port=int(sys.argv[1]),
        access_log=None,
        print=None,
    )
