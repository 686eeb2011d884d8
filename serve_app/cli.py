"""``samgraph`` command line: run the service, manage weights, and call the HTTP API.

    samgraph serve [--config configs/serve.yaml]
    samgraph models list | pull [NAME]
    samgraph ping --api URL
    samgraph segment --api URL --image photo.jpg [--box x0,y0,x1,y1]... [--point x,y[,fg|bg]]...
                     [--text "a red car"]... [--out result.json] [--overlay overlay.png] [--cutout cutout.png]
    samgraph predict --api URL --image photo.jpg [--collection NAME] [--top-k 5] [--json]
    samgraph examples add --api URL --image photo.jpg (--box x0,y0,x1,y1 | --point x,y ...) --label NAME
    samgraph examples list --api URL [--collection NAME]
    samgraph batch --input DIR|annotations.json --output OUT_DIR [...]    (serve_app/offline/cli.py)
    samgraph eval --coco annotations.json --images DIR --prompt box|center-point [--output report.json]
    samgraph video --api URL (--video clip.mp4 | --frames DIR) --box OBJ:x0,y0,x1,y1 [--point OBJ:x,y[,fg|bg]]...
                   [--frame-index N] [--start-frame N] [--max-frames N] [--reverse] [--out masks.json]
                   [--overlay-video out.mp4]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

DEFAULT_API = "http://127.0.0.1:8000"


def _parse_box(text: str) -> list[float]:
    try:
        box = [float(v) for v in text.split(",")]
    except ValueError:
        box = []
    if len(box) != 4:
        raise argparse.ArgumentTypeError(f"box must be x0,y0,x1,y1; got {text!r}")
    return box


def _parse_point(text: str) -> list:
    parts = text.split(",")
    try:
        if len(parts) not in (2, 3):
            raise ValueError
        label = parts[2].strip().lower() if len(parts) == 3 else "fg"
        if label not in ("fg", "bg", "1", "0"):
            raise ValueError
        return [float(parts[0]), float(parts[1]), 1 if label in ("fg", "1") else 0]
    except ValueError:
        raise argparse.ArgumentTypeError(f"point must be x,y or x,y,fg|bg; got {text!r}") from None


def _parse_obj(text: str, parse, what: str) -> tuple[int, list]:
    """``OBJ:rest`` -> (obj_id, parse(rest)); ``rest`` alone is object 0."""
    obj, sep, rest = text.partition(":")
    if not sep:
        obj, rest = "0", text
    try:
        obj_id = int(obj)
        if obj_id < 0:
            raise ValueError
    except ValueError:
        raise argparse.ArgumentTypeError(f"{what} must start with an object id >= 0, as OBJ:...; got {text!r}") from None
    return obj_id, parse(rest)


def _parse_obj_box(text: str) -> tuple[int, list[float]]:
    return _parse_obj(text, _parse_box, "--box")


def _parse_obj_point(text: str) -> tuple[int, list]:
    return _parse_obj(text, _parse_point, "--point")


def build_video_objects(boxes: list[tuple[int, list[float]]], points: list[tuple[int, list]], frame_index: int = 0) -> list[dict]:
    """CLI flags -> ``objects`` of /v1/segment/video: per object id (in order of first mention) at most one
    box and any number of points, all on ``frame_index``.

    Raises:
        ValueError: two boxes for one object.
    """
    objects: dict[int, dict] = {}
    for obj_id, box in boxes:
        prompt = objects.setdefault(obj_id, {"frame_index": frame_index})
        if "box_xyxy" in prompt:
            raise ValueError(f"object {obj_id} has two --box; give one box per object")
        prompt["box_xyxy"] = box
    for obj_id, point in points:
        objects.setdefault(obj_id, {"frame_index": frame_index}).setdefault("points", []).append(point)
    return [{"obj_id": obj_id, "prompts": [prompt]} for obj_id, prompt in objects.items()]


def frame_files(folder: Path) -> list[Path]:
    """JPEG/PNG files of a folder in frame order: by number where every stem is one (as sam2 sorts
    ``00000.jpg``...), else by name."""
    files = [p for p in folder.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png")]
    if all(p.stem.isdigit() for p in files):
        return sorted(files, key=lambda p: int(p.stem))
    return sorted(files)


def build_prompts(boxes: list[list[float]], points: list[list]) -> list[dict]:
    """CLI flags -> ``prompts``: the first box and all points are one object, further boxes more objects."""
    prompts: list[dict] = []
    if boxes or points:
        first: dict = {}
        if boxes:
            first["box_xyxy"] = boxes[0]
        if points:
            first["points"] = points
        prompts.append(first)
        prompts.extend({"box_xyxy": b} for b in boxes[1:])
    return prompts


def _client(api: str, timeout_s: float):
    import httpx

    return httpx.Client(base_url=api.rstrip("/"), timeout=timeout_s)


def _fail(response) -> int:
    try:
        err = response.json()["error"]
        where = f" (field {err['field']})" if err.get("field") else ""
        print(f"error {response.status_code} {err['code']}: {err['message']}{where}", file=sys.stderr)
    except Exception:
        print(f"error {response.status_code}: {response.text[:500]}", file=sys.stderr)
    return 1


def cmd_serve(args: argparse.Namespace) -> int:
    """Check SAM 2 and CLIP weights and the data dir first (exit 1 with the reason, before Ray starts),
    then ``serve run CONFIG``."""
    import yaml

    from models.embedder import ClipSpec
    from serve_app.clip_weights import ClipWeightsSource, preflight_clip
    from serve_app.config import AppArgs
    from serve_app.vectorstore import StoreError, preflight_store
    from serve_app.weights import WeightsError, WeightsSource, preflight

    config = Path(args.config)
    if not config.is_file():
        print(f"config {config} not found (run from the samgraph checkout, or pass --config)", file=sys.stderr)
        return 2
    for app in yaml.safe_load(config.read_text()).get("applications", []):
        if app.get("import_path") == "serve_app.app:build_app":
            try:
                cfg = AppArgs.model_validate(app.get("args") or {})
                preflight(cfg.model_id, WeightsSource.resolve(cfg.weights, cfg.checkpoint, cfg.seed))
                clip_source = ClipWeightsSource.resolve(cfg.clip.weights, cfg.clip.checkpoint, cfg.seed)
                preflight_clip(ClipSpec(cfg.clip.model_name, cfg.clip.pretrained), clip_source)
                preflight_store(cfg.retriever.path, cfg.retriever.url, cfg.retriever.api_key)
            except (ValueError, WeightsError, StoreError) as e:
                print(f"error: {e}", file=sys.stderr)
                return 1
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    os.execvp("serve", ["serve", "run", str(config)])
    return 0  # not reached


def cmd_models(args: argparse.Namespace) -> int:
    from models.registry import DEFAULT_SAM2_MODEL, get_sam2_checkpoint, list_sam2_models
    from serve_app.weights import WeightsError, cache_dir, pull_checkpoint

    if args.action == "list":
        print(f"cache dir: {cache_dir()}")
        print(f"{'name':<24} {'params':>8} {'size':>9}  {'cached':<6}  sha256")
        for name in list_sam2_models():
            spec = get_sam2_checkpoint(name)
            cached = "yes" if (cache_dir() / spec.filename).exists() else "no"
            size = f"{spec.size_bytes / 1e6:.0f} MB" if spec.size_bytes else "?"
            print(f"{name:<24} {spec.params_m:>7.1f}M {size:>9}  {cached:<6}  {spec.sha256 or '?'}")
        return 0
    try:
        spec = get_sam2_checkpoint(args.name or DEFAULT_SAM2_MODEL)
        path = pull_checkpoint(spec, progress=True)
    except (ValueError, WeightsError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"{spec.name}: {path} (sha256 verified)")
    return 0


def cmd_ping(args: argparse.Namespace) -> int:
    import httpx

    try:
        with _client(args.api, args.timeout) as c:
            r = c.get("/readyz")
    except httpx.HTTPError as e:
        print(f"error: cannot reach {args.api}: {e}", file=sys.stderr)
        return 1
    print(json.dumps(r.json(), indent=2))
    return 0 if r.status_code == 200 else 1


def cmd_segment(args: argparse.Namespace) -> int:
    request = {"prompts": build_prompts(args.box or [], args.point or []) + [{"text": t} for t in args.text or []], "mask_format": "rle"}
    if args.multimask is not None:
        request["multimask_output"] = args.multimask
    r = _post_image(args, "/v1/segment", request)
    if isinstance(r, int):
        return r
    result = r.json()
    text = json.dumps(result, indent=2)
    if args.out:
        Path(args.out).write_text(text)
    summary = {
        "image_id": result["image_id"],
        "encode_cached": result["encode_cached"],
        "timing_ms": {k: round(v, 1) for k, v in result["timing_ms"].items()},
        "objects": [
            [{k: m[k] for k in ("predicted_iou", "stability_score", "area_px", "bbox_xyxy")} for m in res["masks"]]
            for res in result["results"]
        ],
    }
    print(text if args.json else json.dumps(summary, indent=2))
    if args.overlay or args.cutout:
        from serve_app.render import save_cutout, save_overlay

        image_bytes = Path(args.image).read_bytes()
        if args.overlay:
            save_overlay(image_bytes, result, args.overlay)
        if args.cutout:
            save_cutout(image_bytes, result, args.cutout)
    return 0


def _post_image(args: argparse.Namespace, path: str, request: dict):
    """POST ``request`` with the image file as multipart; returns the response or an exit code."""
    import httpx

    image_path = Path(args.image)
    try:
        image_bytes = image_path.read_bytes()
    except OSError as e:
        print(f"error: cannot read {image_path}: {e}", file=sys.stderr)
        return 2
    try:
        with _client(args.api, args.timeout) as c:
            r = c.post(path, files={"image": (image_path.name, image_bytes)}, data={"request": json.dumps(request)})
    except httpx.HTTPError as e:
        print(f"error: cannot reach {args.api}: {e}", file=sys.stderr)
        return 1
    if r.status_code != 200:
        return _fail(r)
    for w in r.json().get("warnings", []):
        print(f"warning: {w}", file=sys.stderr)
    return r


def cmd_predict(args: argparse.Namespace) -> int:
    request = {"collection": args.collection, "top_k": args.top_k, "min_score": args.min_score, "max_instances": args.max_instances}
    if args.points_per_side:
        request["amg"] = {"points_per_side": args.points_per_side}
    r = _post_image(args, "/v1/predict", request)
    if isinstance(r, int):
        return r
    result = r.json()
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    print(f"{len(result['instances'])} instances in {result['timing_ms']['total']:.0f} ms ({result['image_id'][:12]}...)")
    print(f"{'#':>3} {'label':<20} {'confidence':>10} {'pred_iou':>8} {'area_px':>9}  bbox_xyxy")
    for i, inst in enumerate(result["instances"]):
        label = inst["label"] if inst["label"] is not None else "-"
        print(f"{i:>3} {label:<20} {inst['confidence']:>10.3f} {inst['predicted_iou']:>8.3f} {inst['area_px']:>9}  {inst['bbox_xyxy']}")
    return 0


def cmd_examples(args: argparse.Namespace) -> int:
    import httpx

    if args.action == "add":
        prompt = build_prompts([args.box] if args.box else [], args.point or [])
        if not prompt:
            print("error: give --box and/or --point for the object", file=sys.stderr)
            return 2
        r = _post_image(args, "/v1/examples", {**prompt[0], "label": args.label, "collection": args.collection})
        if isinstance(r, int):
            return r
        out = r.json()
        print(json.dumps({k: out[k] for k in ("ids", "collection", "label", "area_px")}, indent=2))
        return 0
    try:
        with _client(args.api, args.timeout) as c:
            r = c.get("/v1/examples", params={"collection": args.collection})
    except httpx.HTTPError as e:
        print(f"error: cannot reach {args.api}: {e}", file=sys.stderr)
        return 1
    if r.status_code != 200:
        return _fail(r)
    out = r.json()
    print(f"collection {out['collection']}: {out['total']} examples, {out['dim']}-d")
    for label, n in sorted(out["counts"].items()):
        print(f"  {label:<30} {n:>6}")
    return 0


def cmd_video(args: argparse.Namespace) -> int:
    """Stream /v1/segment/video, report progress on stderr, write the result as one JSON document."""
    import base64

    import httpx

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
            send = {"files": {"video": (Path(args.video).name, Path(args.video).read_bytes())}, "data": {"request": json.dumps(request)}}
        else:
            files = frame_files(Path(args.frames))
            if not files:
                print(f"error: no .jpg/.jpeg/.png frames in {args.frames}", file=sys.stderr)
                return 2
            request["frames"] = [{"base64": base64.b64encode(p.read_bytes()).decode("ascii")} for p in files]
            send = {"json": request}
    except OSError as e:
        print(f"error: cannot read the clip: {e}", file=sys.stderr)
        return 2
    head, frames, end = None, [], None
    try:
        with _client(args.api, args.timeout) as c, c.stream("POST", "/v1/segment/video", **send) as r:
            if r.status_code != 200:
                r.read()
                return _fail(r)
            for line in r.iter_lines():
                if not line:
                    continue
                rec = json.loads(line)
                kind = rec.pop("type")
                if kind == "start":
                    head = rec
                    for w in rec.get("warnings", []):
                        print(f"warning: {w}", file=sys.stderr)
                elif kind == "frame":
                    frames.append(rec)
                    areas = ", ".join(f"{o['obj_id']}: {o['area_px']} px" for o in rec["objects"])
                    print(f"frame {rec['frame_index']:>5} ({len(frames)} done) {rec['propagate_ms']:8.0f} ms  {areas}", file=sys.stderr)
                elif kind == "end":
                    end = rec
                else:
                    print(f"error: {rec.get('error', rec)}", file=sys.stderr)
                    return 1
    except httpx.HTTPError as e:
        print(f"error: cannot reach {args.api}: {e}", file=sys.stderr)
        return 1
    if head is None or end is None:
        print("error: the stream ended early", file=sys.stderr)
        return 1
    frames.sort(key=lambda f: f["frame_index"])
    result = {**head, "frames": frames, "timing_ms": end["timing_ms"]}
    text = json.dumps(result, indent=2)
    if args.out:
        Path(args.out).write_text(text)
    t = end["timing_ms"]
    print(json.dumps({"frames": len(frames), "obj_ids": head["obj_ids"], "timing_ms": {k: round(v, 1) for k, v in t.items()}}, indent=2))
    if args.overlay_video:
        _write_overlay_video(args, result)
    return 0


def _write_overlay_video(args: argparse.Namespace, result: dict) -> None:
    import numpy as np
    from PIL import Image

    from models.masks import decode_rle
    from serve_app.video import decode_video, encode_video, overlay_frames

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
    c.set_defaults(func=func)


def make_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="samgraph", description="SAM 2 segmentation served as a Ray Serve graph")
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("serve", help="run the service: `serve run CONFIG`")
    s.add_argument("--config", default="configs/serve.yaml")
    s.set_defaults(func=cmd_serve)

    m = sub.add_parser("models", help="list or download SAM 2.1 checkpoints")
    msub = m.add_subparsers(dest="action", required=True)
    msub.add_parser("list", help="registered checkpoints and whether they are cached")
    pull = msub.add_parser("pull", help="download and verify a checkpoint into the cache dir")
    pull.add_argument("name", nargs="?", help="registry name (default sam2.1_hiera_tiny)")
    m.set_defaults(func=cmd_models)

    for name, func, helptext in (("ping", cmd_ping, "readiness of a running service"), ("segment", cmd_segment, "segment an image")):
        c = sub.add_parser(name, help=helptext)
        _api_args(c, func)
        if name == "segment":
            c.add_argument("--text", action="append", help="a text prompt, e.g. 'the red car' (ranked automatic masks)")
            c.add_argument("--image", required=True, help="image file (JPEG, PNG, ...)")
            c.add_argument("--box", type=_parse_box, action="append", help="x0,y0,x1,y1 in pixels; repeat for more objects")
            c.add_argument("--point", type=_parse_point, action="append", help="x,y[,fg|bg] in pixels (default fg)")
            c.add_argument("--multimask", action=argparse.BooleanOptionalAction, default=None)
            c.add_argument("--out", help="write the full JSON response here")
            c.add_argument("--json", action="store_true", help="print the full JSON response, not a summary")
            c.add_argument("--overlay", help="write the photo with the best mask of each object drawn over it (PNG)")
            c.add_argument("--cutout", help="write the objects with an alpha channel (PNG)")

    pr = sub.add_parser("predict", help="label every object in an image from the labelled examples")
    _api_args(pr, cmd_predict)
    pr.add_argument("--image", required=True)
    pr.add_argument("--collection", default="default")
    pr.add_argument("--top-k", type=int, default=5)
    pr.add_argument("--min-score", type=float, default=0.0)
    pr.add_argument("--max-instances", type=int, default=20)
    pr.add_argument("--points-per-side", type=int, help="automatic-mask grid (default: the service's)")
    pr.add_argument("--json", action="store_true", help="print the full JSON response")

    ex = sub.add_parser("examples", help="add or list labelled examples")
    exsub = ex.add_subparsers(dest="action", required=True)
    add = exsub.add_parser("add", help="store one labelled object given by a box and/or points")
    _api_args(add, cmd_examples)
    add.add_argument("--image", required=True)
    add.add_argument("--box", type=_parse_box)
    add.add_argument("--point", type=_parse_point, action="append")
    add.add_argument("--label", required=True)
    add.add_argument("--collection", default="default")
    vd = sub.add_parser("video", help="track objects through a clip (MP4 or a folder of frames)")
    _api_args(vd, cmd_video)
    clip = vd.add_mutually_exclusive_group(required=True)
    clip.add_argument("--video", help="MP4 file (sent as multipart)")
    clip.add_argument("--frames", help="folder of JPEG/PNG frames, in numeric order (sent as base64 JSON)")
    vd.add_argument("--box", type=_parse_obj_box, action="append", help="OBJ:x0,y0,x1,y1 in pixels; one per object")
    vd.add_argument("--point", type=_parse_obj_point, action="append", help="OBJ:x,y[,fg|bg] in pixels; repeat")
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

    from serve_app.offline.cli import add_commands

    add_commands(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    args = make_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
