"""Mask encodings: COCO RLE (pycocotools), base64 PNG, and the area and box of a mask.

Conventions: a mask is (H, W) bool, row-major, True inside the object. ``bbox_xyxy`` is in pixel-edge
coordinates of the image: [x0, y0, x1, y1] with x1 = last column + 1 and y1 = last row + 1, so an
(H, W) all-true mask has box [0, 0, W, H], the same frame as box prompts.

In-memory only: no file I/O.
"""

from __future__ import annotations

import base64
import io

import numpy as np
from pycocotools import mask as mask_utils

MASK_FORMATS = ("rle", "png", "polygon", "none")
#: Default simplification of ``polygon`` masks, pixels (``models.polygons.mask_to_polygons``).
POLYGON_TOLERANCE_PX = 0.0


def encode_rle(mask: np.ndarray) -> dict:
    """COCO RLE of a mask, JSON-ready.

    Args:
        mask: (H, W) bool or {0, 1} integer array.

    Returns:
        ``{"size": [H, W], "counts": str}``: COCO's compressed RLE, the form ``pycocotools.mask``
        decodes and COCO results files carry.

    Raises:
        ValueError: ``mask`` is not 2-D.
    """
    return encode_rle_batch(_check_2d(mask)[None])[0]


def encode_rle_batch(masks: np.ndarray) -> list[dict]:
    """COCO RLE of each of (N, H, W) bool masks; see :func:`encode_rle`.

    pycocotools reads (H, W, N) uint8 in Fortran order, i.e. each mask column by column. Masks stored
    that way (the transposed view of an (N, W, H) array, as
    :meth:`models.sam2_decoder.Sam2MaskDecoder.upsample_logits` produces) are passed without a copy; others
    are copied once.
    """
    if masks.ndim != 3:
        raise ValueError(f"masks must be (N, H, W), got shape {masks.shape}")
    hwn = masks.transpose(1, 2, 0)
    hwn = hwn.view(np.uint8) if hwn.dtype == np.bool_ else hwn.astype(np.uint8)
    rles = mask_utils.encode(np.asfortranarray(hwn))
    return [{"size": [int(s) for s in r["size"]], "counts": r["counts"].decode("ascii")} for r in rles]


def rle_run_lengths(counts: str | bytes) -> np.ndarray:
    """The run lengths of COCO's compressed RLE counts (pycocotools' ``rleFrString``, vectorised).

    Each run is a little-endian base-32 number, 5 bits a character (``chr(48 + c)``, ``c`` in 0..63; bit
    0x20 says another character follows, bit 0x10 of the last one is the sign), and from the fourth run
    on it is stored as the difference from the run two before.

    Args:
        counts: the ``counts`` string (ASCII) or bytes.

    Returns:
        (R,) int64 run lengths, background first; may be negative for a corrupt string.

    Raises:
        ValueError: a character outside ``0``..``o``, or the string ends inside a number.
    """
    raw = counts.encode("ascii") if isinstance(counts, str) else bytes(counts)
    c = np.frombuffer(raw, np.uint8).astype(np.int64) - 48
    if len(c) and (c.min() < 0 or c.max() > 63):
        raise ValueError("counts has a character outside '0'..'o'")
    last = (c & 0x20) == 0  # the character ends its number
    if len(c) and not last[-1]:
        raise ValueError("counts ends inside a number")
    ends = np.flatnonzero(last)
    starts = np.concatenate([[0], ends[:-1] + 1]).astype(np.int64)
    number = np.repeat(np.arange(len(ends)), ends - starts + 1)
    shift = 5 * (np.arange(len(c)) - starts[number])
    values = np.zeros(len(ends), np.int64)
    np.add.at(values, number, (c & 0x1F) << shift)
    negative = (c[ends] & 0x10) != 0
    values[negative] -= np.int64(1) << (5 * (ends - starts + 1))[negative]  # two's complement of the width
    for first in (1, 2):  # runs 3, 4, ... are differences from the run two before
        values[first + 2 :: 2] += np.cumsum(values[first::2])[:-1]
    return values


