"""Ray Data stages of the offline job (``samgraph batch``, driven by :mod:`serve_app.offline`): the same
``models/`` code as the Serve deployments. (Serve's own dynamic batching is
:mod:`deployments.runtime.serve_batching`.)

Each stage is a callable class for ``Dataset.map_batches`` (``batch_format="numpy"``): it loads its model
once in ``__init__`` and maps a batch of rows, one row per image, to a batch of rows. Rows whose
``error`` is set (an unreadable file) pass through every stage untouched, so the driver can count and
report them without stopping the run. Each stage adds its time per image, in ms, to the row's
``timing_ms``.

The labelling stages (fade, embed, retrieve) are in :mod:`deployments.offline_label_stages`.

An image's state travels as one :class:`Item` (column ``item``). Its keys, in the order the stages add
them::

    path, image_id, anns                              input (anns: the image's COCO annotations, JSON; path: a
                                                      file, or what the load stage's ``read`` fetches)
    error, width, height, image, prompts,             LoadImages     (prompts: dicts with ann_id, category_id;
      prompt_specs, multimask, examples                              prompt_specs: their PromptSpecs)
    features                                          EncodeImages   (dropped by DecodeMasks)
    instances                                         DecodeMasks    (with label, confidence for concept classes)
    crops, example_crops                              FadeCrops      (image dropped here)
    embeddings, example_embeddings, embedder          EmbedCrops     (crops dropped here; embedder: its identity)
    instances[i].label/confidence/neighbors, added    RetrieveLabels (embeddings dropped unless kept)
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from deployments.runtime.replica import (
    accel_settings,
    fallback_logger,
    load_stage_model,
    warm_up,
)
from deployments.runtime.stage_runtime import build_stage
from models.prompts import Prompt, PromptSpec, decoder_prompts

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


def prompt_specs(prompts: list[dict]) -> tuple[list[PromptSpec], list[bool]]:
    """One image's prompts, validated by the rules ``/v1/segment`` applies (:class:`models.prompts.Prompt`),
    as decoder prompts.

    Args:
        prompts: one dict per object with ``box_xyxy`` ([x0, y0, x1, y1] float, pixels of the original
            image) and/or ``points`` ([[x, y, label], ...], pixels, label 1 foreground / 0 background);
            other keys (``ann_id``, ``category_id``) are ignored.

    Returns:
        (one :class:`models.prompts.PromptSpec` per prompt, in order; per prompt the multimask flag
        ``/v1/segment`` defaults to: a lone point is multimask, a box is not). No prompts give
        ``([], [])``, not ``/v1/segment``'s centre click.

    Raises:
        models.prompts.PromptError: a prompt ``/v1/segment`` would refuse (an empty or inverted box, a
            point label other than 0/1), naming ``prompts[i].<field>``.
    """
    geometry = [{k: p[k] for k in ("box_xyxy", "points") if k in p} for p in prompts]
    return decoder_prompts([Prompt.from_dict(g, f"prompts[{i}]") for i, g in enumerate(geometry)])


class LoadImages:
    """Read and decode image files; build each image's prompts (and ground-truth examples).

    Args:
        prompts: ``coco-boxes`` (one box per non-crowd annotation, XYWH -> XYXY), ``center-points`` (per
            non-crowd annotation the interior point of its mask farthest from the border; for an image
            without annotations one point at the image centre) or ``auto`` (no prompts: automatic masks).
        with_examples: also decode every non-crowd annotation's mask into ``examples`` (``--add-examples``).
        categories: COCO category id -> name, for the examples' labels.
        max_image_pixels: larger images are reported as errors (the service's limit).
        read: ``row -> bytes`` of the row's image (e.g. a fetch of ``row["path"]`` as a URL; it is pickled to
            the stage's workers), or None to read ``row["path"]`` as a file. What it raises makes the row an
            error row, with its ``message`` attribute (or its text) as the reason.

    Each image's prompts are validated by :func:`prompt_specs` into the row's ``prompt_specs`` (one
    :class:`models.prompts.PromptSpec` per prompt) and ``multimask``; a prompt it refuses makes the image
    an error row.

    Raises:
        ValueError: an unknown ``prompts`` mode.
    """

    def __init__(
        self,
        prompts: str,
        with_examples: bool,
        categories: dict[int, str],
        max_image_pixels: int,
        read: Callable[[dict], bytes] | None = None,
    ) -> None:
        if prompts not in PROMPT_MODES:
            raise ValueError(f"prompts must be one of {', '.join(PROMPT_MODES)}; got {prompts!r}")
        self.prompts, self.with_examples = prompts, with_examples
        self.categories = {int(k): v for k, v in categories.items()}
        self.max_image_pixels = max_image_pixels
        self.read = read

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        names = list(batch)
        rows = [
            {k: batch[k][i].item() if isinstance(batch[k][i], np.generic) else batch[k][i] for k in names}
            for i in range(len(batch[names[0]]))
        ]
        for row in rows:
            t0 = time.perf_counter()
            empty = {"image": _IMAGE_PLACEHOLDER, "prompts": [], "prompt_specs": [], "multimask": [], "examples": []}
            row.update(error="", width=0, height=0, **empty)
            try:
                self._load(row)
            except Exception as e:  # any unreadable input or refused prompt is reported, never fatal
                row.update(error=f"{type(e).__name__}: {getattr(e, 'message', None) or e}"[:500], **empty)
            row["timing_ms"] = {"load": (time.perf_counter() - t0) * 1e3}
        return rows_batch(rows)

    def _load(self, row: dict) -> None:
        from deployments.runtime.images import decode_image
        from models.masks import decode_rle, interior_point, segmentation_to_rle

        data = self.read(row) if self.read is not None else Path(row["path"]).read_bytes()
        image = decode_image(data, self.max_image_pixels)
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
                examples.append(
                    {**meta, "label": self.categories.get(meta["category_id"], str(meta["category_id"])), "rle": rle}
                )
        if self.prompts == "center-points" and not all_anns:
            prompts.append({"ann_id": None, "category_id": None, "points": [[w / 2, h / 2, 1]]})
        specs, multimask = prompt_specs(prompts)
        row.update(prompts=prompts, prompt_specs=specs, multimask=multimask, examples=examples)


class EncodeImages(_Stage):
    """The model family's image encoder over a batch of images (``encode_batch``).

    Args:
        model_id, weights, device, torch_threads, accel, runtime: as :class:`deployments.encoder.ImageEncoder`.
    """

    name = "encode"

    def __init__(
        self,
        model_id: str,
        weights: dict,
        device: str = "auto",
        torch_threads: int | None = None,
        accel: dict | None = None,
        runtime: dict | None = None,
    ) -> None:
        accel_settings(accel)  # ValueError now for a bad setting
        loaded, device = load_stage_model(model_id, weights, device, torch_threads)
        self.encoder, self.runtime, settings = build_stage(
            "encoder", loaded, device, torch_threads, accel, runtime, weights, fallback_logger("encode")
        )
        warm_up("encode", self.encoder, settings)
        self.weights = loaded.weights

    def _process(self, rows: list[dict]) -> None:
        features = self.encoder.encode_batch([r["image"] for r in rows])
        assert len(features) == len(rows)
        for r, f in zip(rows, features):
            r["features"] = f


class DecodeMasks(_Stage):
    """Masks for each image's prompts (best ``predicted_iou`` per prompt), its automatic masks, or every
    instance of a class vocabulary (concept prompts, on a family that takes them: SAM 3).

    The prompt path is ``/v1/segment``'s: the rows' ``prompt_specs`` (:class:`models.prompts.PromptSpec`,
    validated in the load stage) with their ``multimask`` flags (a lone point is multimask, a box is not);
    every prompt of every image in the batch runs through one ``predict_batch`` call of the family's decoder. The
    automatic path is ``/v1/predict``'s: :func:`models.amg.generate_masks`, best ``max_instances`` kept.
    The classes path is ``/v1/predict``'s ``classes``: one concept prompt per class name, every image of
    the batch in one ``segment_concepts`` call.

    Args:
        model_id, weights, device, torch_threads, accel, runtime: as :class:`deployments.decoder.MaskDecoder`.
        amg: :class:`models.amg.AmgSettings` fields, or None for prompt modes.
        max_instances: automatic masks kept per image; with ``classes``, instances kept per class.
        classes: class names (concept prompts), or None; not with ``amg``.
        score_thresh: with ``classes``, keep instances scoring at least this (0..1).

    Each instance: ``{"rle", "area_px", "bbox_xyxy", "predicted_iou", "stability_score", "ann_id",
    "category_id"}`` (the last two from the prompting annotation; None for automatic masks and classes);
    a class instance also has ``label`` (its class), ``confidence`` and ``predicted_iou`` (the model's
    score) and ``label_source: "classes"``, as ``/v1/predict``'s.

    Raises:
        ValueError: ``classes`` with ``amg``, or on a family without concept prompts.
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
        runtime: dict | None = None,
        classes: list[str] | None = None,
        score_thresh: float = 0.5,
    ) -> None:
        from models.amg import AmgSettings
        from models.registry import family_of
        from models.segmenter import ConceptPrompt

        if classes and amg is not None:
            raise ValueError("classes and amg: one decode mode per run")
        if classes and not family_of(model_id).capabilities.concept_prompts:
            raise ValueError(f"classes: {model_id} takes no concept prompts (a SAM 3 model does)")

        accel = {**(accel or {}), "tensorrt": False}
        accel_settings(accel)  # ValueError now for a bad setting
        loaded, device = load_stage_model(model_id, weights, device, torch_threads)
        self.decoder, self.runtime, settings = build_stage(
            "decoder", loaded, device, torch_threads, accel, runtime, weights, fallback_logger("decode")
        )
        warm_up("decode", self.decoder, settings)
        self.amg = AmgSettings(**amg) if amg is not None else None
        self.max_instances = max_instances
        self.classes = list(classes or [])
        self.concepts = tuple(ConceptPrompt(c, None, None, score_thresh, max_instances) for c in self.classes)

    def _process(self, rows: list[dict]) -> None:
        if self.concepts:
            self._concepts(rows)
            return
        if self.amg is not None:
            from models.amg import generate_masks

            for r in rows:
                r["instances"] = [
                    {
                        "rle": m.rle,
                        "area_px": m.area_px,
                        "bbox_xyxy": list(m.bbox_xyxy),
                        "predicted_iou": m.predicted_iou,
                        "stability_score": m.stability_score,
                        "ann_id": None,
                        "category_id": None,
                    }
                    for m in generate_masks(self.decoder, r["features"], self.amg)[: self.max_instances]
                ]
            return
        from models.masks import encode_masks
        from models.segmenter import DecodeRequest

        requests, todo = [], []
        for r in rows:
            r["instances"] = []
            if r["prompt_specs"]:
                requests.append(DecodeRequest(r["features"], r["prompt_specs"], r["multimask"]))
                todo.append(r)
        for r, per_prompt in zip(todo, self.decoder.predict_batch(requests) if requests else []):
            for prompt, pred in zip(r["prompts"], per_prompt):
                best = int(np.argmax(pred.predicted_iou))
                enc = encode_masks(pred.masks[best : best + 1], "rle")[0]
                r["instances"].append(
                    {
                        **enc,
                        "predicted_iou": float(pred.predicted_iou[best]),
                        "stability_score": float(pred.stability_score[best]),
                        "ann_id": prompt["ann_id"],
                        "category_id": prompt["category_id"],
                    }
                )

    def _concepts(self, rows: list[dict]) -> None:
        from models.masks import encode_masks
        from models.segmenter import ConceptRequest

        found = self.decoder.segment_concepts([ConceptRequest(r["features"], self.concepts) for r in rows])
        assert len(found) == len(rows)
        for r, per_class in zip(rows, found):
            named = []
            for name, pred in zip(self.classes, per_class):
                for enc, score in zip(encode_masks(pred.masks, "rle"), pred.scores):
                    score = float(score)
                    named.append(
                        {
                            **enc,
                            "predicted_iou": score,
                            "stability_score": score,
                            "ann_id": None,
                            "category_id": None,
                            "label": name,
                            "confidence": score,
                            "label_source": "classes",
                        }
                    )
            r["instances"] = sorted(named, key=lambda i: -i["confidence"])
