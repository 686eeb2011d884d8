"""models.polygons: masks to rings with holes and back, on COCO's own ground truth and on shapes with known
answers."""

from __future__ import annotations

import json

import numpy as np
import pytest

from models.masks import decode_rle, mask_area_bbox, segmentation_to_rle
from models.polygons import coco_segmentation, mask_to_polygons, polygons_to_mask
from tests.conftest import mask_iou, shared_file


def _area(ring: list[list[int]]) -> float:
    """Shoelace area of a ring in (x, y): positive for exteriors, negative for holes (GeoJSON's orientation)."""
    x, y = np.asarray(ring, float).T
    return 0.5 * float(np.dot(x, np.roll(y, -1)) - np.dot(np.roll(x, -1), y))


def _poly_area(p: dict) -> float:
    return abs(_area(p["exterior"])) - sum(abs(_area(h)) for h in p["holes"])


@pytest.fixture(scope="module")
def coco_masks() -> list[np.ndarray]:
    from pycocotools.coco import COCO

    coco = COCO(str(shared_file("coco_subset", "annotations", "instances_val2017_subset32.json")))
    masks = [coco.annToMask(a).astype(bool) for a in coco.loadAnns(coco.getAnnIds())]
    return [m for m in masks if m.any()]


def test_coco_ground_truth_round_trips(coco_masks):
    """Every ground-truth mask of coco_subset (288, 9 of them with holes, 31 in several parts) comes back
    from its rings, exactly at tolerance 0 (area and box agree too), and at a mean IoU >= 0.93 at 1 px (0.95 measured)."""
    assert len(coco_masks) >= 200
    with_holes = parts = 0
    coarse_iou = []
    for m in coco_masks:
        polys = mask_to_polygons(m)
        back = polygons_to_mask(polys, *m.shape)
        assert mask_iou(back, m) >= 0.99 and np.array_equal(back, m)
        area, (x0, y0, x1, y1) = mask_area_bbox(m)
        assert sum(_poly_area(p) for p in polys) == area
        xs = [x for p in polys for x, _ in p["exterior"]]
        ys = [y for p in polys for _, y in p["exterior"]]
        assert [min(xs), min(ys), max(xs), max(ys)] == [x0, y0, x1, y1]
        with_holes += any(p["holes"] for p in polys)
        parts += len(polys) > 1
        coarse_iou.append(mask_iou(polygons_to_mask(mask_to_polygons(m, 1.0), *m.shape), m))
    assert np.mean(coarse_iou) >= 0.93
    assert with_holes and parts  # the cases below also occur in real annotations


def test_parts_and_holes_are_kept():
    m = np.zeros((40, 60), bool)
    m[5:35, 5:30] = True
    m[12:20, 12:20] = False  # a hole
    m[10:20, 40:55] = True  # a second part
    m[30, 40] = True  # a third, one pixel
    polys = mask_to_polygons(m)
    assert len(polys) == 3
    big, second, dot = polys
    assert len(big["holes"]) == 1 and not second["holes"] and not dot["holes"]
    assert _poly_area(big) == 25 * 30 - 64 and _poly_area(second) == 150 and _poly_area(dot) == 1
    assert sorted(big["holes"][0]) == [[12, 12], [12, 20], [20, 12], [20, 20]]  # the hole's corners, on pixel edges
    assert _area(big["exterior"]) > 0 > _area(big["holes"][0])
    assert np.array_equal(polygons_to_mask(polys, 40, 60), m)


def test_corner_touching_pixels_are_separate_parts():
    m = np.zeros((4, 4), bool)
    m[0, 0] = m[1, 1] = True
    assert [len(p["exterior"]) for p in mask_to_polygons(m)] == [4, 4]


def test_simplification_bounds_the_error_and_shrinks_the_rings():
    yy, xx = np.mgrid[:200, :200]
    disc = (xx - 100.5) ** 2 + (yy - 100.5) ** 2 < 80**2
    exact, coarse = mask_to_polygons(disc), mask_to_polygons(disc, 2.0)
    assert len(coarse[0]["exterior"]) < len(exact[0]["exterior"]) / 4
    assert 0.98 <= mask_iou(polygons_to_mask(coarse, 200, 200), disc) < 1.0
    assert all(isinstance(c, int) for xy in coarse[0]["exterior"] for c in xy)


def test_coco_segmentation_is_flat_exteriors_without_holes():
    m = np.zeros((30, 30), bool)
    m[5:25, 5:25] = True
    m[10:15, 10:15] = False
    polys = mask_to_polygons(m)
    seg = coco_segmentation(polys)
    assert seg == [[c for xy in polys[0]["exterior"] for c in xy]]
    filled = decode_rle(segmentation_to_rle(seg, 30, 30))
    assert filled.sum() == 400 and filled[12, 12]  # COCO polygons cannot hold the hole
    json.dumps(seg)


def test_empty_and_bad_input():
    assert mask_to_polygons(np.zeros((5, 5), bool)) == []
    assert not polygons_to_mask([], 5, 5).any()
    with pytest.raises(ValueError, match="tolerance_px"):
        mask_to_polygons(np.ones((3, 3), bool), -1)
    with pytest.raises(ValueError, match=r"\(H, W\)"):
        mask_to_polygons(np.ones((3, 3, 1), bool))
    with pytest.raises(ValueError, match="at least 3 vertices"):
        polygons_to_mask([{"exterior": [[0, 0], [1, 1]], "holes": []}], 5, 5)
