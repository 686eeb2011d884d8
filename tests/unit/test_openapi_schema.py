"""``/openapi.json`` as the app builds it (no Ray): valid OpenAPI 3.1, every POST with its JSON and
multipart bodies, the field limits of the pydantic models, the shared ``Error`` body on every error
status, and examples that the request models accept."""

from __future__ import annotations

import copy

import jsonschema
import pytest
from fastapi import Request  # at module level: the route below is annotated with it (postponed annotations)

from serve_app.ingress.request_examples import TINY_PNG_BASE64
from tests.openapi_doc import conforms

POST_BODIES = {
    # path: (request model, multipart file part, 200 model)
    "/v1/segment": ("SegmentRequest", "image", "SegmentResponse"),
    "/v1/segment/video": ("VideoRequest", "video", "VideoResponse"),
    "/v1/predict": ("PredictRequest", "image", "PredictResponse"),
    "/v1/examples": ("ExampleRequest", "image", "ExampleAdded"),
    "/v1/masks/polygons": ("PolygonsRequest", None, "PolygonsResponse"),  # JSON only
    "/v1/video/sessions": ("OpenSessionRequest", "video", "SessionInfo"),
    "/v1/video/sessions/{session_id}/prompts": ("SessionPromptRequest", None, "SessionFrame"),
    "/v1/video/sessions/{session_id}/propagate": ("PropagateRequest", None, None),  # answers NDJSON only
    "/integrations/label-studio/setup": ("LsSetup", None, "LsSetupAnswer"),  # Label Studio's ML backend protocol
    "/integrations/label-studio/predict": ("LsPredict", None, "LsPredictAnswer"),
    "/integrations/label-studio/webhook": ("LsWebhook", None, "LsWebhookAnswer"),
}
#: POST routes that read no body, and the one whose body is an examples file.
NO_BODY = {"/v1/video/sessions/{session_id}/reset"}
RAW_BODY = {"/v1/examples/import"}


@pytest.fixture(scope="module")
def spec() -> dict:
    from serve_app.ingress.deployment import api

    return copy.deepcopy(api.openapi())


def _operations(spec):
    for path, ops in spec["paths"].items():
        for method, op in ops.items():
            yield path, method, op


def test_is_valid_openapi_3_1(spec):
    import schemathesis

    assert spec["openapi"].startswith("3.1")
    schemathesis.openapi.from_dict(spec).validate()  # the OpenAPI 3.1 meta-schema; raises when invalid


def test_every_reference_resolves(spec):
    refs = set()

    def walk(node):
        if isinstance(node, dict):
            if isinstance(node.get("$ref"), str):
                refs.add(node["$ref"])
            for v in node.values():
                walk(v)
        elif isinstance(node, list):
            for v in node:
                walk(v)

    walk(spec)
    names = {r.removeprefix("#/components/schemas/") for r in refs}
    assert names and names <= set(spec["components"]["schemas"]), names - set(spec["components"]["schemas"])


@pytest.mark.parametrize("path", sorted(POST_BODIES))
def test_post_declares_json_and_multipart_bodies(spec, path):
    model, part, ok = POST_BODIES[path]
    body = spec["paths"][path]["post"]["requestBody"]
    assert body["required"] is True
    content = body["content"]
    assert content["application/json"]["schema"] == {"$ref": f"#/components/schemas/{model}"}
    if part is None:
        assert list(content) == ["application/json"]
        return
    multipart = content["multipart/form-data"]
    props = multipart["schema"]["properties"]
    assert props[part] == {"type": "string", "format": "binary", "description": f"the {part} file"}
    assert props["request"]["$ref"] == f"#/components/schemas/{model}"
    assert multipart["schema"]["required"] == [part]
    assert multipart["encoding"]["request"]["contentType"] == "application/json"


@pytest.mark.parametrize("path", sorted(POST_BODIES))
def test_post_declares_its_answer(spec, path):
    ok = POST_BODIES[path][2]
    content = spec["paths"][path]["post"]["responses"]["200"]["content"]
    if ok is None:
        assert list(content) == ["application/x-ndjson"]
    else:
        assert content["application/json"]["schema"] == {"$ref": f"#/components/schemas/{ok}"}


def test_every_post_declares_a_body(spec):
    posts = {path for path, method, _ in _operations(spec) if method == "post"}
    assert set(POST_BODIES) | RAW_BODY | NO_BODY == posts  # a new POST route: declare its body, list it here
    for path in posts - NO_BODY:
        assert spec["paths"][path]["post"]["requestBody"]["required"] is True
    for path in NO_BODY:
        assert "requestBody" not in spec["paths"][path]["post"]


def test_examples_file_routes_declare_ndjson(spec):
    ndjson = "application/x-ndjson"
    assert list(spec["paths"]["/v1/examples/import"]["post"]["requestBody"]["content"]) == [ndjson]
    assert list(spec["paths"]["/v1/examples/export"]["get"]["responses"]["200"]["content"]) == [ndjson]
    assert list(spec["paths"]["/v1/segment/video"]["post"]["responses"]["200"]["content"]) == [
        "application/json",
        ndjson,
    ]
    import_ok = spec["paths"]["/v1/examples/import"]["post"]["responses"]["200"]["content"]["application/json"][
        "schema"
    ]
    assert import_ok == {"$ref": "#/components/schemas/ImportResult"}


