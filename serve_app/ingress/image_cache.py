"""How the ingress reaches an image: by its ``image_id``, at the ``MaskDecoder`` replica that owns it.

No image state stays in the ingress, so any ingress replica serves any request. Every call about an
image goes to ``decoder.options(session_id=image_id)``; the decoder deployment's ``ConsistentHashRouter``
sends it to the same replica each time (adding or removing a replica moves only that replica's keys), and
that replica holds the image's features (:mod:`deployments.runtime.owned_images`).

A request names its image by ``image_id``, by its bytes (``image_id`` is their SHA-256), or both. The
first call carries no pixels; when the owner does not hold the image and the request has its bytes
(resend on miss), the ingress decodes them, checks the prompts against the size, and calls again with the
pixels, which the owner encodes once (``"encode_cached": false``). With ``image_id`` alone a miss is a
404 ``image_not_cached``.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any

import ray
from ray.serve.handle import DeploymentHandle

from deployments.errors import ImageNotCached
from deployments.runtime.images import b64_to_bytes, decode_image, image_id_of
from serve_app.ingress.deadlines import check_deadline
from serve_app.ingress.errors import ApiError

#: What a call about an image raises when its owner died: the owner replica itself (mid-call), or the
#: pixels it had put (a later stage reading them). Either way the image is no longer held.
_OWNER_LOST = (ray.exceptions.RayActorError, ray.exceptions.ObjectLostError, ray.exceptions.OwnerDiedError)


class ImageOwners:
    """Calls about images, each routed to the decoder replica that owns the image, in the decoder
    deployment of the model asked: each model's images (its features) live in its own decoder's replicas,
    so the cache is keyed by (``model_id``, ``image_id``) and two models never share an entry.

    Args:
        decoders: each served model's ``MaskDecoder`` handle (deployed with the key-affinity router), by
            ``model_id``, the default first.
        max_image_pixels: uploads over this many pixels are refused (413) before decoding.
        put: stores decoded pixels for the owner and returns their reference (default ``ray.put``).
    """

    def __init__(
        self,
        decoders: dict[str, DeploymentHandle] | None,
        max_image_pixels: int,
        put: Callable[[Any], Any] | None = None,
    ) -> None:
        self.decoders = dict(decoders or {})
        self.max_image_pixels = max_image_pixels
        self._put = put or ray.put

    def owner(self, image_id: str, model_id: str | None = None) -> DeploymentHandle:
        """The decoder handle that reaches the replica of ``model_id`` (None: the default model) owning
        ``image_id``."""
        decoder = self.decoders[model_id] if model_id is not None else next(iter(self.decoders.values()))
        return decoder.options(session_id=image_id)

    @staticmethod
    def identify(req: Any, upload: bytes | None) -> tuple[str, bytes | None]:
        """(image_id, the image's bytes or None) of a request.

        Args:
            req: a request model with ``image`` (``{base64}`` or None) and ``image_id`` (str or None).
            upload: the bytes of a multipart file part, or None.

        Raises:
            ApiError: 422 without either, or when ``image_id`` is not the SHA-256 of the bytes given.
            InputError: 400 for bytes that are not base64.
        """
        data = upload if upload is not None else (b64_to_bytes(req.image.base64) if req.image is not None else None)
        if data is None:
            if req.image_id is None:
                raise ApiError(422, "invalid_request", "image: give image (base64 or file part) or image_id", "image")
            return req.image_id, None
        image_id = image_id_of(data)
        if req.image_id is not None and req.image_id != image_id:
            raise ApiError(
                422,
                "invalid_request",
                "image_id: is not the SHA-256 of the image sent with it; send the image alone",
                "image_id",
            )
        return image_id, data

    async def call(
        self,
        image_id: str,
        data: bytes | None,
        send: Callable[[Any], Awaitable],
        check_size: Callable[[int, int], None] = lambda w, h: None,
        timing: dict | None = None,
        deadline: float | None = None,
    ):
        """``await send(pixels)``: first without pixels, then, if the owner does not hold the image (or
        died meanwhile) and ``data`` is given, with the decoded pixels (``check_size(width, height)`` runs
        before).

        Args:
            send: makes the stage calls of the request, given ``None`` or the pixels' ObjectRef.
            timing: the request's ``timing_ms``; ``decode_image`` is recorded there.
            deadline: the request's deadline (absolute ``time.time()`` seconds), checked before each send.

        Raises:
            ImageNotCached: 404 on a miss without ``data``; a miss is also an owner that died during the
                call (with ``data`` the call is then sent again, to the key's new owner).
            BackPressureError, DeadlineExceeded: a miss whose owner would refuse the encode now (its
                ``refusal``): raised before the bytes are decoded, so a refusal costs one call.
            InputError: bytes that do not decode, a prompt outside the image.
            DeadlineExceeded: the deadline passed before a send (503 ``deadline``).
        """
        timing = {} if timing is None else timing
        timing.setdefault("decode_image", 0.0)
        check_deadline(deadline, "the image's owner")
        try:
            return await _guard(image_id, send(None))
        except ImageNotCached as miss:
            if data is None:
                raise
            refusal = getattr(miss, "refusal", None)
            if refusal is not None:  # the owner would refuse the encode: answer now, not after decoding
                raise refusal from None
        td = time.perf_counter()
        rgb = decode_image(data, self.max_image_pixels)
        timing["decode_image"] = (time.perf_counter() - td) * 1e3
        check_size(int(rgb.shape[1]), int(rgb.shape[0]))
        check_deadline(deadline, "the image's encode")
        return await _guard(image_id, send(self._put(rgb)))


async def _guard(image_id: str, awaitable):
    """An owner that died mid-request (its replica, or the pixels it held) is a miss: the image is gone
    with it. The router sends the next call to the key's new owner once the controller has dropped the
    dead replica from the ring."""
    try:
        return await awaitable
    except _OWNER_LOST:
        raise ImageNotCached(image_id) from None
