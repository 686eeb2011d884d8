"""Overload: a burst over the queues' bounds is refused at once with 503 + Retry-After, never queued
without bound, and the service answers normally afterwards.

configs/serve.yaml with tight queues (:func:`tests.e2e.conftest.tight_queues`), run by `samgraph serve`
(`serve run`) in a subprocess with its own local Ray cluster: the e2e package's service, which the README
flow shares (it sends one request at a time):
- Ingress: max_ongoing_requests 6, max_queued_requests 4 -> past 10 requests in flight the HTTP proxy
  refuses (plain-text 503 from Serve, with Retry-After from ``backpressure_config``). The proxy counts
  a request as queued until its router has placed it on a replica, so when a whole burst arrives before
  the router has placed the first (a cold queue-length cache, a loaded machine) only 4 get through and
  the rest are refused at the proxy. 4 is the smallest queue with which both kinds of refusal happen
  either way: 12 requests overflow 6 + 4, and 4 requests overflow the encoder's 1 + 1;
- ImageEncoder: max_ongoing_requests 1, max_queued_requests 1 -> past 2 encodes in flight the ingress
  gets ``BackPressureError`` and answers 503 JSON ``overloaded``.
"""

from __future__ import annotations

import asyncio
import base64
import io

import httpx
import numpy as np
import pytest
from PIL import Image

from models.masks import decode_rle

BURST = 12
SIZE = 64  # px; the encoder resizes to 1024², so each fresh image costs a full encode (~3 s on 2 cores)


@pytest.fixture(scope="module")
def tight(service):
    """(base URL, log of `samgraph serve`) of the e2e package's service (tests/e2e/conftest.py)."""
    return service.api, service.log_path


def _png(seed: int) -> str:
    rgb = np.random.default_rng(seed).integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


def _body(seed: int) -> dict:
    return {"image": {"base64": _png(seed)}, "prompts": [{"box_xyxy": [8, 8, 56, 56]}]}


async def _burst(url: str, seeds: list[int]) -> list[tuple[httpx.Response, int]]:
    """All requests at once; each response with its place in the order the answers arrived (0 = first)."""
    arrived = 0

    async def one(client: httpx.AsyncClient, seed: int):
        nonlocal arrived
        r = await client.post("/v1/segment", json=_body(seed), headers={"x-request-id": f"burst-{seed}"})
        place, arrived = arrived, arrived + 1
        return r, place

    limits = httpx.Limits(max_connections=len(seeds))
    async with httpx.AsyncClient(base_url=url, timeout=120, limits=limits) as client:
        return await asyncio.gather(*(one(client, s) for s in seeds))


def _check_mask(body: dict) -> None:
    mask = body["results"][0]["masks"][0]
    assert mask["rle"]["size"] == [SIZE, SIZE]
    assert int(decode_rle(mask["rle"]).sum()) == mask["area_px"]


def test_burst_is_refused_before_any_answer_and_the_service_recovers(tight):
    url, log_path = tight
    seeds = list(range(100, 100 + BURST))
    results = asyncio.run(_burst(url, seeds))

    def is_json(r: httpx.Response) -> bool:
        return r.headers.get("content-type", "").startswith("application/json")

    accepted = [(r, t) for r, t in results if r.status_code == 200]
    refused_json = [(r, t) for r, t in results if r.status_code == 503 and is_json(r)]
    refused_proxy = [(r, t) for r, t in results if r.status_code == 503 and not is_json(r)]
    assert len(accepted) + len(refused_json) + len(refused_proxy) == BURST, [
        (r.status_code, r.text[:200]) for r, _ in results
    ]
    # the encoder takes 1 running + 1 queued; a third only if the first encode ends within the burst
    assert 1 <= len(accepted) <= 3, [r.status_code for r, _ in results]
    assert refused_json, "no stage refusal reached the ingress"
    for r, _ in accepted:
        _check_mask(r.json())
    for r, _ in refused_json:
        err = r.json()["error"]
        assert err["code"] == "overloaded" and err["field"] is None and err["request_id"].startswith("burst-")
        assert r.headers["retry-after"] == "3"  # the encoder's backpressure_config
        assert "Traceback" not in r.text
    for r, _ in refused_proxy:  # past the ingress queue the HTTP proxy answers itself
        assert "backpressure" in r.text and r.headers["retry-after"] == "2"
    # refused at once, not after waiting in a queue: every refusal arrives before the first answer
    last_refusal = max(place for _, place in refused_json + refused_proxy)
    first_accept = min(place for _, place in accepted)
    assert last_refusal < first_accept, sorted((place, r.status_code) for r, place in results)

    # A refused image is not left poisoned in the cache: sent again, it is encoded and answered.
    refused_seed = int(refused_json[0][0].json()["error"]["request_id"].removeprefix("burst-"))
    with httpx.Client(base_url=url, timeout=120) as client:
        again = client.post("/v1/segment", json=_body(refused_seed))
        assert again.status_code == 200, again.text
        assert again.json()["encode_cached"] is False
        _check_mask(again.json())
        click = client.post(
            "/v1/segment", json={"image_id": again.json()["image_id"], "prompts": [{"points": [[32, 32, "fg"]]}]}
        )
        assert click.status_code == 200 and click.json()["encode_cached"] is True
        assert client.get("/readyz").json()["status"] == "ready"
    log = log_path.read_text()
    assert "burst-" in log and "overloaded" in log  # refusals are logged with their request id
