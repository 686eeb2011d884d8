"""An interactive SAM 2 video session: one clip's sam2 inference state, kept between calls.

The verbs are those of sam2's ``SAM2VideoPredictor`` on one ``inference_state`` (and of Meta's demo
backend): add points or a box (:meth:`VideoSession.add_prompt`, sam2's ``add_new_points_or_box`` with
``clear_old_points``) or a mask (``add_new_mask``) on any frame, for any object, also after a
propagation (a correction); propagate forward or backward from a frame (``propagate_in_video``); remove
an object (``remove_object``); reset every prompt (``reset_state``).

**Corrections are conditioning frames.** The predictor must be built with sam2's
``add_all_frames_to_correct_as_cond`` on (:func:`models.sam2_video.build_sam2_video_model` does so):
a prompt on a frame the object was already tracked on is then kept as a conditioning frame, which
every later propagation returns as the prompt answered it and reads as memory for the other frames.
With the flag off (SAM 2.1's config), sam2 stores such a prompt as an ordinary tracked frame and the
next propagation recomputes the frame without it: the correction is lost (sam2 issues 719, 731).

Unlike :class:`models.sam2_video.Sam2VideoTracker`, a session never prunes outputs: a later correction
reads the prompted frame's previous logits and the memories of the frames around it, so dropping any of
them would change the masks. Memory is bounded instead by the caller, from :meth:`VideoSession.nbytes`
(frames plus every tensor of the state).

Frames are ``(N, H, W, 3) uint8 RGB`` taken from memory and preprocessed exactly as sam2's
``load_video_frames`` does (:class:`models.sam2_video_types.VideoFrames`). Coordinates are pixels of the
original frames, (x, y) with x to the right and y down; boxes are XYXY.

Pure torch/numpy: no file or network I/O, no locking (the caller serialises calls on one session).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import closing
from typing import Literal

import numpy as np
import torch

from models.sam2_video import Sam2VideoTracker, VideoSettings
from models.sam2_video_types import FrameMasks, FramePrompt

Direction = Literal["forward", "backward", "both"]
DIRECTIONS = ("forward", "backward", "both")
#: sam2's placeholder object-score logit for an object without output on a frame (``NO_OBJ_SCORE``).
NO_OBJ_SCORE = -1024.0


class PromptError(ValueError):
    """A prompt or call that does not fit the session, raised before the state changes.

    Attributes:
        kind: ``out_of_clip`` (a frame index outside the clip), ``out_of_image`` (a point or box outside
            the frame) or ``invalid_request`` (anything else).
        field: the argument at fault (``frame_index``, ``start_frame``, ``box_xyxy``, ``points``,
            ``mask``, ``clear_old_points``), or None.
    """

    def __init__(self, message: str, kind: str = "invalid_request", field: str | None = None) -> None:
        super().__init__(message)
        self.kind, self.field = kind, field


def tensor_nbytes(obj, seen: set[int] | None = None) -> int:
    """Bytes of every distinct ``torch.Tensor`` / ``np.ndarray`` reachable through dicts, lists and tuples.

    Tensors sharing storage are counted once per storage (by its data pointer).
    """
    seen = set() if seen is None else seen
    if isinstance(obj, torch.Tensor):
        key = obj.untyped_storage().data_ptr()
        if key in seen:
            return 0
        seen.add(key)
        return int(obj.untyped_storage().nbytes())
    if isinstance(obj, np.ndarray):
        key = obj.__array_interface__["data"][0]
        if key in seen:
            return 0
        seen.add(key)
        return int(obj.nbytes)
    if isinstance(obj, dict):
        return sum(tensor_nbytes(v, seen) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(tensor_nbytes(v, seen) for v in obj)
    frames = getattr(obj, "frames", None)  # models.sam2_video_types.VideoFrames: the uint8 clip
    return tensor_nbytes(frames, seen) if isinstance(frames, np.ndarray) else 0


class VideoSession:
    """One clip's sam2 inference state and the calls on it.

    Args:
        predictor: a ``SAM2VideoPredictor`` from :func:`models.sam2_video.build_sam2_video_model`.
        frames: (N, H, W, 3) uint8 RGB, the whole clip (kept, uint8, for the session's life).
        settings: memory settings (sam2's ``offload_video_to_cpu`` / ``offload_state_to_cpu``) and the
            mask threshold.
        prune: drop the non-conditioning outputs the model can no longer read as a propagation goes (as
            :class:`Sam2VideoTracker` does). Only for a session that gets no prompt after propagating
            (the one-shot endpoint): a correction after pruning would differ from sam2's.

    Raises:
        ValueError: ``frames`` has the wrong shape or dtype; ``prune`` is False and the predictor does
            not keep corrections (its ``add_all_frames_to_correct_as_cond`` is off).
    """

    def __init__(
        self, predictor: torch.nn.Module, frames: np.ndarray, settings: VideoSettings | None = None, prune: bool = False
    ) -> None:
        if not prune and not getattr(predictor, "add_all_frames_to_correct_as_cond", False):
            raise ValueError(
                "an interactive session needs a predictor with add_all_frames_to_correct_as_cond on (else the next "
                "propagation drops a correction); build it with models.sam2_video.build_sam2_video_model"
            )
        self._tracker = Sam2VideoTracker(predictor, settings)
        self.predictor = predictor
        self.prune = prune
        t0 = time.perf_counter()
        self.state = self._tracker.init_state(frames)  # encodes frame 0, as sam2's init_state does
        self.init_ms = (time.perf_counter() - t0) * 1e3
        #: Frames this session has tracked (every propagation step, all calls together).
        self.frames_tracked = 0

    # ------------------------------------------------------------------ properties
    @property
    def num_frames(self) -> int:
        return int(self.state["num_frames"])

    @property
    def height(self) -> int:
        return int(self.state["video_height"])

    @property
    def width(self) -> int:
        return int(self.state["video_width"])

    @property
    def obj_ids(self) -> tuple[int, ...]:
        """The objects, in sam2's order (the order they were first prompted)."""
        return tuple(int(o) for o in self.state["obj_ids"])

    def nbytes(self) -> int:
        """Bytes held: the uint8 frames plus every tensor of the inference state (features, memories,
        masks, object pointers, cached features)."""
        return tensor_nbytes(self.state)

    # ------------------------------------------------------------------ prompts
    def _check_frame(self, frame_index: int, name: str = "frame_index") -> None:
        if not 0 <= frame_index < self.num_frames:
            raise PromptError(
                f"{name} {frame_index} is outside the clip of {self.num_frames} frames (0..{self.num_frames - 1})",
                "out_of_clip",
                name,
            )

    @torch.inference_mode()
    def add_prompt(self, obj_id: int, prompt: FramePrompt, clear_old_points: bool = True) -> FrameMasks:
        """Add one object's prompt on one frame; the frame's masks for every object, as sam2 returns them.

        Points and/or a box go to sam2's ``add_new_points_or_box`` (``clear_old_points`` as there: True
        replaces the object's earlier clicks on that frame, False adds to them; a box needs True); a mask
        to ``add_new_mask``. On a frame already tracked the prompt corrects the tracked mask.

        Args:
            obj_id: the client's object id (a new one adds an object).
            prompt: the frame and the points (pixels), box (pixels, XYXY) or mask ((H, W) bool).
            clear_old_points: sam2's ``clear_old_points``.

        Returns:
            The frame's masks of every object (objects without output on that frame are empty, with
            sam2's placeholder score); ``propagate_ms`` is the call's time.

        Raises:
            PromptError: a frame outside the clip, a mask of another size than the frames, a box with
                ``clear_old_points=False``, a point outside the frame. Checked before the state changes.
        """
        self._check_frame(prompt.frame_index)
        h, w = self.height, self.width
        if prompt.mask is not None:
            if prompt.mask.shape != (h, w):
                raise PromptError(
                    f"mask is {prompt.mask.shape[1]}x{prompt.mask.shape[0]}, the frames are {w}x{h}", field="mask"
                )
        else:
            if prompt.box_xyxy is not None and not clear_old_points:
                raise PromptError(
                    "a box needs clear_old_points=True (sam2 puts the box before any click)", field="clear_old_points"
                )
            box_corners = None if prompt.box_xyxy is None else prompt.box_xyxy.reshape(2, 2)
            for name, xy in (("box_xyxy", box_corners), ("points", prompt.point_coords)):
                if xy is not None and (
                    not np.isfinite(xy).all()
                    or (xy[:, 0] < 0).any()
                    or (xy[:, 0] > w).any()
                    or (xy[:, 1] < 0).any()
                    or (xy[:, 1] > h).any()
                ):
                    raise PromptError(f"{name} lie outside the {w}x{h} frame", "out_of_image", name)
        t0 = time.perf_counter()
        p = self.predictor
        if prompt.mask is not None:
            frame_idx, obj_ids, video_res_masks = p.add_new_mask(self.state, prompt.frame_index, obj_id, prompt.mask)
        else:
            frame_idx, obj_ids, video_res_masks = p.add_new_points_or_box(
                self.state,
                frame_idx=prompt.frame_index,
                obj_id=obj_id,
                points=prompt.point_coords,
                labels=prompt.point_labels,
                clear_old_points=clear_old_points,
                box=prompt.box_xyxy,
            )
        obj_idx = self.state["obj_id_to_idx"][obj_id]
        cond = frame_idx in self.state["temp_output_dict_per_obj"][obj_idx]["cond_frame_outputs"]
        return self._frame(frame_idx, video_res_masks, (time.perf_counter() - t0) * 1e3, cond)

    # ------------------------------------------------------------------ propagation
    def propagate(
        self,
        start_frame: int | None = None,
        max_frames: int | None = None,
        direction: Direction = "forward",
        cancelled: Callable[[], bool] = lambda: False,
    ) -> Iterator[FrameMasks]:
        """Track every object from ``start_frame``; yields one :class:`FrameMasks` per frame as it is done.

        ``forward`` and ``backward`` are sam2's ``propagate_in_video(reverse=False / True)``; ``both`` is
        forward then backward from the same start frame, as Meta's demo backend runs them. Each frame is
        yielded once, with the masks the state keeps for it: with ``both`` the backward pass tracks the
        start frame again (sam2 keeps that result), so the start frame comes after the forward frames,
        from the backward pass (first, from the forward pass, when the start is frame 0, where sam2 runs
        no backward pass). An object is tracked on every frame, also on frames before its first prompt
        (from its prompts' memories; see :mod:`models.sam2_video` on the dtype). ``cancelled()`` is
        asked before every frame: when it answers True the propagation stops there (the frames done so
        far stay in the state, as when sam2's generator is closed; a start frame held back for the
        backward pass is yielded then, as the forward pass left it).

        Args:
            start_frame: first frame; None: the earliest prompted frame (sam2's default).
            max_frames: frames to track in each direction, the start frame included; None: to the end
                (or the start) of the clip. sam2's ``max_frame_num_to_track`` is this minus 1.
            direction: ``forward``, ``backward`` or ``both``.
            cancelled: asked before each frame.

        Raises:
            PromptError: no object has a prompt, ``start_frame`` outside the clip. ValueError:
                ``max_frames < 1``, unknown ``direction``. Raised on the first ``next()``.
        """
        if direction not in DIRECTIONS:
            raise ValueError(f"direction must be one of {', '.join(DIRECTIONS)}, got {direction!r}")
        if max_frames is not None and max_frames < 1:
            raise ValueError("max_frames must be >= 1")
        if start_frame is not None:
            self._check_frame(start_frame, "start_frame")
        if not self.state["obj_ids"]:
            raise PromptError("no object has a prompt yet; add a prompt first")
        track = None if max_frames is None else max_frames - 1
        if direction != "both":
            yield from self._pass(start_frame, track, direction == "backward", cancelled)
            return
        # "both": sam2's forward pass, then its backward pass from the same start frame, which tracks the
        # start frame again (from the frames after it) and keeps that result. So the forward pass's
        # result for the start frame is held back and the backward pass's is yielded: what is streamed
        # for a frame is what the state keeps. From frame 0 sam2 runs no backward pass; a stop (or
        # a cancel) before the backward pass reaches the start frame leaves the forward result kept,
        # and that one is yielded instead.
        held: FrameMasks | None = None
        with closing(self._pass(start_frame, track, False, cancelled)) as forward:
            for item in forward:
                if held is None and start_frame is None:
                    start_frame = item.frame_index  # sam2's default start: the first frame it tracks
                if held is None and item.frame_index == start_frame and start_frame > 0:
                    held = item
                    continue
                yield item
        if held is None:
            return
        with closing(self._pass(start_frame, track, True, cancelled)) as backward:
            first = next(backward, None)
            if first is None:  # cancelled before the backward pass began
                yield held
                return
            yield first  # the start frame, as the backward pass leaves it
            yield from backward

    def _pass(self, start: int | None, track: int | None, backward: bool, cancelled) -> Iterator[FrameMasks]:
        """One ``propagate_in_video`` call: every frame it tracks, the start frame first."""
        p = self.predictor
        with torch.inference_mode():
            gen = p.propagate_in_video(
                self.state, start_frame_idx=start, max_frame_num_to_track=track, reverse=backward
            )
        try:
            while not cancelled():
                t0 = time.perf_counter()
                with torch.inference_mode():
                    try:
                        frame_idx, _, video_res_masks = next(gen)
                    except StopIteration:
                        return
                    if start is None:  # sam2's default start: the first frame it yields
                        start = frame_idx
                    out = self._frame(frame_idx, video_res_masks, 0.0)
                self.frames_tracked += 1
                if self.prune:
                    self._tracker._prune(self.state, frame_idx, start)
                yield FrameMasks(
                    out.frame_index, out.obj_ids, out.masks, out.object_score_logits, (time.perf_counter() - t0) * 1e3
                )
        finally:
            gen.close()

    # ------------------------------------------------------------------ objects
    @torch.inference_mode()
    def remove_object(self, obj_id: int) -> list[FrameMasks]:
        """Remove ``obj_id`` and all its prompts and outputs (sam2's ``remove_object``).

        Returns:
            The masks of the remaining objects on the frames where the removed object had prompts (they
            may change: sam2 keeps objects from overlapping there); empty when no object remains.

        Raises:
            KeyError: no object ``obj_id`` in the session.
        """
        if obj_id not in self.state["obj_id_to_idx"]:
            raise KeyError(obj_id)
        t0 = time.perf_counter()
        _, updated = self.predictor.remove_object(self.state, obj_id, strict=True, need_output=True)
        dt = (time.perf_counter() - t0) * 1e3
        temp = self.state["temp_output_dict_per_obj"].values()
        return [
            self._frame(f, m, dt, any(f in t["cond_frame_outputs"] for t in temp))
            for f, m in sorted(updated, key=lambda u: u[0])
        ]

    @torch.inference_mode()
    def reset(self) -> None:
        """Remove every object, prompt and output (sam2's ``reset_state``); the frames stay."""
        self.predictor.reset_state(self.state)

    # ------------------------------------------------------------------ helpers
    def _frame(
        self, frame_idx: int, video_res_masks: torch.Tensor, dt_ms: float, temp_cond: bool | None = None
    ) -> FrameMasks:
        """A sam2 answer as :class:`FrameMasks`. ``temp_cond``: the answer consolidates temporary
        outputs (a prompt, a removal) of that kind (True: conditioning); None: a propagation step."""
        obj_ids = self.obj_ids
        masks = (video_res_masks[:, 0] > self._tracker.settings.mask_threshold).cpu().numpy()
        scores = np.array([self._object_score(i, frame_idx, temp_cond) for i in range(len(obj_ids))], np.float32)
        return FrameMasks(int(frame_idx), obj_ids, masks, scores, dt_ms)

    def _object_score(self, obj_idx: int, frame_idx: int, temp_cond: bool | None) -> float:
        """The object-score logit of the output sam2's consolidation shows for an object on a frame
        (``_consolidate_temp_output_across_obj``: the temporary output of the answer's kind, else the
        conditioning, else the non-conditioning output); :data:`NO_OBJ_SCORE` without one (sam2 then
        answers an empty mask)."""
        sources = []
        if temp_cond is not None:
            outputs = "cond_frame_outputs" if temp_cond else "non_cond_frame_outputs"
            sources.append(self.state["temp_output_dict_per_obj"][obj_idx][outputs])
        out_dict = self.state["output_dict_per_obj"][obj_idx]
        sources += [out_dict["cond_frame_outputs"], out_dict["non_cond_frame_outputs"]]
        for d in sources:
            out = d.get(frame_idx)
            if out is not None:
                return float(out["object_score_logits"].reshape(-1)[0])
        return NO_OBJ_SCORE
