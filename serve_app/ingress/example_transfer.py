"""What the examples routes (:mod:`serve_app.ingress.routes.examples`) need besides the routes: the
examples file streamed page by page (``GET /v1/examples/export``), the refusal of an import from
another embedder (``POST /v1/examples/import``, 409 ``embedder_mismatch``), and the one retry of an
idempotent store call whose replica died (those two and ``POST /v1/examples``).

The file format and its checks are :mod:`deployments.runtime.example_file`; the store's side is
:meth:`deployments.runtime.vectorstore.ExampleStore.export_page` and ``import_points``. The Retriever
writes to whichever store it was built with, so exporting from a service on the embedded store and
importing into one on a Qdrant server (or back) moves a collection between them.
"""

import asyncio
import json
import logging
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TypeVar

from ray.exceptions import RayActorError

from deployments.errors import EmbedderMismatch
from deployments.runtime.example_file import ExampleHeader, encode_line, end_line, point_lines
from deployments.runtime.store_pages import TRANSFER_PAGE
from serve_app.ingress.errors import ApiError

log = logging.getLogger("ray.serve")
T = TypeVar("T")


async def retry_if_replica_died(call: Callable[[int], Awaitable[T]], what: str, request_id: str) -> T:
    """``await call(0)``; if the replica that took it died (``RayActorError``), ``await call(1)`` once.

    Only for calls that are safe to repeat: reads, and writes under ids fixed before the first try (an
    upsert of the same points). Serve routes the second try to the replacement replica once it runs (the
    router waits for it), so a client sees a slow 200 instead of a 503. A second death raises, and the
    route answers 503 ``unavailable`` (:func:`serve_app.ingress.http.stage_errors`).

    Args:
        call: makes the call; its argument is the attempt, 0 or 1.
        what: the call, for the log line.
        request_id: the request's id, for the log line.
    """
    try:
        return await call(0)
    except RayActorError as e:
        log.warning("request %s: %s: the replica died (%s); trying once more", request_id, what, type(e).__name__)
        return await call(1)


async def export_stream(
    retriever, header: ExampleHeader, request_id: str, page_size: int = TRANSFER_PAGE
) -> AsyncIterator[bytes]:
    """The examples file of ``header.collection``, streamed: the header, each page's point lines as the
    retriever reads it (one page in memory at a time), then the end line.

    A page whose replica died is asked again from the same offset (a read). A failure midway ends the
    stream with an ``error`` line instead of the end line, so the file reads as truncated.

    Args:
        retriever: handle to the ``Retriever``.
        header: the file's header (collection, dim, embedder).
        request_id: for the log.
        page_size: examples per page.
    """
    yield encode_line(header.record())
    n, offset = 0, None
    try:
        while True:
            page, offset = await retry_if_replica_died(
                lambda _, at=offset: retriever.export_page.remote(header.collection, at, page_size),
                "export page",
                request_id,
            )
            n += len(page)
            if len(page):
                yield point_lines(page)
            if offset is None:
                break
    except Exception as e:
        log.error("request %s: export of %r failed after %d examples", request_id, header.collection, n, exc_info=e)
        err = ApiError(500, "internal", f"the export failed after {n} examples; see the server log for this request id")
        yield (json.dumps({"type": "error", **err.body(request_id)}) + "\n").encode()
        return
    yield end_line(n)


async def service_embedder(embedder, timeout_s: float) -> dict:
    """``{"model_id", "weights", "identity", ...}`` of the service's embedder (its ``info()``).

    Raises:
        ApiError: 503 ``unavailable`` when it does not answer within ``timeout_s``: an import or export
            cannot be checked without it.
    """
    try:
        return await asyncio.wait_for(embedder.info.remote(), timeout=timeout_s)
    except Exception as e:
        log.warning("the embedder did not answer info() (%s)", type(e).__name__)
        raise ApiError(503, "unavailable", "the embedder is not answering; retry later") from None


def check_file_embedder(header: ExampleHeader, service: str) -> None:
    """Refuse an examples file whose vectors another embedder made than the service's (``service``, an
    identity), or whose embedder is unknown: 409 ``embedder_mismatch`` naming both, field ``line 1.embedder``.
    """
    theirs = header.embedder_id
    if theirs == service:
        return
    if theirs is None:
        raise EmbedderMismatch(
            "the file does not say which embedder made its vectors (written before samgraph recorded it, with "
            f"random weights or none named); this service embeds with {service}, and vectors of an unknown "
            "embedder are refused",
            "line 1.embedder",
        )
    raise EmbedderMismatch(
        f"the file's vectors were made by embedder {theirs}; this service embeds with {service}, so its queries "
        "are not comparable with them (even at the same dimension)",
        "line 1.embedder",
    )


async def store_example(retriever, collection: str, embedded, label: str, payload: dict, rid: str) -> list[str]:
    """Store one embedded example under an id fixed before the write, so that the one retry of
    :func:`retry_if_replica_died` stores it once; the retry takes the embedder's answer itself.

    Args:
        retriever: handle to the ``Retriever``.
        collection: the collection.
        embedded: the embedder's ``DeploymentResponse`` (an ``EmbedResult`` of one crop).
        label: the example's label.
        payload: its extra fields.
        rid: the request id, for the log.

    Returns:
        The example's id, in a list.
    """
    ids = [str(uuid.uuid4())]

    async def store(attempt: int) -> list[str]:
        embeddings = embedded if attempt == 0 else await embedded
        return await retriever.add_chain.remote(collection, embeddings, [label], [payload], ids)

    return await retry_if_replica_died(store, "store the example", rid)
