"""A collection as pages of points: the methods of :class:`deployments.runtime.vectorstore.ExampleStore`
that scroll through a collection (counts per label, pages of ids, export with the vectors) and the import
that upserts such pages under their own ids. The file format of export and import is
:mod:`deployments.runtime.example_file`.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import numpy as np

from deployments.errors import InvalidRequest
from deployments.runtime.example_file import Examples
from deployments.runtime.store_checks import (
    MAX_DIM,
    MAX_PAGE,
    as_vectors,
    check_collection_name,
    check_label,
    check_point_id,
    check_point_ids,
    example_payloads,
)

_SCROLL_PAGE = 1000
#: Examples per page of an export.
TRANSFER_PAGE = 256
#: Points per Qdrant upsert of an import, the store's lock held for each: the embedded engine commits
#: each point on its own (~1-20 ms on a disk), so other calls wait at most one batch.
IMPORT_BATCH = 32


class CollectionPages:
    """Counting, listing, export and import, on the store's lock, client and collection helpers
    (``_lock``, ``_qdrant()``, ``_dimension``, ``_ensure_collection``, ``_upsert``): a base class of
    ``ExampleStore``, not used alone."""

    def counts(self, collection: str) -> dict[str, int]:
        """Number of examples per label, sorted by label (a scroll over the ``"label"`` payloads).

        Raises:
            UnknownCollection: no such collection.
        """
        check_collection_name(collection)
        out: dict[str, int] = {}
        offset = None
        with self._lock:
            self._dimension(collection)
            while True:
                points, offset = self._qdrant().scroll(
                    collection_name=collection,
                    limit=_SCROLL_PAGE,
                    offset=offset,
                    with_payload=["label"],
                    with_vectors=False,
                )
                for p in points:
                    label = str((p.payload or {}).get("label", ""))
                    out[label] = out.get(label, 0) + 1
                if offset is None:
                    break
        return dict(sorted(out.items()))

    def list_ids(
        self, collection: str, label: str | None = None, offset: str | None = None, limit: int = 100
    ) -> tuple[list[dict], str | None]:
        """One page of example ids, in id order.

        Args:
            collection: collection name.
            label: only examples of this label (None: all).
            offset: the ``next_offset`` of the previous page (None: the first page).
            limit: items per page, 1..1000.

        Returns:
            ``(items, next_offset)``: items ``{"id": str, "label": str}``; ``next_offset`` is None on the last page.

        Raises:
            ValueError: invalid name, label, offset or limit.
            UnknownCollection: no such collection.
        """
        from qdrant_client import models

        offset = _page_args(collection, offset, limit)
        flt = None
        if label is not None:
            flt = models.Filter(
                must=[models.FieldCondition(key="label", match=models.MatchValue(value=check_label(label)))]
            )
        with self._lock:
            self._dimension(collection)
            points, next_offset = self._qdrant().scroll(
                collection_name=collection,
                scroll_filter=flt,
                limit=int(limit),
                offset=offset,
                with_payload=["label"],
                with_vectors=False,
            )
        items = [{"id": str(p.id), "label": str((p.payload or {}).get("label", ""))} for p in points]
        return items, None if next_offset is None else str(next_offset)

    def export_page(
        self, collection: str, offset: str | None = None, limit: int = TRANSFER_PAGE
    ) -> tuple[Examples, str | None]:
        """One page of a collection's examples with their vectors, in id order.

        Args:
            collection: collection name.
            offset: the ``next_offset`` of the previous page (None: the first page).
            limit: examples per page, 1..1000.

        Returns:
            ``(page, next_offset)``: ``page.vectors`` (n, D) float32, L2-normalised (the direction cosine
            search uses), payloads without ``"label"``; ``next_offset`` is None on the last page.

        Raises:
            ValueError: invalid name, offset or limit.
            UnknownCollection: no such collection.
        """
        offset = _page_args(collection, offset, limit)
        with self._lock:
            dim = self._dimension(collection)
            points, next_offset = self._qdrant().scroll(
                collection_name=collection, limit=int(limit), offset=offset, with_payload=True, with_vectors=True
            )
        ids, labels, payloads = [], [], []
        for p in points:
            extra = dict(p.payload or {})
            ids.append(str(p.id))
            labels.append(str(extra.pop("label", "")))
            payloads.append(extra)
        vectors = np.asarray([p.vector for p in points], np.float32).reshape(len(points), dim)
        # unit length, whatever the backend: the embedded engine normalises cosine vectors in memory on
        # upsert and at search time, but keeps them on disk (so after a reopen) as they were given
        vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
        return Examples(ids, vectors, labels, payloads), None if next_offset is None else str(next_offset)

    def export_points(self, collection: str, page_size: int = TRANSFER_PAGE) -> Iterator[Examples]:
        """Every example of a collection, a page at a time (see :meth:`export_page`).

        The lock is taken per page, so other calls interleave; examples added or deleted meanwhile may or
        may not be in the pages (it is not a snapshot).

        Raises:
            UnknownCollection: no such collection (on the first page).
        """
        offset = None
        while True:
            page, offset = self.export_page(collection, offset, page_size)
            yield page
            if offset is None:
                return

    def import_points(
        self, collection: str, examples: Examples, dim: int | None = None, embedder: str | None = None
    ) -> dict:
        """Store examples under their own ids (an upsert), creating the collection if needed.

        Everything is checked before anything is written, and a collection of another dimension is
        refused untouched. Importing the same examples again replaces them with themselves: the
        collection ends the same. Points go to Qdrant in batches of :data:`IMPORT_BATCH`, the lock
        handed on between batches, so searches and adds interleave with a large import.

        Args:
            collection: the collection to write to.
            examples: N examples; ``vectors`` (N, D) float32; distinct UUID ids.
            dim: the collection's dimension D (needed when N is 0; else it must equal D).
            embedder: identity of the embedder that made the vectors: recorded by a new collection (or one
                that records none), checked against the one it records; None: neither.

        Returns:
            ``{"imported": N, "created": bool (the collection was new), "dim": D, "count": examples
            in the collection afterwards}``.

        Raises:
            ValueError: invalid name, ids, vectors, labels or payloads, or ``dim`` not D.
            DimensionMismatch: the collection exists with another dimension.
            EmbedderMismatch: the collection exists with another embedder (it is left untouched).
        """
        check_collection_name(collection)
        n = len(examples)
        if n:
            x = as_vectors(examples.vectors, "vectors", dim=dim)
            bodies = example_payloads(examples.labels, examples.payloads, n)
            point_ids = check_point_ids(examples.ids, n)
            dim = x.shape[1]
        elif isinstance(dim, bool) or not isinstance(dim, (int, np.integer)) or not 1 <= dim <= MAX_DIM:
            raise InvalidRequest(f"dim must be an integer in 1..{MAX_DIM}; got {dim!r}", "dim")
        with self._lock:
            created = not self._qdrant().collection_exists(collection_name=collection)
            self._ensure_collection(collection, int(dim), embedder)
        for start in range(0, n, IMPORT_BATCH):
            stop = start + IMPORT_BATCH
            with self._lock:
                self._upsert(collection, point_ids[start:stop], x[start:stop], bodies[start:stop])
            time.sleep(0.001)  # a thread waiting for the lock gets it now (a lock is not fair: we would win it back)
        with self._lock:
            count = self._qdrant().count(collection_name=collection, exact=True).count
        return {"imported": n, "created": created, "dim": int(dim), "count": int(count)}


def _page_args(collection: str, offset: str | None, limit: int) -> str | None:
    """Check a page request's collection name and ``limit`` (an integer in 1..``MAX_PAGE``); the
    ``offset`` (a point id) checked, or None.

    Raises:
        ValueError: invalid name, offset or limit.
    """
    check_collection_name(collection)
    if isinstance(limit, bool) or not isinstance(limit, (int, np.integer)) or not 1 <= limit <= MAX_PAGE:
        raise InvalidRequest(f"limit must be an integer in 1..{MAX_PAGE}; got {limit!r}", "limit")
    return None if offset is None else check_point_id(offset, "offset")
