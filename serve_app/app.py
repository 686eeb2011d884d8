"""The HTTP ingress and the app builder: ``serve run configs/serve.yaml`` imports :func:`build_app`.

Graph: ``Ingress`` (FastAPI) -> ``ImageEncoder`` (once per new image) -> ``MaskDecoder`` (every prompt).
Image features stay in Ray's object store: the ingress keeps only ObjectRefs in its LRU cache and hands
them to the decoder, which Ray resolves there, so a click on a cached image moves no feature bytes
through the ingress.
"""


import asyncio
import json
import logging
import time
import uuid

import ray
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import ValidationError
from ray import serve
from ray.serve.handle import DeploymentHandle
from starlette.exceptions import HTTPException as StarletteHTTPException

from deployments.decoder import DecodeJob, MaskDecoder
from deployments.encoder import ImageEncoder
from models.sam2_image import feature_nbytes
from serve_app.cache import CacheEntry, EmbeddingCache
from serve_app.config import AppArgs
from serve_app.errors import ApiError, from_validation_error
from serve_app.images import b64_to_bytes, decode_image, image_id_of
from serve_app.schemas import SegmentRequest, check_prompts_in_image, to_prompt_specs
from serve_app.weights import WeightsSource, preflight

log = logging.getLogger("ray.serve")
RANDOM_WEIGHTS_WARNING = "random weights: masks are meaningless (SAMGRAPH_WEIGHTS=random)"
_LOST = (ray.exceptions.ObjectLostError, ray.exceptions.OwnerDiedError)

api = FastAPI(
    title="samgraph",
    summary="Promptable segmentation (SAM 2) as a Ray Serve deployment graph",
    version="0.1.0",
)


def _rid(request: Request) -> str:
    return getattr(request.state, "request_id", None) or "-"


@api.middleware("http")
async def _request_id(request: Request, call_next):
    request.state.request_id = request.headers.get("x-request-id") or uuid.uuid4().hex
    response = await call_next(request)
    response.headers["x-request-id"] = request.state.request_id
    return response


@api.exception_handler(ApiError)
async def _api_error(request: Request, exc: ApiError) -> JSONResponse:
    return JSONResponse(exc.body(_rid(request)), status_code=exc.status)


@api.exception_handler(RequestValidationError)
async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
    err = exc.errors()[0]
    field = ".".join(str(p) for p in err.get("loc", ()) if p != "body") or None
    return await _api_error(request, ApiError(422, "invalid_request", f"{field}: {err.get('msg')}", field))


@api.exception_handler(StarletteHTTPException)
async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
    return await _api_error(request, ApiError(exc.status_code, code, str(exc.detail)))


@api.exception_handler(Exception)
async def _internal_error(request: Request, exc: Exception) -> JSONResponse:
    log.error("request %s failed", _rid(request), exc_info=exc)
    return await _api_error(request, ApiError(500, "internal", "internal error; see the server log for this request id"))


