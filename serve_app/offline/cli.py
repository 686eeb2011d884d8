"""``samgraph batch`` and ``samgraph eval``: the offline commands (Ray Data, no service needed).

    samgraph batch --input DIR|annotations.json --output OUT_DIR [--images DIR]
                   [--prompts coco-boxes|center-points|auto] [--predict --collection NAME] [--add-examples]
                   [--embeddings] [--limit N] [--set encode.batch_size=2 ...]
    samgraph eval --coco annotations.json --images DIR --prompt box|center-point [--output report.json]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path


def batch_settings(args: argparse.Namespace):
    """The run's :class:`BatchArgs`: ``--set`` overrides, then the weight, store and model flags given."""
    from serve_app.offline.pipeline import load_batch_args

    sets = list(args.set or [])
    for flag, key in (
        ("weights", "weights"),
        ("checkpoint", "checkpoint"),
        ("seed", "seed"),
        ("clip_weights", "clip.weights"),
        ("store", "retriever.path"),
        ("model", "model_id"),
    ):
        value = getattr(args, flag, None)
        if value is not None:
            sets.append(f"{key}={value}")
    return load_batch_args(sets)


def _run(
    args: argparse.Namespace,
    source: str,
    out_dir: str,
    prompts: str | None,
    predict: bool,
    add_examples: bool,
    embeddings: bool,
):
    from serve_app.offline.inputs import list_inputs, plan_run
    from serve_app.offline.pipeline import run_batch

    settings = batch_settings(args)
    data = list_inputs(source, args.images, args.limit)
    plan = plan_run(data, prompts, predict, add_examples, args.collection, embeddings)
    print(
        f"{len(data.items)} images ({len(data.skipped)} other files skipped); prompts {plan.prompts}"
        f"{'; predict from ' + plan.collection if predict else ''}"
        f"{'; adding examples to ' + plan.collection if add_examples else ''}",
        file=sys.stderr,
    )
    return run_batch(data, out_dir, plan, settings, address=args.address, progress=not args.quiet)


