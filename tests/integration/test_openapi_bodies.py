"""What ``/openapi.json`` says is what the running app does: requests built from the document (its
examples, and a multipart upload built from the multipart schema) are accepted, and the answers conform
to the document's 200 schemas."""

from __future__ import annotations

import base64
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
    return {k: v["value"] for k, v in spec["paths"][path]["post"]["requestBody"]["content"]["application/json"]["examples"].items()}


def _ok_schema(spec: dict, path: str, method: str = "post") -> str:
    return spec["paths"][path][method]["responses"]["200"]["content"]["application/json"]["schema"]["$ref"].rsplit("/", 1)[-1]


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
        r = client.post("/v1/predict", json=body) if files is None else client.post("/v1/predict", files=files, data=data)
        assert r.status_code == 200, r.text
        conforms(spec, _ok_schema(spec, "/v1/predict"), r.json())


def test_examples_list_and_delete_conform(client, spec, added):
    r = client.get("/v1/examples", params={"collection": EXAMPLE_COLLECTION})
    assert r.status_code == 200, r.text
    conforms(spec, _ok_schema(spec, "/v1/examples", "get"), r.json())
    assert added["ids"][0] in [i["id"] for i in r.json()["items"]]
    extra = client.post("/v1/examples", json=_examples(spec, "/v1/examples")["box"]).json()["ids"][0]
    r = client.delete(f"/v1/examples/{extra}", params={"collection": EXAMPLE_COLLECTION})
    assert r.status_code == 200, r.text
    conforms(spec, _ok_schema(spec, "/v1/examples/{example_id}", "delete"), r.json())


def test_polygons_example_is_accepted(client, spec):
    (body,) = _examples(spec, "/v1/masks/polygons").values()
    r = client.post("/v1/masks/polygons", json=body)
    assert r.status_code == 200, r.text
    conforms(spec, _ok_schema(spec, "/v1/masks/polygons"), r.json())
    assert r.json()["masks"][0]["polygons"][0]["exterior"] and r.json()["masks"][0]["area_px"] == 64


def test_export_and_import_conform(client, spec, added):
    """An export is the document's NDJSON; importing it answers the declared ImportResult."""
    r = client.get("/v1/examples/export", params={"collection": EXAMPLE_COLLECTION})
    assert r.status_code == 200 and r.headers["content-type"].startswith("application/x-ndjson"), r.text
    assert list(spec["paths"]["/v1/examples/export"]["get"]["responses"]["200"]["content"]) == ["application/x-ndjson"]
    copy = f"{EXAMPLE_COLLECTION}-copy"
    imported = client.post("/v1/examples/import", params={"collection": copy}, content=r.content, headers={"content-type": "application/x-ndjson"})
    assert imported.status_code == 200, imported.text
    conforms(spec, _ok_schema(spec, "/v1/examples/import"), imported.json())
    for item in client.get("/v1/examples", params={"collection": copy}).json()["items"]:
        assert client.delete(f"/v1/examples/{item['id']}", params={"collection": copy}).status_code == 200


def test_video_example_is_accepted(client, spec):
    (body,) = _examples(spec, "/v1/segment/video").values()
    r = client.post("/v1/segment/video", json=body)
    assert r.status_code == 200, r.text
    conforms(spec, _ok_schema(spec, "/v1/segment/video"), r.json())
    assert r.json()["num_frames"] == len(r.json()["frames"]) == 2


def test_video_session_answers_conform(client, spec):
    """A session built from the document's examples, through every session route."""
    base = "/v1/video/sessions"
    (body,) = _examples(spec, base).values()
    opened = client.post(base, json=body)
    assert opened.status_code == 200, opened.text
    conforms(spec, _ok_schema(spec, base), opened.json())
    sid = opened.json()["session_id"]
    try:
        conforms(spec, _ok_schema(spec, f"{base}/{{session_id}}", "get"), client.get(f"{base}/{sid}").json())
        (prompt,) = _examples(spec, f"{base}/{{session_id}}/prompts").values()
        r = client.post(f"{base}/{sid}/prompts", json=prompt)
        assert r.status_code == 200, r.text
        conforms(spec, _ok_schema(spec, f"{base}/{{session_id}}/prompts"), r.json())
        (propagate,) = _examples(spec, f"{base}/{{session_id}}/propagate").values()
        r = client.post(f"{base}/{sid}/propagate", json=propagate)
        assert r.status_code == 200 and r.headers["content-type"].startswith("application/x-ndjson"), r.text
        assert [json.loads(line)["type"] for line in r.text.splitlines()] == ["start", "frame", "frame", "end"]
        for method, path in (("delete", f"/objects/{prompt['obj_id']}"), ("post", "/reset"), ("delete", "/propagation")):
            r = client.request(method.upper(), f"{base}/{sid}{path}")
            assert r.status_code == 200, r.text
            template = f"{base}/{{session_id}}" + ("/objects/{obj_id}" if "objects" in path else path)
            conforms(spec, _ok_schema(spec, template, method), r.json())
    finally:
        closed = client.delete(f"{base}/{sid}")
    assert closed.status_code == 200, closed.text
    conforms(spec, _ok_schema(spec, f"{base}/{{session_id}}", "delete"), closed.json())
    gone = client.get(f"{base}/{sid}")
    assert gone.status_code == 404
    conforms(spec, "Error", gone.json())


def test_video_stream_errors_before_the_stream_are_json_4xx(client, spec):
    """With ``stream: true``, anything wrong that can be seen before tracking is a 4xx with the Error
    body, not a 200 NDJSON stream that ends in an error line."""
    (body,) = _examples(spec, "/v1/segment/video").values()
    bad = {**body, "stream": True, "objects": [{"obj_id": 1, "prompts": [{"frame_index": 5, "box_xyxy": [4, 4, 12, 12]}]}]}
    r = client.post("/v1/segment/video", json=bad)
    assert r.status_code == 422 and r.headers["content-type"].startswith("application/json"), r.text
    conforms(spec, "Error", r.json())
    assert r.json()["error"]["field"] == "objects[0].prompts[0].frame_index"


def test_health_and_readiness_conform(client, spec):
    conforms(spec, _ok_schema(spec, "/healthz", "get"), client.get("/healthz").json())
    r = client.get("/readyz")
    assert r.status_code == 200
    conforms(spec, _ok_schema(spec, "/readyz", "get"), r.json())
