"""``POST /v1/predict``: every object in an image, labelled by its nearest examples in a collection, and/or
every instance of a class vocabulary (``classes``) on a model with concept prompts.

The few-shot path flows decoder (automatic masks) -> fader -> embedder -> retriever as chained
``DeploymentResponse``s, so its crops and embeddings never pass through the ingress; the class vocabulary
is one concept job on the image's owner (one encode, the phrases batched).
"""

from __future__ import annotations

import asyncio
import time

from fastapi import Request

from deployments.contracts import ConceptJob
from models.segmenter import ConceptPrompt
from serve_app.assemble import instances
from serve_app.ingress import request_examples as ex
from serve_app.ingress import responses as out
from serve_app.ingress.context import Context, IngressContext
from serve_app.ingress.deadlines import request_deadline
from serve_app.ingress.http import parse_body, stage_errors
from serve_app.ingress.openapi import DescribedRouter
from serve_app.ingress.schemas import PredictRequest

router = DescribedRouter()


PREDICT_ERRORS = (400, 404, 409, 413, 415, 422, 503)  # 409: the collection holds another embedder's vectors


@router.post(
    "/v1/predict",
    **router.body_spec(
        PredictRequest, ok=out.PredictResponse, errors=PREDICT_ERRORS, examples=ex.PREDICT_EXAMPLES, deadline=True
    ),
)
@stage_errors
async def predict(request: Request, ctx: Context) -> dict:
    """Every object in the image, labelled by its nearest labelled examples in a collection
    (``label_source: "examples"``), and/or every instance of each of ``classes`` on a model with concept
    prompts (``label_source: "classes"``)."""
    deadline = request_deadline(request, ctx.args.limits.request_timeout_s)
    req, upload = await parse_body(request, PredictRequest, ctx.args.limits.max_body_bytes)
    return await predict_image(ctx, req, upload, deadline=deadline)


async def predict_image(
    ctx: IngressContext,
    req: PredictRequest,
    upload: bytes | None,
    endpoint: str = "/v1/predict",
    deadline: float | None = None,
) -> dict:
    """The ``/v1/predict`` answer to a validated request: what the route does after parsing its body, also
    called by other routes (the Label Studio backend) with a request they build.

    Args:
        ctx: the replica's context.
        req: the request; its ``image_id`` alone names a cached image.
        upload: the image's bytes (a file part, or fetched by the caller), or None.
        endpoint: the route the stage times and mask counts are recorded under.
        deadline: absolute ``time.time()`` seconds by which to answer, or None.

    Raises:
        ApiError, InputError: as the route (``ImageNotCached`` for an ``image_id`` the owner does not hold
            and no bytes).
    """
    t0 = time.perf_counter()
    model = ctx.model(req.model_id)
    concepts = None
    if req.classes:
        ctx.require(model, "concept_prompts", "classes")
        prompts = tuple(ConceptPrompt(c, None, None, req.score_thresh, req.max_instances) for c in req.classes)
        fields = tuple(f"classes[{i}]" for i in range(len(prompts)))
        concepts = ConceptJob(prompts, req.mask_format, req.polygon_tolerance_px, fields, deadline)
    collection = req.examples_collection
    if collection is not None and req.classes:  # with classes, a collection that does not exist adds nothing
        collection = collection if await ctx.retriever.collection_or_none.remote(collection) else None
    elif collection is not None:
        await ctx.collection(collection)  # 404 unknown_collection
    if collection is not None:
        ctx.require(model, "automatic_masks", "collection")
        fade, amg = ctx.fade_spec(req.fade), ctx.amg(req.amg)
    image_id, data = ctx.images.identify(req, upload)
    timing: dict = {}
    owner = ctx.images.owner(image_id, model.model_id)

    def send(pixels):
        calls = [owner.concepts.remote(image_id, concepts, pixels)] if concepts is not None else []
        if collection is not None:
            generated = owner.generate_for.remote(image_id, amg, req.max_instances, pixels, deadline)
            crops = ctx.fader.fade_masks.remote(None, generated, fade, deadline)
            embedded = ctx.embedder.embed_crops.remote(crops, deadline)
            found = ctx.retriever.knn_chain.remote(collection, embedded, req.top_k, deadline)
            calls += [generated, found]
        return asyncio.gather(*calls)

    check = concepts.for_image if concepts is not None else (lambda w, h: None)
    outs = list(await ctx.images.call(image_id, data, send, check, timing, deadline))
    named = outs.pop(0) if concepts is not None else None
    gen, knn = outs if collection is not None else (None, None)
    first = named or gen
    timing["encode"] = first.timing_ms.get("encode", 0.0)
    found_instances = []
    body = {"model_id": first.model_id, "weights": first.weights, "collection": collection}
    if named is not None:
        found_instances += class_instances(req.classes, named.results)
        timing.update({"concepts": named.timing_ms["concepts"]})
    if gen is not None:
        timing.update({"amg": gen.timing_ms["amg"], **{k: knn.timing_ms[k] for k in ("fade", "embed", "retrieve")}})
        labelled = instances(gen.masks, knn.neighbors, req.min_score, req.mask_format, req.polygon_tolerance_px)
        found_instances += [{**i, "label_source": "examples"} for i in labelled]
        body["embedder_weights"] = knn.embedder_weights
    body["instances"] = found_instances
    timing["total"] = (time.perf_counter() - t0) * 1e3
    ctx.metrics.stages(endpoint, timing)
    ctx.metrics.masks(endpoint, body["instances"])
    ctx.metrics.label_confidences(body["instances"])
    return out.image_answer(first.image, body, timing)


def class_instances(classes: list[str], results: list[dict]) -> list[dict]:
    """``/v1/predict`` instances of a class vocabulary: every concept instance labelled with its class
    (``label_source: "classes"``, ``confidence``: the model's score), best score first over all classes.

    Args:
        classes: the class names, in the order of ``results``.
        results: per class, the decoder's ``{"instances": [record, ...]}`` (:class:`ConceptResult`).
    """
    if len(classes) != len(results):
        raise ValueError(f"{len(classes)} classes but {len(results)} concept results")
    named = [
        {**rec, "label": name, "confidence": rec["score"], "neighbors": [], "label_source": "classes"}
        for name, result in zip(classes, results)
        for rec in result["instances"]
    ]
    return sorted(named, key=lambda r: -r["confidence"])
