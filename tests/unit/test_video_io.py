"""deployments.runtime.video_io (PyAV decoding, frame lists, limits), the video request schema and the CLI's video flags."""

from __future__ import annotations

import argparse
import base64
import io

import numpy as np
import pytest
from PIL import Image

from deployments.errors import InputError
from deployments.runtime.video_io import decode_frames, decode_video
from serve_app.cli.flags import build_video_objects, frame_files, parse_obj_box, parse_obj_point
from serve_app.cli.main import make_parser
from serve_app.cli.render import encode_video
from serve_app.ingress.errors import ApiError
from serve_app.ingress.video_schemas import VideoRequest, check_video_objects, to_video_objects
from tests.conftest import shared_file


def _png_b64(w: int, h: int, value: int = 0) -> str:
    buf = io.BytesIO()
    Image.new("RGB", (w, h), (value, value, value)).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


def _input_error(fn, *args) -> InputError | ApiError:
    """The typed error of the decoders (``InputError``) or of the ingress's checks (``ApiError``): both
    carry the status, code and field of the 4xx."""
    with pytest.raises((InputError, ApiError)) as info:
        fn(*args)
    return info.value


def test_decode_the_bedroom_mp4():
    frames = decode_video(shared_file("video", "bedroom", "bedroom.mp4").read_bytes(), 300, 10**7)
    assert frames.shape == (200, 540, 960, 3) and frames.dtype == np.uint8
    assert frames.std() > 10  # real pictures, not blank frames


