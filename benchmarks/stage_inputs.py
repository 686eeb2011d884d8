"""What each stage of benchmarks/stage_scaling.py is fed: the inputs the graph sends it (built once,
in this process), the stage bound as a one-deployment Serve app, and the call the load loop makes."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from benchmarks.common import SHARED_DATA
from benchmarks.stage_setup import Stage, deployment_options

COLLECTION = "bench"
NUM_EXAMPLES = 200
NUM_LABELS = 10
TOP_K = 5  # PredictRequest.top_k default
MAX_INSTANCES = 20  # PredictRequest.max_instances default


@dataclass
class Inputs:
    """Everything the stages and the bare baselines consume, built once in this process."""

    image: np.ndarray  # (H, W, 3) uint8 RGB, truck.jpg
    features: object  # ImageFeatures of image (random-weight encoder)
    decode_jobs: list  # [DecodeJob box, DecodeJob click]
    rles: list[dict]  # K COCO RLE masks on image
    crops: list[np.ndarray]  # K (224, 224, 3) uint8 crops of those masks
    examples: np.ndarray  # (NUM_EXAMPLES, D) float32 unit rows
    labels: list[str]
    queries: np.ndarray  # (K, D) float32 unit rows
    amg: object  # AmgSettings
    refs: dict = field(default_factory=dict)  # ObjectRefs of the big ones, set after ray.init


def synthetic_masks(height: int, width: int, k: int, seed: int = 0) -> list[np.ndarray]:
    """K (H, W) bool ellipses, axes 4-20 % of the shorter side, centres inside the image (seeded)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:height, :width]
    short = min(height, width)
    masks = []
    for _ in range(k):
        ay, ax = rng.uniform(0.04, 0.20, 2) * short
        cy, cx = rng.uniform(0.15, 0.85) * height, rng.uniform(0.15, 0.85) * width
        masks.append(((yy - cy) / ay) ** 2 + ((xx - cx) / ax) ** 2 <= 1.0)
    return masks


def unit_rows(rng: np.random.Generator, n: int, dim: int) -> np.ndarray:
    """(n, dim) float32 rows of unit length, random directions."""
    x = rng.standard_normal((n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def build_inputs(cfg, encoder, clip_dim: int, k: int, amg_as_config: bool) -> Inputs:
    """Inputs of all stages: truck.jpg encoded once by ``encoder`` (a Sam2ImageEncoder), ``k``
    synthetic masks on it and their crops, random unit vectors of ``clip_dim`` for the k-NN.

    Args:
        cfg: the app's AppArgs (threads, fader, AMG settings).
        amg_as_config: keep the config's AMG filters (else pred_iou_thresh 0.5, stability 0).
    """
    import torch
    from PIL import Image

    from deployments.decoder import DecodeJob
    from models.fade_strategies import make_fade_strategy
    from models.fader import CropSettings, fade_and_crop_batch
    from models.masks import encode_rle
    from models.prompts import PromptSpec
    from serve_app.settings import amg_settings

    torch.set_num_threads(cfg.encoder.torch_threads or torch.get_num_threads())
    with Image.open(SHARED_DATA / "images" / "truck.jpg") as im:
        image = np.asarray(im.convert("RGB"))
    h, w = image.shape[:2]
    features = encoder.encode(image)
    box = PromptSpec(box_xyxy=np.array([0.05 * w, 0.2 * h, 0.95 * w, 0.75 * h], np.float32))
    click = PromptSpec(point_coords=np.array([[w / 2, h / 2]], np.float32), point_labels=np.ones(1, np.int32))
    jobs = [DecodeJob((box,), (False,)), DecodeJob((click,), (True,))]  # /v1/segment's defaults for each
    masks = synthetic_masks(h, w, k)
    f = cfg.fader
    crops = fade_and_crop_batch([image] * len(masks), masks, make_fade_strategy(f.strategy, **f.params), CropSettings(f.context_margin, f.output_size))
    rng = np.random.default_rng(0)
    amg = cfg.amg.model_dump()
    if not amg_as_config:
        amg.update(pred_iou_thresh=0.5, stability_score_thresh=0.0)
    return Inputs(
        image=image,
        features=features,
        decode_jobs=jobs,
        rles=[encode_rle(m) for m in masks],
        crops=crops,
        examples=unit_rows(rng, NUM_EXAMPLES, clip_dim),
        labels=[f"label{i % NUM_LABELS}" for i in range(NUM_EXAMPLES)],
        queries=unit_rows(rng, k, clip_dim),
        amg=amg_settings(amg, None),
    )


def bind_stage(stage: Stage, cfg, settings: dict, weights: dict, qdrant_dir: Path):
    """The stage's deployment with ``settings`` applied, bound as ``build_app`` binds it."""
    from deployments.decoder import MaskDecoder
    from deployments.embedder import Embedder
    from deployments.encoder import ImageEncoder
    from deployments.fader import Fader
    from deployments.retriever import Retriever

    threads = settings.get("torch_threads")
    opts = deployment_options(settings)
    if stage.key == "encoder":
        return ImageEncoder.options(**opts).bind(cfg.model_id, weights, cfg.encoder.device, threads or cfg.encoder.torch_threads)
    if stage.key in ("decoder", "amg"):
        return MaskDecoder.options(**opts).bind(cfg.model_id, weights, cfg.decoder.device, threads or cfg.decoder.torch_threads)
    if stage.key == "fader":
        f = cfg.fader
        return Fader.options(**opts).bind(f.strategy, f.params, {"context_margin": f.context_margin, "output_size": f.output_size})
    if stage.key == "embedder":
        c = cfg.clip
        clip_weights = {"kind": "random", "checkpoint": None, "seed": weights["seed"]}
        return Embedder.options(**opts).bind(c.model_name, c.pretrained, clip_weights, c.device, threads or c.torch_threads)
    if stage.key == "retriever":
        if settings["num_replicas"] != 1:
            raise ValueError("Retriever on embedded Qdrant runs one replica (one client per data folder)")
        return Retriever.options(**opts).bind(path=str(qdrant_dir))
    raise ValueError(stage.key)


def caller(stage: Stage, handle, inp: Inputs) -> Callable[[int], object]:
    """``call(i)`` -> the DeploymentResponse of the i-th call of the stage's workload."""
    refs = inp.refs
    if stage.key == "encoder":
        return lambda i: handle.encode.remote(refs["image"])
    if stage.key == "decoder":
        return lambda i: handle.decode.remote(refs["features"], inp.decode_jobs[i % 2])
    if stage.key == "amg":
        return lambda i: handle.generate.remote(refs["features"], inp.amg, MAX_INSTANCES)
    if stage.key == "fader":
        return lambda i: handle.fade_masks.remote(refs["image"], inp.rles, None)
    if stage.key == "embedder":
        return lambda i: handle.embed_crops.remote(refs["faded"])
    if stage.key == "retriever":
        return lambda i: handle.knn.remote(COLLECTION, inp.queries, TOP_K)
    raise ValueError(stage.key)
