"""Access control over real HTTP: a side app next to the package's app, an Ingress with ``auth`` set over
the package app's stages (:func:`tests.integration.conftest.side_app`), so the package's app stays open
for the other tests and is never redeployed."""

from __future__ import annotations

import hashlib
import io
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from tests.integration.conftest import side_app

KEY_A = "itest-key-A-0123456789abcdef"  # stored raw in the keys file
KEY_B = "itest-key-B-fedcba9876543210"  # stored as its sha256 only
ORIGIN = "https://label.example.com"
BURST = 4


def _png_64() -> bytes:
    rgb = np.zeros((64, 64, 3), np.uint8)
    rgb[16:48, 16:48] = 200
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="PNG")
    return buf.getvalue()


def _bearer(key: str) -> dict:
    return {"Authorization": f"Bearer {key}"}


@pytest.fixture(scope="module")
def secured(app_args, app_url, tmp_path_factory):
    """A side app at /secured with two keys (one raw, one hashed), a 1/min limit with a burst of
    :data:`BURST` and one allowed origin; a client whose base URL is the side app's root."""
    keys = tmp_path_factory.mktemp("auth") / "keys.txt"
    keys.write_text(f"# test keys\n{KEY_A}\nsha256:{hashlib.sha256(KEY_B.encode()).hexdigest()}\n")
    auth = {"keys_file": str(keys), "keys_env": None, "requests_per_minute": 1, "burst": BURST, "cors_origins": [ORIGIN]}
    with side_app("secured", {**app_args, "auth": auth}) as prefix, httpx.Client(base_url=app_url + prefix, timeout=300) as c:
        yield c


def test_keys_are_needed_on_v1_and_metrics(secured):
    image = {"image": ("tiny.png", _png_64(), "image/png")}
    for n, headers in enumerate(({}, _bearer("wrong-key-wrong-key-wrong"), {"Authorization": KEY_B})):
        r = secured.post("/v1/segment", files=image, headers={**headers, "x-request-id": f"access-{n}"})
        assert r.status_code == 401, r.text
        assert r.headers["www-authenticate"] == "Bearer"
        err = r.json()["error"]
        assert err["code"] == "unauthorized" and err["request_id"] == f"access-{n}"
        assert secured.get("/metrics", headers=headers).status_code == 401
    r = secured.post("/v1/segment", files=image, headers=_bearer(KEY_B))
    assert r.status_code == 200, r.text
    assert r.json()["width"] == 64 and r.json()["results"]
    assert secured.get("/metrics", headers=_bearer(KEY_B)).status_code == 200
    assert secured.get("/healthz").status_code == 200
    assert secured.get("/readyz").status_code == 200


def test_keys_are_needed_on_the_transfer_and_polygon_routes(secured):
    for method, path, kw in (
        ("GET", "/v1/examples/export", {"params": {"collection": "none-here"}}),
        ("POST", "/v1/examples/import", {"content": b"{}", "headers": {"content-type": "application/x-ndjson"}}),
        ("POST", "/v1/masks/polygons", {"json": {"masks": [{"size": [1, 1], "counts": "01"}]}}),
    ):
        r = secured.request(method, path, **kw)
        assert r.status_code == 401, (path, r.text)
        assert r.json()["error"]["code"] == "unauthorized"


def test_rate_limit_per_key_answers_429_with_retry_after(secured):
    statuses = [secured.get("/v1/examples", params={"collection": "none-here"}, headers=_bearer(KEY_A)).status_code for _ in range(BURST)]
    assert 429 not in statuses and 401 not in statuses
    r = secured.get("/v1/examples", params={"collection": "none-here"}, headers=_bearer(KEY_A))
    assert r.status_code == 429, r.text
    assert int(r.headers["retry-after"]) >= 1
    assert r.json()["error"]["code"] == "rate_limited" and r.json()["error"]["request_id"]


def test_cors_preflight_allow_list(secured):
    pre = {"Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "authorization,content-type"}
    r = secured.options("/v1/segment", headers={"Origin": ORIGIN, **pre})
    assert r.status_code == 200 and r.headers["access-control-allow-origin"] == ORIGIN
    r = secured.options("/v1/segment", headers={"Origin": "https://elsewhere.example.com", **pre})
    assert r.status_code == 400 and "access-control-allow-origin" not in r.headers


def test_no_key_in_the_logs(secured):
    import ray

    secured.get("/v1/stats", headers=_bearer("wrong-key-that-must-not-be-logged"))
    logs = Path(ray._private.worker._global_node.get_logs_dir_path())
    needles = [k.encode() for k in (KEY_A, KEY_B, "wrong-key-that-must-not-be-logged")]
    for f in logs.rglob("*"):
        if f.is_file() and f.stat().st_size < 64 * 2**20:
            data = f.read_bytes()
            assert not any(n in data for n in needles), f"a key is in {f}"


@pytest.fixture(scope="module")
def keyed_page(browser, app_args, app_url, tmp_path_factory):
    """(a fresh browser tab, the base URL of a side app at /keyed with one key and a limit high enough for a
    page's calls)."""
    keys = tmp_path_factory.mktemp("ui_auth") / "keys.txt"
    keys.write_text(f"{KEY_A}\n")
    auth = {"keys_file": str(keys), "keys_env": None, "requests_per_minute": 600, "burst": 100, "cors_origins": []}
    page = browser.new_page()
    page.set_default_timeout(60_000)
    try:
        with side_app("keyed", {**app_args, "auth": auth}) as prefix:
            yield page, app_url + prefix
    finally:
        page.close()


def test_annotation_page_asks_for_the_key_and_keeps_it(keyed_page, truck_path):
    """The first key typed is wrong: the page shows the 401 and, on the next call, says the key was not
    accepted and asks again. The right key then goes on every call, from sessionStorage, unasked."""
    page, url = keyed_page
    answers, asked = ["wrong-key-wrong-key-wrong", KEY_A], []

    def on_dialog(dialog):
        asked.append(dialog.message)
        dialog.accept(answers[len(asked) - 1])

    page.on("dialog", on_dialog)
    page.goto(f"{url}/ui")
    page.wait_for_selector("#error:not([hidden])")  # the listing on load: wrong key, 401 shown
    assert len(asked) == 1 and "needs an API key" in asked[0]
    assert "unauthorized" in page.inner_text("#error")

    ok_segment = lambda r: r.url.endswith("/v1/segment") and r.request.method == "POST" and r.ok  # noqa: E731
    with page.expect_response(ok_segment) as info:
        page.set_input_files("#file", str(truck_path))
    assert len(asked) == 2 and "not accepted" in asked[1]
    assert info.value.request.headers["authorization"] == f"Bearer {KEY_A}"
    assert page.evaluate("sessionStorage.getItem('samgraph.api_key')") == KEY_A

    with page.expect_response(lambda r: "/v1/examples" in r.url and r.request.method == "GET") as info:
        page.reload()
    # past the key check: 404 unknown_collection, as the empty "default" collection gets without keys
    assert info.value.status == 404 and info.value.request.headers["authorization"] == f"Bearer {KEY_A}"
    assert len(asked) == 2  # kept for the tab: not asked again
