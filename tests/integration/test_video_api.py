"""POST /v1/segment/video over HTTP: parity with sam2's SAM2VideoPredictor on the bedroom clip, streaming,
MP4 against frames through the CLI, and bad input.

Every tracked frame costs one SAM 2 image encoding (seconds on CPU), so the clips here are short: the
first 8 real frames for parity (which the issue asks for), 3 of them for streaming, 2 for MP4 vs frames.
"""

from __future__ import annotations

import base64
import io
import json

import numpy as np
import pytest
from PIL import Image

from models.masks import decode_rle, rle_area, rle_bbox_xyxy
from tests.conftest import BEDROOM_BOX, BEDROOM_POINT, MODEL_ID, bedroom_frames, mask_iou, shared_file
from tests.integration.conftest import VIDEO_MAX_FRAME_PIXELS, VIDEO_MAX_FRAMES, VIDEO_SIZE_OVERRIDE

IOU_MIN = 0.999
OBJECTS = [
    {"obj_id": 1, "prompts": [{"frame_index": 0, "box_xyxy": BEDROOM_BOX}]},
    {"obj_id": 2, "prompts": [{"frame_index": 0, "points": [[*BEDROOM_POINT, 1]]}]},
]


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _frames_body(paths, **extra) -> dict:
    return {"frames": [{"base64": _b64(p.read_bytes())} for p in paths], "objects": OBJECTS, **extra}


def _masks(body: dict) -> dict[int, np.ndarray]:
    """frame_index -> (O, H, W) bool, objects in the order of ``obj_ids``."""
    return {f["frame_index"]: np.stack([decode_rle(o["rle"]) for o in f["objects"]]) for f in body["frames"]}


@pytest.fixture(scope="module")
def eight(client):
    """The endpoint's answer on the first 8 bedroom frames (JSON frame list)."""
    r = client.post("/v1/segment/video", json=_frames_body(bedroom_frames(8)))
    assert r.status_code == 200, r.text
    return r.json()


@pytest.fixture(scope="module")
def reference_eight(tiny_checkpoint, tmp_path_factory):
    """sam2's own SAM2VideoPredictor, built by sam2's builder from the same checkpoint file, reading the
    8 JPEGs from a folder with its own init_state."""
    import torch
    from sam2.build_sam import build_sam2_video_predictor

    from models.registry import get_model_spec

    folder = tmp_path_factory.mktemp("bedroom8")
    for p in bedroom_frames(8):
        (folder / p.name).symlink_to(p)
    torch.set_num_threads(2)
    config = get_model_spec(MODEL_ID, "sam2").config
    predictor = build_sam2_video_predictor(config, ckpt_path=str(tiny_checkpoint), device="cpu", hydra_overrides_extra=[VIDEO_SIZE_OVERRIDE])
    state = predictor.init_state(video_path=str(folder))
    predictor.add_new_points_or_box(state, frame_idx=0, obj_id=1, box=np.array(BEDROOM_BOX, np.float32))
    predictor.add_new_points_or_box(state, frame_idx=0, obj_id=2, points=np.array([BEDROOM_POINT], np.float32), labels=np.array([1], np.int32))
    out = {}
    for frame_idx, obj_ids, logits in predictor.propagate_in_video(state):
        assert list(obj_ids) == [1, 2]
        out[frame_idx] = (logits[:, 0] > 0.0).numpy()
    return out


def test_parity_with_sam2_video_predictor(eight, reference_eight, tiny_checkpoint):
    from deployments.runtime.weights import sha256_file

    assert eight["model_id"] == MODEL_ID
    assert eight["weights"] == f"sha256:{sha256_file(tiny_checkpoint)}"
    assert (eight["num_frames"], eight["width"], eight["height"], eight["obj_ids"]) == (8, 960, 540, [1, 2])
    ours = _masks(eight)
    assert sorted(ours) == sorted(reference_eight) == list(range(8))
    for t in range(8):
        assert ours[t].shape == reference_eight[t].shape == (2, 540, 960)
        for k in range(2):
            assert ours[t][k].any(), f"frame {t} object {k}: empty mask (a vacuous comparison)"
            iou = mask_iou(ours[t][k], reference_eight[t][k])
            assert iou >= IOU_MIN, f"frame {t} object {k}: IoU {iou:.5f}"
        assert not np.array_equal(ours[t][0], ours[t][1]), f"frame {t}: both objects have the same mask"


def test_response_fields(eight):
    for f in eight["frames"]:
        assert f["propagate_ms"] > 0
        assert [o["obj_id"] for o in f["objects"]] == [1, 2]
        for o in f["objects"]:
            assert o["area_px"] == rle_area(o["rle"]) and o["bbox_xyxy"] == rle_bbox_xyxy(o["rle"])
            assert 0.0 <= o["object_score"] <= 1.0
            assert o["object_score"] > 0.5 and o["object_score_logit"] > 0  # the test checkpoint's bias
    t = eight["timing_ms"]
    assert {"decode_video", "init", "propagate", "propagate_per_frame", "total"} <= set(t)
    assert t["propagate"] == pytest.approx(sum(f["propagate_ms"] for f in eight["frames"]))
    assert "warnings" not in eight