def test_mp4_limits_and_bad_bytes(tmp_path):
    rng = np.random.default_rng(0)
    clip = rng.integers(0, 255, (5, 48, 64, 3), dtype=np.uint8)
    encode_video(clip, str(tmp_path / "c.mp4"))
    data = (tmp_path / "c.mp4").read_bytes()
    assert decode_video(data, 5, 64 * 48).shape == (5, 48, 64, 3)
    e = _input_error(decode_video, data, 4, 10**6)
    assert (e.status, e.code, e.field) == (413, "too_many_frames", "video")
    e = _input_error(decode_video, data, 10, 64 * 48 - 1)
    assert (e.status, e.code) == (413, "frame_too_large")
    for bad in (b"", b"no video here", data[: len(data) // 3], base64.b64decode(_png_b64(8, 8))):
        e = _input_error(decode_video, bad, 10, 10**6)
        assert (e.status, e.code, e.field) == (400, "invalid_video", "video")


def test_odd_sizes_are_padded_for_h264(tmp_path):
    encode_video(np.zeros((2, 47, 63, 3), np.uint8), str(tmp_path / "odd.mp4"))
    assert decode_video((tmp_path / "odd.mp4").read_bytes(), 5, 10**6).shape == (2, 48, 64, 3)


def test_decode_frames():
    frames = decode_frames([_png_b64(16, 8, 10), _png_b64(16, 8, 200)], 5, 1000)
    assert frames.shape == (2, 8, 16, 3) and frames[0, 0, 0, 0] == 10 and frames[1, 0, 0, 0] == 200
    e = _input_error(decode_frames, [], 5, 1000)
    assert (e.status, e.field) == (422, "frames")
    e = _input_error(decode_frames, [_png_b64(16, 8)] * 6, 5, 1000)
    assert (e.status, e.code, e.field) == (413, "too_many_frames", "frames")
    e = _input_error(decode_frames, [_png_b64(16, 8), _png_b64(8, 16)], 5, 1000)
    assert (e.status, e.code, e.field) == (422, "frame_size_mismatch", "frames[1]")
    e = _input_error(decode_frames, [_png_b64(16, 8), "!!"], 5, 1000)
    assert (e.status, e.code, e.field) == (400, "invalid_base64", "frames[1].base64")


def _req(objects) -> VideoRequest:
    return VideoRequest.model_validate({"frames": [{"base64": "x"}], "objects": objects})


def test_check_video_objects_names_the_field():
    box = {"frame_index": 0, "box_xyxy": [1, 1, 5, 5]}
    cases = [
        ([{"obj_id": 1, "prompts": [box]}, {"obj_id": 1, "prompts": [box]}], "objects[1].obj_id", "invalid_request"),
        ([{"obj_id": 1, "prompts": [box, {"frame_index": 4, "points": [[1, 1, 1]]}]}], "objects[0].prompts[1].frame_index", "out_of_clip"),
        ([{"obj_id": 1, "prompts": [{"frame_index": 1, "box_xyxy": [1, 1, 11, 5]}]}], "objects[0].prompts[0].box_xyxy", "out_of_image"),
        ([{"obj_id": 1, "prompts": [{"frame_index": 1, "points": [[1, 1, 1], [1, 9, "bg"]]}]}], "objects[0].prompts[0].points[1]", "out_of_image"),
        ([{"obj_id": 1, "prompts": [{"frame_index": 1, "mask_rle": {"size": [9, 10], "counts": "0"}}]}], "objects[0].prompts[0].mask_rle", "invalid_request"),
    ]
    for objects, field, code in cases:
        e = _input_error(check_video_objects, _req(objects).objects, 4, 10, 8)
        assert (e.field, e.code) == (field, code)
    check_video_objects(_req([{"obj_id": 1, "prompts": [box]}]).objects, 4, 10, 8)


def test_to_video_objects():
    from models.masks import encode_rle

    mask = np.zeros((8, 10), bool)
    mask[2:5, 3:7] = True
    objects = to_video_objects(
        _req(
            [
                {"obj_id": 3, "prompts": [{"frame_index": 0, "box_xyxy": [1, 1, 5, 5], "points": [[2, 2, "fg"], [4, 4, 0]]}]},
                {"obj_id": 4, "prompts": [{"frame_index": 2, "mask_rle": encode_rle(mask)}]},
            ]
        ).objects
    )
    a, b = objects
    assert a.obj_id == 3 and a.prompts[0].box_xyxy.tolist() == [1, 1, 5, 5]
    assert a.prompts[0].point_coords.tolist() == [[2, 2], [4, 4]] and a.prompts[0].point_labels.tolist() == [1, 0]
    assert b.obj_id == 4 and b.prompts[0].frame_index == 2 and np.array_equal(b.prompts[0].mask, mask)


def test_cli_video_flags(tmp_path):
    assert parse_obj_box("2:1,2,3,4") == (2, [1.0, 2.0, 3.0, 4.0])
    assert parse_obj_box("1,2,3,4") == (0, [1.0, 2.0, 3.0, 4.0])
    assert parse_obj_point("1:5,6,bg") == (1, [5.0, 6.0, 0])
    for bad in ("x:1,2,3,4", "-1:1,2,3,4", "1:1,2,3"):
        with pytest.raises(argparse.ArgumentTypeError):
            parse_obj_box(bad)
    objects = build_video_objects([(0, [1, 2, 3, 4])], [(1, [5.0, 6.0, 1]), (0, [2.0, 3.0, 0]), (1, [7.0, 8.0, 1])], frame_index=3)
    assert objects == [
        {"obj_id": 0, "prompts": [{"frame_index": 3, "box_xyxy": [1, 2, 3, 4], "points": [[2.0, 3.0, 0]]}]},
        {"obj_id": 1, "prompts": [{"frame_index": 3, "points": [[5.0, 6.0, 1], [7.0, 8.0, 1]]}]},
    ]
    VideoRequest.model_validate({"frames": [{"base64": "x"}], "objects": objects})  # the service accepts it
    with pytest.raises(ValueError, match="two --box"):
        build_video_objects([(0, [1, 2, 3, 4]), (0, [1, 2, 3, 4])], [])
    args = make_parser().parse_args(["video", "--frames", "d", "--box", "0:1,2,3,4", "--point", "1:5,6", "--reverse"])
    assert args.box == [(0, [1.0, 2.0, 3.0, 4.0])] and args.point == [(1, [5.0, 6.0, 1])] and args.reverse
    with pytest.raises(SystemExit):
        make_parser().parse_args(["video", "--frames", "d", "--video", "v.mp4"])
    for name in ("10.jpg", "9.jpg", "100.png", "notes.txt"):
        (tmp_path / name).write_bytes(b"")
    assert [p.name for p in frame_files(tmp_path)] == ["9.jpg", "10.jpg", "100.png"]
