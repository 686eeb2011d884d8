"""``POST /v1/predict``: every object in an image, labelled by its nearest examples in a collection.

The request flows decoder (automatic masks) -> fader -> embedder -> retriever as chained
``DeploymentResponse``s, so its crops and embeddings never pass through the ingress.
"""

from __future__ import annotations

import asyncio
import time

from fastapi import Request

from serve_app.assemble import instances
from serve_app.ingress import request_examples as ex
from serve_app.ingress import responses as out
from serve_app.ingress.context import Context
from serve_app.ingress.http import parse_body, stage_errors
from serve_app.ingress.openapi import DescribedRouter
from serve_app.ingress.schemas import PredictRequest

router = DescribedRouter()


@router.post("/v1/predict", **router.body_spec(PredictRequest, ok=out.PredictResponse, examples=ex.PREDICT_EXAMPLES))
@stage_errors
async def predict(request: Request, ctx: Context) -> dict:
    """Every object in the image, labelled by its nearest labelled examples in a collection."""
    t0 = time.perf_counter()
    req, upload = await parse_body(request, PredictRequest, ctx.args.limits.max_body_bytes)
    fade = ctx.fade_spec(req.fade)
    amg = ctx.amg(req.amg)
    await ctx.collection(req.collection)
    image_id, data = ctx.images.identify(req, upload)
    timing: dict = {}
    owner = ctx.images.owner(image_id)

    def send(pixels):
        generated = owner.generate_for.remote(image_id, amg, req.max_instances, pixels)
        crops = ctx.fader.fade_masks.remote(None, generated, fade)
        found = ctx.retriever.knn_chain.remote(req.collection, ctx.embedder.embed_crops.remote(crops), req.top_k)
        return asyncio.gather(generated, found)

    gen, knn = await ctx.images.call(image_id, data, send, timing=timing)
    timing["encode"] = gen.timing_ms.get("encode", 0.0)
    timing.update({"amg": gen.timing_ms["amg"], **{k: knn.timing_ms[k] for k in ("fade", "embed", "retrieve")}})
    body = {
        "model_id": gen.model_id,
        "weights": gen.weights,
        "collection": req.collection,
        "instances": instances(gen.masks, knn.neighbors, req.min_score, req.mask_format, req.polygon_tolerance_px),
        "embedder_weights": knn.embedder_weights,
    }
    timing["total"] = (time.perf_counter() - t0) * 1e3
    ctx.metrics.stages("/v1/predict", timing)
    ctx.metrics.masks("/v1/predict", body["instances"])
    ctx.metrics.label_confidences(body["instances"])
    return out.image_answer(gen.image, body, timing)
