"""models.masks: COCO RLE, PNG and logits encodings, exact on synthetic masks."""

from __future__ import annotations

import base64
import io

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils

from models.masks import (
    decode_logits_base64,
    decode_png_base64,
    decode_rle,
    encode_logits_base64,
    encode_masks,
    encode_png_base64,
    encode_rle,
    encode_rle_batch,
    rle_area,
    rle_areas_and_boxes,
    rle_bbox_xyxy,
    rle_run_lengths,
)
from models.polygons import polygons_to_mask

SEED = 1234


def _random_masks(n: int = 3, h: int = 37, w: int = 53, seed: int = SEED) -> np.ndarray:
    return np.random.default_rng(seed).random((n, h, w)) > 0.5


def _rectangle(h: int = 40, w: int = 60) -> np.ndarray:
    mask = np.zeros((h, w), bool)
    mask[10:20, 30:50] = True
    return mask


@pytest.mark.parametrize(
    "mask",
    [
        _random_masks(1, 37, 53, 0)[0],
        _random_masks(1, 64, 48, 1)[0],
        _random_masks(1, 1, 1, 2)[0],
        np.zeros((25, 31), bool),
        np.ones((25, 31), bool),
        _rectangle(),
    ],
    ids=["random37x53", "random64x48", "random1x1", "empty", "full", "rectangle"],
)
def test_rle_round_trip(mask):
    rle = encode_rle(mask)
    assert rle["size"] == [mask.shape[0], mask.shape[1]]
    assert isinstance(rle["counts"], str)
    decoded = decode_rle(rle)
    assert decoded.dtype == bool
    assert decoded.shape == mask.shape
    np.testing.assert_array_equal(decoded, mask)
    # pycocotools itself reads the same mask back (the encoding is real COCO RLE)
    coded = {"size": rle["size"], "counts": rle["counts"].encode("ascii")}
    np.testing.assert_array_equal(mask_utils.decode(coded).astype(bool), mask)


def test_rle_accepts_integer_masks():
    mask = _rectangle().astype(np.uint8)
    np.testing.assert_array_equal(decode_rle(encode_rle(mask)), mask.astype(bool))


def test_encode_rle_rejects_non_2d():
    with pytest.raises(ValueError):
        encode_rle(np.zeros((2, 3, 4), bool))
    with pytest.raises(ValueError):
        encode_rle_batch(np.zeros((3, 4), bool))


def test_encode_rle_batch_equals_per_mask():
    masks = _random_masks(4, 29, 41)
    masks[1] = False
    masks[2] = True
    batch = encode_rle_batch(masks)
    assert len(batch) == 4
    assert batch == [encode_rle(m) for m in masks]
    for rle, m in zip(batch, masks):
        np.testing.assert_array_equal(decode_rle(rle), m)


def test_decode_rle_bytes_counts():
    mask = _random_masks(1)[0]
    rle = encode_rle(mask)
    np.testing.assert_array_equal(decode_rle({"size": rle["size"], "counts": rle["counts"].encode()}), mask)


def test_decode_rle_uncompressed_list_counts():
    mask = _rectangle()
    h, w = mask.shape
    # uncompressed COCO RLE: run lengths in column-major order, starting with a run of zeros
    flat = mask.flatten(order="F").astype(np.uint8)
    counts, current, run = [], 0, 0
    for v in flat:
        if v == current:
            run += 1
        else:
            counts.append(run)
            current, run = v, 1
    counts.append(run)
    # cross-check the hand-built counts with pycocotools' reading of them
    np.testing.assert_array_equal(
        mask_utils.decode(mask_utils.frPyObjects({"size": [h, w], "counts": counts}, h, w)).astype(bool), mask
    )
    np.testing.assert_array_equal(decode_rle({"size": [h, w], "counts": counts}), mask)


@pytest.mark.parametrize(
    "rle",
    [
        {},
        {"size": [4, 4]},
        {"counts": "abc"},
        {"size": "xy", "counts": "abc"},
        {"size": [4, 4], "counts": 12},
        {"size": [4, 4], "counts": "é"},
        {"size": [4], "counts": "abc"},
        None,
    ],
    ids=["empty", "no-counts", "no-size", "bad-size", "int-counts", "non-ascii", "short-size", "none"],
)
def test_decode_rle_garbage_raises_value_error(rle):
    with pytest.raises(ValueError, match="not a valid COCO RLE"):
        decode_rle(rle)


