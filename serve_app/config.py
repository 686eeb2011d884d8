"""App-builder arguments (the ``args:`` of a Serve config), validated with pydantic."""

from __future__ import annotations

import dataclasses
import re
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from models.accel import PRECISIONS as TORCH_PRECISIONS
from models.accel import AccelSettings
from models.amg import AmgSettings
from models.fader import CropSettings
from models.registry import DEFAULT_MODEL, family_of, get_model_spec
from models.runtime import RuntimeSettings
from serve_app.settings import derive

_STRICT = ConfigDict(extra="forbid")


class StageArgs(BaseModel):
    """Per-stage model settings: device and torch threads (Ray resources live in the Serve config)."""

    model_config = _STRICT
    device: str = "auto"
    torch_threads: int | None = Field(default=None, ge=1)


@derive(AccelSettings, exclude=("tensorrt",))
class AccelArgs(BaseModel):
    """Optional speed-ups of a model's image stage (see ``models/accel.py`` and docs/gpu-options.md).

    ``precision: bf16`` runs the forward pass under ``torch.autocast(device, torch.bfloat16)``;
    ``compile`` wraps it in ``torch.compile(mode=compile_mode, backend=compile_backend)``, compiled when
    the replica starts (a warm-up call). What cannot be had falls back (bf16 -> fp32, compiled -> eager)
    with one log line, and ``/readyz`` reports what is in force. The fields, their defaults and allowed
    values are :class:`models.accel.AccelSettings`'s.
    """

    model_config = _STRICT

    def accel(self) -> dict:
        """The :class:`models.accel.AccelSettings` fields of this stage (``tensorrt`` only on the encoder)."""
        return {f.name: getattr(self, f.name, f.default) for f in dataclasses.fields(AccelSettings)}


@derive(RuntimeSettings, fields=("runtime", "precision"))
class RuntimeArgs(AccelArgs):
    """Which runtime runs a model stage, at which precision, plus :class:`AccelArgs`'s torch speed-ups.

    ``runtime``: ``torch`` (the default: the family's eager modules, with ``compile``/``tensorrt`` as asked),
    or the family's ONNX export on ``onnxruntime`` (CPU), ``openvino`` (CPU) or ``tensorrt`` (ONNX Runtime's
    TensorRT provider, NVIDIA GPU); the export is written into the cache dir on first start, or read from
    the model's ``export_dir``. ``precision``: ``fp32``, ``bf16`` or ``fp16``; on torch ``bf16`` is
    autocast (today's meaning) and ``fp16`` is refused here. What the machine cannot run falls back with
    one log line (a runtime not installed or not for this family -> torch; bf16 without AVX-512 BF16 or
    AMX, or a precision the runtime lacks -> fp32); ``/readyz`` shows what is in force. The fields' allowed
    values are :class:`models.runtime.RuntimeSettings`'s.
    """

    @model_validator(mode="after")
    def _torch_precisions(self) -> RuntimeArgs:
        if self.runtime == "torch" and self.precision not in TORCH_PRECISIONS:
            raise ValueError(
                f"precision {self.precision!r} needs runtime openvino or tensorrt; torch runs "
                f"{' or '.join(TORCH_PRECISIONS)}"
            )
        return self

    def accel(self) -> dict:
        """:meth:`AccelArgs.accel`, with the stage's precision where torch can run it (else fp32: the
        precision goes to the runtime, :meth:`runtime_settings`)."""
        out = super().accel()
        out["precision"] = self.precision if self.precision in TORCH_PRECISIONS else "fp32"
        return out

    def runtime_settings(self, export_dir: str | None = None) -> dict:
        """``{"runtime", "precision", "export_dir"}``: the ``runtime`` argument of the model stages
        (:func:`deployments.runtime.stage_runtime.build_stage`)."""
        return {"runtime": self.runtime, "precision": self.precision, "export_dir": export_dir}


class ModelStageArgs(StageArgs, RuntimeArgs):
    """A model's image stage (encoder or decoder): device and threads plus :class:`RuntimeArgs`."""


@derive(AccelSettings, fields=("tensorrt",))
class EncoderArgs(ModelStageArgs):
    """The image encoder: as :class:`ModelStageArgs`, plus ``tensorrt``: compile the encoder with
    torch-tensorrt (CUDA and ``pip install -e ".[tensorrt]"``; otherwise it falls back to ``compile``
    when that is set, else eager, with one log line)."""


