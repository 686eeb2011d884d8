"""The Ray Data pipeline of ``samgraph batch``: its settings, its assembly and its run.

A streaming pipeline of ``map_batches`` stages (:mod:`deployments.offline_stages`) over the same ``models/`` code as
the online deployments::

    paths -> load -> encode -> decode [-> fade -> embed -> retrieve]

Each stage has its own ``batch_size``, ``concurrency`` (actors), ``num_cpus``, ``num_gpus``, device and
torch threads (:class:`StageResources`), so the same code runs on a laptop and on a cluster. Ray Data
streams: only the blocks in flight are held, bounded by ``object_store_mb``. The driver writes results as
they arrive (:mod:`serve_app.offline.writer`). The inputs and the checked flags come from
:mod:`serve_app.offline.inputs`; the load stage validates each image's prompts.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
from collections.abc import Callable, Iterator
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from models.knn import LabelSettings
from serve_app.config import AmgDefaults, FaderArgs, ModelWeightsArgs, RetrieverArgs, RuntimeArgs
from serve_app.offline.inputs import BatchInput, BatchPlan
from serve_app.offline.writer import BatchSummary, ResultWriter, write_summary
from serve_app.settings import derive

log = logging.getLogger("samgraph.batch")
_STRICT = ConfigDict(extra="forbid")


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


class ModelStageResources(StageResources, RuntimeArgs):
    """A model stage of any family (``decode``): resources plus its runtime, precision and torch speed-ups
    (:class:`serve_app.config.RuntimeArgs`, as the service's stages)."""


class EncodeResources(ModelStageResources):
    """The ``encode`` stage: as :class:`ModelStageResources`, plus ``tensorrt`` (as the service's encoder)."""

    tensorrt: bool = False


class ClipModelArgs(BaseModel):
    """The open_clip model (device and threads are the ``embed`` stage's)."""

    model_config = _STRICT
    model_name: str = "ViT-B-32"
    pretrained: str = "laion2b_s34b_b79k"
    weights: Literal["pretrained", "file", "random"] | None = None
    checkpoint: str | None = None


@derive(LabelSettings)
class BatchArgs(ModelWeightsArgs):
    """Everything ``samgraph batch`` runs with; ``--set key.sub=value`` overrides any field.

    Model, weights, fade and automatic-mask settings mean what they mean in
    :class:`serve_app.config.AppArgs`, so the masks and labels equal the online service's for the same
    settings. The defaults are ``configs/serve.yaml``'s (automatic masks on its 16x16 grid); ``top_k``,
    ``min_score``, ``max_instances`` and ``score_thresh`` (concept classes) default as in ``/v1/predict``.
    Stage defaults fit a 2-core machine (their CPUs add up to 2.0).
    """

    clip: ClipModelArgs = ClipModelArgs()
    retriever: RetrieverArgs = RetrieverArgs()
    fader: FaderArgs = FaderArgs()
    amg: AmgDefaults = AmgDefaults(points_per_side=16)
    max_image_pixels: int = Field(default=50_000_000, ge=1)
    score_thresh: float = Field(default=0.5, ge=0, le=1)
    object_store_mb: int = Field(default=2048, ge=64)
    load: StageResources = StageResources(batch_size=4, num_cpus=0.25)
    encode: EncodeResources = EncodeResources(batch_size=1, num_cpus=1.0, torch_threads=2)
    decode: ModelStageResources = ModelStageResources(batch_size=4, num_cpus=0.5, torch_threads=2)
    fade: StageResources = StageResources(batch_size=4, num_cpus=0.1)
    embed: StageResources = StageResources(batch_size=4, num_cpus=0.1, torch_threads=2)
    retrieve: StageResources = StageResources(batch_size=8, num_cpus=0.05)


def apply_overrides(base: dict, overrides: list[str]) -> dict:
    """``["encode.batch_size=2", "amg.points_per_side=8"]`` applied to a nested dict (values parsed as YAML).

    Args:
        base: the settings as a nested dict (not modified).
        overrides: ``key.sub=value`` strings; missing groups are created.

    Returns:
        A copy of ``base`` with the overrides applied.

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


def load_batch_args(overrides: list[str]) -> BatchArgs:
    """:class:`BatchArgs` defaults with ``--set`` overrides applied.

    Args:
        overrides: ``key.sub=value`` strings (values parsed as YAML), e.g. ``["encode.batch_size=2"]``.

    Returns:
        The validated settings.

    Raises:
        ValueError: a malformed override or an invalid value (the message names the field).
    """
    try:
        return BatchArgs.model_validate(apply_overrides(BatchArgs().model_dump(), overrides))
    except ValidationError as e:
        errs = "; ".join(f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}" for err in e.errors())
        raise ValueError(f"invalid batch settings: {errs}") from None


def build_dataset(
    data: BatchInput,
    plan: BatchPlan,
    args: BatchArgs,
    weights: dict,
    clip_weights: dict,
    store: dict,
    read: Callable[[dict], bytes] | None = None,
):
    """The Ray Data pipeline of ``plan`` (lazy: nothing runs until it is iterated).

    The load stage validates every image's prompts as ``/v1/segment`` validates its own
    (:func:`deployments.offline_stages.prompt_specs`), so they reach the decode stage as
    :class:`models.prompts.PromptSpec`.

    Args:
        data: the run's input rows and COCO categories.
        plan: the checked flags.
        args: the run's settings (models, weights, stage resources).
        weights: SAM 2 weights source fields ``{"kind", "checkpoint", "seed"}``.
        clip_weights: CLIP weights source fields ``{"kind", "checkpoint", "seed"}``.
        store: :class:`deployments.runtime.vectorstore.ExampleStore` keyword arguments (empty without retrieval).
        read: the load stage's ``row -> bytes`` (e.g. a fetch of a URL), or None to read ``row["path"]`` as a
            file (:class:`deployments.offline_stages.LoadImages`).

    Returns:
        A ``ray.data.Dataset`` with one ``item`` column (:class:`deployments.offline_stages.Item`), one row per image.
    """
    import ray

    from deployments import offline_label_stages as labels
    from deployments import offline_stages as stages

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
    ds = add(
        ds,
        "load",
        stages.LoadImages,
        prompts=plan.prompts,
        with_examples=plan.add_examples,
        categories=data.categories,
        max_image_pixels=args.max_image_pixels,
        read=read,
    )
    ds = add(
        ds,
        "encode",
        stages.EncodeImages,
        model_id=args.model_id,
        weights=weights,
        device=args.encode.device,
        torch_threads=args.encode.torch_threads,
        accel=args.encode.accel(),
        runtime=args.encode.runtime_settings(args.export_dir),
    )
    amg = args.amg.model_dump() if plan.prompts == "auto" and not plan.classes else None
    ds = add(
        ds,
        "decode",
        stages.DecodeMasks,
        model_id=args.model_id,
        weights=weights,
        device=args.decode.device,
        torch_threads=args.decode.torch_threads,
        accel=args.decode.accel(),
        runtime=args.decode.runtime_settings(args.export_dir),
        amg=amg,
        max_instances=args.max_instances,
        classes=list(plan.classes) or None,
        score_thresh=args.score_thresh,
    )
    if plan.predict or plan.add_examples or plan.embeddings:
        crop = {"context_margin": args.fader.context_margin, "output_size": args.fader.output_size}
        ds = add(ds, "fade", labels.FadeCrops, strategy=args.fader.strategy, params=dict(args.fader.params), crop=crop)
        ds = add(
            ds,
            "embed",
            labels.EmbedCrops,
            model_name=args.clip.model_name,
            pretrained=args.clip.pretrained,
            weights=clip_weights,
            device=args.embed.device,
            torch_threads=args.embed.torch_threads,
        )
    if plan.predict or plan.add_examples:
        mode = "add" if plan.add_examples else "search"
        ds = add(
            ds,
            "retrieve",
            labels.RetrieveLabels,
            store=store,
            collection=plan.collection,
            mode=mode,
            top_k=args.top_k,
            min_score=args.min_score,
            keep_embeddings=plan.embeddings,
        )
    return ds


def iter_finished(ds, progress: bool) -> Iterator[dict]:
    """Rows of the finished images as they stream out, with a progress bar of images and stage times.

    Args:
        ds: the pipeline (:func:`build_dataset`).
        progress: show a tqdm bar of images with the mean time per image of each stage.

    Yields:
        Each image's final row (a dict), in the order the images finish.
    """
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
    initialised Ray says where the cluster is. Images that fail (unreadable, too large) are counted in
    the summary and do not stop the run; any other failure leaves no partial ``results.json`` or
    ``instances.parquet``.

    Args:
        data: the run's input (:func:`serve_app.offline.inputs.list_inputs`).
        out_dir: the output folder (created if missing).
        plan: the checked flags (:func:`serve_app.offline.inputs.plan_run`).
        args: the run's settings (:func:`load_batch_args`).
        address: a Ray cluster address (default ``RAY_ADDRESS``, else a new local Ray).
        progress: show progress bars.

    Returns:
        What the run did, as written to ``summary.json``.

    Raises:
        WeightsError: SAM 2 or CLIP weights cannot be had (checked before Ray starts).
        StoreError, UnknownCollection: the examples store cannot be opened, or ``--predict`` names a
            collection that does not exist.
    """
    ready = prepare_run(plan, args)
    summary = BatchSummary(failed=[{"path": p, "error": why} for p, why in data.skipped])
    writer = ResultWriter(out_dir, with_embeddings=plan.embeddings, categories=data.categories)
    t0 = time.perf_counter()
    ok = False
    try:
        with ray_session(args, address, progress):
            t0 = time.perf_counter()  # the run, not Ray's start
            rows = iter_finished(build_dataset(data, plan, args, *ready), progress) if data.items else ()
            for row in rows:
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
    summary.instances = writer.instances
    summary.stage_ms = {k: v / max(summary.images, 1) for k, v in summary.stage_ms.items()}
    summary.outputs = {"results": str(writer.results.path), "instances": str(writer.parquet.path)}
    summary.outputs["summary"] = str(write_summary(summary, out_dir))
    return summary


def prepare_run(plan: BatchPlan, args: BatchArgs) -> tuple[dict, dict, dict]:
    """Check, before Ray starts, what a run needs: the model's and CLIP's weights, the example store and,
    for ``plan.predict``, that its collection exists.

    Returns:
        ``(weights, clip_weights, store)``: the last three arguments of :func:`build_dataset`.

    Raises:
        WeightsError, StoreError, UnknownCollection: as :func:`run_batch`.
    """
    from deployments.errors import UnknownCollection
    from deployments.runtime.vectorstore import ExampleStore
    from serve_app.preflight import preflight

    retrieves = plan.predict or plan.add_examples
    ready = preflight(args, clip=bool(retrieves or plan.embeddings), store=bool(retrieves))
    if plan.predict:
        with ExampleStore(**ready.store) as s:  # embedded mode: closed again before the retrieve stage opens it
            if plan.collection not in s.collections():
                raise UnknownCollection(plan.collection)
    return ready.model.as_dict(), ready.clip.as_dict(), ready.store


@contextlib.contextmanager
def ray_session(args: BatchArgs, address: str | None, progress: bool) -> Iterator[None]:
    """Ray for one run: the cluster at ``address`` (default ``RAY_ADDRESS``) or an already initialised
    one, else a new local Ray with ``object_store_mb`` of object store, shut down on exit; Ray Data's
    object-store budget and progress bars set for the run.
    """
    import ray
    from ray.data import DataContext

    started_here = False
    if not ray.is_initialized():
        target = address or os.environ.get("RAY_ADDRESS")
        local = not target or target == "local"  # a new Ray on this machine, sized here
        kwargs = {"object_store_memory": args.object_store_mb * 2**20, "include_dashboard": False} if local else {}
        ray.init(address=address, log_to_driver=False, **kwargs)
        started_here = True
    try:
        ctx = DataContext.get_current()
        ctx.execution_options.resource_limits = ctx.execution_options.resource_limits.copy(
            object_store_memory=args.object_store_mb * 2**20
        )
        ctx.enable_progress_bars = progress
        yield
    finally:
        if started_here:
            ray.shutdown()
