"""models.sam2_video_session.VideoSession against sam2's SAM2VideoPredictor on one correction sequence
(tests/video_sequence.py), and the session's own rules."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from models.sam2_video_session import VideoSession
from models.sam2_video_types import FramePrompt
from tests.conftest import BEDROOM_BOX, MODEL_ID, bedroom_frames
from tests.video_sequence import NUM_FRAMES, STEPS, assert_same, run_reference


def _rgb(paths) -> np.ndarray:
    return np.stack([np.asarray(Image.open(p).convert("RGB")) for p in paths])


def run_session(session: VideoSession) -> list[dict]:
    out = []
    for kind, kw in STEPS:
        if kind == "prompt":
            pts = None if "points" not in kw else np.array(kw["points"], np.float32)
            prompt = FramePrompt(
                kw["frame_index"],
                point_coords=pts,
                point_labels=None if pts is None else np.array(kw["point_labels"], np.int32),
                box_xyxy=None if "box_xyxy" not in kw else np.array(kw["box_xyxy"], np.float32),
            )
            fm = session.add_prompt(kw["obj_id"], prompt, kw.get("clear_old_points", True))
            out.append({fm.frame_index: (list(fm.obj_ids), fm.masks)})
        elif kind == "propagate":
            out.append({fm.frame_index: (list(fm.obj_ids), fm.masks) for fm in session.propagate(kw.get("start_frame"), None, kw["direction"])})
        else:
            out.append({fm.frame_index: (list(fm.obj_ids), fm.masks) for fm in session.remove_object(kw["obj_id"])})
    return out


#: The model reads 256 px frames here instead of 1024: 16 times fewer pixels per encoding, so the
#: sequence's ~12 tracked frames stay cheap on 2 cores. Both sides run the same override.
SMALL = ["++model.image_size=256"]


def _sam2_predictor(tiny_checkpoint):
    """sam2's own SAM2VideoPredictor, built by sam2's builder from the test checkpoint file."""
    from sam2.build_sam import build_sam2_video_predictor

    from models.registry import get_sam2_checkpoint

    torch.set_num_threads(2)
    cfg = get_sam2_checkpoint(MODEL_ID).config
    return build_sam2_video_predictor(cfg, ckpt_path=str(tiny_checkpoint), device="cpu", hydra_overrides_extra=SMALL)


@pytest.fixture(scope="module")
def video_model(tiny_checkpoint):
    return _sam2_predictor(tiny_checkpoint)


@pytest.fixture(scope="module")
def reference_steps(tiny_checkpoint, tmp_path_factory):
    """The sequence on a second SAM2VideoPredictor, with sam2's init_state reading JPEGs from a folder."""
    folder = tmp_path_factory.mktemp("bedroom_session")
    for p in bedroom_frames(NUM_FRAMES):
        (folder / p.name).symlink_to(p)
    predictor = _sam2_predictor(tiny_checkpoint)
    return run_reference(predictor, predictor.init_state(video_path=str(folder)))


def test_correction_sequence_equals_sam2(video_model, reference_steps):
    session = VideoSession(video_model, _rgb(bedroom_frames(NUM_FRAMES)))
    ours = run_session(session)
    assert_same(ours, reference_steps)
    assert session.obj_ids == (2,)
    # frames + state: the 5 uint8 frames and, per tracked frame and object, memories and masks
    assert session.nbytes() > NUM_FRAMES * 540 * 960 * 3


def test_cancel_stops_before_the_next_frame_and_rules(video_model):
    frames = _rgb(bedroom_frames(3))
    session = VideoSession(video_model, frames)
    with pytest.raises(ValueError, match="no object"):
        next(session.propagate())
    with pytest.raises(ValueError, match="outside the clip"):
        session.add_prompt(1, FramePrompt(3, box_xyxy=np.array(BEDROOM_BOX, np.float32)))
    with pytest.raises(ValueError, match="clear_old_points"):
        session.add_prompt(1, FramePrompt(0, box_xyxy=np.array(BEDROOM_BOX, np.float32)), clear_old_points=False)
    with pytest.raises(ValueError, match="outside the 960x540"):
        session.add_prompt(1, FramePrompt(0, point_coords=np.array([[970, 5]], np.float32), point_labels=np.array([1], np.int32)))
    assert session.obj_ids == ()  # refused prompts leave no object behind
    session.add_prompt(1, FramePrompt(0, box_xyxy=np.array(BEDROOM_BOX, np.float32)))
    done = []
    for fm in session.propagate(cancelled=lambda: len(done) == 1):
        done.append(fm.frame_index)
    assert done == [0] and session.frames_tracked == 1
    with pytest.raises(KeyError):
        session.remove_object(9)
    session.reset()
    assert session.obj_ids == ()
