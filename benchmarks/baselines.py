"""The in-process baselines the benchmarks measure samgraph against, each in the same run.

All run the seeded random weights (seed 0: the real compute, meaningless masks) in this process,
with no serving:
  bare encoder + decoder  - samgraph's batched encoder and decoder of any registry model, built through
                            its family (models.registry.family_of), in a tight loop:
                            :class:`BareSegmenter`, :func:`bare_encode_decode`,
                            :func:`bare_fresh_and_interactive`, :func:`bare_center_click`;
  one-process predict     - SAM2AutomaticMaskGenerator + fade/crop + open_clip + numpy brute-force
                            k-NN, one photo at a time: :class:`OneProcessPredict`;
  naive predictor         - Meta's SAM2ImagePredictor (``set_image`` + ``predict`` per request), which
                            benchmarks/naive_server.py serves: :func:`naive_predictor`;
  sam2 video predictor    - Meta's SAM2VideoPredictor over a folder of frames: :func:`sam2_video_masks`;
  each stage's batched model function - :class:`StageBaselines` (benchmarks/stage_scaling.py).

Models are built inside the functions (nothing loads at import).
"""

from __future__ import annotations

import io
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from benchmarks.common import summarize

MODEL_ID = "sam2.1_hiera_tiny"
CLIP_ID = "ViT-B-32"


def rgb_of(jpeg: bytes) -> np.ndarray:
    """(H, W, 3) uint8 RGB of an encoded image's bytes."""
    from PIL import Image

    with Image.open(io.BytesIO(jpeg)) as im:
        return np.asarray(im.convert("RGB"))


def load_rgb(path: Path) -> np.ndarray:
    """(H, W, 3) uint8 RGB of an image file."""
    return rgb_of(Path(path).read_bytes())


def timed(fn: Callable[[], object], n: int) -> list[float]:
    """Seconds of each of ``n`` calls of ``fn``, one after the other."""
    out = []
    for _ in range(n):
        t = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t)
    return out


def rate_of(call: Callable[[], int], seconds: float, min_calls: int) -> dict:
    """Items/s of a call that returns how many items it did: one warm-up call, then calls until
    ``seconds`` have passed and ``min_calls`` were made (at most 4x ``seconds`` once 2 are in). A first
    call that takes ``max(seconds, 10)`` s or more is the only sample (its first-call overhead is small).

    Returns:
        ``{"calls", "items", "items_per_s", "call": summarize(seconds per call)}``.
    """
    t = time.perf_counter()
    first = call()
    if time.perf_counter() - t >= max(seconds, 10.0):
        items, durations = first, [time.perf_counter() - t]
    else:
        items, durations = 0, []
        t0 = time.perf_counter()
        while len(durations) < min_calls or time.perf_counter() - t0 < seconds:
            t = time.perf_counter()
            items += call()
            durations.append(time.perf_counter() - t)
            if time.perf_counter() - t0 > 4 * seconds and len(durations) >= 2:
                break
    return {"calls": len(durations), "items": items, "items_per_s": items / sum(durations), "call": summarize(durations)}


def build_sam(model_id: str = MODEL_ID, seed: int = 0, runtime: dict | None = None, threads: int | None = None):
    """(ImageEncoder, MaskDecoder) of any registry model (:data:`models.registry.MODELS`) with seeded random
    weights on the CPU, built through its family, as the service's stages build it with
    ``SAMGRAPH_WEIGHTS=random`` (:func:`deployments.runtime.stage_runtime.build_stage`).

    Args:
        model_id: registry name.
        seed: seed of the random weights.
        runtime: both stages' ``{"runtime", "precision"}`` (None: torch fp32 eager, the naive baseline);
            an ONNX runtime exports the model into the cache dir on first use.
        threads: the runtime's intra-op threads (None: its default).

    Raises:
        ValueError: unknown ``model_id`` (the message lists the valid ones).
    """
    from deployments.runtime.model_weights import load_model
    from deployments.runtime.stage_runtime import build_stage
    from deployments.runtime.weights import WeightsSource

    weights = {"kind": "random", "seed": seed}
    loaded = load_model(model_id, WeightsSource(**weights), device="cpu", progress=False)
    stages = [
        build_stage(stage, loaded, "cpu", threads, None, runtime, weights, free_unused=False)[0]
        for stage in ("encoder", "decoder")
    ]
    return stages[0], stages[1]


def points_prompt(points: Sequence[Sequence[float]]):
    """(PromptSpec, multimask_output) of ``[[x, y, label], ...]`` (pixels; label 1 fg, 0 bg), with
    /v1/segment's default: three candidates for a lone click."""
    from models.prompts import PromptSpec

    a = np.asarray(points, np.float32)
    return PromptSpec(point_coords=a[:, :2], point_labels=a[:, 2].astype(np.int32)), len(a) == 1


