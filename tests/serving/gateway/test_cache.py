"""Semantic cache with the real all-MiniLM-L6-v2 embeddings."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import orjson
import pytest
from prometheus_client import CollectorRegistry

from infermeter.serving.gateway.cache import CachedAnswer, SemanticCache
from infermeter.serving.gateway.cache_guard import compatible
from infermeter.serving.gateway.embeddings.local import LocalEmbedder
from infermeter.serving.gateway.requests import CHAT, InferenceRequest, parse_inference
from infermeter.serving.gateway.settings import CacheSettings

PARAPHRASES = [
    ("How do I enable dark mode?", "How can I turn on dark mode?"),
    ("How do I reset my password?", "How can I reset my password?"),
    ("What is the capital of France?", "What's the capital city of France?"),
    ("how do i export my data to csv", "How do I export my data to CSV?"),
    ("Can you explain what a Kubernetes pod is?", "Explain what a Kubernetes pod is."),
    ("How do I cancel my subscription?", "How can I cancel my subscription?"),
]
NEAR_MISSES = [
    ("How do I enable dark mode?", "How do I disable dark mode?"),
    ("How do I enable two-factor authentication?", "How do I disable two-factor authentication?"),
    ("How do I increase the timeout?", "How do I decrease the timeout?"),
    ("Is the store open on Sunday?", "Is the store closed on Sunday?"),
    ("Book a table for 2 people at 7pm", "Book a table for 4 people at 7pm"),
    ("What was the revenue in 2023?", "What was the revenue in 2024?"),
    ("What is 15% of 200?", "What is 15% of 300?"),
    ("Write an email to John about the meeting", "Write an email to Sarah about the meeting"),
    ("Should I use Python for this?", "Should I not use Python for this?"),
    ("How do I add a user to the group?", "How do I remove a user from the group?"),
]
ANSWER = CachedAnswer("stored answer", "stop", 12, 5)


def chat(question: str, *, model: str = "m", system: str = "", temperature: float = 0.0) -> bytes:
    messages = [{"role": "system", "content": system}] if system else []
    messages.append({"role": "user", "content": question})
    return orjson.dumps({"model": model, "messages": messages, "temperature": temperature})


def req(question: str, **kw: object) -> InferenceRequest:
    return parse_inference(CHAT, chat(question, **kw))  # type: ignore[arg-type]


def make_cache(
    embedder: LocalEmbedder, clock: Callable[[], float] = lambda: 0.0, **settings: object
) -> SemanticCache:
    cfg = CacheSettings.model_validate({"enabled": True, **settings})
    return SemanticCache(cfg, embedder, registry=CollectorRegistry(), now=clock)


async def prime(cache: SemanticCache, tenant: str, request: InferenceRequest) -> None:
    lookup = await cache.lookup(tenant, request)
    assert lookup.hit is None and lookup.eligible
    cache.store(lookup, request.query_text, ANSWER)


@pytest.mark.parametrize(("stored", "asked"), PARAPHRASES)
async def test_paraphrases_hit(embedder: LocalEmbedder, stored: str, asked: str) -> None:
    cache = make_cache(embedder)
    await prime(cache, "acme", req(stored))
    lookup = await cache.lookup("acme", req(asked))
    assert lookup.hit is not None, f"{asked!r} should hit {stored!r}"
    assert lookup.hit.answer == ANSWER and lookup.hit.question == stored


@pytest.mark.parametrize(("stored", "asked"), NEAR_MISSES)
async def test_opposite_meaning_does_not_hit(
    embedder: LocalEmbedder, stored: str, asked: str
) -> None:
    cache = make_cache(embedder)
    await prime(cache, "acme", req(stored))
    assert (await cache.lookup("acme", req(asked))).hit is None
    assert (await cache.lookup("acme", req(stored))).hit is not None  # the exact one does


async def test_another_tenant_never_hits(embedder: LocalEmbedder) -> None:
    cache = make_cache(embedder)
    await prime(cache, "acme", req("How do I reset my password?"))
    for question in ("How do I reset my password?", "How can I reset my password?"):
        assert (await cache.lookup("globex", req(question))).hit is None
    assert (await cache.lookup("acme", req("How do I reset my password?"))).hit is not None


async def test_model_and_system_prompt_are_part_of_the_key(embedder: LocalEmbedder) -> None:
    cache = make_cache(embedder)
    await prime(cache, "acme", req("What is a pod?", system="You are terse."))
    assert (await cache.lookup("acme", req("What is a pod?", system="Be verbose."))).hit is None
    assert (await cache.lookup("acme", req("What is a pod?", model="other"))).hit is None
    assert (await cache.lookup("acme", req("What is a pod?"))).hit is None
    assert (await cache.lookup("acme", req("What is a pod?", system="You are terse."))).hit


async def test_only_deterministic_requests_unless_tenant_opts_in(
    embedder: LocalEmbedder,
) -> None:
    cache = make_cache(embedder, tenants={"bold": {"allow_nondeterministic": True}})
    warm = req("What is a pod?", temperature=0.7)
    lookup = await cache.lookup("acme", warm)
    assert not lookup.eligible and lookup.outcome == "ineligible"
    no_temperature = parse_inference(
        CHAT, orjson.dumps({"model": "m", "messages": [{"role": "user", "content": "hi"}]})
    )
    assert not cache.eligible("acme", no_temperature)  # the engine default is not 0
    bold = await cache.lookup("bold", warm)
    assert bold.eligible
    cache.store(bold, warm.query_text, ANSWER)
    assert (await cache.lookup("bold", warm)).hit is not None


async def test_ttl_and_size_bounds(embedder: LocalEmbedder, manual_clock: Any) -> None:
    clock = manual_clock
    cache = make_cache(embedder, clock, ttl_s=60.0, max_entries_per_tenant=2, max_entries=3)
    await prime(cache, "acme", req("What is a pod?"))
    clock.advance(61.0)
    assert (await cache.lookup("acme", req("What is a pod?"))).hit is None
    assert cache.expire() == 1 and len(cache) == 0
    for q in ("What is a pod?", "What is a node?", "What is a service?"):
        await prime(cache, "acme", req(q))
    assert len(cache) == 2  # per-tenant bound: the least recently used went
    assert (await cache.lookup("acme", req("What is a pod?"))).hit is None
    await prime(cache, "globex", req("What is a pod?"))
    await prime(cache, "globex", req("What is a deployment?"))
    assert len(cache) == 3  # total bound


def test_guard_rules() -> None:
    assert compatible("How do I export to CSV?", "how do i export my data to csv")
    assert not compatible("Convert 10 miles", "Convert 20 miles")
    assert not compatible("I can't log in", "I can log in")
    assert not compatible("Email John", "Email Sarah")
    assert compatible("Email John now", "Please email John")
    assert compatible("How can I turn on dark mode?", "How do I enable dark mode?")
