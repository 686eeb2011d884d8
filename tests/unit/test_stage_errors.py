"""serve_app.ingress.http.stage_errors: refusals and dead replicas of a stage become 503 JSON with Retry-After,
typed input errors their documented 4xx; and the image cache keeps or drops entries after a failure."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest
from ray.exceptions import ActorDiedError
from ray.serve.exceptions import BackPressureError, DeploymentUnavailableError, RayServeException

from deployments.errors import DimensionMismatch, ImageTooLarge, InvalidImage, InvalidRequest, UnknownCollection
from serve_app.ingress.errors import ApiError
from serve_app.ingress.http import stage_errors


def _route(exc: Exception | None):
    @stage_errors
    async def route(self, x: int) -> dict:
        if exc is not None:
            raise exc
        return {"x": x}

    return route


def _raised(exc: Exception) -> ApiError:
    with pytest.raises(ApiError) as info:
        asyncio.run(_route(exc)(None, x=1))
    return info.value


def test_passes_results_and_other_errors_through():
    assert asyncio.run(_route(None)(None, x=3)) == {"x": 3}
    with pytest.raises(ValueError):
        asyncio.run(_route(ValueError("bad"))(None, x=1))
    bad_request = ApiError(422, "invalid_request", "x: bad", "x")
    assert _raised(bad_request) is bad_request


@pytest.mark.parametrize(("retry_after_s", "header"), [(None, "1"), (2, "2"), (0.2, "1"), (4.5, "5")])
def test_backpressure_is_503_overloaded_with_retry_after(retry_after_s, header):
    err = _raised(BackPressureError(num_queued_requests=1, max_queued_requests=1, retry_after_s=retry_after_s))
    assert (err.status, err.code, err.field) == (503, "overloaded", None)
    assert err.headers == {"Retry-After": header}
    assert err.body("rid") == {
        "error": {"code": "overloaded", "message": err.message, "field": None, "request_id": "rid"}
    }
    assert isinstance(err.__cause__, BackPressureError)  # logged, one line, by the ApiError handler


def _upstream_died() -> RayServeException:
    """What Serve's router raises for a chained call whose upstream replica died."""
    e = RayServeException("Request to deployment 'Retriever' failed because an upstream actor died")
    e.__cause__ = ActorDiedError()
    return e


@pytest.mark.parametrize("exc", [ActorDiedError(), DeploymentUnavailableError("samgraph#Embedder"), _upstream_died()])
def test_dead_or_missing_replica_is_503_unavailable(exc):
    err = _raised(exc)
    assert (err.status, err.code) == (503, "unavailable")
    assert err.headers == {"Retry-After": "1"}


def test_other_serve_errors_pass_through():
    with pytest.raises(RayServeException):
        asyncio.run(_route(RayServeException("something else"))(None, x=1))


def test_keeps_the_route_signature_for_fastapi():
    import inspect

    route = _route(None)
    assert list(inspect.signature(route).parameters) == ["self", "x"]
    assert route.__qualname__.endswith("route") and inspect.iscoroutinefunction(route)


# --- the images a decoder replica owns ---------------------------------------------------------------


class _Encoder:
    """The encoder deployment's handle as OwnedImages uses it: ``encode_image.remote(pixels, deadline)`` is
    awaitable and answers an :class:`EncodedImage`."""

    def __init__(self, fail: Exception | None = None) -> None:
        self.calls = 0
        self.fail = fail
        self.encode_image = self

    def remote(self, pixels, deadline=None):
        from deployments.contracts import EncodedImage

        self.calls += 1

        async def run():
            await asyncio.sleep(0)
            if self.fail is not None:
                raise self.fail
            return EncodedImage(f"features of {pixels.shape}", 2.0)

        return run()


def _owned(encoder: _Encoder):
    from deployments.runtime.owned_images import OwnedImages

    return OwnedImages(encoder, max_entries=4, max_bytes=10**9, feature_nbytes=10, put=lambda pixels: pixels)


PIXELS = np.zeros((8, 6, 3), np.uint8)


def test_an_image_is_encoded_once_however_many_requests_carry_it():
    from deployments.errors import ImageNotCached

    encoder = _Encoder()
    images = _owned(encoder)

    async def go():
        with pytest.raises(ImageNotCached):
            images.entry("img", None)  # first call of a request: no pixels, not held
        (a, held_a), (b, held_b) = images.entry("img", PIXELS), images.entry("img", PIXELS)
        timing: dict = {}
        features = await asyncio.gather(images.features("img", a, timing), images.features("img", b, {}))
        return held_a, held_b, a is b, features, timing, images.entry("img", None)[1]

    held_a, held_b, same, features, timing, held_later = asyncio.run(go())
    assert (held_a, held_b, same) == (False, True, True)  # the second request waits for the first's encode
    assert encoder.calls == 1 and features == ["features of (8, 6, 3)"] * 2
    assert timing["encode"] >= 0 and held_later is True
    stats = images.stats()
    assert (stats["encodes"], stats["entries"], stats["bytes"]) == (1, 1, 10 + PIXELS.nbytes)
    assert (stats["hits"], stats["misses"]) == (2, 1)  # the retry with pixels is not a second miss


