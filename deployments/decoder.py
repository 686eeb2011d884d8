"""``MaskDecoder`` deployment: batched SAM 2 prompt encoder + mask decoder, plus mask encoding."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

from ray import serve

from deployments.batching import check_batch_config
from deployments.common import accel_settings, fallback_logger, load_stage_model, warm_up
from models.amg import AmgSettings, AutoMask, generate_masks
from models.masks import encode_logits_base64, encode_masks
from models.sam2_decoder import DecodeRequest, PromptSpec, Sam2MaskDecoder
from models.sam2_image import ImageFeatures
from serve_app.metrics import StageMetrics


@dataclass(frozen=True)
class DecodeJob:
    """What the ingress asks of the decoder for one image (the features travel separately, by reference).

    Attributes:
        prompts: validated prompts, one per object.
        multimask_output: one flag per prompt.
        mask_format: ``rle``, ``png`` or ``none``.
        max_masks: at most this many masks per prompt, best ``predicted_iou`` first.
        return_logits: also return each mask's (256, 256) low-res logits (for ``mask_input``).
    """

    prompts: tuple[PromptSpec, ...]
    multimask_output: tuple[bool, ...]
    mask_format: str = "rle"
    max_masks: int = 3
    return_logits: bool = False


@serve.deployment(name="MaskDecoder", ray_actor_options={"num_cpus": 0.3}, max_ongoing_requests=32)
class MaskDecoder:
    """Turns prompts on encoded images into masks; batches prompts of many requests per forward pass.

    Args: as :class:`deployments.encoder.ImageEncoder` (``accel["tensorrt"]`` is ignored: TensorRT is for
    the encoder).
    """

    def __init__(
        self, model_id: str, weights: dict, device: str = "auto", torch_threads: int | None = None, accel: dict | None = None
    ) -> None:
        settings = accel_settings({**(accel or {}), "tensorrt": False})
        loaded, self._device = load_stage_model(model_id, weights, device, torch_threads)
        loaded.model.image_encoder = None  # the decoder never runs the trunk; free its weights
        self._decoder = Sam2MaskDecoder(loaded.model, accel=settings, on_fallback=fallback_logger("MaskDecoder"))
        warm_up("MaskDecoder", self._decoder, settings)
        self._info = {"model_id": loaded.model_id, "weights": loaded.weights, "device": self._device}
        self._requests = 0
        self._batches = 0
        self._metrics = StageMetrics("decode")

    def reconfigure(self, user_config: dict) -> None:
        size, wait = check_batch_config(user_config)
        self.decode.set_max_batch_size(size)
        self.decode.set_batch_wait_timeout_s(wait)

    @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.002)
    async def decode(self, features: list[ImageFeatures], jobs: list[DecodeJob]) -> list[dict]:
        """Masks for a batch of jobs.

        Each caller passes one image's :class:`ImageFeatures` (usually as an ObjectRef, resolved by Ray)
        and one :class:`DecodeJob`; each gets ``{"model_id", "weights", "results": [{"masks": [...]}, ...],
        "timing_ms": {...}}``.
        """
        t0 = time.perf_counter()
        out = await asyncio.to_thread(self._decode_sync, features, jobs)
        self._metrics.batch("decode", len(jobs), time.perf_counter() - t0)
        return out

    def _decode_sync(self, features: list[ImageFeatures], jobs: list[DecodeJob]) -> list[dict]:
        t0 = time.perf_counter()
        requests = [DecodeRequest(f, j.prompts, j.multimask_output) for f, j in zip(features, jobs)]
        predictions = self._decoder.predict_batch(requests)
        t1 = time.perf_counter()
        out = []
        for job, per_prompt in zip(jobs, predictions):
            tj = time.perf_counter()
            results = [{"masks": self._format(p, job)} for p in per_prompt]
            out.append(
                {
                    "model_id": self._info["model_id"],
                    "weights": self._info["weights"],
                    "results": results,
                    "timing_ms": {
                        "decode_masks": (t1 - t0) * 1e3,
                        "postprocess": (time.perf_counter() - tj) * 1e3,
                        "batch_size": len(jobs),
                    },
                }
            )
        assert len(out) == len(jobs)
        self._requests += len(jobs)
        self._batches += 1
        return out

    @staticmethod
    def _format(pred, job: DecodeJob) -> list[dict]:
        order = sorted(range(len(pred.predicted_iou)), key=lambda i: -float(pred.predicted_iou[i]))[: job.max_masks]
        encoded = encode_masks(pred.masks[order], job.mask_format)
        masks = []
        for i, enc in zip(order, encoded):
            item = {
                "predicted_iou": float(pred.predicted_iou[i]),
                "stability_score": float(pred.stability_score[i]),
                **enc,
            }
            if job.return_logits:
                item["low_res_logits"] = encode_logits_base64(pred.low_res_logits[i])
            masks.append(item)
        return masks

    async def generate(self, features: ImageFeatures, settings: AmgSettings, max_masks: int | None = None) -> dict:
        """Automatic masks of one image (grid clicks batched ``points_per_batch`` per forward pass).

        Returns:
            ``{"masks": [AutoMask, ...] in NMS order (at most ``max_masks``), "timing_ms": {"amg": ...},
            "model_id", "weights"}``.
        """
        t0 = time.perf_counter()
        masks: list[AutoMask] = await asyncio.to_thread(generate_masks, self._decoder, features, settings)
        masks = masks[:max_masks]
        self._requests += 1
        return {
            "masks": masks,
            "timing_ms": {"amg": (time.perf_counter() - t0) * 1e3},
            "model_id": self._info["model_id"],
            "weights": self._info["weights"],
        }

    def info(self) -> dict:
        """``{"model_id", "weights", "device", "accel"}`` of this replica (``accel``: the speed-ups in
        force, see :meth:`models.accel.AcceleratedCall.state`)."""
        return {**self._info, "accel": self._decoder.accel_state()}

    def stats(self) -> dict:
        """Work done by this replica: requests decoded and batches run."""
        return {"requests": self._requests, "batches": self._batches}