def test_parameters_have_real_examples(spec):
    """No ``"example": {}`` (what a replica's document gets for a parameter without ``openapi_examples``)."""
    for path, method, op in _operations(spec):
        for p in op.get("parameters", []):
            assert "example" not in p and p["examples"], (path, method, p["name"])


def test_every_error_status_has_the_error_body(spec):
    seen = 0
    for path, method, op in _operations(spec):
        for status, response in op["responses"].items():
            if status.startswith(("4", "5")) and path != "/readyz":
                assert response["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/Error"}, (
                    path,
                    method,
                    status,
                )
                seen += 1
        if path.startswith("/v1/"):
            assert {"401", "429"} <= set(op["responses"]), (path, method)
        assert "HTTPValidationError" not in str(op["responses"])  # FastAPI's own 422 body is never sent
    assert seen > 20
    error = spec["components"]["schemas"]["Error"]
    assert error["required"] == ["error"] and error["additionalProperties"] is False
    detail = spec["components"]["schemas"]["ErrorDetail"]
    assert set(detail["required"]) == {"code", "message", "field"}


def test_error_body_matches_what_the_service_sends(spec):
    from serve_app.ingress.errors import ApiError

    conforms(
        spec,
        "Error",
        ApiError(422, "invalid_request", "prompts[0].box_xyxy: x1 must be greater than x0", "prompts[0].box_xyxy").body(
            "rid"
        ),
    )
    conforms(
        spec,
        "Error",
        ApiError(415, "unsupported_media_type", "send application/json or multipart/form-data").body("rid"),
    )
    with pytest.raises(jsonschema.ValidationError):
        conforms(spec, "Error", {"detail": "Not Found"})  # Starlette's default body is not ours


def _prop(spec, component, name):
    """A property's schema, the non-null branch of an optional one."""
    prop = spec["components"]["schemas"][component]["properties"][name]
    return next((b for b in prop.get("anyOf", [prop]) if b.get("type") != "null"), prop)


def test_field_limits_are_in_the_schema(spec):
    from serve_app.ingress.schemas import MAX_POINTS, MAX_PROMPTS, MAX_TEXT_CHARS
    from serve_app.ingress.video_schemas import MAX_OBJECTS

    assert _prop(spec, "SegmentRequest", "prompts")["maxItems"] == MAX_PROMPTS
    assert _prop(spec, "PromptIn", "points")["maxItems"] == MAX_POINTS
    assert _prop(spec, "PromptIn", "text")["maxLength"] == MAX_TEXT_CHARS
    assert _prop(spec, "VideoRequest", "objects")["maxItems"] == MAX_OBJECTS
    assert _prop(spec, "VideoObjectIn", "prompts")["maxItems"] == MAX_PROMPTS
    assert _prop(spec, "PromptIn", "box_xyxy")["minItems"] == _prop(spec, "PromptIn", "box_xyxy")["maxItems"] == 4
    assert (_prop(spec, "PredictRequest", "top_k")["minimum"], _prop(spec, "PredictRequest", "top_k")["maximum"]) == (
        1,
        100,
    )
    assert _prop(spec, "AmgIn", "points_per_side")["maximum"] == 128
    assert "points_per_batch" not in spec["components"]["schemas"]["AmgIn"]["properties"]  # app config only
    assert _prop(spec, "ExampleRequest", "label")["maxLength"] == 100
    assert _prop(spec, "PredictRequest", "collection")["pattern"] == "^[A-Za-z0-9_-]{1,64}$"
    limit = {p["name"]: p for p in spec["paths"]["/v1/examples"]["get"]["parameters"]}["limit"]["schema"]
    assert (limit["minimum"], limit["maximum"]) == (1, 1000)


def test_point_schema_says_what_a_point_is(spec):
    point = _prop(spec, "PromptIn", "points")["items"]
    assert point["minItems"] == point["maxItems"] == 3
    assert point["prefixItems"][2] == {"enum": [1, 0, "fg", "bg"]}


@pytest.mark.parametrize("path", sorted(POST_BODIES))
def test_examples_are_requests_the_route_accepts(spec, path):
    """Each example validates against the published JSON schema and against the pydantic model (which
    adds the rules JSON Schema cannot say, e.g. x1 > x0)."""
    from serve_app.ingress import schemas, video_sessions
    from serve_app.ingress.video_schemas import VideoRequest

    models = {
        "VideoRequest": VideoRequest,
        **{n: getattr(schemas, n) for n in ("SegmentRequest", "PredictRequest", "ExampleRequest", "PolygonsRequest")},
        **{n: getattr(video_sessions, n) for n in ("OpenSessionRequest", "SessionPromptRequest", "PropagateRequest")},
    }
    from serve_app.ingress.routes import labelstudio

    models.update({n: getattr(labelstudio, n) for n in ("LsSetup", "LsPredict", "LsWebhook")})
    name = POST_BODIES[path][0]
    examples = spec["paths"][path]["post"]["requestBody"]["content"]["application/json"]["examples"]
    assert examples
    for example in examples.values():
        conforms(spec, name, example["value"])
        models[name].model_validate(example["value"])


