"""SAM 2 video tracking: prompt objects on some frames of a clip, get their masks on every frame.

The computation is that of sam2's ``SAM2VideoPredictor`` (``sam2/sam2_video_predictor.py``), built by
sam2's own ``build_sam2_video_predictor`` from the registry's config names: ``add_new_points_or_box`` /
``add_new_mask`` for the prompts, then ``propagate_in_video``. What differs is only where the frames and
the tracking state live, so that memory stays bounded on long clips:

* **Frames from memory, not from disk.** sam2's ``init_state`` reads a folder of JPEGs or an MP4 path.
  Here the caller passes decoded frames, ``(N, H, W, 3) uint8 RGB``;
  :func:`models.sam2_video_types.preprocess_frame` resizes and normalises one exactly as sam2's
  ``load_video_frames`` does (PIL ``resize`` to ``image_size`` squared,
  /255, ImageNet mean/std). With ``offload_video_to_cpu`` the uint8 frames stay in host memory and each is
  preprocessed when the model reads it (:class:`models.sam2_video_types.VideoFrames`); sam2 instead keeps
  every preprocessed float32 frame (12.6 MB per frame at 1024 px).
* **A bounded memory bank.** sam2 keeps every tracked frame's memory features and masks until the state
  is dropped. The model only ever reads the ``num_maskmem`` most recent frames and the
  ``max_obj_ptrs_in_encoder`` most recent object pointers (``SAM2Base._prepare_memory_conditioned_features``),
  plus the conditioning (prompted) frames, so :class:`Sam2VideoTracker` drops the non-conditioning
  outputs outside that window as it goes (those near the start frame are kept while a reverse pass is
  still to come, which reads them). The masks are unchanged by this; the tests check it against sam2's
  predictor, which keeps everything.
* **Memories in the features' dtype.** sam2's predictor stores memory features in bfloat16. Memory
  attention normally gets them concatenated with float32 object pointers, which promotes them to
  float32. Where a frame has no object pointer to read (an object tracked on frames that come before
  all its prompts in the direction of tracking, e.g. a second object prompted on a later frame than the
  first), the memory stays bfloat16 and sam2 raises a dtype error unless it runs under bf16 autocast
  (facebookresearch/sam2 issues 308 and 577). :func:`build_sam2_video_model`
  casts the memory to the features' dtype there, as that promotion does; everywhere else it changes
  nothing.

Coordinates are pixels of the original frames, (x, y) with x to the right and y down; boxes are XYXY.

Pure torch/numpy (and PIL for the resize, in memory): no file or network I/O.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from models.registry import get_model_spec
from models.sam2_video_types import FrameMasks, VideoFrames, VideoObject, check_objects


def build_sam2_video_model(
    name: str,
    state_dict: Mapping[str, torch.Tensor] | None = None,
    *,
    seed: int | None = None,
    device: str | torch.device = "cpu",
    image_size: int | None = None,
    add_all_frames_to_correct_as_cond: bool = True,
) -> torch.nn.Module:
    """Build sam2's ``SAM2VideoPredictor`` for a registry model, with given or seeded random weights.

    Built by ``sam2.build_sam.build_sam2_video_predictor`` from the same config name as the image model
    (:func:`models.sam2_image.build_sam2_model`), with its default video post-processing overrides
    (dynamic multimask fallback, binarised click masks for the memory encoder, ``fill_hole_area=8``).

    Args:
        name: registry name, e.g. ``"sam2.1_hiera_tiny"``.
        state_dict: the model's weights (the ``"model"`` entry of Meta's checkpoints). Loaded strictly.
        seed: with ``state_dict=None``, the seed of the random weights; they are exactly those of
            ``build_sam2_model(name, seed=seed)``, so image and video stages share them.
        device: torch device to place the model on.
        image_size: the model's input side in pixels, passed to sam2's builder as the Hydra override
            ``++model.image_size=N`` (the YAML is not edited); None: the config's 1024, at which the
            released weights were trained. A positive multiple of 32 (the Hiera trunk's total stride,
            and its window position embedding tiles 1/4-scale features in 8x8 windows). No weight
            depends on it: the position embeddings are interpolated and the memory attention's RoPE is
            recomputed for the smaller feature map. Smaller is faster (256: 16x16 image embeddings
            instead of 64x64) and coarser; the tests use it to track long clips in seconds, and sam2's
            own ``build_sam2_video_predictor(..., hydra_overrides_extra=[...])`` builds the same model.
        add_all_frames_to_correct_as_cond: sam2's flag of that name, passed as the Hydra override
            ``++model.add_all_frames_to_correct_as_cond=true|false`` (SAM 2.1's configs leave it off).
            True (the default): a prompt on a frame the object was already tracked on (a correction)
            is stored as a conditioning frame, so every later propagation returns it unchanged and
            tracks the other frames with it in memory; False: it is stored as an ordinary tracked frame
            and the next propagation recomputes that frame without the clicks (facebookresearch/sam2
            issues 719 and 731). sam2 reads it only when a prompt lands on an already tracked frame;
            prompts added before any propagation (all of the one-shot endpoint's) are conditioning
            frames either way, so one model with the flag on serves both.

    Returns:
        The ``SAM2VideoPredictor`` in eval mode.

    Raises:
        ValueError: unknown ``name``, neither ``state_dict`` nor ``seed`` given, or ``image_size`` not a
            positive multiple of 32.
        RuntimeError: ``state_dict`` has missing or unexpected keys or wrong shapes.
    """
    spec = get_model_spec(name, "sam2")
    if state_dict is None and seed is None:
        raise ValueError("build_sam2_video_model needs a state_dict, or a seed for random weights")
    if image_size is not None and (
        isinstance(image_size, bool) or not isinstance(image_size, int) or image_size <= 0 or image_size % 32
    ):
        raise ValueError(f"image_size must be a positive multiple of 32 (e.g. 256, 512, 1024), got {image_size!r}")
    overrides = [] if image_size is None else [f"++model.image_size={image_size}"]
    overrides.append(f"++model.add_all_frames_to_correct_as_cond={str(bool(add_all_frames_to_correct_as_cond)).lower()}")
    from sam2.build_sam import build_sam2_video_predictor  # heavy, sets up Hydra: import on use only

    if state_dict is None:
        from models.sam2_image import build_sam2_model

        state_dict = build_sam2_model(name, seed=seed).state_dict()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)  # the initial values are all overwritten below
        model = build_sam2_video_predictor(
            spec.config, ckpt_path=None, device="cpu", mode="eval", hydra_overrides_extra=overrides
        )
    model.load_state_dict(state_dict, strict=True)
    model.memory_attention.register_forward_pre_hook(_memory_in_feature_dtype, with_kwargs=True)
    return model.to(device).eval()


def _memory_in_feature_dtype(module: torch.nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
    """Forward pre-hook of ``memory_attention``: ``memory`` and ``memory_pos`` in the dtype of ``curr``.

    sam2 calls ``memory_attention(curr=[(HW, B, C)], curr_pos=..., memory=(M, B, C_mem), memory_pos=...,
    num_obj_ptr_tokens=...)``. ``memory`` is the concatenation of bfloat16 memory features and float32
    object pointers, float32 by type promotion, unless no pointer is there (see the module docstring).
    """
    curr = kwargs.get("curr", args[0] if args else None)
    dtype = (curr[0] if isinstance(curr, (list, tuple)) else curr).dtype
    for key in ("memory", "memory_pos"):
        if kwargs.get(key) is not None and kwargs[key].dtype != dtype:
            kwargs[key] = kwargs[key].to(dtype)
    return args, kwargs


@dataclass(frozen=True)
class VideoSettings:
    """Memory settings of :class:`Sam2VideoTracker` (sam2's ``init_state`` options).

    Attributes:
        offload_video_to_cpu: True keeps the uint8 frames in host memory and preprocesses each when the
            model reads it; False preprocesses every frame up front onto the compute device, as sam2
            does (faster on GPUs, 12.6 MB of device memory per frame at 1024 px).
        offload_state_to_cpu: keep the tracking state (memory features, masks) in host memory (sam2's
            option; it costs some speed on GPUs and changes nothing on CPU).
        mask_threshold: logit threshold of the binary masks (sam2's 0.0).
    """

    offload_video_to_cpu: bool = True
    offload_state_to_cpu: bool = False
    mask_threshold: float = 0.0

    def __post_init__(self) -> None:
        if not np.isfinite(self.mask_threshold):
            raise ValueError("mask_threshold must be finite")


class Sam2VideoTracker:
    """Tracks prompted objects through an in-memory clip with sam2's ``SAM2VideoPredictor``.

    Stateless between calls: every :meth:`propagate` call builds its own inference state and drops it
    when the generator ends, so one tracker serves any number of concurrent clips.

    Args:
        predictor: a ``SAM2VideoPredictor`` from :func:`build_sam2_video_model`.
        settings: memory settings.
    """

    def __init__(self, predictor: torch.nn.Module, settings: VideoSettings | None = None) -> None:
        self.predictor = predictor
        self.settings = settings or VideoSettings()
        p = predictor
        #: Frames of non-conditioning outputs the model can read back: memories and object pointers.
        self.memory_window = max(p.num_maskmem * p.memory_temporal_stride_for_eval, p.max_obj_ptrs_in_encoder) + 1

    @property
    def device(self) -> torch.device:
        return self.predictor.device

    @torch.inference_mode()
    def init_state(self, frames: np.ndarray) -> dict:
        """sam2's inference state for ``frames``, as ``SAM2VideoPredictor.init_state`` builds it from a
        path, with the frames taken from memory (see :class:`VideoFrames`). Encodes frame 0, as sam2 does.

        Args:
            frames: (N, H, W, 3) uint8 RGB.

        Raises:
            ValueError: ``frames`` has the wrong shape or dtype.
        """
        p, s = self.predictor, self.settings
        lazy = VideoFrames(frames, p.image_size)
        device = p.device
        if s.offload_video_to_cpu:
            images = lazy
        else:
            images = torch.stack([lazy[i] for i in range(len(lazy))]).to(device)
        state: dict = {
            "images": images,
            "num_frames": len(lazy),
            "offload_video_to_cpu": s.offload_video_to_cpu,
            "offload_state_to_cpu": s.offload_state_to_cpu,
            "video_height": int(frames.shape[1]),
            "video_width": int(frames.shape[2]),
            "device": device,
            "storage_device": torch.device("cpu") if s.offload_state_to_cpu else device,
            "point_inputs_per_obj": {},
            "mask_inputs_per_obj": {},
            "cached_features": {},
            "constants": {},
            "obj_id_to_idx": OrderedDict(),
            "obj_idx_to_id": OrderedDict(),
            "obj_ids": [],
            "output_dict_per_obj": {},
            "temp_output_dict_per_obj": {},
            "frames_tracked_per_obj": {},
        }
        p._get_image_feature(state, frame_idx=0, batch_size=1)
        return state

    @torch.inference_mode()
    def add_prompts(self, state: dict, objects: Sequence[VideoObject]) -> None:
        """Add every object's prompts to ``state`` (sam2's ``add_new_points_or_box`` / ``add_new_mask``),
        objects in order, each object's prompts in order.

        Raises:
            ValueError: duplicate ``obj_id``, or a prompt on a frame outside the clip or with a mask of
                another size than the frames.
        """
        check_objects(objects, state["num_frames"], (state["video_height"], state["video_width"]))
        p = self.predictor
        for obj in objects:
            for prompt in obj.prompts:
                if prompt.mask is not None:
                    p.add_new_mask(state, prompt.frame_index, obj.obj_id, prompt.mask)
                else:
                    p.add_new_points_or_box(
                        state,
                        frame_idx=prompt.frame_index,
                        obj_id=obj.obj_id,
                        points=prompt.point_coords,
                        labels=prompt.point_labels,
                        box=prompt.box_xyxy,
                    )

    def propagate(
        self,
        frames: np.ndarray,
        objects: Sequence[VideoObject],
        start_frame: int | None = None,
        max_frames: int | None = None,
        reverse: bool = False,
    ) -> Iterator[FrameMasks | dict]:
        """Track ``objects`` through ``frames``; yields one :class:`FrameMasks` per frame as it is done.

        The first item yielded is a dict ``{"init_ms": float}`` (state set-up, frame 0's encoding and the
        prompts); then the frames in processing order: forward from ``start_frame``, then, with
        ``reverse``, backward from ``start_frame``. Each frame appears once, with its last result: the
        reverse pass tracks the start frame again, so with ``reverse`` the start frame comes from it,
        after the forward frames (unless the start is frame 0, where sam2 runs no reverse pass).

        Args:
            frames: (N, H, W, 3) uint8 RGB.
            objects: the objects and their prompts.
            start_frame: first frame to track from; None: the earliest prompted frame (sam2's default).
            max_frames: number of frames to track in each direction, the start frame included; None: to
                the end (and the start) of the clip. sam2's ``max_frame_num_to_track`` is this minus 1.
            reverse: after the forward pass, also track backward from the start frame (as sam2's
                ``propagate_in_video(reverse=True)`` after a forward pass).

        Raises:
            ValueError: bad frames, objects, ``start_frame`` outside the clip or ``max_frames < 1``.
        """
        if max_frames is not None and max_frames < 1:
            raise ValueError("max_frames must be >= 1")
        if start_frame is not None and not 0 <= start_frame < len(frames):
            raise ValueError(f"start_frame {start_frame} is outside the clip of {len(frames)} frames")
        t0 = time.perf_counter()
        state = self.init_state(frames)
        self.add_prompts(state, objects)
        if start_frame is None:
            start_frame = min(p.frame_index for obj in objects for p in obj.prompts)
        yield {"init_ms": (time.perf_counter() - t0) * 1e3}
        track = None if max_frames is None else max_frames - 1
        for backward in (False, True) if reverse else (False,):
            # The reverse pass starts from the forward pass's first frames: keep them until it has run.
            keep_near = start_frame if reverse and not backward else None
            # ... and tracks the start frame again (from frame 0 it tracks nothing): report that result
            skip = start_frame if reverse and not backward and start_frame > 0 else None
            yield from self._pass(state, start_frame, track, backward, skip, keep_near)

    def _pass(
        self, state: dict, start: int, track: int | None, backward: bool, skip: int | None, keep_near: int | None
    ) -> Iterator[FrameMasks]:
        p, s = self.predictor, self.settings
        gen = p.propagate_in_video(state, start_frame_idx=start, max_frame_num_to_track=track, reverse=backward)
        obj_ids = tuple(state["obj_ids"])
        while True:
            t0 = time.perf_counter()
            try:
                frame_idx, _, video_res_masks = next(gen)
            except StopIteration:
                return
            scores = np.array([self._object_score(state, i, frame_idx) for i in range(len(obj_ids))], np.float32)
            masks = (video_res_masks[:, 0] > s.mask_threshold).cpu().numpy()
            dt = (time.perf_counter() - t0) * 1e3
            self._prune(state, frame_idx, keep_near)
            if frame_idx == skip:
                continue
            yield FrameMasks(frame_idx, obj_ids, masks, scores, dt)

    @staticmethod
    def _object_score(state: dict, obj_idx: int, frame_idx: int) -> float:
        out_dict = state["output_dict_per_obj"][obj_idx]
        out = out_dict["cond_frame_outputs"].get(frame_idx) or out_dict["non_cond_frame_outputs"].get(frame_idx)
        return float(out["object_score_logits"].reshape(-1)[0])

    def _prune(self, state: dict, frame_idx: int, keep_near: int | None) -> None:
        """Drop the non-conditioning outputs the model can no longer read: those farther than
        :attr:`memory_window` from the current frame and, if ``keep_near`` is given, from that frame too.

        After each frame this leaves per object at most ``memory_window + 1`` non-conditioning outputs on
        a forward pass, ``2 * (memory_window + 1)`` on a forward pass that a reverse pass follows, and
        ``2 * memory_window + 1`` on the reverse pass (see :meth:`max_stored_outputs`).
        """
        w = self.memory_window
        for out_dict in state["output_dict_per_obj"].values():
            non_cond = out_dict["non_cond_frame_outputs"]
            for t in [t for t in non_cond if abs(t - frame_idx) > w and (keep_near is None or abs(t - keep_near) > w)]:
                del non_cond[t]

    def max_stored_outputs(self, reverse: bool) -> int:
        """The most non-conditioning outputs (memory features, masks, object pointers) one object's
        tracking state holds after any frame of a :meth:`propagate` call, whatever the clip's length.

        Args:
            reverse: the ``reverse`` argument of the call.
        """
        return 2 * (self.memory_window + 1) if reverse else self.memory_window + 1
