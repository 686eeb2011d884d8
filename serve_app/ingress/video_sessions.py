"""Interactive video sessions over HTTP (``/v1/video/sessions``): request bodies, and the calls the
ingress routes (:mod:`serve_app.ingress.routes.video_sessions`) make, each to the ``VideoSegmenter``
replica that holds the session.

The ingress stays stateless. ``POST /v1/video/sessions`` makes the session id (uuid4 hex) first, then
sends the clip to ``video.options(session_id=id)``; the deployment's consistent-hash router (no fallback
replica) sends that call and every later one about the id to the same replica, which holds the session
(:mod:`deployments.runtime.video_sessions`). What can go wrong with an id:

* closed or expired: 404 ``unknown_session`` (the replica remembers it);
* its replica died, before or during the call, or the replicas changed and the id now hashes to another
  one: 404 ``session_lost`` (the state is gone; no other replica answers with masks of its own);
* the owner holds as many sessions or bytes as it may: a new session gets 503 ``sessions_full`` with
  ``Retry-After``.

Prompts and terms are those of ``/v1/segment/video`` (:mod:`serve_app.ingress.video_schemas`): pixels of
the frames, (x, y) with x right and y down, ``points`` as ``[[x, y, label], ...]``, boxes XYXY, masks as
COCO RLE of the frame's size.
"""

import datetime as dt
import re
import time
import uuid
from typing import Literal

import numpy as np
import ray
from fastapi import Request
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, Field
from ray.serve.handle import DeploymentHandle

from deployments.errors import SessionLost, SessionsFull
from models.masks import POLYGON_TOLERANCE_PX, decode_rle
from models.sam2_video_types import FramePrompt
from serve_app.ingress.errors import ApiError
from serve_app.ingress.http import parse_body, request_id
from serve_app.ingress.readiness import RANDOM_WEIGHTS_WARNING
from serve_app.ingress.schemas import POLYGON_TOLERANCE, STRICT, ImageIn
from serve_app.ingress.video_route import ndjson_lines, read_clip
from serve_app.ingress.video_schemas import VideoPromptIn, VideoRequest

#: The mask formats of the one-shot endpoint (polygon included where it is).
MaskFormat = VideoRequest.model_fields["mask_format"].annotation
SESSION_ID = re.compile(r"^[0-9a-f]{32}$")
#: What a call raises when the replica holding its session died (mid-call, or the pixels it had put).
_HOLDER_LOST = (ray.exceptions.RayActorError, ray.exceptions.ObjectLostError, ray.exceptions.OwnerDiedError)


class OpenSessionRequest(BaseModel):
    """Body of ``POST /v1/video/sessions`` (or the ``request`` part of a multipart upload with a
    ``video`` file part): the clip, as an MP4 or as frames."""

    model_config = STRICT
    video: ImageIn | None = None
    frames: list[ImageIn] | None = None


class SessionPromptRequest(VideoPromptIn):
    """Body of ``POST /v1/video/sessions/{id}/prompts``: one object's prompt on one frame.

    ``box_xyxy`` and/or ``points`` go to sam2's ``add_new_points_or_box`` with ``clear_old_points`` (its
    default True replaces the object's earlier clicks on that frame; False adds to them, not with a box);
    ``mask_rle`` to ``add_new_mask``. A new ``obj_id`` adds an object; on a tracked frame the prompt
    corrects the tracked mask.
    """

    obj_id: int = Field(ge=0, le=2**31 - 1)
    clear_old_points: bool = True
    mask_format: MaskFormat = "rle"
    polygon_tolerance_px: POLYGON_TOLERANCE = POLYGON_TOLERANCE_PX


class PropagateRequest(BaseModel):
    """Body of ``POST /v1/video/sessions/{id}/propagate``.

    ``direction``: ``forward`` (sam2's ``propagate_in_video``), ``backward`` (``reverse=True``) or
    ``both`` (forward then backward from ``start_frame``, as ``reverse: true`` on ``/v1/segment/video``).
    ``start_frame`` None: the earliest prompted frame. ``max_frames``: frames per direction, the start
    frame included; None: to the end (and the start) of the clip.
    """

    model_config = STRICT
    start_frame: int | None = Field(default=None, ge=0)
    max_frames: int | None = Field(default=None, ge=1)
    direction: Literal["forward", "backward", "both"] = "forward"
    mask_format: MaskFormat = "rle"
    polygon_tolerance_px: POLYGON_TOLERANCE = POLYGON_TOLERANCE_PX


