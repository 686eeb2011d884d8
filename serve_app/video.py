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

from serve_app.errors import ApiError
from serve_app.images import b64_to_bytes, decode_image

#: Container formats accepted as a video (FFmpeg demuxer names).
VIDEO_FORMATS = frozenset({"mov", "mp4", "m4a", "3gp", "3g2", "mj2", "matroska", "webm", "avi"})


def _too_many(max_frames: int, field: str) -> ApiError:
    return ApiError(413, "too_many_frames", f"the clip has more than {max_frames} frames, the limit per request", field)


def _check_size(w: int, h: int, max_frame_pixels: int, field: str) -> None:
    if w * h == 0:
        raise ApiError(400, "empty_video", f"frames have 0 pixels ({w}x{h})", field)
    if w * h > max_frame_pixels:
        raise ApiError(413, "frame_too_large", f"frames are {w}x{h} = {w * h} pixels, over the limit of {max_frame_pixels}", field)


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
        ApiError: 400 ``invalid_video`` (not a video container, no video stream, corrupt data),
            400 ``empty_video`` (no frames), 413 ``too_many_frames``, 413 ``frame_too_large``,
            422 ``frame_size_mismatch`` (the frame size changes within the stream).
    """
    import av

    if not data:
        raise ApiError(400, "invalid_video", "video is empty (0 bytes)", field)
    try:
        container = av.open(io.BytesIO(data), mode="r")
    except (av.FFmpegError, ValueError, OSError) as e:
        raise ApiError(400, "invalid_video", f"bytes are not a video file PyAV can open: {e}"[:300], field) from None
    with container:
        if not set(container.format.name.split(",")) & VIDEO_FORMATS:
            raise ApiError(400, "invalid_video", f"not a video container (format {container.format.name!r}); send an MP4", field)
        if not container.streams.video:
            raise ApiError(400, "invalid_video", "the file has no video stream", field)
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
                    raise ApiError(422, "frame_size_mismatch", f"frame {len(frames)} is {rgb.shape[1]}x{rgb.shape[0]}, frame 0 is {frames[0].shape[1]}x{frames[0].shape[0]}; all frames must have one size", field)
                frames.append(rgb)
        except av.FFmpegError as e:
            raise ApiError(400, "invalid_video", f"the video is truncated or corrupt: {e}"[:300], field) from None
    if not frames:
        raise ApiError(400, "empty_video", "the video has no frames", field)
    return np.stack(frames)


def decode_frames(images_b64: list[str], max_frames: int, max_frame_pixels: int, field: str = "frames") -> np.ndarray:
    """Decode a list of base64 JPEG/PNG frames (EXIF orientation applied) into one array.

    Raises:
        ApiError: 422 ``invalid_request`` (no frames), 413 ``too_many_frames``, 400 ``invalid_base64`` /
            ``invalid_image`` and 413 ``image_too_large`` naming ``frames[i]``, 422
            ``frame_size_mismatch`` naming the first frame whose size differs from frame 0.
    """
    if not images_b64:
        raise ApiError(422, "invalid_request", f"{field}: the clip has zero frames", field)
    if len(images_b64) > max_frames:
        raise ApiError(413, "too_many_frames", f"{len(images_b64)} frames, over the limit of {max_frames} per request", field)
    out: np.ndarray | None = None
    for i, b64 in enumerate(images_b64):
        at = f"{field}[{i}]"
        rgb = decode_image(b64_to_bytes(b64, f"{at}.base64"), max_frame_pixels, at)
        if out is None:
            out = np.empty((len(images_b64), *rgb.shape), np.uint8)
        elif rgb.shape != out.shape[1:]:
            raise ApiError(
                422, "frame_size_mismatch",
                f"{at} is {rgb.shape[1]}x{rgb.shape[0]}, {field}[0] is {out.shape[2]}x{out.shape[1]}; all frames must have one size", at,
            )
        out[i] = rgb
    return out


def encode_video(frames, path: str, fps: float = 24.0) -> None:
    """Write (H, W, 3) uint8 RGB frames (any iterable) to an H.264 MP4 with PyAV (MPEG-4 Part 2 where
    this PyAV has no libx264). Odd sizes are padded by one pixel (H.264 needs even sizes). CLI only.
    """
    from fractions import Fraction

    import av

    codec = "libx264" if "libx264" in av.codecs_available else "mpeg4"
    with av.open(path, mode="w") as container:
        stream = None
        for rgb in frames:
            h, w = rgb.shape[:2]
            if stream is None:
                stream = container.add_stream(codec, rate=Fraction(fps).limit_denominator(1000))
                stream.width, stream.height, stream.pix_fmt = w + w % 2, h + h % 2, "yuv420p"
            if (w % 2) or (h % 2):
                rgb = np.pad(rgb, ((0, h % 2), (0, w % 2), (0, 0)), mode="edge")
            for packet in stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24")):
                container.mux(packet)
        if stream is not None:
            for packet in stream.encode():
                container.mux(packet)


def overlay_frames(frames, frame_masks: dict[int, list[np.ndarray]], alpha: float = 0.5):
    """Frames with each object's mask tinted (colour by object order, ``render.PALETTE``) and outlined.

    Args:
        frames: iterable of (H, W, 3) uint8 RGB, in clip order.
        frame_masks: frame index -> one (H, W) bool mask per object; frames not in it are left as they are.
        alpha: tint strength in [0, 1].

    Yields:
        (H, W, 3) uint8 RGB per frame. CLI only.
    """
    from serve_app.render import PALETTE

    for i, frame in enumerate(frames):
        masks = frame_masks.get(i)
        if not masks:
            yield frame
            continue
        rgb = frame.astype(np.float32)
        for k, mask in enumerate(masks):
            colour = PALETTE[k % len(PALETTE)]
            rgb[mask] = (1 - alpha) * rgb[mask] + alpha * colour
            edge = mask & ~(np.roll(mask, 1, 0) & np.roll(mask, -1, 0) & np.roll(mask, 1, 1) & np.roll(mask, -1, 1))
            rgb[edge] = colour
        yield rgb.clip(0, 255).astype(np.uint8)