def segment_rle(decoder, features, prompt, multimask: bool, best_only: bool = False) -> list[dict]:
    """One decoder call and the COCO RLE of its masks (of the best-scoring one with ``best_only``)."""
    from models.masks import encode_masks

    pred = decoder.predict(features, prompt, multimask)
    masks = pred.masks[[int(np.argmax(pred.predicted_iou))]] if best_only else pred.masks
    return encode_masks(masks, "rle")


def bare_fresh_and_interactive(photos: list, n_images: int, n_sessions: int, threads: int, n_clicks: int) -> dict:
    """samgraph's encoder + decoder in a tight loop, as benchmarks/serving.py's workloads.

    Args:
        photos: :class:`benchmarks.loadgen.Photo` list, used in turn.
        n_images: ``fresh`` images: JPEG decode, encode, one box, RLE each (timed per image).
        n_sessions: ``interactive`` sessions: one encode and ``n_clicks + 1`` clicks each.

    Returns:
        ``{"fresh": summarize + throughput_rps, "interactive": {requests, throughput_rps},
        "click_decoder": summarize, "click_decoder_plus_rle": summarize}``.
    """
    import torch

    from benchmarks.loadgen import click_points, unique_jpeg
    from models.masks import encode_masks
    from models.prompts import PromptSpec

    torch.set_num_threads(threads)
    encoder, decoder = build_sam()
    encoder.encode(rgb_of(photos[0].jpeg))  # warm-up

    fresh, t_start = [], time.perf_counter()
    for i in range(n_images):
        p = photos[i % len(photos)]
        t = time.perf_counter()
        feats = encoder.encode_batch([rgb_of(unique_jpeg(p.jpeg, i))])[0]
        segment_rle(decoder, feats, PromptSpec(box_xyxy=np.asarray(p.box_xyxy, np.float32)), False)
        fresh.append(time.perf_counter() - t)
    fresh_wall = time.perf_counter() - t_start

    clicks_decoder, clicks_total, n_requests, t_start = [], [], 0, time.perf_counter()
    for s in range(n_sessions):
        p = photos[s % len(photos)]
        first, *rest = click_points(p, n_clicks + 1, seed=s)
        feats = encoder.encode_batch([rgb_of(unique_jpeg(p.jpeg, 1000 + s))])[0]
        segment_rle(decoder, feats, *points_prompt(first))
        n_requests += 1
        for points in rest:
            prompt, multimask = points_prompt(points)
            t = time.perf_counter()
            pred = decoder.predict(feats, prompt, multimask)
            t1 = time.perf_counter()
            encode_masks(pred.masks, "rle")
            clicks_decoder.append(t1 - t)
            clicks_total.append(time.perf_counter() - t)
            n_requests += 1
    inter_wall = time.perf_counter() - t_start
    return {
        "fresh": {**summarize(fresh), "throughput_rps": n_images / fresh_wall},
        "interactive": {"requests": n_requests, "throughput_rps": n_requests / inter_wall},
        "click_decoder": summarize(clicks_decoder),
        "click_decoder_plus_rle": summarize(clicks_total),
    }


