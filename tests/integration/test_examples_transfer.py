"""``GET /v1/examples/export`` and ``POST /v1/examples/import`` on the running app, over HTTP and through
``samgraph examples export`` / ``import``: a round trip gives the same k-NN answers (the same neighbour
ids and scores in /v1/predict), an import is idempotent, and bad files are refused naming the line."""

from __future__ import annotations

import base64
import gzip
import json
import uuid

import numpy as np
import pytest

from deployments.runtime.example_file import ExampleHeader, Examples, export_lines, read_examples
from models.embedders import embedder_identity, parse_identity
from serve_app.cli.main import main
from tests.integration.conftest import MAX_IMPORT_BYTES

NDJSON = {"content-type": "application/x-ndjson"}
BOXES = {"truck": [[75, 275, 1725, 850], [90, 300, 1700, 840]], "wheel": [[380, 640, 620, 850], [1280, 620, 1520, 840]]}


@pytest.fixture(scope="module")
def source(client, truck_path) -> dict:
    """Collection ``xfer-a``: 4 examples of 2 labels on the truck photo."""
    image = {"base64": base64.b64encode(truck_path.read_bytes()).decode()}
    ids, image_id = [], None
    for label, boxes in BOXES.items():
        for box in boxes:
            ref = {"image_id": image_id} if image_id else {"image": image}
            r = client.post("/v1/examples", json={**ref, "box_xyxy": box, "label": label, "collection": "xfer-a"})
            assert r.status_code == 200, r.text
            image_id = r.json()["image_id"]
            ids += r.json()["ids"]
    return {"collection": "xfer-a", "ids": ids, "image_id": image_id}


def _predict(client, image_id: str, collection: str) -> list[list[tuple]]:
    r = client.post("/v1/predict", json={"image_id": image_id, "collection": collection, "max_instances": 3, "top_k": 4, "mask_format": "none"})
    assert r.status_code == 200, r.text
    return [[(n["id"], n["label"], n["score"]) for n in inst["neighbors"]] for inst in r.json()["instances"]]


def assert_same_neighbors(got, want):
    assert len(got) == len(want) and want
    for g, w in zip(got, want):
        assert [(i, lab) for i, lab, _ in g] == [(i, lab) for i, lab, _ in w]
        np.testing.assert_allclose([s for *_, s in g], [s for *_, s in w], atol=1e-6)


def _export(client, collection: str):
    r = client.get("/v1/examples/export", params={"collection": collection})
    assert r.status_code == 200, r.text
    return r, *read_examples(r.content.splitlines())


def test_http_round_trip_gives_identical_knn_and_is_idempotent(client, source):
    r, header, ex = _export(client, "xfer-a")
    assert r.headers["content-type"].startswith("application/x-ndjson")
    assert r.headers["content-disposition"] == 'attachment; filename="xfer-a.examples.jsonl"'
    assert (header.collection, header.dim, header.embedder["weights"]) == ("xfer-a", 512, "random")
    assert parse_identity(header.embedder_id)["weights"].startswith("random:seed")  # the collection's record
    assert sorted(ex.ids) == sorted(source["ids"])
    assert sorted(ex.labels) == ["truck", "truck", "wheel", "wheel"]
    assert all(set(p) == {"image_id", "bbox_xyxy", "area_px"} and p["image_id"] == source["image_id"] for p in ex.payloads)

    first = client.post("/v1/examples/import", params={"collection": "xfer-b"}, content=r.content, headers=NDJSON)
    assert first.status_code == 200, first.text
    assert first.json() == {"collection": "xfer-b", "imported": 4, "created": True, "dim": 512, "count": 4}  # no warnings
    again = client.post("/v1/examples/import", params={"collection": "xfer-b"}, content=r.content, headers=NDJSON)
    assert again.json() == {"collection": "xfer-b", "imported": 4, "created": False, "dim": 512, "count": 4}

    _, _, back = _export(client, "xfer-b")
    order = [back.ids.index(i) for i in ex.ids]
    assert [back.labels[k] for k in order] == ex.labels and [back.payloads[k] for k in order] == ex.payloads
    np.testing.assert_allclose(back.vectors[order], ex.vectors, atol=1e-6)
    assert_same_neighbors(_predict(client, source["image_id"], "xfer-b"), _predict(client, source["image_id"], "xfer-a"))


def test_cli_round_trip_through_a_gzip_file_in_parts(client, app_url, source, tmp_path, capsys):
    out = tmp_path / "xfer-a.jsonl.gz"
    assert main(["examples", "export", "--api", app_url, "--collection", "xfer-a", "--out", str(out)]) == 0
    assert json.loads(capsys.readouterr().out) == {"collection": "xfer-a", "dim": 512, "points": 4, "out": str(out)}
    assert sorted(read_examples(gzip.decompress(out.read_bytes()).splitlines())[1].ids) == sorted(source["ids"])
    args = ["examples", "import", "--api", app_url, "--file", str(out), "--collection", "xfer-c", "--batch-points", "3"]
    assert main(args) == 0
    captured = capsys.readouterr()
    assert json.loads(captured.out) == {"collection": "xfer-c", "imported": 4, "created": True, "dim": 512, "count": 4}
    assert "imported 3/4" in captured.err and "imported 4/4" in captured.err
    listed = client.get("/v1/examples", params={"collection": "xfer-c"}).json()
    assert listed["counts"] == {"truck": 2, "wheel": 2}
    assert_same_neighbors(_predict(client, source["image_id"], "xfer-c"), _predict(client, source["image_id"], "xfer-a"))