def test_streaming_equals_non_streaming(client, eight):
    """NDJSON while propagation runs: start line, one line per frame, end line; the same masks."""
    body = _frames_body(bedroom_frames(8), stream=True, max_frames=3)
    lines = []
    with client.stream("POST", "/v1/segment/video", json=body) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("application/x-ndjson")
        lines = [json.loads(line) for line in r.iter_lines() if line]
    kinds = [rec["type"] for rec in lines]
    assert kinds == ["start", "frame", "frame", "frame", "end"], kinds
    start, end = lines[0], lines[-1]
    assert (start["num_frames"], start["obj_ids"], start["weights"]) == (8, [1, 2], eight["weights"])
    assert set(start["timing_ms"]) == {"decode_video", "init"}
    assert end["frames"] == 3 and end["timing_ms"]["propagate_per_frame"] > 0
    streamed = _masks({"frames": lines[1:-1]})
    full = _masks(eight)
    assert sorted(streamed) == [0, 1, 2]
    for t, masks in streamed.items():
        for k in range(2):
            assert mask_iou(masks[k], full[t][k]) >= IOU_MIN


def test_mp4_and_frames_give_the_same_masks_through_the_cli(app_url, tmp_path, capsys):
    """`samgraph video --video clip.mp4` and `--frames DIR` on the same frames (the MP4's own decoded
    frames, as PNGs) give the same masks; --overlay-video writes a playable MP4."""
    from deployments.runtime.video_io import decode_video
    from serve_app.cli.main import main
    from serve_app.cli.render import encode_video

    clip = np.stack([np.asarray(Image.open(p).convert("RGB")) for p in bedroom_frames(2)])
    mp4 = tmp_path / "clip.mp4"
    encode_video(clip, str(mp4))
    decoded = decode_video(mp4.read_bytes(), 10, 10**7)
    assert decoded.shape == (2, 540, 960, 3)
    folder = tmp_path / "frames"
    folder.mkdir()
    for i, rgb in enumerate(decoded):
        Image.fromarray(rgb).save(folder / f"{i}.png")
    prompts = ["--box", f"1:{','.join(map(str, BEDROOM_BOX))}", "--point", f"2:{BEDROOM_POINT[0]},{BEDROOM_POINT[1]}"]
    out_mp4, out_dir, overlay = tmp_path / "mp4.json", tmp_path / "dir.json", tmp_path / "overlay.mp4"
    assert main(["video", "--api", app_url, "--video", str(mp4), *prompts, "--out", str(out_mp4), "--overlay-video", str(overlay)]) == 0
    assert main(["video", "--api", app_url, "--frames", str(folder), *prompts, "--out", str(out_dir)]) == 0
    a, b = json.loads(out_mp4.read_text()), json.loads(out_dir.read_text())
    assert a["obj_ids"] == b["obj_ids"] == [1, 2] and a["num_frames"] == b["num_frames"] == 2
    ma, mb = _masks(a), _masks(b)
    assert sorted(ma) == sorted(mb) == [0, 1]
    for t in ma:
        for k in range(2):
            assert ma[t][k].any()
            assert mask_iou(ma[t][k], mb[t][k]) >= IOU_MIN
    assert decode_video(overlay.read_bytes(), 10, 10**7).shape == (2, 540, 960, 3)
    assert "frames" in capsys.readouterr().out


# ---------------------------------------------------------------- bad input


def _png(w: int, h: int) -> str:
    buf = io.BytesIO()
    Image.new("RGB", (w, h)).save(buf, format="PNG")
    return _b64(buf.getvalue())


SMALL = _png(64, 48)
BOX = {"frame_index": 0, "box_xyxy": [4, 4, 40, 40]}


def _body(**kw) -> dict:
    return {"frames": [{"base64": SMALL}] * 3, "objects": [{"obj_id": 0, "prompts": [BOX]}], **kw}


