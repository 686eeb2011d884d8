"""``samgraph`` command line: run the service, manage weights, and call the HTTP API.

    samgraph serve [--config configs/serve.yaml]
    samgraph models list | pull [NAME] [--clip]          (NAME: sam2.1_hiera_tiny, mobile_sam, sam3 (HF_TOKEN))
    samgraph models export NAME --format onnx [--out DIR] [--weights registry|file|random] [--checkpoint F] [--seed N]
    samgraph ping --api URL
    samgraph segment --api URL --image photo.jpg [--model ID] [--box x0,y0,x1,y1]... [--point x,y[,fg|bg]]...
                     [--text "a red car"]... [--score-thresh 0.5] [--out result.json] [--overlay overlay.png]
                     [--cutout cutout.png]
    samgraph predict --api URL --image photo.jpg [--model ID] [--classes person,car] [--collection NAME]
                     [--top-k 5] [--json]
    samgraph examples add --api URL --image photo.jpg (--box x0,y0,x1,y1 | --point x,y ...) --label NAME
    samgraph examples list --api URL [--collection NAME]
    samgraph examples export --api URL [--collection NAME] --out FILE[.gz]
    samgraph examples import --api URL --file FILE[.gz] [--collection NAME] [--batch-points 1000]
    samgraph batch --input DIR|annotations.json --output OUT_DIR [...]    (serve_app/offline/cli.py)
    samgraph eval --coco annotations.json --images DIR --prompt box|center-point [--output report.json]
    samgraph video --api URL (--video clip.mp4 | --frames DIR) --box OBJ:x0,y0,x1,y1 [--point OBJ:x,y[,fg|bg]]...
                   [--frame-index N] [--start-frame N] [--max-frames N] [--reverse] [--out masks.json]
                   [--overlay-video out.mp4]
    samgraph video-session open|prompt|propagate|cancel|info|remove|reset|close ...   (serve_app/cli/video_session.py)
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from serve_app.cli.examples_file import add_file_commands
from serve_app.cli.flags import (
    add_mask_format_args,
    build_prompts,
    build_video_objects,
    frame_files,
    mask_format_fields,
    parse_box,
    parse_obj_box,
    parse_obj_point,
    parse_point,
)
from serve_app.cli.video_session import frame_progress
from serve_app.client import ApiResponseError, ApiStreamError, ApiUnreachable, SamgraphClient

DEFAULT_API = "http://127.0.0.1:8000"


def _client(args: argparse.Namespace) -> SamgraphClient:
    return SamgraphClient(args.api, args.timeout, api_key=args.api_key)


def _fail(error: ApiResponseError | ApiUnreachable | ApiStreamError) -> int:
    """Print a failed call as the CLI reports it; the exit code (1)."""
    print(f"error {error}" if isinstance(error, ApiResponseError) else f"error: {error}", file=sys.stderr)
    if isinstance(error, ApiResponseError) and error.status == 401:
        print("the service needs an API key: give --api-key KEY or set SAMGRAPH_API_KEY", file=sys.stderr)
    return 1


def cmd_serve(args: argparse.Namespace) -> int:
    """Check SAM 2 and CLIP weights and the data dir first (exit 1 with the reason, before Ray starts),
    then ``serve run CONFIG``."""
    import yaml

    from deployments.runtime.store_checks import StoreError
    from deployments.runtime.weights import WeightsError
    from serve_app.config import AppArgs
    from serve_app.preflight import preflight

    config = Path(args.config)
    if not config.is_file():
        print(f"config {config} not found (run from the samgraph checkout, or pass --config)", file=sys.stderr)
        return 2
    for app in yaml.safe_load(config.read_text()).get("applications", []):
        if app.get("import_path") == "serve_app.app:build_app":
            try:
                preflight(AppArgs.model_validate(app.get("args") or {}))
            except (ValueError, WeightsError, StoreError) as e:
                print(f"error: {e}", file=sys.stderr)
                return 1
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    # Ray's `serve` of this interpreter's environment: `.venv/bin/samgraph serve` works without the venv on PATH
    beside = Path(sys.executable).parent / "serve"
    serve = str(beside) if beside.is_file() else "serve"
    os.execvp(serve, [serve, "run", str(config)])
    return 0  # not reached


def cmd_models(args: argparse.Namespace) -> int:
    """``models list`` (the registry and what is cached), ``models pull [NAME] [--clip]`` (download and verify;
    ``--clip`` also fetches the default CLIP weights into the same cache dir) or ``models export NAME --format
    onnx`` (:func:`_export`)."""
    from deployments.runtime.model_weights import pull_checkpoint
    from deployments.runtime.weights import WeightsError, cache_dir
    from models.registry import DEFAULT_MODEL, get_model_spec, list_models

    if args.action == "export":
        return _export(args)
    if args.action == "list":
        print(f"cache dir: {cache_dir()}")
        print(f"{'name':<24} {'family':<10} {'params':>8} {'size':>9}  {'cached':<6}  sha256")
        for name in list_models():
            spec = get_model_spec(name)
            cached = "yes" if spec.url and (cache_dir() / spec.filename).exists() else "no"
            size = f"{spec.size_bytes / 1e6:.0f} MB" if spec.size_bytes else "?"
            digest = spec.sha256 or ("-" if not spec.url else "?")  # -: no released weights (random only)
            print(f"{name:<24} {spec.family:<10} {spec.params_m:>7.1f}M {size:>9}  {cached:<6}  {digest}")
        return 0
    try:
        spec = get_model_spec(args.name or DEFAULT_MODEL)
        path = pull_checkpoint(spec, progress=True)
        print(f"{spec.name}: {path} (sha256 verified)")
        if args.clip:
            from deployments.runtime.clip_weights import pull_pretrained
            from models.embedder import ClipSpec
            from serve_app.config import ClipArgs

            default = ClipArgs()  # the app's default embedder (args.clip in the Serve configs)
            clip = ClipSpec(default.model_name, default.pretrained)
            print(f"CLIP {clip.model_id}: {pull_pretrained(clip)}")
    except (ValueError, WeightsError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


def _export(args: argparse.Namespace) -> int:
    """``models export NAME --format onnx``: the model's encoder and decoder as ONNX files (the layout of
    :mod:`deployments.runtime.exports`) from verified weights, into ``--out`` or the cache entry the service's
    replicas look in; prints each file's SHA-256."""
    from deployments.runtime.model_weights import load_model
    from deployments.runtime.stage_runtime import export_model
    from deployments.runtime.weights import WeightsError, WeightsSource
    from models.registry import get_model_spec

    try:
        spec = get_model_spec(args.name)
        sam2 = spec.family == "sam2"
        source = WeightsSource.resolve(args.weights, args.checkpoint, args.seed, checkpoint_from_env=sam2)
        loaded = load_model(spec.name, source, device="cpu", progress=True)
        export, written = export_model(loaded, {"kind": source.kind, "seed": source.seed}, args.out)
    except (ValueError, WeightsError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    where = "written to" if written else "already in (verified)"
    print(f"{spec.name} ONNX export (opset {export.manifest['opset']}, weights {export.manifest['weights']}) {where} "
          f"{export.directory}")
    for name, f in export.files.items():
        print(f"  {name:<14} {f.size_bytes / 1e6:>9.1f} MB  sha256 {f.sha256}")
    if source.kind == "random":
        print(f"note: RANDOM weights (seed {source.seed}): the exported model's masks are meaningless", file=sys.stderr)
    return 0


def cmd_ping(args: argparse.Namespace) -> int:
    """Print ``/readyz``'s answer; exit 0 when the service is ready, else 1."""
    try:
        with _client(args) as api:
            status, body = api.readyz()
    except (ApiUnreachable, ApiResponseError) as e:
        return _fail(e)
    print(json.dumps(body, indent=2))
    return 0 if status == 200 else 1


def cmd_segment(args: argparse.Namespace) -> int:
    """``/v1/segment`` on ``--image``: print a summary (or ``--json``), write ``--out``/``--overlay``/``--cutout``."""
    if (args.overlay or args.cutout) and args.mask_format != "rle":
        print("error: --overlay and --cutout need --mask-format rle", file=sys.stderr)
        return 2
    request = {
        "prompts": build_prompts(args.box or [], args.point or []) + [{"text": t} for t in args.text or []],
        **mask_format_fields(args),
    }
    if args.model:
        request["model_id"] = args.model
    if args.score_thresh is not None:
        request["score_thresh"] = args.score_thresh
    if args.multimask is not None:
        request["multimask_output"] = args.multimask
    result = _post_image(args, SamgraphClient.segment, request)
    if isinstance(result, int):
        return result
    text = json.dumps(result, indent=2)
    if args.out:
        Path(args.out).write_text(text)
    summary = {
        "image_id": result["image_id"],
        "encode_cached": result["encode_cached"],
        "timing_ms": {k: round(v, 1) for k, v in result["timing_ms"].items()},
        "objects": [summarise_result(res) for res in result["results"]],
    }
    print(text if args.json else json.dumps(summary, indent=2))
    if args.overlay or args.cutout:
        from serve_app.cli.render import save_cutout, save_overlay

        image_bytes = Path(args.image).read_bytes()
        if args.overlay:
            save_overlay(image_bytes, result, args.overlay)
        if args.cutout:
            save_cutout(image_bytes, result, args.cutout)
    return 0


def summarise_result(res: dict) -> list[dict] | dict:
    """One ``/v1/segment`` result as the summary prints it: each mask's scores, area and box; for a
    concept prompt, ``text_method`` and each instance's score, area and box."""
    if res.get("instances") is not None:
        keys = ("score", "area_px", "bbox_xyxy")
        return {"text_method": res["text_method"], "instances": [{k: m[k] for k in keys} for m in res["instances"]]}
    keys = ("predicted_iou", "stability_score", "area_px", "bbox_xyxy")
    masks = [{k: m[k] for k in keys} for m in res["masks"]]
    return {"text_method": res["text_method"], "masks": masks} if res.get("text_method") else masks


def _post_image(args: argparse.Namespace, call, request: dict) -> dict | int:
    """``call(client, request, image, filename)`` with the ``--image`` file; the answer, or an exit code.

    The answer's warnings go to stderr.
    """
    image_path = Path(args.image)
    try:
        image_bytes = image_path.read_bytes()
    except OSError as e:
        print(f"error: cannot read {image_path}: {e}", file=sys.stderr)
        return 2
    try:
        with _client(args) as api:
            result = call(api, request, image_bytes, image_path.name)
    except (ApiUnreachable, ApiResponseError) as e:
        return _fail(e)
    for w in result.get("warnings", []):
        print(f"warning: {w}", file=sys.stderr)
    return result


def cmd_predict(args: argparse.Namespace) -> int:
    """``/v1/predict`` on ``--image``: print a table of the labelled instances (or ``--json``)."""
    request = {
        "top_k": args.top_k,
        "min_score": args.min_score,
        "max_instances": args.max_instances,
        **mask_format_fields(args),
    }
    if args.collection or not args.classes:
        request["collection"] = args.collection or "default"
    if args.classes:
        request["classes"] = [c.strip() for c in args.classes.split(",") if c.strip()]
    if args.model:
        request["model_id"] = args.model
    if args.score_thresh is not None:
        request["score_thresh"] = args.score_thresh
    if args.points_per_side:
        request["amg"] = {"points_per_side": args.points_per_side}
    result = _post_image(args, SamgraphClient.predict, request)
    if isinstance(result, int):
        return result
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    print(
        f"{len(result['instances'])} instances in {result['timing_ms']['total']:.0f} ms "
        f"({result['image_id'][:12]}...)"
    )
    print(f"{'#':>3} {'label':<20} {'source':<8} {'confidence':>10} {'area_px':>9}  bbox_xyxy")
    for i, inst in enumerate(result["instances"]):
        label = inst["label"] if inst["label"] is not None else "-"
        confidence = f"{inst['confidence']:>10.3f}" if inst["confidence"] is not None else f"{'-':>10}"
        print(f"{i:>3} {label:<20} {inst['label_source']:<8} {confidence} {inst['area_px']:>9}  {inst['bbox_xyxy']}")
    return 0


def cmd_examples(args: argparse.Namespace) -> int:
    """``examples add`` (``POST /v1/examples``) or ``examples list`` (counts per label); ``export`` and
    ``import`` are :mod:`serve_app.cli.examples_file`'s."""
    if args.action == "add":
        prompt = build_prompts([args.box] if args.box else [], args.point or [])
        if not prompt:
            print("error: give --box and/or --point for the object", file=sys.stderr)
            return 2
        out = _post_image(
            args, SamgraphClient.add_example, {**prompt[0], "label": args.label, "collection": args.collection}
        )
        if isinstance(out, int):
            return out
        print(json.dumps({k: out[k] for k in ("ids", "collection", "label", "area_px")}, indent=2))
        return 0
    try:
        with _client(args) as api:
            out = api.list_examples(args.collection)
    except (ApiUnreachable, ApiResponseError) as e:
        return _fail(e)
    print(f"collection {out['collection']}: {out['total']} examples, {out['dim']}-d")
    for label, n in sorted(out["counts"].items()):
        print(f"  {label:<30} {n:>6}")
    return 0


def cmd_video(args: argparse.Namespace) -> int:
    """Stream /v1/segment/video, report progress on stderr, write the result as one JSON document."""
    import base64

    try:
        objects = build_video_objects(args.box or [], args.point or [], args.frame_index)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if not objects:
        print("error: give at least one --box or --point", file=sys.stderr)
        return 2
    request: dict = {"objects": objects, "reverse": args.reverse, "mask_format": "rle", "stream": True}
    if args.start_frame is not None:
        request["start_frame"] = args.start_frame
    if args.max_frames is not None:
        request["max_frames"] = args.max_frames
    try:
        if args.video:
            send = {"video": Path(args.video).read_bytes(), "filename": Path(args.video).name}
        else:
            files = frame_files(Path(args.frames))
            if not files:
                print(f"error: no .jpg/.jpeg/.png frames in {args.frames}", file=sys.stderr)
                return 2
            request["frames"] = [{"base64": base64.b64encode(p.read_bytes()).decode("ascii")} for p in files]
            send = {}
    except OSError as e:
        print(f"error: cannot read the clip: {e}", file=sys.stderr)
        return 2
    head, frames, end = {}, [], {}
    try:
        with _client(args) as api:
            for rec in api.stream_video(request, **send):
                kind = rec.pop("type")
                if kind == "start":
                    head = rec
                    for w in rec.get("warnings", []):
                        print(f"warning: {w}", file=sys.stderr)
                elif kind == "frame":
                    frames.append(rec)
                    print(frame_progress(rec, len(frames)), file=sys.stderr)
                else:
                    end = rec
    except (ApiUnreachable, ApiResponseError, ApiStreamError) as e:
        return _fail(e)
    frames.sort(key=lambda f: f["frame_index"])
    result = {**head, "frames": frames, "timing_ms": end["timing_ms"]}
    text = json.dumps(result, indent=2)
    if args.out:
        Path(args.out).write_text(text)
    t = end["timing_ms"]
    summary = {"frames": len(frames), "obj_ids": head["obj_ids"], "timing_ms": {k: round(v, 1) for k, v in t.items()}}
    print(json.dumps(summary, indent=2))
    if args.overlay_video:
        _write_overlay_video(args, result)
    return 0


def _write_overlay_video(args: argparse.Namespace, result: dict) -> None:
    import numpy as np
    from PIL import Image

    from deployments.runtime.video_io import decode_video
    from models.masks import decode_rle
    from serve_app.cli.render import encode_video, overlay_frames

    masks = {f["frame_index"]: [decode_rle(o["rle"]) for o in f["objects"]] for f in result["frames"]}
    if args.video:
        clip = decode_video(Path(args.video).read_bytes(), max_frames=10**6, max_frame_pixels=10**9)
    else:
        clip = (np.asarray(Image.open(p).convert("RGB")) for p in frame_files(Path(args.frames)))
    encode_video(overlay_frames(clip, masks), args.overlay_video, fps=args.fps)
    print(f"overlay video: {args.overlay_video}", file=sys.stderr)


def _api_args(c: argparse.ArgumentParser, func) -> None:
    c.add_argument("--api", default=os.environ.get("SAMGRAPH_API", DEFAULT_API), help="service URL")
    c.add_argument("--timeout", type=float, default=300.0, help="HTTP timeout, seconds")
    c.add_argument(
        "--api-key",
        default=None,
        metavar="KEY",
        help="API key of a service that needs one (default: $SAMGRAPH_API_KEY)",
    )
    c.set_defaults(func=func)


def make_parser() -> argparse.ArgumentParser:
    """The ``samgraph`` argument parser, every sub-command's ``func`` set."""
    p = argparse.ArgumentParser(prog="samgraph", description="SAM 2 segmentation served as a Ray Serve graph")
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("serve", help="run the service: `serve run CONFIG`")
    s.add_argument("--config", default="configs/serve.yaml")
    s.set_defaults(func=cmd_serve)

    m = sub.add_parser("models", help="list, download or export the registry's models (SAM 2.1, MobileSAM, SAM 3)")
    msub = m.add_subparsers(dest="action", required=True)
    msub.add_parser("list", help="registered checkpoints and whether they are cached")
    pull = msub.add_parser("pull", help="download and verify a checkpoint into the cache dir")
    pull.add_argument("name", nargs="?", help="registry name (default sam2.1_hiera_tiny)")
    pull.add_argument(
        "--clip",
        action="store_true",
        help="also fetch the app's default CLIP weights (ViT-B-32/laion2b_s34b_b79k) into the cache dir",
    )
    export = msub.add_parser(
        "export", help="write the model's encoder and decoder as ONNX (encoder.onnx, decoder.onnx, export.json)"
    )
    export.add_argument("name", help="registry name, e.g. sam2.1_hiera_tiny or mobile_sam (sam3 runs on torch only)")
    export.add_argument("--format", choices=["onnx"], required=True, help="the export format (onnx)")
    export.add_argument(
        "--out", help="directory to write (default: the cache entry the service's replicas use, under the cache dir)"
    )
    export.add_argument(
        "--weights",
        choices=["registry", "file", "random"],
        help="weights (default: SAMGRAPH_WEIGHTS, else the registry's verified download)",
    )
    export.add_argument("--checkpoint", help="checkpoint file (with --weights file)")
    export.add_argument("--seed", type=int, help="seed of random weights (default: SAMGRAPH_SEED, else 0)")
    m.set_defaults(func=cmd_models)

    for name, func, helptext in (
        ("ping", cmd_ping, "readiness of a running service"),
        ("segment", cmd_segment, "segment an image"),
    ):
        c = sub.add_parser(name, help=helptext)
        _api_args(c, func)
        if name == "segment":
            c.add_argument(
                "--text",
                action="append",
                help="a text prompt, e.g. 'car': every instance on a concept model (SAM 3), else ranked auto masks",
            )
            c.add_argument("--model", help="model_id of a served model (default: the service's default)")
            c.add_argument("--score-thresh", type=float, help="concept prompts: keep instances scoring at least this")
            c.add_argument("--image", required=True, help="image file (JPEG, PNG, ...)")
            c.add_argument(
                "--box", type=parse_box, action="append", help="x0,y0,x1,y1 in pixels; repeat for more objects"
            )
            c.add_argument("--point", type=parse_point, action="append", help="x,y[,fg|bg] in pixels (default fg)")
            c.add_argument("--multimask", action=argparse.BooleanOptionalAction, default=None)
            c.add_argument("--out", help="write the full JSON response here")
            c.add_argument("--json", action="store_true", help="print the full JSON response, not a summary")
            c.add_argument("--overlay", help="write the photo with the best mask of each object drawn over it (PNG)")
            c.add_argument("--cutout", help="write the objects with an alpha channel (PNG)")
            add_mask_format_args(c)

    pr = sub.add_parser("predict", help="label every object in an image from the labelled examples")
    _api_args(pr, cmd_predict)
    pr.add_argument("--image", required=True)
    pr.add_argument("--collection", help="label from this collection's examples (default: default, unless --classes)")
    pr.add_argument("--classes", help="comma-separated class names: every instance of each (a concept model: SAM 3)")
    pr.add_argument("--model", help="model_id of a served model (default: the service's default)")
    pr.add_argument("--score-thresh", type=float, help="--classes: keep instances scoring at least this")
    pr.add_argument("--top-k", type=int, default=5)
    pr.add_argument("--min-score", type=float, default=0.0)
    pr.add_argument("--max-instances", type=int, default=20)
    pr.add_argument("--points-per-side", type=int, help="automatic-mask grid (default: the service's)")
    pr.add_argument("--json", action="store_true", help="print the full JSON response")
    add_mask_format_args(pr)

    ex = sub.add_parser("examples", help="add or list labelled examples")
    exsub = ex.add_subparsers(dest="action", required=True)
    add = exsub.add_parser("add", help="store one labelled object given by a box and/or points")
    _api_args(add, cmd_examples)
    add.add_argument("--image", required=True)
    add.add_argument("--box", type=parse_box)
    add.add_argument("--point", type=parse_point, action="append")
    add.add_argument("--label", required=True)
    add.add_argument("--collection", default="default")
    vd = sub.add_parser("video", help="track objects through a clip (MP4 or a folder of frames)")
    _api_args(vd, cmd_video)
    clip = vd.add_mutually_exclusive_group(required=True)
    clip.add_argument("--video", help="MP4 file (sent as multipart)")
    clip.add_argument("--frames", help="folder of JPEG/PNG frames, in numeric order (sent as base64 JSON)")
    vd.add_argument("--box", type=parse_obj_box, action="append", help="OBJ:x0,y0,x1,y1 in pixels; one per object")
    vd.add_argument("--point", type=parse_obj_point, action="append", help="OBJ:x,y[,fg|bg] in pixels; repeat")
    vd.add_argument("--frame-index", type=int, default=0, help="the frame the prompts are on (default 0)")
    vd.add_argument("--start-frame", type=int, help="frame to track from (default: the prompted frame)")
    vd.add_argument("--max-frames", type=int, help="frames to track in each direction, the start frame included")
    vd.add_argument("--reverse", action="store_true", help="also track backward from the start frame")
    vd.add_argument("--out", help="write the result (all frames' masks as COCO RLE) as JSON here")
    vd.add_argument("--overlay-video", help="write the clip with the masks drawn over it (MP4)")
    vd.add_argument("--fps", type=float, default=24.0, help="frame rate of --overlay-video")

    lst = exsub.add_parser("list", help="examples per label")
    _api_args(lst, cmd_examples)
    lst.add_argument("--collection", default="default")
    add_file_commands(exsub, _api_args, _client, _fail)

    from serve_app.cli import labelstudio
    from serve_app.cli.video_session import add_command
    from serve_app.offline.cli import add_commands

    add_command(sub, _api_args)
    add_commands(sub)
    labelstudio.add_command(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    """Run ``samgraph`` with ``argv`` (default ``sys.argv[1:]``); the exit code."""
    args = make_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