def _column_runs(mask: np.ndarray) -> list[int]:
    """Uncompressed COCO runs of a mask: column-major, a run of zeros first."""
    flat = mask.flatten(order="F")
    edges = np.flatnonzero(np.diff(flat.astype(np.int8))) + 1
    bounds = np.concatenate([[0], edges, [flat.size]])
    runs = np.diff(bounds).tolist()
    return ([0] + runs) if flat.size and flat[0] else runs


@pytest.mark.parametrize("seed", range(20))
def test_rle_run_lengths_read_the_compressed_string(seed):
    """Against the runs counted off the mask, on masks whose runs need several characters and negative
    differences (the string's delta and sign rules)."""
    rng = np.random.default_rng(seed)
    h, w = (int(v) for v in rng.integers(1, 300, 2))
    mask = rng.random((h, w)) < rng.random()
    if seed % 2:  # long runs: a block
        mask = np.zeros((h, w), bool)
        mask[rng.integers(0, h) :, rng.integers(0, w) :] = True
    assert rle_run_lengths(encode_rle(mask)["counts"]).tolist() == _column_runs(mask)


@pytest.mark.parametrize("counts", ["0", "1", "T2", [3], [0, 255], [300]], ids=["zero", "one", "part", "list-short", "list-short-2", "list-long"])
def test_decode_rle_refuses_runs_that_do_not_cover_the_mask(counts):
    """pycocotools decodes a too-short RLE without a word, leaving the rest of the mask as whatever was
    in memory (the same input gave 6 and 179 pixels): refused instead, whichever way counts is given."""
    with pytest.raises(ValueError, match=r"cover \d+ pixels, not the 16 x 16 = 256"):
        decode_rle({"size": [16, 16], "counts": counts})


@pytest.mark.parametrize("counts", ["0\x00", "0p", "0P"], ids=["nul", "past-o", "ends-in-a-number"])
def test_decode_rle_refuses_malformed_strings(counts):
    with pytest.raises(ValueError, match="outside '0'..'o'|ends inside a number"):
        decode_rle({"size": [16, 16], "counts": counts})


@pytest.mark.parametrize("size", [[-1, 4], [4, -1]])
def test_decode_rle_negative_size_raises_value_error(size):
    """BUG (models/masks.py:62): a negative size reaches pycocotools, whose OverflowError is not caught,
    although the docstring promises ValueError for an RLE that does not decode."""
    with pytest.raises(ValueError, match="not a valid COCO RLE"):
        decode_rle({"size": size, "counts": "abc"})


def test_rle_area_and_bbox_on_rectangle():
    rle = encode_rle(_rectangle())
    assert rle_area(rle) == 200
    assert rle_bbox_xyxy(rle) == [30, 10, 50, 20]


def test_rle_area_and_bbox_single_pixel_and_full():
    mask = np.zeros((7, 9), bool)
    mask[6, 8] = True
    rle = encode_rle(mask)
    assert rle_area(rle) == 1
    assert rle_bbox_xyxy(rle) == [8, 6, 9, 7]
    full = encode_rle(np.ones((7, 9), bool))
    assert rle_area(full) == 63
    assert rle_bbox_xyxy(full) == [0, 0, 9, 7]


def test_rle_area_and_bbox_empty():
    rle = encode_rle(np.zeros((40, 60), bool))
    assert rle_area(rle) == 0
    assert rle_bbox_xyxy(rle) == [0, 0, 0, 0]


def test_rle_areas_and_boxes_equal_the_mask_arrays():
    """Batch areas and boxes from the RLE alone equal those counted on each mask array (random, a
    rectangle, one pixel, empty, full)."""
    one_pixel = np.zeros((40, 60), bool)
    one_pixel[7, 59] = True
    masks = [*_random_masks(3), _rectangle(), one_pixel, np.zeros((40, 60), bool), np.ones((40, 60), bool)]
    areas, boxes = rle_areas_and_boxes([encode_rle(m) for m in masks])
    assert areas.dtype == boxes.dtype == np.int64 and boxes.shape == (len(masks), 4)
    for mask, area, box in zip(masks, areas, boxes):
        ys, xs = np.nonzero(mask)
        want = [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1] if len(xs) else [0, 0, 0, 0]
        assert (area, box.tolist()) == (mask.sum(), want)
    assert len(set(areas.tolist())) >= 5  # not one mask repeated
    empty_areas, empty_boxes = rle_areas_and_boxes([])
    assert empty_areas.shape == (0,) and empty_boxes.shape == (0, 4)