BAD = [
    # (name, body, status, code, field)
    ("not_a_video", {"video": {"base64": _b64(b"not a video at all")}, "objects": OBJECTS}, 400, "invalid_video", "video"),
    ("image_as_video", {"video": {"base64": SMALL}, "objects": OBJECTS}, 400, "invalid_video", "video"),
    ("zero_frames", _body(frames=[]), 422, "invalid_request", "frames"),
    ("no_clip", {"objects": OBJECTS}, 422, "invalid_request", "video"),
    ("both_clips", _body(video={"base64": SMALL}), 422, "invalid_request", None),
    ("too_many_frames", _body(frames=[{"base64": SMALL}] * (VIDEO_MAX_FRAMES + 1)), 413, "too_many_frames", "frames"),
    ("frame_too_large", _body(frames=[{"base64": _png(1200, 1000)}]), 413, "image_too_large", "frames[0]"),
    ("frame_not_image", _body(frames=[{"base64": SMALL}, {"base64": _b64(b"nope")}]), 400, "invalid_image", "frames[1]"),
    ("frame_bad_base64", _body(frames=[{"base64": SMALL}, {"base64": "!!"}]), 400, "invalid_base64", "frames[1].base64"),
    ("frame_sizes_differ", _body(frames=[{"base64": SMALL}, {"base64": SMALL}, {"base64": _png(48, 64)}]), 422, "frame_size_mismatch", "frames[2]"),
    ("frame_index_outside", _body(objects=[{"obj_id": 0, "prompts": [BOX, {"frame_index": 3, "points": [[5, 5, 1]]}]}]), 422, "out_of_clip", "objects[0].prompts[1].frame_index"),
    ("negative_frame_index", _body(objects=[{"obj_id": 0, "prompts": [{"frame_index": -1, "points": [[5, 5, 1]]}]}]), 422, "invalid_request", "objects[0].prompts[0].frame_index"),
    ("duplicate_obj_id", _body(objects=[{"obj_id": 7, "prompts": [BOX]}, {"obj_id": 7, "prompts": [BOX]}]), 422, "invalid_request", "objects[1].obj_id"),
    ("two_prompts_one_frame", _body(objects=[{"obj_id": 0, "prompts": [BOX, BOX]}]), 422, "invalid_request", "objects[0]"),
    ("no_objects", _body(objects=[]), 422, "invalid_request", "objects"),
    ("empty_prompt", _body(objects=[{"obj_id": 0, "prompts": [{"frame_index": 0}]}]), 422, "invalid_request", "objects[0].prompts[0]"),
    ("box_outside_frame", _body(objects=[{"obj_id": 0, "prompts": [{"frame_index": 0, "box_xyxy": [4, 4, 70, 40]}]}]), 422, "out_of_image", "objects[0].prompts[0].box_xyxy"),
    ("point_outside_frame", _body(objects=[{"obj_id": 0, "prompts": [{"frame_index": 1, "points": [[5, 5, 1], [5, 49, 0]]}]}]), 422, "out_of_image", "objects[0].prompts[0].points[1]"),
    ("mask_of_other_size", _body(objects=[{"obj_id": 0, "prompts": [{"frame_index": 0, "mask_rle": {"size": [10, 10], "counts": "0"}}]}]), 422, "invalid_request", "objects[0].prompts[0].mask_rle"),
    ("mask_and_box", _body(objects=[{"obj_id": 0, "prompts": [{**BOX, "mask_rle": {"size": [48, 64], "counts": "0"}}]}]), 422, "invalid_request", "objects[0].prompts[0]"),
    ("start_frame_outside", _body(start_frame=3), 422, "out_of_clip", "start_frame"),
    ("max_frames_zero", _body(max_frames=0), 422, "invalid_request", "max_frames"),
    ("unknown_field", _body(revers=True), 422, "invalid_request", "revers"),
]


@pytest.mark.parametrize("name, body, status, code, field", BAD, ids=[b[0] for b in BAD])
def test_bad_input_names_the_field(client, name, body, status, code, field):
    r = client.post("/v1/segment/video", json=body)
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert err["code"] == code, err
    assert err["field"] == field, err


def test_bad_multipart_uploads(client):
    """The real clip is over the test limit of frames; a JPEG is not a video; an image part is not a video part."""
    mp4 = shared_file("video", "bedroom", "bedroom.mp4").read_bytes()
    request = json.dumps({"objects": OBJECTS})
    r = client.post("/v1/segment/video", files={"video": ("bedroom.mp4", mp4)}, data={"request": request})
    assert r.status_code == 413 and r.json()["error"]["code"] == "too_many_frames" and r.json()["error"]["field"] == "video"
    jpg = bedroom_frames(1)[0].read_bytes()
    r = client.post("/v1/segment/video", files={"video": ("x.mp4", jpg)}, data={"request": request})
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_video"
    r = client.post("/v1/segment/video", files={"image": ("x.mp4", mp4)}, data={"request": request})
    assert r.status_code == 422 and r.json()["error"]["field"] == "image"
    r = client.post("/v1/segment/video", files={"video": ("x.mp4", mp4)}, data={"request": json.dumps({"objects": OBJECTS, "frames": [{"base64": SMALL}]})})
    assert r.status_code == 422 and r.json()["error"]["field"] == "frames"
    assert VIDEO_MAX_FRAME_PIXELS >= 960 * 540  # the real frames themselves fit


def test_readiness_reports_the_video_stage(client):
    r = client.get("/readyz")
    assert r.status_code == 200, r.text
    assert r.json()["devices"]["video"] == "cpu"
    stats = client.get("/v1/stats").json()
    assert {"clips", "frames", "busy_s"} <= set(stats["video"])
