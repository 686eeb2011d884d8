"""deployments/runtime/vectorstore.py against every Qdrant backend available, plus the Retriever's batch grouping.

The ``store`` fixture runs each test on every backend available: the in-memory and the on-disk embedded
engines always, and a Qdrant server when ``SAMGRAPH_QDRANT_URL`` is set. The server cases are always
collected and skip, with the reason, where it is unset (none can be installed on the project's machines, so
CI runs the two embedded ones and reports the server cases as skipped). Search results are checked against the numpy
reference ``models.knn.brute_force_knn``; the congruence tests compare two backends on the same data.
"""

from __future__ import annotations

import os
import pickle
import uuid
from pathlib import Path

import numpy as np
import pytest

from deployments.errors import DimensionMismatch, EmbedderMismatch, UnknownCollection
from deployments.runtime.example_file import Examples
from deployments.runtime.store_checks import StoreError
from deployments.runtime.vectorstore import EMBEDDER_KEY, ExampleStore
from models.embedders import embedder_identity
from models.knn import brute_force_knn

SEED = 1234
N, DIM, M, TOP_K = 200, 64, 10, 5
LABELS = ("cat", "dog", "bird", "fish")
QDRANT_URL = os.environ.get("SAMGRAPH_QDRANT_URL")
SERVER = pytest.param(
    "server",
    marks=pytest.mark.skipif(not QDRANT_URL, reason="SAMGRAPH_QDRANT_URL is not set: no Qdrant server to test against"),
)
BACKENDS = ["memory", "local", SERVER]


def open_store(backend: str, tmp_path: Path) -> ExampleStore:
    if backend == "memory":
        return ExampleStore(in_memory=True)
    if backend == "local":
        return ExampleStore(path=tmp_path / f"qdrant-{uuid.uuid4().hex[:8]}")
    return ExampleStore(url=QDRANT_URL, api_key=os.environ.get("SAMGRAPH_QDRANT_API_KEY") or None)


def assert_same_neighbors(got, want, atol=1e-6):
    """Same ids and labels in the same order, scores equal up to float rounding (BLAS paths differ by batch size)."""
    assert len(got) == len(want)
    for g, w in zip(got, want):
        assert [(n.id, n.label) for n in g] == [(n.id, n.label) for n in w]
        np.testing.assert_allclose([n.score for n in g], [n.score for n in w], atol=atol)


@pytest.fixture(params=BACKENDS)
def store(request, tmp_path):
    s = open_store(request.param, tmp_path)
    yield s
    if s.backend == "server":  # leave the shared server as found
        for name in s.collections():
            if name.startswith("t-"):
                s._client.delete_collection(name)
    s.close()


@pytest.fixture
def coll() -> str:
    """A collection name unique to the test (a server is shared between runs)."""
    return f"t-{uuid.uuid4().hex[:12]}"


@pytest.fixture(scope="module")
def data() -> tuple[np.ndarray, list[str], np.ndarray]:
    """Seeded (N, DIM) vectors, N labels and (M, DIM) queries whose top-(k+1) scores have no near-ties."""
    rng = np.random.default_rng(SEED)
    vectors = rng.standard_normal((N, DIM)).astype(np.float32)
    labels = [LABELS[i % len(LABELS)] for i in range(N)]
    queries = rng.standard_normal((M, DIM)).astype(np.float32)
    _, scores = brute_force_knn(queries, vectors, top_k=TOP_K + 1)
    assert np.min(-np.diff(scores, axis=1)) > 1e-4, "seeded data has near-tied scores; pick another seed"
    return vectors, labels, queries


def test_search_matches_numpy_reference(store, coll, data):
    vectors, labels, queries = data
    ids = store.add(coll, vectors, labels)
    assert len(ids) == N == len(set(ids))
    assert all(str(uuid.UUID(i)) == i for i in ids)
    found = store.search(coll, queries, top_k=TOP_K)
    ref_idx, ref_scores = brute_force_knn(queries, vectors, top_k=TOP_K)
    assert len(found) == M
    for neighbors, idx, scores in zip(found, ref_idx, ref_scores):
        assert [n.id for n in neighbors] == [ids[i] for i in idx]
        assert [n.label for n in neighbors] == [labels[i] for i in idx]
        np.testing.assert_allclose([n.score for n in neighbors], scores, atol=1e-5)


