"""The examples routes that move a collection as one file (``GET /v1/examples/export``, ``POST
/v1/examples/import``), and the one retry of an idempotent store call whose replica died (also used by
``POST /v1/examples``).

The two routes are module-level routes of :data:`serve_app.ingress.http.api` (as ``/ui`` is), registered
when :mod:`serve_app.app` imports this module; they reach the ``Ingress`` replica that serves them, and so
its handles and args, through :func:`ingress` (what Serve injects as ``self`` into the ingress's own
methods).

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

from fastapi import Depends, Request
from fastapi.responses import StreamingResponse
from ray.exceptions import RayActorError

from deployments.runtime.example_file import (
    MEDIA_TYPE,
    ExampleHeader,
    encode_line,
    end_line,
    point_lines,
    read_examples,
)
from deployments.runtime.store_checks import check_collection_name
from deployments.runtime.store_pages import TRANSFER_PAGE
from serve_app.ingress.errors import ApiError
from serve_app.ingress.http import api, ingress, read_body, request_id, stage_errors
from serve_app.ingress.params import CollectionQuery, TargetCollectionQuery
from serve_app.ingress.responses import EXAMPLES_FILE, ImportResult

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


async def export_stream(retriever, header: ExampleHeader, request_id: str, page_size: int = TRANSFER_PAGE) -> AsyncIterator[bytes]:
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
                lambda _, at=offset: retriever.export_page.remote(header.collection, at, page_size), "export page", request_id
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


def embedder_warnings(from_file: dict | None, service: dict | None) -> list[str]:
    """Warnings for an import whose vectors may come from another embedder than this service's.

    Args:
        from_file: the header's ``embedder`` (``{"model_id", "weights"}``), or None.
        service: this service's embedder, the same keys, or None when it did not answer.
    """
    if not from_file or not service:
        return []
    theirs = (from_file.get("model_id"), from_file.get("weights"))
    ours = (service.get("model_id"), service.get("weights"))
    if theirs == ours:
        return []
    return [
        f"the file's vectors were exported by a service embedding with {theirs[0]} ({theirs[1]} weights); this "
        f"service embeds with {ours[0]} ({ours[1]} weights), so its queries are not comparable with them"
    ]


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


@api.get("/v1/examples/export", **api.route_spec(None, 404, 422, 503, ok_content=EXAMPLES_FILE, streams=True))
@stage_errors
async def export_examples(request: Request, collection: CollectionQuery = "default", app=Depends(ingress)) -> StreamingResponse:
    """The collection as an examples file (NDJSON: header, one line per example, end), streamed page by
    page. See docs/http-api.md, "Export and import"."""
    info = await app._collection(collection)
    header = ExampleHeader(collection, info["dim"], await embedder_id(app))
    lines = export_stream(app.retriever, header, request_id(request))
    disposition = {"Content-Disposition": f'attachment; filename="{collection}.examples.jsonl"'}
    return StreamingResponse(lines, media_type=MEDIA_TYPE, headers=disposition)


@api.post("/v1/examples/import", **api.route_spec(ImportResult, 400, 409, 413, 415, 422, 503, body=EXAMPLES_FILE))
@stage_errors
async def import_examples(request: Request, collection: TargetCollectionQuery = None, app=Depends(ingress)) -> dict:
    """Upsert an examples file (``application/x-ndjson``, at most ``limits.max_import_bytes``) into
    ``collection`` (default: the file's) under the file's ids: importing twice stores each example once.
    Everything is checked before anything is written (4xx naming ``line N.<key>``)."""
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype != MEDIA_TYPE:
        raise ApiError(415, "unsupported_media_type", f"send the examples file as {MEDIA_TYPE}")
    body = await read_body(request, app.args.limits.max_import_bytes)
    header, examples = await asyncio.to_thread(read_examples, body.splitlines())
    del body
    target = check_collection_name(header.collection if collection is None else collection)
    result = await retry_if_replica_died(
        lambda _: app.retriever.import_points.remote(target, examples, header.dim), "import examples", request_id(request)
    )
    warnings = embedder_warnings(header.embedder, await embedder_id(app))
    return {"collection": target, **result, **({"warnings": warnings} if warnings else {})}


async def embedder_id(app) -> dict | None:
    """``{"model_id", "weights"}`` of the service's embedder, or None when it does not answer in time."""
    try:
        info = await asyncio.wait_for(app.embedder.info.remote(), timeout=app.args.readiness_timeout_s)
    except Exception:
        return None
    return {"model_id": info["model_id"], "weights": info["weights"]}
