"""The images a ``MaskDecoder`` replica owns: their features in this process, their pixels in the object
store, in a bounded LRU, filled by one encode per image.

Calls about an image reach the replica that owns it: the ``MaskDecoder`` deployment routes by
``session_id=image_id`` with Ray Serve's ``ConsistentHashRouter``. So an image's features cross processes
once (encoder -> owner), and each click after that sends prompts in and masks out. A request for an image
the owner does not hold is answered :class:`deployments.errors.ImageNotCached` unless it carries the
pixels (resend on miss); then the owner encodes them, once however many requests carry them at the same
time.
"""

from __future__ import annotations

import asyncio
import contextvars
import time

import numpy as np
from ray.serve.exceptions import BackPressureError

from deployments.errors import ImageNotCached
from deployments.runtime.admission import StageAdmission
from deployments.runtime.cache import CacheEntry, EmbeddingCache
from deployments.runtime.metrics import CacheMetrics


class OwnedImages:
    """A replica's images: an :class:`EmbeddingCache` of entries whose ``features`` are a task that
    resolves to the model family's :class:`models.segmenter.Features` (in this process), and whose ``image`` is the
    ObjectRef of the pixels this replica put.

    Not thread-safe: one per replica event loop.

    Args:
        encoder: handle to the ``ImageEncoder`` deployment (``encode_image.remote(pixels, deadline)``).
        max_entries, max_bytes: the cache's bounds (bytes: features plus pixels).
        feature_nbytes: bytes of one image's features (:meth:`models.segmenter.SegmenterFamily.feature_nbytes`).
        put: stores the pixels and returns their reference (default ``ray.put``: the replica owns them).

    Raises:
        ValueError: a bound below 1.
    """

    def __init__(self, encoder, max_entries: int, max_bytes: int, feature_nbytes: int, put=None) -> None:
        self.encoder = encoder
        self._put = put
        self.entries = EmbeddingCache(max_entries, max_bytes)
        self._feature_nbytes = feature_nbytes
        self._metrics = CacheMetrics()
        self.encodes = 0
        #: The encodes this replica has in flight at the encoder, and the encoder's time per image as reported.
        self.encoder_admission = StageAdmission("encode")
        #: Requests waiting for each encode still running (its task): the last one gone cancels it.
        self._waiting: dict[asyncio.Future, int] = {}
        #: The encoder's last refusal of a full queue (``BackPressureError``), until an encode ends.
        self._encoder_full: BackPressureError | None = None

    def stats(self) -> dict:
        """Entries, bytes, hits, misses, evictions, and the encodes this replica asked for."""
        return {**self.entries.stats(), "encodes": self.encodes}

    def entry(self, image_id: str, pixels: np.ndarray | None, deadline: float | None = None) -> tuple[CacheEntry, bool]:
        """The image's entry, and whether it was held before this call.

        With ``pixels`` and no entry, the encode starts now and the entry is cached before the caller
        awaits anything, so concurrent requests for the same image wait for this encode.

        Args:
            image_id: lowercase hex SHA-256 of the uploaded bytes.
            pixels: (H, W, 3) uint8 RGB of the image, or None.
            deadline: absolute wall-clock time (``time.time()`` seconds) of the request, or None; checked
                only when this call would start an encode.

        Raises:
            ImageNotCached: no entry and no pixels; its ``refusal`` is :meth:`encode_refusal`'s answer.
            DeadlineExceeded: the encode would not end before ``deadline`` (the encodes this replica has in
                flight and the encoder's time per image); nothing is sent or cached.
            BackPressureError: the encoder's queue at this replica is still full (:meth:`encode_refusal`);
                nothing is sent or cached.
        """
        # A call with pixels follows a miss of the same request, counted then: count it only if found.
        entry = self.entries.get(image_id) if pixels is None or image_id in self.entries else None
        if entry is not None:
            self._metrics.lookup(True)
            return entry, True
        if pixels is None:
            self._metrics.lookup(False)
            raise ImageNotCached(image_id, refusal=self.encode_refusal(deadline))
        refusal = self.encode_refusal(deadline)
        if refusal is not None:
            self.encoder_admission.refused += 1
            raise refusal
        if self._put is None:
            import ray

            self._put = ray.put
        pixels_ref = self._put(pixels)
        # Counted in flight now, so that requests arriving in this tick see it. The encode runs outside the
        # request's context: Serve cancels a cancelled request's child calls, and this encode is shared by
        # every request for the image (see :meth:`features`, which cancels it when no request waits).
        self.encoder_admission.in_flight += 1
        task = asyncio.get_running_loop().create_task(self._encode(pixels_ref, deadline), context=contextvars.Context())
        entry = CacheEntry(
            features=task,
            image=pixels_ref,
            width=int(pixels.shape[1]),
            height=int(pixels.shape[0]),
            nbytes=self._feature_nbytes + pixels.nbytes,
        )
        evictions = self.entries.evictions
        self.entries.put(image_id, entry)
        self._metrics.size(len(self.entries), self.entries.nbytes, self.entries.evictions - evictions)
        self.encodes += 1
        return entry, False

    def encode_refusal(self, deadline: float | None) -> Exception | None:
        """The error an encode sent now would be refused with, or None; counts nothing.

        - ``BackPressureError`` (503 ``overloaded``): the encoder refused this replica's last encode for a
          full queue, and none of the encodes in flight then has ended since (so its queue is still full).
          A replica added to the encoder frees room only as its encodes end, so the first to end clears it.
        - :class:`DeadlineExceeded` (503 ``deadline``): the encodes in flight and the encoder's time per
          image end after ``deadline`` (absolute ``time.time()`` seconds; None: no deadline).
        """
        full = self._encoder_full
        if full is not None and self.encoder_admission.in_flight > 0:
            return BackPressureError(*full.args)
        return self.encoder_admission.refusal(deadline)

    async def _encode(self, pixels_ref, deadline: float | None):
        try:
            encoded = await self.encoder.encode_image.remote(pixels_ref, deadline)
        except BackPressureError as e:
            self._encoder_full = e
            raise
        except BaseException:
            self._encoder_full = None  # an encode that ended (failed or cancelled) freed a place
            raise
        finally:
            self.encoder_admission.in_flight -= 1
        self._encoder_full = None
        self.encoder_admission.report(encoded.service_s)
        return encoded.features

    async def features(self, image_id: str, entry: CacheEntry, timing: dict):
        """The entry's :class:`ImageFeatures` once they exist; records the wait as ``timing["encode"]``.

        The wait is shielded: a caller cancelled while it waits (its client has gone) leaves the encode to the
        other requests waiting for it; when none is left, the encode is cancelled (Serve then drops it from
        its queue, or from the encoder's batch queue) and the entry dropped.

        Raises:
            Whatever the encode raised (``BackPressureError`` when the encoder is full, ``DeadlineExceeded``);
            the entry is dropped first, so a retry encodes again.
        """
        te = time.perf_counter()
        task = entry.features
        waited = not task.done()  # the encode of this image is still running: this call waits for it
        if waited:
            self._waiting[task] = self._waiting.get(task, 0) + 1
        try:
            features = await asyncio.shield(task)
        except BaseException:  # a failed, refused or cancelled encode must not stay cached
            abandoned = waited and self._leave(task) == 0 and not task.done()
            if abandoned:
                task.cancel()
            if abandoned or (task.done() and (task.cancelled() or task.exception() is not None)):
                self.entries.discard(image_id, entry)
                self._metrics.size(len(self.entries), self.entries.nbytes)
            raise
        if waited:
            self._leave(task)
        timing["encode"] = (time.perf_counter() - te) * 1e3 if waited else 0.0
        return features

    def _leave(self, task: asyncio.Future) -> int:
        """One request fewer waits for ``task``; returns how many still do."""
        left = self._waiting.pop(task, 1) - 1
        if left > 0:
            self._waiting[task] = left
        return left
