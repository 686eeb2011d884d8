"""SAM 2 video tracking: prompt objects on some frames of a clip, get their masks on every frame.

The computation is that of sam2's ``SAM2VideoPredictor`` (``sam2/sam2_video_predictor.py``), built by
sam2's own ``build_sam2_video_predictor`` from the registry's config names: ``add_new_points_or_box`` /
``add_new_mask`` for the prompts, then ``propagate_in_video``. What differs is only where the frames and
the tracking state live, so that memory stays bounded on long clips:

* **Frames from memory, not from disk.** sam2's ``init_state`` reads a folder of JPEGs or an MP4 path.
  Here the caller passes decoded frames, ``(N, H, W, 3) uint8 RGB``; :func:`preprocess_frame` resizes and
  normalises one exactly as sam2's ``load_video_frames`` does (PIL ``resize`` to ``image_size`` squared,
  /255, ImageNet mean/std). With ``offload_video_to_cpu`` the uint8 frames stay in host memory and each is
  preprocessed when the model reads it (:class:`VideoFrames`); sam2 instead keeps every preprocessed
  float32 frame (12.6 MB per frame at 1024 px).
* **A bounded memory bank.** sam2 keeps every tracked frame's memory features and masks until the state
  is dropped. The model only ever reads the ``num_maskmem`` most recent frames and the
  ``max_obj_ptrs_in_encoder`` most recent object pointers (``SAM2Base._prepare_memory_conditioned_features``),
  plus the conditioning (prompted) frames, so :class:`Sam2VideoTracker` drops the non-conditioning
  outputs outside that window as it goes (those near the start frame are kept for the reverse pass).
  The masks are unchanged by this; the tests check it against sam2.

Coordinates are pixels of the original frames, (x, y) with x to the right and y down; boxes are XYXY.

Pure torch/numpy (and PIL for the resize, in memory): no file or network I/O.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from models.registry import get_sam2_checkpoint

#: sam2's ``load_video_frames`` normalisation (ImageNet mean and std, RGB).
IMG_MEAN = (0.485, 0.456, 0.406)
IMG_STD = (0.229, 0.224, 0.225)


def build_sam2_video_model(
    name: str,
    state_dict: Mapping[str, torch.Tensor] | None = None,
    *,
    seed: int | None = None,
    device: str | torch.device = "cpu",
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

    Returns:
        The ``SAM2VideoPredictor`` in eval mode.

    Raises:
        ValueError: unknown ``name``, or neither ``state_dict`` nor ``seed`` given.
        RuntimeError: ``state_dict`` has missing or unexpected keys or wrong shapes.
    """
    spec = get_sam2_checkpoint(name)
    if state_dict is None and seed is None:
        raise ValueError("build_sam2_video_model needs a state_dict, or a seed for random weights")
    from sam2.build_sam import build_sam2_video_predictor  # heavy, sets up Hydra: import on use only

    if state_dict is None:
        from models.sam2_image import build_sam2_model

        state_dict = build_sam2_model(name, seed=seed).state_dict()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)  # the initial values are all overwritten below
        model = build_sam2_video_predictor(spec.config, ckpt_path=None, device="cpu", mode="eval")
    model.load_state_dict(state_dict, strict=True)
    return model.to(device).eval()


