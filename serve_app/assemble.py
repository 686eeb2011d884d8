"""Turning stage outputs into API records, shared by the HTTP ingress and the in-process API."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from deployments.contracts import DecodeResult, EmbedResult, GenerateResult, ImageInfo
from models.amg import AmgSettings, AutoMask
from models.knn import Neighbor, vote
from models.masks import POLYGON_TOLERANCE_PX, decode_rle, mask_area_bbox, mask_format_fields
from serve_app.ingress.errors import ApiError
from serve_app.ingress.readiness import RANDOM_WEIGHTS_WARNING


def amg_settings(defaults: dict, overrides: dict | None) -> AmgSettings:
    """App defaults overlaid with a request's set fields.

    Raises:
        ValueError: an invalid combination (``AmgSettings`` validation).
    """
    return AmgSettings(**{**defaults, **{k: v for k, v in (overrides or {}).items() if v is not None}})


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


def merge_segment_results(req, decoded: DecodeResult | None, generated: GenerateResult | None, embedded: EmbedResult | None, text_vectors: np.ndarray | None, timing: dict) -> dict:
    """The ``/v1/segment`` body from the decoder's answer to the geometric prompts and the text prompts'
    automatic masks ranked by CLIP, one result per prompt in the request's order.

    Args:
        req: the :class:`serve_app.ingress.schemas.SegmentRequest` (its ``prompts``, ``max_masks``, ``mask_format``, ``polygon_tolerance_px``).
        decoded: the decoder's answer to the geometric prompts, or None when there are none.
        generated, embedded: the candidate masks and their crops' embeddings, or None without text prompts.
        text_vectors: (T, D) float32 L2-normalised embeddings of the T text prompts, or None.
        timing: the request's ``timing_ms``; the stages' times are added to it.

    Returns:
        ``{"model_id", "weights", "results", ["embedder_weights"]}``.
    """
    body: dict = {"model_id": None, "weights": None}
    geo_results, text_results = [], []
    if decoded is not None:
        geo_results = decoded.results
        body.update(model_id=decoded.model_id, weights=decoded.weights)
        timing.update({k: decoded.timing_ms[k] for k in ("decode_masks", "postprocess")})
    if generated is not None:
        body.update(model_id=generated.model_id, weights=generated.weights, embedder_weights=embedded.weights)
        text_results = [
            {"masks": rank_by_text(generated.masks, embedded.embeddings, t, req.max_masks, req.mask_format, req.polygon_tolerance_px)} for t in text_vectors
        ]
        timing.update({"amg": generated.timing_ms["amg"], **{k: embedded.timing_ms[k] for k in ("fade", "embed")}})
    geo_iter, text_iter = iter(geo_results), iter(text_results)
    body["results"] = [next(text_iter) if p is not None and p.is_text else next(geo_iter) for p in req.prompts or [None]]
    return body


def image_answer(image: ImageInfo, body: dict, timing: dict) -> dict:
    """The answer about one image: model and weights, the image's id and size, ``encode_cached``, the
    route's ``body`` and ``timing_ms``, and the random-weights warning where it applies."""
    out = {
        "model_id": body.pop("model_id"),
        "weights": body.pop("weights"),
        "image_id": image.image_id,
        "width": image.width,
        "height": image.height,
        "encode_cached": image.encode_cached,
        **body,
        "timing_ms": timing,
    }
    if out["weights"] == "random" or body.get("embedder_weights") == "random":
        out["warnings"] = [RANDOM_WEIGHTS_WARNING]
    return out


def check_mask(rle: dict, width: int, height: int) -> dict:
    """A given ``mask_rle``, checked against the image's size and decoded once (422 naming ``mask_rle``)."""
    if list(rle["size"]) != [height, width]:
        raise ApiError(422, "invalid_request", f"mask_rle: size {list(rle['size'])} differs from the image's [{height}, {width}]", "mask_rle")
    try:
        decode_rle(rle)
    except ValueError as e:
        raise ApiError(422, "invalid_request", f"mask_rle: {e}", "mask_rle") from None
    return rle


def polygon_records(rles: Sequence[dict], polygon_tolerance_px: float, max_pixels: int) -> list[dict]:
    """``/v1/masks/polygons``: each COCO RLE as ``{"area_px", "bbox_xyxy", "polygons", "segmentation"}``
    (``models.masks.mask_format_fields`` with ``polygon``).

    Args:
        rles: ``{"size": [H, W], "counts": str}`` masks.
        polygon_tolerance_px: the simplification, pixels (0: the exact outline).
        max_pixels: the largest ``H * W`` accepted (the app's ``max_image_pixels``).

    Raises:
        ApiError: 413 naming ``masks[i]`` for a mask over ``max_pixels``, 422 for one that does not decode.
    """
    out = []
    for i, rle in enumerate(rles):
        h, w = (int(v) for v in rle["size"])
        if h < 1 or w < 1:
            raise ApiError(422, "invalid_request", f"masks[{i}].size: must be [H, W] with H, W >= 1", f"masks[{i}].size")
        if h * w > max_pixels:
            raise ApiError(413, "image_too_large", f"masks[{i}]: {w}x{h} is over the limit of {max_pixels} pixels", f"masks[{i}]")
        try:
            mask = decode_rle(rle)
        except ValueError as e:
            raise ApiError(422, "invalid_request", f"masks[{i}]: {e}"[:300], f"masks[{i}]") from None
        area, box = mask_area_bbox(mask)
        out.append({"area_px": area, "bbox_xyxy": box, **mask_format_fields(mask, "polygon", polygon_tolerance_px)})
    return out
