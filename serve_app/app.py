"""The HTTP ingress and the app builder: ``serve run configs/serve.yaml`` imports :func:`build_app`.

Graph::

    Ingress ──> ImageEncoder (once per new image)
       │──────> MaskDecoder  (prompts: /v1/segment; automatic masks: /v1/predict, text prompts)
       │          └─> Fader ──> Embedder ──> Retriever      (chained by DeploymentResponses)
       │──────> Embedder (text tower), Retriever (examples)
       └──────> VideoSegmenter (/v1/segment/video: sam2's video predictor, streamed frame by frame)

Image pixels and features stay in Ray's object store: the ingress keeps only ObjectRefs in its LRU
cache and hands them to the stages, which Ray resolves there. Later stages receive the previous stage's
``DeploymentResponse``, so a /v1/predict request flows decoder -> fader -> embedder -> retriever without
its crops or embeddings passing through the ingress, each stage batching across concurrent requests.
"""

import asyncio
import json
import logging
import time

import numpy as np
import ray
from fastapi import Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import ValidationError
from ray import serve
from ray.serve.exceptions import BackPressureError
from ray.serve.handle import DeploymentHandle

from deployments.decoder import DecodeJob, MaskDecoder
from deployments.embedder import Embedder
from deployments.encoder import ImageEncoder
from deployments.fader import Fader
from deployments.retriever import Retriever
from deployments.video import VideoJob, VideoSegmenter
from models.amg import AmgSettings
from models.embedder import ClipSpec
from models.masks import decode_rle, rle_area, rle_bbox_xyxy
from models.sam2_image import feature_nbytes
from serve_app.assemble import amg_settings, instances, rank_by_text
from serve_app.cache import CacheEntry, EmbeddingCache
from serve_app.clip_weights import ClipWeightsSource, preflight_clip
from serve_app.config import AppArgs
from serve_app.errors import ApiError
from serve_app.http import api, parse_body, stage_errors
from serve_app.images import b64_to_bytes, decode_image, image_id_of
from serve_app.metrics import (
    EXPOSITION_CONTENT_TYPE,
    SCRAPE_TIMEOUT_S,
    IngressMetrics,
    merge_exposition,
    metrics_urls,
    scrape_nodes,
)
from serve_app.schemas import (
    ExampleRequest,
    FadeIn,
    PredictRequest,
    SegmentRequest,
    check_prompts_in_image,
    to_prompt_specs,
)
from serve_app.vectorstore import preflight_store
from serve_app.video import decode_frames, decode_video
from serve_app.video_schemas import VideoRequest, check_video_objects, to_video_objects
from serve_app.weights import WeightsSource, preflight

RANDOM_WEIGHTS_WARNING = "random weights: masks and labels are meaningless (SAMGRAPH_WEIGHTS=random)"
_LOST = (ray.exceptions.ObjectLostError, ray.exceptions.OwnerDiedError)
log = logging.getLogger("ray.serve")


# Module-level helpers the Ingress uses are defined above it: Serve pickles the ingress's routes while
# the class is being decorated, when later module globals do not exist yet.
def _propagate_timing(frames: list[dict]) -> dict:
    """``propagate`` (sum) and ``propagate_per_frame`` (mean) in ms over frame records."""
    total = sum(f["propagate_ms"] for f in frames)
    return {"propagate": total, "propagate_per_frame": total / len(frames) if frames else 0.0}