@pytest.mark.parametrize(
    "mask",
    [_random_masks(1)[0], _rectangle(), np.zeros((5, 8), bool), np.ones((5, 8), bool)],
    ids=["random", "rectangle", "empty", "full"],
)
def test_png_base64_round_trip(mask):
    data = encode_png_base64(mask)
    raw = base64.b64decode(data, validate=True)
    with Image.open(io.BytesIO(raw)) as im:
        assert im.format == "PNG"
        assert im.mode == "L"
        assert im.size == (mask.shape[1], mask.shape[0])
        pixels = np.asarray(im)
    assert set(np.unique(pixels).tolist()) <= {0, 255}
    np.testing.assert_array_equal(pixels == 255, mask)
    np.testing.assert_array_equal(decode_png_base64(data), mask)


def test_png_rejects_non_2d():
    with pytest.raises(ValueError):
        encode_png_base64(np.zeros((2, 2, 2), bool))


def _two_masks() -> np.ndarray:
    masks = np.zeros((2, 40, 60), bool)
    masks[0] = _rectangle()
    masks[1, 0:5, 0:3] = True
    return masks


def test_encode_masks_rle():
    masks = _two_masks()
    out = encode_masks(masks, "rle")
    assert len(out) == 2
    assert [set(o) for o in out] == [{"area_px", "bbox_xyxy", "rle"}] * 2
    assert [o["area_px"] for o in out] == [200, 15]
    assert [o["bbox_xyxy"] for o in out] == [[30, 10, 50, 20], [0, 0, 3, 5]]
    for o, m in zip(out, masks):
        np.testing.assert_array_equal(decode_rle(o["rle"]), m)


def test_encode_masks_png():
    masks = _two_masks()
    out = encode_masks(masks, "png")
    assert [set(o) for o in out] == [{"area_px", "bbox_xyxy", "png"}] * 2
    assert [o["area_px"] for o in out] == [200, 15]
    for o, m in zip(out, masks):
        np.testing.assert_array_equal(decode_png_base64(o["png"]), m)


def test_encode_masks_none():
    out = encode_masks(_two_masks(), "none")
    assert out == [
        {"area_px": 200, "bbox_xyxy": [30, 10, 50, 20]},
        {"area_px": 15, "bbox_xyxy": [0, 0, 3, 5]},
    ]


def test_encode_masks_polygon():
    masks = _two_masks()
    out = encode_masks(masks, "polygon", polygon_tolerance_px=0.0)
    assert [set(o) for o in out] == [{"area_px", "bbox_xyxy", "polygons", "segmentation"}] * 2
    assert out[1]["polygons"] == [{"exterior": [[0, 0], [3, 0], [3, 5], [0, 5]], "holes": []}]  # pixel edges
    assert out[1]["segmentation"] == [[0, 0, 3, 0, 3, 5, 0, 5]]
    for o, m in zip(out, masks):
        np.testing.assert_array_equal(polygons_to_mask(o["polygons"], *m.shape), m)


@pytest.mark.parametrize("fmt", ["RLE", "jpeg", "", "polygons"])
def test_encode_masks_unknown_format(fmt):
    with pytest.raises(ValueError, match="mask_format"):
        encode_masks(_two_masks(), fmt)


def test_logits_round_trip_float32():
    logits = np.random.default_rng(SEED).normal(0, 10, (256, 256)).astype(np.float32)
    enc = encode_logits_base64(logits)
    assert enc["shape"] == [256, 256]
    assert enc["dtype"] == "float32"
    assert len(base64.b64decode(enc["base64"])) == 256 * 256 * 4
    out = decode_logits_base64(enc["base64"], tuple(enc["shape"]), enc["dtype"])
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out, logits)


def test_logits_encode_is_little_endian_c_order():
    arr = np.arange(6, dtype=np.float64).reshape(2, 3)
    enc = encode_logits_base64(arr.T)  # non-contiguous, float64 input
    assert enc["shape"] == [3, 2]
    raw = base64.b64decode(enc["base64"])
    np.testing.assert_array_equal(np.frombuffer(raw, "<f4").reshape(3, 2), arr.T.astype(np.float32))


def test_logits_decode_float16():
    logits = np.random.default_rng(SEED).normal(0, 5, (8, 16)).astype("<f2")
    data = base64.b64encode(logits.tobytes()).decode()
    out = decode_logits_base64(data, (8, 16), "float16")
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out, logits.astype(np.float32))