async def _read_body(request: Request, max_bytes: int) -> bytes:
    """The request body, refusing (413) anything over ``max_bytes`` before reading it all."""
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > max_bytes:
        raise ApiError(413, "body_too_large", f"request body is {declared} bytes, over the limit of {max_bytes}")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > max_bytes:
            raise ApiError(413, "body_too_large", f"request body is over the limit of {max_bytes} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


async def _parse_segment(request: Request, max_bytes: int) -> "tuple[SegmentRequest, bytes | None]":
    """JSON body, or multipart with an ``image`` file part and an optional ``request`` JSON part."""
    body = await _read_body(request, max_bytes)
    ctype = request.headers.get("content-type", "application/json").split(";")[0].strip().lower()
    upload = None
    if ctype == "multipart/form-data":

        async def replay():
            return {"type": "http.request", "body": body, "more_body": False}

        try:
            form = await Request(request.scope, replay).form(max_files=1, max_fields=1)
        except Exception as e:  # malformed multipart, too many parts
            raise ApiError(400, "invalid_multipart", f"cannot parse multipart body: {e}") from None
        for key in form.keys():
            if key not in ("image", "request"):
                raise ApiError(422, "invalid_request", f"{key}: unknown multipart part (allowed: image, request)", key)
        part = form.get("image")
        if part is None or isinstance(part, str):
            raise ApiError(422, "invalid_request", "image: multipart upload needs an 'image' file part", "image")
        upload = await part.read()
        raw = form.get("request") or "{}"
        raw = raw if isinstance(raw, str) else (await raw.read()).decode("utf-8", "replace")
    elif ctype == "application/json":
        raw = body
    else:
        raise ApiError(415, "unsupported_media_type", "send application/json or multipart/form-data")
    try:
        data = json.loads(raw or b"{}")
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as e:
        raise ApiError(400, "invalid_json", f"body is not valid JSON: {e}"[:300], "request" if upload is not None else None) from None
    if not isinstance(data, dict):
        raise ApiError(422, "invalid_request", "body must be a JSON object")
    try:
        req = SegmentRequest.model_validate(data)
    except ValidationError as e:
        raise from_validation_error(e) from None
    if upload is not None and (req.image is not None or req.image_id is not None):
        raise ApiError(422, "invalid_request", "image: give the image once: a file part, inline base64 or image_id", "image")
    return req, upload


@serve.deployment(name="Ingress", ray_actor_options={"num_cpus": 0.25}, max_ongoing_requests=64)
@serve.ingress(api)
class Ingress:
    """HTTP front: validation, the embedding cache, and the calls into the encoder and decoder.

    Args:
        encoder: handle to :class:`deployments.encoder.ImageEncoder`.
        decoder: handle to :class:`deployments.decoder.MaskDecoder`.
        args: :class:`serve_app.config.AppArgs` as a dict.
    """

    def __init__(self, encoder: DeploymentHandle, decoder: DeploymentHandle, args: dict) -> None:
        self.args = AppArgs.model_validate(args)
        self.encoder = encoder
        self.decoder = decoder
        self.cache = EmbeddingCache(self.args.cache.max_entries, self.args.cache.max_bytes)
        self._feature_nbytes = feature_nbytes()

    @api.get("/healthz")
    async def healthz(self) -> dict:
        """Liveness: the ingress answers."""
        return {"status": "ok"}

    @api.get("/readyz")
    async def readyz(self) -> JSONResponse:
        """Readiness: 200 only when the encoder and decoder answer and run the same weights."""
        try:
            enc, dec = await asyncio.wait_for(
                asyncio.gather(self.encoder.info.remote(), self.decoder.info.remote()),
                timeout=self.args.readiness_timeout_s,
            )
        except Exception as e:  # timeout, replica not up yet
            return JSONResponse({"status": "not_ready", "reason": f"{type(e).__name__}: {e}"[:300]}, status_code=503)
        if (enc["model_id"], enc["weights"]) != (dec["model_id"], dec["weights"]):
            return JSONResponse({"status": "not_ready", "reason": "encoder and decoder weights differ"}, status_code=503)
        body = {
            "status": "ready",
            "model_id": enc["model_id"],
            "weights": enc["weights"],
            "device": enc["device"],
            "devices": {"encoder": enc["device"], "decoder": dec["device"]},
        }
        if enc["weights"] == "random":
            body["warnings"] = [RANDOM_WEIGHTS_WARNING]
        return JSONResponse(body)

    @api.get("/v1/stats")
    async def stats(self) -> dict:
        """Embedding-cache counters of this ingress replica and work counters of one replica per stage."""
        enc, dec = await asyncio.gather(self.encoder.stats.remote(), self.decoder.stats.remote())
        return {"cache": self.cache.stats(), "encoder": enc, "decoder": dec}

    @api.post("/v1/segment")
    async def segment(self, request: Request) -> dict:
        """Masks for box/point/mask prompts on an uploaded or cached image. See README for the schema."""
        t0 = time.perf_counter()
        req, upload = await _parse_segment(request, self.args.limits.max_body_bytes)
        timing = {"decode_image": 0.0, "encode": 0.0}
        if upload is not None or req.image is not None:
            data = upload if upload is not None else b64_to_bytes(req.image.base64)
            image_id = image_id_of(data)
            entry = self.cache.get(image_id)
            cached = entry is not None
            if entry is None:
                td = time.perf_counter()
                rgb = decode_image(data, self.args.limits.max_image_pixels)
                timing["decode_image"] = (time.perf_counter() - td) * 1e3
                check_prompts_in_image(req.prompts, rgb.shape[1], rgb.shape[0])
                entry = self._start_encode(image_id, rgb)
        elif req.image_id is not None:
            image_id = req.image_id
            entry = self.cache.get(image_id)
            cached = True
            if entry is None:
                raise ApiError(404, "image_not_cached", "image_id is not (or no longer) cached; send the image again", "image_id")
        else:
            raise ApiError(422, "invalid_request", "image: give image (base64 or file part) or image_id", "image")

        check_prompts_in_image(req.prompts, entry.width, entry.height)
        specs, default_multimask = to_prompt_specs(req.prompts, entry.width, entry.height)
        multimask = [req.multimask_output] * len(specs) if req.multimask_output is not None else default_multimask
        job = DecodeJob(tuple(specs), tuple(multimask), req.mask_format, req.max_masks, req.return_logits)

        te = time.perf_counter()
        try:
            features_ref = await entry.features  # a task resolving to the ObjectRef (done once submitted)
            if not entry.ready:  # our own encode, or one in flight for a concurrent request
                await features_ref._ready()  # wait for the features without fetching them here
                timing["encode"] = (time.perf_counter() - te) * 1e3
                entry.ready = True
            out = await self.decoder.decode.remote(features_ref, job)
        except _LOST:
            self.cache.pop(image_id)
            raise ApiError(404, "image_not_cached", "the cached features of this image were lost; send the image again", "image_id") from None
        except Exception:
            self.cache.pop(image_id)  # a failed encode must not stay cached
            raise
        timing.update({k: out["timing_ms"][k] for k in ("decode_masks", "postprocess")})
        timing["total"] = (time.perf_counter() - t0) * 1e3
        body = {
            "model_id": out["model_id"],
            "weights": out["weights"],
            "image_id": image_id,
            "width": entry.width,
            "height": entry.height,
            "encode_cached": cached,
            "results": out["results"],
            "timing_ms": timing,
        }
        if out["weights"] == "random":
            body["warnings"] = [RANDOM_WEIGHTS_WARNING]
        return body

    def _start_encode(self, image_id: str, rgb) -> "CacheEntry":
        """Submit the image to the encoder and cache the entry before any ``await``, so that concurrent
        requests for the same image wait for this encode instead of starting another. The entry holds
        a task that resolves to the features' ObjectRef once the encoder has taken the request."""
        task = asyncio.ensure_future(self.encoder.encode.remote(rgb)._to_object_ref())
        entry = CacheEntry(features=task, width=int(rgb.shape[1]), height=int(rgb.shape[0]), nbytes=self._feature_nbytes)
        self.cache.put(image_id, entry)
        return entry


def build_app(args: dict | None = None) -> serve.Application:
    """Assemble the graph from :class:`serve_app.config.AppArgs` (the ``args:`` of a Serve config).

    Weight settings not in ``args`` are resolved here from the environment, so every replica of every
    stage loads the same weights.

    Raises:
        ValueError: invalid arguments (unknown model, bad limits, unknown keys).
        WeightsError: the weights cannot be had (no network and no checkpoint); the message names the
            alternatives, and ``serve run`` stops with it.
    """
    try:
        cfg = AppArgs.model_validate(args or {})
    except ValidationError as e:
        raise ValueError(f"invalid samgraph app args: {e}") from None
    source = WeightsSource.resolve(cfg.weights, cfg.checkpoint, cfg.seed)
    preflight(cfg.model_id, source)
    weights = {"kind": source.kind, "checkpoint": source.checkpoint, "seed": source.seed}
    encoder = ImageEncoder.bind(cfg.model_id, weights, cfg.encoder.device, cfg.encoder.torch_threads)
    decoder = MaskDecoder.bind(cfg.model_id, weights, cfg.decoder.device, cfg.decoder.torch_threads)
    return Ingress.bind(encoder, decoder, cfg.model_dump())
