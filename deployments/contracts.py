"""What travels between the stages: each stage's job and result, as frozen dataclasses.

The ingress (and the offline pipeline) build the jobs, so a bad value fails in the caller, as a typed
:mod:`deployments.errors` error or a ``ValueError``, and not inside a batch shared with other callers.
Large arrays (an image's pixels and features, a clip's frames) travel beside the jobs, by ObjectRef, and
are resolved by Ray in the stage that reads them.

Results carry the identity of the weights that made them (``model_id``, ``weights``: ``"sha256:<hex>"``
or ``"random"``) and ``timing_ms``, each stage's time in milliseconds; chained stages (fader -> embedder
-> retriever) add theirs to the ``timing_ms`` they were given. The video tracker's per-frame records are
JSON-ready dicts streamed as they are made (see ``VideoSegmenter.track``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace

import numpy as np

from deployments.errors import OutOfImage
from models.amg import AutoMask
from models.fade_strategies import FadeStrategy, make_fade_strategy
from models.knn import Neighbor
from models.masks import POLYGON_TOLERANCE_PX
from models.prompts import PromptSpec, centre_click
from models.sam2_video_types import VideoObject
from models.segmenter import ConceptPrompt


# ------------------------------------------------------------------------------------------------ jobs
def check_in_image(geometry, width: int, height: int, field_prefix: str | None = "prompts") -> None:
    """Every coordinate must lie in [0, width] x [0, height] (pixels of the original image).

    Args:
        geometry: per prompt, ``(box_xyxy or None, points)``; points are ``(x, y, ...)`` rows.
        field_prefix: errors name ``{field_prefix}[i].box_xyxy`` / ``.points[j]``; None names a lone
            prompt's ``box_xyxy`` / ``points[j]``.

    Raises:
        OutOfImage: 422 naming the first prompt field outside the image.
    """
    for i, (box, points) in enumerate(geometry):
        at = f"{field_prefix}[{i}]." if field_prefix else ""
        if box is not None:
            x0, y0, x1, y1 = (float(v) for v in box)
            if min(x0, y0) < 0 or max(x0, x1) > width or max(y0, y1) > height:
                raise OutOfImage(f"box {[x0, y0, x1, y1]} is outside the {width}x{height} image", f"{at}box_xyxy")
        for j, point in enumerate(points):
            x, y = float(point[0]), float(point[1])
            if not (0 <= x <= width and 0 <= y <= height):
                raise OutOfImage(f"point ({x}, {y}) is outside the {width}x{height} image", f"{at}points[{j}]")


@dataclass(frozen=True)
class ImageInfo:
    """An image as the decoder replica that owns it holds it.

    Attributes:
        image_id: lowercase hex SHA-256 of the uploaded bytes.
        width, height: size in pixels.
        encode_cached: the owner had the image already (False: this request's pixels were encoded).
        pixels: ObjectRef of the (H, W, 3) uint8 RGB pixels, put by the owner (the fader reads them).
    """

    image_id: str
    width: int
    height: int
    encode_cached: bool
    pixels: object = None


@dataclass(frozen=True)
class DecodeJob:
    """What the ingress asks of the decoder for one image (the features travel separately, by reference).

    Attributes:
        prompts: validated prompts, one per object.
        multimask_output: one flag per prompt.
        mask_format: ``rle``, ``png``, ``polygon`` or ``none``.
        max_masks: at most this many masks per prompt, best ``predicted_iou`` first.
        return_logits: also return each mask's (256, 256) low-res logits (for ``mask_input``).
        polygon_tolerance_px: the ``polygon`` simplification, pixels (``models.polygons``).
        deadline: absolute wall-clock time (``time.time()`` seconds) by which the answer is due, or None;
            a stage that cannot make it refuses the job at once (:class:`deployments.errors.DeadlineExceeded`).
    """

    prompts: tuple[PromptSpec, ...]
    multimask_output: tuple[bool, ...]
    mask_format: str = "rle"
    max_masks: int = 3
    return_logits: bool = False
    polygon_tolerance_px: float = POLYGON_TOLERANCE_PX
    #: How errors name the prompts: ``prompts`` gives ``prompts[0].box_xyxy``; None names a lone
    #: prompt's ``box_xyxy`` (``/v1/examples``).
    field_prefix: str | None = "prompts"
    deadline: float | None = None

    def for_image(self, width: int, height: int) -> DecodeJob:
        """This job checked against an image of ``width`` x ``height`` pixels; no prompts -> one click
        at the centre (multimask).

        Raises:
            OutOfImage: a box or point outside the image, naming it.
        """
        if not self.prompts:
            return replace(self, prompts=(centre_click(width, height),), multimask_output=(True,))
        geometry = [(p.box_xyxy, [] if p.point_coords is None else p.point_coords) for p in self.prompts]
        check_in_image(geometry, width, height, self.field_prefix)
        return self


@dataclass(frozen=True)
class ConceptJob:
    """Concept prompts on one image: every instance of each (a model with concept prompts, e.g. SAM 3).

    Attributes:
        prompts: validated concepts (text and/or example boxes, ``score_thresh``, ``max_instances``).
        mask_format: ``rle``, ``png``, ``polygon`` or ``none``.
        polygon_tolerance_px: the ``polygon`` simplification, pixels.
        fields: how errors name each prompt (``prompts[2]``, ``classes[0]``).
        deadline: as :class:`DecodeJob`'s.
    """

    prompts: tuple[ConceptPrompt, ...]
    mask_format: str = "rle"
    polygon_tolerance_px: float = POLYGON_TOLERANCE_PX
    fields: tuple[str, ...] = ()
    deadline: float | None = None

    def for_image(self, width: int, height: int) -> ConceptJob:
        """This job checked against an image of ``width`` x ``height`` pixels.

        Raises:
            OutOfImage: an example box outside the image, naming it (``prompts[i].exemplars[j].box_xyxy``).
        """
        for i, p in enumerate(self.prompts):
            at = self.fields[i] if i < len(self.fields) else f"prompts[{i}]"
            boxes = [] if p.boxes_xyxy is None else p.boxes_xyxy
            check_in_image([(box, []) for box in boxes], width, height, f"{at}.exemplars")
        return self


@dataclass(frozen=True)
class ConceptResult:
    """The decoder's answer to a :class:`ConceptJob`.

    Attributes:
        model_id, weights: the model and its weights.
        results: per concept, ``{"instances": [record, ...]}``, best score first; a record is the mask in
            the job's format with ``area_px`` and ``bbox_xyxy`` (the mask's), ``box_xyxy`` (the model's
            box, float pixels) and ``score``.
        timing_ms: ``concepts`` (the forward pass) and ``postprocess``, plus ``encode`` when this call
            waited for one.
        image: the image as its owner holds it.
    """

    model_id: str
    weights: str
    results: list
    timing_ms: dict
    image: ImageInfo | None = None


@dataclass(frozen=True, eq=False)
class FadeJob:
    """One image and the masks to crop from it.

    Built by the caller, so that a bad strategy name or parameter fails there (as a ``ValueError``) and
    not in a batch shared with other callers' jobs.

    Attributes:
        image: (H, W, 3) uint8 RGB.
        masks: N (H, W) bool masks on ``image``, none empty; any sequence (or an (N, H, W) array) is
            stored as a tuple.
        strategy: registry name of the fade (``models.fade_strategies.list_fade_strategies``); None: the
            deployment's default strategy.
        params: the strategy's parameters. None: the deployment's default parameters where the strategy
            is the deployment's default one, else the strategy's own defaults. Params need a
            ``strategy`` name (the caller does not know the deployment's default).
    """

    image: np.ndarray
    masks: tuple[np.ndarray, ...]
    strategy: str | None = None
    params: dict | None = None
    #: The strategy built from ``strategy`` and ``params`` (None where ``strategy`` is None).
    built: FadeStrategy | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        image = self.image
        if not isinstance(image, np.ndarray) or image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            desc = f"{image.dtype} {image.shape}" if isinstance(image, np.ndarray) else type(image).__name__
            raise ValueError(f"image must be (H, W, 3) uint8 RGB; got {desc}")
        object.__setattr__(self, "masks", tuple(self.masks))
        for i, mask in enumerate(self.masks):
            if not isinstance(mask, np.ndarray) or mask.dtype != np.bool_ or mask.shape != image.shape[:2]:
                desc = f"{mask.dtype} {mask.shape}" if isinstance(mask, np.ndarray) else type(mask).__name__
                raise ValueError(f"masks[{i}] must be (H, W) bool with (H, W) = {image.shape[:2]}; got {desc}")
            if not mask.any():
                raise ValueError(f"masks[{i}] is empty")
        if self.params is not None and not isinstance(self.params, Mapping):
            raise ValueError(f"params must be a dict or None; got {type(self.params).__name__}")
        if self.strategy is None:
            if self.params is not None:
                raise ValueError("params need a strategy name; leave both out for the deployment's defaults")
        else:
            # Built here so that a bad name or parameter is the caller's error; params None -> the
            # strategy's own defaults, replaced by the Fader's defaults when it is the Fader's strategy.
            object.__setattr__(self, "built", make_fade_strategy(self.strategy, **(self.params or {})))


@dataclass(frozen=True, eq=False)
class SearchJob:
    """One caller's k-NN request inside a batch.

    Attributes:
        collection: collection name.
        queries: (M, D) float32 query embeddings, D = the collection's dimension.
        top_k: neighbours per query, 1..100.
        embedder: identity of the embedder that made the queries; one that differs from the collection's
            is refused (``embedder_mismatch``). None: not checked.
    """

    collection: str
    queries: np.ndarray
    top_k: int
    embedder: str | None = None


@dataclass(frozen=True)
class VideoJob:
    """What the ingress asks of the tracker for one clip (the frames travel separately, by reference).

    Attributes:
        objects: validated objects with their prompts.
        start_frame: first frame to track from, or None for the earliest prompted frame.
        max_frames: frames to track in each direction, the start frame included; None: all.
        reverse: also track backward from the start frame.
        mask_format: ``rle``, ``png``, ``polygon`` or ``none``.
        polygon_tolerance_px: the ``polygon`` simplification, pixels (``models.polygons``).
    """

    objects: tuple[VideoObject, ...]
    start_frame: int | None = None
    max_frames: int | None = None
    reverse: bool = False
    mask_format: str = "rle"
    polygon_tolerance_px: float = POLYGON_TOLERANCE_PX


# --------------------------------------------------------------------------------------------- results
@dataclass(frozen=True, eq=False)
class EncodedImage:
    """The encoder's answer to one image (``ImageEncoder.encode_image``).

    Attributes:
        features: the model family's :class:`models.segmenter.Features` of the image.
        service_s: the encoder replica's measured time per image (moving average), seconds: its callers
            estimate their queue's wait from it (:class:`deployments.runtime.admission.StageAdmission`).
    """

    features: object
    service_s: float | None


@dataclass(frozen=True)
class DecodeResult:
    """The decoder's masks for one :class:`DecodeJob`.

    Attributes:
        model_id, weights: the decoder's model and weights.
        results: one ``{"masks": [...]}`` per prompt, in the job's order; each mask a JSON-ready dict with
            ``predicted_iou``, ``stability_score``, ``area_px``, ``bbox_xyxy`` and ``rle``/``png`` (and
            ``low_res_logits`` when asked), best ``predicted_iou`` first.
        timing_ms: ``decode_masks`` (the batch's forward pass), ``postprocess``, ``batch_size``.
    """

    model_id: str
    weights: str
    results: list[dict]
    timing_ms: dict
    #: The image decoded on, when the job named it by ``image_id`` (see ``MaskDecoder.segment``).
    image: ImageInfo | None = None


@dataclass(frozen=True)
class GenerateResult:
    """The decoder's automatic masks of one image.

    Attributes:
        masks: :class:`models.amg.AutoMask` in NMS order, at most the ``max_masks`` asked for.
        model_id, weights: the decoder's model and weights.
        timing_ms: ``amg``.
    """

    masks: tuple[AutoMask, ...]
    model_id: str
    weights: str
    timing_ms: dict
    #: The image the masks are of, when it was named by ``image_id`` (see ``MaskDecoder.generate_for``).
    image: ImageInfo | None = None


@dataclass(frozen=True, eq=False)
class FadeResult:
    """The fader's crops of one image.

    Attributes:
        crops: one (S, S, 3) uint8 RGB crop per mask, in the masks' order (S: ``output_size``).
        timing_ms: ``fade``.
    """

    crops: tuple[np.ndarray, ...]
    timing_ms: dict


@dataclass(frozen=True, eq=False)
class EmbedResult:
    """The embedder's vectors of one image's crops.

    Attributes:
        embeddings: (N, dim) float32, L2-normalised, one row per crop.
        weights: the embedder's weights.
        timing_ms: the fader's and ``embed``.
        embedder: the identity of the embedder that made them
            (:func:`models.embedders.embedder_identity`); the retriever refuses to store or search them in
            a collection of another embedder. ``""``: unknown (not checked).
    """

    embeddings: np.ndarray
    weights: str
    timing_ms: dict
    embedder: str = ""


@dataclass(frozen=True)
class KnnResult:
    """The retriever's neighbours of one image's embeddings.

    Attributes:
        neighbors: one list of :class:`models.knn.Neighbor` per embedding, best first.
        embedder_weights: the weights of the embedder that made the queries.
        timing_ms: the embedder's and ``retrieve``.
    """

    neighbors: list[list[Neighbor]]
    embedder_weights: str
    timing_ms: dict
