"""Pictures of answers for people (CLI only): a mask overlay and an RGBA cutout of a /v1/segment answer, and
an MP4 of a /v1/segment/video answer."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image, ImageOps

from models.masks import decode_rle

# Distinct colours for up to 8 objects (Okabe-Ito palette), then repeating.
PALETTE = np.array(
    [
        [230, 159, 0], [86, 180, 233], [0, 158, 115], [240, 228, 66],
        [0, 114, 178], [213, 94, 0], [204, 121, 167], [0, 0, 0],
    ],
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


def encode_video(frames, path: str, fps: float = 24.0) -> None:
    """Write (H, W, 3) uint8 RGB frames (any iterable) to an H.264 MP4 with PyAV (MPEG-4 Part 2 where
    this PyAV has no libx264). Odd sizes are padded by one pixel (H.264 needs even sizes). CLI only.
    """
    from fractions import Fraction

    import av

    codec = "libx264" if "libx264" in av.codecs_available else "mpeg4"
    with av.open(path, mode="w") as container:
        stream = None
        for rgb in frames:
            h, w = rgb.shape[:2]
            if stream is None:
                stream = container.add_stream(codec, rate=Fraction(fps).limit_denominator(1000))
                stream.width, stream.height, stream.pix_fmt = w + w % 2, h + h % 2, "yuv420p"
            if (w % 2) or (h % 2):
                rgb = np.pad(rgb, ((0, h % 2), (0, w % 2), (0, 0)), mode="edge")
            for packet in stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24")):
                container.mux(packet)
        if stream is not None:
            for packet in stream.encode():
                container.mux(packet)


def overlay_frames(frames, frame_masks: dict[int, list[np.ndarray]], alpha: float = 0.5):
    """Frames with each object's mask tinted (colour by object order, :data:`PALETTE`) and outlined.

    Args:
        frames: iterable of (H, W, 3) uint8 RGB, in clip order.
        frame_masks: frame index -> one (H, W) bool mask per object; frames not in it are left as they are.
        alpha: tint strength in [0, 1].

    Yields:
        (H, W, 3) uint8 RGB per frame. CLI only.
    """
    for i, frame in enumerate(frames):
        masks = frame_masks.get(i)
        if not masks:
            yield frame
            continue
        rgb = frame.astype(np.float32)
        for k, mask in enumerate(masks):
            colour = PALETTE[k % len(PALETTE)]
            rgb[mask] = (1 - alpha) * rgb[mask] + alpha * colour
            edge = mask & ~(np.roll(mask, 1, 0) & np.roll(mask, -1, 0) & np.roll(mask, 1, 1) & np.roll(mask, -1, 1))
            rgb[edge] = colour
        yield rgb.clip(0, 255).astype(np.uint8)