def test_search_single_query_top_k_above_count(store, coll):
    vectors = np.array([[1, 0, 0], [0, 1, 0], [1, 1, 0]], dtype=np.float32)
    ids = store.add(coll, vectors, ["x", "y", "xy"])
    (neighbors,) = store.search(coll, np.array([[1, 0.1, 0]], dtype=np.float32), top_k=100)
    assert [n.id for n in neighbors] == [ids[0], ids[2], ids[1]]
    assert neighbors[0].score == pytest.approx(1 / np.sqrt(1.01), abs=1e-6)
    assert store.search(coll, np.zeros((0, 3), np.float32), top_k=1) == []


@pytest.mark.parametrize("other", BACKENDS[1:])
def test_congruence_between_backends(other, coll, data, tmp_path):
    """The same data on two backends gives the same neighbours (by row), scores, counts and info."""
    vectors, labels, queries = data
    with ExampleStore(in_memory=True) as a:
        b = open_store(other, tmp_path)
        try:
            rows_a = {pid: i for i, pid in enumerate(a.add(coll, vectors, labels))}
            rows_b = {pid: i for i, pid in enumerate(b.add(coll, vectors, labels))}
            found_a = a.search(coll, queries, top_k=TOP_K)
            found_b = b.search(coll, queries, top_k=TOP_K)
            for na, nb_ in zip(found_a, found_b):
                assert [rows_a[n.id] for n in na] == [rows_b[n.id] for n in nb_]
                assert [n.label for n in na] == [n.label for n in nb_]
                np.testing.assert_allclose([n.score for n in na], [n.score for n in nb_], atol=1e-6)
            assert a.counts(coll) == b.counts(coll)
            assert a.collection_info(coll) == b.collection_info(coll) == {"dim": DIM, "count": N, "embedder": None}
        finally:
            if b.backend == "server":
                b._client.delete_collection(coll)
            b.close()


def test_counts_per_label(store, coll):
    rng = np.random.default_rng(SEED)
    store.add(coll, rng.standard_normal((6, 8)).astype(np.float32), ["b", "a", "b", " c ", "b", "a"])
    assert store.counts(coll) == {"a": 2, "b": 3, "c": 1}  # labels are stripped
    assert list(store.counts(coll)) == ["a", "b", "c"]
    assert store.collection_info(coll) == {"dim": 8, "count": 6, "embedder": None}
    assert coll in store.collections()


def test_counts_beyond_one_scroll_page(store, coll):
    rng = np.random.default_rng(SEED)
    store.add(coll, rng.standard_normal((1100, 4)).astype(np.float32), ["a"] * 700 + ["b"] * 400)
    assert store.counts(coll) == {"a": 700, "b": 400}


def test_payload_keeps_label_and_extras(store, coll):
    extras = {"image_id": "img-1", "bbox_xyxy": [1.0, 2.0, 30.5, 40.0], "created_at": "2024-05-01T12:00:00Z"}
    (pid,) = store.add(coll, np.ones((1, 4), np.float32), ["cat"], [extras])
    (record,) = store._client.retrieve(coll, ids=[pid], with_payload=True)
    assert record.payload == {"label": "cat", **extras}
    with pytest.raises(ValueError, match="label"):
        store.add(coll, np.ones((1, 4), np.float32), ["cat"], [{"label": "dog"}])
    with pytest.raises(ValueError, match="JSON"):
        store.add(coll, np.ones((1, 4), np.float32), ["cat"], [{"when": object()}])
    with pytest.raises(ValueError, match="one payload per vector"):
        store.add(coll, np.ones((2, 4), np.float32), ["cat", "dog"], [{}])


