"""Every kind of bad input gets a 4xx JSON error naming the field, and the service keeps serving."""

from __future__ import annotations

import base64
import io

import numpy as np
import pytest
from PIL import Image

from tests.conftest import TRUCK_BOX
from tests.integration.conftest import MAX_BODY_BYTES, MAX_IMAGE_PIXELS


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _png(w: int, h: int) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (w, h)).save(buf, format="PNG")
    return buf.getvalue()


def _truncated_jpeg() -> bytes:
    rng = np.random.default_rng(0)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (256, 256, 3), dtype=np.uint8)).save(buf, format="JPEG", quality=95)
    data = buf.getvalue()
    return data[: len(data) // 2]


@pytest.fixture(scope="module")
def image_id(client, truck_path) -> str:
    r = client.post("/v1/segment", json={"image": {"base64": _b64(truck_path.read_bytes())}, "prompts": [{"box_xyxy": TRUCK_BOX}]})
    assert r.status_code == 200, r.text
    return r.json()["image_id"]


BAD_JSON = [
    # (name, body or callable(image_id) -> body, status, code, field)
    ("not_an_image", {"image": {"base64": _b64(b"this is not an image")}}, 400, "invalid_image", "image"),
    ("truncated_jpeg", {"image": {"base64": _b64(_truncated_jpeg())}}, 400, "invalid_image", "image"),
    ("zero_bytes", {"image": {"base64": ""}}, 422, "invalid_request", "image.base64"),
    ("bad_base64", {"image": {"base64": "not base64!!"}}, 400, "invalid_base64", "image.base64"),
    ("too_many_pixels", {"image": {"base64": _b64(_png(2500, 2000))}}, 413, "image_too_large", "image"),
    ("box_x1_le_x0", lambda i: {"image_id": i, "prompts": [{"box_xyxy": [500, 300, 400, 800]}]}, 422, "invalid_request", "prompts[0].box_xyxy"),
    ("box_y1_le_y0", lambda i: {"image_id": i, "prompts": [{"box_xyxy": [100, 800, 400, 800]}]}, 422, "invalid_request", "prompts[0].box_xyxy"),
    ("box_outside", lambda i: {"image_id": i, "prompts": [{"box_xyxy": [100, 100, 1900, 800]}]}, 422, "out_of_image", "prompts[0].box_xyxy"),
    ("point_outside", lambda i: {"image_id": i, "prompts": [{"points": [[10, 10, 1], [-1, 5, 1]]}]}, 422, "out_of_image", "prompts[0].points[1]"),
    ("bad_label", lambda i: {"image_id": i, "prompts": [{"points": [[10, 10, 2]]}]}, 422, "invalid_request", "prompts[0].points"),
    ("bad_label_word", lambda i: {"image_id": i, "prompts": [{"points": [[10, 10, "yes"]]}]}, 422, "invalid_request", "prompts[0].points"),
    ("empty_points", lambda i: {"image_id": i, "prompts": [{"points": []}]}, 422, "invalid_request", "prompts[0].points"),
    ("empty_prompt", lambda i: {"image_id": i, "prompts": [{}]}, 422, "invalid_request", "prompts[0]"),
    ("unknown_field", lambda i: {"image_id": i, "promts": []}, 422, "invalid_request", "promts"),
    ("unknown_prompt_field", lambda i: {"image_id": i, "prompts": [{"box": TRUCK_BOX}]}, 422, "invalid_request", "prompts[0].box"),
    ("unknown_mask_format", lambda i: {"image_id": i, "mask_format": "bitmap"}, 422, "invalid_request", "mask_format"),
    ("uncached_image_id", {"image_id": "0" * 64}, 404, "image_not_cached", "image_id"),
    ("malformed_image_id", {"image_id": "abc"}, 422, "invalid_request", "image_id"),
    ("no_image", {"prompts": [{"box_xyxy": TRUCK_BOX}]}, 422, "invalid_request", "image"),
    ("bad_mask_input", lambda i: {"image_id": i, "prompts": [{"mask_input": {"base64": _b64(b"\0" * 16)}}]}, 422, "invalid_request", "prompts[0].mask_input"),
]
RAW = [
    # (name, raw JSON text, status, code, field): NaN/Infinity are not JSON but Python's parser takes them
    ("nan_box", '{{"image_id": "{i}", "prompts": [{{"box_xyxy": [NaN, 0, 10, 10]}}]}}', 422, "invalid_request", "prompts[0].box_xyxy[0]"),
    ("inf_point", '{{"image_id": "{i}", "prompts": [{{"points": [[Infinity, 3, 1]]}}]}}', 422, "invalid_request", "prompts[0].points"),
    ("not_json", "{{not json", 400, "invalid_json", None),
    ("json_array", "[1, 2]", 422, "invalid_request", None),
    ("deeply_nested", "[" * 100_000 + "]" * 100_000, 400, "invalid_json", None),
    ("unhashable_label", '{{"image_id": "{i}", "prompts": [{{"points": [[1, 2, [1]]]}}]}}', 422, "invalid_request", "prompts[0].points"),
]


def _check(r, status, code, field):
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert err["code"] == code
    assert err["field"] == field
    assert err["message"]
    assert "Traceback" not in r.text


@pytest.mark.parametrize("name,body,status,code,field", BAD_JSON, ids=[c[0] for c in BAD_JSON])
def test_bad_json_request(client, image_id, name, body, status, code, field):
    body = body(image_id) if callable(body) else body
    _check(client.post("/v1/segment", json=body), status, code, field)


@pytest.mark.parametrize("name,raw,status,code,field", RAW, ids=[c[0] for c in RAW])
def test_bad_raw_body(client, image_id, name, raw, status, code, field):
    r = client.post("/v1/segment", content=raw.format(i=image_id), headers={"content-type": "application/json"})
    _check(r, status, code, field)


def test_body_over_limit_is_413(client):
    r = client.post("/v1/segment", content=b"{" + b" " * MAX_BODY_BYTES + b"}", headers={"content-type": "application/json"})
    _check(r, 413, "body_too_large", None)


def test_zero_pixel_image(client):
    # A PNG header that declares 0x0 pixels (PIL refuses to write one, so build the bytes by hand).
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    png = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 0, 0, 8, 2, 0, 0, 0)) + chunk(b"IEND", b"")
    r = client.post("/v1/segment", json={"image": {"base64": _b64(png)}})
    assert r.status_code == 400, r.text
    assert r.json()["error"]["field"] == "image"