@serve.deployment(name="Ingress", ray_actor_options={"num_cpus": 0.2}, max_ongoing_requests=64)
@serve.ingress(api)
class Ingress:
    """HTTP front: validation, the image/embedding cache, and the calls into the stages.

    Args:
        encoder, decoder, fader, embedder, retriever: handles to the stage deployments.
        args: :class:`serve_app.config.AppArgs` as a dict.
        video: handle to the ``VideoSegmenter`` (None: ``/v1/segment/video`` answers 404).
    """

    def __init__(
        self,
        encoder: DeploymentHandle,
        decoder: DeploymentHandle,
        fader: DeploymentHandle,
        embedder: DeploymentHandle,
        retriever: DeploymentHandle,
        args: dict,
        video: DeploymentHandle | None = None,
    ) -> None:
        self.args = AppArgs.model_validate(args)
        self.encoder, self.decoder, self.fader, self.embedder, self.retriever = encoder, decoder, fader, embedder, retriever
        self.video = video
        self.cache = EmbeddingCache(self.args.cache.max_entries, self.args.cache.max_bytes)
        self._feature_nbytes = feature_nbytes()
        self.metrics = IngressMetrics.install()

    # ---------------------------------------------------------------- health
    @api.get("/healthz")
    async def healthz(self) -> dict:
        """Liveness: the ingress answers."""
        return {"status": "ok"}

    @api.get("/readyz")
    async def readyz(self) -> JSONResponse:
        """Readiness: 200 only when every stage answers and encoder and decoder run the same weights."""
        calls = [
            self.encoder.info.remote(),
            self.decoder.info.remote(),
            self.embedder.info.remote(),
            self.retriever.info.remote(),
            self.fader.stats.remote(),
        ]
        if self.video is not None:
            calls.append(self.video.info.remote())
        try:
            # return_exceptions: a call cancelled by the timeout leaves no "exception never retrieved" in the log
            answers = await asyncio.wait_for(asyncio.gather(*calls, return_exceptions=True), timeout=self.args.readiness_timeout_s)
        except Exception as e:  # timeout: a replica is not up yet
            answers = [e]
        failed = next((a for a in answers if isinstance(a, BaseException)), None)
        if failed is not None:
            return JSONResponse({"status": "not_ready", "reason": f"{type(failed).__name__}: {failed}"[:300]}, status_code=503)
        enc, dec, emb, ret, fad, *vid = answers
        if (enc["model_id"], enc["weights"]) != (dec["model_id"], dec["weights"]):
            return JSONResponse({"status": "not_ready", "reason": "encoder and decoder weights differ"}, status_code=503)
        if vid and (enc["model_id"], enc["weights"]) != (vid[0]["model_id"], vid[0]["weights"]):
            return JSONResponse({"status": "not_ready", "reason": "encoder and video segmenter weights differ"}, status_code=503)
        body = {
            "status": "ready",
            "model_id": enc["model_id"],
            "weights": enc["weights"],
            "device": enc["device"],
            "devices": {"encoder": enc["device"], "decoder": dec["device"], "embedder": emb["device"], **({"video": vid[0]["device"]} if vid else {})},
            "embedder": {"model_id": emb["model_id"], "weights": emb["weights"], "dim": emb["dim"]},
            "retriever": {"backend": ret["backend"]},
            # speed-ups in force (after any fallback), e.g. {"precision": "bf16", "compiler": "inductor"}
            "accel": {k: {"precision": v["accel"]["precision"], "compiler": v["accel"]["compiler"]} for k, v in (("encoder", enc), ("decoder", dec))},
        }
        if "random" in (enc["weights"], emb["weights"]):
            body["warnings"] = [RANDOM_WEIGHTS_WARNING]
        return JSONResponse(body)

    @api.get("/v1/stats")
    @stage_errors
    async def stats(self) -> dict:
        """Embedding-cache counters of this ingress replica and work counters of one replica per stage."""
        names = ("encoder", "decoder", "fader", "embedder", "retriever") + (("video",) if self.video is not None else ())
        handles = (self.encoder, self.decoder, self.fader, self.embedder, self.retriever) + ((self.video,) if self.video is not None else ())
        results = await asyncio.gather(*(h.stats.remote() for h in handles))
        return {"cache": self.cache.stats(), **dict(zip(names, results))}

    @api.get("/metrics", include_in_schema=False)
    async def metrics_text(self) -> Response:
        """Prometheus text: the ``ray_samgraph_*`` and ``ray_serve_*`` families of every alive node's Ray
        metrics agent, merged (a convenience; Prometheus should scrape the agents, see README).

        Raises:
            ApiError: 503 ``metrics_unavailable`` when no agent answers.
        """
        urls = metrics_urls(await asyncio.to_thread(ray.nodes))
        bodies = await scrape_nodes(urls, SCRAPE_TIMEOUT_S) if urls else []
        if not bodies:
            raise ApiError(503, "metrics_unavailable", f"no Ray metrics agent answered (tried {len(urls)}: {', '.join(urls)[:200]})")
        text = await asyncio.to_thread(merge_exposition, bodies)  # ~10 ms per node: off the event loop
        return Response(text, media_type=EXPOSITION_CONTENT_TYPE)

    # ---------------------------------------------------------------- images
    async def _image(self, req, upload: bytes | None, prompts=(), field_prefix: str | None = "prompts") -> tuple[str, CacheEntry, bool, dict]:
        """The request's image as a cache entry, encoding it if new; ``prompts`` are checked against its
        size first (before any encode; ``field_prefix`` as in :func:`check_prompts_in_image`).

        Returns:
            (image_id, entry, found in cache, timing_ms with ``decode_image``).

        Raises:
            ApiError: 4xx for bad or missing images, 404 for an unknown ``image_id``, 422 for prompts
                outside the image.
        """
        timing = {"decode_image": 0.0}
        if upload is not None or req.image is not None:
            data = upload if upload is not None else b64_to_bytes(req.image.base64)
            image_id = image_id_of(data)
            entry = self.cache.get(image_id)  # before decoding: a known image costs no decode
            self.metrics.cache_lookup(entry is not None)
            if entry is not None:
                check_prompts_in_image(list(prompts), entry.width, entry.height, field_prefix)
                return image_id, entry, True, timing
            td = time.perf_counter()
            rgb = decode_image(data, self.args.limits.max_image_pixels)
            timing["decode_image"] = (time.perf_counter() - td) * 1e3
            check_prompts_in_image(list(prompts), rgb.shape[1], rgb.shape[0], field_prefix)
            return image_id, self._start_encode(image_id, rgb), False, timing
        if req.image_id is not None:
            entry = self.cache.get(req.image_id)
            self.metrics.cache_lookup(entry is not None)
            if entry is None:
                raise ApiError(404, "image_not_cached", "image_id is not (or no longer) cached; send the image again", "image_id")
            check_prompts_in_image(list(prompts), entry.width, entry.height, field_prefix)
            return req.image_id, entry, True, timing
        raise ApiError(422, "invalid_request", "image: give image (base64 or file part) or image_id", "image")

    def _start_encode(self, image_id: str, rgb: np.ndarray) -> CacheEntry:
        """Put the pixels in the object store, submit them to the encoder, and cache the entry before any
        ``await``, so that concurrent requests for the same image wait for this encode instead of
        starting another. ``features`` is a task resolving to the features' ObjectRef."""
        image_ref = ray.put(rgb)
        task = asyncio.ensure_future(self.encoder.encode.remote(image_ref)._to_object_ref())
        entry = CacheEntry(
            features=task,
            image=image_ref,
            width=int(rgb.shape[1]),
            height=int(rgb.shape[0]),
            nbytes=self._feature_nbytes + rgb.nbytes,
        )
        self.cache.put(image_id, entry)
        self.metrics.cache_size(len(self.cache), self.cache.nbytes)
        return entry

    async def _features(self, image_id: str, entry: CacheEntry, timing: dict) -> ray.ObjectRef:
        """The features' ObjectRef once they exist; records the wait as ``timing["encode"]``."""
        te = time.perf_counter()
        try:
            ref = await entry.features
            if not entry.ready:  # our own encode, or one in flight for a concurrent request
                await ref._ready()  # wait for the features without fetching them here
                timing["encode"] = (time.perf_counter() - te) * 1e3
                entry.ready = True
        except Exception:  # a failed or refused encode must not stay cached: a retry encodes again
            self.cache.discard(image_id, entry)
            raise
        timing.setdefault("encode", 0.0)
        return ref

    async def _guard(self, image_id: str, entry: CacheEntry, awaitable):
        """Await stage calls that read the image's cached refs. A failure drops the entry when its
        features cannot be read: a failed encode leaves an error in place of the features (``_ready``
        does not raise), and it must not answer later requests. A stage that refused the call
        (``BackPressureError``) or failed itself (a bad request, a replica that died) leaves the entry
        in place for the retry. Lost refs become a 404 asking for the image again."""
        try:
            return await awaitable
        except BackPressureError:
            raise
        except _LOST:
            self.cache.discard(image_id, entry)
            raise ApiError(404, "image_not_cached", "the cached data of this image were lost; send the image again", "image_id") from None
        except Exception:
            if not await self._features_intact(entry):
                self.cache.discard(image_id, entry)
            raise

    @staticmethod
    async def _features_intact(entry: CacheEntry) -> bool:
        """Whether the entry's features can be read (only asked after a failure: it fetches them)."""
        try:
            await (await entry.features)
            return True
        except Exception:
            return False

    def _fade_spec(self, fade: FadeIn | None) -> dict:
        """Request fade settings over the app's defaults, validated now (422 naming the parameter)."""
        from models.fade_strategies import make_fade_strategy

        base = self.args.fader
        if fade is None:
            strategy, params = base.strategy, dict(base.params)
        elif fade.strategy == base.strategy:  # the request tunes the default strategy
            strategy, params = base.strategy, {**base.params, **fade.params()}
        else:
            strategy, params = fade.strategy, fade.params()
        try:
            make_fade_strategy(strategy, **params)
        except ValueError as e:
            field = next((f"fade.{n}" for n in params if n in str(e)), "fade.strategy")
            raise ApiError(422, "invalid_request", f"{field}: {e}", field) from None
        return {"strategy": strategy, "params": params}

    async def _collection(self, name: str) -> dict:
        """``{"dim", "count"}`` of an existing collection; 404 ``unknown_collection`` otherwise."""
        info = await self.retriever.collection_or_none.remote(name)
        if info is None:
            raise ApiError(404, "unknown_collection", f"collection {name!r} does not exist; add examples first", "collection")
        return info

    def _amg(self, overrides) -> AmgSettings:
        try:
            return amg_settings(self.args.amg.model_dump(), overrides.model_dump() if overrides is not None else None)
        except ValueError as e:
            raise ApiError(422, "invalid_request", f"amg: {e}", "amg") from None

    # ---------------------------------------------------------------- segment
    @api.post("/v1/segment")
    @stage_errors
    async def segment(self, request: Request) -> dict:
        """Masks for box/point/mask/text prompts on an uploaded or cached image. See README for the schema."""
        t0 = time.perf_counter()
        req, upload = await parse_body(request, SegmentRequest, self.args.limits.max_body_bytes)
        image_id, entry, cached, timing = await self._image(req, upload, req.prompts)
        geometric = [p for p in req.prompts if not p.is_text]
        texts = [p for p in req.prompts if p.is_text]
        fade = self._fade_spec(req.fade) if texts else None
        amg = self._amg(req.amg) if texts else None
        specs, default_multimask = to_prompt_specs(geometric, entry.width, entry.height) if geometric or not texts else ([], [])
        multimask = [req.multimask_output] * len(specs) if req.multimask_output is not None else default_multimask
        features = await self._features(image_id, entry, timing)

        calls = []
        if specs:
            job = DecodeJob(tuple(specs), tuple(multimask), req.mask_format, req.max_masks, req.return_logits)
            calls.append(self.decoder.decode.remote(features, job))
        if texts:
            generated = self.decoder.generate.remote(features, amg, self.args.text_candidates)
            crops = self.fader.fade_masks.remote(entry.image, generated, fade)
            calls += [generated, self.embedder.embed_crops.remote(crops), self.embedder.embed_text_list.remote([p.text for p in texts])]
        outs = await self._guard(image_id, entry, asyncio.gather(*calls))

        geo_results, text_results = [], []
        model_id = weights = None
        if specs:
            out = outs.pop(0)
            geo_results = out["results"]
            model_id, weights = out["model_id"], out["weights"]
            timing.update({k: out["timing_ms"][k] for k in ("decode_masks", "postprocess")})
        if texts:
            gen, emb, text_emb = outs
            model_id, weights = gen["model_id"], gen["weights"]
            text_results = [{"masks": rank_by_text(gen["masks"], emb["embeddings"], t, req.max_masks, req.mask_format)} for t in text_emb]
            timing.update({"amg": gen["timing_ms"]["amg"], **{k: emb["timing_ms"][k] for k in ("fade", "embed")}})
        results = []
        geo_iter, text_iter = iter(geo_results), iter(text_results)
        for p in req.prompts or [None]:
            results.append(next(text_iter) if p is not None and p.is_text else next(geo_iter))
        timing["total"] = (time.perf_counter() - t0) * 1e3
        body = {"model_id": model_id, "weights": weights, "results": results}
        if texts:
            body["embedder_weights"] = emb["weights"]
        self.metrics.stages("/v1/segment", timing)
        self.metrics.masks("/v1/segment", (m for r in results for m in r["masks"]))
        return self._respond(image_id, entry, cached, body, timing)

    def _respond(self, image_id: str, entry: CacheEntry, cached: bool, body: dict, timing: dict) -> dict:
        out = {
            "model_id": body.pop("model_id"),
            "weights": body.pop("weights"),
            "image_id": image_id,
            "width": entry.width,
            "height": entry.height,
            "encode_cached": cached,
            **body,
            "timing_ms": timing,
        }
        if out["weights"] == "random" or body.get("embedder_weights") == "random":
            out["warnings"] = [RANDOM_WEIGHTS_WARNING]
        return out

    # ---------------------------------------------------------------- video
    @api.post("/v1/segment/video")
    @stage_errors
    async def segment_video(self, request: Request):
        """Track prompted objects through a clip (MP4 or frame list); JSON, or NDJSON with ``stream``.

        Everything that can be checked before tracking is checked first (4xx naming the field): the clip
        decodes, its frame count and size are within ``args.video`` limits, prompts lie on frames of the
        clip and inside them, object ids are unique. See README for the schema.
        """
        t0 = time.perf_counter()
        if self.video is None:
            raise ApiError(404, "not_found", "this app has no video segmenter")
        lim = self.args.video
        req, upload = await parse_body(request, VideoRequest, self.args.limits.max_body_bytes, file_part="video")
        if upload is not None and req.frames is not None:
            raise ApiError(422, "invalid_request", "frames: give either a video file part or frames, not both", "frames")
        td = time.perf_counter()
        if upload is not None or req.video is not None:
            data = upload if upload is not None else b64_to_bytes(req.video.base64, "video.base64")
            frames = await asyncio.to_thread(decode_video, data, lim.max_frames, lim.max_frame_pixels, "video")
        elif req.frames is not None:
            frames = await asyncio.to_thread(decode_frames, [f.base64 for f in req.frames], lim.max_frames, lim.max_frame_pixels, "frames")
        else:
            raise ApiError(422, "invalid_request", "video: give the clip as a video (MP4 file part or base64) or as frames", "video")
        timing = {"decode_video": (time.perf_counter() - td) * 1e3}
        n, h, w = (int(v) for v in frames.shape[:3])
        check_video_objects(req.objects, n, w, h)
        if req.start_frame is not None and req.start_frame >= n:
            raise ApiError(422, "out_of_clip", f"start_frame {req.start_frame} is outside the clip of {n} frames", "start_frame")
        job = VideoJob(tuple(to_video_objects(req.objects)), req.start_frame, req.max_frames, req.reverse, req.mask_format)
        records = self.video.options(stream=True).track.remote(ray.put(frames), job)
        del frames  # the object store holds them now
        try:
            init = await records.__anext__()
        except ValueError as e:  # the tracker's own checks; the ingress checks the same first
            raise ApiError(422, "invalid_request", str(e).splitlines()[-1][:300]) from None
        timing["init"] = init["init_ms"]
        head = {
            "model_id": init["model_id"],
            "weights": init["weights"],
            "num_frames": n,
            "width": w,
            "height": h,
            "obj_ids": [o.obj_id for o in req.objects],
        }
        if init["weights"] == "random":
            head["warnings"] = [RANDOM_WEIGHTS_WARNING]
        if req.stream:
            return StreamingResponse(self._video_lines(request, records, head, timing, t0), media_type="application/x-ndjson")
        frames_out = []
        async for rec in records:
            rec.pop("type")
            frames_out.append(rec)
        frames_out.sort(key=lambda r: r["frame_index"])
        timing.update(_propagate_timing(frames_out))
        timing["total"] = (time.perf_counter() - t0) * 1e3
        self.metrics.stages("/v1/segment/video", timing)
        return {**head, "frames": frames_out, "timing_ms": timing}

    async def _video_lines(self, request: Request, records, head: dict, timing: dict, t0: float):
        """NDJSON lines: ``start`` (the head and ``timing_ms`` so far), one ``frame`` line per frame as the
        tracker yields it, then ``end`` with the totals, or an ``error`` line if tracking fails midway.
        Nothing is accumulated but the per-frame times."""
        yield json.dumps({"type": "start", **head, "timing_ms": dict(timing)}) + "\n"
        per_frame = []
        try:
            async for rec in records:
                per_frame.append({"propagate_ms": rec["propagate_ms"]})
                yield json.dumps(rec) + "\n"
        except Exception as e:
            rid = getattr(request.state, "request_id", "-")
            log.error("request %s: video tracking failed midway", rid, exc_info=e)
            err = ApiError(500, "internal", "tracking failed midway; see the server log for this request id")
            yield json.dumps({"type": "error", **err.body(rid)}) + "\n"
            return
        finally:
            records.cancel()  # a no-op once done; stops the tracker when the client went away
        timing.update(_propagate_timing(per_frame))
        timing["total"] = (time.perf_counter() - t0) * 1e3
        self.metrics.stages("/v1/segment/video", timing)
        yield json.dumps({"type": "end", "frames": len(per_frame), "timing_ms": timing}) + "\n"

    # ---------------------------------------------------------------- predict
    @api.post("/v1/predict")
    @stage_errors
    async def predict(self, request: Request) -> dict:
        """Every object in the image, labelled by its nearest labelled examples in a collection."""
        t0 = time.perf_counter()
        req, upload = await parse_body(request, PredictRequest, self.args.limits.max_body_bytes)
        fade = self._fade_spec(req.fade)
        amg = self._amg(req.amg)
        await self._collection(req.collection)
        image_id, entry, cached, timing = await self._image(req, upload)
        features = await self._features(image_id, entry, timing)
        generated = self.decoder.generate.remote(features, amg, req.max_instances)
        crops = self.fader.fade_masks.remote(entry.image, generated, fade)
        embedded = self.embedder.embed_crops.remote(crops)
        found = self.retriever.knn_chain.remote(req.collection, embedded, req.top_k)
        gen, nbrs = await self._guard(image_id, entry, asyncio.gather(generated, found))
        timing.update({"amg": gen["timing_ms"]["amg"], **{k: nbrs["timing_ms"][k] for k in ("fade", "embed", "retrieve")}})
        body = {
            "model_id": gen["model_id"],
            "weights": gen["weights"],
            "collection": req.collection,
            "instances": instances(gen["masks"], nbrs["neighbors"], req.min_score, req.mask_format),
            "embedder_weights": nbrs["embedder_weights"],
        }
        timing["total"] = (time.perf_counter() - t0) * 1e3
        self.metrics.stages("/v1/predict", timing)
        self.metrics.masks("/v1/predict", body["instances"])
        self.metrics.label_confidences(body["instances"])
        return self._respond(image_id, entry, cached, body, timing)

    # ---------------------------------------------------------------- examples
    @api.post("/v1/examples")
    @stage_errors
    async def add_example(self, request: Request) -> dict:
        """Store one labelled object (a prompt's best mask, or a given mask) as a few-shot example."""
        t0 = time.perf_counter()
        req, upload = await parse_body(request, ExampleRequest, self.args.limits.max_body_bytes)
        fade = self._fade_spec(req.fade)
        prompt = req.prompt() if req.mask_rle is None else None
        image_id, entry, cached, timing = await self._image(req, upload, [prompt] if prompt else [], field_prefix=None)
        if prompt is not None:
            features = await self._features(image_id, entry, timing)
            specs, multimask = to_prompt_specs([prompt], entry.width, entry.height)
            out = await self._guard(image_id, entry, self.decoder.decode.remote(features, DecodeJob(tuple(specs), tuple(multimask), "rle", 1, False)))
            rle = out["results"][0]["masks"][0]["rle"]
        else:
            rle = self._check_mask(req.mask_rle.model_dump(), entry)
        area = rle_area(rle)
        if area == 0:
            raise ApiError(422, "empty_mask", "the object's mask is empty; nothing to embed", "mask_rle" if prompt is None else "box_xyxy")
        crops = self.fader.fade_masks.remote(entry.image, [rle], fade)
        embedded = self.embedder.embed_crops.remote(crops)
        payload = {"image_id": image_id, "bbox_xyxy": rle_bbox_xyxy(rle), "area_px": area}
        try:
            ids = await self._guard(image_id, entry, self.retriever.add_chain.remote(req.collection, embedded, [req.label], [payload]))
        except ValueError as e:  # dimension mismatch with an existing collection
            raise ApiError(409, "dimension_mismatch", str(e).splitlines()[-1][:300], "collection") from None
        timing["total"] = (time.perf_counter() - t0) * 1e3
        self.metrics.stages("/v1/examples", timing)
        return {"ids": ids, "collection": req.collection, "label": req.label, "image_id": image_id, "area_px": area, "timing_ms": timing}

    def _check_mask(self, rle: dict, entry: CacheEntry) -> dict:
        if list(rle["size"]) != [entry.height, entry.width]:
            raise ApiError(422, "invalid_request", f"mask_rle: size {list(rle['size'])} differs from the image's [{entry.height}, {entry.width}]", "mask_rle")
        try:
            decode_rle(rle)
        except ValueError as e:
            raise ApiError(422, "invalid_request", f"mask_rle: {e}", "mask_rle") from None
        return rle

    @api.get("/v1/examples")
    @stage_errors
    async def list_examples(self, collection: str = "default", label: str | None = None, offset: str | None = None, limit: int = 100) -> dict:
        """Examples per label in a collection, and a page of their ids."""
        if not 1 <= limit <= 1000:
            raise ApiError(422, "invalid_request", "limit: must be in 1..1000", "limit")
        info = await self._collection(collection)
        counts, (items, next_offset) = await asyncio.gather(
            self.retriever.counts.remote(collection), self.retriever.list_ids.remote(collection, label, offset, limit)
        )
        return {"collection": collection, "dim": info["dim"], "total": sum(counts.values()), "counts": counts, "items": items, "next_offset": next_offset}

    @api.delete("/v1/examples/{example_id}")
    @stage_errors
    async def delete_example(self, example_id: str, collection: str = "default") -> dict:
        """Delete one example by id."""
        await self._collection(collection)
        try:
            deleted = await self.retriever.delete.remote(collection, example_id)
        except ValueError as e:
            raise ApiError(422, "invalid_request", f"example_id: {e}"[:300], "example_id") from None
        if not deleted:
            raise ApiError(404, "unknown_example", f"no example {example_id!r} in collection {collection!r}", "example_id")
        return {"deleted": example_id, "collection": collection}


