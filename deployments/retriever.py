"""``Retriever`` deployment: few-shot example store and batched cosine k-NN over Qdrant (local or server).

In Qdrant local mode (a data folder) the folder is locked by one client, so this deployment must run as
**one replica**; with a Qdrant server (``url=``) it scales to any number of replicas.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence

import numpy as np
from ray import serve

from deployments.contracts import EmbedResult, KnnResult, SearchJob
from deployments.errors import InvalidRequest, UnknownCollection
from deployments.runtime.admission import StageAdmission
from deployments.runtime.example_file import Examples
from deployments.runtime.metrics import StageWork
from deployments.runtime.serve_batching import apply_batch_config
from deployments.runtime.store_checks import as_vectors, check_collection_name, check_embedder, check_top_k
from deployments.runtime.vectorstore import ExampleStore
from models.knn import Neighbor

DEFAULT_MAX_BATCH_SIZE = 32
DEFAULT_BATCH_WAIT_TIMEOUT_S = 0.002


SearchResult = list[list[Neighbor]] | Exception


def run_search_jobs(store: ExampleStore, jobs: Sequence[SearchJob]) -> list[SearchResult]:
    """Answer a batch of search jobs with one batched Qdrant query per ``(collection, top_k)`` group.

    Errors stay with the job that caused them: a job whose queries are malformed, of the wrong dimension or
    of another embedder than the collection's (``embedder_mismatch``) gets its exception in its slot and the
    rest of its group is still searched; an unknown collection or
    invalid ``top_k`` fails only the jobs of that group.

    Args:
        store: the example store.
        jobs: the batch, in arrival order.

    Returns:
        One entry per job, in order: M lists of :class:`Neighbor` (best first), or the exception for that job.
    """
    results: list[SearchResult | None] = [None] * len(jobs)
    groups: dict[tuple[str, int], list[int]] = {}
    for i, job in enumerate(jobs):
        try:
            groups.setdefault((job.collection, job.top_k), []).append(i)
        except TypeError:  # unhashable field: not a valid job
            results[i] = InvalidRequest(f"bad search job: collection {job.collection!r}, top_k {job.top_k!r}")
    for (collection, top_k), members in groups.items():
        try:
            check_top_k(top_k)
            dim, held = store.vector_space(collection)
        except Exception as exc:
            for i in members:
                results[i] = exc
            continue
        valid: list[tuple[int, np.ndarray]] = []
        for i in members:
            try:
                queries = as_vectors(jobs[i].queries, "queries", dim=dim)
                check_embedder(collection, held, jobs[i].embedder, "queries")
                valid.append((i, queries))
            except Exception as exc:
                results[i] = exc
        if not valid:
            continue
        try:
            found = store.search(collection, np.concatenate([q for _, q in valid]), top_k)
        except Exception as exc:
            for i, _ in valid:
                results[i] = exc
            continue
        start = 0
        for i, q in valid:
            results[i] = found[start : start + len(q)]
            start += len(q)
        assert start == len(found)
    assert all(r is not None for r in results)
    return results  # type: ignore[return-value]


@serve.deployment(name="Retriever", ray_actor_options={"num_cpus": 0.1}, max_ongoing_requests=64)
class Retriever:
    """Stores labelled example embeddings and answers cosine k-NN queries, batched with ``@serve.batch``.

    ``max_batch_size`` (default 32) and ``batch_wait_timeout_s`` (default 0.002) come from ``user_config``.
    Local mode (``path``, or the default data dir) requires ``num_replicas: 1``: Qdrant locks the folder.

    Args:
        path: Qdrant local data folder.
        url: Qdrant server URL.
        api_key: Qdrant server API key (with ``url``).
        With none of them, :meth:`ExampleStore.from_env` picks the store (``SAMGRAPH_QDRANT_URL`` or
        ``$SAMGRAPH_DATA_DIR/qdrant``).
    """

    def __init__(self, path: str | None = None, url: str | None = None, api_key: str | None = None) -> None:
        if path is None and url is None:
            if api_key is not None:
                raise ValueError("api_key is only used with url=<server URL>")
            self._store = ExampleStore.from_env()
        else:
            self._store = ExampleStore(path=path, url=url, api_key=api_key)
        self._work = StageWork("search", counters=("jobs", "queries"))
        #: This replica's searches in flight and time per request: the deadline check of :meth:`knn_chain`.
        self._admission = StageAdmission("retrieve")

    def reconfigure(self, user_config: dict) -> None:
        """``max_batch_size`` and ``batch_wait_timeout_s`` of :meth:`search` (see :func:`apply_batch_config`)."""
        apply_batch_config(user_config, self.search)

    @serve.batch(max_batch_size=DEFAULT_MAX_BATCH_SIZE, batch_wait_timeout_s=DEFAULT_BATCH_WAIT_TIMEOUT_S)
    async def search(self, jobs: list[SearchJob]) -> list[SearchResult]:
        """Run a batch of jobs; each slot holds that job's neighbours or its exception (see :meth:`knn`)."""
        t0 = time.perf_counter()
        results = await asyncio.to_thread(run_search_jobs, self._store, jobs)
        assert len(results) == len(jobs)
        self._work.batch(
            "search", len(jobs), time.perf_counter() - t0, jobs=len(jobs), queries=sum(len(j.queries) for j in jobs)
        )
        return results

    async def knn(
        self, collection: str, queries: np.ndarray, top_k: int, embedder: str | None = None
    ) -> list[list[Neighbor]]:
        """Cosine k-NN of (M, D) float32 ``queries`` made by ``embedder`` (an identity, or None: not checked)
        in ``collection``: M lists of up to ``top_k`` neighbours, batched with other callers' queries.
        Raises as :meth:`ExampleStore.search`."""
        check_collection_name(collection)
        top_k = check_top_k(top_k)
        result = await self.search(SearchJob(collection, as_vectors(queries, "queries"), top_k, embedder))
        if isinstance(result, BaseException):
            raise result
        return result

    async def add(
        self,
        collection: str,
        vectors: np.ndarray,
        labels: Sequence[str],
        payloads: Sequence[dict] | None = None,
        ids: Sequence[str] | None = None,
        embedder: str | None = None,
    ) -> list[str]:
        """Store (N, D) float32 example vectors made by ``embedder`` (an identity, recorded or checked by the
        collection) with their labels under ``ids`` (None: new UUIDs); returns the N ids. Returns once
        stored (on disk in the local mode); a retry with the same ids stores each example once."""
        return await asyncio.to_thread(self._store.add, collection, vectors, labels, payloads, ids, embedder)

    async def export_page(
        self, collection: str, offset: str | None = None, limit: int = 256
    ) -> tuple[Examples, str | None]:
        """One page ``(examples with their (n, D) float32 vectors, next_offset)`` of a collection, in id order."""
        return await asyncio.to_thread(self._store.export_page, collection, offset, limit)

    async def import_points(
        self, collection: str, examples: Examples, dim: int | None = None, embedder: str | None = None
    ) -> dict:
        """Upsert examples made by ``embedder`` under their own ids: ``{"imported", "created", "dim",
        "count"}`` (see :meth:`ExampleStore.import_points`)."""
        return await asyncio.to_thread(self._store.import_points, collection, examples, dim, embedder)

    async def counts(self, collection: str) -> dict[str, int]:
        """Examples per label in ``collection``."""
        return await asyncio.to_thread(self._store.counts, collection)

    async def list_ids(
        self, collection: str, label: str | None = None, offset: str | None = None, limit: int = 100
    ) -> tuple[list[dict], str | None]:
        """One page ``(items [{"id", "label"}], next_offset)`` of the collection's examples."""
        return await asyncio.to_thread(self._store.list_ids, collection, label, offset, limit)

    async def delete(self, collection: str, id: str) -> bool:
        """Delete one example; False if it was not there."""
        return await asyncio.to_thread(self._store.delete, collection, id)

    async def collections(self) -> list[str]:
        """Names of all collections, sorted."""
        return await asyncio.to_thread(self._store.collections)

    async def collection_info(self, name: str) -> dict:
        """``{"dim", "count", "embedder"}`` of one collection."""
        return await asyncio.to_thread(self._store.collection_info, name)

    async def collection_or_none(self, name: str) -> dict | None:
        """``{"dim", "count", "embedder"}`` of one collection, or None when it does not exist."""
        try:
            return await self.collection_info(name)
        except UnknownCollection:
            return None

    async def knn_chain(
        self, collection: str, embedded: EmbedResult, top_k: int, deadline: float | None = None
    ) -> KnnResult:
        """The graph's entry after the embedder: neighbours of the (N, D) ``embedded.embeddings``.

        Args:
            deadline: the request's deadline (absolute ``time.time()`` seconds), or None.

        Raises:
            EmbedderMismatch: the collection holds vectors of another embedder than ``embedded.embedder``.
            DeadlineExceeded: the searches in flight here and this one would end after ``deadline`` (503
                ``deadline``), checked on arrival.
            And as :meth:`knn`.
        """
        t0 = time.perf_counter()
        vectors = embedded.embeddings
        with self._admission.served(deadline):
            neighbors = await self.knn(collection, vectors, top_k, embedded.embedder or None) if len(vectors) else []
        timing = {**embedded.timing_ms, "retrieve": (time.perf_counter() - t0) * 1e3}
        return KnnResult(neighbors, embedded.weights, timing)

    async def add_chain(
        self,
        collection: str,
        embedded: EmbedResult,
        labels: Sequence[str],
        payloads: Sequence[dict] | None = None,
        ids: Sequence[str] | None = None,
    ) -> list[str]:
        """The graph's entry after the embedder: store ``embedded.embeddings`` with their labels (under ``ids``),
        made by ``embedded.embedder``."""
        return await self.add(collection, embedded.embeddings, labels, payloads, ids, embedded.embedder or None)

    async def info(self) -> dict:
        """``{"backend": "local" | "memory" | "server", "collections": [names]}``."""
        return {"backend": self._store.backend, "collections": await asyncio.to_thread(self._store.collections)}

    def stats(self) -> dict:
        """Work done by this replica: search jobs, query vectors, batches run, seconds spent searching, and
        ``admission`` of :meth:`knn_chain` (:meth:`StageAdmission.state`)."""
        return {**self._work.stats(), "admission": self._admission.state()}

    def __del__(self) -> None:
        store = getattr(self, "_store", None)
        if store is not None:
            try:
                store.close()
            except Exception:  # interpreter shutdown: modules may already be gone
                pass
