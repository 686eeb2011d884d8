"""models.sam2_video_session.VideoSession against sam2's SAM2VideoPredictor on one correction sequence
(tests/video_sequence.py): the session's model built by ours, sam2's by sam2's builder, both with
``add_all_frames_to_correct_as_cond`` on; and the session's own rules."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from models.sam2_video_session import VideoSession
from models.sam2_video_types import FramePrompt
from tests.conftest import BEDROOM_BOX, BEDROOM_POINT, MODEL_ID, bedroom_frames
from tests.video_sequence import (
    CORRECT_AS_COND,
    LAST,
    NUM_FRAMES,
    STEPS,
    assert_correction_kept,
    assert_same,
    run_reference,
)


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


#: The models read 256 px frames here instead of 1024: 16 times fewer pixels per encoding, so the
#: sequence's ~12 tracked frames stay cheap on 2 cores. Both sides run the same override.
IMAGE_SIZE = 256


@pytest.fixture(scope="module")
def video_model(tiny_checkpoint):
    """Our build (what VideoSegmenter runs), weights loaded strictly from the test checkpoint file."""
    from deployments.runtime.model_weights import load_state_dict
    from models.sam2_video import build_sam2_video_model

    torch.set_num_threads(2)
    return build_sam2_video_model(MODEL_ID, load_state_dict(tiny_checkpoint)[0], image_size=IMAGE_SIZE)


@pytest.fixture(scope="module")
def reference(tiny_checkpoint, tmp_path_factory):
    """The sequence on sam2's own SAM2VideoPredictor, built by sam2's builder from the checkpoint file with
    the same overrides, its init_state reading JPEGs from a folder: (answers, superseded results)."""
    from sam2.build_sam import build_sam2_video_predictor

    from models.registry import get_model_spec

    folder = tmp_path_factory.mktemp("bedroom_session")
    for p in bedroom_frames(NUM_FRAMES):
        (folder / p.name).symlink_to(p)
    torch.set_num_threads(2)
    overrides = [f"++model.image_size={IMAGE_SIZE}", CORRECT_AS_COND]
    predictor = build_sam2_video_predictor(get_model_spec(MODEL_ID, "sam2").config, ckpt_path=str(tiny_checkpoint), device="cpu", hydra_overrides_extra=overrides)
    superseded: dict = {}
    return run_reference(predictor, predictor.init_state(video_path=str(folder)), superseded=superseded), superseded


def _kept(session: VideoSession, frame_idx: int) -> np.ndarray:
    """(O, H, W) bool: the masks the session's state holds for every object on ``frame_idx``, brought to
    the frame's size by sam2's own ``_get_orig_video_res_output``."""
    outs = [d["cond_frame_outputs"].get(frame_idx) or d["non_cond_frame_outputs"][frame_idx] for d in session.state["output_dict_per_obj"].values()]
    _, video_res = session.predictor._get_orig_video_res_output(session.state, torch.cat([o["pred_masks"] for o in outs]))
    return (video_res[:, 0] > 0).numpy()


def test_correction_sequence_equals_sam2(video_model, reference):
    """The whole sequence, bit for bit; the correction survives the next propagation; and what the last
    propagation (both ways, from a frame without a prompt) streams for its start frame is what the state
    keeps, sam2's second result for it, not the first."""
    reference_steps, superseded = reference
    session = VideoSession(video_model, _rgb(bedroom_frames(NUM_FRAMES)))
    ours = run_session(session)
    assert_same(ours, reference_steps)
    assert_correction_kept(ours)
    assert session.obj_ids == (2,)
    start = STEPS[LAST][1]["start_frame"]
    assert list(ours[LAST]) == [*range(start + 1, NUM_FRAMES), *range(start, -1, -1)]  # the start from the backward pass
    assert np.array_equal(ours[LAST][start][1], _kept(session, start))
    assert not np.array_equal(superseded[LAST][start], ours[LAST][start][1]), "the start frame's 2 results agree: vacuous"
    # frames + state: the uint8 frames and, per tracked frame and object, memories and masks
    assert session.nbytes() > NUM_FRAMES * 540 * 960 * 3


def test_cancel_stops_before_the_next_frame_and_rules(video_model):
    frames = _rgb(bedroom_frames(3))
    with pytest.raises(ValueError, match="add_all_frames_to_correct_as_cond"):
        VideoSession(SimpleNamespace(add_all_frames_to_correct_as_cond=False), frames)
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
    # an object tracked from before its first prompt: no error (sam2 alone raises on its bfloat16 memory)
    session.add_prompt(2, FramePrompt(2, point_coords=np.array([BEDROOM_POINT], np.float32), point_labels=np.array([1], np.int32)))
    got = list(session.propagate(0, 2))
    assert [f.frame_index for f in got] == [0, 1] and all(f.obj_ids == (1, 2) and f.masks[1].any() for f in got)
    # "both" cancelled before its backward pass: the start frame comes last, as the forward pass left it
    done = []
    for fm in session.propagate(1, 2, "both", cancelled=lambda: len(done) == 1):
        done.append(fm)
    assert [f.frame_index for f in done] == [2, 1] and np.array_equal(done[1].masks, _kept(session, 1))
    with pytest.raises(KeyError):
        session.remove_object(9)
    session.reset()
    assert session.obj_ids == ()
