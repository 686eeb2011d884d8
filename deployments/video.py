"""``VideoSegmenter`` deployment: tracks prompted objects through a clip with sam2's video predictor,
streaming one record per frame as propagation runs."""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import AsyncIterator, Iterator

import numpy as np
from ray import serve

from deployments.contracts import VideoJob
from deployments.runtime.replica import pick_device, set_torch_threads
from deployments.runtime.sam2_weights import load_sam2_video
from deployments.runtime.weights import WeightsSource
from models.masks import POLYGON_TOLERANCE_PX, encode_masks
from models.sam2_video import Sam2VideoTracker, VideoSettings
from models.sam2_video_types import FrameMasks

log = logging.getLogger("samgraph.deployments")
_DONE = object()


@serve.deployment(name="VideoSegmenter", ray_actor_options={"num_cpus": 0.15}, max_ongoing_requests=8)
class VideoSegmenter:
    """Tracks objects through clips; :meth:`track` is a streaming method (call it with
    ``handle.options(stream=True)``).

    Args:
        model_id: SAM 2 registry name.
        weights: :class:`deployments.runtime.weights.WeightsSource` fields (the image stages' source).
        device: ``auto``, ``cpu`` or ``cuda[:N]``.
        torch_threads: torch intra-op threads for this replica (None: torch's default).
        settings: :class:`models.sam2_video.VideoSettings` fields.
        max_concurrent_clips: clips tracked at once by this replica; further requests wait their turn
            (this bounds the replica's memory; ``info`` and ``stats`` still answer meanwhile).

    Raises:
        ValueError: ``max_concurrent_clips < 1`` or bad settings.
    """

    def __init__(
        self,
        model_id: str,
        weights: dict,
        device: str = "auto",
        torch_threads: int | None = None,
        settings: dict | None = None,
        max_concurrent_clips: int = 1,
    ) -> None:
        if max_concurrent_clips < 1:
            raise ValueError("max_concurrent_clips must be greater than 0")
        threads = set_torch_threads(torch_threads)
        self._device = pick_device(device)
        loaded = load_sam2_video(model_id, WeightsSource(**weights), device=self._device, progress=False)
        self._tracker = Sam2VideoTracker(loaded.model, VideoSettings(**(settings or {})))
        self._slots = asyncio.Semaphore(max_concurrent_clips)
        self._info = {"model_id": loaded.model_id, "weights": loaded.weights, "device": self._device}
        self._clips = 0
        self._frames = 0
        self._busy_s = 0.0
        log.info("video %s on %s, %d torch threads, weights %s (pid %d)", model_id, self._device, threads, loaded.weights, os.getpid())

    async def track(self, frames: np.ndarray, job: VideoJob) -> AsyncIterator[dict]:
        """Track ``job.objects`` through ``frames``, one record per step as soon as it is done.

        Args:
            frames: (N, H, W, 3) uint8 RGB (usually an ObjectRef, resolved by Ray).
            job: the objects and how far to track them.

        Yields:
            ``{"type": "init", "init_ms", "model_id", "weights"}`` once, then per frame in processing order
            ``{"type": "frame", "frame_index", "propagate_ms", "objects": [{"obj_id", "object_score",
            "object_score_logit", "area_px", "bbox_xyxy", "rle"|"png"}]}``.

        Raises:
            ValueError: objects or settings that do not fit the clip (the ingress checks them first).
        """
        async with self._slots:
            t0 = time.perf_counter()
            steps = self._steps(frames, job)
            try:
                while (record := await asyncio.to_thread(next, steps, _DONE)) is not _DONE:
                    yield record
            finally:
                self._busy_s += time.perf_counter() - t0
                try:
                    steps.close()
                except ValueError:  # a step still running in its thread (the client went away)
                    pass

    def _steps(self, frames: np.ndarray, job: VideoJob) -> Iterator[dict]:
        """The tracker's items as JSON-ready records; runs in a worker thread one step at a time."""
        self._clips += 1
        for item in self._tracker.propagate(frames, job.objects, job.start_frame, job.max_frames, job.reverse):
            if isinstance(item, FrameMasks):
                self._frames += 1
                yield frame_record(item, job.mask_format, job.polygon_tolerance_px)
            else:
                yield {"type": "init", **item, "model_id": self._info["model_id"], "weights": self._info["weights"]}

    def info(self) -> dict:
        """``{"model_id", "weights", "device"}`` of this replica."""
        return dict(self._info)

    def stats(self) -> dict:
        """Work done by this replica: clips, frames tracked, seconds spent tracking."""
        return {"clips": self._clips, "frames": self._frames, "busy_s": self._busy_s}


def frame_record(item: FrameMasks, mask_format: str, polygon_tolerance_px: float = POLYGON_TOLERANCE_PX) -> dict:
    """One frame's masks as a JSON-ready record (see :meth:`VideoSegmenter.track`).

    ``object_score`` is the sigmoid of the model's object-presence logit, in [0, 1]; ``area_px`` and
    ``bbox_xyxy`` (pixel-edge XYXY, [0, 0, 0, 0] when empty) are of the mask at the frame's size.
    """
    encoded = encode_masks(item.masks, mask_format, polygon_tolerance_px)
    objects = []
    for obj_id, logit, enc in zip(item.obj_ids, item.object_score_logits, encoded):
        score = float(1.0 / (1.0 + np.exp(-np.clip(float(logit), -80.0, 80.0))))
        objects.append({"obj_id": int(obj_id), "object_score": score, "object_score_logit": float(logit), **enc})
    return {"type": "frame", "frame_index": item.frame_index, "propagate_ms": item.propagate_ms, "objects": objects}