def test_a_refused_encode_leaves_no_entry():
    encoder = _Encoder(fail=BackPressureError(num_queued_requests=1, max_queued_requests=1))
    images = _owned(encoder)

    async def go():
        entry, _ = images.entry("img", PIXELS)
        with pytest.raises(BackPressureError):
            await images.features("img", entry, {})

    asyncio.run(go())
    assert "img" not in images.entries  # the retry encodes again
    encoder.fail = None

    async def again():
        entry, held = images.entry("img", PIXELS)
        return held, await images.features("img", entry, {})

    assert asyncio.run(again()) == (False, "features of (8, 6, 3)") and encoder.calls == 2


# --- typed input errors from the stages and the runtime --------------------------------------------


@pytest.mark.parametrize(
    ("exc", "status", "code", "field"),
    [
        (InvalidImage("bytes are not an image", "image"), 400, "invalid_image", "image"),
        (ImageTooLarge("over the limit", "prompts[0].image"), 413, "image_too_large", "prompts[0].image"),
        (DimensionMismatch("queries are 16-d, the collection holds 512-d vectors"), 409, "dimension_mismatch", "collection"),
        (UnknownCollection("dogs"), 404, "unknown_collection", "collection"),
        (InvalidRequest("top_k must be an integer in 1..100; got 0", "top_k"), 422, "invalid_request", "top_k"),
    ],
)
def test_input_errors_become_their_documented_4xx(exc, status, code, field):
    err = _raised(exc)
    assert (err.status, err.code, err.field) == (status, code, field)
    assert err.message == exc.message


def test_an_input_error_raised_in_a_replica_keeps_its_rule():
    """Ray hands a stage's exception to the caller as a RayTaskError that is also the stage's class; the
    route still answers the stage's 4xx, with the message's last line only (no remote traceback)."""
    import pickle

    from ray.exceptions import RayTaskError

    cause = pickle.loads(pickle.dumps(DimensionMismatch("queries are 16-d, the collection holds 512-d vectors")))
    wrapped = RayTaskError("Retriever.add", "Traceback (most recent call last):\n  ...", cause).as_instanceof_cause()
    assert isinstance(wrapped, DimensionMismatch)
    err = _raised(wrapped)
    assert (err.status, err.code, err.field) == (409, "dimension_mismatch", "collection")
    assert err.message == "queries are 16-d, the collection holds 512-d vectors"


def test_plain_value_errors_are_not_mistaken_for_input_errors():
    with pytest.raises(ValueError, match="bad"):
        asyncio.run(_route(ValueError("bad"))(None, x=1))


def _jpeg() -> bytes:
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.full((8, 6, 3), 128, np.uint8)).save(buf, format="JPEG")
    return buf.getvalue()


def test_an_owner_lost_mid_request_is_a_miss_and_the_image_is_resent():
    """The owner replica died during the call: with the bytes the call goes again with pixels (the key's
    new owner encodes them); by image_id alone it is a 404 image_not_cached."""
    import ray

    from deployments.errors import ImageNotCached
    from serve_app.ingress.image_cache import ImageOwners

    owners = ImageOwners(decoders=None, max_image_pixels=10**6, put=lambda rgb: ("ref", rgb.shape))
    sent = []

    async def send(pixels):
        sent.append(pixels)
        if pixels is None:
            raise ray.exceptions.ActorDiedError()
        return "masks"

    data = _jpeg()
    sizes = []
    out = asyncio.run(owners.call("img", data, send, lambda w, h: sizes.append((w, h))))
    assert out == "masks" and sent == [None, ("ref", (8, 6, 3))] and sizes == [(6, 8)]
    sent.clear()
    with pytest.raises(ImageNotCached) as info:
        asyncio.run(owners.call("img", None, send))
    assert (info.value.status, info.value.code, info.value.field) == (404, "image_not_cached", "image_id") and sent == [None]


def test_a_deadline_refusal_is_503_deadline_with_retry_after():
    import pickle

    from ray.exceptions import RayTaskError

    from deployments.errors import DeadlineExceeded

    cause = pickle.loads(pickle.dumps(DeadlineExceeded("encode would take about 12.000 s", 11.2)))
    wrapped = RayTaskError("ImageEncoder.encode_image", "Traceback ...", cause).as_instanceof_cause()
    err = _raised(wrapped)
    assert (err.status, err.code, err.field, err.headers) == (503, "deadline", None, {"Retry-After": "12"})


def test_a_miss_the_owner_would_refuse_is_answered_before_the_bytes_are_decoded():
    from deployments.errors import DeadlineExceeded, ImageNotCached
    from serve_app.ingress.image_cache import ImageOwners

    owners = ImageOwners(decoders=None, max_image_pixels=10**6, put=lambda rgb: pytest.fail("pixels were put"))
    sent = []
    refusal = DeadlineExceeded("encode would take about 9.000 s", 4)

    async def send(pixels):  # the owner's miss, as it reaches the ingress across Ray
        from ray.exceptions import RayTaskError

        sent.append(pixels)
        raise RayTaskError("MaskDecoder.segment", "Traceback ...", ImageNotCached("img", refusal=refusal)).as_instanceof_cause()

    # not an image: decoding it would be a 400 invalid_image, so a 503 shows it was never decoded
    with pytest.raises(DeadlineExceeded) as info:
        asyncio.run(owners.call("img", b"not a jpeg", send))
    assert info.value is refusal and sent == [None]
    with pytest.raises(ImageNotCached):  # without the bytes it stays a 404: the client must send them
        asyncio.run(owners.call("img", None, send))
