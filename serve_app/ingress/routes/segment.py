"""``POST /v1/segment``: masks for box, point, mask and concept prompts on one image, by one served model.

Geometric prompts go to the decoder replica of the model that owns the image. Concept prompts (a text,
exemplar boxes) go there too on a model with concept prompts (SAM 3), which answers every instance
(``text_method: "concept"``); on another model a text ranks its automatic masks, whose faded crops the
embedder scores against the text by CLIP similarity (:func:`serve_app.assemble.rank_by_text`,
``text_method: "clip_rank"``).
"""

from __future__ import annotations

import asyncio
import time

import numpy as np
from fastapi import Request

from deployments.contracts import ConceptJob, ConceptResult, DecodeJob, DecodeResult, EmbedResult, GenerateResult
from serve_app.assemble import rank_by_text
from serve_app.ingress import request_examples as ex
from serve_app.ingress import responses as out
from serve_app.ingress.context import Context, IngressContext
from serve_app.ingress.deadlines import request_deadline
from serve_app.ingress.http import parse_body, stage_errors
from serve_app.ingress.openapi import DescribedRouter
from serve_app.ingress.schemas import SegmentRequest, to_prompt_specs

router = DescribedRouter()


@router.post(
    "/v1/segment",
    **router.body_spec(SegmentRequest, ok=out.SegmentResponse, examples=ex.SEGMENT_EXAMPLES, deadline=True),
)
@stage_errors
async def segment(request: Request, ctx: Context) -> dict:
    """Masks for box/point/mask prompts, and every instance of concept prompts (text, exemplar boxes), on an
    uploaded or cached image, by the model ``model_id`` names. See docs/http-api.md."""
    deadline = request_deadline(request, ctx.args.limits.request_timeout_s)
    req, upload = await parse_body(request, SegmentRequest, ctx.args.limits.max_body_bytes)
    return await segment_image(ctx, req, upload, deadline=deadline)


async def segment_image(
    ctx: IngressContext,
    req: SegmentRequest,
    upload: bytes | None,
    endpoint: str = "/v1/segment",
    deadline: float | None = None,
) -> dict:
    """The ``/v1/segment`` answer to a validated request: what the route does after parsing its body, also
    called by other routes (the Label Studio backend) with a request they build.

    Args:
        ctx: the replica's context.
        req: the request; its ``image_id`` alone names a cached image.
        upload: the image's bytes (a file part, or fetched by the caller), or None.
        endpoint: the route the stage times and mask counts are recorded under.
        deadline: absolute ``time.time()`` seconds by which to answer (:mod:`serve_app.ingress.deadlines`),
            or None.

    Raises:
        ApiError, InputError: as the route (``ImageNotCached`` for an ``image_id`` the owner does not hold
            and no bytes; ``DeadlineExceeded``: 503 ``deadline``).
    """
    t0 = time.perf_counter()
    model = ctx.model(req.model_id)
    image_id, data = ctx.images.identify(req, upload)
    timing: dict = {}
    geometric = [p for p in req.prompts if not p.is_text]
    texts = [p for p in req.prompts if p.is_text]
    check_geometry(ctx, model, req, geometric)
    concepts = clip_texts = None
    if texts and model.capabilities.concept_prompts:
        concepts = ConceptJob(
            tuple(p.to_concept(req.score_thresh, req.max_instances) for p in texts),
            req.mask_format,
            req.polygon_tolerance_px,
            tuple(f"prompts[{i}]" for i, p in enumerate(req.prompts) if p.is_text),
            deadline,
        )
    elif texts:
        for i, p in enumerate(req.prompts):
            if p.exemplars is not None:
                ctx.require(model, "concept_prompts", f"prompts[{i}].exemplars")
        ctx.require(model, "automatic_masks", "prompts")
        clip_texts = [p.text for p in texts]
    fade = ctx.fade_spec(req.fade) if clip_texts else None
    amg = ctx.amg(req.amg) if clip_texts else None
    job = None
    if geometric or not texts:  # no prompts at all: the decoder clicks the centre
        specs, default_multimask = to_prompt_specs(geometric)
        multimask = [req.multimask_output] * len(specs) if req.multimask_output is not None else default_multimask
        job = DecodeJob(
            tuple(specs),
            tuple(multimask),
            req.mask_format,
            req.max_masks,
            req.return_logits,
            req.polygon_tolerance_px,
            deadline=deadline,
        )
    owner = ctx.images.owner(image_id, model.model_id)

    def send(pixels):
        calls = [owner.segment.remote(image_id, job, pixels)] if job is not None else []
        if concepts is not None:
            calls.append(owner.concepts.remote(image_id, concepts, pixels))
        if clip_texts:
            generated = owner.generate_for.remote(image_id, amg, ctx.args.text_candidates, pixels, deadline)
            crops = ctx.fader.fade_masks.remote(None, generated, fade, deadline)
            embedded = ctx.embedder.embed_crops.remote(crops, deadline)
            calls += [generated, embedded, ctx.embedder.embed_text_list.remote(clip_texts)]
        return asyncio.gather(*calls)

    def check(width: int, height: int) -> None:
        if job is not None:
            job.for_image(width, height)
        if concepts is not None:
            concepts.for_image(width, height)

    outs = list(await ctx.images.call(image_id, data, send, check, timing, deadline))
    decoded = outs.pop(0) if job is not None else None
    found = outs.pop(0) if concepts is not None else None
    ranked = tuple(outs) if clip_texts else None
    first = decoded or found or ranked[0]
    timing["encode"] = first.timing_ms.get("encode", 0.0)
    body = merge_segment_results(req, decoded, found, ranked, timing)
    timing["total"] = (time.perf_counter() - t0) * 1e3
    ctx.metrics.stages(endpoint, timing)
    ctx.metrics.masks(endpoint, (m for r in body["results"] for m in r.get("masks") or r.get("instances") or []))
    return out.image_answer(first.image, body, timing)


