"""Mask quality against COCO ground truth: ``samgraph eval``.

SAM 2 is prompted with each ground-truth instance (its box, or one point inside its mask) through the
offline pipeline (:mod:`serve_app.offline.pipeline`); its best mask is compared with the ground-truth mask decoded by
pycocotools. Reported:

* mIoU over all instances, per category and per COCO area range (of the ground-truth ``area``:
  small < 32², medium < 96², large otherwise, as ``pycocotools.cocoeval.Params.areaRng``);
* COCOeval ``segm`` AP of the masks, each labelled with the category of the instance that prompted it
  and scored by its ``predicted_iou``. The prompts come from the ground truth, so this AP measures mask
  quality, not detection.

Crowd annotations (``iscrowd=1``) are neither prompted nor scored, as COCO does.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
from pathlib import Path

import numpy as np

from serve_app.offline.writer import AtomicFile

# pycocotools/cocoeval.py, Params.setDetParams: areaRng [0, 32²], [32², 96²], [96², 1e5²]
AREA_RANGES: dict[str, tuple[float, float]] = {
    "small": (0.0, 32.0**2),
    "medium": (32.0**2, 96.0**2),
    "large": (96.0**2, math.inf),
}
PROMPTS = {"box": "coco-boxes", "center-point": "center-points"}
AP_NAMES = ("AP", "AP50", "AP75", "APs", "APm", "APl")


def area_range(area: float) -> str:
    """COCO area range of an instance area: ``small``, ``medium`` or ``large``.

    Args:
        area: the ground-truth ``area``, pixels.

    Returns:
        The name of the :data:`AREA_RANGES` entry that holds it (``large`` above every bound).
    """
    for name, (lo, hi) in AREA_RANGES.items():
        if lo <= area < hi:
            return name
    return "large"


def _miou(values: list[float]) -> dict:
    return {"miou": float(np.mean(values)) if values else None, "count": len(values)}


def evaluate_masks(gt, predictions: dict[int, dict], image_ids: list[int] | None = None) -> dict:
    """Compare one predicted mask per ground-truth instance with that instance's mask.

    Args:
        gt: a ``pycocotools.coco.COCO`` with the ground truth.
        predictions: ground-truth annotation id -> ``{"rle": COCO RLE of the predicted mask (image size),
            "score": float}``. An instance without a prediction counts as IoU 0.
        image_ids: the images evaluated (default: every image of ``gt``).

    Returns:
        ``{"instances", "images", "miou", "per_area": {range: {"miou", "count"}}, "per_category":
        {name: {"miou", "count"}}, "ious": {ann_id: iou}, "coco_segm": {AP, AP50, AP75, APs, APm, APl}}``;
        COCO reports -1 for an AP with no ground truth in its range.

    Raises:
        ValueError: a prediction whose mask size differs from its image's.
    """
    from pycocotools import mask as mask_utils

    from models.masks import segmentation_to_rle

    image_ids = sorted(gt.getImgIds() if image_ids is None else image_ids)
    anns = [a for a in gt.loadAnns(gt.getAnnIds(imgIds=image_ids, iscrowd=False)) if not a.get("iscrowd", 0)]
    cats = {c["id"]: c["name"] for c in gt.loadCats(gt.getCatIds())}
    ious: dict[int, float] = {}
    per_area: dict[str, list[float]] = {k: [] for k in AREA_RANGES}
    per_cat: dict[str, list[float]] = {}
    results = []
    for ann in anns:
        img = gt.imgs[ann["image_id"]]
        h, w = int(img["height"]), int(img["width"])
        gt_rle = segmentation_to_rle(ann["segmentation"], h, w)
        pred = predictions.get(ann["id"])
        iou = 0.0
        if pred is not None:
            rle = pred["rle"]
            if list(rle["size"]) != [h, w]:
                raise ValueError(
                    f"prediction for annotation {ann['id']} has size {list(rle['size'])}, its image is {[h, w]}"
                )
            coded = [
                {"size": [h, w], "counts": r["counts"].encode("ascii") if isinstance(r["counts"], str) else r["counts"]}
                for r in (rle, gt_rle)
            ]
            iou = float(mask_utils.iou(coded[:1], coded[1:], [0])[0][0])
            results.append(
                {
                    "image_id": ann["image_id"],
                    "category_id": ann["category_id"],
                    "segmentation": rle,
                    "score": float(pred["score"]),
                }
            )
        ious[ann["id"]] = iou
        per_area[area_range(float(ann["area"]))].append(iou)
        per_cat.setdefault(cats.get(ann["category_id"], str(ann["category_id"])), []).append(iou)
    return {
        "images": len(image_ids),
        "instances": len(anns),
        "miou": _miou(list(ious.values()))["miou"],
        "per_area": {k: _miou(v) for k, v in per_area.items()},
        "per_category": {k: _miou(per_cat[k]) for k in sorted(per_cat)},
        "ious": ious,
        "coco_segm": coco_segm_ap(gt, results, image_ids),
    }


def coco_segm_ap(gt, results: list[dict], image_ids: list[int]) -> dict | None:
    """COCOeval ``segm`` AP of labelled mask results on ``image_ids``; None without results.

    Args:
        gt: a ``pycocotools.coco.COCO`` with the ground truth.
        results: COCO results (``image_id``, ``category_id``, ``segmentation`` RLE, ``score``).
        image_ids: the images evaluated.

    Returns:
        ``{"AP", "AP50", "AP75", "APs", "APm", "APl"}``: ``COCOeval.stats[:6]``.
    """
    from pycocotools.cocoeval import COCOeval

    if not results:
        return None
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints its progress and table
        dt = gt.loadRes([dict(r) for r in results])
        ev = COCOeval(gt, dt, "segm")
        ev.params.imgIds = list(image_ids)
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return {name: float(v) for name, v in zip(AP_NAMES, ev.stats[:6])}


def predictions_from_instances(parquet_path: str | os.PathLike) -> dict[int, dict]:
    """``instances.parquet`` of a prompted batch run -> ground-truth annotation id -> ``{"rle", "score"}``.

    Args:
        parquet_path: the run's ``instances.parquet``.

    Returns:
        Per prompting annotation, its mask (COCO RLE, image size) scored by ``predicted_iou``; instances
        without an ``ann_id`` (automatic masks) are left out.
    """
    import pyarrow.parquet as pq

    table = pq.read_table(parquet_path, columns=["ann_id", "rle_size", "rle_counts", "predicted_iou"]).to_pylist()
    return {
        int(r["ann_id"]): {
            "rle": {"size": list(r["rle_size"]), "counts": r["rle_counts"]},
            "score": float(r["predicted_iou"]),
        }
        for r in table
        if r["ann_id"] is not None
    }


def report_table(report: dict) -> str:
    """The report as a text table: overall, per area range, per category, then COCOeval AP.

    Args:
        report: :func:`evaluate_masks`' answer (with any extra keys).

    Returns:
        The table, one line per row, without a trailing newline.
    """
    def fmt(v):
        return "   -  " if v is None else f"{v:6.3f}"

    lines = [f"{'':<24}{'mIoU':>8}{'count':>8}", f"{'all':<24}{fmt(report['miou']):>8}{report['instances']:>8}"]
    lines += [f"{'area ' + k:<24}{fmt(v['miou']):>8}{v['count']:>8}" for k, v in report["per_area"].items()]
    lines += [f"{k[:24]:<24}{fmt(v['miou']):>8}{v['count']:>8}" for k, v in report["per_category"].items()]
    if report.get("coco_segm"):
        lines.append("COCOeval segm: " + "  ".join(f"{k} {v:.3f}" for k, v in report["coco_segm"].items()))
    return "\n".join(lines)


def plot_by_area(report: dict, path: str | os.PathLike, title: str = "") -> None:
    """Bar chart of mIoU per COCO area range (and overall), instance counts on the bars, as PNG.

    Args:
        report: :func:`evaluate_masks`' answer.
        path: the PNG to write (atomically: temp file + rename).
        title: the chart's title (default: "mask IoU by COCO area range").
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = ["all", *AREA_RANGES]
    values = [report["miou"] or 0.0] + [report["per_area"][k]["miou"] or 0.0 for k in AREA_RANGES]
    counts = [report["instances"]] + [report["per_area"][k]["count"] for k in AREA_RANGES]
    fig, ax = plt.subplots(figsize=(6, 3.6), dpi=100)
    bars = ax.bar(names, values, color=["#555555", "#4c72b0", "#55a868", "#c44e52"])
    for bar, n in zip(bars, counts):
        ax.text(
            bar.get_x() + bar.get_width() / 2, bar.get_height() + 0.01, f"n={n}", ha="center", va="bottom", fontsize=9
        )
    ax.set_ylim(0, 1.1)
    ax.set_ylabel("mIoU")
    ax.set_title(title or "mask IoU by COCO area range")
    fig.tight_layout()
    tmp = Path(path).with_name(f".{Path(path).name}.tmp-{os.getpid()}.png")
    fig.savefig(tmp)
    plt.close(fig)
    os.replace(tmp, path)


def write_report(report: dict, path: str | os.PathLike) -> None:
    """The report as JSON, written atomically (temp + rename).

    Args:
        report: a JSON-serialisable report.
        path: the file to write; its folder is created if missing.
    """
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    AtomicFile(path).write_text(json.dumps(report, indent=2) + "\n")
