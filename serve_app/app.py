"""The app builder: ``serve run configs/serve.yaml`` imports :func:`build_app`.

Graph (per served model, its own ``ImageEncoder`` and ``MaskDecoder``, see :func:`stage_names`)::

    Ingress ──> MaskDecoder, the image's owner (session_id=image_id; prompts: /v1/segment; automatic
       │          │  masks: /v1/predict, text prompts; concept prompts where the model takes them)
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

import re

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


def stage_names(index: int, model_id: str) -> tuple[str, str]:
    """The (encoder, decoder) deployment names of the served model at ``index``: ``ImageEncoder`` and
    ``MaskDecoder`` for the default (first) model, ``ImageEncoder_<model_id>`` and ``MaskDecoder_<model_id>``
    (characters other than letters, digits, ``_`` and ``-`` as ``_``) for the others. The Serve config's
    ``deployments:`` size each by these names."""
    if index == 0:
        return "ImageEncoder", "MaskDecoder"
    slug = re.sub(r"[^A-Za-z0-9_-]", "_", model_id)
    return f"ImageEncoder_{slug}", f"MaskDecoder_{slug}"


def build_app(args: dict | None = None) -> serve.Application:
    """Assemble the graph from :class:`serve_app.config.AppArgs` (the ``args:`` of a Serve config).

    Weight and store settings not in ``args`` are resolved here from the environment
    (:func:`serve_app.preflight.preflight`), so every replica of every stage loads the same weights and
    store.

    Raises:
        ValueError: invalid arguments (unknown model, bad limits, unknown keys).
        WeightsError: weights cannot be had (no network and no checkpoint); the message names the
            alternatives, and ``serve run`` stops with it. Its subclass ``ExportError``: a model's
            ``export_dir`` lacks a file or a file differs from its manifest.
        StoreError: the data dir cannot be written.
    """
    try:
        cfg = AppArgs.model_validate(args or {})
    except ValidationError as e:
        raise ValueError(f"invalid samgraph app args: {e}") from None
    ready = preflight(cfg)
    encoders, decoders = {}, {}
    for i, m in enumerate(cfg.served_models()):
        weights = ready.models[m.model_id].as_dict()
        enc, dec = m.encoder, m.decoder
        enc_name, dec_name = stage_names(i, m.model_id)
        encoder = ImageEncoder.options(name=enc_name).bind(
            m.model_id, weights, enc.device, enc.torch_threads, enc.accel(), runtime=enc.runtime_settings(m.export_dir)
        )
        cache = {"max_entries": m.cache.max_entries, "max_bytes": m.cache.max_bytes}
        decoders[m.model_id] = MaskDecoder.options(name=dec_name).bind(
            m.model_id,
            weights,
            dec.device,
            dec.torch_threads,
            dec.accel(),
            encoder,
            cache,
            runtime=dec.runtime_settings(m.export_dir),
        )
        encoders[m.model_id] = encoder
    crop = {"context_margin": cfg.fader.context_margin, "output_size": cfg.fader.output_size}
    fader = Fader.bind(cfg.fader.strategy, cfg.fader.params, crop)
    clip = cfg.clip
    embedder = Embedder.bind(
        clip.model_name, clip.pretrained, ready.clip.as_dict(), clip.device, clip.torch_threads, clip.family
    )
    retriever = Retriever.bind(**ready.store)
    v, tracked = cfg.video, cfg.video_model()
    video_settings = {"offload_video_to_cpu": v.offload_video_to_cpu, "offload_state_to_cpu": v.offload_state_to_cpu}
    sessions = {
        "max_sessions": v.max_sessions,
        "max_bytes": v.max_session_bytes,
        "ttl_s": v.session_ttl_s,
        "retry_after_s": v.session_retry_after_s,
    }
    video = None
    if tracked is not None:
        video = VideoSegmenter.bind(
            tracked.model_id,
            ready.models[tracked.model_id].as_dict(),
            v.device,
            v.torch_threads,
            video_settings,
            v.max_concurrent_clips,
            sessions,
            image_size=v.image_size,
        )
    stages = (encoders, decoders, fader, embedder, retriever)
    return Ingress.bind(*stages, cfg.model_dump(), video=video, require_keys=ready.api_keys > 0)
