"""deployments.runtime.images: decoding uploads into RGB arrays, limits, EXIF orientation, base64."""

from __future__ import annotations

import base64
import hashlib
import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from deployments.errors import InputError
from deployments.runtime.images import b64_to_bytes, decode_image, image_id_of

SEED = 1234
MAX = 50_000_000


def _encode(array: np.ndarray, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format=fmt, **kw)
    return buf.getvalue()


def _noise(h: int, w: int, seed: int = SEED) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def _blocks(h: int, w: int) -> np.ndarray:
    """Four flat colour quadrants: survives JPEG with small error away from the edges."""
    img = np.zeros((h, w, 3), np.uint8)
    img[: h // 2, : w // 2] = (255, 0, 0)
    img[: h // 2, w // 2 :] = (0, 255, 0)
    img[h // 2 :, : w // 2] = (0, 0, 255)
    img[h // 2 :, w // 2 :] = (255, 255, 255)
    return img


def _input_error(data: bytes, max_pixels: int = MAX) -> InputError:
    with pytest.raises(InputError) as info:
        decode_image(data, max_pixels=max_pixels)
    return info.value


def test_png_decodes_exactly():
    img = _noise(33, 47)
    out = decode_image(_encode(img, "PNG"), max_pixels=MAX)
    assert out.shape == (33, 47, 3)
    assert out.dtype == np.uint8
    np.testing.assert_array_equal(out, img)


def test_rgba_and_grayscale_png_become_rgb():
    rgba = np.concatenate([_noise(8, 9), np.full((8, 9, 1), 128, np.uint8)], axis=2)
    out = decode_image(_encode(rgba, "PNG"), max_pixels=MAX)
    assert out.shape == (8, 9, 3)
    np.testing.assert_array_equal(out, rgba[..., :3])
    gray = _noise(8, 9)[..., 0]
    out = decode_image(_encode(gray, "PNG"), max_pixels=MAX)
    assert out.shape == (8, 9, 3)
    np.testing.assert_array_equal(out, np.repeat(gray[..., None], 3, axis=2))


def test_jpeg_decodes_to_right_pixels():
    img = _blocks(64, 96)
    out = decode_image(_encode(img, "JPEG", quality=95), max_pixels=MAX)
    assert out.shape == (64, 96, 3)
    assert out.dtype == np.uint8
    diff = np.abs(out.astype(int) - img.astype(int))
    assert diff.mean() < 3
    # centres of the quadrants are the flat colours
    for y, x in ((16, 24), (16, 72), (48, 24), (48, 72)):
        assert np.abs(out[y, x].astype(int) - img[y, x].astype(int)).max() <= 8


def test_16bit_grayscale_png_keeps_its_brightness():
    """BUG (deployments/runtime/images.py:65): a 16-bit grayscale PNG opens in PIL mode I;16, and ``convert("RGB")``
    clips every value above 255 to 255 instead of scaling: a mid-grey image comes out white."""
    gray16 = (np.random.default_rng(SEED).integers(0, 256, (12, 16)) * 257).astype(np.uint16)
    data = _encode(gray16, "PNG")
    with Image.open(io.BytesIO(data)) as im:
        assert im.mode.startswith("I")  # really a 16-bit file
    out = decode_image(data, max_pixels=MAX)
    assert out.shape == (12, 16, 3)
    expected = (gray16 // 257).astype(np.uint8)
    for c in range(3):
        assert np.abs(out[..., c].astype(int) - expected.astype(int)).max() <= 1


@pytest.mark.parametrize(
    "data",
    [b"hello, this is not an image", b"\x00" * 100, b"\x89PNG\r\n\x1a\n" + b"\x00" * 10, b"GIF89a"],
    ids=["text", "zeros", "png-signature-only", "gif-header-only"],
)
def test_not_an_image_is_400(data):
    err = _input_error(data)
    assert err.status == 400
    assert err.code == "invalid_image"
    assert err.field == "image"


def test_empty_bytes_is_400():
    err = _input_error(b"")
    assert err.status == 400
    assert err.code == "invalid_image"


def test_truncated_jpeg_is_400():
    data = _encode(_noise(256, 256), "JPEG", quality=90)
    decode_image(data, max_pixels=MAX)  # the whole file is fine
    err = _input_error(data[: len(data) // 2])
    assert err.status == 400
    assert err.code == "invalid_image"


def test_truncated_png_is_400():
    data = _encode(_noise(128, 128), "PNG")
    err = _input_error(data[: len(data) // 2])
    assert err.status == 400
    assert err.code == "invalid_image"


def test_over_max_pixels_is_413():
    data = _encode(np.zeros((3000, 3000), np.uint8), "PNG")
    assert len(data) < 100_000  # tiny file, many pixels
    err = _input_error(data, max_pixels=1_000_000)
    assert err.status == 413
    assert err.code == "image_too_large"
    assert "3000x3000" in err.message


def test_exactly_max_pixels_is_accepted():
    data = _encode(np.zeros((10, 20), np.uint8), "PNG")
    assert decode_image(data, max_pixels=200).shape == (10, 20, 3)
    assert _input_error(data, max_pixels=199).status == 413


def _png_with_header_size(width: int, height: int) -> bytes:
    """A 1x1 PNG whose IHDR claims ``width`` x ``height`` (a decompression bomb's header)."""
    data = bytearray(_encode(np.zeros((1, 1), np.uint8), "PNG"))
    assert data[12:16] == b"IHDR"
    ihdr = bytes(data[16:29])
    new = struct.pack(">II", width, height) + ihdr[8:]
    data[16:29] = new
    data[29:33] = struct.pack(">I", zlib.crc32(b"IHDR" + new) & 0xFFFFFFFF)
    return bytes(data)


def test_bomb_header_is_413_not_decoded():
    err = _input_error(_png_with_header_size(20_000, 20_000), max_pixels=1_000_000)
    assert err.status == 413
    assert err.code == "image_too_large"


def test_exif_orientation_6_is_applied():
    stored = _blocks(20, 40)  # 40 wide, 20 tall as stored
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: rotate 90 degrees clockwise to display
    buf = io.BytesIO()
    Image.fromarray(stored).save(buf, format="JPEG", quality=95, exif=exif.tobytes())
    out = decode_image(buf.getvalue(), max_pixels=MAX)
    assert out.shape == (40, 20, 3)
    expected = np.rot90(stored, k=-1)  # clockwise
    assert expected.shape == (40, 20, 3)
    diff = np.abs(out.astype(int) - expected.astype(int))
    assert diff.mean() < 6
    # the stored top-left (red) quadrant is now the top-right; stored bottom-left (blue) is top-left
    assert np.abs(out[5, 15].astype(int) - (255, 0, 0)).max() <= 20
    assert np.abs(out[5, 4].astype(int) - (0, 0, 255)).max() <= 20
    assert np.abs(out[34, 4].astype(int) - (255, 255, 255)).max() <= 20
    assert np.abs(out[34, 15].astype(int) - (0, 255, 0)).max() <= 20


def test_b64_to_bytes_round_trip_and_data_url():
    raw = bytes(range(256))
    text = base64.b64encode(raw).decode()
    assert b64_to_bytes(text) == raw
    assert b64_to_bytes("data:image/png;base64," + text) == raw


@pytest.mark.parametrize("text", ["not base64!", "AAA", "AA AA", "AAAA\n", "QUJD*", "data:image/png;base64,@@@@"])
def test_b64_to_bytes_strict(text):
    with pytest.raises(InputError) as info:
        b64_to_bytes(text, field="prompts[0].image")
    assert info.value.status == 400
    assert info.value.code == "invalid_base64"
    assert info.value.field == "prompts[0].image"


def test_image_id_of_is_sha256_hex():
    data = _encode(_noise(5, 5), "PNG")
    assert image_id_of(data) == hashlib.sha256(data).hexdigest()
    assert len(image_id_of(b"")) == 64
    assert image_id_of(b"") == "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    assert image_id_of(b"a") != image_id_of(b"b")