def decode_rle(rle: dict) -> np.ndarray:
    """Decode a COCO RLE (compressed string or bytes counts, or uncompressed list counts).

    The runs must cover the mask exactly: pycocotools does not check this, and a shorter RLE would
    leave the rest of its output buffer as it found it (uninitialised memory).

    Returns:
        (H, W) bool mask.

    Raises:
        ValueError: ``rle`` lacks ``size``/``counts``, its runs do not add up to H x W (or one is
            negative), or it does not decode.
    """
    try:
        h, w = (int(v) for v in rle["size"])
        counts = rle["counts"]
        if h < 0 or w < 0:
            raise ValueError(f"size must be [H, W] with H, W >= 0; got {[h, w]}")
        runs = np.asarray(counts, np.int64) if isinstance(counts, list) else rle_run_lengths(counts)
        if runs.ndim != 1 or (len(runs) and runs.min() < 0) or int(runs.sum()) != h * w:
            covered = int(runs.sum()) if runs.ndim == 1 else "?"
            raise ValueError(f"the runs of counts cover {covered} pixels, not the {h} x {w} = {h * w} of size")
        if isinstance(counts, list):
            coded = mask_utils.frPyObjects({"size": [h, w], "counts": counts}, h, w)
        else:
            coded = {"size": [h, w], "counts": counts.encode("ascii") if isinstance(counts, str) else counts}
        return mask_utils.decode(coded).astype(bool)
    except (KeyError, TypeError, ValueError, OverflowError, UnicodeEncodeError) as e:
        raise ValueError(f"not a valid COCO RLE: {e}") from None


def rle_area(rle: dict) -> int:
    """Number of foreground pixels of a COCO RLE (pycocotools ``area``)."""
    return int(mask_utils.area(_coded(rle)))


def rle_bbox_xyxy(rle: dict) -> list[int]:
    """Tight box of a COCO RLE as [x0, y0, x1, y1], pixel-edge convention; [0, 0, 0, 0] if empty."""
    x, y, w, h = (int(v) for v in mask_utils.toBbox(_coded(rle)))
    return [x, y, x + w, y + h]


def rle_areas_and_boxes(rles: list[dict]) -> tuple[np.ndarray, np.ndarray]:
    """Areas and tight boxes of many COCO RLEs at once (pycocotools ``area`` and ``toBbox``).

    Args:
        rles: N COCO RLEs ``{size: [H, W], counts}``.

    Returns:
        (areas: (N,) int64 pixels, boxes: (N, 4) int64 [x0, y0, x1, y1], pixel-edge convention: x1 = last
        column + 1; [0, 0, 0, 0] for an empty mask), the values :func:`rle_area` and :func:`rle_bbox_xyxy`
        give one at a time.
    """
    if not rles:
        return np.zeros(0, dtype=np.int64), np.zeros((0, 4), dtype=np.int64)
    coded = [_coded(r) for r in rles]
    areas = np.asarray(mask_utils.area(coded), dtype=np.int64)
    xywh = np.asarray(mask_utils.toBbox(coded), dtype=np.int64)  # whole pixels, held as float64: exact
    return areas, np.concatenate([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], axis=1)


def encode_png_base64(mask: np.ndarray) -> str:
    """Single-channel 8-bit PNG of a mask, 0 outside and 255 inside, base64 (standard alphabet).

    Raises:
        ValueError: ``mask`` is not 2-D.
    """
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(_check_2d(mask).astype(np.uint8) * 255, mode="L").save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode("ascii")


def decode_png_base64(data: str) -> np.ndarray:
    """Inverse of :func:`encode_png_base64`: (H, W) bool, True where the PNG is > 127."""
    from PIL import Image

    with Image.open(io.BytesIO(base64.b64decode(data))) as im:
        return np.asarray(im.convert("L")) > 127


def _check_2d(mask: np.ndarray) -> np.ndarray:
    if mask.ndim != 2:
        raise ValueError(f"mask must be (H, W), got shape {mask.shape}")
    return mask


