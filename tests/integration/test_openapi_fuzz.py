"""Property-based fuzzing of the running app with Schemathesis, from its own ``/openapi.json``.

Every operation in the document gets Schemathesis' explicit examples, its coverage cases (boundary
values, missing and unknown fields, wrong types, other HTTP methods; deterministic, a fixed number per
schema) and ``MAX_EXAMPLES`` generated cases (seeded). A case passes when the answer is not a 5xx, its
status and content type are declared for the operation, its body conforms to the declared schema, and
every 4xx/5xx carries the ``Error`` body (:func:`error_body`, which also covers undeclared methods).

What the fuzz is kept from, and why:

- The request ``examples`` of ``/v1/predict``, ``/v1/examples``, ``/v1/segment/video``,
  ``/v1/video/sessions`` and ``/integrations/label-studio/predict`` are left out of the document the fuzzer reads (the others stay): seeded with a
  valid image or clip, each of their variants runs automatic masks or tracks or opens a clip (seconds
  of CPU each), and adds examples or sessions that stay. Their valid answers are checked in ``test_openapi_bodies.py``, ``test_predict_api.py`` and
  ``test_video_api.py``, ``test_video_sessions.py``; here they get everything else (and the PNGs Schemathesis makes for ``image``
  file parts, which /v1/predict answers 404 for want of a collection).
- An ``amg.points_per_side`` in 9..128 is lowered to 8 before sending (:func:`_bounded`): it is valid,
  and up to 16384 decoder clicks (minutes on CPU) per case. Values outside 1..128 are sent as drawn.
- No values from earlier answers are reused (an ``image_id`` would make every /v1/predict case valid).
- The ``X-Request-Timeout`` header is left out of the document the fuzzer reads: a small valid value is
  answered 503 ``deadline`` (documented, but a 5xx, which ``not_a_server_error`` refuses), and its cases
  would multiply those of every image route. Its answers (422 for a bad value, 503 ``deadline`` with
  ``Retry-After``) are checked in ``test_deadlines.py``.
- Schemathesis makes valid PNGs for the ``image`` file part, so some ``POST /v1/examples`` cases store an
  example: they are sent to a collection of their own (:data:`FUZZ_COLLECTION`, when the case names a
  valid one) and the example is deleted at once; the empty collection stays.
"""

from __future__ import annotations

import collections
import copy
import json
import re
import time

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.config import SchemathesisConfig
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from serve_app.ingress.deadlines import TIMEOUT_HEADER
from serve_app.ingress.errors import ErrorBody
from serve_app.ingress.schemas import COLLECTION_PATTERN

MAX_EXAMPLES = 20  # generated cases per operation (the fuzzing phase); coverage cases come on top
SEED = 14
#: POST routes whose request examples the fuzzer does not get (see the module docstring).
UNSEEDED = (
    "/v1/predict",
    "/v1/examples",
    "/v1/segment/video",
    "/v1/video/sessions",
    # its example is a valid task with an inline image: mutated, every case encodes (and pre-labels) a new
    # image, ~200 s of CPU in all; Label Studio's own calls are tested in tests/integration/test_labelstudio.py
    "/integrations/label-studio/predict",
)
MAX_FUZZ_GRID = 8  # amg.points_per_side sent at most (see _bounded)
#: Where a POST /v1/examples case with a valid collection stores (and at once deletes) its example: not
#: "default", so no other case finds a collection it can run /v1/predict's automatic masks on.
FUZZ_COLLECTION = "fuzz_examples"
#: Per operation: cases sent and statuses seen (printed at the end of the module, for the record).
SEEN: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)


@schemathesis.check
def error_body(ctx, response, case):
    """Every 4xx and 5xx answer is JSON with the ``Error`` body, whether or not the status is declared
    for the operation (a 405 of another method, a 404 of an unknown path)."""
    if response.status_code < 400:
        return None
    try:
        body = json.loads(response.content)
    except ValueError:
        raise AssertionError(f"{response.status_code} body is not JSON: {response.content[:200]!r}") from None
    ErrorBody.model_validate(body)  # raises: the body is not {"error": {"code", "message", "field", ...}}
    return None


# An examples file (POST /v1/examples/import) is text; Schemathesis sends generated strings as they are.
schemathesis.serializer.alias("application/x-ndjson", "text/plain")

CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance, error_body]


def _bounded(node) -> None:
    """Lower every ``amg.points_per_side`` in 9..128 to :data:`MAX_FUZZ_GRID`, in place."""
    if isinstance(node, dict):
        amg = node.get("amg")
        if isinstance(amg, dict):
            pps = amg.get("points_per_side")
            if isinstance(pps, int) and not isinstance(pps, bool) and MAX_FUZZ_GRID < pps <= 128:
                amg["points_per_side"] = MAX_FUZZ_GRID
        for v in node.values():
            _bounded(v)
    elif isinstance(node, list):
        for v in node:
            _bounded(v)


def _prepare(case) -> None:
    """Keep the case cheap and the store clean (module docstring): bound the AMG grids, and send a
    ``POST /v1/examples`` that names a valid collection (or none) to :data:`FUZZ_COLLECTION`."""
    _bounded(case.body)
    if case.operation.path != "/v1/examples" or case.method.upper() != "POST" or not isinstance(case.body, dict):
        return
    body = case.body.get("request") if case.media_type == "multipart/form-data" else case.body
    if isinstance(body, dict) and re.fullmatch(COLLECTION_PATTERN, str(body.get("collection", "default"))):
        body["collection"] = FUZZ_COLLECTION


def _fuzzed_document() -> dict:
    """The app's document (as ``/openapi.json`` serves it, see :func:`test_fuzzed_document_is_the_served_one`),
    less the examples of :data:`UNSEEDED`. Built in-process at collection: the tests are generated from it."""
    from serve_app.ingress.deployment import api

    spec = copy.deepcopy(api.openapi())
    for path in UNSEEDED:
        spec["paths"][path]["post"]["requestBody"]["content"]["application/json"].pop("examples")
    for operations in spec["paths"].values():
        for op in operations.values():
            kept = [p for p in op.get("parameters", []) if p["name"] != TIMEOUT_HEADER]
            if "parameters" in op and not kept:
                del op["parameters"]
            elif "parameters" in op:
                op["parameters"] = kept
    return spec


# No values taken from earlier answers (Schemathesis' "extra data sources"): an image_id from a /v1/segment
# answer would make /v1/predict and /v1/examples cases valid, each seconds of CPU, and store examples.
_NO_FEEDBACK = {"extra-data-sources": {"responses": False}}
CONFIG = {
    "seed": SEED,
    "phases": {"examples": _NO_FEEDBACK, "coverage": _NO_FEEDBACK, "fuzzing": _NO_FEEDBACK, "stateful": {"enabled": False}},
}
SCHEMA = schemathesis.openapi.from_dict(_fuzzed_document(), config=SchemathesisConfig.from_dict(CONFIG))


@pytest.fixture(scope="module", autouse=True)
def report():
    """Print what was sent, per operation (``-s`` shows it)."""
    t0 = time.perf_counter()
    yield
    lines = [f"  {op}: {sum(c.values())} cases, statuses {dict(sorted(c.items()))}" for op, c in sorted(SEEN.items())]
    total = sum(sum(c.values()) for c in SEEN.values())
    print(f"\nschemathesis: {len(SEEN)} operations, {total} cases in {time.perf_counter() - t0:.0f} s\n" + "\n".join(lines))


def test_fuzzed_document_is_the_served_one(client):
    from serve_app.ingress.deployment import api

    assert client.get("/openapi.json").json() == json.loads(json.dumps(api.openapi()))


@SCHEMA.parametrize()
@settings(max_examples=MAX_EXAMPLES, derandomize=True, deadline=None, database=None, suppress_health_check=list(HealthCheck))
def test_no_5xx_and_every_error_is_documented(case, app_url):
    _prepare(case)
    response = case.call(base_url=app_url, timeout=120)
    SEEN[case.operation.label][response.status_code] += 1
    if case.method.upper() == "POST" and response.status_code == 200:  # keep no state behind
        if case.operation.path == "/v1/examples":
            for example_id in response.json()["ids"]:
                httpx.delete(f"{app_url}/v1/examples/{example_id}", params={"collection": response.json()["collection"]}, timeout=60)
        elif case.operation.path == "/v1/video/sessions":
            httpx.delete(f"{app_url}/v1/video/sessions/{response.json()['session_id']}", timeout=60)
    case.validate_response(response, checks=CHECKS)
