"""What ``/openapi.json`` says is what the running app does: requests built from the document (its
examples, and a multipart upload built from the multipart schema) are accepted, and the answers conform
to the document's 200 schemas: every route's, in :func:`test_every_route_answers_its_declared_model`."""

from __future__ import annotations

import base64
import functools
import json

import pytest

from serve_app.ingress.request_examples import EXAMPLE_COLLECTION
from tests.openapi_doc import conforms


@pytest.fixture(scope="module")
def spec(client) -> dict:
    r = client.get("/openapi.json")
    assert r.status_code == 200
    return r.json()


def _examples(spec: dict, path: str) -> dict[str, dict]:
    return {
        k: v["value"]
        for k, v in spec["paths"][path]["post"]["requestBody"]["content"]["application/json"]["examples"].items()
    }


def _operations(spec: dict) -> set[tuple[str, str]]:
    """Every ``(METHOD, path template)`` of the document."""
    return {(method.upper(), path) for path, ops in spec["paths"].items() for method in ops}


def _ok_schema(spec: dict, path: str, method: str = "post") -> str:
    return spec["paths"][path][method]["responses"]["200"]["content"]["application/json"]["schema"]["$ref"].rsplit(
        "/", 1
    )[-1]


def _multipart(spec: dict, path: str, body: dict) -> tuple[dict, dict]:
    """An example JSON body as the multipart request the document describes: the inline image becomes the
    file part (``format: binary``), the other fields the ``request`` part (JSON)."""
    schema = spec["paths"][path]["post"]["requestBody"]["content"]["multipart/form-data"]["schema"]
    (part,) = schema["required"]
    assert schema["properties"][part]["format"] == "binary"
    rest = {k: v for k, v in body.items() if k != part}
    return {part: (f"{part}.png", base64.b64decode(body[part]["base64"]), "image/png")}, {"request": json.dumps(rest)}


@pytest.fixture(scope="module")
def added(client, spec):
    """The /v1/examples example, stored (it fills the collection /v1/predict's example reads); deleted
    again afterwards."""
    (body,) = _examples(spec, "/v1/examples").values()
    r = client.post("/v1/examples", json=body)
    assert r.status_code == 200, r.text
    yield r.json()
    for example_id in r.json()["ids"]:
        assert client.delete(f"/v1/examples/{example_id}", params={"collection": EXAMPLE_COLLECTION}).status_code == 200


def test_example_answer_conforms(spec, added):
    conforms(spec, _ok_schema(spec, "/v1/examples"), added)
    assert added["collection"] == EXAMPLE_COLLECTION and added["area_px"] > 0


@pytest.mark.parametrize("name", ["box", "points"])
def test_segment_examples_are_accepted(client, spec, name):
    r = client.post("/v1/segment", json=_examples(spec, "/v1/segment")[name])
    assert r.status_code == 200, r.text
    conforms(spec, _ok_schema(spec, "/v1/segment"), r.json())
    assert r.json()["width"] == r.json()["height"] == 16


def test_segment_multipart_built_from_the_schema_is_accepted(client, spec):
    body = _examples(spec, "/v1/segment")["box"]
    files, data = _multipart(spec, "/v1/segment", body)
    r = client.post("/v1/segment", files=files, data=data)
    assert r.status_code == 200, r.text
    conforms(spec, _ok_schema(spec, "/v1/segment"), r.json())
    as_json = client.post("/v1/segment", json=body).json()
    assert r.json()["results"] == as_json["results"]  # the same request, either way


def test_segment_answer_with_every_option_conforms(client, spec):
    """Text prompts, PNG masks and logits: the optional answer fields are declared too."""
    body = {**_examples(spec, "/v1/segment")["box"], "return_logits": True, "mask_format": "png"}
    body["prompts"] = [*body["prompts"], {"text": "a white square"}]
    r = client.post("/v1/segment", json=body)
    assert r.status_code == 200, r.text
    conforms(spec, _ok_schema(spec, "/v1/segment"), r.json())
    assert "low_res_logits" in r.json()["results"][0]["masks"][0] and "embedder_weights" in r.json()


def test_predict_example_is_accepted(client, spec, added):
    (body,) = _examples(spec, "/v1/predict").values()
    for files, data in ((None, None), _multipart(spec, "/v1/predict", body)):
        r = (
            client.post("/v1/predict", json=body)
            if files is None
            else client.post("/v1/predict", files=files, data=data)
        )
        assert r.status_code == 200, r.text
        conforms(spec, _ok_schema(spec, "/v1/predict"), r.json())


def test_video_stream_errors_before_the_stream_are_json_4xx(client, spec):
    """With ``stream: true``, anything wrong that can be seen before tracking is a 4xx with the Error
    body, not a 200 NDJSON stream that ends in an error line."""
    (body,) = _examples(spec, "/v1/segment/video").values()
    bad = {
        **body,
        "stream": True,
        "objects": [{"obj_id": 1, "prompts": [{"frame_index": 5, "box_xyxy": [4, 4, 12, 12]}]}],
    }
    r = client.post("/v1/segment/video", json=bad)
    assert r.status_code == 422 and r.headers["content-type"].startswith("application/json"), r.text
    conforms(spec, "Error", r.json())
    assert r.json()["error"]["field"] == "objects[0].prompts[0].frame_index"


