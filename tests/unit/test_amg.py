"""Automatic masks over the split encoder/decoder equal sam2's SAM2AutomaticMaskGenerator (one crop layer)."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch

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


# Random weights give low predicted IoU and stability, so the filters are lowered until masks survive
# (sam2's default filters are compared on ``sharp_model`` below).
# nms 1.0 keeps every mask (all 3 x 36 of them: the full ranking is compared). sam2's default NMS (0.7)
# is compared on ``six_rectangles`` below (test_production_filters_equal_sam2): on this photo random
# weights draw every mask over the whole frame, so at 0.7 one mask is left and the comparison is weak.
@pytest.mark.parametrize("nms", [1.0])
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
        assert (a.area_px, a.bbox_xyxy) == (rle_area(a.rle), rle_bbox_xyxy(a.rle))
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


#: Factor on the last layer of the decoder's hypernetwork MLPs in ``sharp_model`` (see there).
MASK_LOGIT_SCALE = 500.0
#: Factor on the weight of the IoU head's last layer in ``sharp_model``; its bias becomes logit(0.8).
IOU_LOGIT_SCALE = 50.0
#: sam2's ``SAM2AutomaticMaskGenerator`` filters, which are also ours and the served ones.
PRODUCTION_FILTERS = {"pred_iou_thresh": 0.8, "stability_score_thresh": 0.95}
FILTERS_OFF = {"pred_iou_thresh": 0.0, "stability_score_thresh": 0.0}
#: 4 x 4 clicks in batches of 6 (three decoder calls, the last one short): 48 candidate masks.
SHARP_GRID = {"points_per_side": 4, "points_per_batch": 6}


@pytest.fixture(scope="module")
def sharp_model(model):
    """The seeded random model with its decoder's last layers rescaled, so that sam2's production
    filters keep some masks and drop others.

    With random weights every candidate's predicted IoU is 0.48-0.51 and every mask logit lies within
    +/-0.85, so the stability score (pixels with logit > +1 over those with logit > -1) is 0 and the 0.8 /
    0.95 filters drop everything. Two changes, both to the last linear layer of an MLP in
    ``sam_mask_decoder``, leave the image encoder and every other weight as they are:

    - ``output_hypernetworks_mlps[i]``: weight and bias times ``MASK_LOGIT_SCALE``. A mask's low-res
      logits are the dot product of that layer's output with the upscaled image embedding, and the
      upsampling is bilinear, so every logit is multiplied by the factor: the binary masks (logit > 0)
      are unchanged and the stability score becomes that of the original logits at +/-1/500: 0.68-0.995
      over the candidates of ``six_rectangles``.
    - ``iou_prediction_head``: weight times ``IOU_LOGIT_SCALE``, bias set to logit(0.8) = log 4. The IoU
      logits (std about 0.02 around 0) become std about 1 around the threshold: predicted IoU 0.02-0.99
      (the head's sigmoid keeps them in (0, 1)).

    Both implementations are handed this one module object.
    """
    sharp = copy.deepcopy(model)
    decoder = sharp.sam_mask_decoder
    with torch.no_grad():
        for mlp in decoder.output_hypernetworks_mlps:
            mlp.layers[-1].weight.mul_(MASK_LOGIT_SCALE)
            mlp.layers[-1].bias.mul_(MASK_LOGIT_SCALE)
        head = decoder.iou_prediction_head.layers[-1]
        head.weight.mul_(IOU_LOGIT_SCALE)
        head.bias.fill_(math.log(0.8 / 0.2))
    return sharp


@pytest.fixture(scope="module")
def six_rectangles() -> np.ndarray:
    """(384, 512, 3) uint8 RGB: six 120 x 110 rectangles of different colours on grey, in two rows of three.

    A synthetic image rather than a photo: random weights give a photo's masks as speckle over the whole
    frame, so every box is the full image and box NMS at 0.7 leaves one mask whatever the filters did.
    Over flat colours a mask is mostly rectangles or mostly the grey around them, and the boxes differ:
    at NMS 0.7 four of the 48 candidates survive without the filters, one with them.
    """
    image = np.full((384, 512, 3), 128, np.uint8)
    colours = [(255, 0, 0), (0, 0, 255), (0, 255, 0), (255, 255, 0), (255, 0, 255), (0, 255, 255)]
    corners = [(y, x) for y in (30, 220) for x in (30, 200, 370)]
    for (y, x), colour in zip(corners, colours):
        image[y : y + 120, x : x + 110] = colour
    return image


@pytest.fixture(scope="module")
def sharp_features(sharp_model, six_rectangles):
    from models.sam2_image import Sam2ImageEncoder

    return Sam2ImageEncoder(sharp_model).encode(six_rectangles)


def _sharp_masks(sharp_model, sharp_features, **kw):
    from models.sam2_decoder import Sam2MaskDecoder

    return generate_masks(Sam2MaskDecoder(sharp_model), sharp_features, AmgSettings(**SHARP_GRID, **kw))


@pytest.fixture(scope="module")
def sharp_candidates(sharp_model, sharp_features):
    """All 48 candidate masks of ``six_rectangles``: filters and NMS off."""
    return _sharp_masks(sharp_model, sharp_features, box_nms_thresh=1.0, **FILTERS_OFF)


def test_production_filters_drop_some_candidates_and_keep_others(sharp_candidates):
    """The case is not vacuous: of the 48 candidates, some fail only the IoU filter, some only the
    stability filter, and several pass both; none lies so near a threshold that float noise between the
    two implementations could flip it."""
    assert len(sharp_candidates) == 3 * 16
    iou_ok = np.array([m.predicted_iou > 0.8 for m in sharp_candidates])
    stable = np.array([m.stability_score >= 0.95 for m in sharp_candidates])
    assert (iou_ok & stable).sum() >= 5
    assert (~iou_ok & stable).sum() >= 1  # removed by the IoU filter alone
    assert (iou_ok & ~stable).sum() >= 1  # removed by the stability filter alone
    assert min(abs(m.predicted_iou - 0.8) for m in sharp_candidates) > 1e-4
    assert min(abs(m.stability_score - 0.95) for m in sharp_candidates) > 1e-4


# nms 1.0 compares every mask that passes the filters; 0.7 is sam2's and the served default.
@pytest.mark.parametrize("nms", [1.0, 0.7])
def test_production_filters_equal_sam2(sharp_model, sharp_features, sharp_candidates, six_rectangles, nms):
    """At sam2's default filters (IoU > 0.8, stability >= 0.95) the same masks as
    ``SAM2AutomaticMaskGenerator`` on the same model; without NMS, exactly the candidates that pass."""
    from sam2.automatic_mask_generator import SAM2AutomaticMaskGenerator

    settings = AmgSettings(**SHARP_GRID, box_nms_thresh=nms)
    reference = SAM2AutomaticMaskGenerator(sharp_model, output_mode="coco_rle", **SHARP_GRID, box_nms_thresh=nms)
    for name, value in PRODUCTION_FILTERS.items():  # both sides run at their defaults, which are these
        assert getattr(settings, name) == getattr(reference, name) == value
    assert settings.stability_score_offset == reference.stability_score_offset
    assert reference.crop_n_layers == 0 and reference.min_mask_region_area == 0 and not reference.use_m2m

    ours = _sharp_masks(sharp_model, sharp_features, box_nms_thresh=nms)
    ref = reference.generate(six_rectangles)
    assert len(ours) == len(ref) >= (5 if nms == 1.0 else 1)
    for a, b in zip(ours, ref):
        assert mask_iou(decode_rle(a.rle), decode_rle(b["segmentation"])) >= 0.999
        assert a.predicted_iou == pytest.approx(b["predicted_iou"], abs=1e-4)
        assert a.stability_score == pytest.approx(b["stability_score"], abs=1e-4)
        assert a.point_xy == pytest.approx(b["point_coords"][0], abs=1e-3)
        x, y, w, h = b["bbox"]  # XYWH of the last row/column; ours is pixel-edge XYXY
        assert a.bbox_xyxy == [x, y, x + w + 1, y + h + 1]
        assert a.area_px == b["area"]
    assert len({m.area_px for m in ours}) == len(ours)  # distinct masks, not one repeated
    if nms == 1.0:
        key = lambda m: (tuple(m.point_xy), m.rle["counts"])  # noqa: E731
        passing = [m for m in sharp_candidates if m.predicted_iou > 0.8 and m.stability_score >= 0.95]
        assert sorted(map(key, ours)) == sorted(map(key, passing))


@pytest.mark.parametrize("masks_per_chunk", [1, 4])
def test_chunked_upsampling_changes_nothing(sharp_model, sharp_features, sharp_candidates, monkeypatch, masks_per_chunk):
    """Upsampling a decoder pass's 18 candidates 1 or 4 at a time (chunks the stability filter empties or
    thins) gives exactly the masks, scores, clicks and order of upsampling all of them at once."""
    import dataclasses

    import models.amg

    def masks(**kw):
        return [dataclasses.astuple(m) for m in _sharp_masks(sharp_model, sharp_features, **kw)]

    cases = ({"box_nms_thresh": 1.0, **FILTERS_OFF}, {"box_nms_thresh": 0.7, **PRODUCTION_FILTERS})
    whole = [masks(**kw) for kw in cases]
    h, w = sharp_features.orig_hw
    assert models.amg.CHUNK_PIXELS // (h * w) >= 18  # by default a whole pass is one chunk
    monkeypatch.setattr(models.amg, "CHUNK_PIXELS", masks_per_chunk * h * w)
    assert [masks(**kw) for kw in cases] == whole
    assert len(whole[0]) == len(sharp_candidates) and whole[1]


def test_each_production_filter_removes_masks_after_nms(sharp_model, sharp_features):
    """At sam2's default NMS (0.7) the answer still loses masks to each filter on its own."""
    counts = {}
    for name, iou, stability in [("both", 0.8, 0.95), ("iou", 0.8, 0.0), ("stability", 0.0, 0.95), ("neither", 0.0, 0.0)]:
        filters = {"pred_iou_thresh": iou, "stability_score_thresh": stability}
        counts[name] = len(_sharp_masks(sharp_model, sharp_features, box_nms_thresh=0.7, **filters))
    # NMS is not monotone in its input (dropping a mask can let one it suppressed back in): compare to "neither"
    assert counts["neither"] > max(counts["both"], counts["iou"], counts["stability"]), counts
    assert counts["both"] >= 1, counts


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