def mask_area_bbox(mask: np.ndarray) -> tuple[int, list[int]]:
    """Pixel count and tight box of an (H, W) bool mask, as :func:`rle_area` and :func:`rle_bbox_xyxy`
    give for its RLE ([x0, y0, x1, y1], pixel-edge convention; [0, 0, 0, 0] when empty), without decoding
    an RLE (which costs as much as its run count: long for speckled masks)."""
    cols = np.flatnonzero(_check_2d(mask).any(axis=0))
    if not len(cols):
        return 0, [0, 0, 0, 0]
    rows = np.flatnonzero(mask.any(axis=1))
    return int(np.count_nonzero(mask)), [int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1]


def _coded(rle: dict) -> dict:
    counts = rle["counts"]
    return {"size": list(rle["size"]), "counts": counts.encode("ascii") if isinstance(counts, str) else counts}


def encode_masks(masks: np.ndarray, mask_format: str, polygon_tolerance_px: float = POLYGON_TOLERANCE_PX) -> list[dict]:
    """Encode (N, H, W) bool masks for a response: the mask itself, ``area_px`` and ``bbox_xyxy``.

    Args:
        masks: (N, H, W) bool.
        mask_format: ``rle`` (COCO RLE under ``"rle"``), ``png`` (base64 PNG under ``"png"``),
            ``polygon`` (see :func:`mask_format_fields`) or ``none`` (area and box only).
        polygon_tolerance_px: float >= 0, the ``polygon`` simplification in pixels.

    Returns:
        One dict per mask.

    Raises:
        ValueError: unknown ``mask_format``, or a bad ``polygon_tolerance_px``.
    """
    if mask_format not in MASK_FORMATS:
        raise ValueError(f"mask_format must be one of {', '.join(MASK_FORMATS)}; got {mask_format!r}")
    rles = encode_rle_batch(masks) if mask_format == "rle" else [None] * len(masks)
    out = []
    for mask, rle in zip(masks, rles):
        area, box = mask_area_bbox(mask)
        item: dict = {"area_px": area, "bbox_xyxy": box}
        if rle is not None:
            item["rle"] = rle
        else:
            item.update(mask_format_fields(mask, mask_format, polygon_tolerance_px))
        out.append(item)
    return out


def mask_format_fields(mask: np.ndarray, mask_format: str, polygon_tolerance_px: float = POLYGON_TOLERANCE_PX) -> dict:
    """One (H, W) bool mask as a response's mask fields.

    - ``rle``: ``{"rle": {size, counts}}``, COCO RLE;
    - ``png``: ``{"png": base64}`` (:func:`encode_png_base64`);
    - ``polygon``: ``{"polygons": [{"exterior", "holes"}, ...], "segmentation": [[x0, y0, x1, y1, ...], ...]}``:
      each 4-connected part's outer ring with its holes (``models.polygons.mask_to_polygons``, pixel-edge
      coordinates), and COCO's flat polygon lists of the outer rings only (COCO polygons cannot hold
      holes: rasterised, ``segmentation`` fills them);
    - ``none``: ``{}``.

    Raises:
        ValueError: unknown ``mask_format``, or a bad ``polygon_tolerance_px``.
    """
    if mask_format == "rle":
        return {"rle": encode_rle(mask)}
    if mask_format == "png":
        return {"png": encode_png_base64(mask)}
    if mask_format == "polygon":
        from models.polygons import coco_segmentation, mask_to_polygons

        polygons = mask_to_polygons(mask, polygon_tolerance_px)
        return {"polygons": polygons, "segmentation": coco_segmentation(polygons)}
    if mask_format == "none":
        return {}
    raise ValueError(f"mask_format must be one of {', '.join(MASK_FORMATS)}; got {mask_format!r}")


