"""``ImageEncoder`` deployment: batched image encoding (the expensive stage), for any model family.

The family (:func:`models.registry.family_of`) builds the model and its encoder; this deployment only
batches, times and reports.
"""

from __future__ import annotations

import asyncio
import time

import numpy as np
from ray import serve

from deployments.contracts import EncodedImage
from deployments.runtime.admission import StageAdmission
from deployments.runtime.metrics import StageWork
from deployments.runtime.replica import accel_settings, fallback_logger, load_stage_model, warm_up
from deployments.runtime.serve_batching import apply_batch_config
from deployments.runtime.stage_runtime import accel_state, build_stage
from models.segmenter import Features


@serve.deployment(name="ImageEncoder", ray_actor_options={"num_cpus": 0.8}, max_ongoing_requests=16)
class ImageEncoder:
    """Encodes (H, W, 3) uint8 RGB images into its model family's :class:`models.segmenter.Features`.

    Requests are batched with ``@serve.batch``; ``max_batch_size`` and ``batch_wait_timeout_s`` come from
    ``user_config`` (on CPU the best batch is 1; on GPUs 4-16 pays).

    Args:
        model_id: registry name of the model (:mod:`models.registry`; any family).
        weights: :class:`deployments.runtime.weights.WeightsSource` fields.
        device: ``auto``, ``cpu`` or ``cuda[:N]``.
        torch_threads: torch intra-op threads for this replica (None: torch's default).
        accel: :class:`models.accel.AccelSettings` fields (bf16, torch.compile, TensorRT); None: fp32
            eager. Compilation happens here (a warm-up image); fallbacks are logged, one line each.
        runtime: ``{"runtime", "precision", "export_dir"}`` (see
            :func:`deployments.runtime.stage_runtime.build_stage`): torch, or the family's ONNX export on
            onnxruntime, openvino or tensorrt (exported into the cache dir on first start when no
            ``export_dir`` is given); None: torch at ``accel``'s precision.
    """

    def __init__(
        self,
        model_id: str,
        weights: dict,
        device: str = "auto",
        torch_threads: int | None = None,
        accel: dict | None = None,
        runtime: dict | None = None,
    ) -> None:
        accel_settings(accel)  # ValueError now for a bad setting
        loaded, self._device = load_stage_model(model_id, weights, device, torch_threads)
        self._encoder, self._runtime, settings = build_stage(
            "encoder", loaded, self._device, torch_threads, accel, runtime, weights, fallback_logger("ImageEncoder")
        )
        warm_up("ImageEncoder", self._encoder, settings)
        self._info = {
            "model_id": loaded.model_id,
            "family": loaded.family.name,
            "weights": loaded.weights,
            "device": self._device,
        }
        self._work = StageWork("encode", counters=("images",))
        #: This replica's queue (images waiting and encoding) and time per image: the deadline check on arrival.
        self._admission = StageAdmission("encode")

    def reconfigure(self, user_config: dict) -> None:
        """``max_batch_size`` and ``batch_wait_timeout_s`` of :meth:`encode` (see :func:`apply_batch_config`)."""
        apply_batch_config(user_config, self.encode)

    async def encode_image(self, pixels: np.ndarray, deadline: float | None = None) -> EncodedImage:
        """One image's features, through the batched :meth:`encode`, unless it cannot be done by ``deadline``.

        Args:
            pixels: (H, W, 3) uint8 RGB (an ObjectRef, resolved by Ray).
            deadline: absolute wall-clock time (``time.time()`` seconds), or None.

        Returns:
            The features with this replica's batch time and batch size (its callers' estimate).

        Raises:
            DeadlineExceeded: on arrival, before it waits: the deadline has passed, or the images ahead of it
                here and its own encode would end after it (:class:`StageAdmission`).
        """
        with self._admission.admit(deadline):
            features = await self.encode(pixels)
        return EncodedImage(features, self._admission.service_s)

    @serve.batch(max_batch_size=1, batch_wait_timeout_s=0.0)
    async def encode(self, images: list[np.ndarray]) -> list[Features]:
        """Encode a batch of images; each caller sends one (H, W, 3) uint8 RGB array."""
        t0 = time.perf_counter()
        features = await asyncio.to_thread(self._encoder.encode_batch, images)
        assert len(features) == len(images)
        seconds = time.perf_counter() - t0
        self._work.batch("encode", len(images), seconds, images=len(images))
        self._admission.observe(seconds, len(images))
        return features

    def info(self) -> dict:
        """``{"model_id", "family", "weights", "device", "accel", "runtime"}`` of this replica (``accel``: the
        speed-ups in force, see :meth:`models.accel.AcceleratedCall.state`; ``runtime``: the runtime and
        precision asked and in force, see :meth:`deployments.runtime.stage_runtime.StageRuntime.state`)."""
        return {**self._info, "accel": accel_state(self._encoder, self._runtime), "runtime": self._runtime.state()}

    def stats(self) -> dict:
        """Work done by this replica: images encoded, batches run, seconds spent encoding; ``admission``: its
        queue, batch time and deadline refusals (:meth:`StageAdmission.state`)."""
        return {**self._work.stats(), "admission": self._admission.state()}
