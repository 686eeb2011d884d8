"""Decoding an uploaded clip into frames: an MP4 (or WebM/MKV/AVI) with PyAV, or a list of JPEG/PNG frames.

PyAV (``av``) binds FFmpeg's libraries in-process and ships them in its wheels, so no ``ffmpeg`` binary is
needed. Limits are checked before or while decoding, never after: the frame size from the stream header,
the frame count as frames arrive.

Frames are (N, H, W, 3) uint8 RGB. A container's rotation metadata is not applied (frames are as stored);
a JPEG/PNG frame's EXIF orientation is (as for /v1/segment).
"""

from __future__ import annotations

import io

import numpy as np

from deployments.errors import (
    EmptyVideo,
    FrameSizeMismatch,
    FrameTooLarge,
    InvalidRequest,
    InvalidVideo,
    TooManyFrames,
)
from deployments.runtime.images import b64_to_bytes, decode_image

#: Container formats accepted as a video (FFmpeg demuxer names).
VIDEO_FORMATS = frozenset({"mov", "mp4", "m4a", "3gp", "3g2", "mj2", "matroska", "webm", "avi"})


def _too_many(max_frames: int, field: str) -> TooManyFrames:
    return TooManyFrames(f"the clip has more than {max_frames} frames, the limit per request", field)


def _check_size(w: int, h: int, max_frame_pixels: int, field: str) -> None:
    if w * h == 0:
        raise EmptyVideo(f"frames have 0 pixels ({w}x{h})", field)
    if w * h > max_frame_pixels:
        raise FrameTooLarge(f"frames are {w}x{h} = {w * h} pixels, over the limit of {max_frame_pixels}", field)


def decode_video(data: bytes, max_frames: int, max_frame_pixels: int, field: str = "video") -> np.ndarray:
    """Decode every frame of the first video stream of an MP4 (or MOV, WebM, MKV, AVI) file.

    Args:
        data: the file's bytes.
        max_frames: more frames than this is an error (decoding stops at frame ``max_frames + 1``).
        max_frame_pixels: width x height limit, checked from the stream header before decoding.
        field: request field named in errors.

    Returns:
        (N, H, W, 3) uint8 RGB, N >= 1, in presentation order.

    Raises:
        InvalidVideo: 400 ``invalid_video`` (not a video container, no video stream, corrupt data).
        EmptyVideo: 400 ``empty_video`` (no frames).
        TooManyFrames, FrameTooLarge: 413 ``too_many_frames``, 413 ``frame_too_large``.
        FrameSizeMismatch: 422 ``frame_size_mismatch`` (the frame size changes within the stream).
    """
    import av

    if not data:
        raise InvalidVideo("video is empty (0 bytes)", field)
    try:
        container = av.open(io.BytesIO(data), mode="r")
    except (av.FFmpegError, ValueError, OSError) as e:
        raise InvalidVideo(f"bytes are not a video file PyAV can open: {e}"[:300], field) from None
    with container:
        if not set(container.format.name.split(",")) & VIDEO_FORMATS:
            raise InvalidVideo(f"not a video container (format {container.format.name!r}); send an MP4", field)
        if not container.streams.video:
            raise InvalidVideo("the file has no video stream", field)
        stream = container.streams.video[0]
        _check_size(stream.codec_context.width, stream.codec_context.height, max_frame_pixels, field)
        frames: list[np.ndarray] = []
        try:
            for frame in container.decode(stream):
                if len(frames) == max_frames:
                    raise _too_many(max_frames, field)
                _check_size(frame.width, frame.height, max_frame_pixels, field)
                rgb = frame.to_ndarray(format="rgb24")
                if frames and rgb.shape != frames[0].shape:
                    raise FrameSizeMismatch(
                        f"frame {len(frames)} is {rgb.shape[1]}x{rgb.shape[0]}, "
                        f"frame 0 is {frames[0].shape[1]}x{frames[0].shape[0]}; all frames must have one size",
                        field,
                    )
                frames.append(rgb)
        except av.FFmpegError as e:
            raise InvalidVideo(f"the video is truncated or corrupt: {e}"[:300], field) from None
    if not frames:
        raise EmptyVideo("the video has no frames", field)
    return np.stack(frames)


def decode_frames(images_b64: list[str], max_frames: int, max_frame_pixels: int, field: str = "frames") -> np.ndarray:
    """Decode a list of base64 JPEG/PNG frames (EXIF orientation applied) into one array.

    Raises:
        InvalidRequest: 422 ``invalid_request`` (no frames).
        TooManyFrames: 413 ``too_many_frames``.
        InvalidBase64, InvalidImage, ImageTooLarge: 400 ``invalid_base64`` / ``invalid_image`` and 413
            ``image_too_large`` naming ``frames[i]``.
        FrameSizeMismatch: 422 ``frame_size_mismatch`` naming the first frame whose size differs from
            frame 0.
    """
    if not images_b64:
        raise InvalidRequest(f"{field}: the clip has zero frames", field)
    if len(images_b64) > max_frames:
        raise TooManyFrames(f"{len(images_b64)} frames, over the limit of {max_frames} per request", field)
    out: np.ndarray | None = None
    for i, b64 in enumerate(images_b64):
        at = f"{field}[{i}]"
        rgb = decode_image(b64_to_bytes(b64, f"{at}.base64"), max_frame_pixels, at)
        if out is None:
            out = np.empty((len(images_b64), *rgb.shape), np.uint8)
        elif rgb.shape != out.shape[1:]:
            raise FrameSizeMismatch(
                f"{at} is {rgb.shape[1]}x{rgb.shape[0]}, {field}[0] is {out.shape[2]}x{out.shape[1]}; "
                "all frames must have one size",
                at,
            )
        out[i] = rgb
    return out
