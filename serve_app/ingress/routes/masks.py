"""``POST /v1/masks/polygons``: COCO RLE masks traced as polygons (rings with holes, and COCO's flat
lists), without a model: for clients that hold RLE masks and export polygons (the annotation page's COCO
export)."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from fastapi import Request

from models.masks import decode_rle, mask_area_bbox, mask_format_fields
from serve_app.ingress.context import Context
from serve_app.ingress.errors import ApiError
from serve_app.ingress.http import parse_body, stage_errors
from serve_app.ingress.openapi import DescribedRouter
from serve_app.ingress.request_examples import POLYGON_EXAMPLES
from serve_app.ingress.responses import PolygonsResponse
from serve_app.ingress.schemas import PolygonsRequest

router = DescribedRouter()


@router.post(
    "/v1/masks/polygons",
    **router.body_spec(
        PolygonsRequest, None, ok=PolygonsResponse, errors=(400, 413, 415, 422, 503), examples=POLYGON_EXAMPLES
    ),
)
@stage_errors
async def masks_to_polygons(request: Request, ctx: Context) -> dict:
    """Each mask's polygons, ``segmentation``, ``area_px`` and ``bbox_xyxy`` (JSON bodies only)."""
    limits = ctx.args.limits
    req, _ = await parse_body(request, PolygonsRequest, limits.max_body_bytes, file_part=None)
    rles = [m.model_dump() for m in req.masks]
    masks = await asyncio.to_thread(polygon_records, rles, req.polygon_tolerance_px, limits.max_image_pixels)
    return {"masks": masks, "polygon_tolerance_px": req.polygon_tolerance_px}


def polygon_records(rles: Sequence[dict], polygon_tolerance_px: float, max_pixels: int) -> list[dict]:
    """``/v1/masks/polygons``: each COCO RLE as ``{"area_px", "bbox_xyxy", "polygons", "segmentation"}``
    (``models.masks.mask_format_fields`` with ``polygon``).

    Args:
        rles: ``{"size": [H, W], "counts": str}`` masks.
        polygon_tolerance_px: the simplification, pixels (0: the exact outline).
        max_pixels: the largest ``H * W`` accepted (the app's ``max_image_pixels``).

    Raises:
        ApiError: 413 naming ``masks[i]`` for a mask over ``max_pixels``, 422 for one that does not decode.
    """
    out = []
    for i, rle in enumerate(rles):
        h, w = (int(v) for v in rle["size"])
        if h < 1 or w < 1:
            field = f"masks[{i}].size"
            raise ApiError(422, "invalid_request", f"{field}: must be [H, W] with H, W >= 1", field)
        if h * w > max_pixels:
            message = f"masks[{i}]: {w}x{h} is over the limit of {max_pixels} pixels"
            raise ApiError(413, "image_too_large", message, f"masks[{i}]")
        try:
            mask = decode_rle(rle)
        except ValueError as e:
            raise ApiError(422, "invalid_request", f"masks[{i}]: {e}"[:300], f"masks[{i}]") from None
        area, box = mask_area_bbox(mask)
        out.append({"area_px": area, "bbox_xyxy": box, **mask_format_fields(mask, "polygon", polygon_tolerance_px)})
    return out
