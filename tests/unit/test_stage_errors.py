"""serve_app.http.stage_errors: refusals and dead replicas of a stage become 503 JSON with Retry-After."""

from __future__ import annotations

import asyncio

import pytest
from ray.exceptions import ActorDiedError
from ray.serve.exceptions import BackPressureError, DeploymentUnavailableError

from serve_app.errors import ApiError
from serve_app.http import stage_errors


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


@pytest.mark.parametrize("exc", [ActorDiedError(), DeploymentUnavailableError("samgraph#Embedder")])
def test_dead_or_missing_replica_is_503_unavailable(exc):
    err = _raised(exc)
    assert (err.status, err.code) == (503, "unavailable")
    assert err.headers == {"Retry-After": "1"}


def test_keeps_the_route_signature_for_fastapi():
    import inspect

    route = _route(None)
    assert list(inspect.signature(route).parameters) == ["self", "x"]
    assert route.__qualname__.endswith("route") and inspect.iscoroutinefunction(route)
