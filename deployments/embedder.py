"""``Embedder`` deployment: batched embeddings of image crops and texts, from an embedder family of
:data:`models.embedders.EMBEDDERS` (open_clip's CLIP by default)."""

from __future__ import annotations

import asyncio
import logging
import os
import time

import numpy as np
from ray import serve

from deployments.contracts import EmbedResult, FadeResult
from deployments.runtime.admission import StageAdmission
from deployments.runtime.clip_weights import ClipWeightsSource, load_embedder
from deployments.runtime.metrics import StageWork
from deployments.runtime.replica import pick_device, set_torch_threads
from deployments.runtime.serve_batching import apply_batch_config
from models.embedders import DEFAULT_EMBEDDER

log = logging.getLogger("samgraph.deployments")


@serve.deployment(name="Embedder", ray_actor_options={"num_cpus": 0.3}, max_ongoing_requests=32)
class Embedder:
    """Embeds (H, W, 3) uint8 RGB crops and texts into one space, L2-normalised.

    Both methods are batched with ``@serve.batch``; ``max_batch_size`` and ``batch_wait_timeout_s`` come
    from ``user_config`` and apply to both (keys left out keep the defaults, 32 and 0.005 s).

    Args:
        model_name: the family's architecture, e.g. open_clip's ``"ViT-B-32"``.
        pretrained: its pretrained tag, e.g. ``"laion2b_s34b_b79k"``.
        weights: :class:`deployments.runtime.clip_weights.ClipWeightsSource` fields ``{"kind", "checkpoint", "seed"}``.
        device: ``auto``, ``cpu`` or ``cuda[:N]``.
        torch_threads: torch intra-op threads for this replica (None: torch's default).
        family: the embedder family, a name of :data:`models.embedders.EMBEDDERS` (default ``open_clip``).
    """

    def __init__(
        self,
        model_name: str,
        pretrained: str,
        weights: dict,
        device: str = "auto",
        torch_threads: int | None = None,
        family: str = DEFAULT_EMBEDDER,
    ) -> None:
        threads = set_torch_threads(torch_threads)
        self._device = pick_device(device)
        loaded = load_embedder(family, model_name, pretrained, ClipWeightsSource(**weights), device=self._device)
        self._embedder = loaded.embedder
        self._info = {
            "model_id": loaded.model_id,
            "weights": loaded.weights,
            "identity": loaded.identity,
            "device": self._device,
            "dim": loaded.embedder.dim,
        }
        log.info(
            "embedder %s on %s, %d torch threads, weights %s (pid %d)",
            loaded.identity,
            self._device,
            threads,
            loaded.weights,
            os.getpid(),
        )
        self._work = StageWork("embed_images", "embed_texts", counters=("images", "texts"))
        #: This replica's crop requests in flight and time per request: the deadline check of :meth:`embed_crops`.
        self._admission = StageAdmission("embed")

    def reconfigure(self, user_config: dict) -> None:
        """Batching of both towers (see :func:`apply_batch_config`)."""
        apply_batch_config(user_config, self.embed_images, self.embed_texts)

    @serve.batch(max_batch_size=32, batch_wait_timeout_s=0.005)
    async def embed_images(self, crops: list[np.ndarray]) -> list[np.ndarray]:
        """Embed a batch of crops; each caller sends one (H, W, 3) uint8 RGB array, gets (dim,) float32."""
        return await self._run(self._embedder.embed_images, crops, "embed_images", "images")

    @serve.batch(max_batch_size=32, batch_wait_timeout_s=0.005)
    async def embed_texts(self, texts: list[str]) -> list[np.ndarray]:
        """Embed a batch of texts; each caller sends one non-blank string, gets (dim,) float32."""
        return await self._run(self._embedder.embed_texts, texts, "embed_texts", "texts")

    async def _run(self, embed, items: list, stage: str, counter: str) -> list[np.ndarray]:
        """One batch through ``embed`` in a worker thread, recorded as ``stage`` and counted in ``counter``."""
        t0 = time.perf_counter()
        matrix = await asyncio.to_thread(embed, items)
        assert len(matrix) == len(items)
        self._work.batch(stage, len(items), time.perf_counter() - t0, **{counter: len(items)})
        return [row.copy() for row in matrix]

    async def embed_crops(self, faded: FadeResult, deadline: float | None = None) -> EmbedResult:
        """The graph's entry after the fader: one L2-normalised (dim,) float32 embedding per crop.

        Args:
            faded: the fader's crops, each (S, S, 3) uint8 RGB.
            deadline: the request's deadline (absolute ``time.time()`` seconds), or None.

        Raises:
            DeadlineExceeded: the requests embedding here and this one would end after ``deadline`` (503
                ``deadline``), checked on arrival.
        """
        t0 = time.perf_counter()
        with self._admission.served(deadline):
            vectors = await asyncio.gather(*(self.embed_images(c) for c in faded.crops))
        embeddings = np.stack(vectors).astype(np.float32) if vectors else np.zeros((0, self._embedder.dim), np.float32)
        timing = {**faded.timing_ms, "embed": (time.perf_counter() - t0) * 1e3}
        return EmbedResult(embeddings, self._info["weights"], timing, self._info["identity"])

    async def embed_text_list(self, texts: list[str]) -> np.ndarray:
        """(T, dim) float32 L2-normalised text embeddings, batched with other callers' texts."""
        return np.stack(await asyncio.gather(*(self.embed_texts(t) for t in texts)))

    def info(self) -> dict:
        """``{"model_id", "weights", "identity", "device", "dim"}`` of this replica (``identity``: what makes
        its vectors, :func:`models.embedders.embedder_identity`)."""
        return dict(self._info)

    def stats(self) -> dict:
        """Work done by this replica: images and texts embedded, batches run, seconds spent embedding, and
        ``admission`` of :meth:`embed_crops` (:meth:`StageAdmission.state`)."""
        return {**self._work.stats(), "admission": self._admission.state()}