def test_list_ids_pages_cover_every_id_once(store, coll):
    rng = np.random.default_rng(SEED)
    labels = ["a" if i % 3 else "b" for i in range(25)]
    ids = store.add(coll, rng.standard_normal((25, 8)).astype(np.float32), labels)
    label_of = dict(zip(ids, labels))

    def all_pages(label=None, limit=7):
        seen, offset, pages = [], None, 0
        while True:
            items, offset = store.list_ids(coll, label=label, offset=offset, limit=limit)
            assert len(items) <= limit
            seen += items
            pages += 1
            if offset is None:
                return seen, pages

    seen, pages = all_pages()
    assert pages == 4
    assert sorted(item["id"] for item in seen) == sorted(ids)  # every id, once
    assert all(item["label"] == label_of[item["id"]] for item in seen)
    seen_b, _ = all_pages(label="b", limit=3)
    assert sorted(item["id"] for item in seen_b) == sorted(i for i in ids if label_of[i] == "b")
    assert store.list_ids(coll, label="nobody") == ([], None)


def test_delete(store, coll):
    rng = np.random.default_rng(SEED)
    ids = store.add(coll, rng.standard_normal((3, 8)).astype(np.float32), ["a", "a", "b"])
    assert store.delete(coll, ids[0]) is True
    assert store.delete(coll, ids[0]) is False
    assert store.delete(coll, str(uuid.uuid4())) is False
    assert store.counts(coll) == {"a": 1, "b": 1}
    assert ids[0] not in {n.id for n in store.search(coll, rng.standard_normal((1, 8)), top_k=10)[0]}
    with pytest.raises(ValueError, match="UUID"):
        store.delete(coll, "not-a-uuid")


def test_dimension_mismatch_leaves_collection_untouched(store, coll):
    rng = np.random.default_rng(SEED)
    store.add(coll, rng.standard_normal((4, 16)).astype(np.float32), ["a"] * 4)
    with pytest.raises(DimensionMismatch, match=f"collection '{coll}' holds 16-d vectors, got 32"):
        store.add(coll, rng.standard_normal((2, 32)).astype(np.float32), ["a", "b"])
    with pytest.raises(DimensionMismatch, match="16-d"):
        store.ensure_collection(coll, 32)
    with pytest.raises(DimensionMismatch, match="16-d"):
        store.search(coll, rng.standard_normal((1, 32)).astype(np.float32), top_k=1)
    assert isinstance(DimensionMismatch("x"), ValueError)
    assert store.collection_info(coll) == {"dim": 16, "count": 4, "embedder": None}
    assert store.counts(coll) == {"a": 4}
    store.ensure_collection(coll, 16)  # same dimension: a no-op
    assert store.collection_info(coll)["count"] == 4


# two embedders of the same architecture and dimension: only their random weights' seeds differ
EMB_A = embedder_identity("open_clip", "ViT-B-32", "laion2b_s34b_b79k", "random:seed0")
EMB_B = embedder_identity("open_clip", "ViT-B-32", "laion2b_s34b_b79k", "random:seed1")


def test_another_embedder_at_the_same_dimension_is_refused(store, coll):
    rng = np.random.default_rng(SEED)
    x = rng.standard_normal((6, 16)).astype(np.float32)
    store.add(coll, x[:4], ["a"] * 4, embedder=EMB_A)
    assert store.embedder(coll) == EMB_A and store.collection_info(coll)["embedder"] == EMB_A
    refusals = (
        lambda: store.add(coll, x[4:], ["b", "b"], embedder=EMB_B),
        lambda: store.import_points(coll, Examples([str(uuid.uuid4())], x[4:5], ["b"], [{}]), embedder=EMB_B),
        lambda: store.ensure_collection(coll, 16, EMB_B),
        lambda: store.search(coll, x[4:], top_k=2, embedder=EMB_B),
    )
    for call in refusals:
        with pytest.raises(EmbedderMismatch) as info:
            call()
        err = info.value
        assert (err.status, err.code, err.field) == (409, "embedder_mismatch", "collection")
        assert EMB_A in err.message and EMB_B in err.message
    assert store.counts(coll) == {"a": 4} and store.embedder(coll) == EMB_A  # untouched
    store.add(coll, x[4:5], ["b"], embedder=EMB_A)  # its own embedder: stored
    store.import_points(coll, Examples([str(uuid.uuid4())], x[5:6], ["b"], [{}]), embedder=EMB_A)
    assert store.search(coll, x[:1], top_k=1, embedder=EMB_A)[0][0].score == pytest.approx(1.0, abs=1e-5)
    assert store.counts(coll) == {"a": 4, "b": 2}
    # a new collection from an import records the importer's embedder
    store.import_points(coll + "-i", Examples([str(uuid.uuid4())], x[:1], ["a"], [{}]), embedder=EMB_B)
    assert store.embedder(coll + "-i") == EMB_B
    with pytest.raises(EmbedderMismatch):
        store.add(coll + "-i", x[:1], ["a"], embedder=EMB_A)


