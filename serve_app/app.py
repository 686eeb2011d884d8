"""The HTTP ingress and the app builder: ``serve run configs/serve.yaml`` imports :func:`build_app`.

Graph::

    Ingress ──> MaskDecoder, the image's owner (session_id=image_id; prompts: /v1/segment; automatic
       │          │  masks: /v1/predict, text prompts)
       │          ├─> ImageEncoder (once per new image: the features stay in the owner)
       │          └─> Fader ──> Embedder ──> Retriever      (chained by DeploymentResponses)
       │──────> Embedder (text tower), Retriever (examples)
       └──────> VideoSegmenter (/v1/segment/video: sam2's video predictor, streamed frame by frame)

The ingress holds no image: every call about one goes to the ``MaskDecoder`` replica that owns it
(:mod:`serve_app.ingress.image_cache`), so any number of ingress replicas serve any request. Later stages
receive the previous stage's ``DeploymentResponse``, so a /v1/predict request flows decoder -> fader ->
embedder -> retriever without its crops or embeddings passing through the ingress, each stage batching
across concurrent requests.
"""

import asyncio
import time

import ray
from fastapi import Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import ValidationError
from ray import serve
from ray.serve.handle import DeploymentHandle

from deployments.contracts import DecodeJob, VideoJob
from deployments.decoder import MaskDecoder
from deployments.embedder import Embedder
from deployments.encoder import ImageEncoder
from deployments.errors import InputError
from deployments.fader import Fader
from deployments.retriever import Retriever
from deployments.video import VideoSegmenter
from models.amg import AmgSettings
from models.masks import rle_area, rle_bbox_xyxy
from serve_app.assemble import amg_settings, check_mask, image_answer, instances, merge_segment_results
from serve_app.config import AppArgs
from serve_app.ingress import request_examples as ex
from serve_app.ingress import responses as out
from serve_app.ingress.access import AccessPolicy, install_access
from serve_app.ingress.errors import ApiError
from serve_app.ingress.example_transfer import store_example  # and the export and import routes, on api
from serve_app.ingress.http import api, log, parse_body, request_id, stage_errors
from serve_app.ingress.image_cache import ImageOwners
from serve_app.ingress.metrics import (
    EXPOSITION_CONTENT_TYPE,
    SCRAPE_TIMEOUT_S,
    IngressMetrics,
    merge_exposition,
    metrics_urls,
    scrape_nodes,
)
from serve_app.ingress.params import CollectionQuery, ExampleIdPath, LabelQuery, LimitQuery, OffsetQuery
from serve_app.ingress.polygon_route import masks_to_polygons  # noqa: F401  (a route on api)
from serve_app.ingress.readiness import RANDOM_WEIGHTS_WARNING, readiness
from serve_app.ingress.schemas import ExampleRequest, FadeIn, PredictRequest, SegmentRequest, to_prompt_specs
from serve_app.ingress.video_route import collect_frames, ndjson_lines, read_clip
from serve_app.ingress.video_schemas import VideoRequest, check_video_objects, to_video_objects
from serve_app.ingress.video_sessions import VideoSessionRoutes, VideoSessions
from serve_app.preflight import preflight

#: The image-cache counters ``/v1/stats`` sums over the decoder replicas.
CACHE_COUNTERS = ("entries", "bytes", "hits", "misses", "evictions", "encodes")
#: The session ids under which ``/v1/stats`` asks the decoder replicas (see ``Ingress._decoder_stats``).
STATS_KEYS = tuple(f"stats-{k}" for k in range(64))

