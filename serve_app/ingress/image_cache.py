"""The ingress's image-cache protocol: find a request's image, encode it once, hand out its features, and
drop an entry whose features can no longer be read.

Image pixels and features stay in Ray's object store: the cache keeps only ObjectRefs (see
:class:`serve_app.ingress.cache.CacheEntry`) and the stages resolve them. An image is known by its ``image_id``,
the SHA-256 of its uploaded bytes, so a second upload of the same bytes costs neither a decode nor an
encode.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Sequence
from typing import Any

import numpy as np
import ray
from ray.serve.exceptions import BackPressureError
from ray.serve.handle import DeploymentHandle

from deployments.runtime.images import b64_to_bytes, decode_image, image_id_of
from models.sam2_image import feature_nbytes
from serve_app.ingress.cache import CacheEntry, EmbeddingCache
from serve_app.ingress.errors import ApiError
from serve_app.ingress.metrics import IngressMetrics
from serve_app.ingress.schemas import check_prompts_in_image

#: Errors of a cached ref whose object is gone (its owner or its copies died).
_LOST = (ray.exceptions.ObjectLostError, ray.exceptions.OwnerDiedError)


class ImageCache:
    """The images of one ingress replica: an :class:`EmbeddingCache` of ObjectRefs and the encodes that
    fill it.

    Not thread-safe: one per asyncio event loop (the ingress replica).

    Args:
        encoder: handle to the ``ImageEncoder`` deployment.
        max_entries, max_bytes: the cache's bounds (bytes: features plus pixels).
        max_image_pixels: uploads over this many pixels are refused (413) before decoding.
        metrics: where lookups and the cache's size are recorded.

    Raises:
        ValueError: a bound below 1.
    """

    def __init__(
        self, encoder: DeploymentHandle, max_entries: int, max_bytes: int, max_image_pixels: int, metrics: IngressMetrics
    ) -> None:
        self.encoder = encoder
        self.entries = EmbeddingCache(max_entries, max_bytes)
        self.max_image_pixels = max_image_pixels
        self.metrics = metrics
        self._feature_nbytes = feature_nbytes()

    def stats(self) -> dict:
        """Entries, bytes, hits, misses and evictions (see :meth:`EmbeddingCache.stats`)."""
        return self.entries.stats()

    def _get(self, image_id: str) -> CacheEntry | None:
        entry = self.entries.get(image_id)
        self.metrics.cache_lookup(entry is not None)
        return entry

    async def lookup(
        self, req: Any, upload: bytes | None, prompts: Sequence = (), field_prefix: str | None = "prompts"
    ) -> tuple[str, CacheEntry, bool, dict]:
        """The request's image as a cache entry, encoding it if new. ``prompts`` are checked against its
        size first, before any encode (``field_prefix`` as in :func:`check_prompts_in_image`).

        Args:
            req: a request model with ``image`` (``{base64}`` or None) and ``image_id`` (str or None).
            upload: the bytes of a multipart file part, or None.

        Returns:
            (image_id, entry, found in cache, timing_ms with ``decode_image``).

        Raises:
            ApiError: 404 for an unknown ``image_id``, 422 for no image or prompts outside the image.
            InputError: 4xx for bad or too large images (see :func:`decode_image`).
        """
        timing = {"decode_image": 0.0}
        if upload is not None or req.image is not None:
            data = upload if upload is not None else b64_to_bytes(req.image.base64)
            image_id = image_id_of(data)
            entry = self._get(image_id)  # before decoding: a known image costs no decode
            if entry is not None:
                check_prompts_in_image(list(prompts), entry.width, entry.height, field_prefix)
                return image_id, entry, True, timing
            td = time.perf_counter()
            rgb = decode_image(data, self.max_image_pixels)
            timing["decode_image"] = (time.perf_counter() - td) * 1e3
            check_prompts_in_image(list(prompts), rgb.shape[1], rgb.shape[0], field_prefix)
            return image_id, self._start_encode(image_id, rgb), False, timing
        if req.image_id is not None:
            entry = self._get(req.image_id)
            if entry is None:
                raise ApiError(404, "image_not_cached", "image_id is not (or no longer) cached; send the image again", "image_id")
            check_prompts_in_image(list(prompts), entry.width, entry.height, field_prefix)
            return req.image_id, entry, True, timing
        raise ApiError(422, "invalid_request", "image: give image (base64 or file part) or image_id", "image")

    def _start_encode(self, image_id: str, rgb: np.ndarray) -> CacheEntry:
        """Put the pixels in the object store, submit them to the encoder, and cache the entry before any
        ``await``, so that concurrent requests for the same image wait for this encode instead of
        starting another. ``features`` is a task resolving to the features' ObjectRef."""
        image_ref = ray.put(rgb)
        task = asyncio.ensure_future(self.encoder.encode.remote(image_ref)._to_object_ref())
        entry = CacheEntry(
            features=task,
            image=image_ref,
            width=int(rgb.shape[1]),
            height=int(rgb.shape[0]),
            nbytes=self._feature_nbytes + rgb.nbytes,
        )
        self.entries.put(image_id, entry)
        self.metrics.cache_size(len(self.entries), self.entries.nbytes)
        return entry

    async def features(self, image_id: str, entry: CacheEntry, timing: dict) -> ray.ObjectRef:
        """The features' ObjectRef once they exist; records the wait as ``timing["encode"]``.

        Raises:
            Whatever the encode raised; the entry is dropped first, so a retry encodes again.
        """
        te = time.perf_counter()
        try:
            ref = await entry.features
            if not entry.ready:  # our own encode, or one in flight for a concurrent request
                await ref._ready()  # wait for the features without fetching them here
                timing["encode"] = (time.perf_counter() - te) * 1e3
                entry.ready = True
        except Exception:  # a failed or refused encode must not stay cached: a retry encodes again
            self.entries.discard(image_id, entry)
            raise
        timing.setdefault("encode", 0.0)
        return ref

    async def guard(self, image_id: str, entry: CacheEntry, awaitable: Awaitable):
        """Await stage calls that read the image's cached refs.

        A failure drops the entry when its features cannot be read: a failed encode leaves an error in
        place of the features (``_ready`` does not raise), and it must not answer later requests. A stage
        that refused the call (``BackPressureError``) or failed itself (a bad request, a replica that
        died) leaves the entry in place for the retry.

        Raises:
            ApiError: 404 ``image_not_cached`` when the cached refs were lost.
            Whatever the stage calls raised, otherwise.
        """
        try:
            return await awaitable
        except BackPressureError:
            raise
        except _LOST:
            self.entries.discard(image_id, entry)
            raise ApiError(404, "image_not_cached", "the cached data of this image were lost; send the image again", "image_id") from None
        except Exception:
            if not await _features_intact(entry):
                self.entries.discard(image_id, entry)
            raise


async def _features_intact(entry: CacheEntry) -> bool:
    """Whether the entry's features can be read (only asked after a failure: it fetches them)."""
    try:
        await (await entry.features)
        return True
    except Exception:
        return False