def build_app(args: dict | None = None) -> serve.Application:
    """Assemble the graph from :class:`serve_app.config.AppArgs` (the ``args:`` of a Serve config).

    Weight and store settings not in ``args`` are resolved here from the environment, so every replica
    of every stage loads the same weights and store.

    Raises:
        ValueError: invalid arguments (unknown model, bad limits, unknown keys).
        WeightsError: weights cannot be had (no network and no checkpoint); the message names the
            alternatives, and ``serve run`` stops with it.
        StoreError: the data dir cannot be written.
    """
    try:
        cfg = AppArgs.model_validate(args or {})
    except ValidationError as e:
        raise ValueError(f"invalid samgraph app args: {e}") from None
    source = WeightsSource.resolve(cfg.weights, cfg.checkpoint, cfg.seed)
    clip_source = ClipWeightsSource.resolve(cfg.clip.weights, cfg.clip.checkpoint, cfg.seed)
    preflight(cfg.model_id, source)
    preflight_clip(ClipSpec(cfg.clip.model_name, cfg.clip.pretrained), clip_source)
    store = preflight_store(cfg.retriever.path, cfg.retriever.url, cfg.retriever.api_key)
    weights = {"kind": source.kind, "checkpoint": source.checkpoint, "seed": source.seed}
    encoder = ImageEncoder.bind(cfg.model_id, weights, cfg.encoder.device, cfg.encoder.torch_threads, cfg.encoder.accel())
    decoder = MaskDecoder.bind(cfg.model_id, weights, cfg.decoder.device, cfg.decoder.torch_threads, cfg.decoder.accel())
    fader = Fader.bind(cfg.fader.strategy, cfg.fader.params, {"context_margin": cfg.fader.context_margin, "output_size": cfg.fader.output_size})
    embedder = Embedder.bind(cfg.clip.model_name, cfg.clip.pretrained, clip_source.as_dict(), cfg.clip.device, cfg.clip.torch_threads)
    retriever = Retriever.bind(**store)
    v = cfg.video
    video = VideoSegmenter.bind(
        cfg.model_id,
        weights,
        v.device,
        v.torch_threads,
        {"offload_video_to_cpu": v.offload_video_to_cpu, "offload_state_to_cpu": v.offload_state_to_cpu},
        v.max_concurrent_clips,
    )
    return Ingress.bind(encoder, decoder, fader, embedder, retriever, cfg.model_dump(), video=video)