def preprocess_frame(frame: np.ndarray, image_size: int) -> torch.Tensor:
    """One frame as the model reads it, exactly as sam2's ``load_video_frames`` prepares a JPEG frame.

    Args:
        frame: (H, W, 3) uint8 RGB in [0, 255].
        image_size: the model's input side in pixels (1024 for SAM 2.1).

    Returns:
        (3, image_size, image_size) float32: PIL's default ``resize`` of the frame to a square,
        divided by 255, minus :data:`IMG_MEAN`, divided by :data:`IMG_STD` (channel order RGB).

    Raises:
        ValueError: ``frame`` is not (H, W, 3) uint8 with H, W > 0.
    """
    from PIL import Image

    if frame.ndim != 3 or frame.shape[2] != 3 or frame.dtype != np.uint8 or 0 in frame.shape:
        raise ValueError(f"a frame must be (H, W, 3) uint8 RGB, got {frame.shape} {frame.dtype}")
    resized = np.array(Image.fromarray(frame).resize((image_size, image_size)))
    # Same order of operations and dtypes as sam2: /255 in float64, cast to float32, then normalise.
    img = torch.from_numpy(resized / 255.0).permute(2, 0, 1).float()
    img -= torch.tensor(IMG_MEAN, dtype=torch.float32)[:, None, None]
    img /= torch.tensor(IMG_STD, dtype=torch.float32)[:, None, None]
    return img


class VideoFrames:
    """The clip as sam2's inference state reads it (``state["images"][i]``), preprocessed on access.

    Holds the decoded uint8 frames (3 bytes per pixel of the original size) instead of sam2's
    preprocessed float32 frames (12 bytes per pixel of ``image_size`` squared).

    Args:
        frames: (N, H, W, 3) uint8 RGB, N >= 1; not copied (a read-only array from Ray's object store is
            fine).
        image_size: the model's input side in pixels.
    """

    def __init__(self, frames: np.ndarray, image_size: int) -> None:
        check_frames(frames)
        self.frames = frames
        self.image_size = image_size

    def __len__(self) -> int:
        return int(self.frames.shape[0])

    def __getitem__(self, index: int) -> torch.Tensor:
        """(3, image_size, image_size) float32 on the CPU; see :func:`preprocess_frame`."""
        return preprocess_frame(self.frames[index], self.image_size)


def check_frames(frames: np.ndarray) -> None:
    """Raise ValueError unless ``frames`` is (N, H, W, 3) uint8 with N, H, W > 0."""
    if not isinstance(frames, np.ndarray) or frames.ndim != 4 or frames.shape[3] != 3 or frames.dtype != np.uint8:
        raise ValueError(f"frames must be (N, H, W, 3) uint8 RGB, got {getattr(frames, 'shape', None)} {getattr(frames, 'dtype', None)}")
    if 0 in frames.shape:
        raise ValueError(f"frames must have N, H, W > 0, got {frames.shape}")


@dataclass(frozen=True)
class FramePrompt:
    """One object's prompt on one frame: a box and/or clicks, or a mask.

    Attributes:
        frame_index: 0-based index of the frame in the clip.
        point_coords: (K, 2) float32 (x, y) pixels of the original frame, or None.
        point_labels: (K,) int32, 1 foreground, 0 background; given iff ``point_coords`` is.
        box_xyxy: (4,) float32 pixels of the original frame, or None.
        mask: (H, W) bool at the frame's size, or None; excludes points and box (as in sam2).
    """

    frame_index: int
    point_coords: np.ndarray | None = None
    point_labels: np.ndarray | None = None
    box_xyxy: np.ndarray | None = None
    mask: np.ndarray | None = None

    def __post_init__(self) -> None:
        if self.frame_index < 0:
            raise ValueError("frame_index must be >= 0")
        if (self.point_coords is None) != (self.point_labels is None):
            raise ValueError("point_coords and point_labels must be given together")
        if self.point_coords is not None and (
            self.point_coords.ndim != 2 or self.point_coords.shape[1] != 2 or self.point_labels.shape != (self.point_coords.shape[0],)
        ):
            raise ValueError("point_coords must be (K, 2) and point_labels (K,)")
        if self.box_xyxy is not None and self.box_xyxy.shape != (4,):
            raise ValueError("box_xyxy must have shape (4,)")
        geometric = self.point_coords is not None or self.box_xyxy is not None
        if self.mask is not None and (geometric or self.mask.ndim != 2):
            raise ValueError("a mask prompt is one (H, W) bool mask, without points or box")
        if self.mask is None and not geometric:
            raise ValueError("a frame prompt needs points, a box or a mask")


