"""Automatic mask generation over a split encoder/decoder (any family with automatic masks).

The algorithm is sam2's ``SAM2AutomaticMaskGenerator`` with one crop layer (``crop_n_layers=0``,
``sam2/automatic_mask_generator.py``): a regular grid of ``points_per_side``^2 foreground clicks, three
candidate masks per click, decoded ``points_per_batch`` clicks per forward pass; masks kept when
``predicted_iou > pred_iou_thresh`` and ``stability_score >= stability_score_thresh``; duplicates removed
by box NMS (torchvision ``batched_nms``, scored by ``predicted_iou``, at ``box_nms_thresh``). sam2's own
helpers are reused (``build_point_grid``, ``calculate_stability_score``, ``batched_mask_to_box``).

Differences, none of which changes the result for the same settings: the image is encoded once by the
encoder stage (features arrive precomputed); the IoU filter runs before the logits are upsampled (it
does not depend on them); the logits are upsampled, scored and thresholded a few masks at a time
(:data:`CHUNK_PIXELS`) instead of a whole decoder pass at once; areas and boxes are read from the masks'
COCO RLE (pycocotools), which is kept instead of sam2's uncompressed RLE.
``min_area_px`` (default 0, off) additionally drops masks smaller than that many pixels before NMS,
and empty masks are always dropped (sam2 keeps them; they are no object and cannot be cropped).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from models.masks import encode_rle_batch, rle_areas_and_boxes
from models.segmenter import Features, MaskDecoder
from models.settings import bounded, check_bounds


@dataclass(frozen=True)
class AmgSettings:
    """Automatic-mask settings; defaults are ``SAM2AutomaticMaskGenerator``'s.

    The limits here are also those of the HTTP ``amg`` field and the app's ``amg:`` config (their pydantic
    models are built from these fields; ``points_per_batch`` is config only). sam2 puts no upper bound on
    ``points_per_side``; 128 (16384 clicks, 16 times the default's decoder work) bounds a request's
    time, and peak memory does not grow with it (clicks are decoded ``points_per_batch`` at a time).
    Peak memory grows with ``points_per_batch``: about 26 MB a click for the tiny model in fp32 on CPU
    (the decoder pass; measured: 64 clicks add 1.7 GB. The upsampled logits are handled a few masks at a
    time, :data:`CHUNK_PIXELS`, so the image's size adds little), so 1024 clicks at once need about 27 GB;
    requests cannot set it.

    Attributes:
        points_per_side: grid side; points_per_side^2 clicks (1..128).
        points_per_batch: clicks per decoder forward pass (1..1024).
        pred_iou_thresh: keep masks with predicted IoU strictly above this (0..1; 0 disables).
        stability_score_thresh: keep masks with stability >= this (0..1; 0 disables).
        stability_score_offset: logit offset of the stability score (> 0).
        box_nms_thresh: IoU above which the lower-scored of two boxes is dropped (0..1).
        min_area_px: drop masks with fewer pixels (>= 0; 0 disables).
    """

    points_per_side: int = bounded(32, ge=1, le=128)
    points_per_batch: int = bounded(64, ge=1, le=1024)
    pred_iou_thresh: float = bounded(0.8, ge=0, le=1)
    stability_score_thresh: float = bounded(0.95, ge=0, le=1)
    stability_score_offset: float = bounded(1.0, gt=0)
    box_nms_thresh: float = bounded(0.7, ge=0, le=1)
    min_area_px: int = bounded(0, ge=0)

    def __post_init__(self) -> None:
        check_bounds(self)


@dataclass(frozen=True)
class AutoMask:
    """One automatic mask.

    Attributes:
        rle: COCO RLE ``{size: [H, W], counts: str}`` at the original resolution.
        area_px: pixels in the mask.
        bbox_xyxy: tight box, pixel-edge convention (x1 = last column + 1).
        predicted_iou: the decoder's IoU estimate.
        stability_score: IoU of the mask thresholded at +/- the offset.
        point_xy: the grid click that produced it, (x, y) pixels.
    """

    rle: dict
    area_px: int
    bbox_xyxy: list[int]
    predicted_iou: float
    stability_score: float
    point_xy: list[float]


def grid_points(points_per_side: int, orig_hw: tuple[int, int]) -> np.ndarray:
    """(n^2, 2) float32 (x, y) pixel clicks of sam2's point grid (cell centres) over an (H, W) image."""
    from sam2.utils.amg import build_point_grid

    h, w = orig_hw
    return (build_point_grid(points_per_side) * np.array([[w, h]])).astype(np.float32)


#: Logits upsampled at a time, in pixels (16 MB of float32): the masks of one decoder pass are upsampled,
#: scored and thresholded a few at a time so that each pass over their logits stays in the CPU's cache.
#: Measured on 2 cores (truck.jpg, 1800 x 1200, 64 clicks, 192 candidates, torch decoder): this function
#: took 8.6 s with a pass's 1.7 GB of logits handled at once and 6.0 s one mask at a time (the decoder
#: pass itself: 4.8 s), the same masks.
CHUNK_PIXELS = 4_000_000


@torch.inference_mode()
def generate_masks(
    decoder: MaskDecoder, features: Features, settings: AmgSettings = AmgSettings()
) -> list[AutoMask]:
    """All objects in one image: grid clicks -> masks -> filters -> box NMS.

    Args:
        decoder: the mask decoder.
        features: the image's features from the encoder.
        settings: grid, thresholds and NMS settings.

    Returns:
        Masks in NMS order (best ``predicted_iou`` first), as ``SAM2AutomaticMaskGenerator.generate``.
    """
    from sam2.utils.amg import calculate_stability_score
    from torchvision.ops import batched_nms

    thr = decoder.settings.mask_threshold
    h, w = features.orig_hw
    chunk = max(1, CHUNK_PIXELS // (h * w))
    points = grid_points(settings.points_per_side, features.orig_hw)
    rles: list[dict] = []
    boxes, ious, stabilities, origins, mask_areas = [], [], [], [], []
    for start in range(0, len(points), settings.points_per_batch):
        batch = points[start : start + settings.points_per_batch]
        low_res, iou = decoder.decode_points(features, batch, multimask_output=True)
        low_res, iou = low_res.flatten(0, 1), iou.flatten(0, 1)
        clicks = np.repeat(batch, low_res.shape[0] // len(batch), axis=0)
        if settings.pred_iou_thresh > 0:
            keep = iou > settings.pred_iou_thresh
            low_res, iou, clicks = low_res[keep], iou[keep], clicks[keep.cpu().numpy()]
        for first in range(0, len(low_res), chunk):
            logits = decoder.upsample_logits(low_res[first : first + chunk], features.orig_hw)
            stability = calculate_stability_score(logits, thr, settings.stability_score_offset)
            if settings.stability_score_thresh > 0:
                keep = stability >= settings.stability_score_thresh
                if not keep.any():
                    continue
                logits, stability = logits[keep], stability[keep]
                kept = first + keep.nonzero()[:, 0].cpu().numpy()
            else:
                kept = np.arange(first, first + len(logits))
            chunk_rles = encode_rle_batch((logits > thr).cpu().numpy())
            del logits
            areas, edge_boxes = rle_areas_and_boxes(chunk_rles)
            big = areas >= max(settings.min_area_px, 1)  # an empty mask is no object
            if not big.any():
                continue
            rles.extend(r for r, b in zip(chunk_rles, big) if b)
            mask_areas.append(areas[big])
            boxes.append(edge_boxes[big])
            ious.append(iou[torch.as_tensor(kept[big], device=iou.device)])
            stabilities.append(stability[torch.as_tensor(big, device=stability.device)])
            origins.append(clicks[kept[big]])
    if not rles:
        return []
    # sam2 runs NMS on boxes that hold the last row/column; ours are pixel-edge (x1 = last column + 1)
    edge_boxes = np.concatenate(boxes)
    all_ious = torch.cat(ious)
    nms_boxes = torch.as_tensor(edge_boxes - np.array([0, 0, 1, 1]), dtype=torch.float, device=all_ious.device)
    one_class = torch.zeros(len(nms_boxes), device=all_ious.device)
    order = batched_nms(nms_boxes, all_ious, one_class, settings.box_nms_thresh)
    all_stab, all_pts, all_areas = torch.cat(stabilities), np.concatenate(origins), np.concatenate(mask_areas)
    return [
        AutoMask(
            rle=rles[i],
            area_px=int(all_areas[i]),
            bbox_xyxy=[int(v) for v in edge_boxes[i]],
            predicted_iou=float(all_ious[i]),
            stability_score=float(all_stab[i]),
            point_xy=[float(v) for v in all_pts[i]],
        )
        for i in order.tolist()
    ]