def test_a_collection_without_embedder_adopts_the_next_writers(store, coll, caplog):
    """Collections made before embedders were recorded (or by calls naming none) take the first that
    names one, with one log line; from then on another is refused."""
    rng = np.random.default_rng(SEED)
    x = rng.standard_normal((3, 16)).astype(np.float32)
    store.add(coll, x[:1], ["a"])
    assert store.embedder(coll) is None
    store.search(coll, x[:1], top_k=1, embedder=EMB_B)  # a read adopts nothing
    assert store.embedder(coll) is None
    with caplog.at_level("INFO", logger="samgraph.deployments"):
        store.add(coll, x[1:2], ["a"], embedder=EMB_A)
        store.add(coll, x[2:3], ["a"], embedder=EMB_A)
    assert [r.getMessage() for r in caplog.records if "adopting" in r.getMessage()] == [
        f"collection '{coll}' records no embedder (an older collection): adopting {EMB_A}"
    ]
    assert store.embedder(coll) == EMB_A
    with pytest.raises(EmbedderMismatch):
        store.add(coll, x[:1], ["a"], embedder=EMB_B)
    assert store.counts(coll) == {"a": 3}


def test_recorded_embedder_survives_reopen(tmp_path):
    """The record is Qdrant collection metadata: the embedded engine keeps it in its folder."""
    folder = tmp_path / "qdrant"
    with ExampleStore(path=folder) as first:
        first.add("old", np.ones((1, 4), np.float32), ["a"])
        first.add("pets", np.ones((1, 4), np.float32), ["a"], embedder=EMB_A)
        first.add("old", np.ones((1, 4), np.float32), ["a"], embedder=EMB_B)  # adopted
    with ExampleStore(path=folder) as second:
        assert (second.embedder("pets"), second.embedder("old")) == (EMB_A, EMB_B)
        assert second._client.get_collection("pets").config.metadata == {EMBEDDER_KEY: EMB_A}
        with pytest.raises(EmbedderMismatch):
            second.add("pets", np.ones((1, 4), np.float32), ["a"], embedder=EMB_B)


def test_unknown_collection(store, coll):
    q = np.ones((1, 4), np.float32)
    with pytest.raises(UnknownCollection, match=coll) as info:
        store.search(coll, q, top_k=1)
    assert isinstance(info.value, ValueError) and isinstance(info.value, LookupError)
    assert info.value.collection == coll
    for call in (
        lambda: store.counts(coll),
        lambda: store.list_ids(coll),
        lambda: store.delete(coll, str(uuid.uuid4())),
        lambda: store.collection_info(coll),
    ):
        with pytest.raises(UnknownCollection):
            call()
    assert coll not in store.collections()


def test_unknown_collection_pickles_by_name():
    exc = pickle.loads(pickle.dumps(UnknownCollection("dogs")))
    assert isinstance(exc, UnknownCollection) and exc.collection == "dogs"
    assert str(exc) == str(UnknownCollection("dogs"))


