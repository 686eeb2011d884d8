"""``mask_format: "polygon"`` over HTTP on /v1/segment, /v1/predict and /v1/segment/video: the rings with
their holes, rasterised, give back the very mask the same request returns as RLE."""

from __future__ import annotations

import base64

import numpy as np
import pytest

from models.masks import decode_rle, mask_area_bbox
from models.polygons import polygons_to_mask
from tests.conftest import BEDROOM_BOX, TRUCK_BOX, bedroom_frames, mask_iou


def _post(client, path: str, body: dict) -> dict:
    r = client.post(path, json=body)
    assert r.status_code == 200, r.text
    return r.json()


def _check(rle_item: dict, poly_item: dict, tolerance_px: float) -> np.ndarray:
    """The polygon record against the RLE record of the same mask; returns the mask."""
    mask = decode_rle(rle_item["rle"])
    assert mask.any()
    back = polygons_to_mask(poly_item["polygons"], *mask.shape)
    assert (poly_item["area_px"], poly_item["bbox_xyxy"]) == (rle_item["area_px"], rle_item["bbox_xyxy"]) == mask_area_bbox(mask)
    assert len(poly_item["segmentation"]) == len(poly_item["polygons"])
    if tolerance_px == 0:
        assert np.array_equal(back, mask)
    else:
        assert mask_iou(back, mask) >= 0.9
    return mask


@pytest.fixture(scope="module")
def truck(client, truck_path) -> dict:
    return {"image": {"base64": base64.b64encode(truck_path.read_bytes()).decode()}}


@pytest.mark.parametrize("tolerance_px", [0.0, 1.0])
def test_segment_polygons_rasterise_to_the_rle_mask(client, truck, tolerance_px):
    body = {**truck, "prompts": [{"box_xyxy": TRUCK_BOX}, {"points": [[500, 375, 1]]}], "max_masks": 1}
    rle = _post(client, "/v1/segment", body)
    poly = _post(client, "/v1/segment", {**body, "mask_format": "polygon", "polygon_tolerance_px": tolerance_px})
    masks = [_check(r["masks"][0], p["masks"][0], tolerance_px) for r, p in zip(rle["results"], poly["results"])]
    assert not np.array_equal(*masks)
    assert "rle" not in poly["results"][0]["masks"][0]


def test_predict_polygons(client, truck):
    client.post("/v1/examples", json={**truck, "box_xyxy": TRUCK_BOX, "label": "truck", "collection": "polygons"}).raise_for_status()
    body = {**truck, "collection": "polygons", "max_instances": 2, "amg": {"box_nms_thresh": 1.0}}
    rle = _post(client, "/v1/predict", body)["instances"]
    poly = _post(client, "/v1/predict", {**body, "mask_format": "polygon", "polygon_tolerance_px": 0})["instances"]
    assert len(rle) == len(poly) == 2
    for r, p in zip(rle, poly):
        _check(r, p, 0.0)
        assert p["label"] == r["label"] == "truck"


def test_video_polygons(client):
    frames = [{"base64": base64.b64encode(p.read_bytes()).decode()} for p in bedroom_frames(2)]
    body = {"frames": frames, "objects": [{"obj_id": 1, "prompts": [{"frame_index": 0, "box_xyxy": BEDROOM_BOX}]}]}
    rle = _post(client, "/v1/segment/video", body)["frames"]
    poly = _post(client, "/v1/segment/video", {**body, "mask_format": "polygon", "polygon_tolerance_px": 0})["frames"]
    assert [f["frame_index"] for f in poly] == [0, 1]
    for r, p in zip(rle, poly):
        _check(r["objects"][0], p["objects"][0], 0.0)


@pytest.mark.parametrize("tolerance", [-1, 65, "big"])
def test_bad_tolerance_is_422_naming_the_field(client, truck, tolerance):
    r = client.post("/v1/segment", json={**truck, "mask_format": "polygon", "polygon_tolerance_px": tolerance})
    assert r.status_code == 422, r.text
    assert r.json()["error"]["field"] == "polygon_tolerance_px"


def test_masks_polygons_route_traces_given_rles(client):
    from models.masks import encode_rle

    ring = np.zeros((30, 40), bool)
    ring[5:25, 5:35] = True
    ring[10:20, 10:30] = False
    dot = np.zeros((30, 40), bool)
    dot[0, 0] = True
    r = client.post("/v1/masks/polygons", json={"masks": [encode_rle(ring), encode_rle(dot)], "polygon_tolerance_px": 0})
    assert r.status_code == 200, r.text
    a, b = r.json()["masks"]
    assert np.array_equal(polygons_to_mask(a["polygons"], 30, 40), ring) and len(a["polygons"][0]["holes"]) == 1
    assert b == {"area_px": 1, "bbox_xyxy": [0, 0, 1, 1], "polygons": [{"exterior": [[0, 0], [1, 0], [1, 1], [0, 1]], "holes": []}], "segmentation": [[0, 0, 1, 0, 1, 1, 0, 1]]}


@pytest.mark.parametrize(
    "body, status, field",
    [
        ({"masks": []}, 422, "masks"),
        ({"masks": [{"size": [4, 4], "counts": "not an rle!"}]}, 422, "masks[0]"),
        ({"masks": [{"size": [0, 4], "counts": "0"}]}, 422, "masks[0].size"),
        ({"masks": [{"size": [16, 16], "counts": "0"}]}, 422, "masks[0]"),  # runs cover 0 of 256 pixels (was traced from uninitialised memory)
        ({"masks": [{"size": [5000, 5000], "counts": "0"}]}, 413, "masks[0]"),
    ],
)
def test_masks_polygons_route_names_the_bad_field(client, body, status, field):
    r = client.post("/v1/masks/polygons", json=body)
    assert r.status_code == status, r.text
    assert r.json()["error"]["field"] == field
    r = client.post("/v1/masks/polygons", files={"image": ("a.png", b"x")})
    assert r.status_code == 415 and r.json()["error"]["code"] == "unsupported_media_type"


def test_cli_segment_writes_polygons(app_url, client, truck, truck_path, tmp_path, capsys):
    import json

    from serve_app.cli import main as cli

    out = tmp_path / "seg.json"
    box = ",".join(map(str, TRUCK_BOX))
    assert cli.main(["segment", "--api", app_url, "--image", str(truck_path), "--box", box, "--mask-format", "polygon", "--polygon-tolerance", "0", "--out", str(out)]) == 0
    (mask,) = json.loads(out.read_text())["results"][0]["masks"][:1]
    rle = _post(client, "/v1/segment", {**truck, "prompts": [{"box_xyxy": TRUCK_BOX}], "max_masks": 1})["results"][0]["masks"][0]
    _check(rle, mask, 0.0)
    assert cli.main(["segment", "--api", app_url, "--image", str(truck_path), "--box", box, "--mask-format", "polygon", "--overlay", str(tmp_path / "o.png")]) == 2
    assert "--mask-format rle" in capsys.readouterr().err
