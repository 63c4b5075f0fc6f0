"""Semantic cache: answer a question with a stored answer to a semantically equal one.

Entries live in namespaces keyed by ``(tenant, model, context)``, where context is a hash of
the system prompt, the other turns and every request field that shapes the answer
(:mod:`requests`); a tenant's namespace is never searched for another tenant. Within a
namespace the query (last user turn, or the prompt) is embedded; the best stored question
with cosine similarity >= ``threshold`` that also passes :func:`cache_guard.compatible` is a
hit. Only deterministic requests (temperature 0) are eligible unless the tenant opts in.
Entries expire after ``ttl_s``; the least recently used go first beyond the per-tenant or
total size bound. The clock is injected.
"""

from __future__ import annotations

import itertools
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt
from prometheus_client import CollectorRegistry, Counter

from infermeter.serving.gateway.cache_guard import compatible
from infermeter.serving.gateway.embeddings import Embedder
from infermeter.serving.gateway.errors import EmbeddingError
from infermeter.serving.gateway.requests import InferenceRequest
from infermeter.serving.gateway.settings import CacheSettings, TenantCacheSettings

Vector = npt.NDArray[np.float32]


@dataclass(slots=True)
class CachedAnswer:
    """What is replayed on a hit."""

    text: str
    finish_reason: str | None
    prompt_tokens: int
    completion_tokens: int


@dataclass(slots=True)
class _Entry:
    id: int
    namespace: tuple[str, str, str]
    question: str
    vector: Vector
    answer: CachedAnswer
    expires_at: float


@dataclass(slots=True)
class Hit:
    """A cache hit: the stored answer, how similar its question was, and that question."""

    answer: CachedAnswer
    similarity: float
    question: str


@dataclass(slots=True)
class Lookup:
    """The result of a lookup: a hit, or the query vector to store the answer under later."""

    hit: Hit | None
    vector: Vector | None
    namespace: tuple[str, str, str]
    eligible: bool
    outcome: str


@dataclass(slots=True)
class _Namespace:
    ids: list[int] = field(default_factory=list)
    matrix: Vector = field(default_factory=lambda: np.zeros((0, 0), dtype=np.float32))


class SemanticCache:
    """Per-tenant semantic cache with cosine threshold, lexical guard, TTL and size bounds."""

    def __init__(
        self,
        settings: CacheSettings,
        embedder: Embedder,
        *,
        registry: CollectorRegistry,
        now: Callable[[], float] = time.monotonic,
    ) -> None:
        self.settings = settings
        self._embedder = embedder
        self._now = now
        self._entries: OrderedDict[int, _Entry] = OrderedDict()  # LRU order
        self._namespaces: dict[tuple[str, str, str], _Namespace] = {}
        self._per_tenant: dict[str, int] = {}
        self._ids = itertools.count(1)
        self.lookups = Counter(
            "infermeter_gateway_cache_lookups",
            "Semantic cache lookups by outcome (hit, miss, guard_reject, ineligible, error)",
            ["outcome"],
            registry=registry,
        )

    def policy(self, tenant: str) -> TenantCacheSettings:
        """The tenant's cache policy (defaults when not configured)."""
        tenants: Mapping[str, TenantCacheSettings] = self.settings.tenants
        return tenants.get(tenant) or TenantCacheSettings.model_validate({})

    def eligible(self, tenant: str, req: InferenceRequest) -> bool:
        """Whether this request may be answered from, or stored into, the cache."""
        policy = self.policy(tenant)
        if not (self.settings.enabled and policy.enabled and req.query_text.strip()):
            return False
        if req.body.get("n", 1) != 1:
            return False
        deterministic = req.temperature is not None and req.temperature == 0.0
        return deterministic or policy.allow_nondeterministic

    async def lookup(self, tenant: str, req: InferenceRequest) -> Lookup:
        """Search the tenant's namespace for a semantically equal question."""
        namespace = (tenant, req.model, req.context_key)
        if not self.eligible(tenant, req):
            self.lookups.labels("ineligible").inc()
            return Lookup(None, None, namespace, False, "ineligible")
        try:
            vector = (await self._embedder.embed([req.query_text]))[0]
        except EmbeddingError:
            self.lookups.labels("error").inc()
            return Lookup(None, None, namespace, False, "error")
        hit, outcome = self._search(namespace, req.query_text, vector)
        self.lookups.labels(outcome).inc()
        return Lookup(hit, vector, namespace, True, outcome)

    def _search(
        self, namespace: tuple[str, str, str], question: str, vector: Vector
    ) -> tuple[Hit | None, str]:
        ns = self._namespaces.get(namespace)
        if ns is None or not ns.ids:
            return None, "miss"
        now = self._now()
        sims = ns.matrix @ vector
        outcome = "miss"
        for index in np.argsort(-sims)[:8]:
            similarity = float(sims[index])
            if similarity < self.settings.threshold:
                break
            entry = self._entries.get(ns.ids[int(index)])
            if entry is None or entry.expires_at <= now:
                continue
            if not compatible(question, entry.question):
                outcome = "guard_reject"
                continue
            self._entries.move_to_end(entry.id)
            return Hit(entry.answer, similarity, entry.question), "hit"
        return None, outcome

    def store(self, lookup: Lookup, question: str, answer: CachedAnswer) -> None:
        """Remember ``answer`` for ``question`` (with the vector from its lookup)."""
        if not lookup.eligible or lookup.vector is None or lookup.hit is not None:
            return
        self.expire()
        entry = _Entry(
            id=next(self._ids),
            namespace=lookup.namespace,
            question=question,
            vector=lookup.vector,
            answer=answer,
            expires_at=self._now() + self.settings.ttl_s,
        )
        tenant = lookup.namespace[0]
        while self._per_tenant.get(tenant, 0) >= self.settings.max_entries_per_tenant:
            self._evict_oldest(tenant)
        while len(self._entries) >= self.settings.max_entries:
            self._evict_oldest(None)
        self._entries[entry.id] = entry
        self._per_tenant[tenant] = self._per_tenant.get(tenant, 0) + 1
        ns = self._namespaces.setdefault(lookup.namespace, _Namespace())
        ns.ids.append(entry.id)
        row = entry.vector[None, :]
        ns.matrix = row if ns.matrix.size == 0 else np.vstack([ns.matrix, row])

    def __len__(self) -> int:
        return len(self._entries)

    def expire(self) -> int:
        """Drop expired entries; returns how many."""
        now = self._now()
        dead = [e.id for e in self._entries.values() if e.expires_at <= now]
        for entry_id in dead:
            self._remove(entry_id)
        return len(dead)

    def _evict_oldest(self, tenant: str | None) -> None:
        for entry_id, entry in self._entries.items():
            if tenant is None or entry.namespace[0] == tenant:
                self._remove(entry_id)
                return

    def _remove(self, entry_id: int) -> None:
        entry = self._entries.pop(entry_id)
        tenant = entry.namespace[0]
        self._per_tenant[tenant] -= 1
        ns = self._namespaces[entry.namespace]
        index = ns.ids.index(entry_id)
        ns.ids.pop(index)
        ns.matrix = np.delete(ns.matrix, index, axis=0)
        if not ns.ids:
            del self._namespaces[entry.namespace]
