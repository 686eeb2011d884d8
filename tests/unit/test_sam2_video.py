"""models.sam2_video against sam2's SAM2VideoPredictor: preprocessing, state, weights, prompts, and the
bounded memory bank (the masks do not change when old memories are dropped)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from deployments.runtime.sam2_weights import load_state_dict
from models.sam2_video import Sam2VideoTracker, VideoSettings, build_sam2_video_model
from models.sam2_video_types import FramePrompt, VideoObject, check_objects, preprocess_frame
from tests.conftest import BEDROOM_BOX, BEDROOM_POINT, MODEL_ID, bedroom_frames, mask_iou


def _rgb(paths) -> np.ndarray:
    return np.stack([np.asarray(Image.open(p).convert("RGB")) for p in paths])


@pytest.fixture(scope="module")
def video_model(tiny_checkpoint):
    state, _ = load_state_dict(tiny_checkpoint)
    return build_sam2_video_model(MODEL_ID, state)


@pytest.fixture(scope="module")
def folder2(tmp_path_factory):
    folder = tmp_path_factory.mktemp("bedroom2")
    for p in bedroom_frames(2):
        (folder / p.name).symlink_to(p)
    return folder


def test_preprocessing_equals_sam2s_jpeg_loader(folder2):
    from sam2.utils.misc import load_video_frames

    images, h, w = load_video_frames(str(folder2), 1024, offload_video_to_cpu=True, compute_device=torch.device("cpu"))
    rgb = _rgb(bedroom_frames(2))
    assert (h, w) == rgb.shape[1:3] == (540, 960)
    for i in range(2):
        assert torch.equal(preprocess_frame(rgb[i], 1024), images[i])


def test_state_has_sam2s_keys(video_model, folder2, monkeypatch):
    """Our in-memory state carries every field sam2's own init_state builds (checked without encoding)."""
    monkeypatch.setattr(video_model, "_get_image_feature", lambda *a, **k: None)
    ref = video_model.init_state(video_path=str(folder2), offload_video_to_cpu=True)
    ours = Sam2VideoTracker(video_model).init_state(_rgb(bedroom_frames(2)))
    assert set(ours) == set(ref)
    for key in ("num_frames", "video_height", "video_width", "offload_video_to_cpu", "offload_state_to_cpu"):
        assert ours[key] == ref[key], key
    assert torch.equal(ours["images"][1], ref["images"][1])


def test_random_video_weights_equal_the_image_models():
    from models.sam2_image import build_sam2_model

    image = build_sam2_model(MODEL_ID, seed=7).state_dict()
    video = build_sam2_video_model(MODEL_ID, seed=7).state_dict()
    assert set(image) == set(video)
    assert all(torch.equal(image[k], video[k]) for k in image)
    with pytest.raises(ValueError, match="state_dict, or a seed"):
        build_sam2_video_model(MODEL_ID)
    with pytest.raises(ValueError, match="valid names"):
        build_sam2_video_model("sam2.1_hiera_huge", seed=0)


def test_prompt_and_object_rules():
    box = np.array([0, 0, 4, 4], np.float32)
    with pytest.raises(ValueError, match="points, a box or a mask"):
        FramePrompt(0)
    with pytest.raises(ValueError, match="without points or box"):
        FramePrompt(0, box_xyxy=box, mask=np.ones((4, 4), bool))
    with pytest.raises(ValueError, match="given together"):
        FramePrompt(0, point_coords=np.zeros((1, 2), np.float32))
    with pytest.raises(ValueError, match="frame_index"):
        FramePrompt(-1, box_xyxy=box)
    with pytest.raises(ValueError, match="one prompt per frame"):
        VideoObject(1, (FramePrompt(2, box_xyxy=box), FramePrompt(2, box_xyxy=box)))
    with pytest.raises(ValueError, match="at least one prompt"):
        VideoObject(1, ())
    a = VideoObject(1, (FramePrompt(0, box_xyxy=box),))
    with pytest.raises(ValueError, match="given twice"):
        check_objects([a, a], 3, (8, 8))
    with pytest.raises(ValueError, match="outside the clip"):
        check_objects([VideoObject(2, (FramePrompt(3, box_xyxy=box),))], 3, (8, 8))
    with pytest.raises(ValueError, match="mask is"):
        check_objects([VideoObject(2, (FramePrompt(0, mask=np.ones((4, 4), bool)),))], 3, (8, 8))
    with pytest.raises(ValueError, match="at least one object"):
        check_objects([], 3, (8, 8))
    with pytest.raises(ValueError, match="mask_threshold"):
        VideoSettings(mask_threshold=float("nan"))


