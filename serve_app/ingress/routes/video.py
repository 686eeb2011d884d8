"""``POST /v1/segment/video``: track prompted objects through a clip (MP4 or frame list) in one request,
answered as JSON or, with ``stream``, as NDJSON lines frame by frame. See docs/video.md."""

from __future__ import annotations

import functools
import time

import ray
from fastapi import Request
from fastapi.responses import StreamingResponse

from deployments.contracts import VideoJob
from deployments.errors import InputError
from serve_app.ingress import request_examples as ex
from serve_app.ingress import responses as out
from serve_app.ingress.context import Context
from serve_app.ingress.errors import ApiError
from serve_app.ingress.http import parse_body, request_id, stage_errors
from serve_app.ingress.openapi import DescribedRouter
from serve_app.ingress.readiness import RANDOM_WEIGHTS_WARNING
from serve_app.ingress.video_route import collect_frames, ndjson_lines, read_clip
from serve_app.ingress.video_schemas import VideoRequest, check_video_objects, to_video_objects

router = DescribedRouter()


@router.post(
    "/v1/segment/video",
    **router.body_spec(VideoRequest, "video", ok=out.VideoResponse, examples=ex.VIDEO_EXAMPLES, ok_content=out.NDJSON),
)
@stage_errors
async def segment_video(request: Request, ctx: Context):
    """Track prompted objects through a clip (MP4 or frame list); JSON, or NDJSON with ``stream``.

    Everything that can be checked before tracking is checked first (4xx naming the field): the clip
    decodes, its frame count and size are within ``args.video`` limits, prompts lie on frames of the
    clip and inside them, object ids are unique. See docs/video.md.
    """
    t0 = time.perf_counter()
    if ctx.video is None:
        raise ApiError(404, "not_found", "this app has no video segmenter")
    lim = ctx.args.video
    req, upload = await parse_body(request, VideoRequest, ctx.args.limits.max_body_bytes, file_part="video")
    td = time.perf_counter()
    frames = await read_clip(req, upload, lim.max_frames, lim.max_frame_pixels)
    timing = {"decode_video": (time.perf_counter() - td) * 1e3}
    n, h, w = (int(v) for v in frames.shape[:3])
    check_video_objects(req.objects, n, w, h)
    if req.start_frame is not None and req.start_frame >= n:
        message = f"start_frame {req.start_frame} is outside the clip of {n} frames"
        raise ApiError(422, "out_of_clip", message, "start_frame")
    objects = tuple(to_video_objects(req.objects))
    job = VideoJob(objects, req.start_frame, req.max_frames, req.reverse, req.mask_format, req.polygon_tolerance_px)
    records = ctx.video.options(stream=True).track.remote(ray.put(frames), job)
    del frames  # the object store holds them now
    try:
        init = await records.__anext__()
    except InputError:
        raise
    except ValueError as e:  # the tracker's own checks; the ingress checks the same first
        raise ApiError(422, "invalid_request", str(e).splitlines()[-1][:300]) from None
    timing["init"] = init["init_ms"]
    head = {
        "model_id": init["model_id"],
        "weights": init["weights"],
        "num_frames": n,
        "width": w,
        "height": h,
        "obj_ids": [o.obj_id for o in req.objects],
    }
    if init["weights"] == "random":
        head["warnings"] = [RANDOM_WEIGHTS_WARNING]
    if req.stream:
        on_end = functools.partial(ctx.metrics.stages, "/v1/segment/video")
        lines = ndjson_lines(request_id(request), records, head, timing, t0, on_end)
        return StreamingResponse(lines, media_type="application/x-ndjson")
    frames_out = await collect_frames(records, timing, t0)
    ctx.metrics.stages("/v1/segment/video", timing)
    return {**head, "frames": frames_out, "timing_ms": timing}
