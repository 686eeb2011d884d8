"""The FastAPI app (:func:`make_api`: the routers, the middlewares, the error handlers, the annotation
page) and request-body parsing (JSON or multipart).

Every error leaves as ``{"error": {"code", "message", "field", "request_id"}}``; unexpected ones are
logged with the request id and answered 500 without a stack trace. API keys, the rate limit and CORS are
middlewares of :mod:`serve_app.ingress.access`, inside the request-id middleware. A stage that refuses work (its queue
is full) or has no live replica gives a 503 with ``Retry-After`` (:func:`stage_errors`).
"""

import functools
import json
import logging
import math
import time
import uuid
from collections.abc import Iterable
from pathlib import Path

from fastapi import APIRouter, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, RedirectResponse
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, ValidationError
from ray.exceptions import RayActorError
from ray.serve.exceptions import BackPressureError, DeploymentUnavailableError, RayServeException
from starlette.exceptions import HTTPException as StarletteHTTPException

from deployments.errors import InputError
from serve_app.ingress.access import CorsFromPolicy, RequireKey
from serve_app.ingress.errors import ApiError, from_validation_error
from serve_app.ingress.metrics import ingress_metrics
from serve_app.ingress.openapi import DescribedAPI

log = logging.getLogger("ray.serve")

#: The annotation page: plain HTML/JS/CSS shipped as package data, no build step, no CDN.
UI_DIR = Path(__file__).resolve().parents[1] / "ui"


async def ui_root() -> RedirectResponse:
    """The annotation page lives at ``/ui/``; a relative redirect keeps any route prefix."""
    return RedirectResponse("ui/", status_code=307)


def make_api(routers: Iterable[APIRouter]) -> DescribedAPI:
    """The ingress's FastAPI app: ``/ui``, then the routes of ``routers`` in order, the middlewares and
    the error handlers of this module.

    Middleware order: the one added last is outermost. Request id and metrics wrap CORS, which wraps the
    key check, so a 401/429 carries the request id, is counted, and has the CORS headers an allowed page
    needs.

    Args:
        routers: the routers of :mod:`serve_app.ingress.routes`; the request and response models of a
            :class:`serve_app.ingress.openapi.DescribedRouter` become the document's components.
    """
    api = DescribedAPI(
        title="samgraph",
        summary="Promptable segmentation (SAM 2) and few-shot detection as a Ray Serve deployment graph",
        version="0.1.0",
    )
    api.add_api_route("/ui", ui_root, methods=["GET"], include_in_schema=False)
    api.mount("/ui", StaticFiles(directory=UI_DIR, html=True), name="ui")
    for router in routers:
        api.include_router(router)
    api.add_middleware(RequireKey)
    api.add_middleware(CorsFromPolicy)
    api.middleware("http")(_request_id)
    api.add_exception_handler(ApiError, _api_error)
    api.add_exception_handler(RequestValidationError, _validation_error)
    api.add_exception_handler(StarletteHTTPException, _http_error)
    api.add_exception_handler(Exception, _internal_error)
    return api


def request_id(request: Request) -> str:
    return getattr(request.state, "request_id", None) or "-"


def _endpoint(request: Request) -> str:
    """The matched route's template (``/v1/examples/{example_id}``), a mount's path (``/ui``), else
    ``unmatched``: a bounded set of label values."""
    scope = request.scope
    route = scope.get("route")
    if route is not None:
        return route.path
    if scope.get("endpoint") is not None:
        # a mount (/ui): its path is in root_path. A plain Starlette route (FastAPI's /docs, /openapi.json)
        # leaves no "route" either; those have fixed paths, so the path itself is a bounded label.
        app_root = scope.get("app_root_path", "")
        return scope.get("root_path", "")[len(app_root) :] or scope["path"][len(app_root) :]
    return "unmatched"


async def _request_id(request: Request, call_next):
    """Request id in and out, and the request's count and latency in the ingress metrics (when built)."""
    t0 = time.perf_counter()
    request.state.received_at = time.time()  # a deadline's start (serve_app.ingress.deadlines)
    request.state.request_id = request.headers.get("x-request-id") or uuid.uuid4().hex
    try:
        response = await call_next(request)
    except Exception:  # answered 500 by the outermost handler
        if (m := ingress_metrics()) is not None:
            m.request(_endpoint(request), 500, (time.perf_counter() - t0) * 1e3)
        raise
    response.headers["x-request-id"] = request.state.request_id
    if (m := ingress_metrics()) is not None:
        m.request(_endpoint(request), response.status_code, (time.perf_counter() - t0) * 1e3)
    return response


#: Statuses of a refusal (the request was fine; the service would not take it now), counted by cause.
REFUSAL_STATUSES = (429, 503)


async def _api_error(request: Request, exc: ApiError) -> JSONResponse:
    if exc.status in REFUSAL_STATUSES and (m := ingress_metrics()) is not None:
        m.refusal(_endpoint(request), exc.code)
    if exc.status >= 500 and exc.__cause__ is not None:  # one line with the cause, no stack trace
        cause = str(exc.__cause__).strip().splitlines()
        log.warning(
            "request %s: %d %s: %s: %s",
            request_id(request),
            exc.status,
            exc.code,
            type(exc.__cause__).__name__,
            cause[0][:300] if cause else "",
        )
    return JSONResponse(exc.body(request_id(request)), status_code=exc.status, headers=exc.headers)


#: Retry-After (s) of a refusal whose stage sets no ``backpressure_config.retry_after_s``.
DEFAULT_RETRY_AFTER_S = 1.0


def _retry_after(seconds: float | None) -> dict[str, str]:
    return {"Retry-After": str(max(1, math.ceil(DEFAULT_RETRY_AFTER_S if seconds is None else seconds)))}


