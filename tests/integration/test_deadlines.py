"""Deadline-aware admission through the running app: a fresh image whose ``X-Request-Timeout`` cannot be
met while the encoder is busy is refused at once (503 ``deadline`` with ``Retry-After``), before it waits;
a bad header is a 422 naming it; and the service answers normally afterwards."""

from __future__ import annotations

import base64
import io
import os
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
from PIL import Image

from tests.integration.conftest import app_stages
from tests.polling import wait_until


def _fresh_png() -> str:
    """A 64x64 noise PNG no earlier request sent (so its request must encode), as base64."""
    rng = np.random.default_rng(int.from_bytes(os.urandom(8), "little"))
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


def _segment(client: httpx.Client, timeout_s: float | None = None) -> tuple[httpx.Response, float]:
    headers = {} if timeout_s is None else {"X-Request-Timeout": str(timeout_s)}
    t0 = time.perf_counter()
    r = client.post("/v1/segment", json={"image": {"base64": _fresh_png()}}, headers=headers)
    return r, time.perf_counter() - t0


def _refused_for_deadline(r: httpx.Response) -> int:
    assert r.status_code == 503, r.text
    assert r.json()["error"]["code"] == "deadline" and r.json()["error"]["field"] is None, r.text
    retry_after = int(r.headers["retry-after"])
    assert retry_after >= 1
    return retry_after


def test_a_request_that_cannot_make_its_deadline_is_refused_at_once(client, app_url):
    stages = app_stages()
    encoder, owner = stages["encoder"], stages["decoder"].options(session_id="any: the package app has one")
    if owner.stats.remote().result()["admission"]["encode"]["service_s"] is None:
        r, _ = _segment(client)  # a fresh image first: the owner learns the encoder's batch time (seconds on CPU)
        assert r.status_code == 200, r.text
    with ThreadPoolExecutor(1) as pool, httpx.Client(base_url=app_url, timeout=120) as other:
        busy = pool.submit(_segment, other)  # the encoder is busy with another fresh image
        wait_until(lambda: encoder.stats.remote().result()["admission"]["in_flight"] >= 1, 30, "an encode running")
        tiny, tiny_s = _segment(client, 0.05)
        short, short_s = _segment(client, 1.5)  # a whole encode is queued ahead: more than 1.5 s
        answered, _ = busy.result()
    _refused_for_deadline(tiny)
    assert tiny_s < 1.0, tiny_s
    _refused_for_deadline(short)
    # answered before its deadline had passed: refused by the estimate of the queue, not by a timeout
    assert short_s < 1.5 and "would take" in short.json()["error"]["message"], (short_s, short.text)
    assert answered.status_code == 200, answered.text  # the request it would have queued behind was served
    r = client.post("/v1/segment", json={"image_id": answered.json()["image_id"]}, headers={"X-Request-Timeout": "60"})
    assert r.status_code == 200 and r.json()["encode_cached"], r.text  # and the service answers normally


def test_a_bad_timeout_header_is_422_naming_it(client):
    for value in ("0", "-3", "soon"):
        r = client.post("/v1/segment", json={"image_id": "0" * 64}, headers={"X-Request-Timeout": value})
        assert r.status_code == 422, r.text
        assert r.json()["error"]["field"] == "X-Request-Timeout" and r.json()["error"]["code"] == "invalid_request"


def test_fader_embedder_and_retriever_refuse_a_request_past_its_deadline_on_arrival():
    """The stages after the decoder check the deadline the ingress passes them (``/v1/predict``,
    ``/v1/segment`` with CLIP texts, ``/v1/examples``): a request already late is refused at the stage's
    door, counted in its ``admission`` stats, and an on-time one is served and timed."""
    import pytest
    from pycocotools import mask as mask_utils

    from deployments.contracts import EmbedResult, FadeResult
    from deployments.errors import DeadlineExceeded

    stages = app_stages()
    pixels = np.zeros((32, 32, 3), np.uint8)
    box = np.zeros((32, 32), np.uint8, order="F")
    box[8:24, 8:24] = 1
    rle = mask_utils.encode(box)
    rle["counts"] = rle["counts"].decode()
    crop = np.zeros((224, 224, 3), np.uint8)
    calls = {
        "fader": lambda h, d: h.fade_masks.remote(pixels, [rle], None, d),
        "embedder": lambda h, d: h.embed_crops.remote(FadeResult((crop,), {}), d),
        "retriever": lambda h, d: h.knn_chain.remote(
            "no-such-collection", EmbedResult(np.zeros((0, 8), np.float32), "random", {}), 3, d
        ),
    }
    for name, call in calls.items():
        handle = stages[name]
        before = handle.stats.remote().result()["admission"]
        with pytest.raises(DeadlineExceeded) as info:
            call(handle, time.time() - 1.0).result()
        assert "deadline passed" in info.value.message and info.value.retry_after_s >= 1, (name, info.value.message)
        call(handle, time.time() + 60.0).result()  # on time: served
        after = handle.stats.remote().result()["admission"]
        assert after["refused"] == before["refused"] + 1 and after["in_flight"] == 0, (name, after)
        assert after["service_s"] is not None and after["service_s"] >= 0, (name, after)
