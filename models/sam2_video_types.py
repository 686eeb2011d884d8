"""What goes in and out of the SAM 2 video tracker (``models/sam2_video.py``): the clip's frames as the
model reads them, the prompts and objects to track, and every object's mask on one frame.

Frames are ``(N, H, W, 3) uint8 RGB``; :func:`preprocess_frame` resizes and normalises one exactly as
sam2's ``load_video_frames`` does, and :class:`VideoFrames` does it when the model reads a frame.
Coordinates are pixels of the original frames, (x, y) with x to the right and y down; boxes are XYXY.

Pure torch/numpy (and PIL for the resize, in memory): no file or network I/O.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from models.prompts import check_points_and_box

#: sam2's ``load_video_frames`` normalisation (ImageNet mean and std, RGB).
IMG_MEAN = (0.485, 0.456, 0.406)
IMG_STD = (0.229, 0.224, 0.225)


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
        raise ValueError(
            "frames must be (N, H, W, 3) uint8 RGB, "
            f"got {getattr(frames, 'shape', None)} {getattr(frames, 'dtype', None)}"
        )
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
        check_points_and_box(self.point_coords, self.point_labels, self.box_xyxy, n="K")
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
                raise ValueError(
                    f"object {obj.obj_id}: frame_index {prompt.frame_index} is outside the clip of {num_frames} frames"
                )
            if prompt.mask is not None and prompt.mask.shape != tuple(frame_hw):
                raise ValueError(f"object {obj.obj_id}: mask is {prompt.mask.shape}, frames are {tuple(frame_hw)}")
