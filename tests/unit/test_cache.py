"""deployments.runtime.cache.EmbeddingCache: LRU by entry count and bytes, counters."""

from __future__ import annotations

import pytest

from deployments.runtime.cache import CacheEntry, EmbeddingCache


def _entry(nbytes: int, tag: str = "") -> CacheEntry:
    return CacheEntry(features=f"features-{tag}", width=10, height=20, nbytes=nbytes)


def _keys(cache: EmbeddingCache) -> list[str]:
    return [k for k in "abcdefghij" if k in cache]


def test_evicts_least_recently_used_by_count():
    cache = EmbeddingCache(max_entries=3, max_bytes=10_000)
    for k in "abcd":
        assert cache.put(k, _entry(10, k)) is True
    assert _keys(cache) == ["b", "c", "d"]
    assert len(cache) == 3
    assert cache.evictions == 1
    assert cache.put("e", _entry(10, "e"))
    assert _keys(cache) == ["c", "d", "e"]
    assert cache.evictions == 2
    assert cache.stats()["bytes"] == 30


def test_evicts_least_recently_used_by_bytes():
    cache = EmbeddingCache(max_entries=100, max_bytes=100)
    cache.put("a", _entry(40))
    cache.put("b", _entry(30))
    cache.put("c", _entry(30))
    assert _keys(cache) == ["a", "b", "c"]
    assert cache.evictions == 0
    cache.put("d", _entry(1))  # 101 bytes: "a" goes
    assert _keys(cache) == ["b", "c", "d"]
    assert cache.stats()["bytes"] == 61
    assert cache.evictions == 1
    cache.put("e", _entry(70))  # 131 bytes: "b" and "c" go, 71 left
    assert _keys(cache) == ["d", "e"]
    assert cache.stats()["bytes"] == 71
    assert cache.evictions == 3


def test_entry_exactly_max_bytes_is_kept_alone():
    cache = EmbeddingCache(max_entries=5, max_bytes=100)
    cache.put("a", _entry(10))
    cache.put("b", _entry(20))
    assert cache.put("c", _entry(100)) is True
    assert _keys(cache) == ["c"]
    assert cache.evictions == 2
    assert cache.stats()["bytes"] == 100


def test_get_refreshes_recency():
    cache = EmbeddingCache(max_entries=3, max_bytes=10_000)
    for k in "abc":
        cache.put(k, _entry(1, k))
    got = cache.get("a")
    assert got is not None and got.features == "features-a"
    cache.put("d", _entry(1, "d"))
    assert _keys(cache) == ["a", "c", "d"]  # "b" was the least recently used
    cache.get("c")
    cache.put("e", _entry(1, "e"))
    assert _keys(cache) == ["c", "d", "e"]


def test_get_refreshes_recency_for_byte_eviction():
    cache = EmbeddingCache(max_entries=10, max_bytes=30)
    for k in "abc":
        cache.put(k, _entry(10, k))
    cache.get("a")
    cache.put("d", _entry(10, "d"))
    assert _keys(cache) == ["a", "c", "d"]


def test_replacing_a_key_refreshes_and_updates_bytes():
    cache = EmbeddingCache(max_entries=3, max_bytes=100)
    cache.put("a", _entry(10, "a1"))
    cache.put("b", _entry(10))
    cache.put("c", _entry(10))
    cache.put("a", _entry(50, "a2"))  # replaces, becomes most recent
    assert len(cache) == 3
    assert cache.stats()["bytes"] == 70
    assert cache.evictions == 0
    cache.put("d", _entry(10))
    assert _keys(cache) == ["a", "c", "d"]
    assert cache.get("a").features == "features-a2"


def test_counters_exact():
    cache = EmbeddingCache(max_entries=2, max_bytes=1000)
    assert cache.get("a") is None
    cache.put("a", _entry(1))
    cache.put("b", _entry(1))
    assert cache.get("a") is not None
    assert cache.get("a") is not None
    assert cache.get("b") is not None
    assert cache.get("zz") is None
    cache.put("c", _entry(1))  # evicts "a" (least recent after get("b"))
    assert cache.get("a") is None
    assert cache.stats() == {
        "entries": 2,
        "bytes": 2,
        "max_entries": 2,
        "max_bytes": 1000,
        "hits": 3,
        "misses": 3,
        "evictions": 1,
    }
    assert (cache.hits, cache.misses, cache.evictions) == (3, 3, 1)


def test_entry_larger_than_max_bytes_not_stored():
    cache = EmbeddingCache(max_entries=5, max_bytes=100)
    cache.put("a", _entry(10))
    assert cache.put("big", _entry(101)) is False
    assert "big" not in cache
    assert _keys(cache) == ["a"]
    assert cache.stats()["bytes"] == 10
    assert cache.evictions == 0
    assert cache.get("big") is None


def test_too_big_replacement_drops_old_value():
    cache = EmbeddingCache(max_entries=5, max_bytes=100)
    cache.put("a", _entry(10))
    assert cache.put("a", _entry(1000)) is False
    assert "a" not in cache
    assert cache.stats()["bytes"] == 0


def test_pop_is_not_an_eviction():
    cache = EmbeddingCache(max_entries=5, max_bytes=100)
    cache.put("a", _entry(10, "a"))
    cache.put("b", _entry(20, "b"))
    popped = cache.pop("a")
    assert popped is not None and popped.features == "features-a"
    assert cache.pop("a") is None
    assert cache.pop("missing") is None
    assert "a" not in cache
    assert len(cache) == 1
    assert cache.evictions == 0
    assert cache.stats()["bytes"] == 20
    assert (cache.hits, cache.misses) == (0, 0)


def test_discard_removes_only_the_same_entry():
    """A failed encode drops its own entry, never a newer one a retry put under the same key."""
    cache = EmbeddingCache(max_entries=5, max_bytes=100)
    failed, retried = _entry(10, "failed"), _entry(10, "retried")
    cache.put("a", failed)
    cache.put("a", retried)
    assert cache.discard("a", failed) is False
    assert "a" in cache and cache.stats()["bytes"] == 10
    assert cache.discard("a", retried) is True
    assert "a" not in cache and cache.stats()["bytes"] == 0
    assert cache.discard("a", retried) is False
    assert (cache.hits, cache.misses, cache.evictions) == (0, 0, 0)


@pytest.mark.parametrize("max_entries, max_bytes", [(0, 10), (-1, 10), (10, 0), (10, -5)])
def test_bounds_below_one_rejected(max_entries, max_bytes):
    with pytest.raises(ValueError):
        EmbeddingCache(max_entries=max_entries, max_bytes=max_bytes)


def test_bounds_of_one_accepted():
    cache = EmbeddingCache(max_entries=1, max_bytes=1)
    assert cache.put("a", _entry(1))
    assert cache.put("b", _entry(1))
    assert _keys(cache) == ["b"]
    assert cache.evictions == 1
