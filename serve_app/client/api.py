"""HTTP client of the samgraph API: one public method per route, failures as exceptions.

    with SamgraphClient("http://127.0.0.1:8000", timeout_s=300) as api:
        result = api.segment({"prompts": [{"box_xyxy": [10, 20, 300, 400]}]}, image=Path("photo.jpg").read_bytes())

Requests are the JSON bodies docs/http-api.md documents. A call given ``image`` (or ``video``) bytes sends them
as the multipart file part with the body as its ``request`` part, else the body alone as JSON (inline
base64 or an ``image_id``). Every method returns the decoded JSON answer (streamed routes: an iterator)
and raises the errors of :mod:`serve_app.client.errors`: :class:`ApiResponseError` (an error status),
:class:`ApiUnreachable` (no answer) or :class:`ApiStreamError` (a streamed answer failed midway).

Every route has its verb, named after it (``/v1/video/sessions/{id}/reset``: :meth:`~SamgraphClient.reset_session`);
a unit test holds the list to the app's routes. ``httpx`` is imported when a client is made, not with this module.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from serve_app.client.errors import ApiResponseError, ApiStreamError, ApiUnreachable

if TYPE_CHECKING:
    import httpx

#: The environment variable a client takes its API key from when none is given.
API_KEY_ENV = "SAMGRAPH_API_KEY"


class SamgraphClient:
    """A connection to one samgraph service.

    Args:
        base_url: the service URL, e.g. ``http://127.0.0.1:8000`` (a trailing ``/`` is ignored).
        timeout_s: seconds to wait for connecting, and between bytes of the answer.
        transport: an ``httpx`` transport to use instead of the network (tests pass
            ``httpx.MockTransport``).
        api_key: the key sent as ``Authorization: Bearer <key>`` to a service that needs one; None takes
            ``SAMGRAPH_API_KEY`` from the environment when it is set, ``""`` sends none.

    Raises:
        ValueError: ``timeout_s`` not above 0.
    """

    def __init__(
        self, base_url: str, timeout_s: float = 300.0, *, transport: httpx.BaseTransport | None = None,
        api_key: str | None = None,
    ) -> None:
        import httpx

        if not timeout_s > 0:
            raise ValueError(f"timeout_s must be greater than 0; got {timeout_s}")
        self.url = base_url
        key = os.environ.get(API_KEY_ENV, "") if api_key is None else api_key
        headers = {"Authorization": f"Bearer {key.strip()}"} if key.strip() else {}
        base = base_url.rstrip("/")
        self._http = httpx.Client(base_url=base, timeout=timeout_s, transport=transport, headers=headers)

    def __repr__(self) -> str:  # never the key
        return f"SamgraphClient({self.url!r})"

    def __enter__(self) -> SamgraphClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the connection pool."""
        self._http.close()

    # ---------------------------------------------------------------- plumbing
    def _send(self, method: str, path: str, ok: tuple[int, ...] = (200,), **kwargs: Any) -> httpx.Response:
        import httpx

        try:
            response = self._http.request(method, path, **kwargs)
        except httpx.HTTPError as e:
            raise ApiUnreachable(self.url, e) from e
        if response.status_code not in ok:
            raise ApiResponseError.from_response(response)
        return response

    @staticmethod
    def _body(request: dict, file_part: str, data: bytes | None, filename: str) -> dict[str, Any]:
        """httpx keyword arguments: multipart with a ``file_part`` file and a ``request`` part, or JSON."""
        if data is None:
            return {"json": request}
        return {"files": {file_part: (filename, data)}, "data": {"request": json.dumps(request)}}

    def _json(self, response: httpx.Response) -> Any:
        try:
            return response.json()
        except ValueError:
            raise ApiResponseError(response.status_code, None, f"answer is not JSON: {response.text[:500]}") from None

    # ---------------------------------------------------------------- health
    def healthz(self) -> dict:
        """``GET /healthz``: ``{"status": "ok"}`` while the ingress runs."""
        return self._json(self._send("GET", "/healthz"))

    def readyz(self) -> tuple[int, dict]:
        """``GET /readyz``: whether every stage answers, with the models and weights they run.

        Returns:
            (HTTP status, body): 200 and ``{"status": "ready", ...}``, or 503 and ``{"status":
            "not_ready", "reason": ...}``; any other status with a JSON body, as answered.

        Raises:
            ApiResponseError: the answer is not JSON.
        """
        response = self._send("GET", "/readyz", ok=tuple(range(100, 600)))
        return response.status_code, self._json(response)

    def models(self) -> dict:
        """``GET /v1/models``: the served models (``{"default", "models": [...]}``), each with its family,
        weights, capabilities, devices, parameters, input size and feature bytes per cached image."""
        return self._json(self._send("GET", "/v1/models"))

    def stats(self) -> dict:
        """``GET /v1/stats``: embedding-cache counters and one replica's work counters per stage."""
        return self._json(self._send("GET", "/v1/stats"))

    def metrics(self) -> str:
        """``GET /metrics``: the ingress's Prometheus metrics, in the text exposition format."""
        return self._send("GET", "/metrics").text

    # ---------------------------------------------------------------- images
    def segment(self, request: dict, image: bytes | None = None, filename: str = "image") -> dict:
        """``POST /v1/segment``: masks for the prompts of one image (or text-ranked automatic masks).

        Args:
            request: the body (``prompts``, ``mask_format``...); with ``image`` None it names the image
                itself (``image.base64`` or ``image_id``).
            image: the encoded image file (JPEG, PNG...), sent as the multipart ``image`` part.
            filename: the file name sent with ``image``.

        Returns:
            The answer: ``image_id``, ``results`` (per prompt, its masks), ``timing_ms``, ``warnings``...
        """
        return self._json(self._send("POST", "/v1/segment", **self._body(request, "image", image, filename)))

    def predict(self, request: dict, image: bytes | None = None, filename: str = "image") -> dict:
        """``POST /v1/predict``: every object of the image, labelled by its nearest examples.

        Args:
            request: the body (``collection``, ``top_k``, ``min_score``, ``max_instances``, ``amg``...).
            image: the encoded image file, or None when ``request`` names the image.
            filename: the file name sent with ``image``.

        Returns:
            The answer: ``image_id``, ``instances`` (``label``, ``confidence``, ``rle``...), ``timing_ms``.
        """
        return self._json(self._send("POST", "/v1/predict", **self._body(request, "image", image, filename)))

    def polygons(self, request: dict) -> dict:
        """``POST /v1/masks/polygons``: COCO RLE masks (as any route returns them) traced as polygons.

        Args:
            request: ``{"masks": [{"size": [H, W], "counts": "..."}, ...], "polygon_tolerance_px": 1.0}``.

        Returns:
            ``{"masks": [...], "polygon_tolerance_px"}``: per mask, in order, its ``polygons`` (rings with
            holes), COCO's flat ``segmentation``, ``area_px`` and ``bbox_xyxy``.
        """
        return self._json(self._send("POST", "/v1/masks/polygons", json=request))

    def add_example(self, request: dict, image: bytes | None = None, filename: str = "image") -> dict:
        """``POST /v1/examples``: store one labelled object (a prompt's best mask, or a given mask).

        Args:
            request: the body: ``label``, ``collection`` and ``box_xyxy``/``points`` or ``mask_rle``.
            image: the encoded image file, or None when ``request`` names the image.
            filename: the file name sent with ``image``.

        Returns:
            The answer: ``ids``, ``collection``, ``label``, ``image_id``, ``area_px``, ``timing_ms``.
        """
        return self._json(self._send("POST", "/v1/examples", **self._body(request, "image", image, filename)))

    def list_examples(
        self, collection: str = "default", label: str | None = None, offset: str | None = None, limit: int | None = None
    ) -> dict:
        """``GET /v1/examples``: examples per label in a collection, and a page of their ids.

        Args:
            collection: the collection.
            label: only this label's ids in the page.
            offset: ``next_offset`` of the previous page.
            limit: ids per page (the service's default when None).

        Returns:
            ``{"collection", "dim", "total", "counts": {label: n}, "items", "next_offset"}``.
        """
        params = {"collection": collection, "label": label, "offset": offset, "limit": limit}
        return self._json(self._send("GET", "/v1/examples", params={k: v for k, v in params.items() if v is not None}))

    def delete_example(self, example_id: str, collection: str = "default") -> dict:
        """``DELETE /v1/examples/{example_id}``.

        Returns:
            ``{"deleted": example_id, "collection": collection}``.

        Raises:
            ApiResponseError: 404 ``unknown_example`` when the collection has no such example.
        """
        return self._json(self._send("DELETE", f"/v1/examples/{example_id}", params={"collection": collection}))

    def export_examples(self, collection: str = "default") -> Iterator[str]:
        """``GET /v1/examples/export``: the collection's examples file, streamed.

        Args:
            collection: the collection.

        Yields:
            The file's lines, each with its ``\n``, as they arrive: the header, one line per example, the
            end line (see :mod:`deployments.runtime.example_file`).

        Raises:
            ApiResponseError: the export was refused (404 ``unknown_collection``...).
            ApiStreamError: the service reported an error midway, or the stream ended without its end line.
            ApiUnreachable: no answer, or the connection dropped midway.
        """
        ended = False
        for line in self._stream_lines("GET", "/v1/examples/export", params={"collection": collection}):
            if ended:
                raise ApiStreamError({"error": {"message": "a line after the end line"}})
            if not line.startswith('{"type":"point"'):  # header, end or error: small lines
                kind = json.loads(line).get("type")
                if kind == "error":
                    raise ApiStreamError({k: v for k, v in json.loads(line).items() if k != "type"})
                ended = kind == "end"
            yield line + "\n"
        if not ended:
            raise ApiStreamError(None)

    def import_examples(self, body: bytes, collection: str | None = None) -> dict:
        """``POST /v1/examples/import``: upsert an examples file (or a part of one: header, points, end).

        Args:
            body: the file's bytes, at most the service's ``limits.max_import_bytes``.
            collection: the collection to write to; None: the one named in the file's header.

        Returns:
            ``{"collection", "imported", "created", "dim", "count"}`` (and ``warnings`` if the service has any).

        Raises:
            ApiResponseError: 422 naming ``line N.<key>``, 409 ``dimension_mismatch`` or ``embedder_mismatch``
                (the file's vectors are another embedder's than the service's), 413 ``body_too_large``...
        """
        params = {"collection": collection} if collection is not None else {}
        headers = {"Content-Type": "application/x-ndjson"}
        return self._json(self._send("POST", "/v1/examples/import", params=params, content=body, headers=headers))

    # ---------------------------------------------------------------- video
    def segment_video(self, request: dict, video: bytes | None = None, filename: str = "video.mp4") -> dict:
        """``POST /v1/segment/video`` answered as one JSON document (every frame's masks at the end).

        Args:
            request: the body (``objects``, ``start_frame``, ``max_frames``, ``reverse``...); with
                ``video`` None it carries the clip itself (``video.base64`` or ``frames``).
            video: the MP4 file, sent as the multipart ``video`` part.
            filename: the file name sent with ``video``.

        Returns:
            ``{"model_id", "weights", "num_frames", "width", "height", "obj_ids", "frames", "timing_ms"}``.
        """
        return self._json(
            self._send(
                "POST", "/v1/segment/video", **self._body({**request, "stream": False}, "video", video, filename)
            )
        )

    def stream_video(self, request: dict, video: bytes | None = None, filename: str = "video.mp4") -> Iterator[dict]:
        """``POST /v1/segment/video`` streamed as NDJSON: the records as the tracker yields them.

        Args:
            request: as :meth:`segment_video` (``stream`` is set here).
            video: the MP4 file, or None when ``request`` carries the clip.
            filename: the file name sent with ``video``.

        Yields:
            Records with their ``type``: one ``start`` (the head: ``obj_ids``, ``warnings``...), one
            ``frame`` per tracked frame (``frame_index``, ``objects``, ``propagate_ms``), then one ``end``
            (``frames``, ``timing_ms``).

        Raises:
            ApiResponseError: the request was refused (before tracking starts).
            ApiStreamError: an ``error`` record, a record of an unknown type, or no ``start``/``end``.
            ApiUnreachable: no answer, or the connection dropped midway.
        """
        body = self._body({**request, "stream": True}, "video", video, filename)
        yield from self._frame_records("POST", "/v1/segment/video", **body)

    # ---------------------------------------------------------------- video sessions
    def open_session(
        self, request: dict | None = None, video: bytes | None = None, filename: str = "video.mp4"
    ) -> dict:
        """``POST /v1/video/sessions``: decode a clip once, for prompts and propagations to come.

        Args:
            request: the body; with ``video`` None it carries the clip (``video.base64`` or ``frames``).
            video: the MP4 file, sent as the multipart ``video`` part.
            filename: the file name sent with ``video``.

        Returns:
            ``{"session_id", "num_frames", "width", "height", "expires_at", ...}``.
        """
        return self._json(
            self._send("POST", "/v1/video/sessions", **self._body(request or {}, "video", video, filename))
        )

    def session_info(self, session_id: str) -> dict:
        """``GET /v1/video/sessions/{session_id}``: the session's clip, objects and expiry.

        Raises:
            ApiResponseError: 404 ``unknown_session`` for an unknown or expired session.
        """
        return self._json(self._send("GET", f"/v1/video/sessions/{session_id}"))

    def session_prompt(self, session_id: str, request: dict) -> dict:
        """``POST /v1/video/sessions/{session_id}/prompts``: prompt one object on one frame.

        Args:
            session_id: the session.
            request: ``frame_index``, ``obj_id`` and ``box_xyxy``/``points`` or ``mask_rle`` (pixels of the
                frames), ``clear_old_points``.

        Returns:
            The frame's masks of every object, as that prompt leaves them.
        """
        return self._json(self._send("POST", f"/v1/video/sessions/{session_id}/prompts", json=request))

    def propagate_session(self, session_id: str, request: dict | None = None) -> Iterator[dict]:
        """``POST /v1/video/sessions/{session_id}/propagate``, streamed as NDJSON.

        Args:
            session_id: the session.
            request: ``start_frame``, ``max_frames``, ``direction`` (``forward``, ``backward``, ``both``).

        Yields:
            Records with their ``type``: ``start``, one ``frame`` per tracked frame, ``end``.

        Raises:
            ApiResponseError: refused before tracking. ApiStreamError: an ``error`` record or a cut stream.
            ApiUnreachable: no answer.
        """
        yield from self._frame_records("POST", f"/v1/video/sessions/{session_id}/propagate", json=request or {})

    def cancel_propagation(self, session_id: str) -> dict:
        """``DELETE /v1/video/sessions/{session_id}/propagation``: stop the session's running propagation."""
        return self._json(self._send("DELETE", f"/v1/video/sessions/{session_id}/propagation"))

    def remove_session_object(self, session_id: str, obj_id: int) -> dict:
        """``DELETE /v1/video/sessions/{session_id}/objects/{obj_id}``: forget one object and its prompts."""
        return self._json(self._send("DELETE", f"/v1/video/sessions/{session_id}/objects/{obj_id}"))

    def reset_session(self, session_id: str) -> dict:
        """``POST /v1/video/sessions/{session_id}/reset``: drop every object and prompt, keep the clip."""
        return self._json(self._send("POST", f"/v1/video/sessions/{session_id}/reset"))

    def close_session(self, session_id: str) -> dict:
        """``DELETE /v1/video/sessions/{session_id}``: close the session and free its memory."""
        return self._json(self._send("DELETE", f"/v1/video/sessions/{session_id}"))

    # ---------------------------------------------------------------- streams
    def _frame_records(self, method: str, path: str, **request) -> Iterator[dict]:
        """The NDJSON records of a tracking stream (``start``, ``frame``..., ``end``), as
        ``/v1/segment/video`` and a session's ``propagate`` send them; ``request`` goes to httpx.

        Raises:
            ApiResponseError: the request was refused (before tracking starts).
            ApiStreamError: an ``error`` record, a record of an unknown type, or no ``start``/``end``.
            ApiUnreachable: no answer, or the connection dropped midway.
        """
        seen: set[str] = set()
        for line in self._stream_lines(method, path, **request):
            rec = json.loads(line)
            if rec.get("type") not in ("start", "frame", "end"):
                raise ApiStreamError({k: v for k, v in rec.items() if k != "type"})
            seen.add(rec["type"])
            yield rec
        if not {"start", "end"} <= seen:
            raise ApiStreamError(None)

    def _stream_lines(self, method: str, path: str, **request) -> Iterator[str]:
        """The non-empty lines of a streamed answer as they arrive; ``request`` goes to httpx.

        Raises:
            ApiResponseError: the answer is not a 200. ApiUnreachable: no answer, or the connection
                dropped midway.
        """
        import httpx

        try:
            with self._http.stream(method, path, **request) as response:
                if response.status_code != 200:
                    response.read()
                    raise ApiResponseError.from_response(response)
                yield from (line for line in response.iter_lines() if line)
        except httpx.HTTPError as e:
            raise ApiUnreachable(self.url, e) from e