def test_multipart_errors(client):
    r = client.post("/v1/segment", files={"photo": ("a.jpg", b"x")})
    _check(r, 422, "invalid_request", "photo")
    r = client.post("/v1/segment", files={"image": ("a.txt", b"hello")})
    _check(r, 400, "invalid_image", "image")
    r = client.post("/v1/segment", files={"image": ("a.png", _png(8, 8))}, data={"request": "{oops"})
    _check(r, 400, "invalid_json", "request")
    r = client.post("/v1/segment", files={"image": ("a.png", _png(8, 8))}, data={"request": '{"image_id": "' + "0" * 64 + '"}'})
    _check(r, 422, "invalid_request", "image")


def test_unsupported_media_type(client):
    _check(client.post("/v1/segment", content=b"abc", headers={"content-type": "text/plain"}), 415, "unsupported_media_type", None)


def test_unknown_route_is_json(client):
    r = client.get("/v1/nope")
    assert r.status_code == 404
    assert r.json()["error"]["code"] == "not_found"


def test_service_still_serves_after_bad_input(client, image_id):
    assert client.get("/readyz").status_code == 200
    r = client.post("/v1/segment", json={"image_id": image_id, "prompts": [{"box_xyxy": TRUCK_BOX}]})
    assert r.status_code == 200
    assert r.json()["encode_cached"] is True  # nothing was lost from the cache
    assert MAX_IMAGE_PIXELS < 2500 * 2000  # the too_many_pixels case really is over the limit
