"""Automatic masks as API records (a mask in the requested format with its scores; a /v1/predict
instance with its neighbours and vote; text prompts' masks ranked by CLIP), shared by the HTTP ingress
and the in-process API. The HTTP answers' models are :mod:`serve_app.ingress.responses`."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from models.amg import AutoMask
from models.knn import Neighbor, vote
from models.masks import POLYGON_TOLERANCE_PX, decode_rle, mask_format_fields


def mask_record(mask: AutoMask, mask_format: str, polygon_tolerance_px: float = POLYGON_TOLERANCE_PX) -> dict:
    """An automatic mask as a response record: the mask in ``mask_format`` (``models.masks.mask_format_fields``)
    plus its scores and box."""
    rec: dict = {
        "predicted_iou": mask.predicted_iou,
        "stability_score": mask.stability_score,
        "area_px": mask.area_px,
        "bbox_xyxy": mask.bbox_xyxy,
    }
    if mask_format == "rle":
        rec["rle"] = mask.rle
    elif mask_format != "none":
        rec.update(mask_format_fields(decode_rle(mask.rle), mask_format, polygon_tolerance_px))
    return rec


def instances(
    masks: Sequence[AutoMask],
    neighbors: Sequence[Sequence[Neighbor]],
    min_score: float,
    mask_format: str,
    polygon_tolerance_px: float = POLYGON_TOLERANCE_PX,
) -> list[dict]:
    """``/v1/predict`` instances: each mask with its neighbours and their similarity-weighted vote.

    Args:
        masks: automatic masks, best first.
        neighbors: per mask, the nearest labelled examples, best first.
        min_score: neighbours below this cosine similarity do not vote; none left -> ``label`` null.
        mask_format: ``rle``, ``png``, ``polygon`` or ``none``.
        polygon_tolerance_px: the ``polygon`` simplification, pixels.
    """
    if len(masks) != len(neighbors):
        raise ValueError(f"{len(masks)} masks but {len(neighbors)} neighbour lists")
    out = []
    for mask, nbrs in zip(masks, neighbors):
        label, confidence = vote(nbrs, min_score)
        out.append(
            {
                **mask_record(mask, mask_format, polygon_tolerance_px),
                "label": label,
                "confidence": confidence,
                "neighbors": [{"id": n.id, "label": n.label, "score": n.score} for n in nbrs],
            }
        )
    return out


def rank_by_text(
    masks: Sequence[AutoMask],
    crop_embeddings: np.ndarray,
    text_embedding: np.ndarray,
    max_masks: int,
    mask_format: str,
    polygon_tolerance_px: float = POLYGON_TOLERANCE_PX,
) -> list[dict]:
    """Masks ranked by CLIP cosine similarity between their faded crop and a text, best first.

    Args:
        masks: N automatic masks.
        crop_embeddings: (N, D) float32, L2-normalised.
        text_embedding: (D,) float32, L2-normalised.
        max_masks: how many to keep.
        mask_format: ``rle``, ``png``, ``polygon`` or ``none``.
        polygon_tolerance_px: the ``polygon`` simplification, pixels.

    Returns:
        Up to ``max_masks`` mask records, each with ``text_score`` (cosine similarity in [-1, 1]).
    """
    if len(masks) != len(crop_embeddings):
        raise ValueError(f"{len(masks)} masks but {len(crop_embeddings)} crop embeddings")
    if not len(masks):
        return []
    scores = np.asarray(crop_embeddings, np.float32) @ np.asarray(text_embedding, np.float32)
    order = np.argsort(-scores, kind="stable")[:max_masks]
    return [{**mask_record(masks[i], mask_format, polygon_tolerance_px), "text_score": float(scores[i])} for i in order]
