"""``samgraph`` command-line flags -> API request bodies: argparse types for boxes and points, the
``prompts`` of ``/v1/segment`` and ``/v1/examples``, the ``objects`` of ``/v1/segment/video``, and the
frame order of a folder of frames.

Coordinates are pixels of the original image (or frame); boxes are XYXY.
"""

from __future__ import annotations

import argparse
from pathlib import Path


def parse_box(text: str) -> list[float]:
    """``--box x0,y0,x1,y1`` (pixels) -> ``[x0, y0, x1, y1]``.

    Raises:
        argparse.ArgumentTypeError: not four numbers.
    """
    try:
        box = [float(v) for v in text.split(",")]
    except ValueError:
        box = []
    if len(box) != 4:
        raise argparse.ArgumentTypeError(f"box must be x0,y0,x1,y1; got {text!r}")
    return box


def parse_point(text: str) -> list:
    """``--point x,y[,fg|bg]`` (pixels; also 1 or 0) -> ``[x, y, label]``, label 1 foreground (default), 0
    background.

    Raises:
        argparse.ArgumentTypeError: not two numbers and an optional label.
    """
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
        raise argparse.ArgumentTypeError(
            f"{what} must start with an object id >= 0, as OBJ:...; got {text!r}"
        ) from None
    return obj_id, parse(rest)


def parse_obj_box(text: str) -> tuple[int, list[float]]:
    """``--box OBJ:x0,y0,x1,y1`` of ``samgraph video`` -> ``(obj_id, box)``; without ``OBJ:``, object 0.

    Raises:
        argparse.ArgumentTypeError: a bad object id or box.
    """
    return _parse_obj(text, parse_box, "--box")


def parse_obj_point(text: str) -> tuple[int, list]:
    """``--point OBJ:x,y[,fg|bg]`` of ``samgraph video`` -> ``(obj_id, [x, y, label])``; without ``OBJ:``,
    object 0.

    Raises:
        argparse.ArgumentTypeError: a bad object id or point.
    """
    return _parse_obj(text, parse_point, "--point")


def build_video_objects(
    boxes: list[tuple[int, list[float]]], points: list[tuple[int, list]], frame_index: int = 0
) -> list[dict]:
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


def add_mask_format_args(parser: argparse.ArgumentParser) -> None:
    """``--mask-format`` and ``--polygon-tolerance`` (see :func:`mask_format_fields`)."""
    parser.add_argument(
        "--mask-format",
        choices=("rle", "png", "polygon", "none"),
        default="rle",
        help="how masks come back (default rle)",
    )
    parser.add_argument(
        "--polygon-tolerance", type=float, help="polygon simplification in pixels (default 0: the exact outline)"
    )


def mask_format_fields(args: argparse.Namespace) -> dict:
    """The request's ``mask_format`` (and ``polygon_tolerance_px``) from :func:`add_mask_format_args`'s flags."""
    out = {"mask_format": args.mask_format}
    if args.polygon_tolerance is not None:
        out["polygon_tolerance_px"] = args.polygon_tolerance
    return out
