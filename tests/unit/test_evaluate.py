"""Mask metrics against COCO ground truth on ../shared/data/coco_subset: exact expected values."""

from __future__ import annotations

import contextlib
import io
import json

import numpy as np
import pytest

from models.masks import encode_rle
from serve_app.offline.evaluate import AREA_RANGES, area_range, evaluate_masks, plot_by_area, report_table, write_report
from tests.conftest import shared_file


@pytest.fixture(scope="module")
def coco_gt():
    from pycocotools.coco import COCO

    with contextlib.redirect_stdout(io.StringIO()):
        return COCO(str(shared_file("coco_subset", "annotations", "instances_val2017_subset32.json")))


def _gt_masks(gt) -> dict[int, np.ndarray]:
    return {a["id"]: gt.annToMask(a).astype(bool) for a in gt.dataset["annotations"] if not a["iscrowd"]}


def _shift(mask: np.ndarray, dx: int, dy: int) -> np.ndarray:
    """The mask moved right by dx and down by dy pixels; what leaves the image is lost."""
    out = np.zeros_like(mask)
    h, w = mask.shape
    out[dy:, dx:] = mask[: h - dy, : w - dx]
    return out


def test_ground_truth_as_predictions_scores_one(coco_gt):
    masks = _gt_masks(coco_gt)
    report = evaluate_masks(coco_gt, {i: {"rle": encode_rle(m), "score": 1.0} for i, m in masks.items()})
    assert report["instances"] == len(masks) == 284  # 288 annotations, 4 of them crowd
    assert report["images"] == 32
    assert report["miou"] == 1.0
    for name in AREA_RANGES:
        assert report["per_area"][name]["miou"] == 1.0
    assert sum(v["count"] for v in report["per_area"].values()) == 284
    assert all(v["miou"] == 1.0 for v in report["per_category"].values())
    assert report["coco_segm"]["AP"] == pytest.approx(1.0)
    assert report["coco_segm"]["AP50"] == pytest.approx(1.0)


def test_shifted_masks_score_their_exact_iou(coco_gt):
    masks = _gt_masks(coco_gt)
    preds, expected = {}, {}
    for ann_id, m in masks.items():
        moved = _shift(m, 3, 2)
        preds[ann_id] = {"rle": encode_rle(moved), "score": 0.9}
        expected[ann_id] = (m & moved).sum() / (m | moved).sum()
    report = evaluate_masks(coco_gt, preds)
    for ann_id, iou in expected.items():
        assert report["ious"][ann_id] == pytest.approx(iou, abs=1e-12)
    assert report["miou"] == pytest.approx(np.mean(list(expected.values())), abs=1e-12)
    # small objects lose more to a 3-pixel shift than large ones
    small, large = report["per_area"]["small"]["miou"], report["per_area"]["large"]["miou"]
    assert 0 < small < large < 1
    areas = {a["id"]: a["area"] for a in coco_gt.dataset["annotations"]}
    want_small = np.mean([v for k, v in expected.items() if areas[k] < 32**2])
    assert small == pytest.approx(want_small, abs=1e-12)
    assert report["coco_segm"]["AP"] < 1.0


def test_missing_prediction_counts_as_zero_and_images_restrict(coco_gt):
    masks = _gt_masks(coco_gt)
    image_id = 41888
    anns = [a["id"] for a in coco_gt.loadAnns(coco_gt.getAnnIds(imgIds=[image_id], iscrowd=False))]
    preds = {i: {"rle": encode_rle(masks[i]), "score": 1.0} for i in anns[1:]}
    report = evaluate_masks(coco_gt, preds, [image_id])
    assert report["instances"] == 3 and report["images"] == 1
    assert report["ious"][anns[0]] == 0.0
    assert report["miou"] == pytest.approx(2 / 3)
    assert report["per_category"] == {"bird": {"miou": pytest.approx(2 / 3), "count": 3}}


def test_wrong_mask_size_is_an_error(coco_gt):
    ann = coco_gt.loadAnns(coco_gt.getAnnIds(imgIds=[41888]))[0]
    with pytest.raises(ValueError, match="size"):
        evaluate_masks(coco_gt, {ann["id"]: {"rle": encode_rle(np.ones((5, 5), bool)), "score": 1.0}}, [41888])


@pytest.mark.parametrize(("area", "name"), [(0, "small"), (32**2 - 1, "small"), (32**2, "medium"), (96**2 - 0.5, "medium"), (96**2, "large"), (1e9, "large")])
def test_area_ranges_are_cocos(area, name):
    assert area_range(area) == name


def test_report_files(coco_gt, tmp_path):
    masks = _gt_masks(coco_gt)
    report = evaluate_masks(coco_gt, {i: {"rle": encode_rle(m), "score": 1.0} for i, m in masks.items()}, [41888, 143931])
    write_report(report, tmp_path / "r" / "report.json")
    back = json.loads((tmp_path / "r" / "report.json").read_text())
    assert back["miou"] == 1.0 and back["per_category"]["bus"]["count"] == 1
    plot_by_area(report, tmp_path / "iou.png")
    from PIL import Image

    with Image.open(tmp_path / "iou.png") as im:
        assert im.format == "PNG" and im.size[0] >= 400
    table = report_table(report)
    assert "area small" in table and "bird" in table and "COCOeval segm" in table
    assert not list(tmp_path.rglob(".*tmp*"))  # atomic writes leave no temp files
