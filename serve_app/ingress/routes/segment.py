"""``POST /v1/segment``: masks for box, point, mask and text prompts on one image.

Geometric prompts go to the decoder replica that owns the image; text prompts to its automatic masks,
whose faded crops the embedder ranks against the texts by CLIP similarity
(:func:`serve_app.assemble.rank_by_text`).
"""

from __future__ import annotations

import asyncio
import time

import numpy as np
from fastapi import Request

from deployments.contracts import DecodeJob, DecodeResult, EmbedResult, GenerateResult
from serve_app.assemble import rank_by_text
from serve_app.ingress import request_examples as ex
from serve_app.ingress import responses as out
from serve_app.ingress.context import Context
from serve_app.ingress.http import parse_body, stage_errors
from serve_app.ingress.openapi import DescribedRouter
from serve_app.ingress.schemas import SegmentRequest, to_prompt_specs

router = DescribedRouter()


@router.post("/v1/segment", **router.body_spec(SegmentRequest, ok=out.SegmentResponse, examples=ex.SEGMENT_EXAMPLES))
@stage_errors
async def segment(request: Request, ctx: Context) -> dict:
    """Masks for box/point/mask/text prompts on an uploaded or cached image. See docs/http-api.md."""
    t0 = time.perf_counter()
    req, upload = await parse_body(request, SegmentRequest, ctx.args.limits.max_body_bytes)
    image_id, data = ctx.images.identify(req, upload)
    timing: dict = {}
    geometric = [p for p in req.prompts if not p.is_text]
    texts = [p for p in req.prompts if p.is_text]
    fade = ctx.fade_spec(req.fade) if texts else None
    amg = ctx.amg(req.amg) if texts else None
    job = None
    if geometric or not texts:  # no prompts at all: the decoder clicks the centre
        specs, default_multimask = to_prompt_specs(geometric)
        multimask = [req.multimask_output] * len(specs) if req.multimask_output is not None else default_multimask
        job = DecodeJob(
            tuple(specs), tuple(multimask), req.mask_format, req.max_masks, req.return_logits, req.polygon_tolerance_px
        )
    owner = ctx.images.owner(image_id)

    def send(pixels):
        calls = [owner.segment.remote(image_id, job, pixels)] if job is not None else []
        if texts:
            generated = owner.generate_for.remote(image_id, amg, ctx.args.text_candidates, pixels)
            crops = ctx.fader.fade_masks.remote(None, generated, fade)
            calls += [
                generated,
                ctx.embedder.embed_crops.remote(crops),
                ctx.embedder.embed_text_list.remote([p.text for p in texts]),
            ]
        return asyncio.gather(*calls)

    check = job.for_image if job is not None else (lambda w, h: None)
    outs = list(await ctx.images.call(image_id, data, send, check, timing))
    decoded = outs.pop(0) if job is not None else None
    generated, embedded, text_vectors = outs if texts else (None, None, None)
    first = decoded or generated
    timing["encode"] = first.timing_ms.get("encode", 0.0)
    body = merge_segment_results(req, decoded, generated, embedded, text_vectors, timing)
    timing["total"] = (time.perf_counter() - t0) * 1e3
    ctx.metrics.stages("/v1/segment", timing)
    ctx.metrics.masks("/v1/segment", (m for r in body["results"] for m in r["masks"]))
    return out.image_answer(first.image, body, timing)


def merge_segment_results(
    req: SegmentRequest,
    decoded: DecodeResult | None,
    generated: GenerateResult | None,
    embedded: EmbedResult | None,
    text_vectors: np.ndarray | None,
    timing: dict,
) -> dict:
    """The ``/v1/segment`` body from the decoder's answer to the geometric prompts and the text prompts'
    automatic masks ranked by CLIP, one result per prompt in the request's order.

    Args:
        req: the request (its ``prompts``, ``max_masks``, ``mask_format``, ``polygon_tolerance_px``).
        decoded: the decoder's answer to the geometric prompts, or None when there are none.
        generated, embedded: the candidate masks and their crops' embeddings, or None without text prompts.
        text_vectors: (T, D) float32 L2-normalised embeddings of the T text prompts, or None.
        timing: the request's ``timing_ms``; the stages' times are added to it.

    Returns:
        ``{"model_id", "weights", "results", ["embedder_weights"]}``.
    """
    body: dict = {"model_id": None, "weights": None}
    geo_results, text_results = [], []
    if decoded is not None:
        geo_results = decoded.results
        body.update(model_id=decoded.model_id, weights=decoded.weights)
        timing.update({k: decoded.timing_ms[k] for k in ("decode_masks", "postprocess")})
    if generated is not None:
        body.update(model_id=generated.model_id, weights=generated.weights, embedder_weights=embedded.weights)
        fmt = (req.max_masks, req.mask_format, req.polygon_tolerance_px)
        text_results = [{"masks": rank_by_text(generated.masks, embedded.embeddings, t, *fmt)} for t in text_vectors]
        timing.update({"amg": generated.timing_ms["amg"], **{k: embedded.timing_ms[k] for k in ("fade", "embed")}})
    geo_iter, text_iter = iter(geo_results), iter(text_results)
    body["results"] = [
        next(text_iter) if p is not None and p.is_text else next(geo_iter) for p in req.prompts or [None]
    ]
    return body