def iso_utc(t: float) -> str:
    """``time.time()`` seconds as ISO-8601 UTC, e.g. ``2025-01-31T12:00:00Z``."""
    return dt.datetime.fromtimestamp(t, tz=dt.timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")


def check_session_id(session_id: str) -> str:
    """Raises ApiError 422 unless ``session_id`` has the form the service makes (32 lowercase hex)."""
    if not SESSION_ID.match(session_id):
        message = "session_id: 32 lowercase hex digits, as POST /v1/video/sessions answers"
        raise ApiError(422, "invalid_request", message, "session_id")
    return session_id


def to_frame_prompt(req: SessionPromptRequest) -> FramePrompt:
    """The request's prompt as the session takes it (mask decoded, points split into coords and labels).

    Raises:
        ApiError: 422 for a ``mask_rle`` that does not decode.
    """
    if req.mask_rle is not None:
        try:
            return FramePrompt(req.frame_index, mask=decode_rle(req.mask_rle.model_dump()))
        except ValueError as e:
            raise ApiError(422, "invalid_request", f"mask_rle: {e}", "mask_rle") from None
    pts = np.asarray(req.points, dtype=np.float64) if req.points else None
    return FramePrompt(
        req.frame_index,
        point_coords=None if pts is None else pts[:, :2].astype(np.float32),
        point_labels=None if pts is None else pts[:, 2].astype(np.int32),
        box_xyxy=None if req.box_xyxy is None else np.asarray(req.box_xyxy, np.float32),
    )


#: The fields of a replica's session info that the API answers as they are.
PUBLIC_FIELDS = (
    "session_id",
    "num_frames",
    "width",
    "height",
    "obj_ids",
    "frames_tracked",
    "propagating",
    "nbytes",
    "replica",
    "model_id",
    "weights",
)


def _public(info: dict) -> dict:
    """A replica's session fields as the API answers them (``expires_at`` in ISO-8601 UTC)."""
    out = {k: info[k] for k in PUBLIC_FIELDS}
    out["expires_at"] = iso_utc(info["expires_at"])
    if info["weights"] == "random":
        out["warnings"] = [RANDOM_WEIGHTS_WARNING]
    return out


class VideoSessions:
    """The session routes' logic; the ingress registers thin routes over it.

    Args:
        video: handle to the ``VideoSegmenter`` deployment (deployed with the consistent-hash router).
        max_frames, max_frame_pixels: the clip limits of ``args.video``.
        max_body_bytes: the body limit of ``args.limits``.
        put: stores the decoded frames for the owner (default ``ray.put``).
    """

    def __init__(
        self, video: DeploymentHandle, max_frames: int, max_frame_pixels: int, max_body_bytes: int, put=None
    ) -> None:
        self.video = video
        self.max_frames, self.max_frame_pixels, self.max_body_bytes = max_frames, max_frame_pixels, max_body_bytes
        self._put = put or ray.put

    def owner(self, session_id: str) -> DeploymentHandle:
        """The handle that reaches the replica holding ``session_id``."""
        return self.video.options(session_id=session_id)

    async def _call(self, session_id: str, awaitable):
        """Await a call about a session: its holder dying is ``session_lost``; a full store is a 503
        with ``Retry-After``."""
        try:
            return await awaitable
        except _HOLDER_LOST:
            raise SessionLost(session_id) from None
        except SessionsFull as e:
            headers = {"Retry-After": str(max(1, int(np.ceil(e.retry_after_s))))}
            raise ApiError(503, e.code, e.message, headers=headers) from None

    # ---------------------------------------------------------------- routes
    async def open(self, request: Request) -> dict:
        """``POST /v1/video/sessions``: decode the clip (limits of ``args.video``), open a session on its
        owner; ``{session_id, num_frames, width, height, expires_at, obj_ids, ...}``."""
        t0 = time.perf_counter()
        req, upload = await parse_body(request, OpenSessionRequest, self.max_body_bytes, file_part="video")
        frames = await read_clip(req, upload, self.max_frames, self.max_frame_pixels)
        timing = {"decode_video": (time.perf_counter() - t0) * 1e3}
        session_id = uuid.uuid4().hex
        info = await self._call(session_id, self.owner(session_id).open_session.remote(session_id, self._put(frames)))
        timing["init"] = info["init_ms"]
        timing["total"] = (time.perf_counter() - t0) * 1e3
        return {**_public(info), "timing_ms": timing}

    async def info(self, session_id: str) -> dict:
        """``GET /v1/video/sessions/{id}``."""
        check_session_id(session_id)
        return _public(await self._call(session_id, self.owner(session_id).session_info.remote(session_id)))

    async def prompt(self, session_id: str, request: Request) -> dict:
        """``POST /v1/video/sessions/{id}/prompts``: that frame's masks for every object."""
        t0 = time.perf_counter()
        check_session_id(session_id)
        req, _ = await parse_body(request, SessionPromptRequest, self.max_body_bytes)
        prompt = to_frame_prompt(req)
        call = self.owner(session_id).add_prompt.remote(
            session_id, req.obj_id, prompt, req.clear_old_points, req.mask_format, req.polygon_tolerance_px
        )
        rec = await self._call(session_id, call)
        timing = {"prompt": rec.pop("propagate_ms"), "total": (time.perf_counter() - t0) * 1e3}
        rec.pop("type")
        return {"session_id": session_id, **rec, "mask_format": req.mask_format, "timing_ms": timing}

    async def propagate(self, session_id: str, request: Request) -> StreamingResponse:
        """``POST /v1/video/sessions/{id}/propagate``: NDJSON ``start``, one ``frame`` line per frame,
        ``end`` (or ``error``), as ``/v1/segment/video`` streams. Closing the connection stops it."""
        t0 = time.perf_counter()
        check_session_id(session_id)
        req, _ = await parse_body(request, PropagateRequest, self.max_body_bytes)
        records = self.owner(session_id).options(stream=True).propagate_session.remote(
            session_id, req.start_frame, req.max_frames, req.direction, req.mask_format, req.polygon_tolerance_px
        )
        start = await self._call(session_id, records.__anext__())
        head = {**_public(start), "direction": req.direction, "mask_format": req.mask_format}
        timing: dict = {}
        # its holder died mid-stream
        lost = (_HOLDER_LOST, lambda: ApiError(404, "session_lost", SessionLost(session_id).message, "session_id"))
        lines = ndjson_lines(request_id(request), records, head, timing, t0, lambda t: None, lost)
        return StreamingResponse(lines, media_type="application/x-ndjson")

    async def cancel(self, session_id: str) -> dict:
        """``DELETE /v1/video/sessions/{id}/propagation``: ``{session_id, cancelled}``."""
        check_session_id(session_id)
        out = await self._call(session_id, self.owner(session_id).cancel_propagation.remote(session_id))
        return {"session_id": session_id, **out}

    async def remove_object(self, session_id: str, obj_id: int, mask_format: str = "rle") -> dict:
        """``DELETE /v1/video/sessions/{id}/objects/{obj_id}``: the objects left and the updated frames."""
        check_session_id(session_id)
        if mask_format not in MaskFormat.__args__:
            message = f"mask_format: one of {', '.join(MaskFormat.__args__)}"
            raise ApiError(422, "invalid_request", message, "mask_format")
        out = await self._call(session_id, self.owner(session_id).remove_object.remote(session_id, obj_id, mask_format))
        for f in out["frames"]:
            f.pop("type")
        return {"session_id": session_id, **out, "mask_format": mask_format}

    async def reset(self, session_id: str) -> dict:
        """``POST /v1/video/sessions/{id}/reset``: sam2's ``reset_state``; the session's fields."""
        check_session_id(session_id)
        return _public(await self._call(session_id, self.owner(session_id).reset_session.remote(session_id)))

    async def close(self, session_id: str) -> dict:
        """``DELETE /v1/video/sessions/{id}``: ``{session_id, closed: true}``."""
        check_session_id(session_id)
        return await self._call(session_id, self.owner(session_id).close_session.remote(session_id))
