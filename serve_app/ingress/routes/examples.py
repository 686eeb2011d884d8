"""The few-shot examples of a collection: add one (``POST /v1/examples``), list them (``GET``), delete one
(``DELETE /v1/examples/{example_id}``), and move a whole collection as one file (``GET
/v1/examples/export``, ``POST /v1/examples/import``).

The file format and its checks are :mod:`deployments.runtime.example_file`; the streaming, the one retry
of an idempotent store call and the embedder check are :mod:`serve_app.ingress.example_transfer`.
"""

from __future__ import annotations

import asyncio
import time

from fastapi import Request
from fastapi.responses import StreamingResponse

from deployments.contracts import DecodeJob
from deployments.errors import InputError
from deployments.runtime.example_file import MEDIA_TYPE, ExampleHeader, header_embedder, read_examples
from deployments.runtime.store_checks import check_collection_name
from models.masks import decode_rle, rle_area, rle_bbox_xyxy
from serve_app.ingress import request_examples as ex
from serve_app.ingress import responses as out
from serve_app.ingress.context import Context
from serve_app.ingress.deadlines import request_deadline
from serve_app.ingress.errors import ApiError
from serve_app.ingress.example_transfer import (
    check_file_embedder,
    export_stream,
    retry_if_replica_died,
    service_embedder,
    store_example,
)
from serve_app.ingress.http import parse_body, read_body, request_id, stage_errors
from serve_app.ingress.openapi import DescribedRouter
from serve_app.ingress.params import (
    CollectionQuery,
    ExampleIdPath,
    LabelQuery,
    LimitQuery,
    OffsetQuery,
    TargetCollectionQuery,
)
from serve_app.ingress.schemas import ExampleRequest, to_prompt_specs

router = DescribedRouter()
ADD_ERRORS = (400, 404, 409, 413, 415, 422, 503)


@router.post(
    "/v1/examples",
    **router.body_spec(
        ExampleRequest, ok=out.ExampleAdded, errors=ADD_ERRORS, examples=ex.EXAMPLE_EXAMPLES, deadline=True
    ),
)
@stage_errors
async def add_example(request: Request, ctx: Context) -> dict:
    """Store one labelled object (a prompt's best mask, or a given mask) as a few-shot example."""
    t0 = time.perf_counter()
    deadline = request_deadline(request, ctx.args.limits.request_timeout_s)
    req, upload = await parse_body(request, ExampleRequest, ctx.args.limits.max_body_bytes)
    fade = ctx.fade_spec(req.fade)
    prompt = req.prompt() if req.mask_rle is None else None
    model = ctx.model(req.model_id)
    image_id, data = ctx.images.identify(req, upload)
    timing: dict = {}
    owner = ctx.images.owner(image_id, model.model_id)
    if prompt is not None:
        specs, multimask = to_prompt_specs([prompt])
        job = DecodeJob(tuple(specs), tuple(multimask), "rle", 1, False, field_prefix=None, deadline=deadline)
        send = lambda pixels: owner.segment.remote(image_id, job, pixels)  # noqa: E731
        decoded = await ctx.images.call(image_id, data, send, job.for_image, timing, deadline)
        image, rle = decoded.image, decoded.results[0]["masks"][0]["rle"]
        timing["encode"] = decoded.timing_ms.get("encode", 0.0)
    else:
        send = lambda pixels: owner.image.remote(image_id, pixels, deadline)  # noqa: E731
        image = await ctx.images.call(image_id, data, send, timing=timing, deadline=deadline)
        rle = check_mask(req.mask_rle.model_dump(), image.width, image.height)
    area = rle_area(rle)
    if area == 0:
        field = "mask_rle" if prompt is None else "box_xyxy"
        raise ApiError(422, "empty_mask", "the object's mask is empty; nothing to embed", field)
    crops = ctx.fader.fade_masks.remote(image.pixels, [rle], fade, deadline)
    embedded = ctx.embedder.embed_crops.remote(crops, deadline)
    payload = {"image_id": image_id, "bbox_xyxy": rle_bbox_xyxy(rle), "area_px": area}
    ids = await store_example(ctx.retriever, req.collection, embedded, req.label, payload, request_id(request))
    timing["total"] = (time.perf_counter() - t0) * 1e3
    ctx.metrics.stages("/v1/examples", timing)
    return {
        "ids": ids,
        "collection": req.collection,
        "label": req.label,
        "image_id": image_id,
        "area_px": area,
        "timing_ms": timing,
    }


