"""Ray Data stages of the offline pipeline: the same ``models/`` code as the Serve deployments.

Each stage is a callable class for ``Dataset.map_batches`` (``batch_format="numpy"``): it loads its model
once in ``__init__`` and maps a batch of rows, one row per image, to a batch of rows. Rows whose
``error`` is set (an unreadable file) pass through every stage untouched, so the driver can count and
report them without stopping the run. Each stage adds its time per image, in ms, to the row's
``timing_ms``.

An image's state travels as one :class:`Item` (column ``item``). Its keys, in the order the stages add
them::

    path, image_id, anns                              input (anns: the image's COCO annotations, JSON)
    error, width, height, image, prompts, examples    LoadImages
    features                                          EncodeImages   (dropped by DecodeMasks)
    instances                                         DecodeMasks
    crops, example_crops                              FadeCrops      (image dropped here)
    embeddings, example_embeddings                    EmbedCrops     (crops dropped here)
    instances[i].label/confidence/neighbors, added    RetrieveLabels (embeddings dropped unless kept)
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from deployments.common import (
    accel_settings,
    fallback_logger,
    load_stage_model,
    pick_device,
    set_torch_threads,
    warm_up,
)

PROMPT_MODES = ("coco-boxes", "center-points", "auto")
_IMAGE_PLACEHOLDER = np.zeros((1, 1, 3), np.uint8)


class Item:
    """One image's state between stages: a dict of its columns, kept as one opaque Python object.

    Ray Data turns a column of plain lists and dicts into Arrow types (nested lists come back as numpy
    arrays); a column of these objects is pickled as is, so every stage sees exactly what the last wrote.
    """

    __slots__ = ("data",)

    def __init__(self, data: dict) -> None:
        self.data = data


def object_column(values: list) -> np.ndarray:
    """A 1-D object array holding ``values`` as they are (numpy would stack equal-shaped arrays)."""
    out = np.empty(len(values), dtype=object)
    for i, v in enumerate(values):
        out[i] = v
    return out


def batch_rows(batch: dict[str, np.ndarray]) -> list[dict]:
    """The image states of a numpy batch (column ``item``)."""
    return [item.data for item in batch["item"]]


def rows_batch(rows: list[dict], drop: tuple[str, ...] = ()) -> dict[str, np.ndarray]:
    """Image states back into a numpy batch, leaving out the ``drop`` keys."""
    return {"item": object_column([Item({k: v for k, v in r.items() if k not in drop}) for r in rows])}


class _Stage:
    """Maps each good row with ``_process`` (batched where the model batches) and times it."""

    name = "stage"
    drop: tuple[str, ...] = ()

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        rows = batch_rows(batch)
        good = [r for r in rows if not r["error"]]
        t0 = time.perf_counter()
        if good:
            self._process(good)
        per_image_ms = (time.perf_counter() - t0) * 1e3 / max(len(good), 1)
        for r in good:
            r["timing_ms"] = {**r["timing_ms"], self.name: per_image_ms}
        return rows_batch(rows, self.drop)

    def _process(self, rows: list[dict]) -> None:
        raise NotImplementedError


class LoadImages:
    """Read and decode image files; build each image's prompts (and ground-truth examples).

    Args:
        prompts: ``coco-boxes`` (one box per non-crowd annotation, XYWH -> XYXY), ``center-points`` (per
            non-crowd annotation the interior point of its mask farthest from the border; for an image
            without annotations one point at the image centre) or ``auto`` (no prompts: automatic masks).
        with_examples: also decode every non-crowd annotation's mask into ``examples`` (``--add-examples``).
        categories: COCO category id -> name, for the examples' labels.
        max_image_pixels: larger images are reported as errors (the service's limit).

    Raises:
        ValueError: an unknown ``prompts`` mode.
    """

    def __init__(self, prompts: str, with_examples: bool, categories: dict[int, str], max_image_pixels: int) -> None:
        if prompts not in PROMPT_MODES:
            raise ValueError(f"prompts must be one of {', '.join(PROMPT_MODES)}; got {prompts!r}")
        self.prompts, self.with_examples = prompts, with_examples
        self.categories = {int(k): v for k, v in categories.items()}
        self.max_image_pixels = max_image_pixels

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        names = list(batch)
        rows = [{k: batch[k][i].item() if isinstance(batch[k][i], np.generic) else batch[k][i] for k in names} for i in range(len(batch[names[0]]))]
        for row in rows:
            t0 = time.perf_counter()
            row.update(error="", width=0, height=0, image=_IMAGE_PLACEHOLDER, prompts=[], examples=[])
            try:
                self._load(row)
            except Exception as e:  # any unreadable input is reported, never fatal
                row.update(error=f"{type(e).__name__}: {getattr(e, 'message', None) or e}"[:500], image=_IMAGE_PLACEHOLDER, prompts=[], examples=[])
            row["timing_ms"] = {"load": (time.perf_counter() - t0) * 1e3}
        return rows_batch(rows)

    def _load(self, row: dict) -> None:
        from models.masks import decode_rle, interior_point, segmentation_to_rle
        from serve_app.images import decode_image

        image = decode_image(Path(row["path"]).read_bytes(), self.max_image_pixels)
        h, w = image.shape[:2]
        all_anns = json.loads(row["anns"])
        anns = [a for a in all_anns if not a.get("iscrowd", 0)]
        row.update(image=image, width=w, height=h)
        prompts, examples = [], []
        for ann in anns:
            meta = {"ann_id": int(ann["id"]), "category_id": int(ann["category_id"])}
            rle = None
            if self.prompts == "center-points" or self.with_examples:
                rle = segmentation_to_rle(ann["segmentation"], h, w)
            if self.prompts == "coco-boxes":
                x, y, bw, bh = (float(v) for v in ann["bbox"])
                box = [max(0.0, x), max(0.0, y), min(float(w), x + bw), min(float(h), y + bh)]
                if box[2] > box[0] and box[3] > box[1]:
                    prompts.append({**meta, "box_xyxy": box})
            elif self.prompts == "center-points":
                mask = decode_rle(rle)
                if mask.any():
                    x, y = interior_point(mask)
                    prompts.append({**meta, "points": [[x, y, 1]]})
            if self.with_examples:
                examples.append({**meta, "label": self.categories.get(meta["category_id"], str(meta["category_id"])), "rle": rle})
        if self.prompts == "center-points" and not all_anns:
            prompts.append({"ann_id": None, "category_id": None, "points": [[w / 2, h / 2, 1]]})
        row.update(prompts=prompts, examples=examples)


class EncodeImages(_Stage):
    """SAM 2 image encoder over a batch of images (``Sam2ImageEncoder.encode_batch``).

    Args:
        model_id, weights, device, torch_threads, accel: as :class:`deployments.encoder.ImageEncoder`.
    """

    name = "encode"

    def __init__(
        self, model_id: str, weights: dict, device: str = "auto", torch_threads: int | None = None, accel: dict | None = None
    ) -> None:
        from models.sam2_image import Sam2ImageEncoder

        settings = accel_settings(accel)
        loaded, _ = load_stage_model(model_id, weights, device, torch_threads)
        self.encoder = Sam2ImageEncoder(loaded.model, settings, fallback_logger("encode"))
        warm_up("encode", self.encoder, settings)
        self.weights = loaded.weights

    def _process(self, rows: list[dict]) -> None:
        features = self.encoder.encode_batch([r["image"] for r in rows])
        assert len(features) == len(rows)
        for r, f in zip(rows, features):
            r["features"] = f


class DecodeMasks(_Stage):
    """Masks for each image's prompts (best ``predicted_iou`` per prompt) or its automatic masks.

    The prompt path is ``/v1/segment``'s: prompts become :class:`models.sam2_decoder.PromptSpec` through
    :func:`serve_app.schemas.to_prompt_specs` (a lone point is multimask, a box is not) and every prompt of
    every image in the batch runs through one ``Sam2MaskDecoder.predict_batch`` call. The automatic path
    is ``/v1/predict``'s: :func:`models.amg.generate_masks`, best ``max_instances`` kept.

    Args:
        model_id, weights, device, torch_threads, accel: as :class:`deployments.decoder.MaskDecoder`.
        amg: :class:`models.amg.AmgSettings` fields, or None for prompt modes.
        max_instances: automatic masks kept per image.

    Each instance: ``{"rle", "area_px", "bbox_xyxy", "predicted_iou", "stability_score", "ann_id",
    "category_id"}`` (the last two from the prompting annotation; None for automatic masks).
    """

    name = "decode"
    drop = ("features",)

    def __init__(
        self,
        model_id: str,
        weights: dict,
        device: str = "auto",
        torch_threads: int | None = None,
        accel: dict | None = None,
        amg: dict | None = None,
        max_instances: int = 20,
    ) -> None:
        from models.amg import AmgSettings
        from models.sam2_decoder import Sam2MaskDecoder

        settings = accel_settings({**(accel or {}), "tensorrt": False})
        loaded, _ = load_stage_model(model_id, weights, device, torch_threads)
        loaded.model.image_encoder = None
        self.decoder = Sam2MaskDecoder(loaded.model, accel=settings, on_fallback=fallback_logger("decode"))
        warm_up("decode", self.decoder, settings)
        self.amg = AmgSettings(**amg) if amg is not None else None
        self.max_instances = max_instances

    def _process(self, rows: list[dict]) -> None:
        if self.amg is not None:
            from models.amg import generate_masks

            for r in rows:
                r["instances"] = [
                    {"rle": m.rle, "area_px": m.area_px, "bbox_xyxy": list(m.bbox_xyxy), "predicted_iou": m.predicted_iou,
                     "stability_score": m.stability_score, "ann_id": None, "category_id": None}
                    for m in generate_masks(self.decoder, r["features"], self.amg)[: self.max_instances]
                ]
            return
        from models.masks import encode_masks
        from models.sam2_decoder import DecodeRequest
        from serve_app.schemas import PromptIn, to_prompt_specs

        requests, todo = [], []
        for r in rows:
            r["instances"] = []
            if r["prompts"]:
                geometry = [{k: p[k] for k in ("box_xyxy", "points") if k in p} for p in r["prompts"]]
                specs, multimask = to_prompt_specs([PromptIn(**g) for g in geometry], r["width"], r["height"])
                requests.append(DecodeRequest(r["features"], specs, multimask))
                todo.append(r)
        for r, per_prompt in zip(todo, self.decoder.predict_batch(requests) if requests else []):
            for prompt, pred in zip(r["prompts"], per_prompt):
                best = int(np.argmax(pred.predicted_iou))
                enc = encode_masks(pred.masks[best : best + 1], "rle")[0]
                r["instances"].append(
                    {**enc, "predicted_iou": float(pred.predicted_iou[best]), "stability_score": float(pred.stability_score[best]),
                     "ann_id": prompt["ann_id"], "category_id": prompt["category_id"]}
                )


class FadeCrops(_Stage):
    """Faded crops around each instance mask (and each ground-truth example mask), ``/v1/predict``'s fade.

    Args:
        strategy, params: a fade strategy of :func:`models.fade_strategies.make_fade_strategy`.
        crop: :class:`models.fader.CropSettings` fields.
    """

    name = "fade"
    drop = ("image",)

    def __init__(self, strategy: str, params: dict, crop: dict) -> None:
        from models.fade_strategies import make_fade_strategy
        from models.fader import CropSettings

        self.strategy = make_fade_strategy(strategy, **params)
        self.crop = CropSettings(**crop)

    def _process(self, rows: list[dict]) -> None:
        from models.fader import fade_and_crop_batch
        from models.masks import decode_rle

        for r in rows:
            for key, items in (("crops", r["instances"]), ("example_crops", r["examples"])):
                masks = [decode_rle(it["rle"]) for it in items]
                keep = [m.any() for m in masks]  # an empty mask has no crop; it is not embedded
                r[key] = fade_and_crop_batch([r["image"]] * sum(keep), [m for m, k in zip(masks, keep) if k], self.strategy, self.crop)
                for it, k in zip(items, keep):
                    it["embedded"] = bool(k)


class EmbedCrops(_Stage):
    """open_clip image tower over every crop of the batch's images in one call (L2-normalised).

    Args:
        model_name, pretrained, weights, device, torch_threads: as :class:`deployments.embedder.Embedder`.
    """

    name = "embed"
    drop = ("crops", "example_crops")

    def __init__(self, model_name: str, pretrained: str, weights: dict, device: str = "auto", torch_threads: int | None = None) -> None:
        from models.embedder import ClipSpec
        from serve_app.clip_weights import ClipWeightsSource, load_clip

        set_torch_threads(torch_threads)
        loaded = load_clip(ClipSpec(model_name, pretrained), ClipWeightsSource(**weights), device=pick_device(device))
        self.embedder = loaded.embedder
        self.weights = loaded.weights

    def _process(self, rows: list[dict]) -> None:
        crops = [c for r in rows for key in ("crops", "example_crops") for c in r[key]]
        vecs = self.embedder.embed_images(crops) if crops else np.zeros((0, self.embedder.dim), np.float32)
        assert len(vecs) == len(crops)
        i = 0
        for r in rows:
            for key, out in (("crops", "embeddings"), ("example_crops", "example_embeddings")):
                n = len(r[key])
                r[out] = np.asarray(vecs[i : i + n], np.float32)
                i += n


class RetrieveLabels(_Stage):
    """Store ground-truth examples, or label instances by their nearest examples (``/v1/predict``'s vote).

    Args:
        store: :class:`serve_app.vectorstore.ExampleStore` keyword arguments (``path`` or ``url``).
        collection: the examples' collection.
        mode: ``add`` (store every example under its label) or ``search``.
        top_k, min_score: as ``/v1/predict``.
        keep_embeddings: keep the instances' embeddings in the rows (``--embeddings``).

    Raises:
        ValueError: an unknown ``mode``.
        StoreError, UnknownCollection: as :class:`serve_app.vectorstore.ExampleStore`.
    """

    name = "retrieve"

    def __init__(self, store: dict, collection: str, mode: str, top_k: int = 5, min_score: float = 0.0, keep_embeddings: bool = False) -> None:
        from serve_app.vectorstore import ExampleStore

        if mode not in ("add", "search"):
            raise ValueError(f"mode must be add or search; got {mode!r}")
        self.store = ExampleStore(**store)
        self.collection, self.mode, self.top_k, self.min_score = collection, mode, top_k, min_score
        self.drop = ("example_embeddings",) if keep_embeddings else ("embeddings", "example_embeddings")

    def _process(self, rows: list[dict]) -> None:
        if self.mode == "add":
            self._add(rows)
        else:
            self._search(rows)

    def _add(self, rows: list[dict]) -> None:
        from models.masks import rle_area, rle_bbox_xyxy

        vecs, labels, payloads, owners = [], [], [], []
        for r in rows:
            embedded = [e for e in r["examples"] if e["embedded"]]
            for ex, vec in zip(embedded, r["example_embeddings"]):
                vecs.append(vec)
                labels.append(ex["label"])
                payloads.append({"bbox_xyxy": rle_bbox_xyxy(ex["rle"]), "area_px": rle_area(ex["rle"]), "source": str(r["path"]), "coco_ann_id": ex["ann_id"]})
                owners.append(r)
            r["added"] = []
        if vecs:
            ids = self.store.add(self.collection, np.stack(vecs), labels, payloads)
            for r, example_id in zip(owners, ids):
                r["added"].append(example_id)

    def _search(self, rows: list[dict]) -> None:
        from models.knn import vote

        queries = [r["embeddings"] for r in rows if len(r["embeddings"])]
        found = iter(self.store.search(self.collection, np.concatenate(queries), self.top_k) if queries else [])
        for r in rows:
            for inst in r["instances"]:
                nbrs = next(found) if inst["embedded"] else []
                label, confidence = vote(nbrs, self.min_score)
                inst.update(label=label, confidence=confidence, neighbors=[{"id": n.id, "label": n.label, "score": n.score} for n in nbrs])


STAGES: dict[str, Callable] = {
    "load": LoadImages,
    "encode": EncodeImages,
    "decode": DecodeMasks,
    "fade": FadeCrops,
    "embed": EmbedCrops,
    "retrieve": RetrieveLabels,
}