def _objects() -> list[VideoObject]:
    return [
        VideoObject(1, (FramePrompt(0, box_xyxy=np.array(BEDROOM_BOX, np.float32)),)),
        VideoObject(2, (FramePrompt(0, point_coords=np.array([BEDROOM_POINT], np.float32), point_labels=np.array([1], np.int32)),)),
    ]


@pytest.mark.slow
def test_bounded_memory_bank_keeps_the_masks(video_model, monkeypatch):
    """On a clip longer than the memory window, dropping old memories changes no mask, and the number of
    stored outputs stays bounded. The image encoder is replaced by frame 0's features for every frame
    (the memory bank and everything after the encoder run for real), so 40 frames take seconds."""
    rgb = _rgb(bedroom_frames(1))
    frames = np.repeat(rgb, 40, axis=0)
    with torch.inference_mode():
        cached = video_model.forward_image(preprocess_frame(rgb[0], 1024)[None])
    monkeypatch.setattr(video_model, "forward_image", lambda image: cached)
    bounded = Sam2VideoTracker(video_model)
    unbounded = Sam2VideoTracker(video_model)
    unbounded.memory_window = 10**9
    sizes = []
    orig_prune = Sam2VideoTracker._prune

    def spy(self, state, frame_idx, start):
        orig_prune(self, state, frame_idx, start)
        if self is bounded:
            sizes.append(max(len(d["non_cond_frame_outputs"]) for d in state["output_dict_per_obj"].values()))

    monkeypatch.setattr(Sam2VideoTracker, "_prune", spy)
    a = [f for f in bounded.propagate(frames, _objects(), start_frame=20, reverse=True) if not isinstance(f, dict)]
    b = [f for f in unbounded.propagate(frames, _objects(), start_frame=20, reverse=True) if not isinstance(f, dict)]
    assert [f.frame_index for f in a] == [f.frame_index for f in b] == list(range(20, 40)) + list(range(19, -1, -1))
    for fa, fb in zip(a, b):
        assert np.array_equal(fa.masks, fb.masks), fa.frame_index
        np.testing.assert_array_equal(fa.object_score_logits, fb.object_score_logits)
    assert max(sizes) <= 4 * bounded.memory_window + 2


@pytest.mark.slow
def test_reverse_and_mask_prompts_match_sam2(video_model, tiny_checkpoint, tmp_path):
    """Prompts on frame 2 of 4 (a box for one object, a mask for another), tracked forward then backward,
    against sam2's own predictor reading the JPEG folder."""
    from sam2.build_sam import build_sam2_video_predictor

    from models.registry import get_sam2_checkpoint

    paths = bedroom_frames(4)
    for p in paths:
        (tmp_path / p.name).symlink_to(p)
    mask = np.zeros((540, 960), bool)
    mask[200:400, 100:300] = True
    ref = build_sam2_video_predictor(get_sam2_checkpoint(MODEL_ID).config, ckpt_path=str(tiny_checkpoint), device="cpu")
    state = ref.init_state(video_path=str(tmp_path))
    ref.add_new_points_or_box(state, frame_idx=2, obj_id=5, box=np.array(BEDROOM_BOX, np.float32))
    ref.add_new_mask(state, frame_idx=2, obj_id=9, mask=mask)
    expected = {}
    for backward in (False, True):
        for t, _, logits in ref.propagate_in_video(state, reverse=backward):
            expected.setdefault(t, (logits[:, 0] > 0).numpy())
    objects = [
        VideoObject(5, (FramePrompt(2, box_xyxy=np.array(BEDROOM_BOX, np.float32)),)),
        VideoObject(9, (FramePrompt(2, mask=mask),)),
    ]
    got = [f for f in Sam2VideoTracker(video_model).propagate(_rgb(paths), objects, reverse=True) if not isinstance(f, dict)]
    assert [f.frame_index for f in got] == [2, 3, 1, 0]
    for f in got:
        assert f.obj_ids == (5, 9)
        for k in range(2):
            assert f.masks[k].any()
            assert mask_iou(f.masks[k], expected[f.frame_index][k]) >= 0.999
