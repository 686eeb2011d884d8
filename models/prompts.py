"""The prompt vocabulary below HTTP: what a caller asks SAM 2 to segment in one image.

* :class:`Prompt`: one object as a caller gives it: a box, clicks, the low-res logits of an earlier
  answer, or a text alone, with its multimask choice. The HTTP schemas (``serve_app/ingress/schemas.py``)
  convert their bodies into it; the in-process API (``serve_app/local.py``) and the offline job
  (``serve_app/offline/``) build it directly, from Python values or from JSON-like dicts
  (:meth:`Prompt.from_dict`), with the same rules and messages that name the field.
* :class:`PromptSpec`: the geometric part of a prompt, as the mask decoder takes it
  (:meth:`Prompt.to_spec`, :func:`decoder_prompts`); :func:`centre_click` is the prompt of a request
  with none.

Video prompts (one object on one frame, or a mask) are :class:`models.sam2_video_types.FramePrompt`.

Coordinates are pixels of the original image (after EXIF orientation), (x, y) with x to the right and
y down; boxes are XYXY. Rules that need the image's size (coordinates inside the image) are checked by
the caller once the size is known (``deployments.contracts.check_in_image``).

Pure numpy: no torch, no I/O.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from models.masks import decode_logits_base64

#: Side of the low-resolution mask logits the decoder returns and accepts as ``mask_input``.
LOW_RES_MASK_SIZE = 256
#: Point labels as callers write them -> SAM's labels (1 foreground, 0 background).
POINT_LABELS = {1: 1, 0: 0, "fg": 1, "bg": 0}


class PromptError(ValueError):
    """A prompt that breaks a rule; ``field`` names the part at fault (``box_xyxy``, ``prompts[0].points``).

    ``str(error)`` is ``"<field>: <message>"``.
    """

    def __init__(self, message: str, field: str) -> None:
        super().__init__(f"{field}: {message}")
        self.message, self.field = message, field

    def under(self, prefix: str | None) -> PromptError:
        """The same error with its field under ``prefix`` (``prompts[2]`` -> ``prompts[2].box_xyxy``)."""
        return PromptError(self.message, f"{prefix}.{self.field}") if prefix else self


def check_box(box: Sequence[float] | None) -> list[float] | None:
    """The ``box_xyxy`` rule: four finite numbers [x0, y0, x1, y1] (pixels) with x1 > x0 and y1 > y0.

    Returns:
        The box as four Python floats, or None for None.

    Raises:
        ValueError: the rule broken, e.g. ``x1 must be greater than x0 (box is [x0, y0, x1, y1])``.
    """
    if box is None:
        return None
    if isinstance(box, (str, bytes)) or not isinstance(box, (Sequence, np.ndarray)):
        raise ValueError(f"box must be 4 numbers [x0, y0, x1, y1]; got {type(box).__name__}")
    values = list(np.asarray(box).reshape(-1)) if isinstance(box, np.ndarray) else list(box)
    if len(values) != 4:
        raise ValueError(f"box must be 4 numbers [x0, y0, x1, y1]; got {len(values)}")
    if any(isinstance(v, bool) or not isinstance(v, (int, float, np.number)) or not math.isfinite(v) for v in values):
        raise ValueError("box values must be finite numbers")
    x0, y0, x1, y1 = (float(v) for v in values)
    if not x1 > x0:
        raise ValueError("x1 must be greater than x0 (box is [x0, y0, x1, y1])")
    if not y1 > y0:
        raise ValueError("y1 must be greater than y0 (box is [x0, y0, x1, y1])")
    return [x0, y0, x1, y1]


def check_points(points: Sequence[Sequence[Any]] | None) -> list[list[float]] | None:
    """The ``points`` rule: a non-empty list of [x, y, label], finite x and y (pixels), label 1 or
    ``"fg"`` (foreground), 0 or ``"bg"`` (background).

    Returns:
        ``[[x, y, 1 | 0], ...]`` (x, y as floats), or None for None.

    Raises:
        ValueError: the rule broken, naming the point, e.g. ``point 1: label must be 1, 0, 'fg' or 'bg'``.
    """
    if points is None:
        return None
    if isinstance(points, (str, bytes)) or not isinstance(points, (Sequence, np.ndarray)):
        raise ValueError(f"points must be a list of [x, y, label]; got {type(points).__name__}")
    if len(points) == 0:
        raise ValueError("points must not be empty; leave it out instead")
    out = []
    for i, p in enumerate(points):
        if isinstance(p, (str, bytes)) or not isinstance(p, (Sequence, np.ndarray)) or len(p) != 3:
            raise ValueError(f"point {i} must be [x, y, label]")
        x, y, label = p
        for name, c in (("x", x), ("y", y)):
            if isinstance(c, bool) or not isinstance(c, (int, float, np.number)) or not math.isfinite(c):
                raise ValueError(f"point {i}: {name} must be a finite number")
        if isinstance(label, np.integer):
            label = int(label)
        if isinstance(label, bool) or not isinstance(label, (int, str)) or label not in POINT_LABELS:
            raise ValueError(f"point {i}: label must be 1, 0, 'fg' or 'bg'")
        out.append([float(x), float(y), POINT_LABELS[label]])
    return out


def check_points_and_box(
    point_coords: np.ndarray | None, point_labels: np.ndarray | None, box_xyxy: np.ndarray | None, n: str = "N"
) -> None:
    """The shapes of a geometric prompt: ``point_coords`` (n, 2) with ``point_labels`` (n,), given together,
    and ``box_xyxy`` (4,). Shared by :class:`PromptSpec` and :class:`models.sam2_video_types.FramePrompt`.

    Args:
        n: the name of the point count in the message (``"N"``, ``"K"``).

    Raises:
        ValueError: points without labels (or the reverse), or a shape that does not fit.
    """
    if (point_coords is None) != (point_labels is None):
        raise ValueError("point_coords and point_labels must be given together")
    if point_coords is not None and (
        point_coords.ndim != 2 or point_coords.shape[1] != 2 or point_labels.shape != (point_coords.shape[0],)
    ):
        raise ValueError(f"point_coords must be ({n}, 2) and point_labels ({n},)")
    if box_xyxy is not None and box_xyxy.shape != (4,):
        raise ValueError("box_xyxy must have shape (4,)")


@dataclass(frozen=True)
class PromptSpec:
    """One object's geometric prompt, as the mask decoder takes it (already validated).

    Attributes:
        point_coords: (N, 2) float32 (x, y) pixels of the original image, or None.
        point_labels: (N,) int32, 1 foreground, 0 background; given iff ``point_coords`` is.
        box_xyxy: (4,) float32 pixels of the original image, or None.
        mask_input: (256, 256) float32 low-res logits from an earlier prediction, or None.

    Raises:
        ValueError: shapes that do not fit, or no prompt at all.
    """

    point_coords: np.ndarray | None = None
    point_labels: np.ndarray | None = None
    box_xyxy: np.ndarray | None = None
    mask_input: np.ndarray | None = None

    def __post_init__(self) -> None:
        check_points_and_box(self.point_coords, self.point_labels, self.box_xyxy)
        if self.mask_input is not None and self.mask_input.shape != (LOW_RES_MASK_SIZE,) * 2:
            raise ValueError(f"mask_input must be ({LOW_RES_MASK_SIZE}, {LOW_RES_MASK_SIZE})")
        if self.point_coords is None and self.box_xyxy is None and self.mask_input is None:
            raise ValueError("a prompt needs points, a box or a mask_input")

    @property
    def num_tokens(self) -> int:
        """Number of sparse prompt points the prompt encoder sees (a box counts as two)."""
        n = 0 if self.point_coords is None else self.point_coords.shape[0]
        return n + (2 if self.box_xyxy is not None else 0)


def centre_click(width: int, height: int) -> PromptSpec:
    """The prompt of a request with none: one foreground click at the centre of a ``width`` x ``height``
    image (pixels), answered with SAM's three candidates (multimask)."""
    return PromptSpec(
        point_coords=np.array([[width / 2, height / 2]], dtype=np.float32), point_labels=np.ones(1, np.int32)
    )


