"""Export and import of a collection (deployments/runtime/example_file.py and ExampleStore.export_points /
import_points) on every embedded backend, and what a killed writer leaves in the local store.

Exact answers: the k-NN of seeded queries are the same ids, labels and scores (to 1e-6) before and after a
round trip through the file, into another collection and into a fresh store folder; the file's floats
read back to the same float32 bits.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
import uuid
from pathlib import Path

import numpy as np
import pytest

from deployments.errors import DimensionMismatch, InvalidRequest, UnknownCollection
from deployments.runtime.example_file import (
    ExampleFileReader,
    ExampleHeader,
    Examples,
    end_line,
    export_lines,
    header_embedder,
    point_lines,
    read_examples,
)
from deployments.runtime.vectorstore import ExampleStore
from models.knn import brute_force_knn

SEED = 99
N, DIM, M, TOP_K = 120, 32, 8, 5
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(params=["memory", "local"])
def store(request, tmp_path):
    s = ExampleStore(in_memory=True) if request.param == "memory" else ExampleStore(path=tmp_path / "qdrant")
    yield s
    s.close()


@pytest.fixture(scope="module")
def data():
    """Seeded (N, DIM) vectors, labels, payloads and (M, DIM) queries without near-tied top-k scores."""
    rng = np.random.default_rng(SEED)
    vectors = rng.standard_normal((N, DIM)).astype(np.float32)
    labels = [("cat", "dog", "bird")[i % 3] for i in range(N)]
    payloads = [{"image_id": f"img-{i}", "bbox_xyxy": [i, i + 1, i + 2.5, i + 3], "area_px": i * 7, "tags": {"k": [i]}} for i in range(N)]
    queries = rng.standard_normal((M, DIM)).astype(np.float32)
    _, scores = brute_force_knn(queries, vectors, top_k=TOP_K + 1)
    assert np.min(-np.diff(scores, axis=1)) > 1e-4
    return vectors, labels, payloads, queries


def file_bytes(store: ExampleStore, collection: str, page_size: int = 64) -> bytes:
    header = ExampleHeader(collection, store.dimension(collection), {"model_id": "test", "weights": "random"})
    return b"".join(export_lines(header, store.export_points(collection, page_size)))


def by_id(store: ExampleStore, collection: str) -> dict[str, tuple]:
    """Every example of the collection: id -> (vector, label, payload)."""
    out = {}
    for page in store.export_points(collection):
        for i, pid in enumerate(page.ids):
            out[pid] = (page.vectors[i], page.labels[i], page.payloads[i])
    return out


def assert_same_knn(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert [(n.id, n.label) for n in x] == [(n.id, n.label) for n in y]
        np.testing.assert_allclose([n.score for n in x], [n.score for n in y], atol=1e-6)


def test_round_trip_gives_identical_knn(store, data, tmp_path):
    vectors, labels, payloads, queries = data
    ids = store.add("a", vectors, labels, payloads)
    body = file_bytes(store, "a")
    lines = body.splitlines()
    assert json.loads(lines[0]) == {
        "type": "header", "format": "samgraph-examples", "version": 1, "collection": "a", "dim": DIM,
        "distance": "cosine", "embedder": {"model_id": "test", "weights": "random"},
    }  # fmt: skip
    assert json.loads(lines[-1]) == {"type": "end", "points": N} and len(lines) == N + 2
    header, examples = read_examples(lines)
    assert (header.collection, header.dim, len(examples)) == ("a", DIM, N)
    assert sorted(examples.ids) == sorted(ids)

    assert store.import_points("b", examples) == {"imported": N, "created": True, "dim": DIM, "count": N}
    want = store.search("a", queries, TOP_K)
    assert_same_knn(store.search("b", queries, TOP_K), want)
    with ExampleStore(path=tmp_path / "fresh") as fresh:  # another store: the embedded one standing in for a server
        fresh.import_points(header.collection, examples)
        assert_same_knn(fresh.search("a", queries, TOP_K), want)
        assert fresh.counts("a") == store.counts("a") == {"bird": 40, "cat": 40, "dog": 40}
        moved = by_id(fresh, "a")

    original = by_id(store, "a")
    assert set(moved) == set(original) == set(ids)
    stored = {pid: vectors[k] / np.linalg.norm(vectors[k]) for k, pid in enumerate(ids)}
    for pid, (vec, label, payload) in moved.items():
        k = ids.index(pid)
        assert (label, payload) == (labels[k], payloads[k]) == original[pid][1:]
        np.testing.assert_allclose(vec, stored[pid], atol=1e-6)  # normalised in float32 on each side: within an ulp
        assert vec.dtype == np.float32 and vec.shape == (DIM,)


def test_import_is_idempotent_and_upserts_by_id(store, data):
    vectors, labels, payloads, _ = data
    store.add("a", vectors[:30], labels[:30], payloads[:30])
    _, examples = read_examples(file_bytes(store, "a").splitlines())
    first = store.import_points("b", examples)
    again = store.import_points("b", examples)
    assert (first["created"], again["created"], again["count"], again["imported"]) == (True, False, 30, 30)
    assert by_id(store, "b").keys() == by_id(store, "a").keys()
    # the same id with a new label replaces the example
    changed = Examples(examples.ids[:1], examples.vectors[:1], ["renamed"], [{"note": 1}])
    assert store.import_points("b", changed)["count"] == 30
    assert by_id(store, "b")[examples.ids[0]][1:] == ("renamed", {"note": 1})


def test_import_refuses_another_dimension_untouched(store, data):
    vectors, labels, _, _ = data
    store.add("a", vectors[:5], labels[:5])
    before = by_id(store, "a")
    other = Examples([str(uuid.uuid4())], np.ones((1, DIM + 1), np.float32), ["x"], [{}])
    with pytest.raises(DimensionMismatch, match=f"holds {DIM}-d"):
        store.import_points("a", other)
    with pytest.raises(DimensionMismatch):
        store.import_points("a", Examples.empty(DIM + 1), dim=DIM + 1)
    assert by_id(store, "a").keys() == before.keys()


def test_import_checks_everything_before_writing(store, data):
    vectors, labels, _, _ = data
    ids = [str(uuid.uuid4()) for _ in range(3)]
    with pytest.raises(InvalidRequest, match="distinct"):
        store.import_points("a", Examples([ids[0], ids[0], ids[1]], vectors[:3], labels[:3], [{}] * 3))
    with pytest.raises(InvalidRequest, match="label"):
        store.import_points("a", Examples(ids, vectors[:3], ["ok", "", "ok"], [{}] * 3))
    with pytest.raises(InvalidRequest, match="zero"):
        store.import_points("a", Examples(ids, np.zeros((3, DIM), np.float32), labels[:3], [{}] * 3))
    assert "a" not in store.collections()


def test_empty_collection_round_trips(store):
    store.ensure_collection("empty", 7)
    body = file_bytes(store, "empty")
    assert body.splitlines()[1:] == [end_line(0).strip()]
    header, examples = read_examples(body.splitlines())
    assert store.import_points("copy", examples, dim=header.dim) == {"imported": 0, "created": True, "dim": 7, "count": 0}
    assert store.collection_info("copy") == {"dim": 7, "count": 0, "embedder": None}
    with pytest.raises(UnknownCollection):
        next(store.export_points("missing"))


def test_export_pages_cover_every_example_once(store, data):
    vectors, labels, _, _ = data
    ids = store.add("a", vectors[:110], labels[:110])
    pages = list(store.export_points("a", page_size=50))
    assert [len(p) for p in pages] == [50, 50, 10]
    assert sorted(i for p in pages for i in p.ids) == sorted(ids)


def test_float32_values_read_back_bit_for_bit():
    rng = np.random.default_rng(0)
    vectors = (rng.standard_normal((20, 64)) * 10.0 ** rng.integers(-30, 30, (20, 64))).astype(np.float32)
    vectors[0, :4] = [np.float32(1e-45), np.finfo(np.float32).max, -np.finfo(np.float32).tiny, 0.1]
    page = Examples([str(uuid.uuid4()) for _ in range(20)], vectors, ["x"] * 20, [{}] * 20)
    _, back = read_examples(b"".join(export_lines(ExampleHeader("c", 64), [page])).splitlines())
    assert back.vectors.dtype == np.float32
    assert np.array_equal(back.vectors.view(np.uint32), vectors.view(np.uint32))


HEADER = {"type": "header", "format": "samgraph-examples", "version": 1, "collection": "c", "dim": 3, "distance": "cosine", "embedder": None}
ID = "0b8a3e51-8f8a-4d0e-9a55-2a1d3b4c5d6e"
POINT = {"type": "point", "id": ID, "label": "cat", "vector": [1.0, 0.0, 0.5], "payload": {"image_id": "x"}}


def _lines(*records) -> list[str]:
    return [r if isinstance(r, str) else json.dumps(r) for r in records]


@pytest.mark.parametrize(
    ("lines", "field", "match"),
    [
        ([], "line 1", "empty"),
        (["not json"], "line 1", "not valid JSON"),
        (["[1, 2]"], "line 1", "JSON object"),
        ([POINT], "line 1.type", "first line must be the header"),
        ([{**HEADER, "version": 2}], "line 1.version", "version 2 is not supported"),
        ([{**HEADER, "version": True}], "line 1.version", "not supported"),
        ([{**HEADER, "format": "csv"}], "line 1.format", "samgraph-examples"),
        ([{**HEADER, "dim": 0}], "line 1.dim", "1..65536"),
        ([{**HEADER, "dim": "3"}], "line 1.dim", "integer"),
        ([{**HEADER, "distance": "dot"}], "line 1.distance", "cosine"),
        ([{**HEADER, "collection": "no spaces"}], "line 1.collection", "collection name"),
        ([{**HEADER, "extra": 1}], "line 1.extra", "unknown key"),
        ([{**HEADER, "embedder": "clip"}], "line 1.embedder", "object or null"),
        ([{**HEADER, "embedder": {"id": 7}}], "line 1.embedder", "id must be a string"),
        ([{**HEADER, "embedder": {"id": ""}}], "line 1.embedder", "id must be a string"),
        ([HEADER, {**POINT, "vector": [1.0, 2.0]}], "line 2.vector", "list of 3 numbers"),
        ([HEADER, {**POINT, "vector": [1.0, "2", 3.0]}], "line 2.vector", "finite numbers"),
        ([HEADER, {**POINT, "vector": [1.0, True, 3.0]}], "line 2.vector", "finite numbers"),
        ([HEADER, {**POINT, "vector": [1.0, float("nan"), 0.0]}], "line 2.vector", "finite"),  # json writes NaN
        ([HEADER, {**POINT, "vector": [1e39, 0, 0]}], "line 2.vector", "non-finite"),
        ([HEADER, {**POINT, "vector": [10**400, 0, 0]}], "line 2.vector", "finite numbers"),
        ([HEADER, {**POINT, "vector": [0, 0, 0]}], "line 2.vector", "all zero"),
        ([HEADER, {**POINT, "id": 7}], "line 2.id", "UUID"),
        ([HEADER, {**POINT, "label": " "}], "line 2.label", "1-100 characters"),
        ([HEADER, {**POINT, "payload": {"label": "dog"}}], "line 2.payload", "without the key 'label'"),
        ([HEADER, {**POINT, "payload": [1]}], "line 2.payload", "object"),
        ([HEADER, {**POINT, "score": 1}], "line 2.score", "unknown key"),
        ([HEADER, POINT, "", POINT], "line 4.id", "repeats line 2"),
        ([HEADER, {"type": "points"}], "line 2.type", "'point' or 'end'"),
        ([HEADER, POINT, {"type": "end", "points": 2}], "line 3.points", "counts 2 points, the file holds 1"),
        ([HEADER, POINT, {"type": "end", "points": 1}, POINT], "line 4", "no lines may follow"),
        ([HEADER, POINT], "line 3", "truncated"),
    ],
)
def test_bad_files_name_the_line_and_key(lines, field, match):
    with pytest.raises(InvalidRequest, match=match) as info:
        read_examples(_lines(*lines))
    assert info.value.field == field and info.value.message.startswith(field)


def test_reader_limits_points_and_accepts_a_minimal_point():
    minimal = {"type": "point", "id": ID.upper(), "label": "  cat ", "vector": [1, 0, 0]}  # no payload; ints
    header, ex = read_examples(_lines(HEADER, minimal, {"type": "end", "points": 1}))
    assert (ex.ids, ex.labels, ex.payloads) == ([ID], ["cat"], [{}])  # canonical id, stripped label
    assert ex.vectors.dtype == np.float32 and ex.vectors.shape == (1, 3)
    reader = ExampleFileReader(max_points=1)
    reader.feed(json.dumps(HEADER))
    reader.feed(json.dumps(POINT))
    with pytest.raises(InvalidRequest, match="more than 1 points") as info:
        reader.feed(json.dumps({**POINT, "id": str(uuid.uuid4())}))
    assert info.value.field == "line 3"


def test_point_lines_round_trip_payloads():
    page = Examples([ID], np.asarray([[0.25, -1.5, 3.0]], np.float32), ["cat"], [{"image_id": "é", "n": [1, 2.5, None]}])
    rec = json.loads(point_lines(page))
    assert rec == {"type": "point", "id": ID, "label": "cat", "vector": [0.25, -1.5, 3.0], "payload": {"image_id": "é", "n": [1, 2.5, None]}}


CHILD = textwrap.dedent(
    """
    import json, os, signal, sys
    import numpy as np
    from deployments.runtime.vectorstore import ExampleStore
    from deployments.runtime.example_file import read_examples
    folder, mode = sys.argv[1], sys.argv[2]
    store = ExampleStore(path=folder)
    if mode == "adds":
        rng = np.random.default_rng(5)
        for i in range(20):
            [pid] = store.add("c", rng.standard_normal((1, 16)).astype(np.float32), [f"l{i}"], [{"i": i}])
            print(json.dumps({"id": pid, "i": i}), flush=True)  # acknowledged: the add returned
        os.kill(os.getpid(), signal.SIGKILL)  # no close: the lock and the store are left as a crash leaves them
    else:
        _, examples = read_examples(open(sys.argv[3], "rb"))
        print("importing", flush=True)
        store.import_points("c", examples)
        print("imported", flush=True)
        signal.pause()
    """
)


def _child(tmp_path: Path, *args: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.Popen([sys.executable, "-c", CHILD, *args], stdout=subprocess.PIPE, text=True, env=env, cwd=REPO)


def test_acknowledged_adds_survive_sigkill_of_the_writer(tmp_path):
    folder = tmp_path / "qdrant"
    child = _child(tmp_path, str(folder), "adds")
    acked = [json.loads(line) for line in child.stdout]
    assert child.wait(timeout=120) == -signal.SIGKILL
    assert len(acked) == 20
    with ExampleStore(path=folder) as store:  # opens: the kernel dropped the dead writer's lock
        found = by_id(store, "c")
        assert store.collection_info("c") == {"dim": 16, "count": 20, "embedder": None}
    assert set(found) == {a["id"] for a in acked}
    rng = np.random.default_rng(5)  # the child's vectors, drawn again
    given = [rng.standard_normal((1, 16)).astype(np.float32)[0] for _ in range(20)]
    for a in acked:
        vec, label, payload = found[a["id"]]
        assert (label, payload) == (f"l{a['i']}", {"i": a["i"]})
        np.testing.assert_allclose(vec, given[a["i"]] / np.linalg.norm(given[a["i"]]), atol=1e-6)


def test_a_writer_killed_mid_import_leaves_whole_points_and_a_rerun_completes(tmp_path, data):
    vectors, labels, payloads, _ = data
    with ExampleStore(in_memory=True) as src:
        src.add("c", vectors, labels, payloads)
        body = file_bytes(src, "c")
        want = by_id(src, "c")
    path = tmp_path / "c.jsonl"
    path.write_bytes(body)
    folder = tmp_path / "qdrant"
    child = _child(tmp_path, str(folder), "import", str(path))
    assert child.stdout.readline().strip() == "importing"
    time.sleep(0.3)  # let some points land; wherever the kill falls, the checks below hold
    child.send_signal(signal.SIGKILL)
    assert child.wait(timeout=60) == -signal.SIGKILL
    with ExampleStore(path=folder) as store:
        part = by_id(store, "c") if "c" in store.collections() else {}
        assert len(part) <= N
        for pid, (vec, label, payload) in part.items():  # every point there is whole
            assert (label, payload) == want[pid][1:]
            np.testing.assert_allclose(vec, want[pid][0], atol=1e-6)
        _, examples = read_examples(body.splitlines())
        assert store.import_points("c", examples)["count"] == N  # the rerun completes, no duplicates
        assert by_id(store, "c").keys() == want.keys()


SHA = "ab" * 32


@pytest.mark.parametrize(
    ("embedder", "identity"),
    [
        ({"id": f"open_clip:ViT-B-32:laion2b_s34b_b79k@sha256:{SHA}", "model_id": "x", "weights": "y"},
         f"open_clip:ViT-B-32:laion2b_s34b_b79k@sha256:{SHA}"),
        ({"id": "another_family:m:@w"}, "another_family:m:@w"),  # compared as a string, never parsed
        # files written before identities: open_clip was the only family, a sha256 names the weights
        ({"model_id": "ViT-B-32/laion2b_s34b_b79k", "weights": f"sha256:{SHA}"},
         f"open_clip:ViT-B-32:laion2b_s34b_b79k@sha256:{SHA}"),
        ({"model_id": "ViT-B-32", "weights": f"sha256:{SHA}"}, f"open_clip:ViT-B-32:@sha256:{SHA}"),
        ({"model_id": "ViT-B-32/laion2b_s34b_b79k", "weights": "random"}, None),  # which seed? unknown
        ({"model_id": "ViT-B-32/laion2b_s34b_b79k", "weights": "pretrained"}, None),
        (None, None),
    ],
)  # fmt: skip
def test_header_embedder_id(embedder, identity):
    header, _ = read_examples(_lines({**HEADER, "embedder": embedder}, {"type": "end", "points": 0}))
    assert header.embedder_id == identity


def test_header_embedder_round_trips_the_identity():
    for identity, weights in ((f"open_clip:ViT-B-32:laion2b_s34b_b79k@sha256:{SHA}", f"sha256:{SHA}"),
                              ("open_clip:ViT-B-32:laion2b_s34b_b79k@random:seed3", "random")):  # fmt: skip
        embedder = header_embedder(identity)
        assert embedder == {"id": identity, "model_id": "ViT-B-32/laion2b_s34b_b79k", "weights": weights}
        body = b"".join(export_lines(ExampleHeader("c", 3, embedder), []))
        assert read_examples(body.splitlines())[0].embedder_id == identity
    assert header_embedder("x:y:z@w") == {"id": "x:y:z@w"}