@pytest.mark.parametrize("name", ["", "a" * 65, "has space", "dots.bad", "slash/bad", "ü", "new\nline", None, 3])
def test_invalid_collection_names(store, name):
    with pytest.raises(ValueError, match="collection name"):
        store.add(name, np.ones((1, 4), np.float32), ["a"])
    with pytest.raises(ValueError, match="collection name"):
        store.search(name, np.ones((1, 4), np.float32), top_k=1)


def test_valid_collection_name_edges(store):
    name = "A-z_0" + "9" * 59  # 64 characters
    store.add(name, np.ones((1, 4), np.float32), ["a"])
    assert name in store.collections()
    if store.backend == "server":
        store._client.delete_collection(name)


@pytest.mark.parametrize("label", ["", "   ", "x" * 101, None, 7])
def test_invalid_labels(store, coll, label):
    with pytest.raises(ValueError, match="label"):
        store.add(coll, np.ones((1, 4), np.float32), [label])
    assert coll not in store.collections()  # nothing created by a rejected add


def test_label_edges_and_count_mismatch(store, coll):
    store.add(coll, np.ones((2, 4), np.float32), ["  " + "x" * 100 + "  ", "y"])
    assert store.counts(coll) == {"x" * 100: 1, "y": 1}
    with pytest.raises(ValueError, match="one label per vector"):
        store.add(coll, np.ones((2, 4), np.float32), ["a"])
    with pytest.raises(ValueError, match="sequence of strings"):
        store.add(coll, np.ones((1, 4), np.float32), "a")


@pytest.mark.parametrize("top_k", [0, 101, -1, 2.5, True, "5"])
def test_top_k_out_of_range(store, coll, top_k):
    store.add(coll, np.ones((1, 4), np.float32), ["a"])
    with pytest.raises(ValueError, match="top_k"):
        store.search(coll, np.ones((1, 4), np.float32), top_k=top_k)


@pytest.mark.parametrize(
    "vectors, match",
    [
        (np.ones(4, np.float32), "2-D"),
        (np.zeros((2, 4), np.float32), "zero"),
        (np.full((1, 4), np.nan, np.float32), "non-finite"),
        (np.array([["a", "b"]]), "float"),
        (np.zeros((0, 4), np.float32), "at least one"),
    ],
)
def test_invalid_vectors(store, coll, vectors, match):
    with pytest.raises(ValueError, match=match):
        store.add(coll, vectors, ["a"] * max(len(vectors), 1) if vectors.ndim == 2 else ["a"])


def test_list_ids_validation(store, coll):
    store.add(coll, np.ones((1, 4), np.float32), ["a"])
    for kwargs in ({"limit": 0}, {"limit": 1001}, {"offset": "page-2"}, {"label": ""}):
        with pytest.raises(ValueError):
            store.list_ids(coll, **kwargs)


def test_persistence_across_reopen(tmp_path, data):
    vectors, labels, queries = data
    folder = tmp_path / "qdrant"
    with ExampleStore(path=folder) as first:
        assert first.backend == "local"
        first.add("pets", vectors, labels)
        counts, found = first.counts("pets"), first.search("pets", queries, top_k=TOP_K)
    with ExampleStore(path=str(folder)) as second:
        assert second.collections() == ["pets"]
        assert second.counts("pets") == counts
        assert second.collection_info("pets") == {"dim": DIM, "count": N, "embedder": None}
        assert_same_neighbors(second.search("pets", queries, top_k=TOP_K), found)


def test_one_client_per_folder_and_close_releases(tmp_path):
    folder = tmp_path / "qdrant"
    first = ExampleStore(path=folder)
    with pytest.raises(StoreError, match="one replica"):
        ExampleStore(path=folder)
    first.close()
    first.close()  # idempotent
    with pytest.raises(StoreError, match="closed"):
        first.collections()
    ExampleStore(path=folder).close()


