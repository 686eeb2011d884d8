"""``Fader`` deployment: batched context fade and square crop of masked objects (CPU only)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
from ray import serve

from deployments.batching import check_batch_config
from models.fade_strategies import FadeStrategy, make_fade_strategy
from models.fader import CropSettings, fade_and_crop_batch
from models.masks import decode_rle
from serve_app.metrics import StageMetrics


@dataclass(frozen=True, eq=False)
class FadeJob:
    """One image and the masks to crop from it.

    Built by the caller, so that a bad strategy name or parameter fails there (as a ``ValueError``) and
    not in a batch shared with other callers' jobs.

    Attributes:
        image: (H, W, 3) uint8 RGB.
        masks: N (H, W) bool masks on ``image``, none empty; any sequence (or an (N, H, W) array) is
            stored as a tuple.
        strategy: registry name of the fade (``models.fade_strategies.list_fade_strategies``); None: the
            deployment's default strategy.
        params: the strategy's parameters. None: the deployment's default parameters where the strategy
            is the deployment's default one, else the strategy's own defaults. Params need a
            ``strategy`` name (the caller does not know the deployment's default).
    """

    image: np.ndarray
    masks: tuple[np.ndarray, ...]
    strategy: str | None = None
    params: dict | None = None
    #: The strategy built from ``strategy`` and ``params`` (None where ``strategy`` is None).
    built: FadeStrategy | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        image = self.image
        if not isinstance(image, np.ndarray) or image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            desc = f"{image.dtype} {image.shape}" if isinstance(image, np.ndarray) else type(image).__name__
            raise ValueError(f"image must be (H, W, 3) uint8 RGB; got {desc}")
        object.__setattr__(self, "masks", tuple(self.masks))
        for i, mask in enumerate(self.masks):
            if not isinstance(mask, np.ndarray) or mask.dtype != np.bool_ or mask.shape != image.shape[:2]:
                desc = f"{mask.dtype} {mask.shape}" if isinstance(mask, np.ndarray) else type(mask).__name__
                raise ValueError(f"masks[{i}] must be (H, W) bool with (H, W) = {image.shape[:2]}; got {desc}")
            if not mask.any():
                raise ValueError(f"masks[{i}] is empty")
        if self.params is not None and not isinstance(self.params, Mapping):
            raise ValueError(f"params must be a dict or None; got {type(self.params).__name__}")
        if self.strategy is None:
            if self.params is not None:
                raise ValueError("params need a strategy name; leave both out for the deployment's defaults")
        else:
            # Built here so that a bad name or parameter is the caller's error; params None -> the
            # strategy's own defaults, replaced by the Fader's defaults when it is the Fader's strategy.
            object.__setattr__(self, "built", make_fade_strategy(self.strategy, **(self.params or {})))


@serve.deployment(name="Fader", ray_actor_options={"num_cpus": 0.15}, max_ongoing_requests=32)
class Fader:
    """Fades the context around each mask and cuts a square crop per mask (FGVP-style visual prompts).

    Requests are batched with ``@serve.batch``; ``max_batch_size`` and ``batch_wait_timeout_s`` come from
    ``user_config``.

    Args:
        default_strategy: registry name of the fade used by jobs that name none.
        default_params: that strategy's parameters (None: its own defaults).
        crop: :class:`models.fader.CropSettings` fields (None: its defaults).

    Raises:
        ValueError: unknown strategy, bad parameters or bad crop settings.
    """

    def __init__(
        self, default_strategy: str = "gaussian", default_params: dict | None = None, crop: dict | None = None
    ) -> None:
        self._default_name = default_strategy
        self._default = make_fade_strategy(default_strategy, **(default_params or {}))
        try:
            self._crop = CropSettings(**(crop or {}))
        except TypeError as e:
            raise ValueError(f"bad crop settings {crop!r} (fields: context_margin, output_size): {e}") from None
        self._jobs = 0
        self._crops = 0
        self._batches = 0
        self._busy_s = 0.0
        self._metrics = StageMetrics("fade")

    def reconfigure(self, user_config: dict) -> None:
        size, wait = check_batch_config(user_config)
        self.fade.set_max_batch_size(size)
        self.fade.set_batch_wait_timeout_s(wait)

    @serve.batch(max_batch_size=16, batch_wait_timeout_s=0.002)
    async def fade(self, jobs: list[FadeJob]) -> list[list[np.ndarray]]:
        """Crops for a batch of jobs; each caller sends one :class:`FadeJob` and gets one crop per mask.

        Each crop is (output_size, output_size, 3) uint8 RGB, in the order of ``job.masks``.
        """
        t0 = time.perf_counter()
        crops = await asyncio.to_thread(self.fade_jobs, jobs)
        assert len(crops) == len(jobs)
        dt = time.perf_counter() - t0
        self._metrics.batch("fade", len(jobs), dt)
        self._busy_s += dt
        self._jobs += len(jobs)
        self._crops += sum(len(c) for c in crops)
        self._batches += 1
        return crops

    async def fade_masks(self, image: np.ndarray, masks, fade: dict | None = None) -> dict:
        """The graph's entry: crops of one image for masks given as COCO RLE.

        Args:
            image: (H, W, 3) uint8 RGB (usually an ObjectRef resolved by Ray).
            masks: the decoder's ``generate`` output (``{"masks": [AutoMask, ...]}``) or a list of RLEs.
            fade: ``{"strategy", "params"}``, or None for this replica's defaults.

        Returns:
            ``{"crops": [(S, S, 3) uint8, ...], "timing_ms": {"fade": ms}}``, one crop per mask, in order.
        """
        t0 = time.perf_counter()
        items = masks["masks"] if isinstance(masks, dict) else masks
        rles = [m if isinstance(m, dict) else m.rle for m in items]
        crops: list[np.ndarray] = []
        if rles:
            bool_masks = await asyncio.to_thread(lambda: [decode_rle(r) for r in rles])
            fade = fade or {}
            crops = await self.fade(FadeJob(image, bool_masks, fade.get("strategy"), fade.get("params")))
        return {"crops": crops, "timing_ms": {"fade": (time.perf_counter() - t0) * 1e3}}

    def fade_jobs(self, jobs: list[FadeJob]) -> list[list[np.ndarray]]:
        """The CPU work of :meth:`fade`, synchronous: one list of crops per job (no counters touched)."""
        out = []
        for job in jobs:
            strategy = self.strategy_for(job)
            crops = fade_and_crop_batch([job.image] * len(job.masks), job.masks, strategy, self._crop)
            assert len(crops) == len(job.masks)
            out.append(crops)
        return out

    def strategy_for(self, job: FadeJob) -> FadeStrategy:
        """The strategy a job runs with: its own, else the deployment's default (see :class:`FadeJob`)."""
        if job.built is None or (job.strategy == self._default_name and job.params is None):
            return self._default
        return job.built

    def crop_settings(self) -> CropSettings:
        """The crop settings of this replica."""
        return self._crop

    def stats(self) -> dict:
        """Work done by this replica: jobs, crops, batches run and seconds spent fading."""
        return {"jobs": self._jobs, "crops": self._crops, "batches": self._batches, "busy_s": self._busy_s}
