"""serve_app.ingress.example_transfer: a store call whose replica died is tried once more (the same example
id, so it is stored once), a second death reaches the route as the 503 of a dead replica, and an export
asks a page again from the same offset but ends with an error line on any other failure.

The retriever here is a stand-in for the handle (its ``.remote`` calls are coroutines); what a real
replica's death looks like end to end is tests/integration/test_retriever_kill.py.
"""

from __future__ import annotations

import asyncio
import json
import uuid

import numpy as np
import pytest
from ray.exceptions import ActorDiedError

from deployments.errors import EmbedderMismatch
from deployments.runtime.example_file import ExampleHeader, Examples, read_examples
from serve_app.ingress.errors import ApiError
from serve_app.ingress.example_transfer import check_file_embedder, export_stream, service_embedder, store_example
from serve_app.ingress.http import stage_errors


class Method:
    """``handle.method.remote(*args)``: a coroutine answering each call in turn from ``outcomes``."""

    def __init__(self, outcomes):
        self.outcomes, self.calls = list(outcomes), []

    def remote(self, *args):
        self.calls.append(args)
        outcome = self.outcomes.pop(0)

        async def answer():
            if isinstance(outcome, BaseException):
                raise outcome
            return outcome

        return answer()


class Embedded:
    """An embedder's response: awaitable, as a ``DeploymentResponse`` is, any number of times."""

    def __await__(self):
        yield from asyncio.sleep(0).__await__()
        return "embedding"


def test_a_write_whose_replica_died_is_retried_under_the_same_id():
    retriever = type("R", (), {})()
    retriever.add_chain = Method([ActorDiedError(), ["stored"]])
    embedded = Embedded()
    assert asyncio.run(store_example(retriever, "c", embedded, "cat", {"a": 1}, "rid")) == ["stored"]
    (c0, e0, l0, p0, ids0), (c1, e1, l1, p1, ids1) = retriever.add_chain.calls
    assert e0 is embedded and e1 == "embedding"  # the retry passes the embedder's answer itself
    assert ids0 == ids1 and str(uuid.UUID(ids0[0])) == ids0[0]
    assert (c0, l0, p0) == (c1, l1, p1) == ("c", ["cat"], [{"a": 1}])


def test_a_second_death_is_the_503_of_a_dead_replica():
    retriever = type("R", (), {})()
    retriever.add_chain = Method([ActorDiedError(), ActorDiedError()])

    @stage_errors
    async def route(self):
        return await store_example(retriever, "c", Embedded(), "cat", {}, "rid")

    with pytest.raises(ApiError) as info:
        asyncio.run(route(None))
    assert (info.value.status, info.value.code, info.value.headers) == (503, "unavailable", {"Retry-After": "1"})
    assert len(retriever.add_chain.calls) == 2


def _page(n: int, seed: int) -> Examples:
    rng = np.random.default_rng(seed)
    return Examples([str(uuid.uuid4()) for _ in range(n)], rng.standard_normal((n, 3)).astype(np.float32), ["x"] * n, [{}] * n)


async def _collect(stream) -> bytes:
    return b"".join([chunk async for chunk in stream])


def test_export_asks_a_page_again_after_a_death_and_reports_other_failures():
    first, second = _page(2, 0), _page(1, 1)
    retriever = type("R", (), {})()
    retriever.export_page = Method([(first, "offset-1"), ActorDiedError(), (second, None)])
    body = asyncio.run(_collect(export_stream(retriever, ExampleHeader("c", 3), "rid", page_size=2)))
    assert [call[1] for call in retriever.export_page.calls] == [None, "offset-1", "offset-1"]
    _, examples = read_examples(body.splitlines())
    assert examples.ids == first.ids + second.ids

    retriever.export_page = Method([(first, "offset-1"), RuntimeError("disk gone")])
    lines = asyncio.run(_collect(export_stream(retriever, ExampleHeader("c", 3), "rid"))).splitlines()
    last = json.loads(lines[-1])
    assert last["type"] == "error" and last["error"]["code"] == "internal" and "after 2 examples" in last["error"]["message"]
    assert len(lines) == 4  # header, 2 points, the error: no end line, so the file reads as truncated


def test_check_file_embedder():
    ours = "open_clip:ViT-B-32:laion2b_s34b_b79k@random:seed0"
    theirs = "open_clip:ViT-B-32:laion2b_s34b_b79k@random:seed1"  # same architecture and dimension
    check_file_embedder(ExampleHeader("c", 512, {"id": ours}), ours)
    for embedder, named in (({"id": theirs}, theirs), (None, "does not say"), ({"model_id": "m", "weights": "random"}, "does not say")):
        with pytest.raises(EmbedderMismatch) as info:
            check_file_embedder(ExampleHeader("c", 512, embedder), ours)
        err = info.value
        assert (err.status, err.code, err.field) == (409, "embedder_mismatch", "line 1.embedder")
        assert ours in err.message and named in err.message


def test_service_embedder_unavailable_is_a_503():
    class Slow:
        class info:
            @staticmethod
            async def remote():
                await asyncio.sleep(1)

    with pytest.raises(ApiError) as info:
        asyncio.run(service_embedder(Slow(), timeout_s=0.01))
    assert (info.value.status, info.value.code) == (503, "unavailable")