def test_unwritable_data_dir(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    target = blocker / "qdrant"
    with pytest.raises(StoreError, match="not writable") as info:
        ExampleStore(path=target)
    assert str(target) in str(info.value)
    assert isinstance(info.value, RuntimeError)


def test_from_env_uses_data_dir(tmp_path, monkeypatch):
    monkeypatch.delenv("SAMGRAPH_QDRANT_URL", raising=False)
    monkeypatch.setenv("SAMGRAPH_DATA_DIR", str(tmp_path / "data"))
    with ExampleStore.from_env() as s:
        assert s.backend == "local"
        assert Path(s.location) == tmp_path / "data" / "qdrant"
        s.add("c", np.ones((1, 4), np.float32), ["a"])
    assert (tmp_path / "data" / "qdrant").is_dir()


def test_from_env_url_selects_server(monkeypatch):
    # nothing listens on port 1: proves the server path is taken and fails cleanly at start-up
    monkeypatch.setenv("SAMGRAPH_QDRANT_URL", "http://127.0.0.1:1")
    monkeypatch.delenv("SAMGRAPH_QDRANT_API_KEY", raising=False)
    with pytest.raises(StoreError, match="cannot reach the Qdrant server at http://127.0.0.1:1"):
        ExampleStore.from_env()


@pytest.mark.parametrize(
    "kwargs",
    [
        {},
        {"path": "/tmp/x", "in_memory": True},
        {"path": "/tmp/x", "url": "http://localhost:6333"},
        {"url": "http://localhost:6333", "in_memory": True},
        {"in_memory": True, "api_key": "secret"},
    ],
)
def test_conflicting_constructor_arguments(kwargs):
    with pytest.raises(ValueError, match="url"):
        ExampleStore(**kwargs)


def test_memory_backend_name():
    with ExampleStore(in_memory=True) as s:
        assert s.backend == "memory"
        assert s.collections() == []


# -- the Retriever deployment's grouping, without Ray -----------------------------------------------------------


@pytest.fixture
def retriever_module():
    import deployments.retriever

    return deployments.retriever


class CountingStore:
    """Wraps a store and records each ``search`` call."""

    def __init__(self, store: ExampleStore) -> None:
        self.store = store
        self.calls: list[tuple[str, int, int]] = []

    def vector_space(self, name):
        return self.store.vector_space(name)

    def search(self, collection, queries, top_k):
        self.calls.append((collection, len(queries), top_k))
        return self.store.search(collection, queries, top_k)


def test_retriever_groups_by_collection_and_top_k(retriever_module, data):
    SearchJob, run_search_jobs = retriever_module.SearchJob, retriever_module.run_search_jobs
    vectors, labels, queries = data
    with ExampleStore(in_memory=True) as s:
        s.add("pets", vectors, labels)
        s.add("small", vectors[:20, :8], labels[:20])
        counting = CountingStore(s)
        jobs = [
            SearchJob("pets", queries[:3], 5),
            SearchJob("small", queries[:2, :8], 5),
            SearchJob("pets", queries[3:4], 5),
            SearchJob("pets", queries[4:6], 2),
            SearchJob("pets", queries[6:10], 5),
        ]
        results = run_search_jobs(counting, jobs)
        assert sorted(counting.calls) == [("pets", 2, 2), ("pets", 8, 5), ("small", 2, 5)]
        for job, got in zip(jobs, results):
            assert_same_neighbors(got, s.search(job.collection, job.queries, job.top_k))


def test_retriever_errors_stay_with_their_job(retriever_module, data):
    SearchJob, run_search_jobs = retriever_module.SearchJob, retriever_module.run_search_jobs
    vectors, labels, queries = data
    with ExampleStore(in_memory=True) as s:
        s.add("pets", vectors, labels)
        jobs = [
            SearchJob("pets", queries[:2], 3),
            SearchJob("nope", queries[:1], 3),  # unknown collection
            SearchJob("pets", queries[:1, :8], 3),  # wrong dimension
            SearchJob("pets", np.zeros((1, DIM), np.float32), 3),  # zero vector
            SearchJob("pets", queries[2:3], 0),  # bad top_k: its own group
            SearchJob("pets", queries[2:3], [3]),  # unhashable top_k
            SearchJob("pets", queries[2:3], 3),
        ]
        results = run_search_jobs(s, jobs)
        assert isinstance(results[1], UnknownCollection)
        assert isinstance(results[2], DimensionMismatch)
        assert isinstance(results[3], ValueError) and "zero" in str(results[3])
        assert isinstance(results[4], ValueError) and "top_k" in str(results[4])
        assert isinstance(results[5], ValueError)
        assert_same_neighbors(results[0], s.search("pets", queries[:2], 3))
        assert_same_neighbors(results[6], s.search("pets", queries[2:3], 3))


def test_retriever_refuses_queries_of_another_embedder(retriever_module, data):
    """``/v1/predict``'s path: the embedder's ``EmbedResult`` names its identity, and a job whose queries
    another embedder made than the collection's gets ``EmbedderMismatch``; the rest of its group is searched."""
    import asyncio

    SearchJob, run_search_jobs = retriever_module.SearchJob, retriever_module.run_search_jobs
    vectors, labels, queries = data
    with ExampleStore(in_memory=True) as s:
        s.add("pets", vectors, labels, embedder=EMB_A)
        jobs = [SearchJob("pets", queries[:2], 3, EMB_B), SearchJob("pets", queries[2:3], 3, EMB_A)]
        results = run_search_jobs(s, jobs)
        assert isinstance(results[0], EmbedderMismatch) and EMB_B in results[0].message
        assert_same_neighbors(results[1], s.search("pets", queries[2:3], 3))

        from deployments.contracts import EmbedResult
        from deployments.runtime.admission import StageAdmission

        r = retriever_module.Retriever.func_or_class.__new__(retriever_module.Retriever.func_or_class)
        r._store, r._admission = s, StageAdmission("retrieve")

        async def unbatched(job):  # @serve.batch for a batch of one, minus the replica context
            return run_search_jobs(s, [job])[0]

        r.search = unbatched
        theirs = EmbedResult(queries[:1], "random", {}, EMB_B)
        with pytest.raises(EmbedderMismatch):
            asyncio.run(r.knn_chain("pets", theirs, 3))
        with pytest.raises(EmbedderMismatch):
            asyncio.run(r.add_chain("pets", theirs, ["cat"]))
        ours = EmbedResult(queries[:1], "random", {}, EMB_A)
        assert len(asyncio.run(r.knn_chain("pets", ours, 3)).neighbors[0]) == 3
        assert len(asyncio.run(r.add_chain("pets", ours, ["cat"]))) == 1
        assert s.collection_info("pets")["count"] == N + 1


def test_retriever_batch_method_and_knn_reraise(retriever_module, data, tmp_path):
    """The deployment class itself, undecorated: the batch body via ``__wrapped__`` and ``knn``'s re-raise."""
    import asyncio

    vectors, labels, queries = data
    cls = retriever_module.Retriever.func_or_class
    r = cls(path=str(tmp_path / "q"))
    try:
        assert asyncio.run(r.add("pets", vectors, labels)) and asyncio.run(r.counts("pets"))["cat"] == N // 4
        batch = cls.search.__wrapped__
        jobs = [retriever_module.SearchJob("pets", queries[:2], 4), retriever_module.SearchJob("x", queries[:1], 4)]
        out = asyncio.run(batch(r, jobs))
        assert len(out[0]) == 2 and isinstance(out[1], UnknownCollection)

        async def unbatched(job):  # what @serve.batch does for a batch of one, minus the replica context
            return (await batch(r, [job]))[0]

        r.search = unbatched
        assert_same_neighbors(asyncio.run(r.knn("pets", queries[:1], 3)), r._store.search("pets", queries[:1], 3))
        with pytest.raises(UnknownCollection):
            asyncio.run(r.knn("x", queries[:1], 3))
        with pytest.raises(ValueError, match="top_k"):
            asyncio.run(r.knn("pets", queries[:1], 101))
        info = asyncio.run(r.info())
        assert info == {"backend": "local", "collections": ["pets"]}
        assert r.stats()["jobs"] == 4
    finally:
        r._store.close()
