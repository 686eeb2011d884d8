"""Context fade around a mask, then a square crop: the image a CLIP tower sees for one object.

Why fade instead of a hard crop: FGVP (Yang et al., "Fine-Grained Visual Prompting", NeurIPS 2023)
shows that keeping the context but de-emphasising it outside the mask beats hard crops (and plain
boxes) as the visual prompt for CLIP. Here the emphasis is a per-pixel factor in [0, 1] that depends
on the Euclidean distance from the pixel to the mask: 1 inside the mask, falling off outside it.

Conventions: ``image`` is (H, W, 3) uint8 RGB (float32 in [0, 255] inside a strategy); ``mask`` is
(H, W) bool, True inside the object, same H and W as the image. Distances are in pixels of the
image. Boxes are [x0, y0, x1, y1] in pixel-edge coordinates (x1 = last column + 1, as in
``models.masks``); the crop window may extend past the image, where it is filled with 0.

The strategies (:class:`models.fade_strategies.FadeStrategy`: Gaussian, linear, exponential and the
identity, built by name with :func:`models.fade_strategies.make_fade_strategy`) live in
``models/fade_strategies.py``; this module computes the distance map, the crop window and the crop.

Pure numpy/scipy/PIL in memory: no file or network I/O.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image
from scipy import ndimage

from models.fade_strategies import FadeStrategy
from models.settings import bounded, check_bounds, check_field


def distance_to_mask(mask: np.ndarray) -> np.ndarray:
    """Euclidean distance from each pixel to the nearest mask pixel.

    Args:
        mask: (H, W) bool, True inside the object.

    Returns:
        (H, W) float32, pixels: 0 inside the mask, the exact Euclidean distance between pixel
        centres elsewhere (``scipy.ndimage.distance_transform_edt`` of the complement).

    Raises:
        ValueError: ``mask`` is not (H, W) bool, or it is empty.
    """
    _check_mask(mask)
    return _distance(mask)


def _distance(mask: np.ndarray) -> np.ndarray:
    """:func:`distance_to_mask` of a checked, non-empty mask."""
    return ndimage.distance_transform_edt(~mask).astype(np.float32, copy=False)


@dataclass(frozen=True)
class CropSettings:
    """Where to cut and how large to make the crop.

    Attributes:
        context_margin: float in [0, 2], fraction of the longer side of the mask's tight box added on
            each side of the (square) window: 0.2 makes the window 1.4 times the longer side.
        output_size: int in 16..1024, pixels: side of the square output crop.
    """

    context_margin: float = bounded(0.2, ge=0, le=2)
    output_size: int = bounded(224, ge=16, le=1024)

    def __post_init__(self) -> None:
        check_bounds(self)


def crop_box_xyxy(mask: np.ndarray, context_margin: float) -> tuple[int, int, int, int]:
    """The square crop window around a mask, not clipped to the image.

    The window is centred on the mask's tight box (when the centring is off by half a pixel, the extra
    pixel goes to the left or top side: ``x0 = (box_x0 + box_x1 - side) // 2``) and its side is
    ``ceil(max(box_w, box_h) * (1 + 2 * context_margin))``, computed with a 1e-9 tolerance so that
    float rounding (``20 * 1.4 = 28.000000000000004``) does not add a pixel.

    Args:
        mask: (H, W) bool, True inside the object.
        context_margin: float in [0, 2], fraction of the longer box side added on each side.

    Returns:
        (x0, y0, x1, y1): ints, pixel-edge coordinates of the image (x1, y1 exclusive), x1 - x0 ==
        y1 - y0; may extend past the image on any side.

    Raises:
        ValueError: ``mask`` is not (H, W) bool or is empty; ``context_margin`` is outside [0, 2].
    """
    _check_mask(mask)
    check_field(CropSettings, "context_margin", context_margin)
    return _window(mask, context_margin)


def _window(mask: np.ndarray, context_margin: float) -> tuple[int, int, int, int]:
    """:func:`crop_box_xyxy` of a checked, non-empty mask."""
    rows = np.flatnonzero(mask.any(axis=1))
    cols = np.flatnonzero(mask.any(axis=0))
    bx0, bx1 = int(cols[0]), int(cols[-1]) + 1
    by0, by1 = int(rows[0]), int(rows[-1]) + 1
    longer = max(bx1 - bx0, by1 - by0)
    side = max(longer, math.ceil(longer * (1 + 2 * context_margin) - 1e-9))
    x0 = (bx0 + bx1 - side) // 2
    y0 = (by0 + by1 - side) // 2
    return x0, y0, x0 + side, y0 + side


def fade_and_crop(
    image: np.ndarray, mask: np.ndarray, strategy: FadeStrategy, crop: CropSettings = CropSettings()
) -> np.ndarray:
    """Fade the context around one mask, cut the square window around it and resize it.

    Steps: the strategy fades the image with the mask's distance map (:func:`distance_to_mask`); the
    window of :func:`crop_box_xyxy` is cut, with 0 where it leaves the image; PIL bicubic resizes it
    to ``crop.output_size``. The fade is computed on the part of the image the window covers only
    (see :class:`FadeStrategy`), which for the built-ins is exactly the whole-image result.

    Args:
        image: (H, W, 3) uint8 RGB.
        mask: (H, W) bool, True inside the object; not empty.
        strategy: the fade.
        crop: window margin and output size.

    Returns:
        (output_size, output_size, 3) uint8 RGB.

    Raises:
        ValueError: bad shapes or dtypes, an empty mask, or a strategy output of the wrong shape.
    """
    _check_mask(mask, _check_image(image))
    return _fade_and_crop_one(image, mask, strategy, crop)


def fade_and_crop_batch(
    images: Sequence[np.ndarray],
    masks: Sequence[np.ndarray],
    strategy: FadeStrategy,
    crop: CropSettings = CropSettings(),
) -> list[np.ndarray]:
    """:func:`fade_and_crop` for many (image, mask) pairs, e.g. all the masks of a few images.

    Pass the same array object in ``images`` for several masks of one image: it is checked once, and
    a repeated (image object, mask object) pair is computed once. Each mask's own work (its distance
    map and fade) covers only its crop window, so no whole-image work is repeated per mask.

    Args:
        images: N (H_i, W_i, 3) uint8 RGB images (repeats allowed).
        masks: N (H_i, W_i) bool masks, masks[i] on images[i].
        strategy: the fade, the same for all.
        crop: window margin and output size.

    Returns:
        N (output_size, output_size, 3) uint8 RGB crops, in input order (distinct arrays).

    Raises:
        ValueError: ``images`` and ``masks`` differ in length, or any item fails the checks of
            :func:`fade_and_crop`.
    """
    if len(images) != len(masks):
        raise ValueError(f"images and masks must have the same length; got {len(images)} and {len(masks)}")
    image_sizes: dict[int, tuple[int, int]] = {}
    for i, (image, mask) in enumerate(zip(images, masks)):
        if id(image) not in image_sizes:
            image_sizes[id(image)] = _check_image(image, i)
        _check_mask(mask, image_sizes[id(image)], i)
    done: dict[tuple[int, int], np.ndarray] = {}
    crops = []
    for image, mask in zip(images, masks):
        key = (id(image), id(mask))  # ids are stable: the inputs hold the arrays alive
        if key in done:
            crops.append(done[key].copy())
            continue
        done[key] = _fade_and_crop_one(image, mask, strategy, crop)
        crops.append(done[key])
    assert len(crops) == len(images)
    return crops


def _fade_and_crop_one(image: np.ndarray, mask: np.ndarray, strategy: FadeStrategy, crop: CropSettings) -> np.ndarray:
    """:func:`fade_and_crop` of a checked image and a checked, non-empty mask of its size."""
    h, w = mask.shape
    x0, y0, x1, y1 = _window(mask, crop.context_margin)
    # The window clipped to the image holds the whole mask, so its distance map is exact.
    cx0, cy0, cx1, cy1 = max(x0, 0), max(y0, 0), min(x1, w), min(y1, h)
    region = image[cy0:cy1, cx0:cx1].astype(np.float32)
    region_mask = mask[cy0:cy1, cx0:cx1]
    faded = strategy.apply(region, region_mask, _distance(region_mask))
    if not isinstance(faded, np.ndarray) or faded.shape != region.shape:
        shape = getattr(faded, "shape", type(faded).__name__)
        raise ValueError(f"fade strategy {strategy.name!r} returned {shape}, expected shape {region.shape}")
    side = x1 - x0
    window = np.zeros((side, side, 3), np.uint8)
    window[cy0 - y0 : cy1 - y0, cx0 - x0 : cx1 - x0] = np.clip(np.rint(faded), 0, 255).astype(np.uint8)
    size = crop.output_size
    if side == size:
        return window
    return np.array(Image.fromarray(window).resize((size, size), Image.Resampling.BICUBIC))


def _check_image(image: np.ndarray, index: int | None = None) -> tuple[int, int]:
    where = "" if index is None else f"images[{index}] "
    if not isinstance(image, np.ndarray) or image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        desc = f"{image.dtype} {image.shape}" if isinstance(image, np.ndarray) else type(image).__name__
        raise ValueError(f"{where}image must be (H, W, 3) uint8 RGB; got {desc}")
    if image.shape[0] == 0 or image.shape[1] == 0:
        raise ValueError(f"{where}image must not be empty; got shape {image.shape}")
    return image.shape[0], image.shape[1]


def _check_mask(mask: np.ndarray, size: tuple[int, int] | None = None, index: int | None = None) -> None:
    where = "" if index is None else f"masks[{index}] "
    if not isinstance(mask, np.ndarray) or mask.ndim != 2 or mask.dtype != np.bool_:
        desc = f"{mask.dtype} {mask.shape}" if isinstance(mask, np.ndarray) else type(mask).__name__
        raise ValueError(f"{where}mask must be (H, W) bool; got {desc}")
    if size is not None and mask.shape != size:
        raise ValueError(f"{where}mask shape {mask.shape} does not match the image's (H, W) {size}")
    if not mask.any():
        raise ValueError(f"{where}mask is empty")