@dataclass(frozen=True, eq=False)
class Prompt:
    """One object to segment: a box, clicks, both, and/or the low-res logits of an earlier answer; or a
    text alone (matched against the image's automatic masks by CLIP, not given to the decoder).

    Sequences are accepted and stored as arrays of the dtypes below.

    Attributes:
        box_xyxy: (4,) float32 [x0, y0, x1, y1], pixels of the original image, x1 > x0 and y1 > y0; or None.
        point_coords: (N, 2) float32 (x, y) clicks, pixels of the original image, N >= 1; or None.
        point_labels: (N,) int32, 1 foreground / 0 background; given iff ``point_coords`` is.
        mask_input: (256, 256) float32 low-res logits of an earlier answer (``low_res_logits``), or None.
        text: a non-blank description (``"a red car"``), or None; excludes every other prompt.
        multimask_output: True for SAM's three candidate masks, False for one; None: SAM's advice
            (:attr:`multimask`).

    Raises:
        PromptError: a rule broken, naming the field (``box_xyxy: x1 must be greater than x0 ...``).
    """

    box_xyxy: np.ndarray | None = None
    point_coords: np.ndarray | None = None
    point_labels: np.ndarray | None = None
    mask_input: np.ndarray | None = None
    text: str | None = None
    multimask_output: bool | None = None

    def __post_init__(self) -> None:
        def put(name: str, value: Any) -> None:
            object.__setattr__(self, name, value)

        if self.box_xyxy is not None:
            try:
                put("box_xyxy", np.asarray(check_box(self.box_xyxy), np.float32))
            except ValueError as e:
                raise PromptError(str(e), "box_xyxy") from None
        if (self.point_coords is None) != (self.point_labels is None):
            raise PromptError("point_coords and point_labels must be given together", "point_labels")
        if self.point_coords is not None:
            coords, labels = np.asarray(self.point_coords), np.asarray(self.point_labels)
            if (
                coords.ndim != 2
                or coords.shape[1] != 2
                or coords.shape[0] == 0
                or not np.issubdtype(coords.dtype, np.number)
            ):
                raise PromptError(
                    f"must be (N, 2) numbers (x, y) with N >= 1; got shape {list(coords.shape)}", "point_coords"
                )
            if not np.isfinite(coords).all():
                raise PromptError("must be finite numbers", "point_coords")
            if labels.shape != (coords.shape[0],) or not np.isin(labels, (0, 1)).all() or labels.dtype == np.bool_:
                raise PromptError(
                    f"must be ({coords.shape[0]},) labels, each 1 (foreground) or 0 (background)", "point_labels"
                )
            put("point_coords", coords.astype(np.float32))
            put("point_labels", labels.astype(np.int32))
        if self.mask_input is not None:
            logits = np.asarray(self.mask_input)
            if logits.shape != (LOW_RES_MASK_SIZE,) * 2 or not np.issubdtype(logits.dtype, np.floating):
                size = f"({LOW_RES_MASK_SIZE}, {LOW_RES_MASK_SIZE})"
                raise PromptError(f"must be {size} float logits; got {logits.dtype} {list(logits.shape)}", "mask_input")
            if not np.isfinite(logits).all():
                raise PromptError("values must be finite", "mask_input")
            put("mask_input", logits.astype(np.float32))
        if self.text is not None and (not isinstance(self.text, str) or not self.text.strip()):
            raise PromptError("text must be a non-blank string", "text")
        if self.multimask_output is not None and not isinstance(self.multimask_output, bool):
            raise PromptError("must be true, false or None", "multimask_output")
        geometric = self.box_xyxy is not None or self.point_coords is not None or self.mask_input is not None
        if self.text is not None and geometric:
            raise PromptError("a text prompt stands alone: no box_xyxy, points or mask_input with text", "text")
        if self.text is None and not geometric:
            raise PromptError("a prompt needs box_xyxy, points, mask_input or text", "prompt")

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], field: str | None = None) -> Prompt:
        """A prompt from its JSON form, as ``/v1/segment`` takes it (from a JSON or COCO file, say).

        Args:
            data: ``box_xyxy`` ([x0, y0, x1, y1], pixels), ``points`` ([[x, y, label], ...], pixels, label 1
                or ``"fg"`` foreground, 0 or ``"bg"`` background), ``mask_input`` (a (256, 256) array or
                ``{"base64", "shape", "dtype"}`` as ``low_res_logits`` come back), ``text``,
                ``multimask_output``; no other keys.
            field: where the dict sits, for error messages (``prompts[3]`` -> ``prompts[3].box_xyxy``).

        Raises:
            PromptError: an unknown key or a rule broken, naming the field.
        """
        where = f"{field}." if field else ""
        if not isinstance(data, Mapping):
            raise PromptError(f"a prompt must be an object; got {type(data).__name__}", field or "prompt")
        unknown = sorted(set(data) - {"box_xyxy", "points", "mask_input", "text", "multimask_output"})
        if unknown:
            allowed = "box_xyxy, points, mask_input, text, multimask_output"
            raise PromptError(f"unknown keys {unknown}; allowed: {allowed}", field or "prompt")
        coords = labels = None
        try:
            rows = check_points(data.get("points"))
        except ValueError as e:
            raise PromptError(str(e), f"{where}points") from None
        if rows is not None:
            array = np.asarray(rows, np.float64)
            coords, labels = array[:, :2], array[:, 2].astype(np.int32)
        mask_input = data.get("mask_input")
        if isinstance(mask_input, Mapping):
            size = (LOW_RES_MASK_SIZE, LOW_RES_MASK_SIZE)
            try:
                shape = tuple(mask_input.get("shape", size))
                if shape != size:
                    raise ValueError(f"shape must be {list(size)}")
                mask_input = decode_logits_base64(mask_input["base64"], shape, mask_input.get("dtype", "float32"))
            except (KeyError, TypeError, ValueError) as e:
                raise PromptError(
                    f"{e}" if not isinstance(e, KeyError) else "needs base64", f"{where}mask_input"
                ) from None
        try:
            return cls(data.get("box_xyxy"), coords, labels, mask_input, data.get("text"), data.get("multimask_output"))
        except PromptError as e:
            raise e.under(field) from None

    @property
    def is_text(self) -> bool:
        """The prompt is a text (for CLIP), not geometry (for the decoder)."""
        return self.text is not None

    @property
    def multimask(self) -> bool:
        """``multimask_output``, else SAM's advice: three candidates for a lone click, one mask otherwise."""
        if self.multimask_output is not None:
            return self.multimask_output
        lone_click = self.point_coords is not None and len(self.point_coords) == 1
        return lone_click and self.box_xyxy is None and self.mask_input is None

    def to_spec(self) -> PromptSpec:
        """The decoder's prompt (the arrays as they are).

        Raises:
            ValueError: a text prompt (the decoder takes geometry only).
        """
        if self.is_text:
            raise ValueError("a text prompt has no decoder prompt; rank automatic masks by the text instead")
        return PromptSpec(self.point_coords, self.point_labels, self.box_xyxy, self.mask_input)


def decoder_prompts(
    prompts: Sequence[Prompt], width: int | None = None, height: int | None = None
) -> tuple[list[PromptSpec], list[bool]]:
    """Geometric prompts -> (decoder prompts, multimask flag per prompt), in order.

    No prompts give a centre click of the ``width`` x ``height`` image (multimask), or nothing when the
    size is not given (the decoder then clicks the centre, see ``deployments.contracts.DecodeJob``).

    Raises:
        ValueError: a text prompt among ``prompts``.
    """
    if not prompts:
        return ([], []) if width is None or height is None else ([centre_click(width, height)], [True])
    return [p.to_spec() for p in prompts], [p.multimask for p in prompts]
