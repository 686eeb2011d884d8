"""Bounded LRU cache of image embeddings, keyed by ``image_id``."""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Any


@dataclass
class CacheEntry:
    """One cached image: its features (in a decoder replica, the task of the encode that makes them) and
    what is needed without decoding the image.

    Attributes:
        features: the features or a reference to them.
        image: the decoded pixels or a reference to them (the fader needs them), or None.
        width, height: image size in pixels.
        nbytes: bytes the entry takes (features, plus pixels where held).
    """

    features: Any
    width: int
    height: int
    nbytes: int
    image: Any = None


class EmbeddingCache:
    """LRU over :class:`CacheEntry` bounded by entry count and total bytes, with hit/miss counters.

    Not thread-safe: one per asyncio event loop (a decoder replica's).

    Args:
        max_entries: most entries kept (>= 1).
        max_bytes: most feature bytes kept (>= 1); an entry larger than this is not cached.

    Raises:
        ValueError: a bound below 1.
    """

    def __init__(self, max_entries: int, max_bytes: int) -> None:
        if max_entries < 1:
            raise ValueError("max_entries must be greater than 0")
        if max_bytes < 1:
            raise ValueError("max_bytes must be greater than 0")
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self._entries: OrderedDict[str, CacheEntry] = OrderedDict()
        self._bytes = 0
        self.hits = 0
        self.misses = 0
        self.evictions = 0

    def get(self, key: str) -> CacheEntry | None:
        """The entry for ``key`` (now most recently used), counting a hit or a miss."""
        entry = self._entries.get(key)
        if entry is None:
            self.misses += 1
            return None
        self._entries.move_to_end(key)
        self.hits += 1
        return entry

    def put(self, key: str, entry: CacheEntry) -> bool:
        """Insert or replace ``key``, evicting least recently used entries; False if too big to keep."""
        self.pop(key)
        if entry.nbytes > self.max_bytes:
            return False
        self._entries[key] = entry
        self._bytes += entry.nbytes
        while len(self._entries) > self.max_entries or self._bytes > self.max_bytes:
            _, old = self._entries.popitem(last=False)
            self._bytes -= old.nbytes
            self.evictions += 1
        return True

    def pop(self, key: str) -> CacheEntry | None:
        """Remove ``key`` if present (not counted as an eviction)."""
        entry = self._entries.pop(key, None)
        if entry is not None:
            self._bytes -= entry.nbytes
        return entry

    def discard(self, key: str, entry: CacheEntry) -> bool:
        """Remove ``key`` only if it still holds ``entry`` (not a newer entry put since); True if removed."""
        if self._entries.get(key) is not entry:
            return False
        self.pop(key)
        return True

    @property
    def nbytes(self) -> int:
        """Feature bytes held now."""
        return self._bytes

    def __contains__(self, key: str) -> bool:
        return key in self._entries

    def __len__(self) -> int:
        return len(self._entries)

    def stats(self) -> dict:
        """``{"entries", "bytes", "max_entries", "max_bytes", "hits", "misses", "evictions"}``."""
        return {
            "entries": len(self._entries),
            "bytes": self._bytes,
            "max_entries": self.max_entries,
            "max_bytes": self.max_bytes,
            "hits": self.hits,
            "misses": self.misses,
            "evictions": self.evictions,
        }
