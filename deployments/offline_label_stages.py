"""Ray Data stages of the offline job (``samgraph batch``) that label what :mod:`deployments.offline_stages`
segmented: fade and crop each mask, embed the crops with CLIP, and vote their labels from (or add them to)
the example store.

Same row contract as :mod:`deployments.offline_stages` (see the key table there).
"""

from __future__ import annotations

import numpy as np

from deployments.offline_stages import _Stage
from deployments.runtime.replica import pick_device, set_torch_threads


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
                r[key] = fade_and_crop_batch(
                    [r["image"]] * sum(keep), [m for m, k in zip(masks, keep) if k], self.strategy, self.crop
                )
                for it, k in zip(items, keep):
                    it["embedded"] = bool(k)


class EmbedCrops(_Stage):
    """open_clip image tower over every crop of the batch's images in one call (L2-normalised).

    Args:
        model_name, pretrained, weights, device, torch_threads: as :class:`deployments.embedder.Embedder`.
    """

    name = "embed"
    drop = ("crops", "example_crops")

    def __init__(
        self,
        model_name: str,
        pretrained: str,
        weights: dict,
        device: str = "auto",
        torch_threads: int | None = None,
        family: str = "open_clip",
    ) -> None:
        from deployments.runtime.clip_weights import ClipWeightsSource, load_embedder

        set_torch_threads(torch_threads)
        source = ClipWeightsSource(**weights)
        loaded = load_embedder(family, model_name, pretrained, source, device=pick_device(device))
        self.embedder = loaded.embedder
        self.weights = loaded.weights
        self.identity = loaded.identity

    def _process(self, rows: list[dict]) -> None:
        crops = [c for r in rows for key in ("crops", "example_crops") for c in r[key]]
        vecs = self.embedder.embed_images(crops) if crops else np.zeros((0, self.embedder.dim), np.float32)
        assert len(vecs) == len(crops)
        i = 0
        for r in rows:
            r["embedder"] = self.identity  # what made the vectors: the store records and checks it
            for key, out in (("crops", "embeddings"), ("example_crops", "example_embeddings")):
                n = len(r[key])
                r[out] = np.asarray(vecs[i : i + n], np.float32)
                i += n


class RetrieveLabels(_Stage):
    """Store ground-truth examples, or label instances by their nearest examples (``/v1/predict``'s vote).

    Args:
        store: :class:`deployments.runtime.vectorstore.ExampleStore` keyword arguments (``path`` or ``url``).
        collection: the examples' collection.
        mode: ``add`` (store every example under its label) or ``search``.
        top_k, min_score: as ``/v1/predict``.
        keep_embeddings: keep the instances' embeddings in the rows (``--embeddings``).

    Raises:
        ValueError: an unknown ``mode``.
        StoreError, UnknownCollection: as :class:`deployments.runtime.vectorstore.ExampleStore`.
    """

    name = "retrieve"

    def __init__(
        self,
        store: dict,
        collection: str,
        mode: str,
        top_k: int = 5,
        min_score: float = 0.0,
        keep_embeddings: bool = False,
    ) -> None:
        from deployments.runtime.vectorstore import ExampleStore

        if mode not in ("add", "search"):
            raise ValueError(f"mode must be add or search; got {mode!r}")
        self.store = ExampleStore(**store)
        self.collection, self.mode, self.top_k, self.min_score = collection, mode, top_k, min_score
        self.drop = ("example_embeddings", "embedder") + (() if keep_embeddings else ("embeddings",))

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
                payloads.append(
                    {
                        "bbox_xyxy": rle_bbox_xyxy(ex["rle"]),
                        "area_px": rle_area(ex["rle"]),
                        "source": str(r["path"]),
                        "coco_ann_id": ex["ann_id"],
                    }
                )
                owners.append(r)
            r["added"] = []
        if vecs:
            ids = self.store.add(self.collection, np.stack(vecs), labels, payloads, embedder=_embedder_of(rows))
            for r, example_id in zip(owners, ids):
                r["added"].append(example_id)

    def _search(self, rows: list[dict]) -> None:
        from models.knn import vote

        queries = [r["embeddings"] for r in rows if len(r["embeddings"])]
        found = iter(
            self.store.search(self.collection, np.concatenate(queries), self.top_k, embedder=_embedder_of(rows))
            if queries
            else []
        )
        for r in rows:
            for inst in r["instances"]:
                nbrs = next(found) if inst["embedded"] else []
                label, confidence = vote(nbrs, self.min_score)
                inst.update(
                    label=label,
                    confidence=confidence,
                    neighbors=[{"id": n.id, "label": n.label, "score": n.score} for n in nbrs],
                )


def _embedder_of(rows: list[dict]) -> str | None:
    """The identity of the embedder that made the rows' vectors (``EmbedCrops`` sets it), or None."""
    return next((r["embedder"] for r in rows if r.get("embedder")), None)