@dataclass(frozen=True)
class VideoObject:
    """One object to track and its prompts (at most one per frame).

    Attributes:
        obj_id: the client's id of the object (sam2's ``obj_id``), unique within a request.
        prompts: one or more :class:`FramePrompt`, on distinct frames.
    """

    obj_id: int
    prompts: tuple[FramePrompt, ...]

    def __post_init__(self) -> None:
        if not self.prompts:
            raise ValueError(f"object {self.obj_id} needs at least one prompt")
        frames = [p.frame_index for p in self.prompts]
        if len(set(frames)) != len(frames):
            raise ValueError(f"object {self.obj_id} has two prompts on one frame; give one prompt per frame")


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


@dataclass(frozen=True)
class FrameMasks:
    """Every object's mask on one frame.

    Attributes:
        frame_index: 0-based index of the frame in the clip.
        obj_ids: the objects, in the order of the request.
        masks: (O, H, W) bool at the original frame size.
        object_score_logits: (O,) float32, the model's logit that the object is visible on this frame
            (> 0: visible; sam2 blanks the mask otherwise).
        propagate_ms: wall time of this frame's step (image encoding, memory attention, decoding,
            memory encoding and upsampling), milliseconds.
    """

    frame_index: int
    obj_ids: tuple[int, ...]
    masks: np.ndarray
    object_score_logits: np.ndarray
    propagate_ms: float = field(default=0.0, compare=False)


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
        ``reverse``, backward from ``start_frame - 1``. Each frame appears once.

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
        emitted: set[int] = set()
        for backward in (False, True) if reverse else (False,):
            yield from self._pass(state, start_frame, track, backward, emitted)

    def _pass(self, state: dict, start: int, track: int | None, backward: bool, emitted: set[int]) -> Iterator[FrameMasks]:
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
            self._prune(state, frame_idx, start)
            if frame_idx in emitted:  # the start frame again, on the reverse pass
                continue
            emitted.add(frame_idx)
            yield FrameMasks(frame_idx, obj_ids, masks, scores, dt)

    @staticmethod
    def _object_score(state: dict, obj_idx: int, frame_idx: int) -> float:
        out_dict = state["output_dict_per_obj"][obj_idx]
        out = out_dict["cond_frame_outputs"].get(frame_idx) or out_dict["non_cond_frame_outputs"].get(frame_idx)
        return float(out["object_score_logits"].reshape(-1)[0])

    def _prune(self, state: dict, frame_idx: int, start: int) -> None:
        """Drop non-conditioning outputs the model can no longer read: farther than the memory window
        from the current frame and from the start frame (which the reverse pass starts from)."""
        w = self.memory_window
        for out_dict in state["output_dict_per_obj"].values():
            non_cond = out_dict["non_cond_frame_outputs"]
            for t in [t for t in non_cond if abs(t - frame_idx) > w and abs(t - start) > w]:
                del non_cond[t]


def check_objects(objects: Sequence[VideoObject], num_frames: int, frame_hw: tuple[int, int]) -> None:
    """Objects against the clip: unique ids, prompts on frames of the clip, masks of the frame size.

    Raises:
        ValueError: the first rule broken, naming the object.
    """
    if not objects:
        raise ValueError("give at least one object to track")
    seen: set[int] = set()
    for obj in objects:
        if obj.obj_id in seen:
            raise ValueError(f"obj_id {obj.obj_id} is given twice; ids must be unique")
        seen.add(obj.obj_id)
        for prompt in obj.prompts:
            if not 0 <= prompt.frame_index < num_frames:
                raise ValueError(f"object {obj.obj_id}: frame_index {prompt.frame_index} is outside the clip of {num_frames} frames")
            if prompt.mask is not None and prompt.mask.shape != tuple(frame_hw):
                raise ValueError(f"object {obj.obj_id}: mask is {prompt.mask.shape}, frames are {tuple(frame_hw)}")

