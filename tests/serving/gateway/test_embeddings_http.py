"""The HTTP embedding backend against a loopback /v1/embeddings serving the real model."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import aiohttp
import numpy as np
import orjson
import pytest
from prometheus_client import CollectorRegistry
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from infermeter.serving.gateway.cache import SemanticCache
from infermeter.serving.gateway.embeddings.local import LocalEmbedder
from infermeter.serving.gateway.embeddings.remote import HttpEmbedder
from infermeter.serving.gateway.errors import EmbeddingError
from infermeter.serving.gateway.requests import CHAT, parse_inference
from infermeter.serving.gateway.settings import CacheSettings
from tests.conftest import free_port


def embeddings_server(embedder: LocalEmbedder) -> Starlette:
    """OpenAI-shaped /v1/embeddings with the real MiniLM; rows unnormalised, out of order."""

    async def embed(request: Request) -> Response:
        body = orjson.loads(await request.body())
        if body.get("model") != "all-MiniLM-L6-v2":
            return Response(b'{"error": {"message": "no such model"}}', 404)
        vectors = await embedder.embed(body["input"])
        data = [
            {"object": "embedding", "index": i, "embedding": (3.0 * v).tolist()}
            for i, v in enumerate(vectors)
        ]
        return Response(orjson.dumps({"object": "list", "data": data[::-1]}))

    return Starlette(routes=[Route("/v1/embeddings", embed, methods=["POST"])])


async def test_http_backend_equals_local(
    serve: Callable[..., Any], embedder: LocalEmbedder
) -> None:
    server = serve(embeddings_server(embedder))
    texts = ["How do I reset my password?", "What is a pod?", "naïve café"]
    async with aiohttp.ClientSession() as session:
        remote = await HttpEmbedder(session, server.url, "all-MiniLM-L6-v2").embed(texts)
        with pytest.raises(EmbeddingError, match="404"):
            await HttpEmbedder(session, server.url, "other-model").embed(texts)
    local = await embedder.embed(texts)
    assert np.abs(remote - local).max() < 1e-5


async def test_unreachable_backend_makes_the_cache_step_aside() -> None:
    async with aiohttp.ClientSession() as session:
        dead = HttpEmbedder(session, f"http://127.0.0.1:{free_port()}", "all-MiniLM-L6-v2")
        with pytest.raises(EmbeddingError, match="unreachable"):
            await dead.embed(["x"])
        cache = SemanticCache(
            CacheSettings.model_validate({"enabled": True}), dead, registry=CollectorRegistry()
        )
        body = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "temperature": 0}
        lookup = await cache.lookup("acme", parse_inference(CHAT, orjson.dumps(body)))
    assert lookup.hit is None and lookup.outcome == "error" and not lookup.eligible
