"""deployments.runtime.video_sessions.SessionStore: bounds, TTL, tombstones (with a test clock)."""

from __future__ import annotations

import asyncio

import pytest

from deployments.errors import SessionLost, SessionsFull, UnknownSession
from deployments.runtime.video_sessions import SessionStore


class Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def _open(store: SessionStore, sid: str, nbytes: int = 10):
    store.reserve(sid, nbytes)
    return store.add(sid, object(), nbytes)


def test_count_and_byte_bounds_refuse_new_sessions_only():
    store = SessionStore(max_sessions=2, max_bytes=100, ttl_s=60, retry_after_s=7, clock=Clock())
    _open(store, "a", 40)
    with pytest.raises(SessionsFull) as e:
        store.reserve("b", 61)  # 40 + 61 > 100 bytes
    assert e.value.retry_after_s == 7 and e.value.status == 503
    _open(store, "b", 60)
    with pytest.raises(SessionsFull, match="at most 2"):
        store.reserve("c", 0)
    assert store.get("a") and store.get("b")  # nothing was evicted
    assert store.stats()["refused"] == 2
    store.close("a")
    _open(store, "c", 10)


def test_sessions_being_opened_count_against_the_bound():
    store = SessionStore(max_sessions=2, max_bytes=100, ttl_s=60, clock=Clock())
    store.reserve("a", 10)
    store.reserve("b", 10)  # both opening at once
    with pytest.raises(SessionsFull):
        store.reserve("c", 10)
    store.release("b")  # b failed to open
    store.reserve("c", 10)
    store.add("a", object(), 30)
    assert store.bytes == 40 and len(store) == 1


def test_ttl_tombstones_and_lost_ids():
    clock = Clock()
    store = SessionStore(max_sessions=4, max_bytes=10**6, ttl_s=10, max_tombstones=2, clock=clock)
    _open(store, "a")
    _open(store, "b")
    clock.t = 9
    store.get("a")  # a call restarts a's idle time
    clock.t = 15
    assert store.get("a")  # lazily checked: b expired, a did not
    with pytest.raises(UnknownSession):
        store.get("b")
    with pytest.raises(SessionLost):
        store.get("never-held")
    store.close("a")
    with pytest.raises(UnknownSession):
        store.get("a")
    _open(store, "c")
    clock.t = 100
    assert store.sweep() == ["c"]
    assert len(store) == 0
    with pytest.raises(SessionLost):  # only the 2 newest ended ids are remembered
        store.get("b")
    with pytest.raises(UnknownSession):
        store.get("c")
    assert store.stats()["expired"] == 2 and store.stats()["closed"] == 1


def test_a_session_in_a_call_does_not_expire():
    clock = Clock()
    store = SessionStore(max_sessions=4, max_bytes=10**6, ttl_s=10, clock=clock)
    entry = _open(store, "a")

    async def held():
        async with entry.lock:
            clock.t = 50
            assert store.sweep() == []
        return store.sweep()

    assert asyncio.run(held()) == ["a"]


def test_bad_bounds():
    with pytest.raises(ValueError, match="greater than 0"):
        SessionStore(0, 10, 10)
    with pytest.raises(ValueError, match="ttl_s"):
        SessionStore(1, 10, 0)


class _Records:
    """A tracker's record stream that yields ``n`` frames, then fails with ``exc``."""

    def __init__(self, n: int, exc: Exception) -> None:
        self.n, self.exc, self.cancelled = n, exc, False

    def __aiter__(self):
        return self

    async def __anext__(self):
        if self.n == 0:
            raise self.exc
        self.n -= 1
        return {"type": "frame", "frame_index": 0, "propagate_ms": 1.0, "objects": []}

    def cancel(self) -> None:
        self.cancelled = True


@pytest.mark.parametrize("lost_type, code", [(True, "session_lost"), (False, "internal")])
def test_a_holder_lost_mid_stream_ends_with_session_lost(lost_type, code):
    """The stream's last line names what happened: the session's replica died (``session_lost``, as a
    call would answer 404), or any other failure (``internal``, no details)."""
    import asyncio
    import json
    import time

    from ray.exceptions import RayActorError

    from serve_app.ingress.errors import ApiError
    from serve_app.ingress.video_route import ndjson_lines

    records = _Records(2, RayActorError() if lost_type else RuntimeError("boom"))
    lost = (RayActorError, lambda: ApiError(404, "session_lost", "lost", "session_id"))

    async def lines():
        return [json.loads(line) async for line in ndjson_lines("rid", records, {}, {}, time.perf_counter(), lambda t: None, lost)]

    out = asyncio.run(lines())
    assert [x["type"] for x in out] == ["start", "frame", "frame", "error"]
    assert out[-1]["error"]["code"] == code and out[-1]["error"]["request_id"] == "rid"
    assert "boom" not in json.dumps(out) and records.cancelled