class LimitArgs(BaseModel):
    """Input limits. ``max_image_pixels`` guards against decompression bombs (default 50 MP);
    ``max_body_bytes`` bounds a request body, ``max_import_bytes`` the body of ``POST /v1/examples/import``
    (an examples file, parsed in the ingress; ``samgraph examples import`` sends a large file in parts).
    Past either the answer is 413 ``body_too_large``. ``request_timeout_s`` is the longest an image request
    (``/v1/segment``, ``/v1/predict``, ``POST /v1/examples``) may take: a request's ``X-Request-Timeout``
    is capped by it, and it applies without one; a request that cannot be answered in time is refused at
    once (503 ``deadline``, see docs/operations.md, "Deadlines and admission"). Keep it at most Serve's
    own ``http_options.request_timeout_s``, past which the proxy gives up on any request."""

    model_config = _STRICT
    max_image_pixels: int = Field(default=50_000_000, ge=1)
    max_body_bytes: int = Field(default=64 * 2**20, ge=1)
    max_import_bytes: int = Field(default=64 * 2**20, ge=1)
    request_timeout_s: float = Field(default=120.0, gt=0, allow_inf_nan=False)


class AuthArgs(BaseModel):
    """Access control (see :mod:`serve_app.ingress.access` and docs/operations.md, "Access control").

    ``keys_file`` (one raw key or ``sha256:<hex>`` a line) and the environment variable named by
    ``keys_env`` (entries separated by commas or whitespace; on Kubernetes, from a Secret) are read by
    every Ingress replica; with no key in either, the API is open. ``requests_per_minute`` (None: no
    limit) and ``burst`` (None: ten seconds' worth, at least 1) bound each key, per ingress replica.
    ``cors_origins``: origins allowed cross-origin calls (``scheme://host[:port]``, or ``"*"``); empty, the
    default, means no CORS headers at all.
    """

    model_config = _STRICT
    keys_file: str | None = None
    keys_env: str | None = "SAMGRAPH_API_KEYS"
    requests_per_minute: float | None = Field(default=None, gt=0)
    burst: int | None = Field(default=None, ge=1)
    cors_origins: list[str] = []

    @field_validator("cors_origins")
    @classmethod
    def _origins(cls, v: list[str]) -> list[str]:
        for o in v:
            if o != "*" and not re.fullmatch(r"https?://[^/\s]+", o):
                raise ValueError(f"{o!r} is not an origin: give scheme://host[:port] (no path or trailing /), or '*'")
        return v


class CacheArgs(BaseModel):
    """Image-cache bounds of each MaskDecoder replica, for the images it owns (features plus pixels: about
    16.8 MB of features per image for SAM 2 and 4.2 MB for MobileSAM at 1024 px, and about 130 MB for SAM 3
    at 1008 px; ``GET /v1/models`` shows each model's ``feature_bytes``)."""

    model_config = _STRICT
    max_entries: int = Field(default=64, ge=1)
    max_bytes: int = Field(default=2 * 2**30, ge=1)


class ClipArgs(StageArgs):
    """The embedder: its family (:data:`models.embedders.EMBEDDERS`; ``open_clip`` is the one shipped), an
    architecture and pretrained tag; weights unset -> ``SAMGRAPH_WEIGHTS`` / ``SAMGRAPH_CLIP_CHECKPOINT``
    (``pretrained`` is open_clip's own download)."""

    family: str = "open_clip"

    @field_validator("family")
    @classmethod
    def _known_family(cls, v: str) -> str:
        from models.embedders import EMBEDDERS

        if v not in EMBEDDERS:
            raise ValueError(f"unknown embedder family {v!r}; valid families: {', '.join(EMBEDDERS)}")
        return v
    model_name: str = "ViT-B-32"
    pretrained: str = "laion2b_s34b_b79k"
    weights: Literal["pretrained", "file", "random"] | None = None
    checkpoint: str | None = None


class RetrieverArgs(BaseModel):
    """Qdrant: unset -> ``SAMGRAPH_QDRANT_URL`` (+ ``SAMGRAPH_QDRANT_API_KEY``) for a server, else the
    embedded local store under ``SAMGRAPH_DATA_DIR`` (one retriever replica per folder)."""

    model_config = _STRICT
    path: str | None = None
    url: str | None = None
    api_key: str | None = None


@derive(CropSettings)
class FaderArgs(BaseModel):
    """Default fade (a request's ``fade`` overrides it) and crop geometry (the fields of
    :class:`models.fader.CropSettings`: ``context_margin``, ``output_size``); see ``models/fader.py``."""

    model_config = _STRICT
    strategy: str = "gaussian"
    params: dict = {}


