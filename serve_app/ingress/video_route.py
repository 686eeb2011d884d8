"""The parts of ``POST /v1/segment/video`` that are not the route itself (also used by the video sessions'
routes): reading the clip from the request, and the NDJSON stream of the tracker's records."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator

import numpy as np

from deployments.runtime.images import b64_to_bytes
from deployments.runtime.video_io import decode_frames, decode_video
from serve_app.ingress.errors import ApiError
from serve_app.ingress.responses import VideoFrameOut

log = logging.getLogger("ray.serve")


async def read_clip(req, upload: bytes | None, max_frames: int, max_frame_pixels: int) -> np.ndarray:
    """The request's clip as (N, H, W, 3) uint8 RGB: an MP4 file part or base64 ``video``, or ``frames``.

    Decoding runs in a worker thread, with the limits checked before or while decoding.

    Raises:
        ApiError: 422 when the clip is given twice or not at all.
        InputError: a clip that does not decode or is over a limit (see :mod:`deployments.runtime.video_io`).
    """
    if upload is not None and req.frames is not None:
        message = "frames: give either a video file part or frames, not both"
        raise ApiError(422, "invalid_request", message, "frames")
    if upload is not None or req.video is not None:
        data = upload if upload is not None else b64_to_bytes(req.video.base64, "video.base64")
        return await asyncio.to_thread(decode_video, data, max_frames, max_frame_pixels, "video")
    if req.frames is not None:
        frames = [f.base64 for f in req.frames]
        return await asyncio.to_thread(decode_frames, frames, max_frames, max_frame_pixels, "frames")
    message = "video: give the clip as a video (MP4 file part or base64) or as frames"
    raise ApiError(422, "invalid_request", message, "video")


def propagate_timing(frames: list[dict]) -> dict:
    """``propagate`` (sum) and ``propagate_per_frame`` (mean) in ms over frame records."""
    total = sum(f["propagate_ms"] for f in frames)
    return {"propagate": total, "propagate_per_frame": total / len(frames) if frames else 0.0}


async def collect_frames(records, timing: dict, t0: float) -> list[dict]:
    """Every frame record of a tracking run, in frame order; adds the propagate and total times."""
    frames = []
    async for rec in records:
        rec.pop("type")
        frames.append(rec)
    frames.sort(key=lambda r: r["frame_index"])
    timing.update(propagate_timing(frames))
    timing["total"] = (time.perf_counter() - t0) * 1e3
    return frames


def frame_line(rec: dict) -> str:
    """A tracker's ``frame`` record as its NDJSON line, validated into and serialised by
    :class:`serve_app.ingress.responses.VideoFrameOut` (the frame of the JSON answer), as the routes'
    JSON answers are by their models.

    Raises:
        pydantic.ValidationError: the record is not a ``VideoFrameOut`` (plus ``type``).
    """
    frame = VideoFrameOut.model_validate({k: v for k, v in rec.items() if k != "type"})
    return json.dumps({"type": rec["type"], **frame.model_dump(mode="json", exclude_unset=True)}) + "\n"


async def ndjson_lines(
    request_id: str, records, head: dict, timing: dict, t0: float, on_end, lost=None
) -> AsyncIterator[str]:
    """NDJSON lines: ``start`` (the head and ``timing_ms`` so far), one ``frame`` line per frame as the
    tracker yields it (:func:`frame_line`), then ``end`` with the totals, or an ``error`` line if tracking
    fails midway.

    Nothing is accumulated but the per-frame times. ``on_end(timing)`` runs once the stream ended well;
    the tracker is cancelled when the client goes away.

    Args:
        lost: ``(exception types, make_error)``: a failure of one of these types (the tracker's replica
            died) ends the stream with ``make_error()``'s body (a session's ``session_lost``) instead of
            ``internal``.
    """
    yield json.dumps({"type": "start", **head, "timing_ms": dict(timing)}) + "\n"
    per_frame = []
    try:
        async for rec in records:
            per_frame.append({"propagate_ms": rec["propagate_ms"]})
            yield frame_line(rec)
    except Exception as e:
        log.error("request %s: video tracking failed midway", request_id, exc_info=e)
        if lost is not None and isinstance(e, lost[0]):
            err = lost[1]()
        else:
            err = ApiError(500, "internal", "tracking failed midway; see the server log for this request id")
        yield json.dumps({"type": "error", **err.body(request_id)}) + "\n"
        return
    finally:
        records.cancel()  # a no-op once done; stops the tracker when the client went away
    timing.update(propagate_timing(per_frame))
    timing["total"] = (time.perf_counter() - t0) * 1e3
    on_end(timing)
    yield json.dumps({"type": "end", "frames": len(per_frame), "timing_ms": timing}) + "\n"