@serve.deployment(name="Ingress", ray_actor_options={"num_cpus": 0.2}, max_ongoing_requests=64)
@serve.ingress(api)
class Ingress(VideoSessionRoutes):
    """HTTP front: validation, and the calls into the stages. Each route parses its body, asks the stages
    (about an image: its owner, :class:`serve_app.ingress.image_cache.ImageOwners`), and assembles the
    answer. It keeps no per-image state, so it scales out. The /v1/video/sessions routes are those of
    :class:`serve_app.ingress.video_sessions.VideoSessionRoutes` (sessions live in VideoSegmenter replicas).

    Args:
        encoder, decoder, fader, embedder, retriever: handles to the stage deployments.
        args: :class:`serve_app.config.AppArgs` as a dict.
        video: handle to the ``VideoSegmenter`` (None: ``/v1/segment/video`` answers 404).
        require_keys: the app was built with API keys: a replica that finds none fails to start
            (:meth:`serve_app.ingress.access.AccessPolicy.from_args`).
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
        require_keys: bool = False,
    ) -> None:
        self.args = AppArgs.model_validate(args)
        self.encoder, self.decoder, self.fader, self.embedder, self.retriever = encoder, decoder, fader, embedder, retriever
        self.video = video
        self.metrics = IngressMetrics.install()
        log.info(install_access(AccessPolicy.from_args(self.args.auth, require_keys=require_keys)).describe())
        self.images = ImageOwners(decoder, self.args.limits.max_image_pixels)
        v = self.args.video
        self.sessions = None if video is None else VideoSessions(video, v.max_frames, v.max_frame_pixels, self.args.limits.max_body_bytes)

    def _stages(self) -> dict[str, DeploymentHandle]:
        """The stage handles by name, in :data:`serve_app.ingress.readiness.READINESS_STAGES` order."""
        stages = {"encoder": self.encoder, "decoder": self.decoder, "embedder": self.embedder, "retriever": self.retriever, "fader": self.fader}
        return {**stages, "video": self.video} if self.video is not None else stages

    # ---------------------------------------------------------------- health
    @api.get("/healthz", **api.route_spec(out.Health, access=False))
    async def healthz(self) -> dict:
        """Liveness: the ingress answers."""
        return {"status": "ok"}

    @api.get("/readyz", **api.route_spec(out.Readiness, access=False, other={503: ("not_ready, with the reason", out.Readiness)}))
    async def readyz(self) -> JSONResponse:
        """Readiness: 200 only when every stage answers and encoder and decoder run the same weights."""
        calls = [h.stats.remote() if name == "fader" else h.info.remote() for name, h in self._stages().items()]
        try:
            # return_exceptions: a call cancelled by the timeout leaves no "exception never retrieved" in the log
            answers = await asyncio.wait_for(asyncio.gather(*calls, return_exceptions=True), timeout=self.args.readiness_timeout_s)
        except Exception as e:  # timeout: a replica is not up yet
            answers = [e] * len(calls)
        status, body = readiness(answers)
        return JSONResponse(body, status_code=status)

    @api.get("/v1/stats", **api.route_spec(None, 503))
    @stage_errors
    async def stats(self) -> dict:
        """Work counters of one replica per stage; the decoder's per replica (its image cache included)
        and ``cache``, their images' counters summed over the decoder replicas found."""
        stages = {k: h for k, h in self._stages().items() if k != "decoder"}
        results, decoders = await asyncio.gather(
            asyncio.gather(*(h.stats.remote() for h in stages.values())), self._decoder_stats()
        )
        cache = {k: sum(d["cache"][k] for d in decoders.values()) for k in CACHE_COUNTERS}
        decoder = {k: sum(d[k] for d in decoders.values()) for k in ("requests", "batches", "busy_s")}
        return {"cache": cache, "decoder": {**decoder, "replicas": decoders}, **dict(zip(stages, results))}

    async def _decoder_stats(self) -> dict[str, dict]:
        """``stats()`` of every MaskDecoder replica reached, by replica id. A handle cannot address a
        replica, so the call goes out under :data:`STATS_KEYS` session ids, which the consistent-hash ring
        spreads over the replicas (with 100 virtual nodes each, 64 keys reach each of 8 replicas with
        probability > 0.99); per-replica Ray metrics are exact."""
        answers = await asyncio.gather(*(self.images.owner(k).stats.remote() for k in STATS_KEYS))
        return {a["replica"] or "local": a for a in answers}

    @api.get("/metrics", include_in_schema=False)
    async def metrics_text(self) -> Response:
        """Prometheus text: the ``ray_samgraph_*`` and ``ray_serve_*`` families of every alive node's Ray
        metrics agent, merged (a convenience; Prometheus should scrape the agents, see docs/metrics.md).

        Raises:
            ApiError: 503 ``metrics_unavailable`` when no agent answers.
        """
        urls = metrics_urls(await asyncio.to_thread(ray.nodes))
        bodies = await scrape_nodes(urls, SCRAPE_TIMEOUT_S) if urls else []
        if not bodies:
            raise ApiError(503, "metrics_unavailable", f"no Ray metrics agent answered (tried {len(urls)}: {', '.join(urls)[:200]})")
        text = await asyncio.to_thread(merge_exposition, bodies)  # parsing takes time: off the event loop
        return Response(text, media_type=EXPOSITION_CONTENT_TYPE)

    # ---------------------------------------------------------------- settings of a request
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

    def _amg(self, overrides) -> AmgSettings:
        try:
            return amg_settings(self.args.amg.model_dump(), overrides.model_dump() if overrides is not None else None)
        except ValueError as e:
            raise ApiError(422, "invalid_request", f"amg: {e}", "amg") from None

    async def _collection(self, name: str) -> dict:
        """``{"dim", "count"}`` of an existing collection; 404 ``unknown_collection`` otherwise."""
        info = await self.retriever.collection_or_none.remote(name)
        if info is None:
            raise ApiError(404, "unknown_collection", f"collection {name!r} does not exist; add examples first", "collection")
        return info

    # ---------------------------------------------------------------- segment
    @api.post("/v1/segment", **api.body_spec(SegmentRequest, ok=out.SegmentResponse, examples=ex.SEGMENT_EXAMPLES))
    @stage_errors
    async def segment(self, request: Request) -> dict:
        """Masks for box/point/mask/text prompts on an uploaded or cached image. See docs/http-api.md."""
        t0 = time.perf_counter()
        req, upload = await parse_body(request, SegmentRequest, self.args.limits.max_body_bytes)
        image_id, data = self.images.identify(req, upload)
        timing: dict = {}
        geometric = [p for p in req.prompts if not p.is_text]
        texts = [p for p in req.prompts if p.is_text]
        fade = self._fade_spec(req.fade) if texts else None
        amg = self._amg(req.amg) if texts else None
        job = None
        if geometric or not texts:  # no prompts at all: the decoder clicks the centre
            specs, default_multimask = to_prompt_specs(geometric)
            multimask = [req.multimask_output] * len(specs) if req.multimask_output is not None else default_multimask
            job = DecodeJob(tuple(specs), tuple(multimask), req.mask_format, req.max_masks, req.return_logits, req.polygon_tolerance_px)
        owner = self.images.owner(image_id)

        def send(pixels):
            calls = [owner.segment.remote(image_id, job, pixels)] if job is not None else []
            if texts:
                generated = owner.generate_for.remote(image_id, amg, self.args.text_candidates, pixels)
                crops = self.fader.fade_masks.remote(None, generated, fade)
                calls += [generated, self.embedder.embed_crops.remote(crops), self.embedder.embed_text_list.remote([p.text for p in texts])]
            return asyncio.gather(*calls)

        check = job.for_image if job is not None else (lambda w, h: None)
        outs = list(await self.images.call(image_id, data, send, check, timing))
        decoded = outs.pop(0) if job is not None else None
        generated, embedded, text_vectors = outs if texts else (None, None, None)
        first = decoded or generated
        timing["encode"] = first.timing_ms.get("encode", 0.0)
        body = merge_segment_results(req, decoded, generated, embedded, text_vectors, timing)
        timing["total"] = (time.perf_counter() - t0) * 1e3
        self.metrics.stages("/v1/segment", timing)
        self.metrics.masks("/v1/segment", (m for r in body["results"] for m in r["masks"]))
        return image_answer(first.image, body, timing)

    # ---------------------------------------------------------------- video
    @api.post("/v1/segment/video", **api.body_spec(VideoRequest, "video", ok=out.VideoResponse, examples=ex.VIDEO_EXAMPLES, ok_content=out.NDJSON))
    @stage_errors
    async def segment_video(self, request: Request):
        """Track prompted objects through a clip (MP4 or frame list); JSON, or NDJSON with ``stream``.

        Everything that can be checked before tracking is checked first (4xx naming the field): the clip
        decodes, its frame count and size are within ``args.video`` limits, prompts lie on frames of the
        clip and inside them, object ids are unique. See docs/video.md.
        """
        t0 = time.perf_counter()
        if self.video is None:
            raise ApiError(404, "not_found", "this app has no video segmenter")
        lim = self.args.video
        req, upload = await parse_body(request, VideoRequest, self.args.limits.max_body_bytes, file_part="video")
        td = time.perf_counter()
        frames = await read_clip(req, upload, lim.max_frames, lim.max_frame_pixels)
        timing = {"decode_video": (time.perf_counter() - td) * 1e3}
        n, h, w = (int(v) for v in frames.shape[:3])
        check_video_objects(req.objects, n, w, h)
        if req.start_frame is not None and req.start_frame >= n:
            raise ApiError(422, "out_of_clip", f"start_frame {req.start_frame} is outside the clip of {n} frames", "start_frame")
        job = VideoJob(tuple(to_video_objects(req.objects)), req.start_frame, req.max_frames, req.reverse, req.mask_format, req.polygon_tolerance_px)
        records = self.video.options(stream=True).track.remote(ray.put(frames), job)
        del frames  # the object store holds them now
        try:
            init = await records.__anext__()
        except InputError:
            raise
        except ValueError as e:  # the tracker's own checks; the ingress checks the same first
            raise ApiError(422, "invalid_request", str(e).splitlines()[-1][:300]) from None
        timing["init"] = init["init_ms"]
        head = {"model_id": init["model_id"], "weights": init["weights"], "num_frames": n, "width": w, "height": h, "obj_ids": [o.obj_id for o in req.objects]}
        if init["weights"] == "random":
            head["warnings"] = [RANDOM_WEIGHTS_WARNING]
        if req.stream:
            lines = ndjson_lines(request_id(request), records, head, timing, t0, lambda t: self.metrics.stages("/v1/segment/video", t))
            return StreamingResponse(lines, media_type="application/x-ndjson")
        frames_out = await collect_frames(records, timing, t0)
        self.metrics.stages("/v1/segment/video", timing)
        return {**head, "frames": frames_out, "timing_ms": timing}

    # ---------------------------------------------------------------- predict
    @api.post("/v1/predict", **api.body_spec(PredictRequest, ok=out.PredictResponse, examples=ex.PREDICT_EXAMPLES))
    @stage_errors
    async def predict(self, request: Request) -> dict:
        """Every object in the image, labelled by its nearest labelled examples in a collection."""
        t0 = time.perf_counter()
        req, upload = await parse_body(request, PredictRequest, self.args.limits.max_body_bytes)
        fade = self._fade_spec(req.fade)
        amg = self._amg(req.amg)
        await self._collection(req.collection)
        image_id, data = self.images.identify(req, upload)
        timing: dict = {}
        owner = self.images.owner(image_id)

        def send(pixels):
            generated = owner.generate_for.remote(image_id, amg, req.max_instances, pixels)
            crops = self.fader.fade_masks.remote(None, generated, fade)
            found = self.retriever.knn_chain.remote(req.collection, self.embedder.embed_crops.remote(crops), req.top_k)
            return asyncio.gather(generated, found)

        gen, knn = await self.images.call(image_id, data, send, timing=timing)
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
        self.metrics.stages("/v1/predict", timing)
        self.metrics.masks("/v1/predict", body["instances"])
        self.metrics.label_confidences(body["instances"])
        return image_answer(gen.image, body, timing)

    # ---------------------------------------------------------------- examples
    @api.post("/v1/examples", **api.body_spec(ExampleRequest, ok=out.ExampleAdded, errors=(400, 404, 409, 413, 415, 422, 503), examples=ex.EXAMPLE_EXAMPLES))
    @stage_errors
    async def add_example(self, request: Request) -> dict:
        """Store one labelled object (a prompt's best mask, or a given mask) as a few-shot example."""
        t0 = time.perf_counter()
        req, upload = await parse_body(request, ExampleRequest, self.args.limits.max_body_bytes)
        fade = self._fade_spec(req.fade)
        prompt = req.prompt() if req.mask_rle is None else None
        image_id, data = self.images.identify(req, upload)
        timing: dict = {}
        owner = self.images.owner(image_id)
        if prompt is not None:
            specs, multimask = to_prompt_specs([prompt])
            job = DecodeJob(tuple(specs), tuple(multimask), "rle", 1, False, field_prefix=None)
            decoded = await self.images.call(image_id, data, lambda pixels: owner.segment.remote(image_id, job, pixels), job.for_image, timing)
            image, rle = decoded.image, decoded.results[0]["masks"][0]["rle"]
            timing["encode"] = decoded.timing_ms.get("encode", 0.0)
        else:
            image = await self.images.call(image_id, data, lambda pixels: owner.image.remote(image_id, pixels), timing=timing)
            rle = check_mask(req.mask_rle.model_dump(), image.width, image.height)
        area = rle_area(rle)
        if area == 0:
            raise ApiError(422, "empty_mask", "the object's mask is empty; nothing to embed", "mask_rle" if prompt is None else "box_xyxy")
        crops = self.fader.fade_masks.remote(image.pixels, [rle], fade)
        embedded = self.embedder.embed_crops.remote(crops)
        payload = {"image_id": image_id, "bbox_xyxy": rle_bbox_xyxy(rle), "area_px": area}
        ids = await store_example(self.retriever, req.collection, embedded, req.label, payload, request_id(request))
        timing["total"] = (time.perf_counter() - t0) * 1e3
        self.metrics.stages("/v1/examples", timing)
        return {"ids": ids, "collection": req.collection, "label": req.label, "image_id": image_id, "area_px": area, "timing_ms": timing}

    @api.get("/v1/examples", **api.route_spec(out.ExampleList, 404, 422, 503))
    @stage_errors
    async def list_examples(self, collection: CollectionQuery = "default", label: LabelQuery = None, offset: OffsetQuery = None, limit: LimitQuery = 100) -> dict:
        """Examples per label in a collection, and a page of their ids."""
        info = await self._collection(collection)
        counts, (items, next_offset) = await asyncio.gather(
            self.retriever.counts.remote(collection), self.retriever.list_ids.remote(collection, label, offset, limit)
        )
        return {"collection": collection, "dim": info["dim"], "total": sum(counts.values()), "counts": counts, "items": items, "next_offset": next_offset}

    @api.delete("/v1/examples/{example_id}", **api.route_spec(out.ExampleDeleted, 404, 422, 503))
    @stage_errors
    async def delete_example(self, example_id: ExampleIdPath, collection: CollectionQuery = "default") -> dict:
        """Delete one example by id."""
        await self._collection(collection)
        try:
            deleted = await self.retriever.delete.remote(collection, example_id)
        except InputError as e:  # not a UUID
            raise ApiError(422, "invalid_request", f"example_id: {e.message}"[:300], "example_id") from None
        if not deleted:
            raise ApiError(404, "unknown_example", f"no example {example_id!r} in collection {collection!r}", "example_id")
        return {"deleted": example_id, "collection": collection}


