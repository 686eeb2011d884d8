"""``samgraph video-session``: the interactive video-session flow from the shell, one verb per call.

    samgraph video-session open --api URL (--video clip.mp4 | --frames DIR)        -> the session (JSON)
    samgraph video-session prompt --api URL SESSION --frame-index N --obj-id K
                                  (--box x0,y0,x1,y1 [--point x,y[,fg|bg]]... | --point ... | --mask-rle FILE.json)
                                  [--keep-points] [--out answer.json]
    samgraph video-session propagate --api URL SESSION [--start-frame N] [--max-frames N]
                                     [--direction forward|backward|both] [--out masks.json]
    samgraph video-session cancel|info|reset|close --api URL SESSION
    samgraph video-session remove --api URL SESSION OBJ_ID

Each prints its answer as JSON on stdout (``propagate``: progress on stderr, a summary on stdout and all
frames' masks in ``--out``). See docs/video.md, "Sessions".
"""

from __future__ import annotations

import argparse
import base64
import json
import sys
from pathlib import Path

from serve_app.cli.flags import frame_files, parse_box, parse_point
from serve_app.client import ApiResponseError, ApiStreamError, ApiUnreachable, SamgraphClient

VERBS = ("open", "prompt", "propagate", "cancel", "info", "reset", "close", "remove")


def frame_progress(rec: dict, done: int) -> str:
    """One line of progress for a tracked ``frame`` record: its index, how many are done, its time, and
    each object's mask area."""
    areas = ", ".join(f"{o['obj_id']}: {o['area_px']} px" for o in rec["objects"])
    return f"frame {rec['frame_index']:>5} ({done} done) {rec['propagate_ms']:8.0f} ms  {areas}"


def _prompt_body(args: argparse.Namespace) -> dict:
    body: dict = {"frame_index": args.frame_index, "obj_id": args.obj_id, "clear_old_points": not args.keep_points}
    if args.box is not None:
        body["box_xyxy"] = args.box
    if args.point:
        body["points"] = args.point
    if args.mask_rle:
        body["mask_rle"] = json.loads(Path(args.mask_rle).read_text())
    return body


def _clip(args: argparse.Namespace) -> tuple[dict, dict]:
    """(request body, multipart file arguments) of ``open``."""
    if args.video:
        return {}, {"video": Path(args.video).read_bytes(), "filename": Path(args.video).name}
    files = frame_files(Path(args.frames))
    if not files:
        raise OSError(f"no .jpg/.jpeg/.png frames in {args.frames}")
    return {"frames": [{"base64": base64.b64encode(p.read_bytes()).decode("ascii")} for p in files]}, {}


def _propagate(api: SamgraphClient, args: argparse.Namespace) -> dict:
    request = {"direction": args.direction}
    for key in ("start_frame", "max_frames"):
        if getattr(args, key) is not None:
            request[key] = getattr(args, key)
    head, frames, end = {}, [], {}
    for rec in api.propagate_session(args.session_id, request):
        kind = rec.pop("type")
        if kind == "start":
            head = rec
        elif kind == "frame":
            frames.append(rec)
            print(frame_progress(rec, len(frames)), file=sys.stderr)
        else:
            end = rec
    frames.sort(key=lambda f: f["frame_index"])
    if args.out:
        Path(args.out).write_text(json.dumps({**head, "frames": frames, "timing_ms": end["timing_ms"]}, indent=2))
    return {
        "session_id": args.session_id,
        "frames": len(frames),
        "obj_ids": head.get("obj_ids"),
        "timing_ms": end["timing_ms"],
    }


def cmd_video_session(args: argparse.Namespace) -> int:
    """Run one verb of the session flow; print its answer as JSON."""
    sid = getattr(args, "session_id", None)
    try:
        with SamgraphClient(args.api, args.timeout, api_key=args.api_key) as api:
            if args.verb == "open":
                try:
                    request, send = _clip(args)
                except OSError as e:
                    print(f"error: cannot read the clip: {e}", file=sys.stderr)
                    return 2
                out = api.open_session(request, **send)
            elif args.verb == "prompt":
                if args.box is None and not args.point and not args.mask_rle:
                    print("error: give --box, --point or --mask-rle", file=sys.stderr)
                    return 2
                out = api.session_prompt(sid, _prompt_body(args))
            elif args.verb == "propagate":
                out = _propagate(api, args)
            elif args.verb == "remove":
                out = api.remove_session_object(sid, args.obj_id)
            else:
                verb = {
                    "cancel": api.cancel_propagation,
                    "info": api.session_info,
                    "reset": api.reset_session,
                    "close": api.close_session,
                }
                out = verb[args.verb](sid)
    except (ApiUnreachable, ApiResponseError, ApiStreamError) as e:
        print(f"error {e}" if isinstance(e, ApiResponseError) else f"error: {e}", file=sys.stderr)
        return 1
    text = json.dumps(out, indent=2)
    if args.verb == "prompt" and args.out:
        Path(args.out).write_text(text)
    print(text)
    return 0


def add_command(sub, api_args) -> None:
    """Add ``video-session`` and its verbs to the ``samgraph`` sub-parsers; ``api_args(parser, func)``
    adds ``--api``, ``--timeout`` and ``--api-key``."""
    vs = sub.add_parser("video-session", help="an interactive video session: open, prompt, propagate, correct, close")
    verbs = vs.add_subparsers(dest="verb", required=True)
    for verb in VERBS:
        v = verbs.add_parser(verb)
        api_args(v, cmd_video_session)
        if verb == "open":
            clip = v.add_mutually_exclusive_group(required=True)
            clip.add_argument("--video", help="MP4 file (sent as multipart)")
            clip.add_argument("--frames", help="folder of JPEG/PNG frames, in numeric order")
            continue
        v.add_argument("session_id", help="the session_id that open printed")
        if verb == "prompt":
            v.add_argument("--frame-index", type=int, required=True)
            v.add_argument("--obj-id", type=int, required=True)
            v.add_argument("--box", type=parse_box, help="x0,y0,x1,y1 in pixels")
            v.add_argument("--point", type=parse_point, action="append", help="x,y[,fg|bg] in pixels; repeat")
            v.add_argument("--mask-rle", help="a JSON file holding one COCO RLE {size, counts} of the frame's size")
            v.add_argument(
                "--keep-points",
                action="store_true",
                help="add to the object's clicks on this frame (clear_old_points false)",
            )
            v.add_argument("--out", help="write the answer here too")
        elif verb == "propagate":
            v.add_argument("--start-frame", type=int)
            v.add_argument("--max-frames", type=int)
            v.add_argument("--direction", choices=("forward", "backward", "both"), default="forward")
            v.add_argument("--out", help="write every frame's masks (COCO RLE) as JSON here")
        elif verb == "remove":
            v.add_argument("obj_id", type=int)
