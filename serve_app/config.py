"""App-builder arguments (the ``args:`` of a Serve config), validated with pydantic."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from models.registry import DEFAULT_SAM2_MODEL, get_sam2_checkpoint

_STRICT = ConfigDict(extra="forbid")


class StageArgs(BaseModel):
    """Per-stage model settings: device and torch threads (Ray resources live in the Serve config)."""

    model_config = _STRICT
    device: str = "auto"
    torch_threads: int | None = Field(default=None, ge=1)


class LimitArgs(BaseModel):
    """Input limits. ``max_image_pixels`` guards against decompression bombs (default 50 MP)."""

    model_config = _STRICT
    max_image_pixels: int = Field(default=50_000_000, ge=1)
    max_body_bytes: int = Field(default=64 * 2**20, ge=1)


class CacheArgs(BaseModel):
    """Image-embedding cache bounds (one cache per ingress replica; ~16.8 MB per image)."""

    model_config = _STRICT
    max_entries: int = Field(default=64, ge=1)
    max_bytes: int = Field(default=2 * 2**30, ge=1)


class AppArgs(BaseModel):
    """Arguments of :func:`serve_app.app.build_app`.

    ``weights``/``checkpoint``/``seed`` left unset are taken from ``SAMGRAPH_WEIGHTS``,
    ``SAMGRAPH_SAM2_CHECKPOINT`` and ``SAMGRAPH_SEED`` when the app is built.
    """

    model_config = _STRICT
    model_id: str = DEFAULT_SAM2_MODEL
    weights: Literal["registry", "file", "random"] | None = None
    checkpoint: str | None = None
    seed: int | None = None
    encoder: StageArgs = StageArgs()
    decoder: StageArgs = StageArgs()
    limits: LimitArgs = LimitArgs()
    cache: CacheArgs = CacheArgs()
    readiness_timeout_s: float = Field(default=5.0, gt=0)

    @field_validator("model_id")
    @classmethod
    def _known(cls, v: str) -> str:
        get_sam2_checkpoint(v)  # ValueError listing the valid names
        return v