def cmd_batch(args: argparse.Namespace) -> int:
    """Run the offline pipeline; print a summary (images, failures, instances, per-stage times)."""
    from serve_app.offline.writer import stage_table

    try:
        summary = _run(args, args.input, args.output, args.prompts, args.predict, args.add_examples, args.embeddings)
    except (ValueError, FileNotFoundError, LookupError, RuntimeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"{summary.images} images in {summary.wall_s:.1f} s ({summary.images_per_s:.3f} images/s), "
          f"{summary.instances} instances, {summary.examples_added} examples added, {len(summary.failed)} failed")
    for f in summary.failed:
        print(f"  skipped {f['path']}: {f['error']}")
    print(stage_table(summary))
    for name, path in summary.outputs.items():
        print(f"{name}: {path}")
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    """Prompt SAM 2 with the ground truth, score its masks; print the table, write JSON and a PNG plot."""
    import contextlib
    import io

    from pycocotools.coco import COCO

    from deployments.runtime.weights import WeightsSource
    from serve_app.offline.evaluate import (
        PROMPTS,
        evaluate_masks,
        plot_by_area,
        predictions_from_instances,
        report_table,
        write_report,
    )
    from serve_app.offline.inputs import list_inputs

    args.collection, args.store = "default", None
    work = Path(args.work_dir) if args.work_dir else Path(tempfile.mkdtemp(prefix="samgraph-eval-"))
    try:
        summary = _run(args, args.coco, str(work), PROMPTS[args.prompt], False, False, False)
    except (ValueError, FileNotFoundError, LookupError, RuntimeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints while indexing
        gt = COCO(args.coco)
    failed = {f["path"] for f in summary.failed}
    evaluated = [
        it["image_id"] for it in list_inputs(args.coco, args.images, args.limit).items if it["path"] not in failed
    ]
    report = evaluate_masks(gt, predictions_from_instances(summary.outputs["instances"]), evaluated)
    source = WeightsSource.resolve(args.weights, args.checkpoint, args.seed)
    report = {
        "prompt": args.prompt,
        "coco": str(args.coco),
        "weights": source.kind if source.kind != "file" else f"file:{source.checkpoint}",
        "images_failed": summary.failed,
        "images_per_s": round(summary.images_per_s, 4),
        **report,
    }
    print(report_table(report))
    if source.kind == "random":
        print("note: random weights; these figures say nothing about SAM 2's quality", file=sys.stderr)
    output = Path(args.output) if args.output else work / "report.json"
    write_report(report, output)
    plot = Path(args.plot) if args.plot else output.with_suffix(".png")
    plot_by_area(report, plot, f"SAM 2, {args.prompt} prompts: mIoU by area range")
    print(f"report: {output}\nplot: {plot}")
    return 0


def add_run_args(c: argparse.ArgumentParser) -> None:
    """The flags every offline command over a COCO file takes: images, limit, and :func:`add_pipeline_args`."""
    c.add_argument("--images", help="folder of the images of a COCO file (default: next to it, e.g. val2017/)")
    c.add_argument("--limit", type=int, help="only the first N images")
    add_pipeline_args(c)


def add_pipeline_args(c: argparse.ArgumentParser) -> None:
    """The flags of every command that runs the offline pipeline (:func:`batch_settings` reads them): the
    model's weights, checkpoint and seed, ``--set``, the Ray address, quiet."""
    c.add_argument(
        "--weights",
        choices=["registry", "file", "random"],
        help="model weights (default: SAMGRAPH_WEIGHTS, else registry)",
    )
    c.add_argument("--checkpoint", help="checkpoint file (with --weights file)")
    c.add_argument("--seed", type=int, help="seed of random weights")
    c.add_argument(
        "--set",
        action="append",
        metavar="KEY=VALUE",
        help="override a setting, e.g. encode.batch_size=2, decode.concurrency=2, encode.num_gpus=1, "
        "amg.points_per_side=8",
    )
    c.add_argument("--address", help="Ray cluster address (default: RAY_ADDRESS, else a local Ray)")
    c.add_argument("--quiet", action="store_true", help="no progress display")


def add_commands(sub) -> None:
    """Add ``batch`` and ``eval`` to the ``samgraph`` sub-command parser."""
    b = sub.add_parser("batch", help="offline batch inference over a folder or a COCO file (Ray Data)")
    b.add_argument("--input", required=True, help="folder of images, or a COCO annotation JSON")
    b.add_argument("--output", required=True, help="output folder: results.json, instances.parquet, summary.json")
    b.add_argument(
        "--prompts",
        choices=["coco-boxes", "center-points", "auto"],
        help="default: coco-boxes for COCO, center-points for a folder",
    )
    b.add_argument(
        "--predict", action="store_true", help="label every instance by its nearest examples in --collection"
    )
    b.add_argument(
        "--add-examples", action="store_true", help="store every ground-truth instance of the COCO file as an example"
    )
    b.add_argument("--collection", default="default")
    b.add_argument("--store", help="embedded Qdrant folder (default: SAMGRAPH_QDRANT_URL, else SAMGRAPH_DATA_DIR)")
    b.add_argument(
        "--clip-weights",
        choices=["pretrained", "file", "random"],
        help="CLIP weights (default: SAMGRAPH_WEIGHTS, else pretrained)",
    )
    b.add_argument(
        "--embeddings", action="store_true", help="also write each instance's CLIP embedding to the Parquet file"
    )
    add_run_args(b)
    b.set_defaults(func=cmd_batch)

    e = sub.add_parser("eval", help="mask quality against COCO ground truth (mIoU by area and category, COCOeval AP)")
    e.add_argument("--coco", required=True, help="COCO annotation JSON")
    e.add_argument("--prompt", choices=["box", "center-point"], default="box")
    e.add_argument("--output", help="report JSON (default: report.json in the work dir)")
    e.add_argument("--plot", help="PNG of mIoU by area range (default: the report's name with .png)")
    e.add_argument("--work-dir", help="keep the batch outputs here (default: a temp dir)")
    add_run_args(e)
    e.set_defaults(func=cmd_eval)