@derive(AmgSettings)
class AmgDefaults(BaseModel):
    """Default automatic-mask settings: the fields, defaults (``SAM2AutomaticMaskGenerator``'s) and limits
    of :class:`models.amg.AmgSettings`; a request's ``amg`` overrides them."""

    model_config = _STRICT


class VideoArgs(StageArgs):
    """The video tracker (``POST /v1/segment/video``): per-request limits and sam2's memory options.

    ``max_frames`` bounds the frames of one clip and ``max_frame_pixels`` their size, so one request holds
    at most ``3 * max_frames * max_frame_pixels`` bytes of frames; ``max_concurrent_clips`` clips are
    tracked at once per replica (others wait). ``offload_video_to_cpu`` / ``offload_state_to_cpu`` are
    sam2's ``init_state`` options (see ``models/sam2_video.py::VideoSettings``).

    Interactive sessions (``/v1/video/sessions``): each replica holds at most ``max_sessions`` sessions and
    ``max_session_bytes`` bytes of them (frames plus sam2's state, which grows by ~1.3 MB per tracked
    frame and object at 1024 px); past either a new session gets 503 with ``Retry-After:
    session_retry_after_s``. A session idle for ``session_ttl_s`` seconds expires. ``image_size`` sets
    the video model's input side (default: the checkpoint config's 1024).
    """

    max_frames: int = Field(default=300, ge=1, le=100_000)
    max_frame_pixels: int = Field(default=1920 * 1080, ge=1)
    max_concurrent_clips: int = Field(default=1, ge=1, le=64)
    offload_video_to_cpu: bool = True
    offload_state_to_cpu: bool = False
    max_sessions: int = Field(default=8, ge=1, le=10_000)
    max_session_bytes: int = Field(default=4 * 2**30, ge=1)
    session_ttl_s: float = Field(default=600.0, gt=0)
    session_retry_after_s: float = Field(default=30.0, ge=0)
    #: The video model's input side in pixels, a multiple of 32 (sam2's Hydra override
    #: ``++model.image_size``; no weight depends on it). None: the checkpoint config's, 1024 for SAM 2.1.
    #: Smaller tracks faster, with coarser masks (256: about 16x fewer image tokens than 1024).
    image_size: int | None = Field(default=None, ge=256, le=2048, multiple_of=32)


class ModelWeightsArgs(BaseModel):
    """Which model (any family of :mod:`models.registry`) and weights: shared by the service
    (:class:`AppArgs`, :class:`ServedModelArgs`) and ``samgraph batch``.

    ``weights``/``checkpoint``/``seed`` left unset are taken from ``SAMGRAPH_WEIGHTS``,
    ``SAMGRAPH_SAM2_CHECKPOINT`` (SAM 2 models only) and ``SAMGRAPH_SEED``. ``export_dir``: the model's
    own ONNX export for its stages that run an ONNX runtime (see :class:`RuntimeArgs`).
    """

    model_config = _STRICT
    model_id: str = DEFAULT_MODEL
    weights: Literal["registry", "file", "random"] | None = None
    checkpoint: str | None = None
    seed: int | None = None
    #: A directory holding the model's own ONNX export (``encoder.onnx``, ``decoder.onnx``, optionally
    #: samgraph's ``export.json``), run by the stages whose ``runtime`` is not torch. None: samgraph's own
    #: export in the cache dir, written on first start.
    export_dir: str | None = Field(default=None, min_length=1)

    @field_validator("model_id")
    @classmethod
    def _known(cls, v: str) -> str:
        get_model_spec(v)  # ValueError listing the valid names
        return v


class ServedModelArgs(ModelWeightsArgs):
    """One model the service serves: its weights, and its own encoder and decoder deployments (each
    sized in the Serve config's ``deployments:`` under its deployment names, see
    :func:`serve_app.app.stage_names`) with their image cache."""

    encoder: EncoderArgs = EncoderArgs()
    decoder: ModelStageArgs = ModelStageArgs()
    cache: CacheArgs = CacheArgs()


#: The fields of :class:`AppArgs` that describe its one model when ``models`` is not given.
_ONE_MODEL_FIELDS = ("model_id", "weights", "checkpoint", "seed", "export_dir", "encoder", "decoder", "cache")


