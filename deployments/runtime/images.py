"""Decoding uploaded image bytes safely: format sniffing, pixel limit before decoding, truncation.

Errors are the typed :mod:`deployments.errors` (a ``ValueError`` per rule, with ``code`` and ``field``),
so the ingress, the video decoder and the offline pipeline read them the same way."""

from __future__ import annotations

import base64
import binascii
import hashlib
import io
import warnings

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from deployments.errors import EmptyImage, ImageTooLarge, InvalidBase64, InvalidImage


def image_id_of(data: bytes) -> str:
    """``image_id``: lowercase hex SHA-256 of the uploaded bytes (not of the decoded pixels)."""
    return hashlib.sha256(data).hexdigest()


def b64_to_bytes(data: str, field: str = "image.base64") -> bytes:
    """Strict base64 (a ``data:...;base64,`` prefix is allowed).

    Raises:
        InvalidBase64: 400 ``invalid_base64``.
    """
    if data.startswith("data:") and "," in data:
        data = data.split(",", 1)[1]
    try:
        return base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidBase64("not valid base64", field) from None


def _to_rgb8(im: Image.Image) -> np.ndarray:
    """(H, W, 3) uint8 RGB; 16-bit and 32-bit greyscale are scaled (PIL's convert would clip them)."""
    if im.mode.startswith("I;16") or im.mode in ("I", "F"):
        a = np.asarray(im, dtype=np.float64)
        scale = 257.0 if im.mode.startswith("I;16") or a.max(initial=0) > 255 else 1.0
        grey = np.clip(np.rint(a / scale), 0, 255).astype(np.uint8)
        return np.repeat(grey[..., None], 3, axis=2)
    return np.asarray(im.convert("RGB"))


def decode_image(data: bytes, max_pixels: int, field: str = "image") -> np.ndarray:
    """Decode image bytes into (H, W, 3) uint8 RGB, EXIF orientation applied.

    The size is read from the header and checked against ``max_pixels`` before any pixel is decoded, so
    decompression bombs cost nothing.

    Raises:
        InvalidImage: 400 ``invalid_image`` (empty, not an image, truncated or corrupt).
        EmptyImage: 400 ``empty_image`` (0 pixels).
        ImageTooLarge: 413 ``image_too_large`` (over ``max_pixels``).
    """
    if not data:
        raise InvalidImage("image is empty (0 bytes)", field)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            im = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError:
        raise ImageTooLarge(f"image is over the limit of {max_pixels} pixels", field) from None
    except (UnidentifiedImageError, OSError, ValueError):
        raise InvalidImage("bytes are not an image in a supported format (JPEG, PNG, WebP, ...)", field) from None
    with im:
        w, h = im.size
        if w * h == 0:
            raise EmptyImage(f"image has 0 pixels ({w}x{h})", field)
        if w * h > max_pixels:
            raise ImageTooLarge(f"image is {w}x{h} = {w * h} pixels, over the limit of {max_pixels}", field)
        try:
            im.load()
            im = ImageOps.exif_transpose(im)
            rgb = _to_rgb8(im)
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
            raise InvalidImage(f"image is truncated or corrupt: {e}", field) from None
    return rgb
