"""Few-shot example store: one facade over Qdrant's embedded local mode (``:memory:`` or a folder) and a
Qdrant server, all through the same ``qdrant_client.QdrantClient`` calls, so the same tests run against each.

Qdrant locks a local folder for one client (one process) at a time: the ``Retriever`` deployment must run
as ONE replica in local mode; :meth:`ExampleStore.close` releases the lock. Any number of replicas may
share a server. The rules on inputs are in :mod:`deployments.runtime.store_checks`.

A collection holds one single-vector cosine index per user-named example set (e.g. one per project). Each
point's id is a UUID string (a new UUID4 unless the caller gives it) and its payload holds ``"label"`` plus
any extras given to :meth:`add`.

**Durability.** Writes return once they are stored (``wait=True``). In the local mode qdrant-client writes
each point to the folder's SQLite file, in its own committed transaction (``synchronous=FULL``), *before*
it applies the point in memory, so a write that returned survives the process being killed right after;
a process killed mid-write leaves a prefix of its points, each whole (``tests/unit/test_example_transfer.py``
kills a writer, ``tests/integration/test_retriever_kill.py`` the Retriever replica). The folder's lock
is an ``flock`` that the kernel drops with the dead process, so the next client opens the store.

**Embedder.** Each collection records the identity of the embedder that made its vectors
(:func:`models.embedders.embedder_identity`) in the collection's metadata under :data:`EMBEDDER_KEY`,
set by its first write that names one. Collection metadata is kept by both engines (the embedded engine
in its ``meta.json``, a server from Qdrant 1.16) and stays outside the points, so counts, pages, exports
and searches never see it. A write or search that names another embedder is refused with
:class:`deployments.errors.EmbedderMismatch` (409 ``embedder_mismatch``), even at the same dimension; a
call that names none is not checked. A collection made before collections recorded their embedder adopts
the embedder of its next write that names one, with one log line.

**Export and import** (:mod:`deployments.runtime.store_pages`) page through a collection with its vectors,
and upsert such pages under their own ids, so an import is idempotent.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from deployments.errors import DimensionMismatch, InvalidRequest, UnknownCollection
from deployments.runtime.store_checks import (
    MAX_DIM,
    StoreError,
    as_vectors,
    check_collection_name,
    check_embedder,
    check_point_id,
    check_point_ids,
    check_top_k,
    check_writable,
    example_payloads,
    store_settings,
)
from deployments.runtime.store_pages import TRANSFER_PAGE, CollectionPages
from models.knn import Neighbor

__all__ = ["EMBEDDER_KEY", "TRANSFER_PAGE", "ExampleStore"]

#: The collection metadata key of the identity of the embedder that made its vectors.
EMBEDDER_KEY = "samgraph_embedder"

log = logging.getLogger("samgraph.deployments")


class ExampleStore(CollectionPages):
    """Labelled example vectors in Qdrant, searched by cosine similarity. Counting, listing, export and
    import page through a collection: the methods of :class:`deployments.runtime.store_pages.CollectionPages`.

    Give exactly one of ``path``, ``url`` or ``in_memory=True``. All methods are blocking; in the local
    modes calls are serialised by a lock (the embedded engine is not thread-safe), so the store may be used
    from ``asyncio.to_thread`` workers.

    Args:
        path: folder of the embedded local mode (created if missing). One client per folder at a time.
        url: Qdrant server URL, e.g. ``http://qdrant:6333``.
        api_key: API key of the server (only with ``url``).
        in_memory: the embedded local mode in memory, nothing persisted.

    Raises:
        ValueError: no backend or several backends given, or ``api_key`` without ``url``.
        StoreError: the data dir cannot be created or written, is locked by another client, or the server
            cannot be reached.
    """

    def __init__(
        self,
        *,
        path: str | os.PathLike | None = None,
        url: str | None = None,
        api_key: str | None = None,
        in_memory: bool = False,
    ) -> None:
        from qdrant_client import QdrantClient  # heavy; kept out of import time

        given = [
            name for name, on in (("path", path is not None), ("url", url is not None), ("in_memory", in_memory)) if on
        ]
        if len(given) != 1:
            raise ValueError(
                f"give exactly one of path=<folder> (Qdrant local), url=<server URL> (Qdrant server) or "
                f"in_memory=True; got {given or 'none'}"
            )
        if api_key is not None and url is None:
            raise ValueError("api_key is only used with url=<server URL>")
        self._closed = False
        self.location: str
        if in_memory:
            self._backend = "memory"
            self.location = ":memory:"
            self._client = QdrantClient(location=":memory:", force_disable_check_same_thread=True)
        elif path is not None:
            self._backend = "local"
            folder = Path(path).expanduser()
            self.location = str(folder)
            check_writable(folder)
            try:
                self._client = QdrantClient(path=str(folder), force_disable_check_same_thread=True)
            except RuntimeError as exc:  # the folder's lock is held by another client
                raise StoreError(
                    f"data dir {folder} is in use: {exc} (Qdrant local mode allows one process per folder; run "
                    "the retriever as one replica or use a Qdrant server)"
                ) from exc
            except OSError as exc:
                raise StoreError(f"data dir {folder} is not usable: {exc}") from exc
        else:
            if not isinstance(url, str) or not url.strip():
                raise ValueError(f"url must be a non-empty server URL; got {url!r}")
            self._backend = "server"
            self.location = url
            self._client = QdrantClient(url=url, api_key=api_key)
            try:
                self._client.get_collections()
            except Exception as exc:
                self._client.close()
                raise StoreError(f"cannot reach the Qdrant server at {url}: {exc}") from exc
        # the embedded engine mutates numpy arrays and a sqlite file: one call at a time
        self._lock: Any = threading.RLock() if self._backend != "server" else contextlib.nullcontext()

    @classmethod
    def from_env(cls) -> ExampleStore:
        """The store named by the environment.

        ``SAMGRAPH_QDRANT_URL`` (and ``SAMGRAPH_QDRANT_API_KEY``) -> a Qdrant server; otherwise the local mode
        in ``$SAMGRAPH_DATA_DIR/qdrant`` (default ``~/.local/share/samgraph/qdrant``).
        """
        return cls(**store_settings())

    @property
    def backend(self) -> str:
        """``"local"`` (embedded, on disk), ``"memory"`` (embedded, in memory) or ``"server"``."""
        return self._backend

    def __repr__(self) -> str:
        return f"ExampleStore(backend={self._backend!r}, location={self.location!r})"

    def __enter__(self) -> ExampleStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the client; in local mode this releases the folder's lock. Safe to call twice."""
        if self._closed:
            return
        with self._lock:
            self._closed = True
            self._client.close()

    # -- collections -----------------------------------------------------------------------------------------

    def collections(self) -> list[str]:
        """Names of all collections, sorted."""
        with self._lock:
            return sorted(c.name for c in self._qdrant().get_collections().collections)

    def dimension(self, name: str) -> int:
        """Vector dimension of collection ``name``.

        Raises:
            ValueError: invalid name, or a collection not made by this store (named vectors, not cosine).
            UnknownCollection: no such collection.
        """
        check_collection_name(name)
        with self._lock:
            return self._dimension(name)

    def embedder(self, name: str) -> str | None:
        """The identity of the embedder that made the vectors of collection ``name``, or None when it
        records none (made before collections recorded it, or only written without naming one).

        Raises:
            UnknownCollection: no such collection.
        """
        check_collection_name(name)
        with self._lock:
            return self._params(name)[1]

    def vector_space(self, name: str) -> tuple[int, str | None]:
        """``(dim, embedder)`` of collection ``name``: :meth:`dimension` and :meth:`embedder` in one read.

        Raises:
            UnknownCollection: no such collection.
        """
        check_collection_name(name)
        with self._lock:
            return self._params(name)

    def collection_info(self, name: str) -> dict:
        """``{"dim": int, "count": int, "embedder": str | None}`` of collection ``name`` (exact count;
        ``embedder`` as :meth:`embedder`).

        Raises:
            UnknownCollection: no such collection.
        """
        check_collection_name(name)
        with self._lock:
            dim, embedder = self._params(name)
            count = self._qdrant().count(collection_name=name, exact=True).count
        return {"dim": dim, "count": int(count), "embedder": embedder}

    def ensure_collection(self, name: str, dim: int, embedder: str | None = None) -> None:
        """Create collection ``name`` for ``dim``-d cosine vectors of ``embedder`` unless it exists.

        Args:
            name: collection name.
            dim: vector dimension.
            embedder: identity of the embedder whose vectors it holds, or None (not recorded, not checked).

        Raises:
            ValueError: invalid name or ``dim``.
            DimensionMismatch: it exists with another dimension (it is left untouched).
            EmbedderMismatch: it records another embedder (it is left untouched).
        """
        check_collection_name(name)
        if isinstance(dim, bool) or not isinstance(dim, (int, np.integer)) or not 1 <= dim <= MAX_DIM:
            raise InvalidRequest(f"dim must be an integer in 1..{MAX_DIM}; got {dim!r}", "dim")
        with self._lock:
            self._ensure_collection(name, int(dim), embedder)

    # -- examples --------------------------------------------------------------------------------------------

    def add(
        self,
        collection: str,
        vectors: np.ndarray,
        labels: Sequence[str],
        payloads: Sequence[dict] | None = None,
        ids: Sequence[str] | None = None,
        embedder: str | None = None,
    ) -> list[str]:
        """Store labelled example vectors, creating the collection on first use.

        Written with ``wait=True``: a read after ``add`` returns sees the new examples, and in the local
        mode they are on disk (see the module's "Durability").

        Args:
            collection: collection name, 1-64 characters of ``[A-Za-z0-9_-]``.
            vectors: (N, D) float32 embeddings, N >= 1, finite, no zero rows (stored L2-normalised by Qdrant).
            labels: N class labels, each 1-100 characters after stripping (stored stripped).
            payloads: N JSON-serialisable dicts of extra fields (e.g. ``image_id``, ``bbox_xyxy``,
                ``created_at``), stored beside ``"label"``; they may not contain the key ``"label"``.
            ids: N distinct UUID strings to store the examples under, or None for new UUID4s. An example
                whose id is already stored is replaced, so a write retried with the same ids stores each
                example once.
            embedder: identity of the embedder that made ``vectors``
                (:func:`models.embedders.embedder_identity`): recorded by a new collection (or one that
                records none), checked against the one it records. None: neither.

        Returns:
            The N ids (UUID strings, canonical form), in the order of ``vectors``.

        Raises:
            ValueError: invalid name, vectors, labels, payloads or ids.
            DimensionMismatch: the collection holds vectors of another dimension.
            EmbedderMismatch: the collection holds vectors of another embedder (nothing is written).
        """
        check_collection_name(collection)
        x = as_vectors(vectors, "vectors")
        bodies = example_payloads(labels, payloads, len(x))
        point_ids = check_point_ids(ids, len(x))
        with self._lock:
            self._ensure_collection(collection, x.shape[1], embedder)
            self._upsert(collection, point_ids, x, bodies)
        return point_ids

    def search(
        self, collection: str, queries: np.ndarray, top_k: int, embedder: str | None = None
    ) -> list[list[Neighbor]]:
        """Cosine k-NN of each query among the collection's examples, in one batched Qdrant request.

        Args:
            collection: collection name.
            queries: (M, D) float32 query embeddings, finite, no zero rows; D = the collection's dimension.
            top_k: neighbours per query, 1..100.
            embedder: identity of the embedder that made ``queries``, checked against the collection's;
                None: not checked.

        Returns:
            M lists of up to ``top_k`` :class:`Neighbor`, best (highest cosine similarity) first.

        Raises:
            ValueError: invalid name, queries or ``top_k``.
            UnknownCollection: no such collection.
            DimensionMismatch: D differs from the collection's dimension.
            EmbedderMismatch: the collection holds vectors of another embedder.
        """
        from qdrant_client import models

        check_collection_name(collection)
        top_k = check_top_k(top_k)
        q = as_vectors(queries, "queries")
        with self._lock:
            held, held_embedder = self._params(collection)
            if q.shape[1] != held:
                raise DimensionMismatch(f"collection {collection!r} holds {held}-d vectors, got {q.shape[1]}-d queries")
            check_embedder(collection, held_embedder, embedder, "queries")
            if len(q) == 0:
                return []
            requests = [models.QueryRequest(query=row, limit=top_k, with_payload=["label"]) for row in q.tolist()]
            responses = self._qdrant().query_batch_points(collection_name=collection, requests=requests)
        assert len(responses) == len(q)
        return [
            [
                Neighbor(id=str(p.id), label=str((p.payload or {}).get("label", "")), score=float(p.score))
                for p in r.points
            ]
            for r in responses
        ]

    def delete(self, collection: str, id: str) -> bool:
        """Delete one example; True if it existed, False if not.

        Raises:
            ValueError: invalid name or an ``id`` that is not a UUID string.
            UnknownCollection: no such collection.
        """
        from qdrant_client import models

        check_collection_name(collection)
        point_id = check_point_id(id)
        with self._lock:
            self._dimension(collection)
            client = self._qdrant()
            if not client.retrieve(collection_name=collection, ids=[point_id], with_payload=False, with_vectors=False):
                return False
            client.delete(collection_name=collection, points_selector=models.PointIdsList(points=[point_id]), wait=True)
        return True

    # -- internals (callers hold the lock) -------------------------------------------------------------------

    def _upsert(self, collection: str, ids: list[str], x: np.ndarray, bodies: list[dict]) -> None:
        from qdrant_client import models

        points = [
            models.PointStruct(id=pid, vector=vec, payload=body) for pid, vec, body in zip(ids, x.tolist(), bodies)
        ]
        self._qdrant().upsert(collection_name=collection, points=points, wait=True)


    def _qdrant(self):
        if self._closed:
            raise StoreError(f"the example store at {self.location} is closed")
        return self._client

    def _dimension(self, name: str) -> int:
        return self._params(name)[0]

    def _params(self, name: str) -> tuple[int, str | None]:
        """``(dim, recorded embedder or None)`` of a collection, from one ``get_collection``."""
        client = self._qdrant()
        try:
            info = client.get_collection(collection_name=name)
        except Exception as exc:
            if not client.collection_exists(collection_name=name):
                raise UnknownCollection(name) from exc
            raise
        params = info.config.params.vectors
        size = getattr(params, "size", None)
        distance = getattr(params, "distance", None)
        if size is None or getattr(distance, "value", distance) != "Cosine":
            raise InvalidRequest(
                f"collection {name!r} is not a single-vector cosine collection made by samgraph", "collection"
            )
        embedder = (getattr(info.config, "metadata", None) or {}).get(EMBEDDER_KEY)
        return int(size), embedder if isinstance(embedder, str) and embedder else None

    def _ensure_collection(self, name: str, dim: int, embedder: str | None = None) -> None:
        from qdrant_client import models

        client = self._qdrant()
        if not client.collection_exists(collection_name=name):
            try:
                client.create_collection(
                    collection_name=name,
                    vectors_config=models.VectorParams(size=dim, distance=models.Distance.COSINE),
                    metadata={EMBEDDER_KEY: embedder} if embedder else None,
                )
            except Exception:
                if not client.collection_exists(collection_name=name):  # not lost to a concurrent create
                    raise
            else:
                if self._backend == "server":
                    # keyword index for label filters; the embedded engine ignores payload indexes (and warns)
                    client.create_payload_index(
                        collection_name=name, field_name="label", field_schema=models.PayloadSchemaType.KEYWORD
                    )
                    self._check_recorded(name, embedder)
                return
        held, held_embedder = self._params(name)
        if held != dim:
            raise DimensionMismatch(f"collection {name!r} holds {held}-d vectors, got {dim}")
        check_embedder(name, held_embedder, embedder)
        if embedder and held_embedder is None:
            log.info("collection %r records no embedder (an older collection): adopting %s", name, embedder)
            client.update_collection(collection_name=name, metadata={EMBEDDER_KEY: embedder})
            self._check_recorded(name, embedder)

    def _check_recorded(self, name: str, embedder: str | None) -> None:
        """Refuse to go on when a server dropped the collection's metadata (Qdrant before 1.16 has none):
        the embedder check would silently never fire."""
        if embedder and self._params(name)[1] != embedder:
            raise StoreError(
                f"the Qdrant server at {self.location} did not keep collection {name!r}'s metadata, where samgraph "
                "records the embedder of its vectors; use a Qdrant server with collection metadata (1.16 or later)"
            )
