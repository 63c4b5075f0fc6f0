"""Who is calling: tenant attribution shared by the collector, throttle and gateway.

A request's tenant comes from, in order:

1. the trusted tenant header :data:`TENANT_HEADER`, *only* when the request also carries
   :data:`SECRET_HEADER` equal to the gateway's shared secret (the gateway sets both);
2. the API key (``Authorization: Bearer <key>``) looked up in a key map of
   ``sha256(key) -> (tenant, key id, tier)``: keys are never stored in clear;
3. otherwise the request is anonymous (``tenant = default_tenant``).

A tenant header without the right secret is ignored and reported as ``untrusted`` so that
callers can count it. Tags (e.g. ``feature=search``) come from :data:`TAGS_HEADER` as
comma-separated ``key=value`` pairs, bounded in count and size.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel, Field

from infermeter.kernel.settings import Config, section

TENANT_HEADER = "x-infermeter-tenant"
SECRET_HEADER = "x-infermeter-gateway-secret"
TAGS_HEADER = "x-infermeter-tags"
KEY_ID_HEADER = "x-infermeter-key-id"
MAX_TAGS = 8
MAX_TAG_CHARS = 64


class TenancySettings(BaseModel):
    """The shared ``[tenancy]`` table read by the collector, throttle and gateway.

    ``keys`` maps the SHA-256 hex digest of an API key (``infermeter gateway hash-key KEY``)
    to ``{tenant, key_id, tier}``.
    """

    model_config = {"extra": "forbid"}

    shared_secret: str = ""
    default_tenant: str = "anonymous"
    keys: dict[str, dict[str, Any]] = Field(default_factory=dict)


def hash_key(api_key: str) -> str:
    """The stored form of an API key: hex SHA-256."""
    return hashlib.sha256(api_key.encode("utf-8")).hexdigest()


@dataclass(frozen=True, slots=True)
class KeyEntry:
    """What an API key maps to."""

    tenant: str
    key_id: str
    tier: str = ""


@dataclass(frozen=True, slots=True)
class Attribution:
    """The outcome of tenant resolution for one request."""

    tenant: str
    key_id: str = ""
    tier: str = ""
    source: str = "anonymous"  # trusted_header | api_key | anonymous
    untrusted_header: bool = False
    tags: dict[str, str] = field(default_factory=dict)
    trusted: bool = False  # the caller proved the shared secret (the gateway)


def parse_tags(raw: str | None) -> dict[str, str]:
    """Parse ``k=v,k2=v2``; pairs beyond the bounds or malformed are dropped."""
    tags: dict[str, str] = {}
    if not raw:
        return tags
    for part in raw.split(","):
        key, sep, value = part.partition("=")
        key, value = key.strip(), value.strip()
        if not sep or not key or len(key) > MAX_TAG_CHARS or len(value) > MAX_TAG_CHARS:
            continue
        tags[key] = value
        if len(tags) >= MAX_TAGS:
            break
    return tags


def bearer_token(authorization: str | None) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header, if any."""
    if not authorization:
        return None
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


class TenantResolver:
    """Resolve the tenant of a request from its headers (lower-case names)."""

    def __init__(
        self,
        shared_secret: str = "",
        key_map: Mapping[str, KeyEntry] | None = None,
        default_tenant: str = "anonymous",
    ) -> None:
        self._secret = shared_secret.encode("utf-8")
        self._keys: dict[str, KeyEntry] = dict(key_map or {})
        self.default_tenant = default_tenant

    @classmethod
    def from_config(
        cls, shared_secret: str, keys: Mapping[str, Mapping[str, str]], default_tenant: str
    ) -> TenantResolver:
        """Build from config: ``keys`` maps a SHA-256 hex digest to {tenant, key_id, tier}."""
        entries = {
            digest.lower(): KeyEntry(
                tenant=entry["tenant"],
                key_id=entry.get("key_id", digest[:12]),
                tier=entry.get("tier", ""),
            )
            for digest, entry in keys.items()
        }
        return cls(shared_secret, entries, default_tenant)

    def lookup_key(self, api_key: str) -> KeyEntry | None:
        """The entry for a clear-text API key, or None."""
        return self._keys.get(hash_key(api_key))

    def _trusted(self, presented: str | None) -> bool:
        if not self._secret or presented is None:
            return False
        return hmac.compare_digest(presented.encode("utf-8"), self._secret)

    def resolve(self, headers: Mapping[str, str]) -> Attribution:
        """Attribute a request; ``headers`` must have lower-case names."""
        tags = parse_tags(headers.get(TAGS_HEADER))
        claimed = headers.get(TENANT_HEADER)
        trusted = self._trusted(headers.get(SECRET_HEADER))
        if claimed and trusted:
            return Attribution(
                tenant=claimed,
                key_id=headers.get(KEY_ID_HEADER, ""),
                source="trusted_header",
                tags=tags,
                trusted=True,
            )
        untrusted = bool(claimed)
        token = bearer_token(headers.get("authorization"))
        entry = self.lookup_key(token) if token else None
        if entry is not None:
            return Attribution(
                tenant=entry.tenant,
                key_id=entry.key_id,
                tier=entry.tier,
                source="api_key",
                untrusted_header=untrusted,
                tags=tags,
                trusted=trusted,
            )
        return Attribution(
            tenant=self.default_tenant,
            untrusted_header=untrusted,
            source="anonymous",
            tags=tags,
            trusted=trusted,
        )


def tenancy_from_config(config: Config) -> tuple[TenantResolver, TenancySettings]:
    """The resolver and the validated ``[tenancy]`` table (errors name the field)."""
    tenancy = section(config, "tenancy", TenancySettings)
    keys = {digest: {k: str(v) for k, v in entry.items()} for digest, entry in tenancy.keys.items()}
    resolver = TenantResolver.from_config(tenancy.shared_secret, keys, tenancy.default_tenant)
    return resolver, tenancy


class MemoisedResolver:
    """A resolver remembering its answers, keyed on the headers resolution reads (resolving
    hashes API keys; a proxy sees the same few keys again and again)."""

    def __init__(self, resolver: TenantResolver, size: int = 4096) -> None:
        self._resolver = resolver
        self._size = size
        self._seen: dict[tuple[str | None, ...], Attribution] = {}

    def resolve(self, headers: Mapping[str, str]) -> Attribution:
        """The attribution of ``headers`` (lower-case names), from memory when seen before."""
        key = (
            headers.get("authorization"),
            headers.get(TENANT_HEADER),
            headers.get(SECRET_HEADER),
            headers.get(KEY_ID_HEADER),
            headers.get(TAGS_HEADER),
        )
        who = self._seen.get(key)
        if who is None:
            if len(self._seen) >= self._size:
                self._seen.clear()
            who = self._seen[key] = self._resolver.resolve(headers)
        return who
