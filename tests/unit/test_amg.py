"""Automatic masks over the split encoder/decoder equal sam2's SAM2AutomaticMaskGenerator (one crop layer)."""

from __future__ import annotations

import numpy as np
import pytest

from models.amg import AmgSettings, generate_masks, grid_points
from models.masks import decode_rle, rle_area, rle_bbox_xyxy
from tests.conftest import MODEL_ID, SEED, mask_iou, shared_file


@pytest.fixture(scope="module")
def dog_rgb():
    from PIL import Image

    with Image.open(shared_file("images", "dog.jpg")) as im:
        return np.asarray(im.convert("RGB"))


@pytest.fixture(scope="module")
def model():
    from models.sam2_image import build_sam2_model

    return build_sam2_model(MODEL_ID, seed=SEED)


@pytest.fixture(scope="module")
def features(model, dog_rgb):
    from models.sam2_image import Sam2ImageEncoder

    return Sam2ImageEncoder(model).encode(dog_rgb)


# Random weights give low predicted IoU and stability, so the filters are lowered until masks survive.
# nms 1.0 keeps every mask (all 3 x 36 of them: the full ranking is compared); 0.7 is sam2's default.
@pytest.mark.parametrize("nms", [1.0, 0.7])
def test_equals_sam2_automatic_mask_generator(model, features, dog_rgb, nms):
    from sam2.automatic_mask_generator import SAM2AutomaticMaskGenerator

    from models.sam2_decoder import Sam2MaskDecoder

    kw = dict(points_per_side=6, points_per_batch=16, pred_iou_thresh=0.0, stability_score_thresh=0.0, box_nms_thresh=nms)
    ours = generate_masks(Sam2MaskDecoder(model), features, AmgSettings(**kw))
    ref = SAM2AutomaticMaskGenerator(model, output_mode="coco_rle", **kw).generate(dog_rgb)
    assert len(ours) == len(ref) > 0
    if nms == 1.0:
        assert len(ours) == 3 * 36
    h, w = dog_rgb.shape[:2]
    areas = set()
    for a, b in zip(ours, ref):
        got, want = decode_rle(a.rle), decode_rle(b["segmentation"])
        assert 0 < want.sum() < h * w
        assert mask_iou(got, want) >= 0.999
        assert a.predicted_iou == pytest.approx(b["predicted_iou"], abs=1e-4)
        assert a.stability_score == pytest.approx(b["stability_score"], abs=1e-4)
        assert a.point_xy == pytest.approx(b["point_coords"][0], abs=1e-3)
        assert (a.area_px, a.bbox_xyxy) == (rle_area(a.rle), rle_bbox_xyxy(a.rle))  # taken from the mask array
        areas.add(a.area_px)
    assert len(areas) == len(ours)  # every mask differs: the comparison is not of one repeated mask


def test_thresholds_filter_like_sam2(model, features, dog_rgb):
    """With sam2's filters on, the same masks (possibly none) survive."""
    from sam2.automatic_mask_generator import SAM2AutomaticMaskGenerator

    from models.sam2_decoder import Sam2MaskDecoder

    kw = dict(points_per_side=4, pred_iou_thresh=0.5, stability_score_thresh=0.0, box_nms_thresh=1.0)
    ours = generate_masks(Sam2MaskDecoder(model), features, AmgSettings(**kw))
    ref = SAM2AutomaticMaskGenerator(model, output_mode="coco_rle", **kw).generate(dog_rgb)
    assert [round(m.predicted_iou, 4) for m in ours] == [round(m["predicted_iou"], 4) for m in ref]
    assert all(m.predicted_iou > 0.5 for m in ours)


def test_min_area_drops_small_masks(model, features):
    from models.sam2_decoder import Sam2MaskDecoder

    base = dict(points_per_side=4, pred_iou_thresh=0.0, stability_score_thresh=0.0, box_nms_thresh=1.0)
    everything = generate_masks(Sam2MaskDecoder(model), features, AmgSettings(**base))
    cut = sorted(m.area_px for m in everything)[len(everything) // 2]
    big = generate_masks(Sam2MaskDecoder(model), features, AmgSettings(**base, min_area_px=cut))
    assert big and all(m.area_px >= cut for m in big)
    assert len(big) == sum(m.area_px >= cut for m in everything)


def test_grid_is_sam2s():
    from sam2.utils.amg import build_point_grid

    pts = grid_points(4, (100, 200))
    assert pts.shape == (16, 2)
    assert np.allclose(pts, build_point_grid(4) * [200, 100])


@pytest.mark.parametrize(
    "kw", [{"points_per_side": 0}, {"points_per_batch": 0}, {"pred_iou_thresh": 1.5}, {"box_nms_thresh": -0.1}, {"stability_score_offset": 0}, {"min_area_px": -1}]
)
def test_settings_validation(kw):
    with pytest.raises(ValueError):
        AmgSettings(**kw)
