"""A request's deadline: the ``X-Request-Timeout`` header (seconds), capped by the service's own limit
(``limits.request_timeout_s``, which applies when the header is absent).

The deadline is an absolute wall-clock time (``time.time()`` seconds) counted from the request's arrival
at the ingress (:func:`serve_app.ingress.http.make_api`'s middleware notes it); it travels with the jobs
(``DecodeJob.deadline``, ``ConceptJob.deadline``, the ``deadline`` argument of the decoder's calls), and
every stage checks it against its own clock, so the nodes' clocks are assumed synchronised (NTP). A request
that cannot finish in time is refused at once: 503 ``deadline`` with ``Retry-After``
(:class:`deployments.errors.DeadlineExceeded`, :class:`deployments.runtime.admission.StageAdmission`).
"""

from __future__ import annotations

import math
import time

from fastapi import Request

from deployments.errors import DeadlineExceeded
from serve_app.ingress.errors import ApiError

#: The request header that carries the client's timeout, seconds.
TIMEOUT_HEADER = "X-Request-Timeout"

#: The header as an OpenAPI parameter of the routes that take it (:meth:`Described.body_spec`'s ``deadline``).
TIMEOUT_PARAMETER = {
    "name": TIMEOUT_HEADER,
    "in": "header",
    "required": False,
    "description": (
        "Seconds the client will wait for the answer (a number > 0), capped by the service's "
        "limits.request_timeout_s, which applies without it. A request that cannot be answered in time is "
        "refused at once: 503 deadline, with Retry-After."
    ),
    "schema": {"type": "number", "exclusiveMinimum": 0},
    "examples": {"ten_seconds": {"summary": "answer within 10 s or refuse now", "value": 10}},
}


def arrival(request: Request) -> float:
    """When the request reached the ingress (``time.time()`` seconds, noted by the middleware), else now."""
    return getattr(request.state, "received_at", None) or time.time()


def parse_timeout(raw: str | None, limit_s: float) -> float:
    """The timeout a request asks for, seconds: the header's value capped by ``limit_s``, or ``limit_s``.

    Args:
        raw: the ``X-Request-Timeout`` header's value, or None.
        limit_s: the service's ``limits.request_timeout_s``.

    Raises:
        ApiError: 422 ``invalid_request`` naming the header when it is not a finite number > 0.
    """
    if raw is None:
        return limit_s
    try:
        value = float(raw.strip())
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value > 0):
        message = f"{TIMEOUT_HEADER}: must be a number of seconds > 0; got {raw[:40]!r}"
        raise ApiError(422, "invalid_request", message, TIMEOUT_HEADER)
    return min(value, limit_s)


def request_deadline(request: Request, limit_s: float) -> float:
    """The request's deadline, absolute ``time.time()`` seconds: its arrival plus :func:`parse_timeout`.

    Raises:
        ApiError: 422 for a bad header (see :func:`parse_timeout`).
    """
    return arrival(request) + parse_timeout(request.headers.get(TIMEOUT_HEADER), limit_s)


def check_deadline(deadline: float | None, before: str, clock=time.time) -> None:
    """Refuse a request whose deadline has passed before it is sent to ``before`` (a stage's name).

    Raises:
        DeadlineExceeded: ``clock() >= deadline``; ``Retry-After`` 1 s (no queue to wait for here).
    """
    if deadline is not None and clock() >= deadline:
        raise DeadlineExceeded(f"the request's deadline passed {clock() - deadline:.3f} s ago, before {before}", 1)
