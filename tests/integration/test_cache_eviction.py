"""Cache eviction over HTTP: the package's app redeployed with a 2-image cache per decoder replica (only the
MaskDecoder changes), then the original args again. An evicted image answers 404 ``image_not_cached`` by
``image_id`` alone, and 200 with ``encode_cached: false`` when the request carries its bytes too."""

from __future__ import annotations

import base64
import io
import time

import httpx
import numpy as np
import pytest
from PIL import Image

from tests.integration.conftest import run_app

SWITCH_S = 180.0
BOX = {"box_xyxy": [8, 8, 56, 56]}


def _png(seed: int) -> bytes:
    rgb = np.random.default_rng(seed).integers(0, 255, (64, 64, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="PNG")
    return buf.getvalue()


def _cache_bounds(client: httpx.Client) -> set[int]:
    replicas = client.get("/v1/stats").json()["decoder"]["replicas"]
    return {d["cache"]["max_entries"] for d in replicas.values()}


@pytest.fixture(scope="module")
def small_cache(app_args, app_url):
    with httpx.Client(base_url=app_url, timeout=300) as client:
        try:
            run_app({**app_args, "cache": {"max_entries": 2, "max_bytes": 2**31}})
            deadline = time.monotonic() + SWITCH_S
            while _cache_bounds(client) != {2}:  # the old decoder replica may still answer for a moment
                assert time.monotonic() < deadline, "the redeployed MaskDecoder did not take over"
                time.sleep(1)
            yield client
        finally:
            run_app(app_args)


def test_an_evicted_image_is_404_by_id_and_resent_with_its_bytes(small_cache):
    client = small_cache
    images = [_png(seed) for seed in (101, 102, 103)]
    ids = []
    for data in images:  # the third upload evicts the least recently used, the first
        r = client.post("/v1/segment", json={"image": {"base64": base64.b64encode(data).decode()}, "prompts": [BOX]})
        assert r.status_code == 200 and r.json()["encode_cached"] is False, r.text
        ids.append(r.json()["image_id"])
    cache = client.get("/v1/stats").json()["cache"]
    assert cache["entries"] == 2 and cache["evictions"] >= 1

    gone = client.post("/v1/segment", json={"image_id": ids[0], "prompts": [BOX]})
    assert gone.status_code == 404 and gone.json()["error"]["code"] == "image_not_cached"
    assert gone.json()["error"]["field"] == "image_id"
    held = client.post("/v1/segment", json={"image_id": ids[2], "prompts": [BOX]})
    assert held.status_code == 200 and held.json()["encode_cached"] is True

    body = {"image": {"base64": base64.b64encode(images[0]).decode()}, "image_id": ids[0], "prompts": [BOX]}
    resent = client.post("/v1/segment", json=body)
    assert resent.status_code == 200 and resent.json()["encode_cached"] is False
    assert resent.json()["image_id"] == ids[0] and resent.json()["results"][0]["masks"]
    again = client.post("/v1/segment", json={"image_id": ids[0], "prompts": [BOX]})
    assert again.status_code == 200 and again.json()["encode_cached"] is True  # held again after the resend
