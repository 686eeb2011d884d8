"""Per-stage scaling: each Serve stage alone, over replicas x batch size, against the bare model (same run).

For one stage at a time the program deploys that stage alone as its own Serve app on a local Ray
(``--num-cpus``, default 2), with the options of ``configs/serve.yaml`` (num_replicas, max_ongoing_requests,
num_cpus, user_config max_batch_size / batch_wait_timeout_s) and the app's bind arguments (threads,
fader, AMG), overridden by ``--set Deployment.key=value`` and by the sweep point. Each sweep point is a
fresh deployment (new replicas), driven through a DeploymentHandle by a closed loop of concurrent calls
with the inputs the graph sends (arrays go by ObjectRef, as the ingress sends them):

  encoder    ImageEncoder.encode(truck.jpg 1800x1200)                           unit: images
  decoder    MaskDecoder.decode(features, one box or one click, RLE)            unit: decode calls
  amg        MaskDecoder.generate(features, the config's AMG grid)              unit: images (no @serve.batch)
  fader      Fader.fade_masks(truck.jpg, K RLE masks)                           unit: crops (a batch holds jobs of K)
  embedder   Embedder.embed_crops(K 224x224 crops)                              unit: crops
  retriever  Retriever.knn(K queries, top_k 5) over 200 random examples         unit: k-NN jobs (one per /v1/predict)

After one warm-up call per replica, the loop submits calls for ``--seconds`` (x ``--slow-factor`` for
encoder and AMG; at least ``--min-calls``), then lets the calls in flight finish. Throughput is all
calls over the time from the first submission to the last completion (fill and drain included: exact
for a replica working at a steady pace, where a window opened at some completion is biased by the
bursts in which batches complete); latency p50/p95 is per call and includes the wait in the replica's
queue (closed loop: latency ~ in-flight / throughput). In flight: ``--concurrency`` calls, or by default
enough to fill every replica's batch twice (AMG, not batched: one per replica).

Baseline ("bare"), measured in this process before the stage's deployments, same threads, same batch:
the stage's batched model function on the same inputs (Sam2ImageEncoder.encode_batch,
Sam2MaskDecoder.predict_batch + RLE, models.amg.generate_masks, RLE decode + fade_and_crop_batch,
ClipEmbedder.embed_images, run_search_jobs on an embedded Qdrant). Ratio = stage / bare.

Peak memory per replica: VmHWM (peak resident set, MiB) of each replica process, read from
/proc/<pid>/status after the run (the replica processes are found by their process title, which holds
the app's unique name), and VmRSS then (idle after load). Resident sets count the object-store pages a
replica has read (features are read zero-copy), so they are upper bounds on the replica's own memory.

Capacity: each stage's best throughput is turned into requests/s of /v1/segment on a fresh image
(1 encode + 1 decode) and /v1/predict on a fresh image (1 encode + 1 AMG + K fades + K embeds +
1 k-NN job); the stage with the lowest capacity is the bottleneck of that workload. Each stage is
measured alone with the whole machine; in the full graph the stages share the cores.

Weights: SAM 2.1 tiny and CLIP ViT-B-32 with seeded random weights (seed 0): the real compute. Random
weights give low predicted IoU and stability, so the AMG filters are set to pred_iou_thresh 0.5 and
stability 0 (as benchmarks/predict_latency.py does; ``--amg-as-config`` keeps the config's), else no
mask survives and AMG skips its upsampling and RLE work.

The Retriever stays at one replica: embedded Qdrant (a data folder) allows one client per folder; more
replicas need a Qdrant server (SAMGRAPH_QDRANT_URL), which this program does not start.

    python -m benchmarks.stage_scaling [--stages encoder,embedder] [--seconds 8] [--min-calls 6] [--replot]
        [--set Embedder.num_replicas=2] [--batch Embedder=1,8,32] [--replicas Embedder=1,2] [--k 8]

Writes benchmarks/results/stage_scaling.json and benchmarks/results/stage_scaling.png.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import logging
import math
import os
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import yaml

from benchmarks.common import REPO, RESULTS, SHARED_DATA, summarize, write_result

APP_NAME = "samgraph"
COLLECTION = "bench"
NUM_EXAMPLES = 200
NUM_LABELS = 10
TOP_K = 5  # PredictRequest.top_k default
MAX_INSTANCES = 20  # PredictRequest.max_instances default
# keys of --set Deployment.key=value: deployment options, user_config keys, and the stage's torch threads
DEPLOYMENT_KEYS = ("num_replicas", "max_ongoing_requests", "num_cpus")
USER_CONFIG_KEYS = ("max_batch_size", "batch_wait_timeout_s")
ARG_KEYS = ("torch_threads",)


@dataclass
class Stage:
    """One measured stage: its deployment, the unit of its throughput and its default sweep.

    Attributes:
        key: short name (``--stages``).
        deployment: the Serve deployment name in the config (``--set`` prefix).
        unit: what ``items_per_call`` counts.
        batches: default max_batch_size sweep (None: the config's value); empty: not batched.
        replicas: default num_replicas sweep.
        items_per_call: items one call carries (K for fader and embedder).
    """

    key: str
    deployment: str
    unit: str
    batches: list[int | None]
    replicas: list[int]
    items_per_call: int = 1
    threads_of: str | None = None  # AppArgs field whose torch_threads the stage runs with
    min_calls: int | None = None  # None: --min-calls
    warmup: bool = True  # one call per replica before the measured loop


STAGES = {
    s.key: s
    for s in (
        Stage("encoder", "ImageEncoder", "images", [1, 2], [1, 2], threads_of="encoder"),
        Stage("decoder", "MaskDecoder", "decodes", [1, 4, None], [1, 2], threads_of="decoder"),
        # ~45 s per image on 2 cores (16x16 grid): one call at a time, one replica, no separate warm-up
        Stage("amg", "MaskDecoder", "images", [], [1], threads_of="decoder", min_calls=1, warmup=False),
        Stage("fader", "Fader", "crops", [1, 4, None], [1, 2]),
        Stage("embedder", "Embedder", "crops", [1, 8, None], [1, 2], threads_of="clip"),
        Stage("retriever", "Retriever", "jobs", [1, 8, None], [1]),
    )
}
UNITS = {s.key: s.unit for s in STAGES.values()}


# ------------------------------------------------------------------------------------------- config
def parse_value(text: str):
    """``"2"`` -> 2, ``"0.01"`` -> 0.01, else the YAML scalar."""
    return yaml.safe_load(text)


def parse_sets(items: list[str]) -> dict[str, dict]:
    """``["Embedder.num_replicas=2", ...]`` -> ``{"Embedder": {"num_replicas": 2}}``.

    Raises:
        SystemExit: malformed item or unknown key.
    """
    out: dict[str, dict] = {}
    allowed = DEPLOYMENT_KEYS + USER_CONFIG_KEYS + ARG_KEYS
    for item in items:
        name, sep, value = item.partition("=")
        dep, dot, key = name.partition(".")
        if not sep or not dot or key not in allowed:
            sys.exit(f"--set {item!r}: expected Deployment.key=value with key one of {', '.join(allowed)}")
        out.setdefault(dep, {})[key] = parse_value(value)
    return out


def parse_grid(items: list[str], what: str) -> dict[str, list[int]]:
    """``["Embedder=1,8,32"]`` -> ``{"embedder": [1, 8, 32]}`` (stage key or deployment name)."""
    out = {}
    for item in items:
        name, sep, values = item.partition("=")
        key = stage_key(name)
        if not sep or key is None:
            sys.exit(f"--{what} {item!r}: expected Stage=v1,v2 with Stage one of {', '.join(STAGES)}")
        out[key] = [int(v) for v in values.split(",") if v]
    return out


def stage_key(name: str) -> str | None:
    if name in STAGES:
        return name
    return next((s.key for s in STAGES.values() if s.deployment == name and s.key != "amg"), None)


def load_config(path: Path) -> tuple[dict, dict[str, dict]]:
    """(app args, deployment entries by name) of the samgraph app in a Serve config."""
    config = yaml.safe_load(path.read_text())
    app = next(a for a in config["applications"] if a["name"] == APP_NAME)
    return app.get("args") or {}, {d["name"]: d for d in app.get("deployments", [])}


def deployment_settings(entry: dict, overrides: dict) -> dict:
    """Flat settings of one deployment: num_replicas, max_ongoing_requests, num_cpus, user_config keys,
    torch_threads (None: the app args'), from its config entry and then ``overrides``.

    An ``autoscaling_config`` with min_replicas == max_replicas counts as that many replicas.

    Raises:
        ValueError: an autoscaling range (min != max) without a num_replicas override.
    """
    replicas = entry.get("num_replicas")
    auto = entry.get("autoscaling_config")
    if replicas is None and auto is not None:
        if auto.get("min_replicas") != auto.get("max_replicas") and "num_replicas" not in overrides:
            raise ValueError(f"{entry['name']}: autoscaling {auto}; give --set {entry['name']}.num_replicas=N")
        replicas = auto.get("max_replicas")
    user = entry.get("user_config") or {}
    settings = {
        "num_replicas": replicas or 1,
        "max_ongoing_requests": entry.get("max_ongoing_requests"),
        "num_cpus": (entry.get("ray_actor_options") or {}).get("num_cpus"),
        "max_batch_size": user.get("max_batch_size"),
        "batch_wait_timeout_s": user.get("batch_wait_timeout_s"),
        "torch_threads": None,
    }
    settings.update(overrides)
    return settings


def deployment_options(settings: dict) -> dict:
    """``Deployment.options(**...)`` of flat settings."""
    opts: dict = {"num_replicas": int(settings["num_replicas"])}
    if settings["max_ongoing_requests"] is not None:
        opts["max_ongoing_requests"] = int(settings["max_ongoing_requests"])
    if settings["num_cpus"] is not None:
        opts["ray_actor_options"] = {"num_cpus": float(settings["num_cpus"])}
    user = {k: settings[k] for k in USER_CONFIG_KEYS if settings[k] is not None}
    if user:
        opts["user_config"] = user
    return opts


# ------------------------------------------------------------------------------------------- inputs
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
    x = rng.standard_normal((n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


# ------------------------------------------------------------------------------------------- bare
class Bare:
    """The bare models in this process; ``rate(stage, batch)`` is items/s of the stage's batched function."""

    def __init__(self, app_args: dict, k: int, amg_as_config: bool, seconds: float, min_calls: int, tmp: Path) -> None:
        from serve_app.config import AppArgs

        self.cfg = AppArgs.model_validate(app_args)
        self.k, self.amg_as_config, self.seconds, self.min_calls, self.tmp = k, amg_as_config, seconds, min_calls, tmp
        self._sam = self._clip = self._store = None
        self._cache: dict[tuple[str, int], dict] = {}
        self.inputs: Inputs | None = None

    def threads(self, stage: Stage, settings: dict) -> int | None:
        if stage.threads_of is None:
            return None
        if settings.get("torch_threads") is not None:
            return int(settings["torch_threads"])
        return getattr(self.cfg, stage.threads_of).torch_threads

    def sam(self):
        if self._sam is None:
            from models.sam2_decoder import Sam2MaskDecoder
            from models.sam2_image import Sam2ImageEncoder, build_sam2_model

            model = build_sam2_model(self.cfg.model_id, seed=0)
            self._sam = (Sam2ImageEncoder(model), Sam2MaskDecoder(model))
        return self._sam

    def clip(self):
        if self._clip is None:
            from serve_app.clip_weights import ClipWeightsSource, load_clip

            from models.embedder import ClipSpec

            c = self.cfg.clip
            self._clip = load_clip(ClipSpec(c.model_name, c.pretrained), ClipWeightsSource("random", seed=0)).embedder
        return self._clip

    def store(self):
        if self._store is None:
            from serve_app.vectorstore import ExampleStore

            self._store = ExampleStore(path=self.tmp / "qdrant-bare")
            self._store.add(COLLECTION, self.inputs.examples, self.inputs.labels)
        return self._store

    def build_inputs(self) -> Inputs:
        """Inputs of all stages (encodes truck.jpg once with the bare encoder)."""
        import torch
        from PIL import Image

        from deployments.decoder import DecodeJob
        from models.fade_strategies import make_fade_strategy
        from models.fader import CropSettings, fade_and_crop_batch
        from models.masks import encode_rle
        from models.sam2_decoder import PromptSpec
        from serve_app.assemble import amg_settings

        torch.set_num_threads(self.cfg.encoder.torch_threads or torch.get_num_threads())
        with Image.open(SHARED_DATA / "images" / "truck.jpg") as im:
            image = np.asarray(im.convert("RGB"))
        h, w = image.shape[:2]
        features = self.sam()[0].encode(image)
        box = PromptSpec(box_xyxy=np.array([0.05 * w, 0.2 * h, 0.95 * w, 0.75 * h], np.float32))
        click = PromptSpec(point_coords=np.array([[w / 2, h / 2]], np.float32), point_labels=np.ones(1, np.int32))
        jobs = [DecodeJob((box,), (False,)), DecodeJob((click,), (True,))]  # /v1/segment's defaults for each
        masks = synthetic_masks(h, w, self.k)
        f = self.cfg.fader
        crops = fade_and_crop_batch([image] * len(masks), masks, make_fade_strategy(f.strategy, **f.params), CropSettings(f.context_margin, f.output_size))
        dim = self.clip().dim
        rng = np.random.default_rng(0)
        amg = self.cfg.amg.model_dump()
        if not self.amg_as_config:
            amg.update(pred_iou_thresh=0.5, stability_score_thresh=0.0)
        self.inputs = Inputs(
            image=image,
            features=features,
            decode_jobs=jobs,
            rles=[encode_rle(m) for m in masks],
            crops=crops,
            examples=unit_rows(rng, NUM_EXAMPLES, dim),
            labels=[f"label{i % NUM_LABELS}" for i in range(NUM_EXAMPLES)],
            queries=unit_rows(rng, self.k, dim),
            amg=amg_settings(amg, None),
        )
        return self.inputs

    def work(self, stage: Stage, batch: int) -> tuple[Callable[[], int], str]:
        """(one bare call returning the items it did, a description)."""
        inp = self.inputs
        if stage.key == "encoder":
            enc = self.sam()[0]
            images = [inp.image] * batch
            return lambda: len(enc.encode_batch(images)), f"Sam2ImageEncoder.encode_batch({batch} images)"
        if stage.key == "decoder":
            from models.masks import encode_masks
            from models.sam2_decoder import DecodeRequest

            dec = self.sam()[1]
            turn = [0]

            def decode() -> int:
                jobs = [inp.decode_jobs[(turn[0] + i) % 2] for i in range(batch)]
                turn[0] += batch
                preds = dec.predict_batch([DecodeRequest(inp.features, j.prompts, j.multimask_output) for j in jobs])
                for job, per_prompt in zip(jobs, preds):
                    for p in per_prompt:
                        order = np.argsort(-p.predicted_iou)[: job.max_masks]
                        encode_masks(p.masks[order], job.mask_format)
                return batch

            return decode, f"Sam2MaskDecoder.predict_batch({batch} requests) + RLE"
        if stage.key == "amg":
            from models.amg import generate_masks

            dec = self.sam()[1]
            return lambda: (generate_masks(dec, inp.features, inp.amg), 1)[1], "models.amg.generate_masks"
        if stage.key == "fader":
            from models.fade_strategies import make_fade_strategy
            from models.fader import CropSettings, fade_and_crop_batch
            from models.masks import decode_rle

            f = self.cfg.fader
            strategy, crop = make_fade_strategy(f.strategy, **f.params), CropSettings(f.context_margin, f.output_size)

            def fade() -> int:
                n = 0
                for _ in range(batch):
                    masks = [decode_rle(r) for r in inp.rles]
                    n += len(fade_and_crop_batch([inp.image] * len(masks), masks, strategy, crop))
                return n

            return fade, f"decode_rle + fade_and_crop_batch({batch} jobs of {self.k} masks)"
        if stage.key == "embedder":
            emb = self.clip()
            crops = [inp.crops[i % len(inp.crops)] for i in range(batch)]
            return lambda: len(emb.embed_images(crops)), f"ClipEmbedder.embed_images({batch} crops)"
        if stage.key == "retriever":
            from deployments.retriever import SearchJob, run_search_jobs

            store = self.store()
            jobs = [SearchJob(COLLECTION, inp.queries, TOP_K)] * batch
            return lambda: len(run_search_jobs(store, jobs)), f"run_search_jobs({batch} jobs of {self.k} queries), embedded Qdrant"
        raise ValueError(stage.key)

    def rate(self, stage: Stage, batch: int, settings: dict) -> dict:
        """Items/s of the bare batched call: one warm-up call, then calls until ``seconds`` and ``min_calls``."""
        import torch

        threads = self.threads(stage, settings)
        key = (stage.key, batch, threads)
        if key not in self._cache:
            if threads is not None:
                torch.set_num_threads(threads)
            call, what = self.work(stage, batch)
            t = time.perf_counter()
            first = call()  # warm-up, or the only sample of a slow call (its first-call overhead is small then)
            items, durations = 0, []
            slow = time.perf_counter() - t >= max(self.seconds, 10.0)
            if slow:
                items, durations = first, [time.perf_counter() - t]
            t0 = time.perf_counter()
            while not slow and (len(durations) < self.min_calls or time.perf_counter() - t0 < self.seconds):
                t = time.perf_counter()
                items += call()
                durations.append(time.perf_counter() - t)
                if time.perf_counter() - t0 > 4 * self.seconds and len(durations) >= 2:
                    break
            wall = sum(durations)
            self._cache[key] = {"what": what, "threads": threads, "calls": len(durations), "items": items, "items_per_s": items / wall, "call": summarize(durations)}
        return self._cache[key]

    def close(self) -> None:
        if self._store is not None:
            self._store.close()


# ------------------------------------------------------------------------------------------- serve
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


async def closed_loop(call: Callable[[int], object], concurrency: int, seconds: float, min_calls: int, max_seconds: float, drain_s: float = 600) -> dict:
    """Keep ``concurrency`` calls in flight; stop submitting once ``seconds`` have passed and ``min_calls``
    were submitted (or at ``max_seconds``), then wait for the calls in flight (up to ``drain_s``).

    Throughput counts every call, from the first submission to the last completion: pipeline fill and
    drain are included, which makes it exact for a replica that works at a steady pace (sequentially,
    in batches or in parallel threads), where a window that starts at some completion is biased when
    completions come in bursts.

    Returns:
        ``{"calls", "wall_s", "calls_per_s", "latency": summarize(...), "errors", "in_flight_cancelled"}``.
    """
    latencies: list[float] = []
    errors: list[str] = []
    counter = [0]
    t_begin = time.perf_counter()
    last_done = [t_begin]

    def submit_more() -> bool:
        elapsed = time.perf_counter() - t_begin
        return elapsed < max_seconds and (elapsed < seconds or counter[0] < min_calls) and len(errors) <= 20

    async def worker() -> None:
        while submit_more():
            i = counter[0]
            counter[0] += 1
            t = time.perf_counter()
            try:
                await call(i)
            except Exception as e:  # noqa: BLE001 - recorded and reported; the loop goes on
                errors.append(f"{type(e).__name__}: {e}"[:300])
                continue
            last_done[0] = time.perf_counter()
            latencies.append(last_done[0] - t)

    tasks = [asyncio.ensure_future(worker()) for _ in range(concurrency)]
    _, late = await asyncio.wait(tasks, timeout=max_seconds + drain_s)
    for t in late:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    if not latencies:
        raise RuntimeError(f"no call completed; first error: {errors[0] if errors else 'none (timed out)'}")
    wall = last_done[0] - t_begin
    return {
        "calls": len(latencies),
        "wall_s": wall,
        "calls_per_s": len(latencies) / wall,
        "latency": summarize(latencies),
        "errors": errors[:5],
        "in_flight_cancelled": len(late),
    }


def replica_memory(app_name: str, deployment: str) -> list[dict]:
    """``[{"pid", "peak_mib" (VmHWM), "rss_mib" (VmRSS)}]`` of the processes titled as the app's replicas."""
    tag = f"ServeReplica:{app_name}:{deployment}".encode()
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                if tag not in f.read():
                    continue
            status = Path(f"/proc/{entry}/status").read_text()
        except OSError:
            continue
        fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
        kib = {k: int(fields[k].split()[0]) for k in ("VmHWM", "VmRSS") if k in fields}
        out.append({"pid": int(entry), "peak_mib": kib.get("VmHWM", 0) / 1024, "rss_mib": kib.get("VmRSS", 0) / 1024})
    return sorted(out, key=lambda r: r["pid"])


def auto_concurrency(stage: Stage, settings: dict) -> int:
    """Enough calls in flight to fill every replica's batch twice; AMG (not batched): one per replica."""
    replicas = int(settings["num_replicas"])
    if stage.key == "amg":
        return replicas
    batch = settings["max_batch_size"] or 1
    calls_per_batch = math.ceil(batch / (stage.items_per_call if stage.key == "embedder" else 1))
    return 2 * replicas * calls_per_batch


async def measure_setting(stage: Stage, handle, inp: Inputs, settings: dict, args) -> dict:
    call = caller(stage, handle, inp)
    replicas = int(settings["num_replicas"])
    if stage.warmup:  # each replica's first call(s), not measured
        await asyncio.gather(*(call(i) for i in range(replicas)))
    concurrency = args.concurrency or auto_concurrency(stage, settings)
    seconds = args.seconds * (args.slow_factor if stage.key in ("encoder", "amg") else 1)
    min_calls = stage.min_calls if stage.min_calls is not None else args.min_calls
    loop = await closed_loop(call, concurrency, seconds, min_calls, max_seconds=max(4 * seconds, 60))
    return {"concurrency": concurrency, **loop, "items_per_s": loop["calls_per_s"] * stage.items_per_call}


def sweep_points(stage: Stage, base: dict, batches: list[int] | None, replicas: list[int] | None) -> list[dict]:
    """Settings of each sweep point: ``base`` with max_batch_size and num_replicas set (config value where None)."""
    bs = batches if batches is not None else stage.batches
    bs = [b if b is not None else base["max_batch_size"] for b in bs] or [None]
    bs = list(dict.fromkeys(bs))  # a config value equal to a listed one runs once
    rs = replicas if replicas is not None else stage.replicas
    return [{**base, "max_batch_size": b, "num_replicas": r} for r in rs for b in bs]


# ------------------------------------------------------------------------------------------- output
def setting_label(stage: Stage, s: dict) -> str:
    b = "-" if stage.key == "amg" else s["max_batch_size"]
    return f"b{b} r{s['num_replicas']}"


def capacities(rows: list[dict], k: int) -> dict:
    """Requests/s each stage could serve (best setting, and the config's setting) per workload."""
    best, default = {}, {}
    for r in rows:
        if "items_per_s" not in r or not np.isfinite(r["items_per_s"]):
            continue
        best[r["stage"]] = max(best.get(r["stage"], 0.0), r["items_per_s"])
        if r["is_config_default"]:
            default[r["stage"]] = r["items_per_s"]
    per_request = {"segment": {"encoder": 1, "decoder": 1}, "predict": {"encoder": 1, "amg": 1, "fader": k, "embedder": k, "retriever": 1}}
    out = {}
    for workload, needs in per_request.items():
        entry = {"items_per_request": needs, "requests_per_s_best": {}, "requests_per_s_config": {}}
        for stage, n in needs.items():
            if stage in best:
                entry["requests_per_s_best"][stage] = best[stage] / n
            if stage in default:
                entry["requests_per_s_config"][stage] = default[stage] / n
        for which in ("best", "config"):
            caps = entry[f"requests_per_s_{which}"]
            entry[f"bottleneck_{which}"] = min(caps, key=caps.get) if len(caps) == len(needs) else None
        out[workload] = entry
    return out


def print_table(rows: list[dict]) -> None:
    head = f"{'stage':<10}{'setting':<10}{'conc':>5}{'items/s':>10}{'bare/s':>9}{'ratio':>7}{'p50 ms':>9}{'p95 ms':>9}{'n':>5}  peak MiB per replica (idle RSS)"
    print(head)
    print("-" * len(head))
    for r in rows:
        mark = "*" if r["is_config_default"] else " "
        if "error" in r:
            print(f"{r['stage']:<10}{r['setting'] + mark:<10} ERROR {r['error'][:100]}")
            continue
        lat = r["latency"] or {"p50_ms": float("nan"), "p95_ms": float("nan")}
        mem = ", ".join(f"{m['peak_mib']:.0f} ({m['rss_mib']:.0f})" for m in r["replica_memory"])
        print(
            f"{r['stage']:<10}{r['setting'] + mark:<10}{r['concurrency']:>5}{r['items_per_s']:>10.2f}{r['bare']['items_per_s']:>9.2f}"
            f"{r['ratio_vs_bare']:>7.2f}{lat['p50_ms']:>9.0f}{lat['p95_ms']:>9.0f}{r['calls']:>5}  {mem}"
        )
    print("* = the config's setting; items: encoder/amg images, decoder decode calls, fader/embedder crops, retriever k-NN jobs")


def plot(rows: list[dict], units: dict[str, str], path: Path) -> None:
    """One panel per stage: throughput per setting (bars; the config's in orange) and the bare model's."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    stages = list(dict.fromkeys(r["stage"] for r in rows))
    cols = min(3, len(stages))
    nrows = math.ceil(len(stages) / cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(4.2 * cols, 3.3 * nrows), squeeze=False)
    for ax in axes.flat[len(stages) :]:
        ax.axis("off")
    for ax, stage in zip(axes.flat, stages):
        mine = [r for r in rows if r["stage"] == stage and "items_per_s" in r]
        x = np.arange(len(mine))
        colors = ["tab:orange" if r["is_config_default"] else "tab:blue" for r in mine]
        ax.bar(x, [r["items_per_s"] for r in mine], color=colors)
        ax.plot(x, [r["bare"]["items_per_s"] for r in mine], "k_", markersize=20, mew=2)
        ax.set_xticks(x, [r["setting"] for r in mine], fontsize=8)
        ax.set_title(f"{stage} ({mine[0]['deployment'] if mine else ''})", fontsize=10)
        ax.set_ylabel(f"{units[stage]}/s", fontsize=9)
    handles = [
        Patch(color="tab:blue", label="Serve stage"),
        Patch(color="tab:orange", label="Serve stage, config setting"),
        Line2D([], [], color="k", marker="_", linestyle="", markersize=14, mew=2, label="bare model, same batch"),
    ]
    fig.legend(handles=handles, loc="lower center", ncol=3, fontsize=8, frameon=False)
    fig.suptitle("Throughput of each stage alone (b = max_batch_size, r = replicas)", fontsize=10)
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)


def report(payload: dict) -> None:
    """Print the table and the capacities of a result payload."""
    print_table(payload["rows"])
    k = payload["k_masks_per_image"]
    print(f"\nrequests/s each stage alone could serve (K = {k} masks per image; best setting / config setting):")
    for workload, c in payload["capacity"].items():
        parts = [
            f"{s} {c['requests_per_s_best'].get(s, float('nan')):.3g} / {c['requests_per_s_config'].get(s, float('nan')):.3g}"
            for s in c["items_per_request"]
        ]
        print(f"  /v1/{workload}: " + ", ".join(parts) + f"  -> bottleneck: {c['bottleneck_best']} (config: {c['bottleneck_config']})")


# ------------------------------------------------------------------------------------------- main
async def run_stage(stage: Stage, points: list[dict], base: dict, bare: Bare, inp: Inputs, cfg, args, tmp: Path) -> list[dict]:
    from ray import serve

    rows = []
    for idx, settings in enumerate(points):
        label = setting_label(stage, settings)
        is_default = settings["max_batch_size"] == base["max_batch_size"] and settings["num_replicas"] == base["num_replicas"]
        row = {"stage": stage.key, "deployment": stage.deployment, "unit": stage.unit, "setting": label, "settings": settings, "is_config_default": is_default}
        print(f"[{time.strftime('%H:%M:%S')}] {stage.key} {label}: bare ...", flush=True)
        row["bare"] = bare.rate(stage, settings["max_batch_size"] or 1, settings)
        app_name = f"stagescale-{os.getpid()}-{stage.key}-{idx}"
        try:
            t0 = time.perf_counter()
            qdrant_dir = tmp / f"qdrant-{idx}"
            handle = serve.run(bind_stage(stage, cfg, settings, {"kind": "random", "checkpoint": None, "seed": 0}, qdrant_dir), name=app_name, route_prefix=None)
            if stage.key == "retriever":
                await handle.add.remote(COLLECTION, inp.examples, inp.labels)
            row["deploy_s"] = time.perf_counter() - t0
            print(f"[{time.strftime('%H:%M:%S')}] {stage.key} {label}: deployed in {row['deploy_s']:.0f} s, measuring ...", flush=True)
            row.update(await measure_setting(stage, handle, inp, settings, args))
            row["ratio_vs_bare"] = row["items_per_s"] / row["bare"]["items_per_s"]
            row["replica_memory"] = replica_memory(app_name, stage.deployment)
        except Exception as e:  # noqa: BLE001 - one failed point is reported, the sweep goes on
            row["error"] = f"{type(e).__name__}: {e}"[:500]
        finally:
            try:
                serve.delete(app_name)
            except Exception as e:  # noqa: BLE001
                print(f"  could not delete {app_name}: {e}", flush=True)
        rows.append(row)
        print_table([row])
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default=str(REPO / "configs" / "serve.yaml"))
    ap.add_argument("--stages", default=",".join(STAGES), help=f"comma-separated subset of {', '.join(STAGES)}")
    ap.add_argument("--set", action="append", default=[], metavar="Deployment.key=value", help="override a deployment setting for every sweep point")
    ap.add_argument("--batch", action="append", default=[], metavar="Stage=b1,b2", help="max_batch_size sweep of a stage")
    ap.add_argument("--replicas", action="append", default=[], metavar="Stage=r1,r2", help="num_replicas sweep of a stage")
    ap.add_argument("--k", type=int, default=8, help="masks per image in /v1/predict: crops per fader/embedder call")
    ap.add_argument("--seconds", type=float, default=8.0, help="seconds of submitting calls per setting (then the calls in flight finish)")
    ap.add_argument("--slow-factor", type=float, default=2.5, help="--seconds times this for encoder and amg")
    ap.add_argument("--min-calls", type=int, default=6, help="at least this many calls per setting (AMG: 1)")
    ap.add_argument("--bare-seconds", type=float, default=3.0)
    ap.add_argument("--concurrency", type=int, default=0, help="calls in flight (0: fill every replica's batch twice)")
    ap.add_argument("--num-cpus", type=float, default=2, help="CPUs of the local Ray")
    ap.add_argument("--amg-as-config", action="store_true", help="keep the config's AMG filters (with random weights nothing survives them)")
    ap.add_argument("--name", default="stage_scaling")
    ap.add_argument("--replot", action="store_true", help="only print the table and redraw the plot of results/<name>.json")
    args = ap.parse_args()
    if args.replot:
        payload = json.loads((RESULTS / f"{args.name}.json").read_text())
        report(payload)
        plot(payload["rows"], UNITS, RESULTS / f"{args.name}.png")
        return

    keys = [k.strip() for k in args.stages.split(",") if k.strip()]
    keys = [stage_key(k) or k for k in keys]
    unknown = [k for k in keys if k not in STAGES]
    if unknown:
        sys.exit(f"unknown stages {unknown}; known: {', '.join(STAGES)}")
    sets = parse_sets(args.set)
    batches, replicas = parse_grid(args.batch, "batch"), parse_grid(args.replicas, "replicas")
    app_args, entries = load_config(Path(args.config))
    for dep in sets:
        if dep not in entries:
            sys.exit(f"--set {dep}: no such deployment in {args.config}; known: {', '.join(entries)}")

    t_start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="samgraph-stages-") as tmp_name:
        tmp = Path(tmp_name)
        bare = Bare(app_args, args.k, args.amg_as_config, args.bare_seconds, 2, tmp)
        print("building inputs (bare encoder on truck.jpg) ...", flush=True)
        inp = bare.build_inputs()
        STAGES["fader"].items_per_call = STAGES["embedder"].items_per_call = args.k

        import ray
        from ray import serve

        ray.init(address="local", num_cpus=args.num_cpus, include_dashboard=False, log_to_driver=False)
        logging.getLogger("ray.serve").setLevel(logging.ERROR)  # keep the table readable (queue-length probes)
        rows: list[dict] = []
        try:
            serve.start(proxy_location="Disabled")
            inp.refs = {"image": ray.put(inp.image), "features": ray.put(inp.features), "faded": ray.put({"crops": inp.crops, "timing_ms": {}})}
            for key in keys:
                stage = STAGES[key]
                base = deployment_settings(entries[stage.deployment], sets.get(stage.deployment, {}))
                if stage.key == "amg":
                    base = {**base, "max_batch_size": None}  # generate is not batched
                points = sweep_points(stage, base, batches.get(key), replicas.get(key))
                rows += asyncio.run(run_stage(stage, points, base, bare, inp, bare.cfg, args, tmp))
        finally:
            try:
                serve.shutdown()
            finally:
                ray.shutdown()
                bare.close()
    wall = time.perf_counter() - t_start

    caps = capacities(rows, args.k)
    RESULTS.mkdir(parents=True, exist_ok=True)
    png = RESULTS / f"{args.name}.png"
    plot(rows, UNITS, png)
    payload = {
        "config": str(Path(args.config).resolve().relative_to(REPO)) if Path(args.config).resolve().is_relative_to(REPO) else args.config,
        "overrides": args.set,
        "weights": "random (seed 0)",
        "k_masks_per_image": args.k,
        "amg": dataclasses.asdict(inp.amg),
        "seconds": args.seconds,
        "slow_factor": args.slow_factor,
        "min_calls": args.min_calls,
        "num_cpus": args.num_cpus,
        "wall_s": wall,
        "rows": rows,
        "capacity": caps,
    }
    path = write_result(args.name, payload)
    print()
    report(payload)
    print(f"wrote {path} and {png} in {wall / 60:.1f} min")


if __name__ == "__main__":
    main()
