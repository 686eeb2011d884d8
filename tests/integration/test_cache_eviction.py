"""Cache eviction over HTTP: a side app next to the package's app (its own MaskDecoder, with a 2-image
cache, and an Ingress over the package app's other stages; :func:`tests.integration.conftest.side_app`),
so the package's app is never redeployed. An evicted image answers 404 ``image_not_cached`` by
``image_id`` alone, and 200 with ``encode_cached: false`` when the request carries its bytes too."""

from __future__ import annotations

import base64
import io

import httpx
import numpy as np
import pytest
from PIL import Image

from tests.integration.conftest import QUICK_DRAIN, app_stages, side_app

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
    """A client of the side app at /small_cache: one MaskDecoder replica (1 torch thread, no CPU share)
    with a 2-image cache, over the package app's ImageEncoder."""
    from deployments.decoder import MaskDecoder
    from serve_app.config import AppArgs
    from serve_app.preflight import preflight

    args = {**app_args, "cache": {"max_entries": 2, "max_bytes": 2**31}}
    cfg = AppArgs.model_validate(args)
    weights = preflight(cfg, clip=False, store=False).model.as_dict()
    cache = {"max_entries": cfg.cache.max_entries, "max_bytes": cfg.cache.max_bytes}
    decoder = MaskDecoder.options(num_replicas=1, ray_actor_options={"num_cpus": 0}, **QUICK_DRAIN).bind(
        cfg.model_id, weights, "cpu", 1, cfg.decoder.accel(), app_stages()["encoder"], cache
    )
    with side_app("small_cache", args, decoder=decoder) as prefix, httpx.Client(base_url=app_url + prefix, timeout=300) as client:
        assert _cache_bounds(client) == {2}
        yield client


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
