"""KV blocks and the prefix cache: sharing, release, LRU eviction, the free-block invariant."""

from __future__ import annotations

from infermeter.serving.simulator.kv_cache import KvCache


def test_registered_blocks_are_found_shared_and_released_as_evictable() -> None:
    kv = KvCache(10)
    kv.allocate(3)  # a request computes 3 private blocks
    assert kv.register([11, 12, 13]) == 3  # they become cache entries
    assert kv.free == 7
    assert kv.lookup([11, 12, 99, 13], max_blocks=10) == [11, 12]  # prefix only
    assert kv.free_after_taking([11, 12]) == 7  # in use already: no new space needed
    kv.take([11, 12])  # a second request shares them
    kv.release(0, [11, 12, 13])  # the first one finishes
    assert kv.free == 8  # 13 is cached but free; 11 and 12 still held
    assert kv.cached_blocks == 3
    kv.release(0, [11, 12])
    assert kv.free == 10 and kv.usage() == 0.0
    assert kv.lookup([11, 12, 13], 3) == [11, 12, 13]  # still cached while nothing evicts
    assert kv.free_after_taking([11, 12, 13]) == 7  # taking cached-free blocks uses them


def test_allocation_evicts_least_recently_released_first() -> None:
    kv = KvCache(4)
    kv.allocate(2)
    kv.register([1, 2])
    kv.release(0, [1])
    kv.release(0, [2])  # 1 released before 2
    assert kv.free == 4 and kv.cached_blocks == 2
    kv.allocate(3)  # only one free block is not cached: evict the oldest cached one
    assert kv.lookup([1], 1) == [] and kv.lookup([2], 1) == [2]
    kv.allocate(1)
    assert kv.cached_blocks == 0 and kv.free == 0


def test_duplicate_blocks_are_deduplicated_on_register() -> None:
    kv = KvCache(8)
    kv.allocate(2)
    kv.register([5, 6])
    kv.allocate(2)  # a concurrent request computed the same two blocks itself
    assert kv.register([5, 6]) == 2
    assert kv.free == 6  # its copies went back
    kv.release(0, [5, 6])
    kv.release(0, [5, 6])
    assert kv.free == 8


def test_without_prefix_caching_nothing_is_shared() -> None:
    kv = KvCache(8, prefix_caching=False)
    kv.allocate(2)
    assert kv.register([1, 2]) == 0
    assert kv.lookup([1, 2], 2) == []
    kv.release(2, [])
    assert kv.free == 8