def build_app(args: dict | None = None) -> serve.Application:
    """Assemble the graph from :class:`serve_app.config.AppArgs` (the ``args:`` of a Serve config).

    Weight and store settings not in ``args`` are resolved here from the environment
    (:func:`serve_app.preflight.preflight`), so every replica of every stage loads the same weights and
    store.

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
    ready = preflight(cfg)
    weights = ready.sam2.as_dict()
    encoder = ImageEncoder.bind(cfg.model_id, weights, cfg.encoder.device, cfg.encoder.torch_threads, cfg.encoder.accel())
    cache = {"max_entries": cfg.cache.max_entries, "max_bytes": cfg.cache.max_bytes}
    decoder = MaskDecoder.bind(cfg.model_id, weights, cfg.decoder.device, cfg.decoder.torch_threads, cfg.decoder.accel(), encoder, cache)
    fader = Fader.bind(cfg.fader.strategy, cfg.fader.params, {"context_margin": cfg.fader.context_margin, "output_size": cfg.fader.output_size})
    embedder = Embedder.bind(cfg.clip.model_name, cfg.clip.pretrained, ready.clip.as_dict(), cfg.clip.device, cfg.clip.torch_threads)
    retriever = Retriever.bind(**ready.store)
    v = cfg.video
    video_settings = {"offload_video_to_cpu": v.offload_video_to_cpu, "offload_state_to_cpu": v.offload_state_to_cpu}
    sessions = {"max_sessions": v.max_sessions, "max_bytes": v.max_session_bytes, "ttl_s": v.session_ttl_s, "retry_after_s": v.session_retry_after_s}
    video = VideoSegmenter.bind(cfg.model_id, weights, v.device, v.torch_threads, video_settings, v.max_concurrent_clips, sessions)
    return Ingress.bind(encoder, decoder, fader, embedder, retriever, cfg.model_dump(), video=video, require_keys=ready.api_keys > 0)
