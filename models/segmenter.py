"""The seam between samgraph and a segmentation model family (SAM 2, SAM 3, MobileSAM, ...).

A family is one module under ``models/`` holding a :class:`SegmenterFamily` subclass; its released models
are :class:`ModelSpec` entries of :mod:`models.registry`. Everything above ``models/`` (the deployments,
the ingress, the offline job) goes through this interface and never names a family's classes:

* :meth:`SegmenterFamily.build` makes the model (an ``nn.Module``) from a spec and a state dict (or a
  seed for random weights);
* :meth:`SegmenterFamily.encoder` wraps it as an :class:`ImageEncoder`: a batch of images in, one opaque
  :class:`Features` per image out (it knows its byte size and the image's size);
* :meth:`SegmenterFamily.decoder` wraps it as a :class:`MaskDecoder`: prompts against features in,
  masks out; for a family with concept prompts, also every instance of a text or example boxes;
* :attr:`SegmenterFamily.capabilities` says which prompts it takes (:class:`Capabilities`).

The jobs and answers that cross the seam are plain dataclasses defined here (:class:`DecodeRequest`,
:class:`MaskPrediction`, :class:`ConceptPrompt`, :class:`ConceptRequest`, :class:`ConceptPrediction`),
so every family answers in the same shapes.

Coordinates are pixels of the original image, (x, y) with x to the right and y down; boxes are XYXY.
Pure torch/numpy: no file or network I/O.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any, ClassVar, Protocol

import numpy as np

from models.prompts import PromptSpec


# --------------------------------------------------------------------------------------------- capabilities
@dataclass(frozen=True)
class Capabilities:
    """What a family can be asked.

    Attributes:
        points: clicks (``point_coords``/``point_labels``).
        boxes: a box per object (``box_xyxy``).
        mask_input: the low-res logits of an earlier answer as a prompt (``mask_input``).
        multimask: three candidate masks per prompt (``multimask_output``).
        automatic_masks: masks of everything in the image (a grid of clicks; ``/v1/predict``, text ranking).
        concept_prompts: every instance of a text phrase and/or example boxes (``text``, ``classes``).
        video: tracking through a clip.
    """

    points: bool = True
    boxes: bool = True
    mask_input: bool = True
    multimask: bool = True
    automatic_masks: bool = True
    concept_prompts: bool = False
    video: bool = False

    def as_dict(self) -> dict[str, bool]:
        """``{capability: bool}`` in declaration order (what ``/v1/models`` shows)."""
        return {f.name: getattr(self, f.name) for f in fields(self)}


class CapabilityError(ValueError):
    """A request asks a model for something its family cannot do.

    Attributes:
        field: the request field at fault (``prompts[0].text``, ``classes``).
        model_id: the model asked.
        capability: the :class:`Capabilities` field it lacks.
    """

    def __init__(self, model_id: str, capability: str, field: str) -> None:
        super().__init__(f"{field}: model {model_id!r} does not support {capability.replace('_', ' ')}")
        self.model_id, self.capability, self.field = model_id, capability, field


# ------------------------------------------------------------------------------------------------ registry
@dataclass(frozen=True)
class ModelSpec:
    """One released model of a family: what the registry knows about it.

    Attributes:
        name: the ``model_id``, e.g. ``"sam2.1_hiera_tiny"``.
        family: the :class:`SegmenterFamily` name, e.g. ``"sam2"``.
        config: the family's name for the architecture (sam2's Hydra config name; a config builder's name).
        url: official download URL of the weights file; ``""`` for an architecture with no released weights
            (seeded random weights only, e.g. ``sam3-tiny``).
        sha256: lowercase hex SHA-256 of the file at ``url``, or None where no digest is published outside
            its host (a gated hub file is then checked against the digest the hub publishes for it).
        size_bytes: file size in bytes, or None where unknown.
        params_m: parameter count in millions, for display.
        image_size: side of the square model input in pixels.
        file_format: ``"torch"`` (``torch.load(weights_only=True)``) or ``"safetensors"``.
        checkpoint_key: the entry of a torch checkpoint that holds the state dict (``"model"`` for Meta's
            SAM 2 files), or None when the file is the state dict itself.
        gated: the file needs an access token (``HF_TOKEN``) to download.
        source: where the URL and digest come from, for the docs.
    """

    name: str
    family: str
    config: str
    url: str
    sha256: str | None
    size_bytes: int | None
    params_m: float
    image_size: int = 1024
    file_format: str = "torch"
    checkpoint_key: str | None = None
    gated: bool = False
    source: str = ""

    def __post_init__(self) -> None:
        if self.file_format not in ("torch", "safetensors"):
            raise ValueError(f"file_format must be torch or safetensors, got {self.file_format!r}")

    @property
    def filename(self) -> str:
        """File name in the cache dir: ``<name>.<ext>`` for safetensors (the hub's names repeat), else the
        URL's last part (e.g. ``sam2.1_hiera_tiny.pt``)."""
        if self.file_format == "safetensors":
            return f"{self.name}.safetensors"
        return self.url.rsplit("/", 1)[-1]


# ----------------------------------------------------------------------------------------- prompts and answers
@dataclass(frozen=True)
class DecoderSettings:
    """Numeric settings of a mask decoder.

    Attributes:
        mask_threshold: logit threshold for binary masks (SAM's default 0.0).
        stability_score_offset: offset of the stability score, the IoU of the masks thresholded at
            ``mask_threshold +/- offset`` (SAM's ``SamAutomaticMaskGenerator`` default 1.0).
    """

    mask_threshold: float = 0.0
    stability_score_offset: float = 1.0

    def __post_init__(self) -> None:
        if not np.isfinite(self.mask_threshold):
            raise ValueError("mask_threshold must be finite")
        if not (np.isfinite(self.stability_score_offset) and self.stability_score_offset > 0):
            raise ValueError("stability_score_offset must be a finite number greater than 0")


class Features(Protocol):
    """One image's features, as a family's encoder makes them: opaque above ``models/``.

    Attributes:
        orig_hw: (height, width) of the original image in pixels.
        nbytes: bytes of the arrays (what a cache bounds).
    """

    orig_hw: tuple[int, int]

    @property
    def nbytes(self) -> int: ...


@dataclass(frozen=True)
class DecodeRequest:
    """Prompts on one image: one decoder job.

    Attributes:
        features: the image's features from the same family's encoder.
        prompts: one :class:`PromptSpec` per object.
        multimask_output: per prompt (or one bool for all), True for three candidate masks, False for
            one (then SAM's dynamic fallback to the most stable multimask candidate applies where the
            family has it).
    """

    features: Any
    prompts: Sequence[PromptSpec]
    multimask_output: bool | Sequence[bool]

    def __post_init__(self) -> None:
        flags = self.multimask_output
        flags = (bool(flags),) * len(self.prompts) if isinstance(flags, bool) else tuple(bool(f) for f in flags)
        if len(flags) != len(self.prompts):
            raise ValueError("multimask_output needs one flag per prompt")
        object.__setattr__(self, "multimask_output", flags)


@dataclass(frozen=True)
class MaskPrediction:
    """The decoder's answer for one prompt, masks in the order the model emits them.

    Attributes:
        masks: (C, H, W) bool at the original resolution; C is 3 with multimask output, else 1.
        predicted_iou: (C,) float32, the model's IoU estimate of each mask.
        stability_score: (C,) float32 in [0, 1], IoU of the mask thresholded at +/- the offset.
        low_res_logits: (C, 256, 256) float32 logits clamped to [-32, 32], usable as ``mask_input``.
    """

    masks: np.ndarray
    predicted_iou: np.ndarray
    stability_score: np.ndarray
    low_res_logits: np.ndarray


@dataclass(frozen=True)
class ConceptPrompt:
    """A concept to find every instance of: a short noun phrase, example boxes, or both.

    Attributes:
        text: the phrase (e.g. ``"yellow school bus"``), or None for boxes alone.
        boxes_xyxy: (K, 2*2) float32 example boxes, pixels of the original image, or None.
        box_labels: (K,) int, 1 for a positive example and 0 for a negative one; None: all positive.
        score_thresh: keep instances whose score is at least this (0..1).
        max_instances: keep at most this many, best first (>= 1).

    Raises:
        ValueError: neither text nor boxes; a bad box array or label; a bound out of range.
    """

    text: str | None = None
    boxes_xyxy: np.ndarray | None = None
    box_labels: np.ndarray | None = None
    score_thresh: float = 0.5
    max_instances: int = 100

    def __post_init__(self) -> None:
        if self.text is not None and not self.text.strip():
            raise ValueError("text must not be blank")
        if self.boxes_xyxy is not None:
            boxes = np.asarray(self.boxes_xyxy, np.float32).reshape(-1, 4)
            if not len(boxes) or not np.isfinite(boxes).all() or (boxes[:, 2:] <= boxes[:, :2]).any():
                raise ValueError("boxes_xyxy must be non-empty [x0, y0, x1, y1] boxes with x1 > x0 and y1 > y0")
            labels = np.ones(len(boxes), np.int64) if self.box_labels is None else np.asarray(self.box_labels)
            if labels.shape != (len(boxes),) or not np.isin(labels, (0, 1)).all():
                raise ValueError("box_labels must hold one 1 (positive) or 0 (negative) per box")
            object.__setattr__(self, "boxes_xyxy", boxes)
            object.__setattr__(self, "box_labels", labels.astype(np.int64))
        elif self.box_labels is not None:
            raise ValueError("box_labels without boxes_xyxy")
        if self.text is None and self.boxes_xyxy is None:
            raise ValueError("a concept prompt needs a text, example boxes, or both")
        if not 0.0 <= self.score_thresh <= 1.0:
            raise ValueError("score_thresh must be in [0, 1]")
        if self.max_instances < 1:
            raise ValueError("max_instances must be at least 1")


@dataclass(frozen=True)
class ConceptRequest:
    """Concept prompts on one image: one concept job.

    Attributes:
        features: the image's features from the same family's encoder.
        prompts: the concepts; each is answered on its own.
    """

    features: Any
    prompts: Sequence[ConceptPrompt]


@dataclass(frozen=True)
class ConceptPrediction:
    """Every instance of one concept found in one image, best score first.

    Attributes:
        masks: (N, H, W) bool at the original resolution.
        boxes_xyxy: (N, 4) float32, pixels of the original image.
        scores: (N,) float32 in [0, 1], each at least the prompt's ``score_thresh``.
    """

    masks: np.ndarray
    boxes_xyxy: np.ndarray
    scores: np.ndarray


# ------------------------------------------------------------------------------- what the families share
def build_with_weights(
    make: Callable[[], Any], state_dict: Mapping[str, Any] | None, seed: int | None, device, what: str
):
    """A family's model: ``make()`` under a forked torch RNG seeded with ``seed`` (the global RNG is left as
    it was), then ``state_dict`` loaded strictly when given, on ``device``, in eval mode.

    Args:
        make: builds the architecture with its random initialisation (``nn.Module`` on CPU).
        state_dict: the weights, or None for the seeded random ones.
        seed: the seed of the random initialisation (required without ``state_dict``).
        device: torch device to place the model on.
        what: the builder's name, for the error message.

    Raises:
        ValueError: neither ``state_dict`` nor ``seed``.
        RuntimeError: missing, unexpected or misshapen keys.
    """
    import torch

    if state_dict is None and seed is None:
        raise ValueError(f"{what} needs a state_dict, or a seed for random weights")
    with torch.random.fork_rng(devices=[]):
        if seed is not None:
            torch.manual_seed(seed)
        model = make()
    if state_dict is not None:
        model.load_state_dict(state_dict, strict=True)
    return model.to(device).eval()


def check_images(images: Sequence[np.ndarray]) -> None:
    """The input rule of every family's encoder.

    Raises:
        ValueError: an image is not (H, W, 3) uint8 with H, W > 0, naming it (``images[i]``).
    """
    for i, image in enumerate(images):
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8 or 0 in image.shape:
            raise ValueError(f"images[{i}] must be (H, W, 3) uint8 RGB, got {image.shape} {image.dtype}")


class EncoderParts:
    """What the families' batched encoders share. A subclass defines ``encode_batch`` and sets
    ``self._accelerated``, its :class:`models.accel.AcceleratedCall` (``models.accel.accelerate``)."""

    _accelerated: Any

    def accel_state(self) -> dict:
        """The speed-ups in force (see :meth:`models.accel.AcceleratedCall.state`)."""
        return self._accelerated.state()

    def warm_up(self, batch_size: int = 1) -> None:
        """Run one batch of black images so that compilation (lazy) and any fallback happen now."""
        self.encode_batch([np.zeros((64, 64, 3), np.uint8)] * batch_size)

    def encode(self, image: np.ndarray):
        """Encode one (H, W, 3) uint8 RGB image; see ``encode_batch``."""
        return self.encode_batch([image])[0]


class DecoderParts:
    """What the families' batched decoders share. A subclass defines ``predict_batch`` and sets
    ``self._mask_decoder_call``, the :class:`models.accel.AcceleratedCall` of its mask decoder."""

    _mask_decoder_call: Any

    def accel_state(self) -> dict:
        """The speed-ups in force (see :meth:`models.accel.AcceleratedCall.state`)."""
        return self._mask_decoder_call.state()

    def predict(self, features: Any, prompt: PromptSpec, multimask_output: bool) -> MaskPrediction:
        """Masks for one prompt on one image; see ``predict_batch``."""
        return self.predict_batch([DecodeRequest(features, [prompt], multimask_output)])[0][0]


# -------------------------------------------------------------------------------------------- the interfaces
class ImageEncoder(Protocol):
    """A family's batched image encoder."""

    def encode_batch(self, images: Sequence[np.ndarray]) -> list[Features]:
        """(H, W, 3) uint8 RGB images -> one :class:`Features` each, in order.

        Raises:
            ValueError: an image is not (H, W, 3) uint8 with H, W > 0.
        """

    def warm_up(self, batch_size: int = 1) -> None:
        """Run one batch so that compilation and any fallback happen now."""

    def accel_state(self) -> dict:
        """The speed-ups in force (:meth:`models.accel.AcceleratedCall.state`)."""


class MaskDecoder(Protocol):
    """A family's batched prompt decoder.

    Attributes:
        settings: its :class:`DecoderSettings`.
        image_size: side of the model input in pixels.
    """

    settings: DecoderSettings
    image_size: int

    def predict_batch(self, requests: Sequence[DecodeRequest]) -> list[list[MaskPrediction]]:
        """For each request, one :class:`MaskPrediction` per prompt, in order."""

    def decode_points(self, features: Any, point_coords: np.ndarray, multimask_output: bool = True):
        """One foreground click per prompt on one image: (low-res logits (B, C, h, w), IoU (B, C)) float32
        tensors (the automatic-mask grid, :func:`models.amg.generate_masks`); h = w = 256 for SAM 2, the
        family's native low-res side for others (SAM 3: 288 at 1008 px)."""

    def upsample_logits(self, low_res, orig_hw: tuple[int, int]):
        """(N, h, w) low-res logits (as :meth:`decode_points` gives them) -> (N, H, W) float32 logits at the
        original size."""

    def warm_up(self) -> None:
        """Decode one prompt so that compilation and any fallback happen now."""

    def accel_state(self) -> dict:
        """The speed-ups in force."""


class ConceptDecoder(Protocol):
    """A decoder of a family with :attr:`Capabilities.concept_prompts`."""

    def segment_concepts(self, requests: Sequence[ConceptRequest]) -> list[list[ConceptPrediction]]:
        """For each request, one :class:`ConceptPrediction` per concept prompt, in order."""


#: File names of an ONNX export (:meth:`SegmenterFamily.export_onnx`), the layout of ONNX exports of SAM
#: models in the wild (e.g. ``SharpAI/sam2-hiera-tiny-onnx``: ``encoder.onnx`` + ``decoder.onnx``).
ENCODER_FILE, DECODER_FILE = "encoder.onnx", "decoder.onnx"


class SegmenterFamily(ABC):
    """A model family behind the seam; subclasses live one per module under ``models/``.

    Attributes:
        name: the family's registry name (``ModelSpec.family``).
        capabilities: what its models can be asked.
        shares_encoder: True when one encode serves every kind of prompt it takes (SAM 2 and MobileSAM
            have one head; SAM 3 runs its ViT once and keeps both necks' outputs, for concept prompts and
            clicks).
        runtimes: the :data:`models.runtime.RUNTIMES` its encoder and decoder run on (``"torch"`` always;
            others through :meth:`export_onnx`).
        export_layout: version of the graphs :meth:`export_onnx` writes; bump it when they change, so that
            exports cached by older code are not reused.
    """

    name: ClassVar[str]
    capabilities: ClassVar[Capabilities]
    shares_encoder: ClassVar[bool] = True
    runtimes: ClassVar[tuple[str, ...]] = ("torch",)
    export_layout: ClassVar[int] = 1

    @abstractmethod
    def build(self, spec: ModelSpec, state_dict: Mapping[str, Any] | None, *, seed: int | None, device: str):
        """The model (an ``nn.Module`` in eval mode) with the given weights, loaded strictly, or with seeded
        random weights when ``state_dict`` is None.

        Raises:
            ValueError: neither ``state_dict`` nor ``seed``.
            RuntimeError: missing, unexpected or misshapen keys.
        """

    def state_dict_from(self, spec: ModelSpec, checkpoint: Mapping[str, Any]) -> Mapping[str, Any]:
        """The state dict inside a loaded weights file (``spec.checkpoint_key`` when set).

        Raises:
            ValueError: the file does not hold that entry.
        """
        if spec.checkpoint_key is None:
            return checkpoint
        inner = checkpoint.get(spec.checkpoint_key) if isinstance(checkpoint, Mapping) else None
        if not isinstance(inner, Mapping):
            raise ValueError(f"the checkpoint must hold {{{spec.checkpoint_key!r}: state_dict}}")
        return inner

    @abstractmethod
    def encoder(
        self, model, accel=None, on_fallback: Callable[[str], None] | None = None, graph=None
    ) -> ImageEncoder:
        """The batched image encoder over ``model`` (``accel``: :class:`models.accel.AccelSettings`).

        With ``graph`` (a :class:`models.runtime.Graph` of this family's exported ``encoder.onnx``) the
        network runs in that graph's runtime; ``model`` still gives the preprocessing and sizes.
        """

    @abstractmethod
    def decoder(
        self,
        model,
        settings: DecoderSettings | None = None,
        accel=None,
        on_fallback: Callable[[str], None] | None = None,
        graph=None,
    ) -> MaskDecoder:
        """The batched prompt decoder over ``model``; with concept prompts it is also a
        :class:`ConceptDecoder`. With ``graph`` (a :class:`models.runtime.Graph` of this family's exported
        ``decoder.onnx``) the prompt encoder and mask decoder run in that graph's runtime."""

    def export_onnx(self, model, opset: int = 17) -> dict[str, bytes]:
        """The model's encoder and decoder as ONNX files, ``{ENCODER_FILE: bytes, DECODER_FILE: bytes}``,
        in the family's standard layout (the runtimes of :attr:`runtimes` load them).

        Raises:
            ValueError: the family cannot be exported (its :attr:`runtimes` is ``("torch",)``).
        """
        raise ValueError(f"model family {self.name!r} cannot be exported to ONNX; it runs on torch only")

    def drop_image_encoder(self, model) -> None:  # noqa: B027 (optional hook)
        """Free what only the encoder uses (a decoder replica never runs it). Default: keep everything."""

    @abstractmethod
    def feature_nbytes(self, spec: ModelSpec) -> int:
        """Bytes of one image's :class:`Features` (what a cache entry costs)."""