class BareSegmenter:
    """One registry model's encoder and decoder in this process, timed per call the way the service
    answers /v1/segment (masks as COCO RLE), with no serving: the baseline of
    benchmarks/segment_latency.py and benchmarks/family_latency.py.

    Args:
        model_id: any registry model (seeded random weights, see :func:`build_sam`).
        enc_threads, dec_threads: torch threads while encoding and while decoding.
    """

    def __init__(self, model_id: str, enc_threads: int, dec_threads: int, seed: int = 0) -> None:
        from models.registry import family_of

        self.model_id, self.enc_threads, self.dec_threads = model_id, enc_threads, dec_threads
        family = family_of(model_id)
        self.family_name, self.concepts = family.name, family.capabilities.concept_prompts
        self.encoder, self.decoder = build_sam(model_id, seed)

    def encode(self, rgb: np.ndarray):
        """(seconds, features) of one encode of ``rgb`` ((H, W, 3) uint8 RGB)."""
        import torch

        torch.set_num_threads(self.enc_threads)
        t = time.perf_counter()
        features = self.encoder.encode_batch([rgb])[0]
        return time.perf_counter() - t, features

    def decode(self, features, prompt, multimask: bool) -> tuple[float, float, list[dict]]:
        """(decoder seconds, decoder + RLE seconds, the masks' RLE) of one prompt (a ``PromptSpec``)."""
        import torch

        from models.masks import encode_masks
        from models.segmenter import DecodeRequest

        torch.set_num_threads(self.dec_threads)
        t = time.perf_counter()
        pred = self.decoder.predict_batch([DecodeRequest(features, [prompt], multimask)])[0][0]
        t1 = time.perf_counter()
        rle = encode_masks(pred.masks, "rle")
        return t1 - t, time.perf_counter() - t, rle

    def concept(self, features, text: str, score_thresh: float, max_instances: int) -> tuple[float, float, list[dict]]:
        """(decoder seconds, decoder + RLE seconds, the instances' RLE) of one text concept prompt.

        Raises:
            ValueError: the model's family takes no concept prompts.
        """
        import torch

        from models.masks import encode_masks
        from models.segmenter import ConceptPrompt, ConceptRequest

        if not self.concepts:
            raise ValueError(f"{self.model_id} takes no concept prompts")
        torch.set_num_threads(self.dec_threads)
        prompt = ConceptPrompt(text=text, score_thresh=score_thresh, max_instances=max_instances)
        t = time.perf_counter()
        found = self.decoder.segment_concepts([ConceptRequest(features, [prompt])])[0][0]
        t1 = time.perf_counter()
        rle = encode_masks(found.masks, "rle")
        return t1 - t, time.perf_counter() - t, rle

    def cold(self, image_bytes: bytes, prompt, multimask: bool) -> dict:
        """What /v1/segment does for a new image, in this process: decode the file's bytes, encode, one
        prompt, RLE. Returns ``{"total_s", "image_decode_s", "encode_s", "decode_s", "features", "masks"}``."""
        t = time.perf_counter()
        rgb = rgb_of(image_bytes)
        t_img = time.perf_counter() - t
        enc_s, features = self.encode(rgb)
        dec_s, _, rle = self.decode(features, prompt, multimask)
        total = time.perf_counter() - t
        return {"total_s": total, "image_decode_s": t_img, "encode_s": enc_s, "decode_s": dec_s, "features": features, "masks": rle}


def bare_encode_decode(rgb: np.ndarray, model_id: str, n_encodes: int, n_decodes: int, enc_threads: int, dec_threads: int, box_xyxy, click_xy) -> dict:
    """Encoder and decoder latency alone (any registry model, through :class:`BareSegmenter`): ``n_encodes``
    encodes of ``rgb`` ((H, W, 3) uint8), then ``n_decodes`` times a box (one mask) and a click (three),
    after one warm-up each.

    Args:
        box_xyxy: (4,) pixels of ``rgb``; click_xy: (2,) pixels, a foreground click.

    Returns:
        ``{"encode", "decode_box", "decode_click"}``, each :func:`benchmarks.common.summarize`.
    """
    from models.prompts import PromptSpec

    bare = BareSegmenter(model_id, enc_threads, dec_threads)
    box = PromptSpec(box_xyxy=np.array(box_xyxy, np.float32))
    click = PromptSpec(point_coords=np.array([click_xy], np.float32), point_labels=np.ones(1, np.int32))
    _, feats = bare.encode(rgb)  # warm-up
    enc = [bare.encode(rgb)[0] for _ in range(n_encodes)]
    for _ in range(3):
        bare.decode(feats, click, True)
    dec_box, dec_click = [], []
    for _ in range(n_decodes):
        dec_box.append(bare.decode(feats, box, False)[0])
        dec_click.append(bare.decode(feats, click, True)[0])
    return {"encode": summarize(enc), "decode_box": summarize(dec_box), "decode_click": summarize(dec_click)}


def bare_center_click(images: list[np.ndarray], threads: int, model_id: str = MODEL_ID) -> dict:
    """What `samgraph batch --prompts center-points` does per image, in a loop: encode, one centre
    click, the RLE of the best mask. ``images``: each (H, W, 3) uint8 RGB.

    Returns:
        ``{"images", "wall_s", "images_per_s"}``.
    """
    import torch

    from models.prompts import PromptSpec

    torch.set_num_threads(threads)
    encoder, decoder = build_sam(model_id)
    encoder.encode_batch(images[:1])  # warm-up
    t0 = time.perf_counter()
    for img in images:
        h, w = img.shape[:2]
        feats = encoder.encode_batch([img])[0]
        click = PromptSpec(point_coords=np.array([[w / 2, h / 2]], np.float32), point_labels=np.ones(1, np.int32))
        segment_rle(decoder, feats, click, True, best_only=True)
    wall = time.perf_counter() - t0
    return {"images": len(images), "wall_s": wall, "images_per_s": len(images) / wall}