def check_mask(rle: dict, width: int, height: int) -> dict:
    """A given ``mask_rle``, checked against the image's size and decoded once (422 naming ``mask_rle``)."""
    if list(rle["size"]) != [height, width]:
        message = f"mask_rle: size {list(rle['size'])} differs from the image's [{height}, {width}]"
        raise ApiError(422, "invalid_request", message, "mask_rle")
    try:
        decode_rle(rle)
    except ValueError as e:
        raise ApiError(422, "invalid_request", f"mask_rle: {e}", "mask_rle") from None
    return rle


@router.get("/v1/examples", **router.route_spec(out.ExampleList, 404, 422, 503))
@stage_errors
async def list_examples(
    ctx: Context,
    collection: CollectionQuery = "default",
    label: LabelQuery = None,
    offset: OffsetQuery = None,
    limit: LimitQuery = 100,
) -> dict:
    """Examples per label in a collection, and a page of their ids."""
    info = await ctx.collection(collection)
    counts, (items, next_offset) = await asyncio.gather(
        ctx.retriever.counts.remote(collection), ctx.retriever.list_ids.remote(collection, label, offset, limit)
    )
    total = sum(counts.values())
    page = {"items": items, "next_offset": next_offset}
    return {"collection": collection, "dim": info["dim"], "total": total, "counts": counts, **page}


@router.get(
    "/v1/examples/export",
    **router.route_spec(None, 404, 422, 503, ok_content=out.EXAMPLES_FILE, streams=True),
)
@stage_errors
async def export_examples(request: Request, ctx: Context, collection: CollectionQuery = "default") -> StreamingResponse:
    """The collection as an examples file (NDJSON: header, one line per example, end), streamed page by
    page. See docs/http-api.md, "Export and import"."""
    info = await ctx.collection(collection)
    # the embedder the collection records; one made before collections recorded it: the service's (the
    # embedder its next write would adopt)
    identity = info.get("embedder") or (await service_embedder(ctx.embedder, ctx.args.readiness_timeout_s))["identity"]
    header = ExampleHeader(collection, info["dim"], header_embedder(identity))
    lines = export_stream(ctx.retriever, header, request_id(request))
    disposition = {"Content-Disposition": f'attachment; filename="{collection}.examples.jsonl"'}
    return StreamingResponse(lines, media_type=MEDIA_TYPE, headers=disposition)


@router.post(
    "/v1/examples/import",
    **router.route_spec(out.ImportResult, 400, 409, 413, 415, 422, 503, body=out.EXAMPLES_FILE),
)
@stage_errors
async def import_examples(request: Request, ctx: Context, collection: TargetCollectionQuery = None) -> dict:
    """Upsert an examples file (``application/x-ndjson``, at most ``limits.max_import_bytes``) into
    ``collection`` (default: the file's) under the file's ids: importing twice stores each example once.
    Everything is checked before anything is written (4xx naming ``line N.<key>``); vectors of another
    embedder than the service's, or of an unknown one, are a 409 ``embedder_mismatch``."""
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype != MEDIA_TYPE:
        raise ApiError(415, "unsupported_media_type", f"send the examples file as {MEDIA_TYPE}")
    body = await read_body(request, ctx.args.limits.max_import_bytes)
    header, examples = await asyncio.to_thread(read_examples, body.splitlines())
    del body
    target = check_collection_name(header.collection if collection is None else collection)
    identity = (await service_embedder(ctx.embedder, ctx.args.readiness_timeout_s))["identity"]
    check_file_embedder(header, identity)
    result = await retry_if_replica_died(
        lambda _: ctx.retriever.import_points.remote(target, examples, header.dim, identity),
        "import examples",
        request_id(request),
    )
    return {"collection": target, **result}


@router.delete("/v1/examples/{example_id}", **router.route_spec(out.ExampleDeleted, 404, 422, 503))
@stage_errors
async def delete_example(ctx: Context, example_id: ExampleIdPath, collection: CollectionQuery = "default") -> dict:
    """Delete one example by id."""
    await ctx.collection(collection)
    try:
        deleted = await ctx.retriever.delete.remote(collection, example_id)
    except InputError as e:  # not a UUID
        raise ApiError(422, "invalid_request", f"example_id: {e.message}"[:300], "example_id") from None
    if not deleted:
        message = f"no example {example_id!r} in collection {collection!r}"
        raise ApiError(404, "unknown_example", message, "example_id")
    return {"deleted": example_id, "collection": collection}
