"""serve_app.client against a fake service (httpx.MockTransport), and the CLI's output and exit codes
through it."""

from __future__ import annotations

import json
import re

import httpx
import pytest

from serve_app.cli import main as cli
from serve_app.client import ApiResponseError, ApiStreamError, ApiUnreachable, SamgraphClient

URL = "http://samgraph.test:8000"
ERROR = {
    "error": {
        "code": "invalid_request",
        "message": "prompts[0].box_xyxy: x1 must be > x0",
        "field": "prompts[0].box_xyxy",
        "request_id": "r1",
    }
}


def _client(handler) -> SamgraphClient:
    return SamgraphClient(URL, 5.0, transport=httpx.MockTransport(handler))


def _ndjson(*records: dict) -> bytes:
    return b"".join(json.dumps(r).encode() + b"\n" for r in records)


START = {"type": "start", "obj_ids": [0], "warnings": ["random weights"], "timing_ms": {"init": 1.0}}
FRAME = {"type": "frame", "frame_index": 0, "propagate_ms": 12.0, "objects": [{"obj_id": 0, "area_px": 42}]}
END = {"type": "end", "frames": 1, "timing_ms": {"total": 20.0}}


def test_api_error_body_and_status_are_kept():
    api = _client(lambda req: httpx.Response(422, json=ERROR))
    with pytest.raises(ApiResponseError) as info:
        api.segment({"prompts": [{"box_xyxy": [3, 0, 1, 1]}]}, image=b"jpeg")
    e = info.value
    assert (e.status, e.code, e.field, e.request_id) == (422, "invalid_request", "prompts[0].box_xyxy", "r1")
    assert e.body == ERROR and e.retry_after_s is None
    assert str(e) == "422 invalid_request: prompts[0].box_xyxy: x1 must be > x0 (field prompts[0].box_xyxy)"


def test_overload_carries_retry_after_and_a_foreign_body_its_text():
    busy = {"error": {"code": "overloaded", "message": "retry later", "field": None}}
    api = _client(lambda req: httpx.Response(503, json=busy, headers={"Retry-After": "2"}))
    with pytest.raises(ApiResponseError) as info:
        api.stats()
    assert (info.value.code, info.value.retry_after_s, str(info.value)) == (
        "overloaded",
        2.0,
        "503 overloaded: retry later",
    )
    api = _client(lambda req: httpx.Response(502, text="<html>bad gateway</html>"))
    with pytest.raises(ApiResponseError) as info:
        api.list_examples()
    assert (info.value.code, info.value.body, str(info.value)) == (None, None, "502: <html>bad gateway</html>")


def test_no_answer_is_unreachable():
    def refuse(req):
        raise httpx.ConnectError("connection refused")

    with pytest.raises(ApiUnreachable, match=f"cannot reach {URL}/: connection refused"):
        SamgraphClient(URL + "/", 5.0, transport=httpx.MockTransport(refuse)).healthz()
    with pytest.raises(ValueError, match="timeout_s must be greater than 0"):
        SamgraphClient(URL, 0)


def test_image_calls_send_multipart_or_json():
    seen = []

    def echo(req: httpx.Request) -> httpx.Response:
        seen.append(req)
        return httpx.Response(200, json={"ok": True})

    api = _client(echo)
    assert api.predict({"collection": "c"}, image=b"\xff\xd8jpeg", filename="a.jpg") == {"ok": True}
    api.add_example({"image_id": "0" * 64, "label": "cat", "box_xyxy": [0, 0, 2, 2]})
    api.list_examples("c", label="cat")
    api.delete_example("abc", "c")
    multipart, as_json, listing, delete = seen
    assert multipart.url.path == "/v1/predict" and multipart.headers["content-type"].startswith("multipart/form-data")
    body = multipart.read()
    assert b'name="image"; filename="a.jpg"' in body and b'{"collection": "c"}' in body
    assert as_json.url.path == "/v1/examples" and json.loads(as_json.read())["label"] == "cat"
    assert dict(listing.url.params) == {"collection": "c", "label": "cat"}
    assert (delete.method, delete.url.path, dict(delete.url.params)) == (
        "DELETE",
        "/v1/examples/abc",
        {"collection": "c"},
    )


