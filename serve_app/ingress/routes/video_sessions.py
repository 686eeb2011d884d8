"""The interactive video sessions (``/v1/video/sessions``): open one on a clip, prompt objects on frames,
propagate, cancel, remove an object, reset, close. The logic, and where a session lives, are
:mod:`serve_app.ingress.video_sessions`; see docs/video.md."""

from __future__ import annotations

from fastapi import Request

from serve_app.ingress import request_examples as ex
from serve_app.ingress import responses as out
from serve_app.ingress.context import Context
from serve_app.ingress.http import stage_errors
from serve_app.ingress.openapi import DescribedRouter
from serve_app.ingress.params import MaskFormatQuery, ObjIdPath, SessionIdPath
from serve_app.ingress.video_sessions import OpenSessionRequest, PropagateRequest, SessionPromptRequest

#: What a route about one session answers besides 200: 404 unknown_session / session_lost (or no video
#: segmenter), 422 a malformed id, 503 a stage that cannot take it.
SESSION_ERRORS = (404, 422, 503)
BASE = "/v1/video/sessions"

router = DescribedRouter()


@router.post(
    BASE, **router.body_spec(OpenSessionRequest, "video", ok=out.SessionInfo, examples=ex.SESSION_EXAMPLES)
)
@stage_errors
async def open_video_session(request: Request, ctx: Context) -> dict:
    """Open an interactive session on a clip (MP4 part or frame list); see docs/video.md."""
    return await ctx.video_sessions().open(request)


@router.get(BASE + "/{session_id}", **router.route_spec(out.SessionInfo, *SESSION_ERRORS))
@stage_errors
async def video_session(session_id: SessionIdPath, ctx: Context) -> dict:
    """A session's clip, objects and expiry."""
    return await ctx.video_sessions().info(session_id)


@router.post(
    BASE + "/{session_id}/prompts",
    **router.body_spec(SessionPromptRequest, None, ok=out.SessionFrame, examples=ex.SESSION_PROMPT_EXAMPLES),
)
@stage_errors
async def video_session_prompt(session_id: SessionIdPath, request: Request, ctx: Context) -> dict:
    """Points, a box or a mask for one object on one frame; that frame's masks for every object."""
    return await ctx.video_sessions().prompt(session_id, request)


@router.post(
    BASE + "/{session_id}/propagate",
    **router.body_spec(PropagateRequest, None, examples=ex.PROPAGATE_EXAMPLES, ok_content=out.NDJSON, streams=True),
)
@stage_errors
async def video_session_propagate(session_id: SessionIdPath, request: Request, ctx: Context):
    """Track the session's objects forward, backward or both; NDJSON, one line per frame."""
    return await ctx.video_sessions().propagate(session_id, request)


@router.delete(BASE + "/{session_id}/propagation", **router.route_spec(out.SessionCancelled, *SESSION_ERRORS))
@stage_errors
async def video_session_cancel(session_id: SessionIdPath, ctx: Context) -> dict:
    """Stop the session's running propagation before its next frame."""
    return await ctx.video_sessions().cancel(session_id)


@router.delete(BASE + "/{session_id}/objects/{obj_id}", **router.route_spec(out.ObjectRemoved, *SESSION_ERRORS))
@stage_errors
async def video_session_remove_object(
    session_id: SessionIdPath, obj_id: ObjIdPath, ctx: Context, mask_format: MaskFormatQuery = "rle"
) -> dict:
    """Remove an object (sam2's remove_object)."""
    return await ctx.video_sessions().remove_object(session_id, obj_id, mask_format)


@router.post(BASE + "/{session_id}/reset", **router.route_spec(out.SessionInfo, *SESSION_ERRORS))
@stage_errors
async def video_session_reset(session_id: SessionIdPath, ctx: Context) -> dict:
    """Drop every object and prompt (sam2's reset_state); the clip stays."""
    return await ctx.video_sessions().reset(session_id)


@router.delete(BASE + "/{session_id}", **router.route_spec(out.SessionClosed, *SESSION_ERRORS))
@stage_errors
async def video_session_close(session_id: SessionIdPath, ctx: Context) -> dict:
    """Close the session; later calls about it answer 404 unknown_session."""
    return await ctx.video_sessions().close(session_id)
