"""API errors: one JSON shape, ``{"error": {"code", "message", "field"}}``, for every 4xx and 5xx."""

from __future__ import annotations

import math

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from deployments.errors import InputError


class ErrorDetail(BaseModel):
    """The ``error`` of an error body (the OpenAPI component ``ErrorDetail``)."""

    model_config = ConfigDict(extra="forbid")
    code: str = Field(description="stable machine-readable code, e.g. invalid_image (see docs/http-api.md#errors)")
    message: str = Field(description="what is wrong and the rule broken")
    field: str | None = Field(description="the request field at fault, e.g. prompts[0].box_xyxy, or null")
    request_id: str | None = Field(default=None, description="the x-request-id of the request, for the server log")


class ErrorBody(BaseModel):
    """Every 4xx and 5xx body the service sends (the OpenAPI component ``Error``)."""

    model_config = ConfigDict(extra="forbid")
    error: ErrorDetail


class ApiError(Exception):
    """A client-facing error.

    Args:
        status: HTTP status (4xx for bad input, 5xx for our failures).
        code: stable machine-readable code, e.g. ``invalid_image``.
        message: what is wrong and the rule broken.
        field: the request field at fault (``prompts[0].box_xyxy``), or None.
        headers: extra response headers, e.g. ``{"Retry-After": "2"}`` on a 503.
    """

    def __init__(
        self, status: int, code: str, message: str, field: str | None = None, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.field = field
        self.headers = headers

    @classmethod
    def from_input_error(cls, e: InputError) -> ApiError:
        """The 4xx of a stage's typed input error (its ``status``, ``code``, message and ``field``).

        ``e`` may be Ray's wrapper of a stage's exception: it is an instance of the stage's class and
        forwards the attributes, so ``e.message`` is the stage's message without the remote traceback
        that ``str(e)`` of the wrapper holds. An error with a ``retry_after_s`` (a refusal: 503
        ``deadline``, ``sessions_full``) gets ``Retry-After`` in whole seconds, at least 1.
        """
        retry_after_s = getattr(e, "retry_after_s", None)
        headers = None if retry_after_s is None else {"Retry-After": str(max(1, math.ceil(retry_after_s)))}
        return cls(e.status, e.code, e.message[:300], e.field, headers=headers)

    def body(self, request_id: str | None = None) -> dict:
        err = {"code": self.code, "message": self.message, "field": self.field}
        if request_id:
            err["request_id"] = request_id
        return {"error": err}


def field_path(loc: tuple) -> str | None:
    """pydantic ``loc`` -> ``prompts[0].box_xyxy``."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out or None


def from_validation_error(exc: ValidationError, prefix: tuple = ()) -> ApiError:
    """First error of a pydantic ``ValidationError`` as a 422 :class:`ApiError` naming the field."""
    first = exc.errors(include_url=False)[0]
    loc = prefix + tuple(p for p in first["loc"] if not (isinstance(p, str) and p.startswith("function-")))
    msg = first["msg"].removeprefix("Value error, ")
    if first["type"] == "extra_forbidden":
        msg = "unknown field"
    field = field_path(loc)
    return ApiError(422, "invalid_request", f"{field}: {msg}" if field else msg, field)
