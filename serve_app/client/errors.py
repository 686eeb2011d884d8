"""The failures of a :class:`serve_app.client.SamgraphClient` call, as exceptions.

* :class:`ApiResponseError`: the service answered with an error status; it carries the status and the
  API's ``{"error": {"code", "message", "field", "request_id"}}`` body (401 ``unauthorized``: the service
  needs a key; give ``api_key`` or set ``SAMGRAPH_API_KEY``);
* :class:`ApiUnreachable`: no answer (connection refused, timeout, the connection dropped);
* :class:`ApiStreamError`: a streamed answer failed midway.

All three are :class:`ClientError`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import httpx


class ClientError(Exception):
    """Any failure of a :class:`SamgraphClient` call."""


class ApiUnreachable(ClientError):
    """The service gave no answer: it is not running at that URL, timed out, or dropped the connection.

    Attributes:
        url: the service URL, as given to the client.
        cause: the transport error (an ``httpx.HTTPError``).
    """

    def __init__(self, url: str, cause: Exception) -> None:
        super().__init__(f"cannot reach {url}: {cause}")
        self.url = url
        self.cause = cause


class ApiResponseError(ClientError):
    """The service answered with an error status.

    ``str(error)`` is ``"422 invalid_request: prompts[0].box_xyxy: ... (field prompts[0].box_xyxy)"``, or
    ``"502: <the first 500 characters of the body>"`` for a body that is not the API's error shape (a
    proxy's page, say).

    Attributes:
        status: the HTTP status.
        code: the API's machine-readable code (``invalid_image``, ``overloaded``...), or None when the
            body is not the API's error shape.
        message: the API's message, else the start of the body.
        field: the request field at fault (``prompts[0].box_xyxy``), or None.
        request_id: the id the service logged the request under, or None.
        retry_after_s: the ``Retry-After`` header in seconds (503 from a full stage), or None.
        body: the decoded JSON body, or None when it is not JSON.
    """

    def __init__(
        self,
        status: int,
        code: str | None,
        message: str,
        field: str | None = None,
        request_id: str | None = None,
        retry_after_s: float | None = None,
        body: Any = None,
    ) -> None:
        where = f" (field {field})" if field else ""
        super().__init__(f"{status} {code}: {message}{where}" if code is not None else f"{status}: {message}")
        self.status, self.code, self.message, self.field = status, code, message, field
        self.request_id, self.retry_after_s, self.body = request_id, retry_after_s, body

    @classmethod
    def from_response(cls, response: httpx.Response) -> ApiResponseError:
        """The error of an answer with an error status (its body read).

        Args:
            response: the service's answer.

        Returns:
            The error, with the API's code, message and field when the body has the API's error shape.
        """
        retry = response.headers.get("retry-after")
        retry_after_s = float(retry) if retry and retry.replace(".", "", 1).isdigit() else None
        try:
            body = response.json()
        except ValueError:
            body = None
        err = body.get("error") if isinstance(body, dict) else None
        if isinstance(err, dict) and isinstance(err.get("code"), str) and isinstance(err.get("message"), str):
            return cls(
                response.status_code,
                err["code"],
                err["message"],
                err.get("field"),
                err.get("request_id"),
                retry_after_s,
                body,
            )
        return cls(response.status_code, None, response.text[:500], retry_after_s=retry_after_s, body=body)


class ApiStreamError(ClientError):
    """A streamed answer failed after its 200: an ``error`` record, an unknown record, or no ``end``.

    Attributes:
        record: the record that reported the failure, without its ``type`` (``{"error": {...}}`` for an
            ``error`` record), or None when the stream ended early.
    """

    def __init__(self, record: dict | None) -> None:
        super().__init__("the stream ended early" if record is None else str(record.get("error", record)))
        self.record = record