@pytest.fixture(scope="module")
def service_embedder(client, source) -> dict:
    """The header ``embedder`` of the service's files (its identity is the one its collections record)."""
    return _export(client, source["collection"])[1].embedder


def _file(n: int, dim: int, embedder: dict | None, collection: str = "xfer-x") -> bytes:
    rng = np.random.default_rng(n + dim)
    page = Examples([str(uuid.uuid4()) for _ in range(n)], rng.standard_normal((n, dim)).astype(np.float32), ["x"] * n, [{}] * n)
    return b"".join(export_lines(ExampleHeader(collection, dim, embedder), [page]))


def test_import_refusals_name_the_fault(client, source, service_embedder):
    def post(body: bytes, headers=NDJSON, **params):
        return client.post("/v1/examples/import", params=params, content=body, headers=headers)

    good = _file(2, 512, service_embedder)
    r = post(good, headers={"content-type": "application/json"})
    assert (r.status_code, r.json()["error"]["code"]) == (415, "unsupported_media_type")
    lines = good.splitlines()
    for body, field, status in (
        (lines[0].replace(b'"version":1', b'"version":9') + b"\n" + b"\n".join(lines[1:]), "line 1.version", 422),
        (b"\n".join(lines[:2]), "line 3", 422),  # no end line: a truncated file
        (b"\n".join([lines[0], lines[1].replace(b'"label":"x"', b'"label":""'), *lines[2:]]), "line 2.label", 422),
        (b"\n".join([lines[0], b'{"type": "point"', *lines[2:]]), "line 2", 422),
    ):
        r = post(body)
        assert (r.status_code, r.json()["error"]["field"]) == (status, field), r.text
    r = post(_file(2, 3, service_embedder), collection="xfer-a")  # 3-d vectors into the 512-d collection
    assert (r.status_code, r.json()["error"]["code"]) == (409, "dimension_mismatch")
    r = post(good, collection="no spaces")
    assert (r.status_code, r.json()["error"]["field"]) == (422, "collection")
    r = post(good + b" " * MAX_IMPORT_BYTES)
    assert (r.status_code, r.json()["error"]["code"]) == (413, "body_too_large")
    assert client.get("/v1/examples", params={"collection": "xfer-a"}).json()["total"] == 4  # untouched
    assert client.get("/v1/examples", params={"collection": "xfer-x"}).status_code == 404  # nothing written

    r = client.get("/v1/examples/export", params={"collection": "xfer-missing"})
    assert (r.status_code, r.json()["error"]["code"]) == (404, "unknown_collection")


def test_vectors_of_another_embedder_are_a_409(client, source, service_embedder):
    """Even at the same dimension: a file from another embedder (here the same architecture with random
    weights of another seed), or from an unknown one, is refused before anything is written; a collection
    that records another embedder refuses new examples and /v1/predict."""
    from ray import serve

    ours = service_embedder["id"]
    theirs = embedder_identity(**{**parse_identity(ours), "weights": "random:seed999"})
    for embedder, named in (({"id": theirs}, theirs), (None, "does not say"), ({"model_id": "ViT-B-32/x", "weights": "random"}, "does not say")):
        r = client.post("/v1/examples/import", params={"collection": "xfer-e"}, content=_file(2, 512, embedder), headers=NDJSON)
        err = r.json()["error"]
        assert (r.status_code, err["code"], err["field"]) == (409, "embedder_mismatch", "line 1.embedder"), r.text
        assert ours in err["message"] and named in err["message"]
    assert client.get("/v1/examples", params={"collection": "xfer-e"}).status_code == 404  # nothing written

    retriever = serve.get_deployment_handle("Retriever", app_name="samgraph")
    retriever.add.remote("xfer-theirs", np.ones((1, 512), np.float32), ["x"], None, None, theirs).result()
    body = {"image_id": source["image_id"], "box_xyxy": BOXES["truck"][0], "label": "truck", "collection": "xfer-theirs"}
    for path, req in (("/v1/examples", body), ("/v1/predict", {"image_id": source["image_id"], "collection": "xfer-theirs", "max_instances": 1, "mask_format": "none"})):
        r = client.post(path, json=req)
        err = r.json()["error"]
        assert (r.status_code, err["code"], err["field"]) == (409, "embedder_mismatch", "collection"), (path, r.text)
        assert ours in err["message"] and theirs in err["message"]
    assert client.get("/v1/examples", params={"collection": "xfer-theirs"}).json()["total"] == 1  # untouched
