"""HTTP request body of /v1/segment/video (pydantic v2) and its checks against the decoded clip.

Prompts are those of /v1/segment (``serve_app/ingress/schemas.py``), one per object and frame; coordinates are
pixels of the frames, (x, y) with x right and y down.
"""

from __future__ import annotations

import numpy as np
from pydantic import BaseModel, Field, model_validator

from deployments.errors import OutOfImage
from models.masks import POLYGON_TOLERANCE_PX, decode_rle
from models.sam2_video_types import FramePrompt, VideoObject
from serve_app.ingress.errors import ApiError
from serve_app.ingress.schemas import (
    MASK_FORMAT,
    MAX_PROMPTS,
    POLYGON_TOLERANCE,
    STRICT,
    GeometryIn,
    ImageIn,
    PromptIn,
    RleIn,
    check_prompts_in_image,
)

MAX_OBJECTS = 32  # tracked objects per clip


class VideoPromptIn(GeometryIn):
    """One object's prompt on one frame of a clip: ``box_xyxy`` and/or ``points`` (as in /v1/segment), or
    a ``mask_rle`` of the frame's size."""

    frame_index: int = Field(ge=0)
    mask_rle: RleIn | None = None

    @model_validator(mode="after")
    def _one_kind(self) -> VideoPromptIn:
        geometric = self.box_xyxy is not None or self.points is not None
        if self.mask_rle is not None and geometric:
            raise ValueError("give either mask_rle or box_xyxy/points on one frame, not both")
        if self.mask_rle is None and not geometric:
            raise ValueError("a prompt needs box_xyxy, points or mask_rle")
        return self


class VideoObjectIn(BaseModel):
    """One object to track: its id (unique in the request) and its prompts, one per frame."""

    model_config = STRICT
    obj_id: int = Field(ge=0, le=2**31 - 1)
    prompts: list[VideoPromptIn] = Field(min_length=1, max_length=MAX_PROMPTS)

    @model_validator(mode="after")
    def _one_per_frame(self) -> VideoObjectIn:
        seen: set[int] = set()
        for p in self.prompts:
            if p.frame_index in seen:
                raise ValueError(f"two prompts on frame {p.frame_index}; give one prompt per frame and object")
            seen.add(p.frame_index)
        return self


class VideoRequest(BaseModel):
    """Body of ``POST /v1/segment/video`` (or the ``request`` part of a multipart upload with a ``video``
    file part): the clip, the objects and how far to track them."""

    model_config = STRICT
    video: ImageIn | None = None
    frames: list[ImageIn] | None = None
    objects: list[VideoObjectIn] = Field(min_length=1, max_length=MAX_OBJECTS)
    start_frame: int | None = Field(default=None, ge=0)
    max_frames: int | None = Field(default=None, ge=1)
    reverse: bool = False
    mask_format: MASK_FORMAT = "rle"
    polygon_tolerance_px: POLYGON_TOLERANCE = POLYGON_TOLERANCE_PX
    stream: bool = False

    @model_validator(mode="after")
    def _one_clip(self) -> VideoRequest:
        if self.video is not None and self.frames is not None:
            raise ValueError("give either video (an MP4) or frames (JPEG/PNG images), not both")
        return self


def check_video_objects(objects: list[VideoObjectIn], num_frames: int, width: int, height: int) -> None:
    """Objects against the decoded clip: unique ``obj_id``, prompts on frames of the clip, coordinates in
    the frame, masks of the frame's size.

    Raises:
        ApiError: 422 naming the field, e.g. ``objects[1].obj_id`` (``invalid_request``, a duplicate id),
            ``objects[0].prompts[1].frame_index`` (``out_of_clip``), ``objects[0].prompts[0].mask_rle``
            (``invalid_request``).
        OutOfImage: 422 ``out_of_image`` naming the prompt field, e.g. ``objects[0].prompts[0].box_xyxy``.
    """
    seen: set[int] = set()
    for i, obj in enumerate(objects):
        if obj.obj_id in seen:
            raise ApiError(
                422,
                "invalid_request",
                f"objects[{i}].obj_id: obj_id {obj.obj_id} is given twice; ids must be unique",
                f"objects[{i}].obj_id",
            )
        seen.add(obj.obj_id)
        for j, p in enumerate(obj.prompts):
            at = f"objects[{i}].prompts[{j}]"
            if p.frame_index >= num_frames:
                raise ApiError(
                    422,
                    "out_of_clip",
                    f"frame_index {p.frame_index} is outside the clip of {num_frames} frames (0..{num_frames - 1})",
                    f"{at}.frame_index",
                )
            if p.mask_rle is not None:
                if list(p.mask_rle.size) != [height, width]:
                    raise ApiError(
                        422,
                        "invalid_request",
                        f"mask_rle: size {list(p.mask_rle.size)} differs from the frames' [{height}, {width}]",
                        f"{at}.mask_rle",
                    )
            else:
                try:
                    check_prompts_in_image([PromptIn(box_xyxy=p.box_xyxy, points=p.points)], width, height, None)
                except OutOfImage as e:
                    raise OutOfImage(e.message, f"{at}.{e.field}") from None


def to_video_objects(objects: list[VideoObjectIn]) -> list[VideoObject]:
    """Validated objects -> the tracker's :class:`models.sam2_video_types.VideoObject` (masks decoded).

    Raises:
        ApiError: 422 for a ``mask_rle`` that does not decode.
    """
    out = []
    for i, obj in enumerate(objects):
        prompts = []
        for j, p in enumerate(obj.prompts):
            if p.mask_rle is not None:
                try:
                    mask = decode_rle(p.mask_rle.model_dump())
                except ValueError as e:
                    raise ApiError(
                        422, "invalid_request", f"mask_rle: {e}", f"objects[{i}].prompts[{j}].mask_rle"
                    ) from None
                prompts.append(FramePrompt(p.frame_index, mask=mask))
                continue
            pts = np.asarray(p.points, dtype=np.float64) if p.points else None
            prompts.append(
                FramePrompt(
                    p.frame_index,
                    point_coords=None if pts is None else pts[:, :2].astype(np.float32),
                    point_labels=None if pts is None else pts[:, 2].astype(np.int32),
                    box_xyxy=None if p.box_xyxy is None else np.asarray(p.box_xyxy, np.float32),
                )
            )
        out.append(VideoObject(obj.obj_id, tuple(prompts)))
    return out