def check_geometry(ctx, model, req: SegmentRequest, geometric: list) -> None:
    """422 ``unsupported_by_model`` naming the first prompt field the model's family cannot take."""
    for i, p in enumerate(req.prompts):
        if p.is_text:
            continue
        for name, capability in (("points", "points"), ("box_xyxy", "boxes"), ("mask_input", "mask_input")):
            if getattr(p, name) is not None:
                ctx.require(model, capability, f"prompts[{i}].{name}")
    if req.multimask_output and geometric:
        ctx.require(model, "multimask", "multimask_output")


def merge_segment_results(
    req: SegmentRequest,
    decoded: DecodeResult | None,
    found: ConceptResult | None,
    ranked: tuple[GenerateResult, EmbedResult, np.ndarray] | None,
    timing: dict,
) -> dict:
    """The ``/v1/segment`` body: one result per prompt in the request's order, from the decoder's answer to
    the geometric prompts, the concept answer (``text_method: "concept"``: every instance found) or the
    automatic masks ranked by CLIP against the texts (``text_method: "clip_rank"``).

    Args:
        req: the request (its ``prompts``, ``max_masks``, ``mask_format``, ``polygon_tolerance_px``).
        decoded: the decoder's answer to the geometric prompts, or None when there are none.
        found: the decoder's answer to the concept prompts, or None.
        ranked: (candidate masks, their crops' embeddings, (T, D) float32 L2-normalised text embeddings),
            or None.
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
    if found is not None:
        body.update(model_id=found.model_id, weights=found.weights)
        text_results = [{"text_method": "concept", "instances": r["instances"]} for r in found.results]
        timing.update({"concepts": found.timing_ms["concepts"], "concepts_postprocess": found.timing_ms["postprocess"]})
    if ranked is not None:
        generated, embedded, text_vectors = ranked
        body.update(model_id=generated.model_id, weights=generated.weights, embedder_weights=embedded.weights)
        fmt = (req.max_masks, req.mask_format, req.polygon_tolerance_px)
        text_results = [
            {"text_method": "clip_rank", "masks": rank_by_text(generated.masks, embedded.embeddings, t, *fmt)}
            for t in text_vectors
        ]
        timing.update({"amg": generated.timing_ms["amg"], **{k: embedded.timing_ms[k] for k in ("fade", "embed")}})
    geo_iter, text_iter = iter(geo_results), iter(text_results)
    body["results"] = [
        next(text_iter) if p is not None and p.is_text else next(geo_iter) for p in req.prompts or [None]
    ]
    return body
