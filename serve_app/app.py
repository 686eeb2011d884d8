"""The app builder: ``serve run configs/serve.yaml`` imports :func:`build_app`.

Graph::

    Ingress ──> MaskDecoder, the image's owner (session_id=image_id; prompts: /v1/segment; automatic
       │          │  masks: /v1/predict, text prompts)
       │          ├─> ImageEncoder (once per new image: the features stay in the owner)
       │          └─> Fader ──> Embedder ──> Retriever      (chained by DeploymentResponses)
       │──────> Embedder (text tower), Retriever (examples)
       └──────> VideoSegmenter (/v1/segment/video: sam2's video predictor, streamed frame by frame)

The ingress (:mod:`serve_app.ingress.deployment`; its routes: :mod:`serve_app.ingress.routes`) holds no
image: every call about one goes to the ``MaskDecoder`` replica that owns it
(:mod:`serve_app.ingress.image_cache`), so any number of ingress replicas serve any request. Later stages
receive the previous stage's ``DeploymentResponse``, so a /v1/predict request flows decoder -> fader ->
embedder -> retriever without its crops or embeddings passing through the ingress, each stage batching
across concurrent requests.
"""

from pydantic import ValidationError
from ray import serve

from deployments.decoder import MaskDecoder
from deployments.embedder import Embedder
from deployments.encoder import ImageEncoder
from deployments.fader import Fader
from deployments.retriever import Retriever
from deployments.video import VideoSegmenter
from serve_app.config import AppArgs
from serve_app.ingress.deployment import Ingress
from serve_app.preflight import preflight


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
    enc, dec = cfg.encoder, cfg.decoder
    encoder = ImageEncoder.bind(cfg.model_id, weights, enc.device, enc.torch_threads, enc.accel())
    cache = {"max_entries": cfg.cache.max_entries, "max_bytes": cfg.cache.max_bytes}
    decoder = MaskDecoder.bind(cfg.model_id, weights, dec.device, dec.torch_threads, dec.accel(), encoder, cache)
    crop = {"context_margin": cfg.fader.context_margin, "output_size": cfg.fader.output_size}
    fader = Fader.bind(cfg.fader.strategy, cfg.fader.params, crop)
    clip = cfg.clip
    embedder = Embedder.bind(clip.model_name, clip.pretrained, ready.clip.as_dict(), clip.device, clip.torch_threads)
    retriever = Retriever.bind(**ready.store)
    v = cfg.video
    video_settings = {"offload_video_to_cpu": v.offload_video_to_cpu, "offload_state_to_cpu": v.offload_state_to_cpu}
    sessions = {
        "max_sessions": v.max_sessions,
        "max_bytes": v.max_session_bytes,
        "ttl_s": v.session_ttl_s,
        "retry_after_s": v.session_retry_after_s,
    }
    video = VideoSegmenter.bind(
        cfg.model_id,
        weights,
        v.device,
        v.torch_threads,
        video_settings,
        v.max_concurrent_clips,
        sessions,
        image_size=v.image_size,
    )
    stages = (encoder, decoder, fader, embedder, retriever)
    return Ingress.bind(*stages, cfg.model_dump(), video=video, require_keys=ready.api_keys > 0)