def test_example_image_is_a_16_px_png():
    import base64
    import io

    from PIL import Image

    with Image.open(io.BytesIO(base64.b64decode(TINY_PNG_BASE64))) as im:
        assert (im.format, im.size, im.mode) == ("PNG", (16, 16), "RGB")


def test_body_spec_refuses_two_models_under_one_name():
    from pydantic import BaseModel

    from serve_app.ingress.openapi import DescribedAPI

    app = DescribedAPI(title="t")

    class Thing(BaseModel):
        a: int

    app.body_spec(Thing)
    other = type("Thing", (BaseModel,), {"__annotations__": {"b": str}})
    with pytest.raises(ValueError, match="two different schemas are named 'Thing'"):
        app.body_spec(other)


def test_body_spec_applies_to_a_new_route():
    """The recipe of ``serve_app.ingress.openapi``'s docstring, on a fresh app: a JSON-only route and a
    GET route get their bodies, the Error responses and the components."""
    from pydantic import BaseModel, Field

    from serve_app.ingress.openapi import DescribedAPI

    class ThingRequest(BaseModel):
        name: str = Field(max_length=10)

    class ThingAdded(BaseModel):
        id: str

    app = DescribedAPI(title="t")

    @app.post("/v1/things", **app.body_spec(ThingRequest, None, ok=ThingAdded, errors=(400, 415, 422)))
    async def add_thing(request: Request) -> dict:
        return {}

    @app.get("/v1/things", **app.route_spec(ThingAdded, 404))
    async def get_thing() -> dict:
        return {}

    doc = app.openapi()
    post = doc["paths"]["/v1/things"]["post"]
    assert list(post["requestBody"]["content"]) == ["application/json"]
    assert set(post["responses"]) == {"200", "400", "401", "415", "422", "429"}
    assert set(doc["paths"]["/v1/things"]["get"]["responses"]) == {"200", "401", "404", "429"}
    assert doc["components"]["schemas"]["ThingRequest"]["properties"]["name"]["maxLength"] == 10
    assert {"ThingAdded", "Error", "ErrorDetail"} <= set(doc["components"]["schemas"])


def _api_routes(router):
    """Every ``APIRoute`` of an app or router, those of included routers too."""
    from fastapi.routing import APIRoute

    for route in router.routes:
        if isinstance(route, APIRoute):
            yield route
        elif hasattr(route, "original_router"):  # FastAPI >= 0.137 keeps an included router as a node
            yield from _api_routes(route.original_router)


def test_every_json_answer_is_validated_into_its_documented_model(spec):
    """The model a route's 200 documents is the one its answer is validated into and serialised by (the
    routes' ``response_model``), and every documented route of the app has one, or answers NDJSON only."""
    from serve_app.ingress.deployment import api

    seen = set()
    for route in _api_routes(api):
        if not route.include_in_schema:
            continue
        for method in route.methods:
            content = spec["paths"][route.path][method.lower()]["responses"]["200"]["content"]
            seen.add((method, route.path))
            if "application/json" not in content:
                assert list(content) == ["application/x-ndjson"] and route.response_model is None, route.path
                continue
            documented = content["application/json"]["schema"]["$ref"].rsplit("/", 1)[-1]
            assert route.response_model is not None and route.response_model.__name__ == documented, route.path
            assert route.response_model_exclude_unset, route.path
    assert seen == {(m.upper(), p) for p, ops in spec["paths"].items() for m in ops}


def test_an_answer_that_drifts_from_its_model_is_a_500_not_an_undocumented_body():
    """On a fresh app built like the ingress's: a conforming answer is sent as the model's serialisation
    (the keys the handler set, nothing else), an unknown key or a wrong type is a 500 ``internal``."""
    from fastapi.testclient import TestClient
    from pydantic import BaseModel, ConfigDict

    from serve_app.ingress.http import make_api
    from serve_app.ingress.openapi import DescribedRouter

    class Thing(BaseModel):
        model_config = ConfigDict(extra="forbid")
        id: str
        size: int
        note: str | None = None

    answers = {"ok": {"id": "a", "size": 3}, "null": {"id": "a", "size": 3, "note": None}}
    answers |= {"extra": {"id": "a", "size": 3, "colour": "red"}, "type": {"id": "a", "size": "large"}}
    router = DescribedRouter()

    @router.get("/v1/things/{kind}", **router.route_spec(Thing, 404))
    async def thing(kind: str) -> dict:
        return answers[kind]

    with TestClient(make_api([router]), raise_server_exceptions=False) as c:
        assert c.get("/v1/things/ok").json() == {"id": "a", "size": 3}
        assert c.get("/v1/things/null").json() == {"id": "a", "size": 3, "note": None}
        for kind in ("extra", "type"):
            r = c.get(f"/v1/things/{kind}")
            assert r.status_code == 500 and r.json()["error"]["code"] == "internal", r.text