def test_logits_decode_wrong_byte_count():
    data = base64.b64encode(np.zeros(10, "<f4").tobytes()).decode()
    with pytest.raises(ValueError, match="expected 44 bytes"):
        decode_logits_base64(data, (11,))
    # float16 bytes read as float32 are the wrong count too
    data16 = base64.b64encode(np.zeros((4, 4), "<f2").tobytes()).decode()
    with pytest.raises(ValueError, match="bytes"):
        decode_logits_base64(data16, (4, 4), "float32")


@pytest.mark.parametrize("data", ["not base64!!", "AAA", "AAAA$AAA"])
def test_logits_decode_bad_base64(data):
    with pytest.raises(ValueError, match="base64"):
        decode_logits_base64(data, (1,))


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_logits_decode_non_finite(bad, dtype):
    arr = np.zeros((4, 4), "<f4" if dtype == "float32" else "<f2")
    arr[2, 3] = bad
    data = base64.b64encode(arr.tobytes()).decode()
    with pytest.raises(ValueError, match="finite"):
        decode_logits_base64(data, (4, 4), dtype)


@pytest.mark.parametrize("dtype", ["float64", "int8", "f4", ""])
def test_logits_decode_unknown_dtype(dtype):
    data = base64.b64encode(np.zeros(4, "<f8").tobytes()).decode()
    with pytest.raises(ValueError, match="dtype"):
        decode_logits_base64(data, (4,), dtype)


# ---------------------------------------------------------------- COCO segmentations and interior points
def test_segmentation_to_rle_matches_pycocotools_ann_to_rle():
    import contextlib
    import io

    from pycocotools.coco import COCO

    from models.masks import decode_rle, segmentation_to_rle
    from tests.conftest import shared_file

    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(shared_file("coco_subset", "annotations", "instances_val2017_subset32.json")))
    kinds = set()
    for ann in gt.dataset["annotations"]:
        img = gt.imgs[ann["image_id"]]
        rle = segmentation_to_rle(ann["segmentation"], img["height"], img["width"])
        assert rle["size"] == [img["height"], img["width"]] and isinstance(rle["counts"], str)
        np.testing.assert_array_equal(decode_rle(rle), gt.annToMask(ann).astype(bool))
        kinds.add("rle" if isinstance(ann["segmentation"], dict) else "polygon")
    assert kinds == {"rle", "polygon"}  # crowd annotations carry uncompressed RLE


def test_segmentation_to_rle_rejects_malformed_polygons():
    from models.masks import segmentation_to_rle

    with pytest.raises(ValueError, match="polygon"):
        segmentation_to_rle([[1, 2, 3, 4]], 10, 10)
    with pytest.raises(ValueError, match="segmentation"):
        segmentation_to_rle(17, 10, 10)


def test_interior_point_is_farthest_from_the_border():
    from models.masks import interior_point

    m = np.zeros((40, 60), bool)
    m[10:31, 5:56] = True  # 21 rows x 51 columns: the centre row 20 is 11 px from the top and bottom edges
    x, y = interior_point(m)
    assert y == 20 and m[y, x]
    # an L shape: the point lies in the thick arm, never in the notch
    m = np.zeros((50, 50), bool)
    m[0:50, 0:30] = True
    m[40:50, 30:50] = True
    x, y = interior_point(m)
    assert m[y, x] and x < 30
    # the image edge counts as border
    m = np.ones((9, 9), bool)
    assert interior_point(m) == (4, 4)
    with pytest.raises(ValueError, match="empty"):
        interior_point(np.zeros((4, 4), bool))


def test_mask_area_bbox_equals_pycocotools_on_speckled_masks():
    """Area and box from the array equal pycocotools' from the RLE, for row- and column-major storage."""
    from models.masks import mask_area_bbox, rle_area, rle_bbox_xyxy

    rng = np.random.default_rng(0)
    masks = rng.random((4, 37, 53)) > 0.97
    masks[1] = False  # empty
    masks[2] = False
    masks[2, 36, 52] = True  # the last pixel alone
    column_major = np.ascontiguousarray(masks.transpose(0, 2, 1)).transpose(0, 2, 1)
    for stored in (masks, column_major):
        for m, rle in zip(stored, encode_rle_batch(stored)):
            assert mask_area_bbox(m) == (rle_area(rle), rle_bbox_xyxy(rle))
            np.testing.assert_array_equal(decode_rle(rle), m)
    assert mask_area_bbox(masks[2]) == (1, [52, 36, 53, 37])
