"""GET /metrics over real HTTP: the app's metrics reach Ray's metrics agent and come back as Prometheus text.

Ray pushes metric values to its agent every ``metrics_report_interval_ms`` (10 s by default), so the test
polls /metrics (at most :data:`POLL_S`) until the requests it made show up.
"""

from __future__ import annotations

import base64
import os
import time

import pytest

from tests.conftest import TRUCK_BOX

POLL_S = 60.0
NO_SUCH_IMAGE = "0" * 64


def _samples(text: str) -> list:
    """Every sample of the exposition, parsed by the reference parser (raises on malformed text)."""
    from prometheus_client.parser import text_string_to_metric_families

    return [s for fam in text_string_to_metric_families(text) for s in fam.samples]


def _has(samples, name: str, **labels) -> bool:
    return any(s.name == name and s.value > 0 and all(s.labels.get(k) == v for k, v in labels.items()) for s in samples)


EXPECTED = {
    "segment 200": ("ray_samgraph_http_requests_total", {"endpoint": "/v1/segment", "status": "200"}),
    "segment 422": ("ray_samgraph_http_requests_total", {"endpoint": "/v1/segment", "status": "422"}),
    "segment 404": ("ray_samgraph_http_requests_total", {"endpoint": "/v1/segment", "status": "404"}),
    "segment latency": ("ray_samgraph_request_latency_ms_count", {"endpoint": "/v1/segment"}),
    "decode_masks stage": ("ray_samgraph_stage_latency_ms_count", {"endpoint": "/v1/segment", "stage": "decode_masks"}),
    "decoder batch size": ("ray_samgraph_batch_size_count", {"stage": "decode", "deployment": "MaskDecoder"}),
    "decoder compute": ("ray_samgraph_batch_compute_ms_count", {"stage": "decode"}),
    "cache hit": ("ray_samgraph_embedding_cache_lookups_total", {"result": "hit"}),
    "cache miss": ("ray_samgraph_embedding_cache_lookups_total", {"result": "miss"}),
    "predicted_iou buckets": ("ray_samgraph_predicted_iou_bucket", {"endpoint": "/v1/segment", "le": "+Inf"}),
    "masks per request": ("ray_samgraph_masks_per_request_count", {"endpoint": "/v1/segment"}),
    "deadline refusal": ("ray_samgraph_refusals_total", {"endpoint": "/v1/segment", "cause": "deadline"}),
    "serve replicas": ("ray_serve_deployment_replica_healthy", {"deployment": "Ingress"}),
}


@pytest.fixture(scope="module")
def requests_made(client, truck_path) -> str:
    """A 200 on a cached image (cache hit), a 422, a 404 (cache miss) and a 503 ``deadline`` (a timeout that
    has passed when the ingress would send the request on) on /v1/segment."""
    b64 = base64.b64encode(truck_path.read_bytes()).decode()  # other modules post the same bytes: often cached
    r = client.post("/v1/segment", json={"image": {"base64": b64}, "prompts": [{"box_xyxy": TRUCK_BOX}]})
    assert r.status_code == 200, r.text
    image_id = r.json()["image_id"]
    r = client.post("/v1/segment", json={"image_id": image_id, "prompts": [{"points": [[500, 375, 1]]}]})
    assert r.status_code == 200 and r.json()["encode_cached"], r.text
    r = client.post("/v1/segment", json={"image_id": image_id, "prompts": [{"box_xyxy": [1, 2]}]})
    assert r.status_code == 422, r.text
    r = client.post("/v1/segment", json={"image_id": NO_SUCH_IMAGE, "prompts": [{"box_xyxy": TRUCK_BOX}]})
    assert r.status_code == 404, r.text
    r = client.post("/v1/segment", json={"image_id": image_id}, headers={"X-Request-Timeout": "0.000001"})
    assert r.status_code == 503 and r.json()["error"]["code"] == "deadline", r.text
    return image_id


def test_metrics_endpoint_shows_the_apps_metrics(client, requests_made):
    deadline = time.monotonic() + POLL_S
    missing = list(EXPECTED)
    while True:
        r = client.get("/metrics")
        assert r.status_code == 200, r.text
        assert r.headers["content-type"] == "text/plain; version=0.0.4; charset=utf-8"
        samples = _samples(r.text)
        missing = [k for k, (name, labels) in EXPECTED.items() if not _has(samples, name, **labels)]
        if not missing or time.monotonic() > deadline:
            break
        time.sleep(1.0)
    if os.environ.get("SAMGRAPH_DUMP_METRICS"):  # to inspect the exported names and labels
        with open(os.environ["SAMGRAPH_DUMP_METRICS"], "w") as f:
            f.write(r.text)
    assert not missing, f"not in /metrics after {POLL_S:.0f} s: {missing}"
    names = {s.name for s in samples}
    assert all(n.startswith(("ray_samgraph_", "ray_serve_")) for n in names)
    # each family once: one TYPE line per name
    types = [line.split(" ")[2] for line in r.text.splitlines() if line.startswith("# TYPE ")]
    assert len(types) == len(set(types))
    # the request counter counts the middleware's own route templates only (bounded label values)
    endpoints = {s.labels["endpoint"] for s in samples if s.name == "ray_samgraph_http_requests_total"}
    assert "/v1/segment" in endpoints and all(e.startswith("/") or e == "unmatched" for e in endpoints)