def _check(spec: dict, seen: set, method: str, template: str, r) -> None:
    """A 2xx answer of ``method template`` that conforms to what the document declares for it: the JSON
    body to the 200's schema; an NDJSON body line by line (each a JSON object; ``frame`` lines to
    ``VideoFrameOut``, the declared frame of ``/v1/segment/video``)."""
    assert 200 <= r.status_code < 300, (method, template, r.status_code, r.text[:500])
    content = spec["paths"][template][method.lower()]["responses"][str(r.status_code)]["content"]
    ctype = r.headers["content-type"].split(";")[0]
    assert ctype in content, (method, template, ctype, list(content))
    if ctype == "application/json":
        conforms(spec, content[ctype]["schema"]["$ref"].rsplit("/", 1)[-1], r.json())
    else:
        lines = [json.loads(line) for line in r.text.splitlines()]
        assert lines and all(isinstance(rec, dict) for rec in lines), (method, template)
        for rec in lines:
            if rec.get("type") == "frame":
                conforms(spec, "VideoFrameOut", {k: v for k, v in rec.items() if k != "type"})
    seen.add((method, template))


def test_every_route_answers_its_declared_model(client, spec, added):
    """A valid request to every operation of the document, built from its examples; each 2xx answer
    conforms to the operation's declared 200 (the app validates it into the same model first, so a
    handler whose answer drifts from its model answers 500 here). A new route fails this test until it
    gets a request below."""
    seen: set[tuple[str, str]] = set()
    check = functools.partial(_check, spec, seen)
    for path in ("/healthz", "/readyz", "/v1/stats", "/v1/models"):
        check("GET", path, client.get(path))
    assert client.get("/v1/stats").json()["decoder"]["requests"] >= 1  # `added` went through a decoder

    answers = {}
    for path in ("/v1/segment", "/v1/predict", "/v1/masks/polygons", "/v1/segment/video"):
        (body, *_) = _examples(spec, path).values()
        answers[path] = client.post(path, json=body)
        check("POST", path, answers[path])
    polygons = answers["/v1/masks/polygons"].json()["masks"][0]
    assert polygons["polygons"][0]["exterior"] and polygons["area_px"] == 64
    video = answers["/v1/segment/video"].json()
    assert video["num_frames"] == len(video["frames"]) == 2

    ls = "/integrations/label-studio"
    check("GET", f"{ls}/health", client.get(f"{ls}/health"))
    for path in (f"{ls}/setup", f"{ls}/predict", f"{ls}/webhook"):
        (body, *_) = _examples(spec, path).values()
        check("POST", path, client.post(path, json=body))

    col = {"collection": EXAMPLE_COLLECTION}
    (body, *_) = _examples(spec, "/v1/examples").values()
    r = client.post("/v1/examples", json=body)
    check("POST", "/v1/examples", r)
    example_id = r.json()["ids"][0]
    r = client.get("/v1/examples", params=col)
    check("GET", "/v1/examples", r)
    assert example_id in [i["id"] for i in r.json()["items"]]
    exported = client.get("/v1/examples/export", params=col)
    check("GET", "/v1/examples/export", exported)
    copy = {"collection": f"{EXAMPLE_COLLECTION}-copy"}
    headers = {"content-type": "application/x-ndjson"}
    check(
        "POST",
        "/v1/examples/import",
        client.post("/v1/examples/import", params=copy, content=exported.content, headers=headers),
    )
    for item in client.get("/v1/examples", params=copy).json()["items"]:
        assert client.delete(f"/v1/examples/{item['id']}", params=copy).status_code == 200
    check("DELETE", "/v1/examples/{example_id}", client.delete(f"/v1/examples/{example_id}", params=col))

    base = "/v1/video/sessions"
    (body,) = _examples(spec, base).values()
    opened = client.post(base, json=body)
    check("POST", base, opened)
    one = f"{base}/{opened.json()['session_id']}"
    try:
        check("GET", f"{base}/{{session_id}}", client.get(one))
        (prompt,) = _examples(spec, f"{base}/{{session_id}}/prompts").values()
        check("POST", f"{base}/{{session_id}}/prompts", client.post(f"{one}/prompts", json=prompt))
        (propagate,) = _examples(spec, f"{base}/{{session_id}}/propagate").values()
        r = client.post(f"{one}/propagate", json=propagate)
        check("POST", f"{base}/{{session_id}}/propagate", r)
        assert [json.loads(line)["type"] for line in r.text.splitlines()] == ["start", "frame", "frame", "end"]
        removed = client.delete(f"{one}/objects/{prompt['obj_id']}")
        check("DELETE", f"{base}/{{session_id}}/objects/{{obj_id}}", removed)
        check("POST", f"{base}/{{session_id}}/reset", client.post(f"{one}/reset"))
        check("DELETE", f"{base}/{{session_id}}/propagation", client.delete(f"{one}/propagation"))
    finally:
        closed = client.delete(one)
    check("DELETE", f"{base}/{{session_id}}", closed)
    gone = client.get(one)
    assert gone.status_code == 404
    conforms(spec, "Error", gone.json())
    assert seen == _operations(spec), f"routes without a request here: {sorted(_operations(spec) - seen)}"
