"""``samgraph labelstudio prelabel PROJECT``: pre-label a Label Studio project offline (Ray Data; no
samgraph service needed), see :mod:`serve_app.offline.labelstudio`.

    samgraph labelstudio prelabel PROJECT [--url URL] [--api-key TOKEN] [--model MODEL_ID]
        [--collection NAME] [--overwrite] [--limit N] [--weights random] [--set decode.concurrency=2 ...]
"""

from __future__ import annotations

import argparse
import os
import sys


def cmd_prelabel(args: argparse.Namespace) -> int:
    """Run the job; print its counts (and the summary as JSON with ``--json``). Exit 1 on an error before
    or during the run, 0 otherwise (tasks that failed are listed, with their reasons)."""
    from serve_app.offline.cli import batch_settings
    from serve_app.offline.labelstudio import LabelStudioError, run_prelabel, summary_json, summary_text
    from serve_app.task_images import LabelStudioHost

    url = (args.url or os.environ.get("LABEL_STUDIO_URL") or "").strip().rstrip("/")
    token = args.api_key or os.environ.get("LABEL_STUDIO_API_KEY") or None
    if not url:
        print("error: Label Studio's URL: give --url or set LABEL_STUDIO_URL", file=sys.stderr)
        return 1
    args.clip_weights = args.store = None
    try:
        settings = batch_settings(args)
        summary = run_prelabel(
            args.project,
            LabelStudioHost(url, token),
            settings,
            collection=args.collection,
            overwrite=args.overwrite,
            limit=args.limit,
            address=args.address,
            progress=not args.quiet,
        )
    except (ValueError, LookupError, RuntimeError, LabelStudioError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(summary_json(summary) if args.json else summary_text(summary))
    return 0


def add_command(sub) -> None:
    """Add ``labelstudio prelabel`` to the ``samgraph`` sub-command parser."""
    from serve_app.offline.cli import add_pipeline_args

    ls = sub.add_parser("labelstudio", help="Label Studio: pre-label a whole project offline")
    lsub = ls.add_subparsers(dest="action", required=True)
    p = lsub.add_parser(
        "prelabel",
        help="predict every task of a Label Studio project (Ray Data) and store the predictions in it",
    )
    p.add_argument("project", type=int, help="the Label Studio project's id")
    p.add_argument("--url", help="Label Studio's base URL (default: $LABEL_STUDIO_URL)")
    p.add_argument("--api-key", help="a Label Studio legacy token (default: $LABEL_STUDIO_API_KEY)")
    p.add_argument("--model", help="model_id (default: sam2.1_hiera_tiny; a SAM 3 model uses the labels as concepts)")
    p.add_argument(
        "--collection",
        default="default",
        help="few-shot examples that label the automatic masks (SAM 2, MobileSAM; default: default)",
    )
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="also predict tasks that hold a prediction of this model version (the older one is deleted)",
    )
    p.add_argument("--limit", type=int, help="only the first N tasks to predict")
    add_pipeline_args(p)  # weights, checkpoint, seed, --set, address, quiet: samgraph batch's
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.set_defaults(func=cmd_prelabel)