def test_readyz_answers_not_ready_without_raising():
    api = _client(lambda req: httpx.Response(503, json={"status": "not_ready", "reason": "warming up"}))
    assert api.readyz() == (503, {"status": "not_ready", "reason": "warming up"})


def test_stream_video_yields_records_and_raises_on_failures():
    sent = []

    def stream(body: bytes):
        def handler(req: httpx.Request) -> httpx.Response:
            sent.append(json.loads(req.read()))
            return httpx.Response(200, content=body, headers={"content-type": "application/x-ndjson"})

        return _client(handler)

    assert [r["type"] for r in stream(_ndjson(START, FRAME, END)).stream_video({"objects": []})] == [
        "start",
        "frame",
        "end",
    ]
    assert sent[0] == {"objects": [], "stream": True}
    failed = {"type": "error", "error": {"code": "internal", "message": "tracking failed midway"}}
    with pytest.raises(ApiStreamError) as info:
        list(stream(_ndjson(START, failed)).stream_video({"objects": []}))
    assert info.value.record == {"error": failed["error"]} and "tracking failed midway" in str(info.value)
    with pytest.raises(ApiStreamError, match="the stream ended early"):
        list(stream(_ndjson(START, FRAME)).stream_video({"objects": []}))
    with pytest.raises(ApiResponseError, match="422 invalid_request"):
        list(_client(lambda req: httpx.Response(422, json=ERROR)).stream_video({"objects": []}, video=b"mp4"))


def _any_route(req: httpx.Request) -> httpx.Response:
    """A fake service that answers every call: NDJSON for the streams, text for /metrics, JSON else."""
    if (
        req.url.path.endswith("/propagate")
        or req.url.path == "/v1/segment/video"
        and b'"stream":true' in req.read().replace(b" ", b"")
    ):
        return httpx.Response(200, content=_ndjson(START, FRAME, END))
    if req.url.path == "/v1/examples/export":
        return httpx.Response(200, content=b'{"type":"header"}\n{"type":"end"}\n')
    if req.url.path == "/metrics":
        return httpx.Response(200, text="samgraph_requests_total 1\n")
    return httpx.Response(200, json={"path": req.url.path})


def test_every_route_of_the_app_has_a_public_verb():
    """Each route of the app's OpenAPI document, and ``/metrics`` (left out of it), is reached by a public
    method of the client."""
    from serve_app.ingress.deployment import api as app

    paths = {**app.openapi()["paths"], "/metrics": {"get": {}}}
    # /integrations/label-studio/* is Label Studio's ML-backend protocol, called by Label Studio itself
    # (tests/integration/test_labelstudio.py), not a verb of samgraph's own client
    paths = {p: ops for p, ops in paths.items() if not p.startswith("/integrations/")}
    routes = {
        (method.upper(), path): re.compile("^" + re.sub(r"\{[^}]+\}", "[^/]+", path) + "$")
        for path, ops in paths.items()
        for method in ops
    }
    assert len(routes) >= 21, sorted(routes)  # the document lists the routes (a moved router would empty it)
    seen = []

    def record(req: httpx.Request) -> httpx.Response:
        hits = [k for k, regex in routes.items() if k[0] == req.method and regex.match(req.url.path)]
        assert len(hits) == 1, f"{req.method} {req.url.path} matches {hits}"
        seen.append(hits[0])
        return _any_route(req)

    api, sid = _client(record), "s1"
    calls = [
        api.healthz,
        api.readyz,
        api.stats,
        api.models,
        api.metrics,
        lambda: api.segment({}),
        lambda: api.predict({}),
        lambda: api.polygons({"masks": []}),
        lambda: api.add_example({}),
        api.list_examples,
        lambda: api.delete_example("e1"),
        lambda: list(api.export_examples()),
        lambda: api.import_examples(b"{}"),
        lambda: api.segment_video({}),
        lambda: list(api.stream_video({})),
        lambda: api.open_session({}, video=b"mp4"),
        lambda: api.session_info(sid),
        lambda: api.session_prompt(sid, {"frame_index": 0, "obj_id": 1, "points": [[1, 1, 1]]}),
        lambda: list(api.propagate_session(sid, {"direction": "both"})),
        lambda: api.cancel_propagation(sid),
        lambda: api.remove_session_object(sid, 1),
        lambda: api.reset_session(sid),
        lambda: api.close_session(sid),
    ]
    for call in calls:
        call()
    assert api.metrics() == "samgraph_requests_total 1\n"
    assert api.session_info(sid) == {"path": "/v1/video/sessions/s1"}
    assert not set(routes) - set(seen), f"routes without a client verb: {sorted(set(routes) - set(seen))}"