def stage_errors(route):
    """Route decorator: a stage that cannot take the request answers 503 JSON with ``Retry-After``.

    - ``BackPressureError``: the stage's queue at this caller is full (``max_queued_requests``);
      code ``overloaded``, ``Retry-After`` from the stage's ``backpressure_config.retry_after_s``.
    - ``RayActorError`` (the replica died mid-request), ``DeploymentUnavailableError`` (no replica
      running), or the ``RayServeException`` Serve raises for a chained call whose upstream replica
      died (its cause is the ``ActorDiedError``): code ``unavailable``; Serve starts a replacement, so
      the request may be retried.

    A typed input error of a stage or of the runtime (:class:`deployments.errors.InputError`, here or
    raised in a stage replica) becomes its documented status: a 4xx, or 503 ``deadline`` (a request that
    cannot finish before its deadline, :class:`deployments.errors.DeadlineExceeded`) with ``Retry-After``.

    Serve registers its own plain-text handlers for these exceptions on the ingress app when the
    replica starts, after ours, so they are turned into :class:`ApiError` here, inside the route.
    The cause is logged with the request id by the ApiError handler, without a stack trace.
    """

    @functools.wraps(route)
    async def guarded(*args, **kwargs):
        try:
            return await route(*args, **kwargs)
        except InputError as e:
            raise ApiError.from_input_error(e) from None
        except BackPressureError as e:
            raise ApiError(
                503, "overloaded", "the service is at capacity; retry later", headers=_retry_after(e.retry_after_s)
            ) from e
        except (RayActorError, DeploymentUnavailableError) as e:
            raise ApiError(
                503, "unavailable", "a stage of the service is restarting; retry later", headers=_retry_after(None)
            ) from e
        except RayServeException as e:  # a chained call whose upstream replica died (the router's wrapper)
            if not isinstance(e.__cause__, RayActorError):
                raise
            raise ApiError(
                503, "unavailable", "a stage of the service is restarting; retry later", headers=_retry_after(None)
            ) from e

    return guarded


async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
    err = exc.errors()[0]
    field = ".".join(str(p) for p in err.get("loc", ()) if p not in ("body", "query", "path")) or None
    return await _api_error(request, ApiError(422, "invalid_request", f"{field}: {err.get('msg')}", field))


async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
    # keep the exception's headers: a 405 lists the route's methods in Allow (RFC 9110)
    return await _api_error(request, ApiError(exc.status_code, code, str(exc.detail), headers=exc.headers))


async def _internal_error(request: Request, exc: Exception) -> JSONResponse:
    log.error("request %s failed", request_id(request), exc_info=exc)
    error = ApiError(500, "internal", "internal error; see the server log for this request id")
    return await _api_error(request, error)


async def read_body(request: Request, max_bytes: int) -> bytes:
    """The request body, refusing (413) anything over ``max_bytes`` before reading it all."""
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > max_bytes:
        raise ApiError(413, "body_too_large", f"request body is {declared} bytes, over the limit of {max_bytes}")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > max_bytes:
            raise ApiError(413, "body_too_large", f"request body is over the limit of {max_bytes} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


async def parse_body(
    request: Request, model: type[BaseModel], max_bytes: int, file_part: str | None = "image"
) -> tuple:
    """A JSON body, or multipart with a ``file_part`` file part (``image``, or ``video`` for clips) and an
    optional ``request`` JSON part; with ``file_part`` None, JSON only.

    Returns:
        (the validated ``model`` instance, the uploaded file's bytes or None).

    Raises:
        ApiError: 400/413/415/422 naming the field at fault.
    """
    body = await read_body(request, max_bytes)
    ctype = request.headers.get("content-type", "application/json").split(";")[0].strip().lower()
    upload = None
    if ctype == "multipart/form-data" and file_part is not None:

        async def replay():
            return {"type": "http.request", "body": body, "more_body": False}

        try:
            form = await Request(request.scope, replay).form(max_files=1, max_fields=1)
        except Exception as e:  # malformed multipart, too many parts
            raise ApiError(400, "invalid_multipart", f"cannot parse multipart body: {e}") from None
        for key in form.keys():
            if key not in (file_part, "request"):
                message = f"{key}: unknown multipart part (allowed: {file_part}, request)"
                raise ApiError(422, "invalid_request", message, key)
        part = form.get(file_part)
        if part is None or isinstance(part, str):
            message = f"{file_part}: multipart upload needs an '{file_part}' file part"
            raise ApiError(422, "invalid_request", message, file_part)
        upload = await part.read()
        raw = form.get("request") or "{}"
        raw = raw if isinstance(raw, str) else (await raw.read()).decode("utf-8", "replace")
    elif ctype == "application/json":
        raw = body
    else:
        accepted = "application/json" if file_part is None else "application/json or multipart/form-data"
        raise ApiError(415, "unsupported_media_type", f"send {accepted}")
    try:
        data = json.loads(raw or b"{}")
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as e:
        field = "request" if upload is not None else None
        raise ApiError(400, "invalid_json", f"body is not valid JSON: {e}"[:300], field) from None
    if not isinstance(data, dict):
        raise ApiError(422, "invalid_request", "body must be a JSON object")
    try:
        req = model.model_validate(data)
    except ValidationError as e:
        raise from_validation_error(e) from None
    if upload is not None and (getattr(req, file_part, None) is not None or getattr(req, "image_id", None) is not None):
        message = f"{file_part}: give the {file_part} once: a file part, inline base64 or image_id"
        raise ApiError(422, "invalid_request", message, file_part)
    return req, upload
