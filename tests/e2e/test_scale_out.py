"""Scale-out on one node: configs/serve.yaml with 2 Ingress and 2 MaskDecoder replicas, run by `serve run`.

The ingress keeps no image; each image lives in the MaskDecoder replica its ``image_id`` hashes to, and
every call about it is routed there. So: clicks by ``image_id`` are cache hits whichever ingress replica
takes them; each image is encoded once however its requests arrive; a request carrying the image with
its ``image_id`` is answered by encoding it again when the owner lacks it (resend on miss); and the masks
are Meta's ``SAM2ImagePredictor``'s for the same checkpoint.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib

import httpx
import numpy as np
import pytest
from PIL import Image

from benchmarks.local_cluster import two_of_each
from models.masks import decode_rle
from tests.conftest import mask_iou, shared_file
from tests.e2e.serving import config_on_free_port, serve_run

CLICKS = [[[100, 80, 1]], [[300, 200, 1]], [[100, 80, 1], [300, 200, 0]], [[60, 180, 1]]]  # inside every test photo


@pytest.fixture(scope="module")
def scaled(tmp_path_factory, tiny_checkpoint):
    """The scaled app on the test checkpoint (SAM 2) and random CLIP weights; (base URL, log path)."""
    tmp = tmp_path_factory.mktemp("scale_out")
    config, port = config_on_free_port(two_of_each)
    env = {
        "SAMGRAPH_SAM2_CHECKPOINT": str(tiny_checkpoint),
        "SAMGRAPH_CLIP_CHECKPOINT": "",
        "SAMGRAPH_WEIGHTS": "",
        "SAMGRAPH_DATA_DIR": str(tmp / "data"),
    }
    config["applications"][0]["args"]["clip"]["weights"] = "random"
    with serve_run(config, port, tmp, env) as served:
        yield served


def _b64(path) -> str:
    return base64.b64encode(path.read_bytes()).decode()


def _stats(client: httpx.Client) -> dict:
    return client.get("/v1/stats").json()


def test_clicks_hit_the_owner_and_each_image_is_encoded_once(scaled, reference_predictor):
    url, _ = scaled
    photos = [shared_file("images", "truck.jpg"), shared_file("images", "dog.jpg"), shared_file("images", "cars.jpg")]
    with httpx.Client(base_url=url, timeout=300) as client:
        assert len(_stats(client)["decoder"]["replicas"]) == 2
        before = _stats(client)["cache"]
        ids = []
        for path in photos:
            r = client.post("/v1/segment", json={"image": {"base64": _b64(path)}, "mask_format": "none"})
            assert r.status_code == 200 and r.json()["encode_cached"] is False, r.text
            ids.append(r.json()["image_id"])
        masks = []
        for image_id in ids:  # clicks by image_id alone, spread over both ingress replicas
            for points in CLICKS:
                r = client.post("/v1/segment", json={"image_id": image_id, "prompts": [{"points": points}], "multimask_output": False})
                assert r.status_code == 200 and r.json()["encode_cached"] is True, r.text
                masks.append(r.json()["results"][0]["masks"][0])
        after = _stats(client)
    cache = {k: after["cache"][k] - before[k] for k in ("encodes", "hits", "misses")}
    assert cache == {"encodes": 3, "hits": 3 * len(CLICKS), "misses": 3}, after["cache"]
    owners = {r: d["cache"]["entries"] for r, d in after["decoder"]["replicas"].items()}
    assert sum(owners.values()) == 3, owners

    # the truck's clicks are SAM2ImagePredictor's masks for the same checkpoint: non-empty, one per click
    with Image.open(photos[0]) as im:
        reference_predictor.set_image(np.asarray(im.convert("RGB")))
    ours = [decode_rle(m["rle"]) for m in masks[: len(CLICKS)]]
    for points, got in zip(CLICKS, ours):
        pts = np.asarray(points, np.float32)
        ref, _, _ = reference_predictor.predict(point_coords=pts[:, :2], point_labels=pts[:, 2].astype(np.int32), multimask_output=False)
        assert got.any() and mask_iou(got, ref[0].astype(bool)) >= 0.999
    assert all(mask_iou(ours[i], ours[j]) < 0.999 for i in range(len(ours)) for j in range(i))


def test_resend_on_miss_and_concurrent_first_requests(scaled):
    url, _ = scaled
    data = shared_file("coco_subset", "val2017", "000000397133.jpg").read_bytes()
    image_id = hashlib.sha256(data).hexdigest()
    body = {"image": {"base64": base64.b64encode(data).decode()}, "image_id": image_id, "prompts": [{"box_xyxy": [10, 10, 200, 200]}]}
    with httpx.Client(base_url=url, timeout=300) as client:
        missing = client.post("/v1/segment", json={"image_id": image_id, "prompts": [{"box_xyxy": [10, 10, 200, 200]}]})
        assert missing.status_code == 404 and missing.json()["error"]["code"] == "image_not_cached"
        wrong = client.post("/v1/segment", json={**body, "image_id": "0" * 64})
        assert wrong.status_code == 422 and wrong.json()["error"]["field"] == "image_id"
        before = _stats(client)["cache"]["encodes"]

    async def both():
        async with httpx.AsyncClient(base_url=url, timeout=300) as c:
            return await asyncio.gather(*(c.post("/v1/segment", json=body) for _ in range(2)))

    first = asyncio.run(both())
    assert [r.status_code for r in first] == [200, 200], [r.text for r in first]
    with httpx.Client(base_url=url, timeout=300) as client:
        assert _stats(client)["cache"]["encodes"] == before + 1  # the owner encoded the two requests' image once
        again = client.post("/v1/segment", json=body)  # image and image_id, now held: no encode
        assert again.status_code == 200 and again.json()["encode_cached"] is True
        assert decode_rle(again.json()["results"][0]["masks"][0]["rle"]).any()