@pytest.fixture
def fake_service(monkeypatch):
    """Point the CLI's client at a handler: ``fake_service(handler)``."""

    def use(handler):
        monkeypatch.setattr(
            cli, "_client", lambda args: SamgraphClient(args.api, args.timeout, transport=httpx.MockTransport(handler))
        )

    return use


def test_cli_reports_api_errors_and_unreachable_service(fake_service, tmp_path, capsys):
    image = tmp_path / "a.jpg"
    image.write_bytes(b"jpeg")
    fake_service(lambda req: httpx.Response(422, json=ERROR))
    assert cli.main(["segment", "--api", URL, "--image", str(image), "--box", "3,0,1,1"]) == 1
    assert (
        capsys.readouterr().err
        == "error 422 invalid_request: prompts[0].box_xyxy: x1 must be > x0 (field prompts[0].box_xyxy)\n"
    )

    def refuse(req):
        raise httpx.ConnectError("connection refused")

    fake_service(refuse)
    assert cli.main(["examples", "list", "--api", URL]) == 1
    assert capsys.readouterr().err == f"error: cannot reach {URL}: connection refused\n"
    assert cli.main(["predict", "--api", URL, "--image", str(tmp_path / "missing.jpg")]) == 2


def test_cli_ping_and_examples_list_print_the_answer(fake_service, capsys):
    fake_service(lambda req: httpx.Response(503, json={"status": "not_ready", "reason": "warming up"}))
    assert cli.main(["ping", "--api", URL]) == 1
    assert json.loads(capsys.readouterr().out) == {"status": "not_ready", "reason": "warming up"}
    fake_service(
        lambda req: httpx.Response(
            200, json={"collection": "default", "total": 3, "dim": 512, "counts": {"cat": 2, "bus": 1}}
        )
    )
    assert cli.main(["examples", "list", "--api", URL]) == 0
    assert capsys.readouterr().out.splitlines() == [
        "collection default: 3 examples, 512-d",
        f"  {'bus':<30} {1:>6}",
        f"  {'cat':<30} {2:>6}",
    ]


def test_cli_video_streams_progress_and_writes_the_result(fake_service, tmp_path, capsys):
    frames = tmp_path / "frames"
    frames.mkdir()
    (frames / "00000.jpg").write_bytes(b"jpeg")
    fake_service(lambda req: httpx.Response(200, content=_ndjson(START, FRAME, END)))
    out = tmp_path / "masks.json"
    assert cli.main(["video", "--api", URL, "--frames", str(frames), "--box", "0:1,2,3,4", "--out", str(out)]) == 0
    captured = capsys.readouterr()
    assert captured.err.splitlines() == ["warning: random weights", f"frame     0 (1 done) {12.0:8.0f} ms  0: 42 px"]
    assert json.loads(captured.out) == {"frames": 1, "obj_ids": [0], "timing_ms": {"total": 20.0}}
    result = json.loads(out.read_text())
    assert (
        result["frames"] == [{k: v for k, v in FRAME.items() if k != "type"}]
        and result["timing_ms"] == END["timing_ms"]
    )
    failed = {"type": "error", "error": {"code": "internal", "message": "tracking failed midway"}}
    fake_service(lambda req: httpx.Response(200, content=_ndjson(START, failed)))
    assert cli.main(["video", "--api", URL, "--frames", str(frames), "--box", "1,2,3,4"]) == 1
    assert capsys.readouterr().err.splitlines()[-1] == f"error: {failed['error']}"
