"""models.sam2_image and models.sam2_decoder against Meta's SAM2ImagePredictor: same checkpoint, same photo, same prompts."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from deployments.runtime.model_weights import load_state_dict
from models.prompts import PromptSpec
from models.sam2_decoder import DecodeRequest, Sam2MaskDecoder
from models.sam2_image import ImageFeatures, Sam2ImageEncoder, build_sam2_model, feature_nbytes
from tests.conftest import MODEL_ID, TRUCK_BOX, mask_iou

POINT = [[500, 375]]
PAIR = [[500, 375], [1125, 625]]
IOU_MIN = 0.999
PRED_IOU_TOL = 1e-4


@pytest.fixture(scope="module")
def ours(tiny_checkpoint):
    torch.manual_seed(0)
    state, _ = load_state_dict(tiny_checkpoint)
    model = build_sam2_model(MODEL_ID, state)
    return Sam2ImageEncoder(model), Sam2MaskDecoder(model)


@pytest.fixture(scope="module")
def truck_features(ours, truck_rgb) -> ImageFeatures:
    encoder, _ = ours
    return encoder.encode(truck_rgb)


@pytest.fixture(scope="module")
def reference(reference_predictor, truck_rgb):
    reference_predictor.set_image(truck_rgb)
    return reference_predictor


def _box_spec() -> PromptSpec:
    return PromptSpec(box_xyxy=np.array(TRUCK_BOX, np.float32))


def _point_spec() -> PromptSpec:
    return PromptSpec(point_coords=np.array(POINT, np.float32), point_labels=np.array([1], np.int32))


def _pair_spec() -> PromptSpec:
    return PromptSpec(point_coords=np.array(PAIR, np.float32), point_labels=np.array([1, 0], np.int32))


@pytest.fixture(scope="module")
def reference_answers(reference):
    """Meta's masks, IoU estimates and low-res logits for the four prompts (box+mask uses the box's logits)."""
    out = {
        "box": reference.predict(box=np.array(TRUCK_BOX), multimask_output=False),
        "point": reference.predict(point_coords=np.array(POINT), point_labels=np.array([1]), multimask_output=True),
        "pair": reference.predict(point_coords=np.array(PAIR), point_labels=np.array([1, 0]), multimask_output=False),
    }
    out["box+mask"] = reference.predict(box=np.array(TRUCK_BOX), mask_input=out["box"][2], multimask_output=False)
    out["mask"] = reference.predict(mask_input=out["box"][2], multimask_output=False)
    return out


@pytest.fixture(scope="module")
def our_answers(ours, truck_features):
    _, decoder = ours
    out = {
        "box": decoder.predict(truck_features, _box_spec(), False),
        "point": decoder.predict(truck_features, _point_spec(), True),
        "pair": decoder.predict(truck_features, _pair_spec(), False),
    }
    box_logits = out["box"].low_res_logits[0]
    out["box+mask"] = decoder.predict(
        truck_features, PromptSpec(box_xyxy=np.array(TRUCK_BOX, np.float32), mask_input=box_logits), False
    )
    out["mask"] = decoder.predict(truck_features, PromptSpec(mask_input=box_logits), False)
    return out


def test_features_match_reference(truck_features, reference, truck_rgb):
    h, w = truck_rgb.shape[:2]
    assert truck_features.orig_hw == (h, w)
    ref_embed = reference._features["image_embed"][0].cpu().numpy()
    ref_high = [f[0].cpu().numpy() for f in reference._features["high_res_feats"]]
    assert truck_features.image_embed.shape == (256, 64, 64)
    assert [f.shape for f in truck_features.high_res_feats] == [(32, 256, 256), (64, 128, 128)]
    assert truck_features.image_embed.dtype == np.float32
    np.testing.assert_allclose(truck_features.image_embed, ref_embed, atol=1e-5, rtol=0)
    for ours_f, ref_f in zip(truck_features.high_res_feats, ref_high):
        np.testing.assert_allclose(ours_f, ref_f, atol=1e-5, rtol=0)
    assert truck_features.nbytes == feature_nbytes(1024) == 16_777_216
    assert float(np.abs(truck_features.image_embed).max()) > 0  # not all zeros


@pytest.mark.parametrize("name, n_masks", [("box", 1), ("point", 3), ("pair", 1), ("box+mask", 1), ("mask", 1)])
def test_masks_match_reference(name, n_masks, our_answers, reference_answers, truck_rgb):
    ours = our_answers[name]
    ref_masks, ref_iou, ref_low = reference_answers[name]
    h, w = truck_rgb.shape[:2]
    assert ours.masks.shape == (n_masks, h, w)
    assert ours.masks.dtype == bool
    assert ref_masks.shape == (n_masks, h, w)
    assert ours.predicted_iou.shape == (n_masks,)
    assert ours.stability_score.shape == (n_masks,)
    assert ours.low_res_logits.shape == (n_masks, 256, 256)
    for k in range(n_masks):
        ref = ref_masks[k] > 0.5
        area = int(ref.sum())
        assert 0 < area < h * w, f"{name}[{k}] reference mask is empty or full: vacuous comparison"
        assert 0 < int(ours.masks[k].sum()) < h * w
        iou = mask_iou(ours.masks[k], ref)
        assert iou >= IOU_MIN, f"{name}[{k}]: IoU {iou:.5f}"
    np.testing.assert_allclose(ours.predicted_iou, ref_iou, atol=PRED_IOU_TOL, rtol=0)
    np.testing.assert_allclose(ours.low_res_logits, ref_low, atol=1e-3, rtol=0)
    assert np.all((ours.stability_score >= 0) & (ours.stability_score <= 1))
    assert np.abs(ours.low_res_logits).max() <= 32.0


def test_prompts_give_different_masks(our_answers, reference_answers):
    box = our_answers["box"].masks[0]
    point = our_answers["point"].masks
    pair = our_answers["pair"].masks[0]
    # box vs every point candidate
    assert max(mask_iou(box, m) for m in point) < 0.99
    assert mask_iou(box, pair) < 0.99 or mask_iou(point[0], pair) < 0.99
    # the three multimask candidates are not all the same
    assert min(mask_iou(point[0], point[1]), mask_iou(point[1], point[2])) < 0.99
    # mask_input changes the answer (the input is really used), in the reference too
    assert not np.array_equal(our_answers["box+mask"].low_res_logits, our_answers["box"].low_res_logits)
    assert not np.array_equal(reference_answers["box+mask"][2], reference_answers["box"][2])


def test_predict_batch_equals_separate_calls(ours, truck_features, our_answers, truck_rgb):
    _, decoder = ours
    h, w = truck_rgb.shape[:2]
    box_logits = our_answers["box"].low_res_logits[0]
    box_mask = PromptSpec(box_xyxy=np.array(TRUCK_BOX, np.float32), mask_input=box_logits)
    # the same features at half the original size: tests per-request orig_hw and coordinate scaling
    half = ImageFeatures(truck_features.image_embed, truck_features.high_res_feats, (h // 2, w // 2))
    half_box = PromptSpec(box_xyxy=np.array(TRUCK_BOX, np.float32) / 2)
    half_point = PromptSpec(point_coords=np.array(POINT, np.float32) / 2, point_labels=np.array([1], np.int32))
    requests = [
        DecodeRequest(truck_features, [_box_spec(), _point_spec()], [False, True]),
        DecodeRequest(truck_features, [_pair_spec(), box_mask, _box_spec(), PromptSpec(mask_input=box_logits)], False),
        DecodeRequest(half, [half_point, half_box], [True, False]),
    ]
    # groups: (2 tokens, no mask, single) x4 across requests, (1 token, multi) x2, (2 tokens, mask, single) x1,
    # (0 tokens, mask, single) x1
    batch = decoder.predict_batch(requests)
    assert [len(r) for r in batch] == [2, 4, 2]
    expected = [
        [our_answers["box"], our_answers["point"]],
        [our_answers["pair"], our_answers["box+mask"], our_answers["box"], our_answers["mask"]],
        [decoder.predict(half, half_point, True), decoder.predict(half, half_box, False)],
    ]
    for r, (got_req, exp_req) in enumerate(zip(batch, expected)):
        for p, (got, exp) in enumerate(zip(got_req, exp_req)):
            assert got.masks.shape == exp.masks.shape, (r, p)
            for k in range(exp.masks.shape[0]):
                assert exp.masks[k].any()
                assert mask_iou(got.masks[k], exp.masks[k]) >= IOU_MIN, (r, p, k)
            np.testing.assert_allclose(got.predicted_iou, exp.predicted_iou, atol=PRED_IOU_TOL, rtol=0)
    assert batch[2][0].masks.shape == (3, h // 2, w // 2)
    assert batch[2][1].masks.shape == (1, h // 2, w // 2)
    # box / 2 on a half-size image is the same normalised prompt: the same low-res logits as the full box
    np.testing.assert_allclose(batch[2][1].low_res_logits, our_answers["box"].low_res_logits, atol=1e-4, rtol=0)
    np.testing.assert_allclose(batch[2][0].low_res_logits, our_answers["point"].low_res_logits, atol=1e-4, rtol=0)


def test_predict_batch_empty(ours):
    _, decoder = ours
    assert decoder.predict_batch([]) == []


def test_encode_batch_equals_one_by_one(ours, truck_rgb):
    """Three images of different sizes in one batch: each image's features are those of its own encode
    (a batch that mixed up, reordered or padded images would differ), and its own size is kept."""
    encoder, _ = ours
    rng = np.random.default_rng(0)
    images = [
        truck_rgb[::8, ::8].copy(),
        rng.integers(0, 256, (40, 72, 3), dtype=np.uint8),
        rng.integers(0, 256, (96, 32, 3), dtype=np.uint8),
    ]
    batched = encoder.encode_batch(images)
    assert len(batched) == len(images)
    for image, got in zip(images, batched):
        want = encoder.encode(image)
        assert got.orig_hw == want.orig_hw == image.shape[:2]
        np.testing.assert_allclose(got.image_embed, want.image_embed, rtol=0, atol=1e-5)
        for level in range(2):
            np.testing.assert_allclose(got.high_res_feats[level], want.high_res_feats[level], rtol=0, atol=1e-5)
    # the images really are different: features of one image are not another's
    assert np.abs(batched[1].image_embed - batched[2].image_embed).max() > 1e-3


def test_encode_batch_validation(ours):
    encoder, _ = ours
    assert encoder.encode_batch([]) == []
    for bad in (np.zeros((4, 4), np.uint8), np.zeros((4, 4, 3), np.float32), np.zeros((0, 4, 3), np.uint8)):
        with pytest.raises(ValueError, match=r"images\[1\]"):
            encoder.encode_batch([np.zeros((4, 4, 3), np.uint8), bad])


def test_prompt_spec_validation():
    with pytest.raises(ValueError):
        PromptSpec()
    with pytest.raises(ValueError):
        PromptSpec(point_coords=np.zeros((1, 2), np.float32))
    with pytest.raises(ValueError):
        PromptSpec(point_coords=np.zeros((2, 2), np.float32), point_labels=np.ones(1, np.int32))
    with pytest.raises(ValueError):
        PromptSpec(box_xyxy=np.zeros(3, np.float32))
    with pytest.raises(ValueError):
        PromptSpec(mask_input=np.zeros((128, 128), np.float32))
    with pytest.raises(ValueError):
        DecodeRequest(None, [_box_spec(), _box_spec()], [True])  # type: ignore[arg-type]
