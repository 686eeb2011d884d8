"""Pictures of a /v1/segment answer for people: a mask overlay and an RGBA cutout (CLI only)."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image, ImageOps

from models.masks import decode_rle

# Distinct colours for up to 8 objects (Okabe-Ito palette), then repeating.
PALETTE = np.array(
    [[230, 159, 0], [86, 180, 233], [0, 158, 115], [240, 228, 66], [0, 114, 178], [213, 94, 0], [204, 121, 167], [0, 0, 0]],
    dtype=np.float32,
)


def best_masks(result: dict) -> list[np.ndarray]:
    """The best (first, highest ``predicted_iou``) mask of each object, decoded to (H, W) bool.

    Raises:
        ValueError: the answer carries no RLE masks (``mask_format`` was not ``rle``).
    """
    out = []
    for res in result["results"]:
        if res["masks"]:
            if "rle" not in res["masks"][0]:
                raise ValueError("overlay and cutout need masks in RLE (mask_format 'rle')")
            out.append(decode_rle(res["masks"][0]["rle"]))
    return out


def _photo(image_bytes: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(image_bytes)) as im:
        return np.asarray(ImageOps.exif_transpose(im).convert("RGB"))


def save_overlay(image_bytes: bytes, result: dict, path: str, alpha: float = 0.5) -> None:
    """Write the photo with each object's best mask tinted (``alpha`` in [0, 1]) and outlined, as PNG."""
    rgb = _photo(image_bytes).astype(np.float32)
    for i, mask in enumerate(best_masks(result)):
        colour = PALETTE[i % len(PALETTE)]
        rgb[mask] = (1 - alpha) * rgb[mask] + alpha * colour
        edge = mask & ~(np.roll(mask, 1, 0) & np.roll(mask, -1, 0) & np.roll(mask, 1, 1) & np.roll(mask, -1, 1))
        rgb[edge] = colour
    Image.fromarray(rgb.clip(0, 255).astype(np.uint8)).save(path)


def save_cutout(image_bytes: bytes, result: dict, path: str) -> None:
    """Write the objects (union of best masks) on a transparent background, as RGBA PNG."""
    rgb = _photo(image_bytes)
    masks = best_masks(result)
    alpha = np.zeros(rgb.shape[:2], bool)
    for mask in masks:
        alpha |= mask
    Image.fromarray(np.dstack([rgb, alpha.astype(np.uint8) * 255]), mode="RGBA").save(path)
