"""``samgraph examples export`` / ``import`` against a fake service (httpx.MockTransport): what reaches the
file and what is sent. The real service's side is tests/integration/test_examples_transfer.py."""

from __future__ import annotations

import gzip
import json
import uuid

import httpx
import numpy as np
import pytest

from deployments.runtime.example_file import ExampleHeader, Examples, export_lines, read_examples
from serve_app.cli import main as cli
from serve_app.cli.examples_file import export_to_file, file_parts, import_from_file
from serve_app.client import ApiStreamError, SamgraphClient

URL = "http://samgraph.test:8000"


def _file(n: int, dim: int = 4, collection: str = "pets") -> bytes:
    rng = np.random.default_rng(n)
    page = Examples([str(uuid.uuid4()) for _ in range(n)], rng.standard_normal((n, dim)).astype(np.float32), ["cat"] * n, [{"i": i} for i in range(n)])
    return b"".join(export_lines(ExampleHeader(collection, dim, {"model_id": "m", "weights": "random"}), [page]))


def _client(handler) -> SamgraphClient:
    return SamgraphClient(URL, 5.0, transport=httpx.MockTransport(handler))


@pytest.mark.parametrize("name", ["pets.jsonl", "pets.jsonl.gz"])
def test_export_writes_the_stream_and_gzips_by_name(tmp_path, name):
    body = _file(5)
    seen = []

    def handler(request):
        seen.append((request.url.path, dict(request.url.params)))
        return httpx.Response(200, content=body, headers={"content-type": "application/x-ndjson"})

    out = export_to_file(_client(handler), "pets", tmp_path / name)
    assert out == {"collection": "pets", "dim": 4, "points": 5, "out": str(tmp_path / name)}
    assert seen == [("/v1/examples/export", {"collection": "pets"})]
    raw = (tmp_path / name).read_bytes()
    assert (gzip.decompress(raw) if name.endswith(".gz") else raw) == body
    assert list(tmp_path.iterdir()) == [tmp_path / name]


@pytest.mark.parametrize(
    "tail",
    [b"", b'{"type": "error", "error": {"code": "internal", "message": "the export failed after 2 examples"}}\n'],
)
def test_a_stream_without_its_end_leaves_no_file(tmp_path, tail):
    cut = b"".join(_file(5).splitlines(keepends=True)[:3]) + tail
    api = _client(lambda request: httpx.Response(200, content=cut))
    with pytest.raises(ApiStreamError) as info:
        export_to_file(api, "pets", tmp_path / "pets.jsonl")
    assert ("failed after 2" in str(info.value)) == bool(tail)
    assert list(tmp_path.iterdir()) == []  # neither the file nor its .partial


def test_parts_are_files_of_their_own_and_cover_the_file(tmp_path):
    path = tmp_path / "pets.jsonl.gz"
    body = _file(5)
    path.write_bytes(gzip.compress(body))
    parts = list(file_parts(path, batch_points=2))
    assert [n for _, n in parts] == [2, 2, 1]
    ids = []
    for part, n in parts:
        header, ex = read_examples(part.splitlines())
        assert (header.collection, header.dim, len(ex)) == ("pets", 4, n)
        ids += ex.ids
    assert ids == read_examples(body.splitlines())[1].ids
    (tmp_path / "empty.jsonl").write_bytes(_file(0))
    assert [n for _, n in file_parts(tmp_path / "empty.jsonl")] == [0]  # an empty collection: one part


def test_import_sends_parts_to_the_named_collection(tmp_path, capsys):
    path = tmp_path / "pets.jsonl"
    path.write_bytes(_file(5))
    sent = []

    def handler(request):
        assert request.headers["content-type"] == "application/x-ndjson"
        _, ex = read_examples(request.content.splitlines())
        sent.append((dict(request.url.params), len(ex)))
        return httpx.Response(200, json={"collection": "copy", "imported": len(ex), "created": len(sent) == 1, "dim": 4, "count": 2 * len(sent)})

    out = import_from_file(_client(handler), path, "copy", batch_points=2)
    assert sent == [({"collection": "copy"}, 2), ({"collection": "copy"}, 2), ({"collection": "copy"}, 1)]
    assert out == {"collection": "copy", "imported": 5, "created": True, "dim": 4, "count": 6}


def test_cli_import_of_a_bad_file_sends_nothing(tmp_path, capsys, monkeypatch):
    lines = _file(3).splitlines(keepends=True)
    lines[2] = lines[2].replace(b'"label":"cat"', b'"label":""')
    path = tmp_path / "bad.jsonl"
    path.write_bytes(b"".join(lines))
    monkeypatch.setattr(SamgraphClient, "_send", lambda *a, **k: pytest.fail("sent a request"))
    assert cli.main(["examples", "import", "--api", URL, "--file", str(path)]) == 2
    assert "bad.jsonl: line 3.label: label must be 1-100 characters" in capsys.readouterr().err
    assert cli.main(["examples", "import", "--api", URL, "--file", str(path), "--batch-points", "0"]) == 2


def test_cli_export_and_import_print_their_answers(tmp_path, capsys, monkeypatch):
    body = _file(3)

    def handler(request):
        if request.method == "GET":
            return httpx.Response(200, content=body)
        return httpx.Response(200, json={"collection": "pets", "imported": 3, "created": False, "dim": 4, "count": 3, "warnings": ["other embedder"]})

    transport = httpx.MockTransport(handler)
    real = SamgraphClient.__init__
    monkeypatch.setattr(SamgraphClient, "__init__", lambda self, url, timeout_s=300.0, **kw: real(self, url, timeout_s, transport=transport, api_key=""))
    out = tmp_path / "pets.jsonl"
    assert cli.main(["examples", "export", "--api", URL, "--collection", "pets", "--out", str(out)]) == 0
    assert json.loads(capsys.readouterr().out)["points"] == 3
    assert cli.main(["examples", "import", "--api", URL, "--file", str(out)]) == 0
    captured = capsys.readouterr()
    assert json.loads(captured.out)["imported"] == 3
    assert "warning: other embedder" in captured.err and "imported 3/3" in captured.err