def encode_logits_base64(logits: np.ndarray) -> dict:
    """A float array as ``{"base64", "shape", "dtype": "float32"}`` (little-endian, C order)."""
    arr = np.ascontiguousarray(logits, dtype="<f4")
    return {"base64": base64.b64encode(arr.tobytes()).decode("ascii"), "shape": list(arr.shape), "dtype": "float32"}


def decode_logits_base64(data: str, shape: tuple[int, ...], dtype: str = "float32") -> np.ndarray:
    """Inverse of :func:`encode_logits_base64`; ``dtype`` ``float32`` or ``float16`` (little-endian).

    Returns:
        float32 array of ``shape``.

    Raises:
        ValueError: bad base64, unknown dtype, wrong byte count, or non-finite values.
    """
    if dtype not in ("float32", "float16"):
        raise ValueError(f"dtype must be float32 or float16; got {dtype!r}")
    try:
        raw = base64.b64decode(data, validate=True)
    except ValueError:
        raise ValueError("not valid base64") from None
    np_dtype = np.dtype("<f4" if dtype == "float32" else "<f2")
    expected = int(np.prod(shape)) * np_dtype.itemsize
    if len(raw) != expected:
        raise ValueError(f"expected {expected} bytes for {dtype} of shape {list(shape)}, got {len(raw)}")
    arr = np.frombuffer(raw, dtype=np_dtype).reshape(shape).astype(np.float32)
    if not np.isfinite(arr).all():
        raise ValueError("values must be finite")
    return arr


def segmentation_to_rle(segmentation, height: int, width: int) -> dict:
    """A COCO annotation's ``segmentation`` as one compressed RLE (``COCO.annToRLE`` without the file).

    Args:
        segmentation: polygons (list of flat ``[x0, y0, x1, y1, ...]`` lists, pixels), an uncompressed
            RLE (``counts`` a list, as crowd annotations use) or a compressed RLE.
        height, width: the image size in pixels.

    Returns:
        ``{"size": [height, width], "counts": str}``; several polygons are merged into one mask.

    Raises:
        ValueError: the segmentation is malformed (e.g. a polygon with fewer than 3 points).
    """
    try:
        if isinstance(segmentation, list):
            if any(len(poly) < 6 or len(poly) % 2 for poly in segmentation):
                raise ValueError("each polygon needs an even number of coordinates, at least 6")
            if segmentation:
                rle = mask_utils.merge(mask_utils.frPyObjects(segmentation, height, width))
            else:
                rle = mask_utils.encode(np.zeros((height, width, 1), np.uint8, order="F"))[0]
        elif isinstance(segmentation.get("counts"), list):
            rle = mask_utils.frPyObjects(segmentation, height, width)
        else:
            rle = _coded(segmentation)
    except (AttributeError, KeyError, TypeError, IndexError) as e:
        raise ValueError(f"not a COCO segmentation: {e}") from None
    counts = rle["counts"]
    return {
        "size": [int(height), int(width)],
        "counts": counts.decode("ascii") if isinstance(counts, bytes) else counts,
    }


def interior_point(mask: np.ndarray) -> tuple[int, int]:
    """The mask pixel farthest from the mask's border: a click that is well inside the object.

    The Euclidean distance transform of the mask, zero-padded by one pixel so the image edge counts as
    border, is maximal there (the point-prompt protocol of RITM, Sofiiuk et al. 2022, used in SAM's
    point-prompt evaluation, Kirillov et al. 2023, sec. 7.1). Ties go to the first pixel in row-major order.

    Args:
        mask: (H, W) bool, not empty.

    Returns:
        ``(x, y)``: column and row of that pixel, in pixels of the image.

    Raises:
        ValueError: the mask is empty or not 2-D.
    """
    from scipy import ndimage

    mask = _check_2d(np.asarray(mask, dtype=bool))
    if not mask.any():
        raise ValueError("the mask is empty: it has no interior point")
    dist = ndimage.distance_transform_edt(np.pad(mask, 1))[1:-1, 1:-1]
    y, x = np.unravel_index(int(np.argmax(dist)), dist.shape)
    return int(x), int(y)
