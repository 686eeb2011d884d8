"""KeyAffinityRouter on a live Serve: a caller's concurrent calls all answer, and each key keeps one replica.

Ray 2.60's own ``ConsistentHashRouter`` never answers the second and later of several concurrent calls
made while one request is handled (they share its ``internal_request_id``; see
:mod:`deployments.runtime.affinity`). The ingress makes such calls, so this is the router it relies on.
"""

from __future__ import annotations

import asyncio

import pytest

from deployments.runtime.affinity import ROUTER_CLASS
from tests.integration.conftest import QUICK_DRAIN

KEYS = [f"image-{k}" for k in range(12)]


def _probe_app():
    from ray import serve
    from ray.serve.config import RequestRouterConfig

    router = RequestRouterConfig(request_router_class=ROUTER_CLASS, request_router_kwargs={"num_fallback_replicas": 0})

    @serve.deployment(num_replicas=2, ray_actor_options={"num_cpus": 0}, max_ongoing_requests=64, request_router_config=router, **QUICK_DRAIN)
    class Owner:
        async def who(self, key: str) -> str:
            await asyncio.sleep(0.01)  # keep calls in flight together
            return serve.get_replica_context().replica_id.unique_id

    @serve.deployment(ray_actor_options={"num_cpus": 0}, **QUICK_DRAIN)
    class Caller:
        def __init__(self, owner):
            self._owner = owner

        async def gather(self, keys: list[str]) -> list[str]:
            # a hang guard, not a timing check: the upstream router never answers these
            calls = (self._owner.options(session_id=key).who.remote(key) for key in keys)
            return await asyncio.wait_for(asyncio.gather(*calls), 120)

    return Caller.bind(Owner.bind())


@pytest.fixture(scope="module")
def caller(app_url):
    from ray import serve

    handle = serve.run(_probe_app(), name="affinity_probe", route_prefix=None)
    yield handle
    serve.delete("affinity_probe")


def test_concurrent_calls_of_one_request_all_answer_and_keep_their_owner(caller):
    first = caller.gather.remote(KEYS * 3).result(timeout_s=180)  # 36 calls at once, each key 3 times
    owner = dict(zip(KEYS, first))
    assert first == [owner[k] for k in KEYS * 3]  # a key's concurrent calls reach one replica
    assert len(set(owner.values())) == 2  # and the keys spread over both

    again = caller.gather.remote(list(reversed(KEYS))).result(timeout_s=180)
    assert again == [owner[k] for k in reversed(KEYS)]  # the same owners on a later request


def test_one_key_many_concurrent_calls(caller):
    out = caller.gather.remote(["same"] * 16).result(timeout_s=180)
    assert len(out) == 16 and len(set(out)) == 1