class AppArgs(ModelWeightsArgs):
    """Arguments of :func:`serve_app.app.build_app`.

    The models served: ``models`` (a list of :class:`ServedModelArgs`, the first is the default a request
    gets without ``model_id``), or, without it, the one model of the top-level ``model_id``, ``weights``,
    ``checkpoint``, ``seed``, ``export_dir``, ``encoder``, ``decoder`` and ``cache`` (giving both is an error).
    ``weights``/``checkpoint``/``seed`` left unset are taken from ``SAMGRAPH_WEIGHTS``,
    ``SAMGRAPH_SAM2_CHECKPOINT`` and ``SAMGRAPH_SEED`` when the app is built. ``text_candidates`` caps the
    automatic masks scored against a text prompt (CLIP ranking). ``auth``: API keys, rate limit and CORS
    (:class:`AuthArgs`). ``video`` tracks with the first served model whose family tracks video (none:
    the video routes answer 404).
    """

    encoder: EncoderArgs = EncoderArgs()
    decoder: ModelStageArgs = ModelStageArgs()
    models: list[ServedModelArgs] = Field(default_factory=list, max_length=8)
    video: VideoArgs = VideoArgs()
    limits: LimitArgs = LimitArgs()
    auth: AuthArgs = AuthArgs()
    cache: CacheArgs = CacheArgs()
    clip: ClipArgs = ClipArgs()
    retriever: RetrieverArgs = RetrieverArgs()
    fader: FaderArgs = FaderArgs()
    amg: AmgDefaults = AmgDefaults()
    text_candidates: int = Field(default=64, ge=1, le=512)
    readiness_timeout_s: float = Field(default=5.0, gt=0)
    threads_per_node: int | None = Field(default=None, ge=2)

    @model_validator(mode="after")
    def _one_way_to_name_models(self) -> AppArgs:
        if self.models:  # a dumped config carries the one-model fields at their defaults: only others conflict
            defaults = {f: type(self).model_fields[f].get_default(call_default_factory=True) for f in _ONE_MODEL_FIELDS}
            both = [f for f in _ONE_MODEL_FIELDS if getattr(self, f) != defaults[f]]
            if both:
                raise ValueError(f"give either models or {', '.join(both)}, not both")
            ids = [m.model_id for m in self.models]
            if len(set(ids)) != len(ids):
                raise ValueError(f"models: each model_id at most once, got {ids}")
        return self

    def served_models(self) -> list[ServedModelArgs]:
        """The models served, the default first (``models``, or the top-level one)."""
        if self.models:
            return list(self.models)
        return [ServedModelArgs(**{f: getattr(self, f) for f in _ONE_MODEL_FIELDS})]

    def video_model(self) -> ServedModelArgs | None:
        """The first served model whose family tracks video, or None."""
        return next((m for m in self.served_models() if family_of(m.model_id).capabilities.video), None)

    @model_validator(mode="after")
    def _share_threads(self) -> AppArgs:
        """Fill the stages' unset ``torch_threads`` from ``threads_per_node`` (see :func:`thread_shares`)
        and reject explicit ones that do not fit in it."""
        if self.threads_per_node is None:
            return self
        budget = self.threads_per_node
        for name in ("clip", "video"):
            n = getattr(self, name).torch_threads
            if n is not None and n > budget:
                raise ValueError(f"{name}.torch_threads ({n}) must be <= threads_per_node ({budget})")
        for m in self.models or [self]:
            encoder, decoder = thread_shares(budget, m.encoder.torch_threads, m.decoder.torch_threads)
            m.encoder = m.encoder.model_copy(update={"torch_threads": encoder})
            m.decoder = m.decoder.model_copy(update={"torch_threads": decoder})
        self.clip = self.clip.model_copy(update={"torch_threads": self.clip.torch_threads or budget})
        self.video = self.video.model_copy(update={"torch_threads": self.video.torch_threads or budget})
        return self


def thread_shares(budget: int, encoder: int | None = None, decoder: int | None = None) -> tuple[int, int]:
    """(encoder, decoder) torch threads out of a node's ``budget``: the two SAM 2 image stages compute at
    the same time under interactive load (one image encoding while others are clicked on), so their
    threads together never exceed the budget. Unset, the decoder gets ``max(1, budget // 4)`` (a click is
    a small forward pass that gains little from more threads) and the encoder the rest; a value given is
    kept. The stages that mostly run alone (embedder, video) get up to the whole budget.

    Raises:
        ValueError: ``budget`` < 2, or the two given values sum past it.
    """
    if budget < 2:
        raise ValueError(f"threads_per_node must be >= 2 (one thread each for the encoder and decoder), got {budget}")
    if decoder is None:
        decoder = max(1, budget // 4) if encoder is None else max(1, budget - encoder)
    if encoder is None:
        encoder = max(1, budget - decoder)
    if encoder + decoder > budget:
        raise ValueError(
            f"encoder.torch_threads ({encoder}) + decoder.torch_threads ({decoder}) "
            f"must be <= threads_per_node ({budget})"
        )
    return encoder, decoder
