"""Where the policy in force comes from, and how it changes without a restart.

Sources, latest wins: the policy file (re-read when its modification time changes), and the
admin API (``PUT /v1/policy``). Every accepted policy is published to storage with a new
version, and every replica adopts a newer stored version on its next poll, so one change
reaches the whole fleet on Redis. An invalid document is rejected with the field at fault
and the previous policy stays in force.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
from collections.abc import Callable
from typing import Any

from infermeter.throttle.errors import PolicyError, StorageError
from infermeter.throttle.policy import Policy, default_policy, load_policy_text, parse_policy
from infermeter.throttle.storage.base import Storage

log = logging.getLogger(__name__)


def parse_document(text: str, version: int = 0, source: str = "") -> Policy:
    """A policy from TOML, or from JSON when the text is a JSON object."""
    if text.lstrip().startswith("{"):
        try:
            data: Any = json.loads(text)
        except json.JSONDecodeError as exc:
            raise PolicyError("", f"invalid JSON: {exc}") from exc
        if not isinstance(data, dict):
            raise PolicyError("", "a policy must be an object")
        return parse_policy(data, version=version, source=source)
    return load_policy_text(text, version=version, source=source)


class PolicyManager:
    """Holds the policy in force and applies changes to ``on_change`` subscribers."""

    def __init__(self, storage: Storage, path: str = "", interval_s: float = 5.0) -> None:
        self._storage = storage
        self.path = path
        self.interval_s = interval_s
        self.current: Policy = default_policy()
        self.text = ""
        self.rejected = 0
        self.last_error = ""
        self._mtime: float | None = None
        self._listeners: list[Callable[[Policy], None]] = []

    def subscribe(self, listener: Callable[[Policy], None]) -> None:
        self._listeners.append(listener)

    def _install(self, policy: Policy, text: str) -> None:
        self.current = policy
        self.text = text
        for listener in self._listeners:
            listener(policy)

    def load_file(self) -> Policy:
        """Read and validate the policy file (startup): raises PolicyError when invalid."""
        with open(self.path, encoding="utf-8") as handle:
            text = handle.read()
        self._mtime = os.stat(self.path).st_mtime
        policy = parse_document(text, source=self.path)
        self._install(policy, text)
        return policy

    async def apply(self, text: str, source: str, require: tuple[str, ...] = ()) -> Policy:
        """Validate, install and publish a policy; raises PolicyError and keeps the old one.

        ``require`` names top-level keys the document must set (the admin API asks for a
        complete policy: an empty or partial body would silently lift every limit).
        """
        try:
            policy = parse_document(text, source=source)
            given = policy.doc.model_fields_set
            for key in require:
                if key not in given or not getattr(policy.doc, key):
                    raise PolicyError(key, "required: send the complete policy, not a part")
        except PolicyError as exc:
            self.rejected += 1
            self.last_error = str(exc)
            raise
        version = await self._storage.put_policy(text)
        policy.version = version
        self._install(policy, text)
        log.info("policy version %d in force (from %s)", version, source)
        return policy

    async def publish_initial(self) -> None:
        """Publish the startup policy so other replicas follow it."""
        if self.text:
            self.current.version = await self._storage.put_policy(self.text)

    async def poll(self) -> None:
        """One reload check: the file's mtime, then the shared stored version."""
        if self.path:
            try:
                mtime = os.stat(self.path).st_mtime
            except OSError as exc:
                self.last_error = f"policy file: {exc}"
                mtime = None
            if mtime is not None and mtime != self._mtime:
                self._mtime = mtime
                try:
                    with open(self.path, encoding="utf-8") as handle:
                        await self.apply(handle.read(), self.path)
                except PolicyError as exc:
                    log.error("policy file %s rejected, previous policy kept: %s", self.path, exc)
        stored = await self._storage.get_policy()
        if stored is not None and stored[0] > self.current.version:
            version, text = stored
            try:
                policy = parse_document(text, version=version, source="shared storage")
            except PolicyError as exc:
                self.rejected += 1
                self.last_error = str(exc)
                return
            self._install(policy, text)

    async def run(self) -> None:
        """Poll forever (cancel the task to stop)."""
        while True:
            await asyncio.sleep(self.interval_s)
            try:
                await self.poll()
            except StorageError as exc:
                log.warning("policy poll: %s", exc)
