"""``MaskDecoder`` deployment: a model family's batched prompt decoder (clicks, boxes, masks; automatic
masks; concept prompts where the family has them), plus mask encoding, and the images it owns
(:mod:`deployments.runtime.owned_images`). The family comes from :func:`models.registry.family_of`; this
module names none of its classes.

Calls about an image (:meth:`MaskDecoder.segment`, :meth:`MaskDecoder.generate_for`,
:meth:`MaskDecoder.concepts`, :meth:`MaskDecoder.image`) take its ``image_id`` first and are routed by it
(``handle.options(session_id=image_id)`` to a deployment with the consistent-hash
:class:`~deployments.runtime.affinity.KeyAffinityRouter`), so they reach
the replica that holds the image's features.

Each call may carry its request's deadline (``DecodeJob.deadline``, ``ConceptJob.deadline``, the
``deadline`` argument): a call that cannot make it is refused at once with
:class:`deployments.errors.DeadlineExceeded`: by the encode it would start (see
:class:`deployments.runtime.owned_images.OwnedImages`), or by the decode, concept or automatic-mask queue
of this replica, checked on arrival and again when its features are ready, before it joins the queue
(:class:`deployments.runtime.admission.StageAdmission`).
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import replace

from ray import serve
from ray.serve.config import RequestRouterConfig

from deployments.contracts import ConceptJob, ConceptResult, DecodeJob, DecodeResult, GenerateResult, ImageInfo
from deployments.errors import UnsupportedByModel
from deployments.runtime.admission import StageAdmission
from deployments.runtime.affinity import ROUTER_CLASS
from deployments.runtime.metrics import StageWork
from deployments.runtime.owned_images import OwnedImages
from deployments.runtime.replica import accel_settings, fallback_logger, load_stage_model, warm_up
from deployments.runtime.serve_batching import apply_batch_config
from deployments.runtime.stage_runtime import accel_state, build_stage
from models.amg import AmgSettings, generate_masks
from models.masks import encode_logits_base64, encode_masks
from models.registry import get_model_spec
from models.segmenter import ConceptRequest, DecodeRequest, Features

#: Calls about an image reach the replica that owns it: Serve's consistent-hash router over
#: ``session_id=image_id``, with no fallback replica: a call for a busy owner waits in the caller's queue,
#: then gets 503 past its bound, where another replica would encode the image again. The shipped configs
#: set the same; a test keeps them equal.
IMAGE_AFFINITY = RequestRouterConfig(
    request_router_class=ROUTER_CLASS,
    request_router_kwargs={"num_fallback_replicas": 0},
)


@serve.deployment(
    name="MaskDecoder",
    ray_actor_options={"num_cpus": 0.3},
    max_ongoing_requests=32,
    request_router_config=IMAGE_AFFINITY,
)
class MaskDecoder:
    """Turns prompts on encoded images into masks; batches prompts of many requests per forward pass.

    Args:
        model_id, weights, device, torch_threads, accel: as :class:`deployments.encoder.ImageEncoder`
            (``accel["tensorrt"]`` is ignored: torch-tensorrt is for the encoder). The encoder must serve the
            same ``model_id``.
        runtime: as :class:`deployments.encoder.ImageEncoder`'s, for the prompt decoder (``decoder.onnx``).
        encoder: handle to the ``ImageEncoder`` that encodes the images this replica is sent (None: this
            replica only decodes given features).
        cache: ``{"max_entries", "max_bytes"}`` of the images this replica owns (bytes: features plus
            pixels).
    """

    def __init__(
        self,
        model_id: str,
        weights: dict,
        device: str = "auto",
        torch_threads: int | None = None,
        accel: dict | None = None,
        encoder=None,
        cache: dict | None = None,
        runtime: dict | None = None,
    ) -> None:
        accel = {**(accel or {}), "tensorrt": False}
        accel_settings(accel)  # ValueError now for a bad setting
        loaded, self._device = load_stage_model(model_id, weights, device, torch_threads)
        family = loaded.family
        self._capabilities = family.capabilities
        self._decoder, self._runtime, settings = build_stage(
            "decoder", loaded, self._device, torch_threads, accel, runtime, weights, fallback_logger("MaskDecoder")
        )
        warm_up("MaskDecoder", self._decoder, settings)
        self._info = {
            "model_id": loaded.model_id,
            "family": family.name,
            "weights": loaded.weights,
            "device": self._device,
        }
        self._work = StageWork("decode", counters=("requests",))
        cache = {"max_entries": 64, "max_bytes": 2**31, **(cache or {})}
        nbytes = family.feature_nbytes(get_model_spec(model_id))
        self._images = OwnedImages(encoder, cache["max_entries"], cache["max_bytes"], nbytes)
        #: This replica's queues (waiting and running) and batch times: the deadline checks.
        self._admission = {
            "decode": StageAdmission("decode"),
            "concepts": StageAdmission("concepts"),
            "amg": StageAdmission("amg"),
        }
        #: Automatic masks run one at a time here: each holds its grid pass's decoder activations (about
        #: 26 MB a click, 1.7 GB for 64 clicks), and side by side on the same cores they finish no sooner;
        #: four at once (each then also holding its pass's full-resolution logits, 1.7 GB more on a
        #: 1800x1200 photo) ran a 24 GB node out of memory (docs/operations.md).
        self._amg_slot = asyncio.Semaphore(1)

    def reconfigure(self, user_config: dict) -> None:
        """``max_batch_size`` and ``batch_wait_timeout_s`` of :meth:`decode` and :meth:`concept_batch` (see
        :func:`apply_batch_config`)."""
        apply_batch_config(user_config, self.decode)
        apply_batch_config(user_config, self.concept_batch)

    @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.002)
    async def decode(self, features: list[Features], jobs: list[DecodeJob]) -> list[DecodeResult]:
        """Masks for a batch of jobs.

        Each caller passes one image's :class:`models.segmenter.Features` (usually as an ObjectRef, resolved by Ray)
        and one :class:`DecodeJob`; each gets a :class:`DecodeResult`.
        """
        t0 = time.perf_counter()
        out = await asyncio.to_thread(self._decode_sync, features, jobs)
        seconds = time.perf_counter() - t0
        self._work.batch("decode", len(jobs), seconds, requests=len(jobs))
        self._admission["decode"].observe(seconds, len(jobs))
        return out

    def _decode_sync(self, features: list[Features], jobs: list[DecodeJob]) -> list[DecodeResult]:
        t0 = time.perf_counter()
        requests = [DecodeRequest(f, j.prompts, j.multimask_output) for f, j in zip(features, jobs)]
        predictions = self._decoder.predict_batch(requests)
        t1 = time.perf_counter()
        out = []
        for job, per_prompt in zip(jobs, predictions):
            tj = time.perf_counter()
            results = [{"masks": self._format(p, job)} for p in per_prompt]
            timing = {
                "decode_masks": (t1 - t0) * 1e3,
                "postprocess": (time.perf_counter() - tj) * 1e3,
                "batch_size": len(jobs),
            }
            out.append(DecodeResult(self._info["model_id"], self._info["weights"], results, timing))
        assert len(out) == len(jobs)
        return out

    @staticmethod
    def _format(pred, job: DecodeJob) -> list[dict]:
        order = sorted(range(len(pred.predicted_iou)), key=lambda i: -float(pred.predicted_iou[i]))[: job.max_masks]
        encoded = encode_masks(pred.masks[order], job.mask_format, job.polygon_tolerance_px)
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

    @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.002)
    async def concept_batch(self, features: list[Features], jobs: list[ConceptJob]) -> list[ConceptResult]:
        """Every instance of each concept of a batch of jobs (one image's features and one
        :class:`ConceptJob` per caller), in one call of the family's ``segment_concepts``. Batch size and
        wait are :meth:`decode`'s."""
        t0 = time.perf_counter()
        out = await asyncio.to_thread(self._concepts_sync, features, jobs)
        seconds = time.perf_counter() - t0
        self._work.batch("decode", len(jobs), seconds, requests=len(jobs))
        self._admission["concepts"].observe(seconds, len(jobs))
        return out

    def _concepts_sync(self, features: list[Features], jobs: list[ConceptJob]) -> list[ConceptResult]:
        t0 = time.perf_counter()
        found = self._decoder.segment_concepts([ConceptRequest(f, j.prompts) for f, j in zip(features, jobs)])
        t1 = time.perf_counter()
        out = []
        for job, per_prompt in zip(jobs, found):
            tj = time.perf_counter()
            results = [{"instances": self._instances(p, job)} for p in per_prompt]
            timing = {"concepts": (t1 - t0) * 1e3, "postprocess": (time.perf_counter() - tj) * 1e3}
            out.append(ConceptResult(self._info["model_id"], self._info["weights"], results, timing))
        assert len(out) == len(jobs)
        return out

    @staticmethod
    def _instances(found, job: ConceptJob) -> list[dict]:
        """Instance records: the mask in the job's format with its area and box (``bbox_xyxy``), the
        model's own box (``box_xyxy``, float pixels) and its ``score``."""
        encoded = encode_masks(found.masks, job.mask_format, job.polygon_tolerance_px)
        return [
            {"score": float(score), "box_xyxy": [float(v) for v in box], **enc}
            for box, score, enc in zip(found.boxes_xyxy, found.scores, encoded)
        ]

    def _require(self, capability: str, field: str) -> None:
        if not getattr(self._capabilities, capability):
            raise UnsupportedByModel.lacking(self._info["model_id"], capability, field)

    async def generate(
        self, features: Features, settings: AmgSettings, max_masks: int | None = None, deadline: float | None = None
    ) -> GenerateResult:
        """Automatic masks of one image (grid clicks batched ``points_per_batch`` per forward pass), at
        most ``max_masks`` of them, in NMS order.

        Raises:
            UnsupportedByModel: the family makes no automatic masks.
            DeadlineExceeded: the automatic masks already running or waiting here and this image's would end
                after ``deadline`` (absolute ``time.time()`` seconds, None: no deadline), on arrival or when
                its turn comes (they run one at a time per replica).
        """
        self._require("automatic_masks", "amg")
        t0 = time.perf_counter()
        admission = self._admission["amg"]
        with admission.admit(deadline):  # the wait: those in flight here, one after another
            async with self._amg_slot:
                admission.check(deadline, ahead=0)  # its turn: can it still end in time on its own?
                t1 = time.perf_counter()
                masks = await asyncio.to_thread(generate_masks, self._decoder, features, settings)
                admission.observe(time.perf_counter() - t1)
        self._work.add(requests=1)
        timing = {"amg": (time.perf_counter() - t0) * 1e3}
        return GenerateResult(tuple(masks[:max_masks]), self._info["model_id"], self._info["weights"], timing)

    # ------------------------------------------------------------------ calls about an owned image
    async def _owned(self, image_id: str, pixels, timing: dict, deadline: float | None = None):
        """(entry, held before, features) of an image this replica owns; see :class:`OwnedImages`."""
        entry, cached = self._images.entry(image_id, pixels, deadline)
        return entry, cached, await self._images.features(image_id, entry, timing)

    @staticmethod
    def _info_of(image_id: str, entry, cached: bool) -> ImageInfo:
        return ImageInfo(image_id, entry.width, entry.height, cached, entry.image)

    async def segment(self, image_id: str, job: DecodeJob, pixels=None) -> DecodeResult:
        """Masks for ``job``'s prompts on the image ``image_id``, encoding ``pixels`` if this replica does
        not hold it yet (batched with other callers' jobs, see :meth:`decode`).

        Args:
            image_id: lowercase hex SHA-256 of the uploaded bytes.
            job: the prompts, checked here against the image's size; no prompts: a centre click.
            pixels: (H, W, 3) uint8 RGB (an ObjectRef, resolved by Ray), or None.

        Raises:
            ImageNotCached: not held here and no ``pixels``.
            OutOfImage: a prompt outside the image.
            DeadlineExceeded: the job cannot be done by ``job.deadline`` (the encode it would start, or
                the decode queue, on arrival or once the features are ready).
        """
        admission = self._admission["decode"]
        admission.check(job.deadline)  # before starting an encode for a job the decode queue would refuse
        entry, cached = self._images.entry(image_id, pixels, job.deadline)
        job = job.for_image(entry.width, entry.height)  # before waiting for any encode
        timing: dict = {}
        features = await self._images.features(image_id, entry, timing)
        with admission.admit(job.deadline):
            result = await self.decode(features, job)
        return replace(result, timing_ms={**result.timing_ms, **timing}, image=self._info_of(image_id, entry, cached))

    async def generate_for(
        self,
        image_id: str,
        settings: AmgSettings,
        max_masks: int | None = None,
        pixels=None,
        deadline: float | None = None,
    ) -> GenerateResult:
        """:meth:`generate` on the image ``image_id``, encoding ``pixels`` if this replica does not hold it.

        Raises:
            ImageNotCached: not held here and no ``pixels``.
            DeadlineExceeded: it cannot be done by ``deadline`` (absolute ``time.time()`` seconds).
        """
        timing: dict = {}
        self._admission["amg"].check(deadline)
        entry, cached, features = await self._owned(image_id, pixels, timing, deadline)
        result = await self.generate(features, settings, max_masks, deadline)
        return replace(result, timing_ms={**result.timing_ms, **timing}, image=self._info_of(image_id, entry, cached))

    async def concepts(self, image_id: str, job: ConceptJob, pixels=None) -> ConceptResult:
        """Every instance of ``job``'s concepts on the image ``image_id``, encoding ``pixels`` if this
        replica does not hold it yet (batched with other callers' jobs, see :meth:`concept_batch`).

        Raises:
            UnsupportedByModel: the family takes no concept prompts (before any encode).
            ImageNotCached: not held here and no ``pixels``.
            OutOfImage: an example box outside the image.
            DeadlineExceeded: as :meth:`segment`'s, for the concept queue.
        """
        self._require("concept_prompts", job.fields[0] if job.fields else "prompts")
        admission = self._admission["concepts"]
        admission.check(job.deadline)
        entry, cached = self._images.entry(image_id, pixels, job.deadline)
        job = job.for_image(entry.width, entry.height)
        timing: dict = {}
        features = await self._images.features(image_id, entry, timing)
        with admission.admit(job.deadline):
            result = await self.concept_batch(features, job)
        return replace(result, timing_ms={**result.timing_ms, **timing}, image=self._info_of(image_id, entry, cached))

    async def image(self, image_id: str, pixels=None, deadline: float | None = None) -> ImageInfo:
        """The image ``image_id`` as this replica holds it (encoding ``pixels`` if it does not yet).

        Raises:
            ImageNotCached: not held here and no ``pixels``.
            DeadlineExceeded: the encode would not end by ``deadline`` (absolute ``time.time()`` seconds).
        """
        timing: dict = {}
        entry, cached, _ = await self._owned(image_id, pixels, timing, deadline)
        return self._info_of(image_id, entry, cached)

    def info(self) -> dict:
        """``{"model_id", "family", "weights", "device", "accel", "runtime", "capabilities"}`` of this replica
        (``accel``: the speed-ups in force, see :meth:`models.accel.AcceleratedCall.state`; ``runtime``: see
        :meth:`deployments.runtime.stage_runtime.StageRuntime.state`)."""
        return {
            **self._info,
            "accel": accel_state(self._decoder, self._runtime),
            "runtime": self._runtime.state(),
            "capabilities": self._capabilities.as_dict(),
        }

    def stats(self) -> dict:
        """Work done by this replica: requests decoded (prompt jobs, concept jobs and automatic-mask
        images), batches run, seconds spent in them; ``model_id``: its model; ``cache``: its images (see
        :meth:`OwnedImages.stats`); ``admission``: its queues and the encodes it has in flight, their
        batch times and deadline refusals (:meth:`StageAdmission.state`); ``replica`` and ``node_id``:
        where it runs (None outside a Serve replica)."""
        import ray

        try:
            replica = serve.get_replica_context().replica_id.unique_id
            node_id = ray.get_runtime_context().get_node_id()
        except Exception:  # outside a Serve replica (tests)
            replica = node_id = None
        return {
            **self._work.stats(),
            "model_id": self._info["model_id"],
            "cache": self._images.stats(),
            "admission": {
                **{k: a.state() for k, a in self._admission.items()},
                "encode": self._images.encoder_admission.state(),
            },
            "replica": replica,
            "node_id": node_id,
        }
