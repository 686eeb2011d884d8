"""The naive-server baseline: Meta's ``SAM2ImagePredictor`` behind a single-worker HTTP server.

What common annotation backends do: one process, one model, and for every request ``set_image`` (the
full encoder) followed by ``predict``. Requests are served one at a time (the handler computes on the
event loop, so the next request waits). It speaks the subset of samgraph's ``/v1/segment`` body the
load generator sends, so both servers get byte-identical requests:

    {"image": {"base64": ...}, "prompts": [{"box_xyxy": [x0, y0, x1, y1]} | {"points": [[x, y, 1|0], ...]}],
     "multimask_output": bool | null}

and answers ``{"results": [{"masks": [{"rle", "predicted_iou", "area_px", "bbox_xyxy"}, ...]}],
"timing_ms": {"decode_image", "encode", "decode_masks", "postprocess", "total"}}`` with COCO RLE masks,
best ``predicted_iou`` first. ``multimask_output`` null means sam2's rule: three candidates for a lone
click, one mask otherwise. ``image_id`` is not understood (there is no cache): clients resend the image.

    python -m benchmarks.naive_server --port 8001 [--model-id sam2.1_hiera_tiny] [--seed 0] [--threads 2]

Weights: seeded random (``build_sam2_model(model_id, seed=seed)``), the same as ``SAMGRAPH_WEIGHTS=random``
with ``SAMGRAPH_SEED`` = seed, or ``--checkpoint`` (a Meta checkpoint file, loaded strictly).
"""

from __future__ import annotations

import argparse
import base64
import io
import time

import numpy as np

from benchmarks.baselines import naive_predictor


def build_app(predictor):
    """A Starlette app with ``GET /healthz`` and ``POST /v1/segment`` over one ``SAM2ImagePredictor``."""
    from PIL import Image
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    from models.masks import encode_masks

    async def healthz(request: Request) -> JSONResponse:
        return JSONResponse({"status": "ok"})

    async def segment(request: Request) -> JSONResponse:
        # Deliberately blocking: one request at a time, as a single-worker backend serves them.
        t0 = time.perf_counter()
        body = await request.json()
        with Image.open(io.BytesIO(base64.b64decode(body["image"]["base64"]))) as im:
            rgb = np.asarray(im.convert("RGB"))
        t1 = time.perf_counter()
        predictor.set_image(rgb)
        t2 = time.perf_counter()
        results, post = [], 0.0
        for prompt in body["prompts"]:
            box = np.asarray(prompt["box_xyxy"], np.float32) if prompt.get("box_xyxy") else None
            points = np.asarray(prompt["points"], np.float32) if prompt.get("points") else None
            coords = points[:, :2] if points is not None else None
            labels = points[:, 2].astype(np.int32) if points is not None else None
            multimask = body.get("multimask_output")
            if multimask is None:
                multimask = box is None and points is not None and len(points) == 1
            masks, ious, _ = predictor.predict(point_coords=coords, point_labels=labels, box=box, multimask_output=multimask)
            tp = time.perf_counter()
            order = np.argsort(-ious)
            encoded = encode_masks(masks[order].astype(bool), "rle")
            results.append({"masks": [{**e, "predicted_iou": float(ious[i])} for i, e in zip(order, encoded)]})
            post += time.perf_counter() - tp
        t3 = time.perf_counter()
        timing = {"decode_image": (t1 - t0) * 1e3, "encode": (t2 - t1) * 1e3, "decode_masks": (t3 - t2 - post) * 1e3, "postprocess": post * 1e3, "total": (t3 - t0) * 1e3}
        return JSONResponse({"results": results, "timing_ms": timing})

    return Starlette(routes=[Route("/healthz", healthz), Route("/v1/segment", segment, methods=["POST"])])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--model-id", default="sam2.1_hiera_tiny")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--checkpoint", default=None)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()

    import uvicorn

    predictor = naive_predictor(args.model_id, args.seed, args.checkpoint, args.threads)
    uvicorn.run(build_app(predictor), host="127.0.0.1", port=args.port, workers=1, log_level="warning")


if __name__ == "__main__":
    main()
