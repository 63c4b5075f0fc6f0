"""KV-cache blocks of one engine, with vLLM-style automatic prefix caching.

A request holds *private* blocks (its own tokens) and *shared* blocks (full prompt blocks
whose hash is in the prefix cache, possibly held by other requests too). When a request's
prompt blocks are computed they are registered under their chained hash; when it finishes
they stay cached but become evictable (they count as free, as in vLLM), and the least
recently released are evicted first when an allocation needs their space. A new request
whose first prompt blocks hash the same reuses them instead of computing them again.

Invariant: ``len(evictable) <= free``; a block in use is never evicted.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence


class KvCache:
    """Free-block accounting and the prefix cache of one engine."""

    def __init__(self, total_blocks: int, *, prefix_caching: bool = True) -> None:
        self.total = total_blocks
        self.free = total_blocks  # includes cached blocks nobody holds
        self.prefix_caching = prefix_caching
        self._refs: dict[int, int] = {}  # block hash -> running requests holding it
        self._evictable: OrderedDict[int, None] = OrderedDict()  # cached, unheld; LRU first

    def usage(self) -> float:
        """Fraction of blocks in use (vLLM's kv_cache_usage_perc)."""
        return 1.0 - self.free / self.total

    @property
    def cached_blocks(self) -> int:
        return len(self._refs) + len(self._evictable)

    def lookup(self, hashes: Sequence[int], max_blocks: int) -> list[int]:
        """The longest cached prefix of ``hashes`` (at most ``max_blocks`` blocks)."""
        if not self.prefix_caching:
            return []
        hits: list[int] = []
        refs, evictable = self._refs, self._evictable
        for block in hashes[:max_blocks]:
            if block not in refs and block not in evictable:
                break
            hits.append(block)
        return hits

    def free_after_taking(self, hits: Sequence[int]) -> int:
        """Blocks left for new allocations once ``hits`` are held."""
        return self.free - sum(1 for block in hits if block not in self._refs)

    def take(self, hits: Sequence[int]) -> None:
        """Hold cached blocks (from :meth:`lookup`) for a request."""
        for block in hits:
            if block in self._refs:
                self._refs[block] += 1
            else:
                del self._evictable[block]
                self._refs[block] = 1
                self.free -= 1

    def allocate(self, count: int) -> None:
        """Use ``count`` free blocks (the caller checked they exist), evicting if needed."""
        self.free -= count
        evictable = self._evictable
        while len(evictable) > self.free:
            evictable.popitem(last=False)

    def register(self, hashes: Sequence[int]) -> int:
        """Put a request's newly computed full prompt blocks in the cache.

        Returns how many of its private blocks became shared ones (all of them: a block
        another request already cached is deduplicated and the private copy freed).
        """
        if not self.prefix_caching:
            return 0
        refs, evictable = self._refs, self._evictable
        for block in hashes:
            if block in refs:
                refs[block] += 1
                self.free += 1  # our copy is a duplicate: give it back
            elif block in evictable:
                del evictable[block]  # take the cached copy, give ours back: free unchanged
                refs[block] = 1
            else:
                refs[block] = 1
        return len(hashes)

    def release(self, private: int, shared: Sequence[int]) -> None:
        """Give back a request's blocks; its shared ones stay cached until evicted."""
        self.free += private
        refs = self._refs
        for block in shared:
            held = refs[block] - 1
            if held:
                refs[block] = held
            else:
                del refs[block]
                self._evictable[block] = None
                self.free += 1
