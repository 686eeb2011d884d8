"""Offline batch inference with Ray Data: ``samgraph batch``.

A streaming pipeline of ``map_batches`` stages (:mod:`deployments.batch`) over the same ``models/`` code as
the online deployments::

    paths -> load -> encode -> decode [-> fade -> embed -> retrieve]

Each stage has its own ``batch_size``, ``concurrency`` (actors), ``num_cpus``, ``num_gpus``, device and
torch threads (:class:`StageResources`), so the same code runs on a laptop and on a cluster. Ray Data
streams: only the blocks in flight are held, bounded by ``object_store_mb``. Results are written as they
arrive by the driver, into temporary files renamed into place at the end:

* ``results.json``: COCO results (``image_id``, ``segmentation`` RLE, ``bbox`` XYWH, ``score``,
  ``category_id`` where known) that ``pycocotools.coco.COCO.loadRes`` accepts;
* ``instances.parquet``: one row per instance;
* ``summary.json``: counts, failures, throughput and per-stage times.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from serve_app.config import AccelArgs, AmgDefaults, FaderArgs, RetrieverArgs, Sam2Args
from serve_app.schemas import PredictRequest

log = logging.getLogger("samgraph.batch")
_STRICT = ConfigDict(extra="forbid")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff", ".gif")
_PREDICT = PredictRequest.model_fields


class StageResources(BaseModel):
    """Ray Data settings of one stage.

    ``concurrency`` is the number of actors (tasks for ``load``); ``num_cpus``/``num_gpus`` are per actor
    and may be fractional; ``torch_threads`` sets torch's intra-op threads in each actor (Ray sets
    ``OMP_NUM_THREADS`` to 1 for a fractional ``num_cpus``).
    """

    model_config = _STRICT
    batch_size: int = Field(default=1, ge=1)
    concurrency: int = Field(default=1, ge=1)
    num_cpus: float = Field(default=0.1, ge=0)
    num_gpus: float = Field(default=0.0, ge=0)
    device: str = "auto"
    torch_threads: int | None = Field(default=None, ge=1)


class Sam2StageResources(StageResources, AccelArgs):
    """A SAM 2 stage (``decode``): resources plus bf16 / ``torch.compile`` (:class:`serve_app.config.AccelArgs`)."""


class EncodeResources(Sam2StageResources):
    """The ``encode`` stage: as :class:`Sam2StageResources`, plus ``tensorrt`` (as the service's encoder)."""

    tensorrt: bool = False


class ClipModelArgs(BaseModel):
    """The open_clip model (device and threads are the ``embed`` stage's)."""

    model_config = _STRICT
    model_name: str = "ViT-B-32"
    pretrained: str = "laion2b_s34b_b79k"
    weights: Literal["pretrained", "file", "random"] | None = None
    checkpoint: str | None = None


class BatchArgs(Sam2Args):
    """Everything ``samgraph batch`` runs with; ``--set key.sub=value`` overrides any field.

    Model, weights, fade and automatic-mask settings mean what they mean in
    :class:`serve_app.config.AppArgs`, so the masks and labels equal the online service's for the same
    settings. The defaults are ``configs/serve.yaml``'s (automatic masks on its 16x16 grid); ``top_k``,
    ``min_score`` and ``max_instances`` default as in ``/v1/predict``. Stage defaults fit a 2-core machine
    (their CPUs add up to 2.0).
    """

    clip: ClipModelArgs = ClipModelArgs()
    retriever: RetrieverArgs = RetrieverArgs()
    fader: FaderArgs = FaderArgs()
    amg: AmgDefaults = AmgDefaults(points_per_side=16)
    top_k: int = _PREDICT["top_k"].default
    min_score: float = _PREDICT["min_score"].default
    max_instances: int = _PREDICT["max_instances"].default
    max_image_pixels: int = Field(default=50_000_000, ge=1)
    object_store_mb: int = Field(default=2048, ge=64)
    load: StageResources = StageResources(batch_size=4, num_cpus=0.25)
    encode: EncodeResources = EncodeResources(batch_size=1, num_cpus=1.0, torch_threads=2)
    decode: Sam2StageResources = Sam2StageResources(batch_size=4, num_cpus=0.5, torch_threads=2)
    fade: StageResources = StageResources(batch_size=4, num_cpus=0.1)
    embed: StageResources = StageResources(batch_size=4, num_cpus=0.1, torch_threads=2)
    retrieve: StageResources = StageResources(batch_size=8, num_cpus=0.05)


def apply_overrides(base: dict, overrides: list[str]) -> dict:
    """``["encode.batch_size=2", "amg.points_per_side=8"]`` applied to a nested dict (values parsed as YAML).

    Raises:
        ValueError: an override without ``=`` or with an empty key.
    """
    import yaml

    out = json.loads(json.dumps(base))
    for item in overrides:
        key, sep, raw = item.partition("=")
        parts = [p for p in key.strip().split(".") if p]
        if not sep or not parts:
            raise ValueError(f"--set expects key.sub=value; got {item!r}")
        node = out
        for p in parts[:-1]:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ValueError(f"--set {item!r}: {p!r} is not a group of settings")
        node[parts[-1]] = yaml.safe_load(raw)
    return out


# ---------------------------------------------------------------- inputs
@dataclass
class BatchInput:
    """The images of a run, as rows for Ray Data, and the COCO categories where known.

    Attributes:
        items: ``{"path", "image_id", "anns"}`` per image, ``image_id`` COCO's id or the 1-based index in
            sorted file order; ``anns`` the image's COCO annotations as a JSON string (``"[]"`` for a
            folder), so that Arrow does not turn polygons into arrays on the way.
        categories: COCO category id -> name (empty for a folder).
        skipped: ``(path, reason)`` for files left out before the run (not images by suffix).
        coco_path: the annotation file, if any.
    """

    items: list[dict]
    categories: dict[int, str] = field(default_factory=dict)
    skipped: list[tuple[str, str]] = field(default_factory=list)
    coco_path: str | None = None


def list_inputs(source: str | os.PathLike, images_dir: str | os.PathLike | None = None, limit: int | None = None) -> BatchInput:
    """Images of a folder (sorted by name, not recursive) or of a COCO annotation file.

    For a COCO file the images are ``images_dir/file_name``; ``images_dir`` defaults to COCO's layout, a
    folder beside ``annotations/`` named in the file's name (``annotations/instances_val2017.json`` ->
    ``val2017/``), else the file's own folder.

    Raises:
        FileNotFoundError: ``source`` or the images folder does not exist.
        ValueError: a JSON file that is not a COCO annotation file.
    """
    src = Path(source)
    if not src.exists():
        raise FileNotFoundError(f"--input {src} does not exist")
    if src.is_dir():
        files = sorted(p for p in src.iterdir() if p.is_file() and not p.name.startswith("."))
        items, skipped = [], []
        for p in files:
            if p.suffix.lower() in IMAGE_SUFFIXES:
                items.append({"path": str(p), "image_id": len(items) + 1, "anns": "[]"})
            else:
                skipped.append((str(p), f"not an image file (suffix {p.suffix or 'none'}; expected one of {', '.join(IMAGE_SUFFIXES)})"))
        return BatchInput(items[:limit], skipped=skipped)
    data = json.loads(src.read_text())
    if not isinstance(data, dict) or not isinstance(data.get("images"), list) or not isinstance(data.get("annotations"), list):
        raise ValueError(f"{src} is not a COCO annotation file (needs 'images' and 'annotations' lists)")
    folder = Path(images_dir) if images_dir else _default_images_dir(src)
    if not folder.is_dir():
        raise FileNotFoundError(f"images folder {folder} does not exist; give --images DIR")
    by_image: dict[int, list] = {}
    for ann in data["annotations"]:
        by_image.setdefault(int(ann["image_id"]), []).append(ann)
    images = sorted(data["images"], key=lambda im: int(im["id"]))[:limit]
    items = [{"path": str(folder / im["file_name"]), "image_id": int(im["id"]), "anns": json.dumps(by_image.get(int(im["id"]), []))} for im in images]
    categories = {int(c["id"]): str(c["name"]) for c in data.get("categories", [])}
    return BatchInput(items, categories, coco_path=str(src))


def _default_images_dir(ann_file: Path) -> Path:
    """COCO's layout: ``annotations/instances_val2017[_suffix].json`` beside ``val2017/``."""
    for base in (ann_file.parent.parent, ann_file.parent):
        for token in ann_file.stem.split("_")[1:]:
            if token and (base / token).is_dir():
                return base / token
    return ann_file.parent


# ---------------------------------------------------------------- outputs
class AtomicFile:
    """A file written under a temporary name and renamed into place by :meth:`commit`.

    Readers never see a partial file: either the old one or the complete new one.
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self.tmp = self.path.with_name(f".{self.path.name}.tmp-{os.getpid()}")

    def commit(self) -> None:
        os.replace(self.tmp, self.path)

    def discard(self) -> None:
        self.tmp.unlink(missing_ok=True)


class ResultWriter:
    """Streams instances into the COCO results JSON and the Parquet file as images finish.

    Args:
        out_dir: created if missing.
        with_embeddings: add an ``embedding`` list column to the Parquet file.
        categories: COCO category id -> name, to map labels to ``category_id``.
    """

    PARQUET_BATCH = 512

    def __init__(self, out_dir: str | os.PathLike, with_embeddings: bool = False, categories: dict[int, str] | None = None) -> None:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        self.results = AtomicFile(out / "results.json")
        self.parquet = AtomicFile(out / "instances.parquet")
        self.with_embeddings = with_embeddings
        self.category_of = {name: cid for cid, name in (categories or {}).items()}
        self._json = open(self.results.tmp, "w")  # noqa: SIM115 (closed in close())
        self._json.write("[")
        self._first = True
        self._rows: list[dict] = []
        self._writer = None
        self.instances = 0

    def add(self, row: dict) -> None:
        """Write one finished image's instances."""
        embeddings = row.get("embeddings")
        for k, inst in enumerate(row["instances"]):
            rle = inst["rle"]
            x0, y0, x1, y1 = inst["bbox_xyxy"]
            label = inst.get("label")
            category_id = inst["category_id"] if inst.get("category_id") is not None else self.category_of.get(label)
            score = inst["predicted_iou"] * (inst["confidence"] if label is not None else 1.0)
            rec = {"image_id": int(row["image_id"]), "segmentation": rle, "bbox": [x0, y0, x1 - x0, y1 - y0], "score": float(score)}
            if category_id is not None:
                rec["category_id"] = int(category_id)
            self._json.write(("" if self._first else ",\n") + json.dumps(rec))
            self._first = False
            prow = {
                "image_path": str(row["path"]),
                "image_id": int(row["image_id"]),
                "instance": k,
                "ann_id": inst.get("ann_id"),
                "category_id": None if category_id is None else int(category_id),
                "bbox_xyxy": [float(v) for v in inst["bbox_xyxy"]],
                "area_px": int(inst["area_px"]),
                "predicted_iou": float(inst["predicted_iou"]),
                "stability_score": float(inst["stability_score"]),
                "label": label,
                "confidence": None if label is None else float(inst["confidence"]),
                "rle_size": list(rle["size"]),
                "rle_counts": rle["counts"],
            }
            if self.with_embeddings:
                j = sum(1 for i in row["instances"][:k] if i.get("embedded", True))
                prow["embedding"] = embeddings[j].tolist() if inst.get("embedded", True) and embeddings is not None else None
            self._rows.append(prow)
            self.instances += 1
        if len(self._rows) >= self.PARQUET_BATCH:
            self._flush()

    def _flush(self) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        if not self._rows:
            return
        table = pa.Table.from_pylist(self._rows, schema=self._schema())
        if self._writer is None:
            self._writer = pq.ParquetWriter(self.parquet.tmp, table.schema)
        self._writer.write_table(table)
        self._rows = []

    def _schema(self):
        import pyarrow as pa

        fields = [
            ("image_path", pa.string()), ("image_id", pa.int64()), ("instance", pa.int32()), ("ann_id", pa.int64()),
            ("category_id", pa.int64()), ("bbox_xyxy", pa.list_(pa.float64())), ("area_px", pa.int64()),
            ("predicted_iou", pa.float32()), ("stability_score", pa.float32()), ("label", pa.string()),
            ("confidence", pa.float32()), ("rle_size", pa.list_(pa.int32())), ("rle_counts", pa.string()),
        ]
        if self.with_embeddings:
            fields.append(("embedding", pa.list_(pa.float32())))
        return pa.schema(fields)

    def close(self, commit: bool = True) -> None:
        """Finish both files; rename them into place (``commit``) or delete them."""
        import pyarrow.parquet as pq

        self._json.write("]\n")
        self._json.close()
        self._flush()
        if self._writer is None:  # no instances: an empty file with the schema
            pq.write_table(self._schema().empty_table(), self.parquet.tmp)
        else:
            self._writer.close()
        for f in (self.results, self.parquet):
            f.commit() if commit else f.discard()


# ---------------------------------------------------------------- pipeline
@dataclass
class BatchPlan:
    """What one run does (validated by :func:`plan_run`)."""

    prompts: str
    predict: bool
    add_examples: bool
    collection: str
    embeddings: bool


def plan_run(data: BatchInput, prompts: str | None, predict: bool, add_examples: bool, collection: str, embeddings: bool) -> BatchPlan:
    """Check the flags against the input.

    Raises:
        ValueError: ``coco-boxes`` or ``--add-examples`` without a COCO file, or ``--predict`` together
            with ``--add-examples`` (the labels would depend on the order the images finish in).
    """
    from deployments.batch import PROMPT_MODES

    prompts = prompts or ("coco-boxes" if data.coco_path else "center-points")
    if prompts not in PROMPT_MODES:
        raise ValueError(f"--prompts must be one of {', '.join(PROMPT_MODES)}; got {prompts!r}")
    if prompts == "coco-boxes" and not data.coco_path:
        raise ValueError("--prompts coco-boxes needs a COCO annotation file as --input")
    if add_examples and not data.coco_path:
        raise ValueError("--add-examples needs a COCO annotation file as --input (its instances are the examples)")
    if add_examples and predict:
        raise ValueError("--add-examples and --predict in one run would label images by examples of images that happen to finish first; run --add-examples first, then --predict")
    from deployments.runtime.store_checks import check_collection_name

    return BatchPlan(prompts, predict, add_examples, check_collection_name(collection), embeddings)


def build_dataset(data: BatchInput, plan: BatchPlan, args: BatchArgs, weights: dict, clip_weights: dict, store: dict):
    """The Ray Data pipeline of ``plan`` (lazy: nothing runs until it is iterated)."""
    import ray

    from deployments import batch as stages

    def add(ds, stage: str, cls, **kwargs):
        res: StageResources = getattr(args, stage)
        return ds.map_batches(
            cls,
            fn_constructor_kwargs=kwargs,
            batch_size=res.batch_size,
            compute=ray.data.ActorPoolStrategy(size=res.concurrency),
            num_cpus=res.num_cpus,
            num_gpus=res.num_gpus,
            batch_format="numpy",
        )

    ds = ray.data.from_items(data.items, override_num_blocks=max(1, min(len(data.items), 64)))
    ds = add(ds, "load", stages.LoadImages, prompts=plan.prompts, with_examples=plan.add_examples, categories=data.categories, max_image_pixels=args.max_image_pixels)
    ds = add(ds, "encode", stages.EncodeImages, model_id=args.model_id, weights=weights, device=args.encode.device, torch_threads=args.encode.torch_threads, accel=args.encode.accel())
    amg = args.amg.model_dump() if plan.prompts == "auto" else None
    ds = add(ds, "decode", stages.DecodeMasks, model_id=args.model_id, weights=weights, device=args.decode.device, torch_threads=args.decode.torch_threads, accel=args.decode.accel(), amg=amg, max_instances=args.max_instances)
    if plan.predict or plan.add_examples or plan.embeddings:
        crop = {"context_margin": args.fader.context_margin, "output_size": args.fader.output_size}
        ds = add(ds, "fade", stages.FadeCrops, strategy=args.fader.strategy, params=dict(args.fader.params), crop=crop)
        ds = add(ds, "embed", stages.EmbedCrops, model_name=args.clip.model_name, pretrained=args.clip.pretrained, weights=clip_weights, device=args.embed.device, torch_threads=args.embed.torch_threads)
    if plan.predict or plan.add_examples:
        mode = "add" if plan.add_examples else "search"
        ds = add(ds, "retrieve", stages.RetrieveLabels, store=store, collection=plan.collection, mode=mode, top_k=args.top_k, min_score=args.min_score, keep_embeddings=plan.embeddings)
    return ds


@dataclass
class BatchSummary:
    """What a run did; written as ``summary.json``."""

    images: int = 0
    failed: list[dict] = field(default_factory=list)
    instances: int = 0
    examples_added: int = 0
    wall_s: float = 0.0
    stage_ms: dict[str, float] = field(default_factory=dict)
    outputs: dict[str, str] = field(default_factory=dict)

    @property
    def images_per_s(self) -> float:
        return self.images / self.wall_s if self.wall_s > 0 else 0.0

    def as_dict(self) -> dict:
        return {
            "images_ok": self.images,
            "images_failed": len(self.failed),
            "failed": self.failed,
            "instances": self.instances,
            "examples_added": self.examples_added,
            "wall_s": round(self.wall_s, 3),
            "images_per_s": round(self.images_per_s, 4),
            "stage_ms_per_image": {k: round(v, 2) for k, v in self.stage_ms.items()},
            "outputs": self.outputs,
        }


def iter_finished(ds, progress: bool) -> Iterator[dict]:
    """Rows of the finished images as they stream out, with a progress bar of images and stage times."""
    rows = ds.iter_rows()
    if not progress:
        yield from (r["item"].data for r in rows)
        return
    from tqdm import tqdm

    sums: dict[str, float] = {}
    with tqdm(unit="img", desc="images", dynamic_ncols=True) as bar:
        for n, row in enumerate((r["item"].data for r in rows), 1):
            for k, v in (row.get("timing_ms") or {}).items():
                sums[k] = sums.get(k, 0.0) + v
            bar.set_postfix_str(" ".join(f"{k} {v / n:.0f}ms" for k, v in sums.items()), refresh=False)
            bar.update(1)
            yield row


def run_batch(
    data: BatchInput,
    out_dir: str | os.PathLike,
    plan: BatchPlan,
    args: BatchArgs,
    *,
    address: str | None = None,
    progress: bool = True,
) -> BatchSummary:
    """Run the pipeline and write ``results.json``, ``instances.parquet`` and ``summary.json`` into ``out_dir``.

    Starts a local Ray instance (``object_store_mb`` of object store) unless ``address`` or an already
    initialised Ray says where the cluster is.

    Raises:
        WeightsError: SAM 2 or CLIP weights cannot be had (checked before Ray starts).
        StoreError, UnknownCollection: the examples store cannot be opened, or ``--predict`` names a
            collection that does not exist.
    """
    import ray
    from ray.data import DataContext

    from deployments.errors import UnknownCollection
    from deployments.runtime.clip_weights import ClipWeightsSource, preflight_clip
    from deployments.runtime.sam2_weights import preflight
    from deployments.runtime.store_checks import preflight_store
    from deployments.runtime.vectorstore import ExampleStore
    from deployments.runtime.weights import WeightsSource
    from models.embedder import ClipSpec

    source = WeightsSource.resolve(args.weights, args.checkpoint, args.seed)
    preflight(args.model_id, source)
    weights = {"kind": source.kind, "checkpoint": source.checkpoint, "seed": source.seed}
    clip_source = ClipWeightsSource.resolve(args.clip.weights, args.clip.checkpoint, args.seed)
    store: dict = {}
    if plan.predict or plan.add_examples or plan.embeddings:
        preflight_clip(ClipSpec(args.clip.model_name, args.clip.pretrained), clip_source)
    if plan.predict or plan.add_examples:
        store = preflight_store(args.retriever.path, args.retriever.url, args.retriever.api_key)
        if plan.predict:
            with ExampleStore(**store) as s:  # embedded mode: closed again before the retrieve stage opens it
                if plan.collection not in s.collections():
                    raise UnknownCollection(plan.collection)

    started_here = False
    if not ray.is_initialized():
        target = address or os.environ.get("RAY_ADDRESS")
        local = not target or target == "local"  # a new Ray on this machine, sized here
        kwargs = {"object_store_memory": args.object_store_mb * 2**20, "include_dashboard": False} if local else {}
        ray.init(address=address, log_to_driver=False, **kwargs)
        started_here = True
    ctx = DataContext.get_current()
    ctx.execution_options.resource_limits = ctx.execution_options.resource_limits.copy(object_store_memory=args.object_store_mb * 2**20)
    ctx.enable_progress_bars = progress
    summary = BatchSummary(failed=[{"path": p, "error": why} for p, why in data.skipped])
    writer = ResultWriter(out_dir, with_embeddings=plan.embeddings, categories=data.categories)
    t0 = time.perf_counter()
    ok = False
    try:
        if data.items:
            for row in iter_finished(build_dataset(data, plan, args, weights, clip_source.as_dict(), store), progress):
                if row["error"]:
                    summary.failed.append({"path": str(row["path"]), "error": str(row["error"])})
                    log.warning("skipped %s: %s", row["path"], row["error"])
                    continue
                writer.add(row)
                summary.images += 1
                summary.examples_added += len(row.get("added") or [])
                for k, v in row["timing_ms"].items():
                    summary.stage_ms[k] = summary.stage_ms.get(k, 0.0) + v
        ok = True
    finally:
        summary.wall_s = time.perf_counter() - t0
        writer.close(commit=ok)
        if started_here:
            ray.shutdown()
    summary.instances = writer.instances
    summary.stage_ms = {k: v / max(summary.images, 1) for k, v in summary.stage_ms.items()}
    summary.outputs = {"results": str(writer.results.path), "instances": str(writer.parquet.path)}
    out = AtomicFile(Path(out_dir) / "summary.json")
    out.tmp.write_text(json.dumps(summary.as_dict(), indent=2) + "\n")
    out.commit()
    summary.outputs["summary"] = str(out.path)
    return summary


def load_batch_args(overrides: list[str]) -> BatchArgs:
    """:class:`BatchArgs` defaults with ``--set`` overrides applied.

    Raises:
        ValueError: a malformed override or an invalid value (the message names the field).
    """
    try:
        return BatchArgs.model_validate(apply_overrides(BatchArgs().model_dump(), overrides))
    except ValidationError as e:
        errs = "; ".join(f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}" for err in e.errors())
        raise ValueError(f"invalid batch settings: {errs}") from None


def stage_table(summary: BatchSummary) -> str:
    """The per-stage times of a run as a small text table."""
    lines = [f"{'stage':<10}{'ms/image':>10}{'images/s':>10}"]
    for k, v in summary.stage_ms.items():
        lines.append(f"{k:<10}{v:>10.1f}{(1e3 / v if v > 0 else float('inf')):>10.2f}")
    return "\n".join(lines)


__all__ = [
    "BatchArgs",
    "BatchInput",
    "BatchPlan",
    "BatchSummary",
    "ResultWriter",
    "StageResources",
    "list_inputs",
    "load_batch_args",
    "plan_run",
    "run_batch",
]