class OneProcessPredict:
    """What a script without serving does for /v1/predict: SAM2AutomaticMaskGenerator, the first
    ``max_instances`` masks faded and cropped, open_clip embeddings, numpy brute-force k-NN.

    Args:
        amg: SAM2AutomaticMaskGenerator settings (points_per_side, pred_iou_thresh, ...).
        max_instances: masks per image kept for the fade, embed and k-NN.
        threads: torch threads.
        top_k: neighbours per mask.
    """

    def __init__(self, amg: dict, max_instances: int, threads: int, top_k: int = 5) -> None:
        import torch
        from sam2.automatic_mask_generator import SAM2AutomaticMaskGenerator

        from models.embedder import build_clip
        from models.fade_strategies import GaussianFade
        from models.fader import CropSettings
        from models.sam2_image import build_sam2_model

        torch.set_num_threads(threads)
        self.sam = build_sam2_model(MODEL_ID, seed=0)
        self.clip = build_clip(CLIP_ID, seed=0)
        self.generator = SAM2AutomaticMaskGenerator(self.sam, output_mode="coco_rle", **amg)
        self.fade, self.crop = GaussianFade(sigma_px=50.0, min_fade=0.1), CropSettings(context_margin=0.2, output_size=224)
        self.max_instances, self.top_k = max_instances, top_k
        self.examples: np.ndarray | None = None

    def store(self, crops: list[np.ndarray], normalize: bool = True) -> None:
        """The stored examples: the CLIP embeddings of ``crops`` (each (h, w, 3) uint8 RGB)."""
        from models.knn import normalize_rows

        vecs = self.clip.embed_images(crops)
        self.examples = normalize_rows(vecs) if normalize else vecs

    def __call__(self, rgb: np.ndarray) -> int:
        """One photo ((H, W, 3) uint8 RGB) end to end; returns the instances it classified."""
        from models.fader import fade_and_crop_batch
        from models.knn import brute_force_knn
        from models.masks import decode_rle

        masks = [decode_rle(m["segmentation"]) for m in self.generator.generate(rgb)[: self.max_instances]]
        if masks:
            vecs = self.clip.embed_images(fade_and_crop_batch([rgb] * len(masks), masks, self.fade, self.crop))
            brute_force_knn(vecs, self.examples, self.top_k)
        return len(masks)


def naive_predictor(model_id: str, seed: int, checkpoint: str | None, threads: int):
    """Meta's SAM2ImagePredictor over ``model_id`` with seeded random weights, or a Meta checkpoint
    file (``{"model": state_dict}``, loaded with ``weights_only=True``)."""
    import torch
    from sam2.sam2_image_predictor import SAM2ImagePredictor

    from models.sam2_image import build_sam2_model

    torch.set_num_threads(threads)
    state = torch.load(checkpoint, map_location="cpu", weights_only=True)["model"] if checkpoint else None
    return SAM2ImagePredictor(build_sam2_model(model_id, state, seed=None if state is not None else seed))


@contextmanager
def sam2_video_masks(paths: list[Path], state_dict: dict, box_xyxy, point_xy) -> Iterator[tuple[float, Iterator[np.ndarray]]]:
    """Meta's SAM2VideoPredictor over the JPEG frames ``paths`` (CPU, video and state offloaded),
    object 1 a box and object 2 a foreground click on frame 0.

    Yields:
        (init_ms: init_state and the prompts, an iterator of each further frame's (objects, H, W) bool
        masks; each ``next`` is that frame's propagation).
    """
    import torch
    from sam2.build_sam import build_sam2_video_predictor

    from models.registry import get_model_spec

    with tempfile.TemporaryDirectory() as tmp:
        for p in paths:
            (Path(tmp) / p.name).symlink_to(p)
        ckpt = Path(tmp) / "ckpt.pt"
        torch.save({"model": state_dict}, ckpt)
        predictor = build_sam2_video_predictor(get_model_spec(MODEL_ID, "sam2").config, ckpt_path=str(ckpt), device="cpu")
        t0 = time.perf_counter()
        state = predictor.init_state(video_path=tmp, offload_video_to_cpu=True, offload_state_to_cpu=True)
        predictor.add_new_points_or_box(state, frame_idx=0, obj_id=1, box=np.array(box_xyxy, np.float32))
        predictor.add_new_points_or_box(state, frame_idx=0, obj_id=2, points=np.array([point_xy], np.float32), labels=np.array([1], np.int32))
        init_ms = (time.perf_counter() - t0) * 1e3
        yield init_ms, ((logits[:, 0] > 0).numpy() for _, _, logits in predictor.propagate_in_video(state))


