"""``POST /v1/masks/polygons``: COCO RLE masks traced as polygons (rings with holes, and COCO's flat
lists), without a model: for clients that hold RLE masks and export polygons (the annotation page's COCO
export). A module-level route of :data:`serve_app.ingress.http.api`, registered when :mod:`serve_app.app`
imports this module; the tracing is :func:`serve_app.assemble.polygon_records`.
"""

import asyncio

from fastapi import Depends, Request

from serve_app.assemble import polygon_records
from serve_app.ingress.http import api, ingress, parse_body, stage_errors
from serve_app.ingress.request_examples import POLYGON_EXAMPLES
from serve_app.ingress.responses import PolygonsResponse
from serve_app.ingress.schemas import PolygonsRequest


@api.post("/v1/masks/polygons", **api.body_spec(PolygonsRequest, None, ok=PolygonsResponse, errors=(400, 413, 415, 422, 503), examples=POLYGON_EXAMPLES))
@stage_errors
async def masks_to_polygons(request: Request, app=Depends(ingress)) -> dict:
    """Each mask's polygons, ``segmentation``, ``area_px`` and ``bbox_xyxy`` (JSON bodies only)."""
    limits = app.args.limits
    req, _ = await parse_body(request, PolygonsRequest, limits.max_body_bytes, file_part=None)
    rles = [m.model_dump() for m in req.masks]
    masks = await asyncio.to_thread(polygon_records, rles, req.polygon_tolerance_px, limits.max_image_pixels)
    return {"masks": masks, "polygon_tolerance_px": req.polygon_tolerance_px}
