"""Polygon masks against COCO RLE on coco_subset's ground truth: JSON size, fidelity and tracing time.

For each of the 288 non-empty ground-truth masks of ``../shared/data/coco_subset``, the mask goes out as
samgraph's ``rle`` (compressed COCO RLE) and as ``polygon`` at several tolerances (``polygons`` with holes
plus COCO's flat ``segmentation``, as ``/v1/segment`` sends them), and the polygon rings are rasterised back
(``models.polygons.polygons_to_mask``). Baseline: the RLE, encoded in the same run. Reports, per format,
total JSON bytes and the ratio to RLE, mean and minimum IoU of the round trip, the share of masks
returned exactly, and the median time to encode one mask; writes ``benchmarks/results/polygon_sizes.json``.

    python -m benchmarks.polygon_sizes [--tolerances 0,0.5,1,2]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from benchmarks.common import write_result
from models.masks import encode_rle, mask_format_fields
from models.polygons import polygons_to_mask

ANNOTATIONS = Path(__file__).resolve().parents[2] / "shared" / "data" / "coco_subset" / "annotations" / "instances_val2017_subset32.json"


def _masks() -> list[np.ndarray]:
    from pycocotools.coco import COCO

    coco = COCO(str(ANNOTATIONS))
    masks = [coco.annToMask(a).astype(bool) for a in coco.loadAnns(coco.getAnnIds())]
    return [m for m in masks if m.any()]


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.logical_and(a, b).sum() / np.logical_or(a, b).sum())


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tolerances", default="0,0.5,1,2", help="polygon_tolerance_px values, comma-separated")
    args = ap.parse_args(argv)
    masks = _masks()
    rows = []
    times, size = [], 0
    for m in masks:
        t0 = time.perf_counter()
        size += len(json.dumps({"rle": encode_rle(m)}))
        times.append(time.perf_counter() - t0)
    rle_bytes = size
    rows.append({"format": "rle", "bytes": size, "vs_rle": 1.0, "mean_iou": 1.0, "min_iou": 1.0, "exact": 1.0, "ms_p50": 1e3 * float(np.median(times))})
    for tol in (float(t) for t in args.tolerances.split(",")):
        times, size, ious, exact = [], 0, [], 0
        for m in masks:
            t0 = time.perf_counter()
            fields = mask_format_fields(m, "polygon", tol)
            size += len(json.dumps(fields))
            times.append(time.perf_counter() - t0)
            back = polygons_to_mask(fields["polygons"], *m.shape)
            ious.append(_iou(back, m))
            exact += bool(np.array_equal(back, m))
        rows.append(
            {"format": f"polygon tol={tol:g}", "bytes": size, "vs_rle": size / rle_bytes, "mean_iou": float(np.mean(ious)),
             "min_iou": float(np.min(ious)), "exact": exact / len(masks), "ms_p50": 1e3 * float(np.median(times))}
        )
    print(f"{len(masks)} ground-truth masks of coco_subset")
    print(f"{'format':<18} {'JSON bytes':>11} {'x RLE':>6} {'mean IoU':>9} {'min IoU':>8} {'exact':>6} {'ms p50':>7}")
    for r in rows:
        print(f"{r['format']:<18} {r['bytes']:>11} {r['vs_rle']:>6.2f} {r['mean_iou']:>9.4f} {r['min_iou']:>8.4f} {r['exact']:>6.2f} {r['ms_p50']:>7.2f}")
    payload = {"masks": len(masks), "rows": rows}
    write_result("polygon_sizes", payload)
    return payload


if __name__ == "__main__":
    main()
