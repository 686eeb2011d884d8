"""serve_app.ingress.http.stage_errors: refusals and dead replicas of a stage become 503 JSON with Retry-After,
typed input errors their documented 4xx; and the image cache keeps or drops entries after a failure."""

from __future__ import annotations

import asyncio

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


# --- the ingress's cache entries after a failed stage call -----------------------------------------


def _cache():
    from serve_app.ingress.image_cache import ImageCache

    return ImageCache(encoder=None, max_entries=4, max_bytes=1000, max_image_pixels=100, metrics=None)


async def _failing(exc: Exception):
    raise exc


def _entry(features=None):
    from serve_app.ingress.cache import CacheEntry

    return CacheEntry(features=features, width=8, height=8, nbytes=10)


def _features(intact: bool) -> asyncio.Future:
    """An entry's features as the cache holds them: a task resolving to a ref that yields them (here a
    future that holds them, or the encode's error). Call inside the event loop."""
    loop = asyncio.get_running_loop()
    ref = loop.create_future()
    if intact:
        ref.set_result("features")
    else:
        ref.set_exception(RuntimeError("the encode failed"))
    task = loop.create_future()
    task.set_result(ref)
    return task


@pytest.mark.parametrize(
    ("exc", "intact", "kept"),
    [
        (BackPressureError(num_queued_requests=1, max_queued_requests=1), False, True),  # refused: never read the features
        (ActorDiedError(), True, True),  # the stage died, the features are fine
        (ValueError("dimension mismatch"), True, True),
        (ActorDiedError(), False, False),  # the encode behind the features failed
        (RuntimeError("encoder failed"), False, False),
    ],
)
def test_guard_drops_the_entry_only_when_its_features_are_bad(exc, intact, kept):
    cache = _cache()

    async def go():
        entry = _entry(_features(intact))
        cache.entries.put("img", entry)
        with pytest.raises(type(exc)):
            await cache.guard("img", entry, _failing(exc))

    asyncio.run(go())
    assert ("img" in cache.entries) is kept


def test_a_refused_encode_leaves_no_entry():
    async def go(cache):
        refused = asyncio.get_running_loop().create_future()
        refused.set_exception(BackPressureError(num_queued_requests=1, max_queued_requests=1))
        entry = _entry(refused)
        cache.entries.put("img", entry)
        with pytest.raises(BackPressureError):
            await cache.features("img", entry, {})

    cache = _cache()
    asyncio.run(go(cache))
    assert "img" not in cache.entries  # the retry encodes again


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
