"""``Fader`` deployment: batched context fade and square crop of masked objects (CPU only)."""

from __future__ import annotations

import asyncio
import time

import numpy as np
from ray import serve

from deployments.contracts import FadeJob, FadeResult, GenerateResult
from deployments.runtime.admission import StageAdmission
from deployments.runtime.metrics import StageWork
from deployments.runtime.serve_batching import apply_batch_config
from models.fade_strategies import FadeStrategy, make_fade_strategy
from models.fader import CropSettings, fade_and_crop_batch
from models.masks import decode_rle


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
        self._work = StageWork("fade", counters=("jobs", "crops"))
        #: This replica's requests in flight and time per request: the deadline check of :meth:`fade_masks`.
        self._admission = StageAdmission("fade")

    def reconfigure(self, user_config: dict) -> None:
        """``max_batch_size`` and ``batch_wait_timeout_s`` of :meth:`fade` (see :func:`apply_batch_config`)."""
        apply_batch_config(user_config, self.fade)

    @serve.batch(max_batch_size=16, batch_wait_timeout_s=0.002)
    async def fade(self, jobs: list[FadeJob]) -> list[list[np.ndarray]]:
        """Crops for a batch of jobs; each caller sends one :class:`FadeJob` and gets one crop per mask.

        Each crop is (output_size, output_size, 3) uint8 RGB, in the order of ``job.masks``.
        """
        t0 = time.perf_counter()
        crops = await asyncio.to_thread(self.fade_jobs, jobs)
        assert len(crops) == len(jobs)
        self._work.batch("fade", len(jobs), time.perf_counter() - t0, jobs=len(jobs), crops=sum(len(c) for c in crops))
        return crops

    async def fade_masks(
        self, image, masks: GenerateResult | list[dict], fade: dict | None = None, deadline: float | None = None
    ) -> FadeResult:
        """The graph's entry: crops of one image for masks given as COCO RLE.

        Args:
            image: (H, W, 3) uint8 RGB (an ObjectRef, resolved by Ray), or None for the pixels that the
                decoder replica owning the image put (``masks.image.pixels`` of a :class:`GenerateResult`).
            masks: the decoder's :class:`GenerateResult`, or a list of COCO RLEs on ``image``.
            fade: ``{"strategy", "params"}``, or None for this replica's defaults.
            deadline: the request's deadline (absolute ``time.time()`` seconds), or None.

        Returns:
            One (S, S, 3) uint8 crop per mask, in order.

        Raises:
            ValueError: no pixels given or named.
            DeadlineExceeded: the fades in flight here and this one would end after ``deadline`` (503
                ``deadline``), checked on arrival.
        """
        t0 = time.perf_counter()
        rles = [m.rle for m in masks.masks] if isinstance(masks, GenerateResult) else list(masks)
        crops: list[np.ndarray] = []
        with self._admission.served(deadline):
            if rles:
                if image is None:
                    if not isinstance(masks, GenerateResult) or masks.image is None:
                        raise ValueError(
                            "fade_masks needs the image's pixels: give them, or a GenerateResult that names them"
                        )
                    image = await masks.image.pixels  # from the object store of the owner's node
                bool_masks = await asyncio.to_thread(lambda: [decode_rle(r) for r in rles])
                fade = fade or {}
                crops = await self.fade(FadeJob(image, bool_masks, fade.get("strategy"), fade.get("params")))
        return FadeResult(tuple(crops), {"fade": (time.perf_counter() - t0) * 1e3})

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
        """Work done by this replica: jobs, crops, batches run, seconds spent fading, and ``admission``
        (:meth:`StageAdmission.state`)."""
        return {**self._work.stats(), "admission": self._admission.state()}