class StageBaselines:
    """Each stage's batched model function in this process (benchmarks/stage_scaling.py's "bare").

    ``rate(stage, batch, settings)`` is the items/s of the function the stage's replica runs, on the
    same inputs, the same batch and the same torch threads; results are cached per (stage, batch, threads).

    Args:
        app_args: the samgraph app's bind arguments (``AppArgs``: model ids, threads, fader, AMG).
        k: masks per image (crops per fader / embedder job, queries per k-NN job).
        seconds, min_calls: as :func:`rate_of`.
        tmp: a folder for the embedded Qdrant store of the retriever's baseline.
    """

    def __init__(self, app_args: dict, k: int, seconds: float, min_calls: int, tmp: Path) -> None:
        from serve_app.config import AppArgs

        self.cfg = AppArgs.model_validate(app_args)
        self.k, self.seconds, self.min_calls, self.tmp = k, seconds, min_calls, tmp
        self._sam = self._clip = self._store = None
        self._cache: dict[tuple, dict] = {}
        self.inputs = None  # benchmarks.stage_inputs.Inputs, set by the caller before rate()

    def threads(self, stage, settings: dict) -> int | None:
        """Torch threads of ``stage`` (a stage_setup.Stage) under ``settings`` (None: no torch)."""
        if stage.threads_of is None:
            return None
        if settings.get("torch_threads") is not None:
            return int(settings["torch_threads"])
        return getattr(self.cfg, stage.threads_of).torch_threads

    def sam(self):
        """(Sam2ImageEncoder, Sam2MaskDecoder), built on first use."""
        if self._sam is None:
            self._sam = build_sam(self.cfg.model_id)
        return self._sam

    def clip(self):
        """The ClipEmbedder of the app's CLIP model with seeded random weights, built on first use."""
        if self._clip is None:
            from deployments.runtime.clip_weights import ClipWeightsSource, load_clip
            from models.embedder import ClipSpec

            c = self.cfg.clip
            self._clip = load_clip(ClipSpec(c.model_name, c.pretrained), ClipWeightsSource("random", seed=0)).embedder
        return self._clip

    def store(self):
        """An embedded Qdrant store holding the inputs' examples, made on first use."""
        if self._store is None:
            from benchmarks.stage_inputs import COLLECTION
            from deployments.runtime.vectorstore import ExampleStore

            self._store = ExampleStore(path=self.tmp / "qdrant-bare")
            self._store.add(COLLECTION, self.inputs.examples, self.inputs.labels)
        return self._store

    def work(self, key: str, batch: int) -> tuple[Callable[[], int], str]:
        """(one bare call of stage ``key`` on ``batch`` items or jobs, returning the items it did; a description)."""
        from benchmarks.stage_inputs import COLLECTION, TOP_K

        inp = self.inputs
        if key == "encoder":
            enc = self.sam()[0]
            images = [inp.image] * batch
            return lambda: len(enc.encode_batch(images)), f"Sam2ImageEncoder.encode_batch({batch} images)"
        if key == "decoder":
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
        if key == "amg":
            from models.amg import generate_masks

            dec = self.sam()[1]
            return lambda: (generate_masks(dec, inp.features, inp.amg), 1)[1], "models.amg.generate_masks"
        if key == "fader":
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
        if key == "embedder":
            emb = self.clip()
            crops = [inp.crops[i % len(inp.crops)] for i in range(batch)]
            return lambda: len(emb.embed_images(crops)), f"ClipEmbedder.embed_images({batch} crops)"
        if key == "retriever":
            from deployments.retriever import SearchJob, run_search_jobs

            store = self.store()
            jobs = [SearchJob(COLLECTION, inp.queries, TOP_K)] * batch
            return lambda: len(run_search_jobs(store, jobs)), f"run_search_jobs({batch} jobs of {self.k} queries), embedded Qdrant"
        raise ValueError(f"unknown stage {key!r}")

    def rate(self, stage, batch: int, settings: dict) -> dict:
        """``{"what", "threads", "calls", "items", "items_per_s", "call"}`` of the stage's bare batched call."""
        import torch

        threads = self.threads(stage, settings)
        key = (stage.key, batch, threads)
        if key not in self._cache:
            if threads is not None:
                torch.set_num_threads(threads)
            call, what = self.work(stage.key, batch)
            self._cache[key] = {"what": what, "threads": threads, **rate_of(call, self.seconds, self.min_calls)}
        return self._cache[key]

    def close(self) -> None:
        """Close the embedded Qdrant store, if one was made."""
        if self._store is not None:
            self._store.close()
